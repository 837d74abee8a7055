//! Forwarding one request: route by host, rewrite headers, try backends in round-robin order, stream the
//! response back, and hand upgraded connections (WebSocket) to a tunnel.

use std::borrow::Cow;
use std::error::Error as _;
use std::time::Instant;

use bytes::Bytes;

use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, LOCATION, RETRY_AFTER,
    STRICT_TRANSPORT_SECURITY, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, info, warn, Instrument};

use super::body::{BodySlot, RequestBody, ResponseBody};
use super::conn::InFlight;
use super::headers::{add_forwarded, strip_hop_by_hop, upgrade_requested};
use super::{tunnel, ProxyError, ProxyService, Response};
use crate::metrics::{Unrouted, UpstreamErrorKind};
use crate::passivation::{Activity, PageValues, Phase, Refusal};
use crate::routes::{normalize_request_host, Backend, Lookup, Service};

/// Handles one request end to end. Never fails: errors become responses.
pub(super) async fn handle(svc: &ProxyService, req: Request<Incoming>, guard: InFlight) -> Response {
    let start = Instant::now();
    let proxy = &*svc.proxy;

    if req.method() == Method::CONNECT {
        // reveille forwards to its own backends only; it is not a tunnel to arbitrary hosts.
        let err = ProxyError::MethodNotAllowed;
        log_access(svc, &req, "-", err.status(), start);
        return error_response(&err, guard);
    }
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        proxy.metrics.unrouted(Unrouted::BadHost);
        let err = ProxyError::BadHost;
        log_access(svc, &req, "-", err.status(), start);
        return error_response(&err, guard);
    }

    // HTTP/2 carries the host in `:authority` (and absolute-form HTTP/1.1 in the URI); otherwise `Host`.
    let raw_host: Option<Cow<'_, str>> = match req.uri().authority() {
        Some(a) => Some(Cow::Borrowed(a.as_str())),
        None => req.headers().get(HOST).and_then(|v| v.to_str().ok()).map(Cow::Borrowed),
    };
    let Some(host) = raw_host.as_deref().and_then(normalize_request_host) else {
        proxy.metrics.unrouted(Unrouted::BadHost);
        let err = ProxyError::BadHost;
        log_access(svc, &req, raw_host.as_deref().unwrap_or("-"), err.status(), start);
        return error_response(&err, guard);
    };
    let found = match proxy.routes.load().lookup(&host) {
        Lookup::Found(s) => Ok(s.clone()),
        Lookup::MissingService(name) => Err(Some(name.clone())),
        Lookup::NoRoute => Err(None),
    };
    let service = match found {
        Ok(s) => s,
        Err(missing) => {
            let err = match missing {
                Some(service) => {
                    proxy.metrics.unrouted(Unrouted::MissingService);
                    ProxyError::MissingService { host: host.into_owned(), service: service.to_string() }
                }
                None => {
                    proxy.metrics.unrouted(Unrouted::UnknownHost);
                    ProxyError::UnknownHost { host: host.into_owned() }
                }
            };
            log_access(svc, &req, raw_host.as_deref().unwrap_or("-"), err.status(), start);
            return error_response(&err, guard);
        }
    };
    if !svc.tls && service.https().redirect.unwrap_or(proxy.redirect.all) && !is_acme_challenge(&req) {
        let response = https_redirect(&host, proxy.redirect.port, req.uri(), guard);
        service.stats(|n| proxy.metrics.service_stats(n)).record(response.status().as_u16());
        if proxy.settings.access_log {
            let path = req.uri().path_and_query().map_or("", |p| p.as_str());
            access_log(&host, req.method(), path, response.status(), start, service.name(), "-");
        }
        return response;
    }
    let status_path = &proxy.passivator.settings().status_path;
    if req.uri().path() == status_path.as_str() && matches!(*req.method(), Method::GET | Method::HEAD) {
        let response = status_response(svc, &service, guard);
        log_access(svc, &req, &host, response.status(), start);
        return response;
    }
    let host = host.into_owned();
    drop(raw_host);

    let method = req.method().clone();
    let path = req.uri().path_and_query().cloned();
    let mut guard = guard;
    let mut target = None;
    let mut activity = None;
    if let Some(tenant) = proxy.passivator.tenant(&service) {
        let page = wants_page(&req);
        match tenant.admit(page).await {
            Ok((backend, a)) => {
                target = backend;
                activity = Some(a.clone());
                guard = guard.with_activity(a);
            }
            Err(Refusal::Starting) => {
                let response = starting_page(svc, &service, &host, tenant.phase().as_str(), guard);
                log_access(svc, &req, &host, response.status(), start);
                return response;
            }
            Err(refusal) => {
                let err = ProxyError::Wake { service: service.name().to_string(), refusal };
                let response = error_response(&err, guard);
                service.stats(|n| proxy.metrics.service_stats(n)).record(response.status().as_u16());
                if proxy.settings.access_log {
                    let path = path.as_ref().map_or("", |p| p.as_str());
                    access_log(&host, &method, path, response.status(), start, service.name(), "-");
                }
                return response;
            }
        }
    }
    let (response, backend) = match forward(svc, &service, target.as_ref(), activity, req).await {
        Ok((resp, backend)) => (finish_response(resp, guard), Some(backend)),
        Err((err, backend)) => {
            if let (ProxyError::AllBackendsFailed { .. }, Some(tenant)) = (&err, proxy.passivator.get(service.name())) {
                // The container may have died under us: have its state checked.
                tenant.suspect();
            }
            (error_response(&err, guard), backend)
        }
    };
    let mut response = response;
    if svc.tls {
        if let Some(hsts) = &service.https().hsts {
            // The backend's own policy, if it sends one, wins.
            response.headers_mut().entry(STRICT_TRANSPORT_SECURITY).or_insert_with(|| hsts.clone());
        }
    }
    let status = response.status();
    service.stats(|n| proxy.metrics.service_stats(n)).record(status.as_u16());
    proxy.metrics.observe_duration(start.elapsed());
    if proxy.settings.access_log {
        let path = path.as_ref().map_or("", |p| p.as_str());
        let backend = backend.as_ref().map_or("-", |b| b.as_str());
        access_log(&host, &method, path, status, start, service.name(), backend);
    }
    response
}

fn log_access(svc: &ProxyService, req: &Request<Incoming>, host: &str, status: StatusCode, start: Instant) {
    if svc.proxy.settings.access_log {
        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
        access_log(host, req.method(), path, status, start, "-", "-");
    }
}

/// The access-log event: one per request, target `reveille::access`.
fn access_log(
    host: &str,
    method: &Method,
    path: &str,
    status: StatusCode,
    start: Instant,
    service: &str,
    backend: &str,
) {
    info!(
        target: "reveille::access",
        host,
        method = %method,
        path,
        status = status.as_u16(),
        duration_ms = millis(start),
        service,
        backend,
    );
}

type Upstream = http::Response<Incoming>;

/// Sends the request to the service's backends in rotation until one answers. A backend that cannot be
/// connected to is skipped; nothing was sent to it, so the next one gets the same request.
async fn forward(
    svc: &ProxyService,
    service: &Service,
    target: Option<&Backend>,
    activity: Option<Activity>,
    mut req: Request<Incoming>,
) -> Result<(Upstream, Backend), (ProxyError, Option<Backend>)> {
    let proxy = &*svc.proxy;
    let upgrade = if req.version() == Version::HTTP_11 { upgrade_requested(req.headers()) } else { None };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let method: Method = parts.method;
    let mut headers: HeaderMap = parts.headers;
    // One authority for routing and for the backend: when the request target carries one (HTTP/2
    // `:authority`, HTTP/1.1 absolute-form), it replaces whatever `Host` said (RFC 9112 §3.2.2).
    if let Some(a) = parts.uri.authority() {
        if let Ok(h) = HeaderValue::from_str(a.as_str()) {
            headers.insert(HOST, h);
        }
    }
    let forwarded_host = headers.get(HOST).cloned();
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut headers);
    }
    // A body of unknown length would otherwise be dropped for methods like GET; say it is chunked.
    let body = BodySlot::new(body);
    let chunked = body.as_ref().is_some_and(|b| b.exact_len().is_none()) && !headers.contains_key(CONTENT_LENGTH);
    strip_hop_by_hop(&mut headers, upgrade.as_ref());
    if chunked {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    add_forwarded(&mut headers, &svc.peer_ip, svc.proto(), forwarded_host);
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));

    // A passivated service without fixed backends has one: its container's address.
    let backends = match target {
        Some(b) => Backends::One(std::iter::once(b)),
        None => Backends::Rotation(service.rotation()),
    };
    let n = if target.is_some() { 1 } else { service.backends().len() };
    let mut headers = Some(headers);
    let mut client_upgrade = client_upgrade;
    let mut activity = activity;
    let mut last_backend = None;
    let timeout = proxy.settings.response_timeout;
    for (i, backend) in backends.enumerate() {
        let is_last = i + 1 == n;
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(backend.authority().clone());
        uri.path_and_query = Some(path.clone());
        let Ok(uri) = Uri::from_parts(uri) else {
            return Err((ProxyError::UpstreamProtocol { service: service.name().into() }, Some(backend.clone())));
        };
        let attempt_body = match &body {
            Some(b) => b.attempt(),
            None => RequestBody::Empty,
        };
        let mut upstream_req = Request::new(attempt_body);
        *upstream_req.method_mut() = method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11;
        // Only copy the headers when another attempt may need them.
        *upstream_req.headers_mut() =
            if is_last { headers.take().unwrap_or_default() } else { headers.clone().unwrap_or_default() };

        last_backend = Some(backend.clone());
        // The response timeout counts from the end of the request body, not from its start: a slow upload is
        // the client's time, not the backend's.
        let deadline = async {
            if let Some(b) = &body {
                b.sent().await;
            }
            tokio::time::sleep(timeout).await;
        };
        let sent = tokio::select! {
            r = proxy.client.request(upstream_req) => Some(r),
            () = deadline => None,
        };
        match sent {
            Some(Ok(mut resp)) => {
                let tunnel =
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS { client_upgrade.take() } else { None };
                if let Some(client) = tunnel {
                    let backend_side = hyper::upgrade::on(&mut resp);
                    let span = tracing::info_span!("tunnel", service = service.name());
                    let run = tunnel::run(
                        client,
                        backend_side,
                        proxy.settings.tunnel_idle_timeout,
                        svc.conn.clone(),
                        activity.take(),
                    );
                    proxy.tasks.spawn(run.instrument(span));
                }
                return Ok((resp, backend.clone()));
            }
            Some(Err(e)) if e.is_connect() => {
                let kind = classify_connect(&e);
                proxy.metrics.upstream_error(kind);
                debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), kind = kind.as_str(), "backend unreachable");
                if body.as_ref().is_some_and(|b| !b.is_intact()) {
                    break;
                }
            }
            Some(Err(e)) => {
                if body.as_ref().is_some_and(BodySlot::client_failed) {
                    debug!(service = service.name(), error = %source_chain(&e), "client went away during the upload");
                    return Err((ProxyError::ClientAborted, last_backend));
                }
                proxy.metrics.upstream_error(UpstreamErrorKind::Protocol);
                warn!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), "backend failed to answer");
                return Err((ProxyError::UpstreamProtocol { service: service.name().into() }, last_backend));
            }
            None => {
                proxy.metrics.upstream_error(UpstreamErrorKind::ResponseTimeout);
                return Err((ProxyError::UpstreamTimeout { service: service.name().into(), timeout }, last_backend));
            }
        }
    }
    Err((ProxyError::AllBackendsFailed { service: service.name().into() }, last_backend))
}

/// The backends one request may try.
enum Backends<'a, R> {
    One(std::iter::Once<&'a Backend>),
    Rotation(R),
}

impl<'a, R: Iterator<Item = &'a Backend>> Iterator for Backends<'a, R> {
    type Item = &'a Backend;
    fn next(&mut self) -> Option<&'a Backend> {
        match self {
            Backends::One(i) => i.next(),
            Backends::Rotation(r) => r.next(),
        }
    }
}

/// A `GET` for a page a browser shows (not a script, image, XHR or upgrade): the only kind of request that may
/// get the "starting" page instead of waiting.
fn wants_page(req: &Request<Incoming>) -> bool {
    if req.method() != Method::GET || req.headers().contains_key(UPGRADE) {
        return false;
    }
    let h = req.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(dest) = header("sec-fetch-dest") {
        if !matches!(dest, "document" | "iframe") {
            return false;
        }
    }
    if header("x-requested-with").is_some() {
        return false;
    }
    h.get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))))
}

/// The "starting" page: 503, never cached, reloads itself once the tenant is ready.
fn starting_page(svc: &ProxyService, service: &Service, host: &str, state: &str, guard: InFlight) -> Response {
    let settings = svc.proxy.passivator.settings();
    let html = settings.page.render(&PageValues {
        service: service.name(),
        host,
        state,
        status_path: &settings.status_path,
        retry_after: PAGE_RETRY_AFTER,
    });
    let mut resp = http::Response::new(ResponseBody::full(html, Some(guard)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(RETRY_AFTER, HeaderValue::from(PAGE_RETRY_AFTER));
    h.insert(VARY, HeaderValue::from_static("Accept"));
    resp
}

/// `Retry-After` of the starting page, in seconds (the page itself reloads sooner, when ready).
const PAGE_RETRY_AFTER: u64 = 2;

/// `GET <status_path>` on a routed host: the state of its service, for the starting page and for tools.
fn status_response(svc: &ProxyService, service: &std::sync::Arc<Service>, guard: InFlight) -> Response {
    let (state, error) = match svc.proxy.passivator.tenant(service) {
        Some(t) => {
            let st = t.phase();
            let error = if st == Phase::Failed { t.last_error() } else { None };
            (st.as_str(), error)
        }
        None => ("running", None),
    };
    let body = serde_json::json!({
        "service": service.name(),
        "state": state,
        "ready": state == "running",
        "error": error,
    });
    let mut resp = http::Response::new(ResponseBody::full(body.to_string(), Some(guard)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// ACME HTTP-01 challenges must stay reachable over plain HTTP, or a certificate could never be issued.
fn is_acme_challenge(req: &Request<Incoming>) -> bool {
    req.uri().path().starts_with("/.well-known/acme-challenge/")
}

/// `308 Permanent Redirect` to the same host, path and query over HTTPS (308 keeps the method and body).
fn https_redirect(host: &str, port: Option<u16>, uri: &Uri, guard: InFlight) -> Response {
    // `OPTIONS *` and the like have no path to keep.
    let path = uri.path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/')).unwrap_or("/");
    let location = match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{path}"),
        _ => format!("https://{host}{path}"),
    };
    let mut resp = http::Response::new(ResponseBody::full(Bytes::new(), Some(guard)));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    // The host was checked and the path came from a parsed URI: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// Elapsed milliseconds, rounded to the microsecond so log lines stay short.
fn millis(start: Instant) -> f64 {
    start.elapsed().as_micros() as f64 / 1000.0
}

fn finish_response(upstream: Upstream, guard: InFlight) -> Response {
    let (mut parts, body) = upstream.into_parts();
    // hyper writes the version we give; the client speaks HTTP/1.1 or h2 whatever the backend spoke.
    parts.version = Version::HTTP_11;
    // Only a 101 keeps the upgrade headers, whether or not the backend repeated `Connection: upgrade`.
    let upgrade =
        if parts.status == StatusCode::SWITCHING_PROTOCOLS { parts.headers.get(UPGRADE).cloned() } else { None };
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        // The backend framed the body with chunks; a Content-Length beside it is wrong and would truncate it.
        parts.headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
    http::Response::from_parts(parts, ResponseBody::upstream(body, guard))
}

/// HTTP/2 lets clients split `Cookie` into several fields; HTTP/1.1 backends expect one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, v);
    }
}

fn error_response(err: &ProxyError, guard: InFlight) -> Response {
    let mut resp = http::Response::new(ResponseBody::full(err.body(), Some(guard)));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some(secs) = err.retry_after() {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn classify_connect(e: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => UpstreamErrorKind::ConnectRefused,
                std::io::ErrorKind::TimedOut => UpstreamErrorKind::ConnectTimeout,
                _ => UpstreamErrorKind::ConnectOther,
            };
        }
        src = s.source();
    }
    UpstreamErrorKind::ConnectOther
}

/// `error: cause: cause` in one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
