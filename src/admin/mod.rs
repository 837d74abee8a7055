//! The admin endpoint, on its own listener: health, readiness, Prometheus metrics, the route table, and the
//! passivated services (their view and the wake/sleep commands).
//!
//! Owns the admin HTTP surface only: routing admin requests and shaping their answers. It reads state through
//! the small APIs of `routes`, `metrics`, `readiness` (what `/readyz` says) and `passivation` (whose HTTP face
//! builds the services view); it decides nothing about them.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, Instrument};

use crate::metrics::Metrics;
use crate::passivation::Passivator;
use crate::readiness::{self, Readiness};
use crate::routes::RouteHandle;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    pub routes: RouteHandle,
    pub metrics: Arc<Metrics>,
    /// Passivated services, for `/api/services`.
    pub passivator: Option<Arc<Passivator>>,
    /// What `/readyz` reports.
    pub readiness: Readiness,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let state = Arc::new(state);
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin connection error") },
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(tracing::debug_span!("admin_conn", %peer)),
        );
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(rest) = req.uri().path().strip_prefix("/api/services/") {
        return service_command(state, req.method(), rest);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.readiness.state() {
            readiness::State::Ready => text(StatusCode::OK, "ready\n"),
            readiness::State::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            readiness::State::Waiting(what) => {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{what} not loaded yet\n"))
            }
        },
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        "/api/routes" => {
            let body = serde_json::to_vec_pretty(&state.routes.snapshot().to_json()).unwrap_or_default();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            resp
        }
        "/api/services" => {
            let table = state.routes.snapshot();
            let view = match &state.passivator {
                Some(p) => p.services_json(&table),
                None => serde_json::json!({ "services": {} }),
            };
            json(StatusCode::OK, &view)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /api/services/<name>/wake` and `POST /api/services/<name>/sleep`.
fn service_command(state: &AdminState, method: &Method, rest: &str) -> Response<Full<Bytes>> {
    let Some((name, command)) = rest.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "not found: use /api/services/<name>/wake or /sleep\n");
    };
    if !matches!(command, "wake" | "sleep") {
        return text(StatusCode::NOT_FOUND, "not found: use /api/services/<name>/wake or /sleep\n");
    }
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let table = state.routes.snapshot();
    let Some(service) = table.service(name) else {
        return json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": format!("no service {name:?}") }));
    };
    let tenant = state.passivator.as_ref().and_then(|p| p.tenant(service));
    let Some(tenant) = tenant else {
        let error = format!("service {name:?} has no container: it is not passivated");
        return json(StatusCode::CONFLICT, &serde_json::json!({ "error": error }));
    };
    match command {
        "wake" => tenant.request_wake(),
        _ => {
            if let Err(why) = tenant.request_sleep() {
                let error = format!("service {name:?} cannot sleep now: {why}");
                return json(StatusCode::CONFLICT, &serde_json::json!({ "error": error }));
            }
        }
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "service": name, "command": command, "state": tenant.phase().as_str() }),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
