//! The admin endpoint, on its own listener: health, readiness, Prometheus metrics, the route table, and the
//! passivated services (their view and the wake, sleep and keep-awake commands).
//!
//! Owns the admin HTTP surface only: routing admin requests and shaping their answers, the listener's limits
//! (`conn`: timeouts; here: the connection and subscriber caps) and its access rules (`access`). It reads state
//! through the small APIs of `routes`, `metrics`, `readiness` (what `/readyz` says) and `passivation` (whose HTTP
//! face builds the services view); it decides nothing about them.

mod access;
mod conn;
mod events;
mod keep_awake;
mod rates;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument};

use crate::cluster::rfc3339;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::passivation::Passivator;
use crate::readiness::{self, Readiness};
use crate::routes::RouteHandle;

/// The dashboard at `/`: one self-contained page (no CDN, nothing fetched from outside), embedded in the binary.
/// It reads `/api/services` and `/api/routes`, follows `/api/events`, and posts wake and sleep commands.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin listener's limits, and the names it answers to besides its addresses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time to receive a whole request head: the first from the connection's start, later ones from their
    /// first byte.
    pub header_read_timeout: Duration,
    /// Close a connection after this long without a request.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed at once (each holds a file descriptor the proxy may need).
    pub max_connections: usize,
    /// Clients following `/api/events` at once; more get 503.
    pub max_event_subscribers: usize,
    /// Drop a client that reads nothing of its answer (an events stream included) for this long.
    pub send_timeout: Duration,
    /// Host names accepted in `Host` besides IP literals and `localhost` (lowercase, without port).
    pub allowed_hosts: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_event_subscribers: 64,
            send_timeout: Duration::from_secs(30),
            allowed_hosts: Vec::new(),
        }
    }
}

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    pub routes: RouteHandle,
    pub metrics: Arc<Metrics>,
    /// The feed `/api/events` follows.
    pub events: Events,
    /// Passivated services, for `/api/services`.
    pub passivator: Option<Arc<Passivator>>,
    /// What `/readyz` reports.
    pub readiness: Readiness,
    /// When set, the commands (`POST /api/services/<name>/wake`, `/sleep`, `/keep-awake`) require
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The certificates in force, for `/api/certificates` (none without an HTTPS listener).
    pub certificates: Option<CertificatesView>,
    /// The source of each route and service, for `/api/routes` (none: not said).
    pub sources: Option<SourcesView>,
    /// Limits and accepted names.
    pub settings: Settings,
}

/// What `/api/certificates` answers: `{"certificates": [...]}`, read when asked.
pub type CertificatesView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Where the routes and services in force come from: `{"routes": {host: "file"|"etcd"}, "services": {...}}`,
/// read when asked; `/api/routes` answers it as `"sources"`.
pub type SourcesView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The listener's state while it serves: what it reports on, and its slots.
struct Server {
    state: AdminState,
    /// One per `/api/events` stream, held by the stream's body.
    subscribers: Arc<Semaphore>,
    /// Each service's requests and 5xx per second over the last minute, for `/api/services`.
    rates: rates::Rates,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let settings = &state.settings;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let timeouts = conn::Timeouts {
        header: settings.header_read_timeout,
        idle: settings.idle_timeout,
        send: settings.send_timeout,
    };
    let rates = rates::Rates::default();
    tokio::spawn(rates.clone().run(state.routes.clone(), shutdown.clone()));
    let server =
        Arc::new(Server { subscribers: Arc::new(Semaphore::new(settings.max_event_subscribers)), state, rates });
    let metrics = server.state.metrics.clone();
    let mut warned = false;
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.admin().connection_refused();
            if !std::mem::replace(&mut warned, true) {
                warn!(
                    limit = server.state.settings.max_connections,
                    "admin connections at their limit ([admin] max_connections): new ones are closed at once; \
                     logged once, counted in reveille_admin_connections_refused_total"
                );
            }
            refuse(stream, server.state.settings.max_connections);
            continue;
        };
        metrics.admin().connection_opened();
        let server = server.clone();
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        tokio::spawn(
            async move {
                let activity = conn::Activity::new();
                let io = conn::Watched::new(stream, activity.clone(), timeouts, metrics.clone());
                let svc = service_fn(move |req| {
                    let in_flight = conn::InFlight::new(&activity);
                    let server = server.clone();
                    async move {
                        let resp = respond(&server, req).await.map(|body| conn::Tracked::new(body, in_flight));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(io), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin connection error") },
                    _ = shutdown.cancelled() => {}
                }
                metrics.admin().connection_closed();
                drop(slot);
            }
            .instrument(tracing::debug_span!("admin_conn", %peer)),
        );
    }
}

/// A connection past `max_connections`: told so if its socket takes the bytes at once, then closed.
fn refuse(stream: TcpStream, limit: usize) {
    let body = format!("too many admin connections (the limit is {limit}: [admin] max_connections)\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
}

/// Every admin answer: the access rules, then the path's answer, with the headers that keep it out of frames
/// and sniffing.
async fn respond(server: &Server, req: Request<Incoming>) -> Response<events::AdminBody> {
    let state = &server.state;
    let mut resp = match access::check(&req, &state.settings.allowed_hosts, state.token.is_some()) {
        Err(refused) => {
            state.metrics.admin().request_refused(refused.reason());
            match refused {
                access::Refused::Host(_) => text(StatusCode::MISDIRECTED_REQUEST, refused.message()),
                _ => json(StatusCode::FORBIDDEN, &serde_json::json!({ "error": refused.message() })),
            }
            .map(|b| b.boxed())
        }
        Ok(()) if req.uri().path() == "/api/events" && req.method() == Method::GET => events(server, &req),
        Ok(()) => match keep_awake::target(req.uri().path()).map(str::to_string) {
            Some(_) if !authorized(state, &req) => needs_token(state).map(|b| b.boxed()),
            Some(name) => keep_awake::command(state, &name, req).await.map(|b| b.boxed()),
            None => handle(server, req).map(|b| b.boxed()),
        },
    };
    let headers = resp.headers_mut();
    headers.insert(http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(http::header::CONTENT_SECURITY_POLICY) {
        headers.insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    }
    resp
}

/// `GET /api/events`, while fewer than `max_event_subscribers` follow it.
fn events(server: &Server, req: &Request<Incoming>) -> Response<events::AdminBody> {
    let metrics = &server.state.metrics;
    let Ok(slot) = server.subscribers.clone().try_acquire_owned() else {
        metrics.admin().events_refused();
        let limit = server.state.settings.max_event_subscribers;
        let mut resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many clients follow /api/events (the limit is {limit}: [admin] max_event_subscribers)\n"),
        );
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("10"));
        return resp.map(|b| b.boxed());
    };
    events::stream(metrics, &server.state.events, req, slot)
}

fn handle(server: &Server, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &server.state;
    if let Some(rest) = req.uri().path().strip_prefix("/api/services/") {
        if req.method() == Method::POST && !authorized(state, &req) {
            return needs_token(state);
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
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; \
                     frame-ancestors 'none'",
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
            let mut view = match &state.passivator {
                Some(p) => p.services_json(&table),
                None => serde_json::json!({ "services": {} }),
            };
            if let Some(services) = view["services"].as_object_mut() {
                for (name, v) in services.iter_mut() {
                    add_rates(v, server.rates.of(name));
                    if let Some(t) = state.passivator.as_ref().and_then(|p| p.get(name)) {
                        let kept = t.keep_awake();
                        v["keep_awake_until"] = serde_json::json!(kept.as_ref().map(|k| rfc3339(k.until)));
                        v["keep_awake_by"] = serde_json::json!(kept.map(|k| k.by));
                    }
                }
            }
            json(StatusCode::OK, &view)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A service's requests and 5xx per second over the last minute (`null` in the first seconds after start), to
/// two decimals, and the seconds they cover.
fn add_rates(view: &mut serde_json::Value, rate: Option<rates::Rate>) {
    let two = |x: f64| (x * 100.0).round() / 100.0;
    view["requests_per_s"] = serde_json::json!(rate.map(|r| two(r.requests)));
    view["errors_per_s"] = serde_json::json!(rate.map(|r| two(r.errors)));
    view["rates_over_s"] = serde_json::json!(rate.map(|r| r.over.as_secs()));
}

/// A command without the right token: 401.
fn needs_token(state: &AdminState) -> Response<Full<Bytes>> {
    state.metrics.admin().request_refused("token");
    let mut resp = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "this command needs the admin token: Authorization: Bearer <token>" }),
    );
    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    resp
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
        return text(StatusCode::NOT_FOUND, "not found: use /api/services/<name>/wake, /sleep or /keep-awake\n");
    };
    if !matches!(command, "wake" | "sleep") {
        return text(StatusCode::NOT_FOUND, "not found: use /api/services/<name>/wake, /sleep or /keep-awake\n");
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
