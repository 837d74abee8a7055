//! Forwarding one request: route by host, rewrite headers, try backends in round-robin order, stream the
//! response back, and hand upgraded connections (WebSocket) to a tunnel.

use std::borrow::Cow;
use std::error::Error as _;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, Instrument};

use super::body::{BodySlot, RequestBody, ResponseBody};
use super::conn::InFlight;
use super::headers::{add_forwarded, strip_hop_by_hop, upgrade_requested};
use super::{ProxyError, ProxyService, Response};
use crate::metrics::{Unrouted, UpstreamErrorKind};
use crate::routes::{normalize_request_host, Backend, Lookup, Service};

/// Handles one request end to end. Never fails: errors become responses.
pub(super) async fn handle(svc: &ProxyService, req: Request<Incoming>, guard: InFlight) -> Response {
    let start = Instant::now();
    let proxy = &*svc.proxy;

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
    let host_for_log = if proxy.settings.access_log { host.into_owned() } else { String::new() };
    drop(raw_host);

    let method = req.method().clone();
    let path = req.uri().path_and_query().cloned();
    let (response, backend) = match forward(svc, &service, req).await {
        Ok((resp, backend)) => (finish_response(resp, guard), Some(backend)),
        Err((err, backend)) => (error_response(&err, guard), backend),
    };
    let status = response.status();
    service.stats(|n| proxy.metrics.service_stats(n)).record(status.as_u16());
    proxy.metrics.observe_duration(start.elapsed());
    if proxy.settings.access_log {
        let path = path.as_ref().map_or("", |p| p.as_str());
        let backend = backend.as_ref().map_or("-", |b| b.as_str());
        access_log(&host_for_log, &method, path, status, start, service.name(), backend);
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
    mut req: Request<Incoming>,
) -> Result<(Upstream, Backend), (ProxyError, Option<Backend>)> {
    let proxy = &*svc.proxy;
    let upgrade = if req.version() == Version::HTTP_11 { upgrade_requested(req.headers()) } else { None };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let method: Method = parts.method;
    let mut headers: HeaderMap = parts.headers;
    let forwarded_host = match headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => {
            // HTTP/2: backends speak HTTP/1.1 and need a Host header.
            let h = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(h) = &h {
                headers.insert(HOST, h.clone());
            }
            h
        }
    };
    strip_hop_by_hop(&mut headers, upgrade.as_ref());
    add_forwarded(&mut headers, &svc.peer_ip, &proxy.proto, forwarded_host);
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let body = BodySlot::new(body);

    let n = service.backends().len();
    let mut headers = Some(headers);
    let mut client_upgrade = client_upgrade;
    let mut last_backend = None;
    for (i, backend) in service.rotation().enumerate() {
        let is_last = i + 1 == n;
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(backend.authority().clone());
        uri.path_and_query = Some(path.clone());
        let uri = Uri::from_parts(uri).map_err(|e| {
            (
                ProxyError::UpstreamProtocol { service: service.name().into(), reason: e.to_string() },
                Some(backend.clone()),
            )
        })?;
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
        let sent = tokio::time::timeout(proxy.settings.response_timeout, proxy.client.request(upstream_req)).await;
        match sent {
            Ok(Ok(mut resp)) => {
                let tunnel =
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS { client_upgrade.take() } else { None };
                let backend_upgrade = tunnel.map(|client| (client, hyper::upgrade::on(&mut resp)));
                if let Some((client, backend_side)) = backend_upgrade {
                    spawn_tunnel(svc, service, client, backend_side);
                }
                return Ok((resp, backend.clone()));
            }
            Ok(Err(e)) if e.is_connect() => {
                let kind = classify_connect(&e);
                proxy.metrics.upstream_error(kind);
                debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), kind = kind.as_str(), "backend unreachable");
                if body.as_ref().is_some_and(|b| !b.is_intact()) {
                    break;
                }
            }
            Ok(Err(e)) => {
                proxy.metrics.upstream_error(UpstreamErrorKind::Protocol);
                debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), "backend failed");
                let reason = source_chain(&e);
                return Err((ProxyError::UpstreamProtocol { service: service.name().into(), reason }, last_backend));
            }
            Err(_) => {
                proxy.metrics.upstream_error(UpstreamErrorKind::ResponseTimeout);
                let timeout = proxy.settings.response_timeout;
                return Err((ProxyError::UpstreamTimeout { service: service.name().into(), timeout }, last_backend));
            }
        }
    }
    Err((ProxyError::AllBackendsFailed { service: service.name().into() }, last_backend))
}

/// Copies bytes both ways between the client and the backend once both sides have switched protocols.
fn spawn_tunnel(
    svc: &ProxyService,
    service: &Service,
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
) {
    let span = tracing::info_span!("tunnel", service = service.name());
    svc.proxy.tasks.spawn(
        async move {
            match tokio::try_join!(client, backend) {
                Ok((client, backend)) => {
                    let mut client = TokioIo::new(client);
                    let mut backend = TokioIo::new(backend);
                    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                        Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
                        Err(e) => debug!(error = %e, "tunnel ended with an error"),
                    }
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        }
        .instrument(span),
    );
}

/// Elapsed milliseconds, rounded to the microsecond so log lines stay short.
fn millis(start: Instant) -> f64 {
    start.elapsed().as_micros() as f64 / 1000.0
}

fn finish_response(upstream: Upstream, guard: InFlight) -> Response {
    let (mut parts, body) = upstream.into_parts();
    // hyper writes the version we give; the client speaks HTTP/1.1 or h2 whatever the backend spoke.
    parts.version = Version::HTTP_11;
    let upgrade =
        if parts.status == StatusCode::SWITCHING_PROTOCOLS { upgrade_requested(&parts.headers) } else { None };
    strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
    http::Response::from_parts(parts, ResponseBody::upstream(body, guard))
}

fn error_response(err: &ProxyError, guard: InFlight) -> Response {
    let mut resp = http::Response::new(ResponseBody::full(err.body(), Some(guard)));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
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
