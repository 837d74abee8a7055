//! `POST /api/services/<name>/keep-awake` with `{"for": "30m"}` (`"0s"` ends it) and `DELETE` of the same path:
//! keeps a passivated tenant from being stopped for idleness until then (cluster-wide with etcd). The one admin
//! command with a body, so the one answered asynchronously.
//!
//! Owns the command's input and answers only; what a keep-awake does is the tenant's (`passivation`).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{json, AdminState};
use crate::cluster::rfc3339;

/// The largest body accepted: `{"for": "..."}` needs a few bytes.
const MAX_BODY: usize = 4096;

/// `Some(name)` when `path` is `/api/services/<name>/keep-awake`.
pub(super) fn target(path: &str) -> Option<&str> {
    path.strip_prefix("/api/services/")?.strip_suffix("/keep-awake").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The command (the token is checked by the caller).
pub(super) async fn command(state: &AdminState, name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let error = |status: StatusCode, message: String| json(status, &json!({ "error": message }));
    let time = match *req.method() {
        Method::DELETE => Duration::ZERO,
        Method::POST => match read_for(req).await {
            Ok(d) => d,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "use POST with {\"for\": \"30m\"}, or DELETE".into()),
    };
    let table = state.routes.snapshot();
    let Some(service) = table.service(name) else {
        return error(StatusCode::NOT_FOUND, format!("no service {name:?}"));
    };
    let Some(tenant) = state.passivator.as_ref().and_then(|p| p.tenant(service)) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("service {name:?} has no container: it is never stopped, nothing to keep awake"),
        );
    };
    match tenant.set_keep_awake(time).await {
        Ok(entry) => json(
            StatusCode::OK,
            &json!({
                "service": name,
                "keep_awake_until": entry.as_ref().map(|k| rfc3339(k.until)),
                "by": entry.as_ref().map(|k| k.by.clone()),
                "state": tenant.phase().as_str(),
            }),
        ),
        Err(e @ crate::passivation::KeepAwakeError::TooLong(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The body's `for`: a duration as the config writes them (`"30m"`, `"1h 30m"`, `"0s"`).
async fn read_for(req: Request<Incoming>) -> Result<Duration, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body (at most {MAX_BODY} bytes): {e}"))?
        .to_bytes();
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| format!("the body must be JSON like {{\"for\": \"30m\"}}: {e}"))?;
    parse_for(&value)
}

fn parse_for(value: &Value) -> Result<Duration, String> {
    let Some(field) = value.get("for") else {
        return Err("`for` is missing: send {\"for\": \"30m\"} (\"0s\" ends the keep-awake)".into());
    };
    let Some(text) = field.as_str() else {
        return Err(format!("`for` must be a string with a unit, like \"30m\", not {field}"));
    };
    if text.trim_start().starts_with('-') {
        return Err(format!("`for` {text:?} is negative: use \"0s\" to end the keep-awake"));
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`for` {text:?} is not a duration ({e}): for example \"30m\" or \"2h\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_durations() {
        assert_eq!(target("/api/services/shop/keep-awake"), Some("shop"));
        assert_eq!(target("/api/services//keep-awake"), None);
        assert_eq!(target("/api/services/a/b/keep-awake"), None);
        assert_eq!(target("/api/services/shop/wake"), None);
        assert_eq!(parse_for(&json!({"for": "30m"})), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_for(&json!({"for": "0s"})), Ok(Duration::ZERO));
        for (bad, says) in [
            (json!({}), "`for` is missing"),
            (json!({"for": 30}), "must be a string"),
            (json!({"for": "-5m"}), "is negative"),
            (json!({"for": "soon"}), "is not a duration"),
            (json!({"for": "30"}), "is not a duration"),
        ] {
            let e = parse_for(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
