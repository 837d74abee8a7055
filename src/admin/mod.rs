//! The admin endpoint, on its own listener: health, readiness, Prometheus metrics, the route table, and the
//! passivated services (their view and the wake/sleep commands).
//!
//! Owns the admin HTTP surface only: routing admin requests and shaping their answers. It reads state through
//! the small APIs of `routes`, `metrics`, `readiness` (what `/readyz` says) and `passivation` (whose HTTP face
//! builds the services view); it decides nothing about them.

mod events;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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

/// The dashboard at `/`: one self-contained page (no CDN, nothing fetched from outside), embedded in the binary.
/// It reads `/api/services` and `/api/routes`, follows `/api/events`, and posts wake and sleep commands.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    pub routes: RouteHandle,
    pub metrics: Arc<Metrics>,
    /// Passivated services, for `/api/services`.
    pub passivator: Option<Arc<Passivator>>,
    /// What `/readyz` reports.
    pub readiness: Readiness,
    /// When set, the commands (`POST /api/services/<name>/wake` and `/sleep`) require
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The certificates in force, for `/api/certificates` (none without an HTTPS listener).
    pub certificates: Option<CertificatesView>,
    /// The source of each route and service, for `/api/routes` (none: not said).
    pub sources: Option<SourcesView>,
}

/// What `/api/certificates` answers: `{"certificates": [...]}`, read when asked.
pub type CertificatesView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Where the routes and services in force come from: `{"routes": {host: "file"|"etcd"}, "services": {...}}`,
/// read when asked; `/api/routes` answers it as `"sources"`.
pub type SourcesView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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
                    async move {
                        if req.uri().path() == "/api/events" && req.method() == Method::GET {
                            return Ok::<_, Infallible>(events::stream(&state.metrics, &req));
                        }
                        Ok::<_, Infallible>(handle(&state, req).map(|b| b.boxed()))
                    }
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
        if req.method() == Method::POST && !authorized(state, &req) {
            let mut resp = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": "this command needs the admin token: Authorization: Bearer <token>" }),
            );
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return resp;
        }
        return service_command(state, req.method(), rest);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
            let headers = resp.headers_mut();
            headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
            // Everything the page needs is in it or on this listener: nothing may be fetched from elsewhere.
            headers.insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
                ),
            );
            resp
        }
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
            let mut view = state.routes.snapshot().to_json();
            if let Some(sources) = &state.sources {
                view["sources"] = sources();
            }
            json(StatusCode::OK, &view)
        }
        "/api/certificates" => match &state.certificates {
            Some(view) => json(StatusCode::OK, &view()),
            None => json(StatusCode::OK, &serde_json::json!({ "certificates": [] })),
        },
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

/// Whether the request may run a command: no token configured, or the right bearer token (compared in constant
/// time).
fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else { return true };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or("");
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    // Ends with a newline, as curl's users expect of a terminal's output.
    body.push(b'\n');
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
