//! One request, one way through: route by host, answer what reveille answers itself (HTTPS redirect, errors,
//! and passivation's status endpoint and starting page, built by `passivation`), or rewrite headers, try the
//! backends in round-robin order, stream the response back and hand upgraded connections (WebSocket) to a
//! tunnel.
//!
//! Every response leaves through one exit, [`RequestCtx::finish`]: the per-service status counter, the
//! request-duration histogram, the error counters (chosen by the error's source, see [`ProxyError::metric`])
//! and exactly one access-log line (handed to [`AccessLog`](crate::access_log::AccessLog)) are written there
//! and nowhere else. Connect
//! failures are the exception by design: they are counted per attempt, as they happen, because a request may
//! fail over and still succeed.

use std::borrow::Cow;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, LOCATION, RETRY_AFTER, STRICT_TRANSPORT_SECURITY, TE,
    TRANSFER_ENCODING,
};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::{debug, warn, Instrument};

use super::body::{BodyLimits, BodySlot, ClientBody, DownstreamFailure, RequestBody, ResponseBody};
use super::conn::InFlight;
use super::error::{ErrorMetric, UpstreamErrorKind};
use super::headers::{add_forwarded, strip_hop_by_hop, upgrade_requested};
use super::{boxed, tunnel, ProxyError, ProxyService, Response, Settings};
use crate::access_log::Entry;
use crate::passivation::{wants_page, Activity, Refusal};
use crate::routes::{
    normalize_request_host, Backend, Failure, Load, Lookup, Protocol, Retries, RetryBudget, Rotation, Service,
};
use crate::upstream::{
    self, source_chain, Alpn, BackendTls, ConnectError, Connector, H2Failure, H2Head, H2RequestBody, H2SendError,
    PutField, RequestHead, SendError, UpstreamBody, UpstreamError,
};

/// Handles one request end to end. Never fails: errors become responses.
pub(super) async fn handle(svc: &ProxyService, req: Request<ClientBody>, guard: InFlight) -> Response {
    let mut ctx = RequestCtx::new(svc.proxy.access_log.is_on(), &req);
    let outcome = match svc.proxy.settings.request_timeout {
        None => respond(svc, &mut ctx, req, guard).await,
        Some(limit) => match tokio::time::timeout(limit, respond(svc, &mut ctx, req, guard)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let service = ctx.service.as_ref().map_or_else(String::new, |s| s.name().to_string());
                // The request's own guard went with the abandoned future: its error response takes a new one.
                Err((ProxyError::RequestTimeout { service, limit }, InFlight::new(&svc.conn)))
            }
        },
    };
    ctx.finish(svc, outcome)
}

/// What one request leaves for the exit, filled in as it goes: when it began, what it asked for, which
/// service and backend it reached. How it ended is the [`Outcome`] beside it.
struct RequestCtx {
    start: Instant,
    /// The method and target, for the access log; copied only when the log is on, so the hot path copies
    /// nothing otherwise.
    line: Option<(Method, Option<PathAndQuery>)>,
    /// The host for the access log (normalised once routed, as sent when it could not be); kept only when the
    /// log is on.
    host: Option<Box<str>>,
    /// The service the host is routed to: the request is counted and logged under it.
    service: Option<Arc<Service>>,
    /// The backend of the last forwarding attempt.
    backend: Option<Backend>,
    /// The request went to the forwarding phase: whatever its response, it gets the service's HSTS policy.
    forwarded: bool,
    /// A gRPC call (h2, `content-type: application/grpc...`): reveille's own errors answer it in gRPC's terms.
    grpc: bool,
}

/// How a request ended: a response to send, or an error the exit turns into one (with the connection's
/// in-flight guard, which the response body holds until it is sent).
type Outcome = Result<Response, (ProxyError, InFlight)>;

impl RequestCtx {
    fn new(access_log: bool, req: &Request<ClientBody>) -> Self {
        Self {
            start: crate::clock::now(),
            line: access_log.then(|| (req.method().clone(), req.uri().path_and_query().cloned())),
            host: None,
            service: None,
            backend: None,
            forwarded: false,
            // gRPC is h2 only: HTTP/1.1 requests pay one branch, no header lookup.
            grpc: req.version() == Version::HTTP_2 && is_grpc(req.headers()),
        }
    }

    /// Keeps `host` for the access log, when there is one.
    fn log_host(&mut self, host: Option<&str>) {
        if self.line.is_some() {
            self.host = host.map(Box::from);
        }
    }

    /// The one exit, whatever the outcome (pingora's `logging` phase): builds the error response, counts the
    /// error by its source, adds HSTS, records the service's status counter and the request duration, and
    /// writes the request's one access-log line.
    fn finish(self, svc: &ProxyService, outcome: Outcome) -> Response {
        let proxy = &*svc.proxy;
        // A gRPC error goes out as 200; metrics and the access log count the status it stands for.
        let mut counted = None;
        let mut response = match outcome {
            Ok(response) => response,
            Err((err, guard)) => {
                match err.metric() {
                    Some(ErrorMetric::Unrouted(kind)) => proxy.unrouted.inc(kind),
                    Some(ErrorMetric::Upstream(kind)) => proxy.upstream_errors.inc(kind),
                    None => {}
                }
                if err.logged() {
                    warn!(
                        service = self.service.as_ref().map_or("-", |s| s.name()),
                        backend = self.backend.as_ref().map_or("-", |b| b.as_str()),
                        status = err.status().as_u16(),
                        "{err}"
                    );
                } else {
                    debug!(status = err.status().as_u16(), "{err}");
                }
                if self.grpc {
                    counted = Some(err.status());
                    grpc_error_response(&err, guard)
                } else {
                    error_response(&err, guard)
                }
            }
        };
        if svc.tls && self.forwarded {
            if let Some(hsts) = self.service.as_ref().and_then(|s| s.https().hsts.as_ref()) {
                // The backend's own policy, if it sends one, wins.
                if !response.body().raw_fields().is_some_and(|raw| raw.has_sts()) {
                    response.headers_mut().entry(STRICT_TRANSPORT_SECURITY).or_insert_with(|| hsts.clone());
                }
            }
        }
        let status = counted.unwrap_or_else(|| response.status());
        // The clock itself, not the poll's time: a request answered within one poll still took its time.
        let elapsed = self.start.elapsed();
        if let Some(service) = &self.service {
            service.stats(|n| proxy.metrics.service_stats(n)).record(status.as_u16(), elapsed);
        }
        proxy.metrics.observe_duration(elapsed);
        if let Some((method, path)) = &self.line {
            proxy.access_log.log(&Entry {
                peer: svc.peer.as_str(),
                host: self.host.as_deref().unwrap_or("-"),
                method: method.as_str(),
                path: path.as_ref().map_or("", |p| p.as_str()),
                status: status.as_u16(),
                duration: elapsed,
                service: self.service.as_ref().map_or("-", |s| s.name()),
                backend: self.backend.as_ref().map_or("-", |b| b.as_str()),
            });
        }
        // A backend that stalls mid-body is logged with its service and address.
        response.body_mut().set_origin(self.service, self.backend);
        response
    }
}

/// The request's phases up to its response: checks, routing, what reveille answers itself (HTTPS redirect,
/// status endpoint), passivation (wake, starting page), forwarding. Leaves metrics and logs to the exit.
async fn respond(svc: &ProxyService, ctx: &mut RequestCtx, mut req: Request<ClientBody>, guard: InFlight) -> Outcome {
    let proxy = &*svc.proxy;

    if req.method() == Method::CONNECT {
        // reveille forwards to its own backends only; it is not a tunnel to arbitrary hosts.
        return Err((ProxyError::MethodNotAllowed, guard));
    }
    // One lookup of `Host` for both checks: a second field is refused, the first is the host.
    let mut hosts = req.headers().get_all(HOST).iter();
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err((ProxyError::BadHost, guard));
    }
    if let Some(count) = too_many_headers(req.headers(), proxy.settings.max_header_count) {
        return Err((ProxyError::TooManyHeaders { count, limit: proxy.settings.max_header_count }, guard));
    }

    // HTTP/2 carries the host in `:authority` (and absolute-form HTTP/1.1 in the URI); otherwise `Host`.
    let raw_host: Option<Cow<'_, str>> = match req.uri().authority() {
        Some(a) => Some(Cow::Borrowed(a.as_str())),
        None => host_field.and_then(|v| v.to_str().ok()).map(Cow::Borrowed),
    };
    let Some(host) = raw_host.as_deref().and_then(normalize_request_host) else {
        ctx.log_host(raw_host.as_deref());
        return Err((ProxyError::BadHost, guard));
    };
    // The path matters only for hosts that have path routes; `strip` is how much of it the route strips.
    let (service, strip) = match proxy.routes.load().lookup_request(&host, || req.uri().path()) {
        (Lookup::Found(s), strip) => (s.clone(), strip),
        (Lookup::DotSegment, _) => {
            ctx.log_host(raw_host.as_deref());
            return Err((ProxyError::DotSegment, guard));
        }
        (Lookup::MissingService(name), _) => {
            ctx.log_host(raw_host.as_deref());
            let err = ProxyError::MissingService { host: host.into_owned(), service: name.to_string() };
            return Err((err, guard));
        }
        (Lookup::NoRoute, _) => {
            ctx.log_host(raw_host.as_deref());
            // A host with path routes alone still answers its certificate's HTTP-01 challenges.
            if let Some(answer) = proxy.acme.as_ref().and_then(|c| {
                let token = req.uri().path().strip_prefix(ACME_CHALLENGE)?;
                proxy.routes.load().exact_service(&host).and_then(|_| c.http01(token))
            }) {
                return Ok(acme_answer(answer, guard));
            }
            // Before every route source has loaded, the route may only be unread yet: try again, not "unknown".
            if !proxy.routes.is_complete() {
                return Err((ProxyError::RoutesLoading { host: host.into_owned() }, guard));
            }
            return Err((ProxyError::UnknownHost { host: host.into_owned() }, guard));
        }
    };
    ctx.log_host(Some(&host));
    let service = &*ctx.service.insert(service);

    if let Some(challenges) = &proxy.acme {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE) {
            // Only tokens reveille published; any other is the tenant's own business, forwarded as usual.
            if let Some(answer) = challenges.http01(token) {
                return Ok(acme_answer(answer, guard));
            }
        }
    }
    if !svc.tls && service.https().redirect.unwrap_or(proxy.redirect.all) && !is_acme_challenge(&req) {
        return Ok(https_redirect(&host, proxy.redirect.port, req.uri(), guard));
    }
    let passivator = &proxy.passivator;
    if passivator.is_status_request(&req) {
        return Ok(with_guard(passivator.status_response(service), guard));
    }

    let mut guard = guard;
    let mut target = None;
    if let Some(tenant) = passivator.tenant(service) {
        let admitted = match tenant.admit_running() {
            Some(running) => Ok(running),
            // Boxed: a wake's future is large, and every request's future would otherwise carry (and move) it.
            None => boxed(|| tenant.admit(wants_page(&req))).await,
        };
        match admitted {
            Ok((backend, a)) => {
                target = backend;
                guard = guard.with_activity(a);
            }
            Err(Refusal::Starting) => return Ok(with_guard(passivator.starting_page(&tenant, &host), guard)),
            Err(refusal) => return Err((ProxyError::Wake { service: service.name().to_string(), refusal }, guard)),
        }
    }
    drop(host);
    drop(raw_host);
    if strip != 0 {
        strip_prefix(req.uri_mut(), strip);
    }

    ctx.forwarded = true;
    // Boxed: forwarding's future is most of a request's async state, and every level above it would otherwise
    // carry it and copy it when created (a few KiB of memcpy per request).
    let forwarded =
        boxed(|| forward(svc, service, target.as_ref(), guard.activity(), req, &mut ctx.backend, ctx.start)).await;
    match forwarded {
        Ok((upstream, load)) => Ok(finish_response(upstream, load, guard, &proxy.settings, ctx.start)),
        Err(err) => {
            if let (ProxyError::AllBackendsFailed { .. }, Some(tenant)) = (&err, passivator.get(service.name())) {
                // The container may have died under us: have its state checked.
                tenant.suspect();
            }
            Err((err, guard))
        }
    }
}

/// The answer to an HTTP-01 challenge reveille published: its key authorization, as text.
fn acme_answer(answer: String, guard: InFlight) -> Response {
    let response =
        http::Response::builder().header(CONTENT_TYPE, "text/plain").body(answer).expect("a static response");
    with_guard(response, guard)
}

/// Takes `strip` bytes of prefix off the request target's path (a path route's `strip_prefix`): `/api/x?q` as
/// `/x?q`, `/api` as `/`. The scheme and authority (absolute form, h2) stay. In place: the request is not moved.
#[cold]
fn strip_prefix(uri: &mut Uri, strip: usize) {
    let path = crate::routes::stripped_path(uri.path(), uri.query(), strip);
    // The tail of a path that parsed, with its query: it parses too, and so does the target rebuilt with it.
    let Ok(path) = PathAndQuery::try_from(path) else { return };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path);
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
}

/// The number of header fields, when it is over `limit`. HTTP/1.1 heads never are (hyper's parser refuses
/// them with 431 first); h2 header lists are only limited in bytes by the h2 layer. Cookie fields count as one:
/// h2 clients may split the `cookie` header into one field per cookie (RFC 9113 §8.2.3), and they are joined
/// into one before forwarding.
fn too_many_headers(headers: &HeaderMap, limit: usize) -> Option<usize> {
    let count = headers.len();
    if count <= limit {
        return None;
    }
    let cookies = headers.get_all(COOKIE).iter().count();
    let count = count - cookies.saturating_sub(1);
    (count > limit).then_some(count)
}

/// A response reveille wrote itself (passivation's pages), with the guard its body holds.
fn with_guard(response: http::Response<String>, guard: InFlight) -> Response {
    response.map(|body| ResponseBody::full(body, Some(guard)))
}

type Upstream = http::Response<UpstreamBody>;

/// Sends the request to the service's backends in rotation until one answers. A backend that cannot be
/// connected to is skipped (and counted, by attempt); nothing was sent to it, so the next one gets the same
/// request. `last_backend` tells the exit which backend the last attempt went to. Each attempt's outcome goes
/// into its backend's health (an answer below 500 with the request's `start` as its time: no clock read).
/// Returns the response, whose body holds the connection it came on (back to the pool once the body has been
/// read), and with `least_request` the request's count in flight at the backend that answered.
async fn forward(
    svc: &ProxyService,
    service: &Service,
    target: Option<&Backend>,
    activity: Option<&Activity>,
    mut req: Request<ClientBody>,
    last_backend: &mut Option<Backend>,
    start: Instant,
) -> Result<(Upstream, Option<Load>), ProxyError> {
    let proxy = &*svc.proxy;
    let upgrade = if req.version() == Version::HTTP_11 { upgrade_requested(req.headers()) } else { None };
    let downstream_upgrade = upgrade.as_ref().map(|_| tunnel::ClientUpgrade::of(&mut req));

    let (parts, body) = req.into_parts();
    let method: Method = parts.method;
    // reveille's own HTTP/1.1 side writes a backend's fields as they came (a `HEAD` answer's length is its own).
    let raw_fields = matches!(body, ClientBody::H1(_)) && method != Method::HEAD;
    let mut headers: HeaderMap = parts.headers;
    // One authority for routing and for the backend: when the request target carries one (HTTP/2
    // `:authority`, HTTP/1.1 absolute-form), it replaces whatever `Host` said (RFC 9112 §3.2.2).
    if let Some(a) = parts.uri.authority() {
        if let Ok(h) = HeaderValue::from_str(a.as_str()) {
            headers.insert(HOST, h);
        }
    }
    let forwarded_host = headers.get(HOST).cloned();
    let mut te_trailers = false;
    let mut grpc = false;
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut headers);
        // `te` is hop-by-hop: taken out here (the one removal `strip_hop_by_hop` would make on every gRPC call),
        // and put back for an HTTP/2 backend.
        te_trailers = headers.remove(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        grpc = is_grpc(&headers);
    }
    // Small bodies are read whole before any backend is contacted; a slow client holds none of its workers.
    // (Most requests have none: they skip the read, and its future, which is boxed so it does not enlarge
    // every request's.) A gRPC call's body streams from its first byte: a client-streaming or bidirectional
    // call may send its next message only after an answer, or never end; and its messages come as the
    // client has them, so there is no minimum rate.
    let body = if http_body::Body::is_end_stream(&body) {
        None
    } else {
        let stream = BodyLimits { buffer: 0, min_rate: 0, ..proxy.body_limits };
        let limits = if grpc { &stream } else { &proxy.body_limits };
        match boxed(|| BodySlot::read(body, limits, &svc.conn)).await {
            Ok(b) => b,
            Err(failure) => return Err(downstream_failure(failure)),
        }
    };
    // A body of unknown length would otherwise be dropped for methods like GET; say it is chunked.
    let chunked = body.as_ref().is_some_and(|b| b.exact_len().is_none()) && !headers.contains_key(CONTENT_LENGTH);
    strip_hop_by_hop(&mut headers, upgrade.as_ref());
    if chunked {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    let appended = add_forwarded(&mut headers, &svc.peer, &proxy.settings.trusted_proxies, svc.proto(), forwarded_host);
    // Backends get the origin form (`/path?query`); the authority is in `Host`.
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));

    // A passivated service without fixed backends has one: its container's address.
    let mut backends = match target {
        Some(b) => Backends::One(Some(b)),
        None => Backends::Rotation { rotation: service.rotation(start), peeked: None },
    };
    let template = Template {
        // Safe to send twice (RFC 9110 §9.2.2), with a body that is still whole for a second time.
        replayable: is_idempotent(&method) && body.as_ref().is_none_or(BodySlot::is_whole),
        head: RequestHead { method, path, headers, upgrade: upgrade.is_some(), appended, raw_fields },
        body: body.as_ref(),
        te_trailers,
    };
    let mut downstream_upgrade = downstream_upgrade;
    let timeout = proxy.settings.response_timeout;
    // A service that retries counts its requests for its budget (one branch for the others).
    let retries = if target.is_none() { service.retries() } else { None };
    if let Some((_, budget)) = retries {
        budget.deposit(start);
    }
    while let Some(backend) = backends.next() {
        *last_backend = Some(backend.clone());

        // The response timeout counts from the end of the request body, not from its start: a slow upload is
        // the client's time, not the backend's.
        let deadline = async {
            if let Some(b) = &body {
                b.sent().await;
            }
            if svc.conn.is_h1() {
                // One request at a time, polled by the connection's task: its watchdog keeps the time.
                let due = svc.conn.response_due(timeout);
                std::future::poll_fn(|_| due.poll_late()).await;
            } else {
                tokio::time::sleep(timeout).await;
            }
        };
        let load = if service.counts_load() { Some(Load::start(backend)) } else { None };
        let sent = tokio::select! {
            r = send_to(svc, service, backend, &template) => Some(r),
            () = deadline => None,
        };
        match sent {
            Some(Ok(mut resp)) => {
                if resp.status().is_server_error() {
                    failed(svc, service, backend, Failure::ServerError);
                    let status = resp.status().as_u16();
                    let another = backends.peek();
                    if template.replayable && may_retry(svc, service, retries, another, |r| r.on_status(status)) {
                        // Its body is dropped unread: the connection closes, it never goes back to the pool mid-body.
                        debug!(
                            service = service.name(),
                            backend = backend.as_str(),
                            status = resp.status().as_u16(),
                            "retrying on another backend"
                        );
                        continue;
                    }
                } else {
                    backend.answered(start);
                }
                // An upgraded connection is the tunnel's, never the pool's.
                if let Some(backend_side) = resp.body_mut().take_upgraded() {
                    if let Some(downstream) = downstream_upgrade.take() {
                        let span = tracing::info_span!("tunnel", service = service.name());
                        let run = tunnel::run(
                            downstream,
                            backend_side,
                            proxy.settings.tunnel_idle_timeout,
                            svc.conn.clone(),
                            // The tunnel outlives the response, and keeps the tenant in use as long as it is open.
                            activity.cloned(),
                        );
                        proxy.tasks.spawn(run.instrument(span));
                    }
                }
                return Ok((resp, load));
            }
            Some(Err(SendFailure::Connect(e))) => {
                let kind = classify_connect(&e);
                proxy.upstream_errors.inc(kind);
                let why = match kind {
                    UpstreamErrorKind::ConnectRefused => Failure::Refused,
                    UpstreamErrorKind::ConnectTimeout => Failure::ConnectTimeout,
                    UpstreamErrorKind::Tls => Failure::Tls,
                    _ => Failure::Connect,
                };
                failed(svc, service, backend, why);
                if kind == UpstreamErrorKind::Tls {
                    // A certificate that does not verify is the operator's to fix, and its reason is only here.
                    warn!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), kind = kind.as_str(), "backend TLS handshake failed");
                } else {
                    debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), kind = kind.as_str(), "backend unreachable");
                }
                if body.as_ref().is_some_and(|b| !b.is_intact()) {
                    break;
                }
            }
            Some(Err(SendFailure::Upstream(e))) => {
                if let Some(failure) = body.as_ref().and_then(BodySlot::downstream_failure) {
                    debug!(service = service.name(), error = %source_chain(&e), "the client's upload failed");
                    return Err(downstream_failure(failure));
                }
                failed(svc, service, backend, Failure::Protocol);
                let another = backends.peek();
                let reset = e.closed_before_answer();
                if template.replayable && may_retry(svc, service, retries, another, |r| r.reset && reset) {
                    debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), "backend closed the connection without an answer; retrying on another backend");
                    continue;
                }
                warn!(service = service.name(), backend = backend.as_str(), error = %source_chain(&e), "backend failed to answer");
                return Err(ProxyError::UpstreamProtocol { service: service.name().into() });
            }
            Some(Err(SendFailure::UpgradeToH2)) => {
                return Err(ProxyError::UpgradeToH2 { service: service.name().into() });
            }
            None => {
                failed(svc, service, backend, Failure::Timeout);
                return Err(ProxyError::UpstreamTimeout { service: service.name().into(), timeout });
            }
        }
    }
    Err(ProxyError::AllBackendsFailed { service: service.name().into() })
}

/// Records a failed attempt at `backend` in its health, and when that ejects it, says so: one warn line and
/// `reveille_backend_ejections_total`.
fn failed(svc: &ProxyService, service: &Service, backend: &Backend, why: Failure) {
    if let Some(length) = service.failed(backend, why) {
        svc.proxy.metrics.balancer().ejected(service.name(), backend.as_str());
        warn!(
            service = service.name(),
            backend = backend.as_str(),
            last_failure = why.as_str(),
            "backend ejected for {} after failing too often in a row",
            humantime::format_duration(length)
        );
    }
}

/// Whether a replayable request is retried on the next backend (`another`: there is one): when the service
/// retries what happened (`on`), its budget decides, and the decision is counted in `reveille_retries_total`.
fn may_retry(
    svc: &ProxyService,
    service: &Service,
    retries: Option<(&Retries, &RetryBudget)>,
    another: bool,
    on: impl FnOnce(&Retries) -> bool,
) -> bool {
    let Some((policy, budget)) = retries else { return false };
    if !another || !on(policy) {
        return false;
    }
    let ok = budget.withdraw();
    svc.proxy.metrics.balancer().retry(service.name(), if ok { "retried" } else { "budget_exhausted" });
    ok
}

/// What each attempt's request is built from. The head is only borrowed by each attempt (written straight
/// from here), so trying a second backend or replaying on a new connection copies nothing.
struct Template<'a> {
    head: RequestHead,
    body: Option<&'a BodySlot>,
    /// The request may go out a second time after a backend closed a kept-alive connection under it.
    replayable: bool,
    /// The client sent `te: trailers` (gRPC does): kept towards h2 backends, dropped as hop-by-hop for h1.
    te_trailers: bool,
}

impl Template<'_> {
    /// A body for one attempt.
    fn body(&self) -> RequestBody {
        self.body.map_or(RequestBody::Empty, BodySlot::attempt)
    }
}

/// Why one backend did not answer.
enum SendFailure {
    /// No connection: nothing was sent, another backend may get the request.
    Connect(ConnectError),
    /// The request (or part of it) may have reached the backend, which did not answer.
    Upstream(UpstreamError),
    /// An upgrade (WebSocket) to a backend spoken to over HTTP/2: nothing sent, nothing wrong with the backend.
    UpgradeToH2,
}

/// One backend's attempt: on a pooled connection if there is one, else a new one. A backend may close a
/// kept-alive connection just as a request goes out on it (its idle timer and our request cross). Then the
/// request goes again, once, on a new connection — if none of it went out (always safe), or if it is
/// replayable (idempotent, body still whole) and the connection closed before any answer. A request that is
/// not safe to repeat and may have been received is never sent twice: it fails with 502.
async fn send_to(
    svc: &ProxyService,
    service: &Service,
    backend: &Backend,
    template: &Template<'_>,
) -> Result<Upstream, SendFailure> {
    // Plain HTTP/1.1 pays this one branch; `h2c://` backends go to the HTTP/2 client, `https://` ones take
    // their service's TLS settings and pool.
    let pool = &svc.proxy.upstream;
    let key = backend.authority();
    let tls = match backend.protocol() {
        Protocol::Http1 => None,
        Protocol::H2c => return boxed(|| send_h2(svc, service, backend, template, Via::H2c)).await,
        Protocol::Https => {
            let tls = backend_tls(service)?;
            if pool.tls_speaks_h2(tls, key) {
                return boxed(|| send_h2(svc, service, backend, template, Via::Tls(tls, None))).await;
            }
            Some(tls)
        }
    };
    let checked_out = match tls {
        None => pool.checkout(key),
        Some(tls) => pool.checkout_tls(tls, key),
    };
    let conn = match checked_out {
        Some(c) => c,
        // Boxed, as a new connection is the rare case and its future is large.
        None => match boxed(|| open(pool, backend, tls)).await? {
            Opened::Http1(c) => c,
            Opened::H2(tls, stream) => {
                return boxed(|| send_h2(svc, service, backend, template, Via::Tls(tls, Some(stream)))).await
            }
        },
    };
    let reused = conn.is_reused();
    let SendError { error, unsent, answered } = match upstream::send(conn, &template.head, template.body()).await {
        Ok(resp) => return Ok(resp),
        Err(e) => e,
    };
    // The backend closed a kept-alive connection under the request, before any answer.
    let closed = unsent || (!answered && error.closed_before_answer());
    if !reused || !closed {
        return Err(SendFailure::Upstream(error));
    }
    svc.proxy.upstream_errors.inc(UpstreamErrorKind::ReusedClosed);
    // Safe to send again: nothing of it went out, or it may be repeated.
    if !unsent && !template.replayable {
        return Err(SendFailure::Upstream(error));
    }
    debug!(service = service.name(), backend = backend.as_str(), error = %source_chain(&error), "kept-alive backend connection closed under the request; sending it again on a new one");
    let fresh = match boxed(|| open(pool, backend, tls)).await? {
        Opened::Http1(c) => c,
        Opened::H2(tls, stream) => {
            return boxed(|| send_h2(svc, service, backend, template, Via::Tls(tls, Some(stream)))).await
        }
    };
    upstream::send(fresh, &template.head, template.body()).await.map_err(|e| SendFailure::Upstream(e.error))
}

/// The TLS settings an `https://` backend is reached with: its service's.
fn backend_tls(service: &Service) -> Result<&BackendTls, SendFailure> {
    // A service built without `ServiceSpec::to_service` (none is): no settings to verify with.
    service.backend_tls().ok_or_else(|| SendFailure::Connect(ConnectError::tls("the service has no TLS settings")))
}

/// Times a request an h2 backend did not process (GOAWAY, `REFUSED_STREAM`) is sent again.
const H2_RESENDS: usize = 3;

/// How an HTTP/2 backend is reached.
enum Via<'a> {
    /// `h2c://`: TCP, prior knowledge.
    H2c,
    /// `https://` whose ALPN picked `h2`: the service's TLS settings, and the connection just opened, if any.
    Tls(&'a BackendTls, Option<Box<TlsStream<TcpStream>>>),
}

/// One attempt on an HTTP/2 backend: a stream on one of its multiplexed connections. A request the backend
/// says it did not process (a GOAWAY under it, a refused stream) goes again on another connection, whatever
/// its method (RFC 9113 §8.7), as long as its body can be sent again (in memory, or not yet touched).
async fn send_h2(
    svc: &ProxyService,
    service: &Service,
    backend: &Backend,
    template: &Template<'_>,
    mut via: Via<'_>,
) -> Result<Upstream, SendFailure> {
    if template.head.upgrade {
        return Err(SendFailure::UpgradeToH2);
    }
    let pool = &svc.proxy.upstream;
    let key = backend.authority();
    let mut resends = 0;
    loop {
        let sent = match &mut via {
            Via::H2c => {
                let (head, body) = h2_request(key, template, "http");
                pool.send_h2c(key, &head, body).await
            }
            Via::Tls(tls, first) => {
                let (head, body) = h2_request(key, template, "https");
                pool.send_h2_tls(tls, key, first.take(), &head, body).await
            }
        };
        match sent {
            Ok(resp) => return Ok(resp.map(UpstreamBody::h2)),
            Err(H2Failure::Connect(e)) => return Err(SendFailure::Connect(e)),
            Err(H2Failure::Send(H2SendError { error, unprocessed })) => {
                let again = unprocessed && resends < H2_RESENDS && template.body.is_none_or(BodySlot::is_intact);
                if !again {
                    return Err(SendFailure::Upstream(error));
                }
                resends += 1;
                debug!(service = service.name(), backend = backend.as_str(), scheme = backend.protocol().scheme(), error = %source_chain(&error), "the backend did not process the request; sending it again on another connection");
            }
        }
    }
}

/// A connection just opened: HTTP/1.1 (TCP, or TLS whose ALPN picked `http/1.1` or nothing), or TLS whose
/// ALPN picked `h2`, for the HTTP/2 client.
enum Opened<'a> {
    Http1(upstream::Conn),
    H2(&'a BackendTls, Box<TlsStream<TcpStream>>),
}

/// A new connection to `backend`: TCP, or TLS when `tls` is given.
async fn open<'a>(pool: &Connector, backend: &Backend, tls: Option<&'a BackendTls>) -> Result<Opened<'a>, SendFailure> {
    let key = backend.authority();
    let Some(tls) = tls else {
        return pool.connect(key).await.map(Opened::Http1).map_err(SendFailure::Connect);
    };
    let connected: upstream::TlsConnected = pool.connect_tls(tls, key).await.map_err(SendFailure::Connect)?;
    Ok(match connected.alpn {
        Alpn::Http1 => Opened::Http1(pool.adopt_tls(tls, key, connected.stream)),
        Alpn::H2 => Opened::H2(tls, Box::new(connected.stream)),
    })
}

/// The request as an h2 backend gets it: its head written straight from the template (no map copied), and a
/// body for this attempt.
fn h2_request<'t>(
    backend: &'t Authority,
    template: &'t Template<'t>,
    scheme: &'static str,
) -> (ToH2<'t>, H2RequestBody) {
    let body = template.body();
    // As hyper's client did: a body of known length carries it, unless the request says it already.
    let content_length = http_body::Body::size_hint(&body).exact().filter(|&len| {
        (len != 0 || !matches!(template.head.method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT))
            && !template.head.headers.contains_key(CONTENT_LENGTH)
    });
    let head = ToH2 { template, backend, scheme, content_length };
    (head, H2RequestBody::new(body.map_err(Into::into)))
}

/// A request's head towards an h2 backend: `Host` becomes `:authority` (the backend's when the request's is not
/// an authority), the framing is h2's own (the client leaves `Transfer-Encoding` out), `te: trailers` stays when
/// the client sent it, the appended forwarding fields take the place of any of the same name.
struct ToH2<'t> {
    template: &'t Template<'t>,
    backend: &'t Authority,
    scheme: &'static str,
    content_length: Option<u64>,
}

impl H2Head for ToH2<'_> {
    fn method(&self) -> &Method {
        &self.template.head.method
    }

    fn fields(&self, put: &mut PutField<'_>) {
        let head = &self.template.head;
        let host = head.headers.get(HOST).map(HeaderValue::as_bytes).filter(|h| is_authority(h));
        put(b":method", head.method.as_str().as_bytes(), false);
        put(b":scheme", self.scheme.as_bytes(), false);
        put(b":authority", host.unwrap_or(self.backend.as_str().as_bytes()), false);
        put(b":path", head.path.as_str().as_bytes(), false);
        for (name, value) in &head.headers {
            if head.appended.iter().any(|(n, _)| n == name) {
                continue;
            }
            put(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive());
        }
        for (name, value) in head.appended.iter() {
            put(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive());
        }
        if self.template.te_trailers {
            put(b"te", b"trailers", false);
        }
        if let Some(len) = self.content_length {
            put(b"content-length", itoa::Buffer::new().format(len).as_bytes(), false);
        }
    }
}

/// Whether a `Host` value can be an `:authority` (RFC 3986's characters, no user info, not empty).
fn is_authority(host: &[u8]) -> bool {
    !host.is_empty() && host.iter().all(|&b| b.is_ascii_alphanumeric() || b".-_~!$&'()*+,;=:[]%".contains(&b))
}

/// Methods a client may send twice with the effect of once (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// The backends one request may try: its container's address, or its service's rotation (whose next backend
/// a retry looks at before it gives up a response).
enum Backends<'a> {
    One(Option<&'a Backend>),
    Rotation { rotation: Rotation<'a>, peeked: Option<&'a Backend> },
}

impl<'a> Backends<'a> {
    /// True when there is another backend to try.
    fn peek(&mut self) -> bool {
        match self {
            Backends::One(b) => b.is_some(),
            Backends::Rotation { rotation, peeked } => {
                if peeked.is_none() {
                    *peeked = rotation.next();
                }
                peeked.is_some()
            }
        }
    }
}

impl<'a> Iterator for Backends<'a> {
    type Item = &'a Backend;
    fn next(&mut self) -> Option<&'a Backend> {
        match self {
            Backends::One(b) => b.take(),
            Backends::Rotation { rotation, peeked } => peeked.take().or_else(|| rotation.next()),
        }
    }
}

/// Where ACME CAs ask for HTTP-01 answers.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// ACME HTTP-01 challenges must stay reachable over plain HTTP, or a certificate could never be issued.
fn is_acme_challenge(req: &Request<ClientBody>) -> bool {
    req.uri().path().starts_with(ACME_CHALLENGE)
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

/// The answer to a client whose body could not be read.
fn downstream_failure(failure: DownstreamFailure) -> ProxyError {
    match failure {
        DownstreamFailure::Aborted => ProxyError::ClientAborted,
        DownstreamFailure::Malformed => ProxyError::BadBody,
        DownstreamFailure::Idle => ProxyError::BodyTimeout { reason: "no byte within the body timeout" },
        DownstreamFailure::TooSlow => ProxyError::BodyTimeout { reason: "slower than the minimum body rate" },
    }
}

/// The backend's response as the client gets it. Its body is watched: no byte for the upstream read timeout,
/// or the request's total time passing, ends it. `load` (`least_request`: the request in flight at its backend)
/// is held by the body until it ends.
fn finish_response(
    upstream: Upstream,
    load: Option<Load>,
    guard: InFlight,
    settings: &Settings,
    start: Instant,
) -> Response {
    let (mut parts, body) = upstream.into_parts();
    // hyper writes the version we give; the client speaks HTTP/1.1 or h2 whatever the backend spoke.
    parts.version = Version::HTTP_11;
    // The backend side left out the hop-by-hop fields as it read the head (only a 101 keeps its `Upgrade`),
    // and a `Content-Length` beside chunked framing.
    let deadline = settings.request_timeout.map(|t| tokio::time::Instant::from_std(start + t));
    // Built in place: the body is large, and a move is a copy.
    http::Response::from_parts(
        parts,
        ResponseBody::upstream(body, guard, settings.upstream_read_timeout, deadline, load),
    )
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

/// A gRPC call (`content-type: application/grpc`, `application/grpc+proto` and the like).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

const GRPC: &[u8] = b"application/grpc";

/// reveille's own error as a gRPC client reads it: 200, trailers-only (`grpc-status` and `grpc-message` in the
/// headers, no body), as gRPC's HTTP/2 protocol has servers answer a call they fail at once.
fn grpc_error_response(err: &ProxyError, guard: InFlight) -> Response {
    let mut resp = http::Response::new(ResponseBody::full(Bytes::new(), Some(guard)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(err.grpc_status())));
    if let Ok(v) = HeaderValue::from_str(&err.grpc_message()) {
        headers.insert("grpc-message", v);
    }
    resp
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

fn classify_connect(e: &ConnectError) -> UpstreamErrorKind {
    if e.is_tls() {
        return UpstreamErrorKind::Tls;
    }
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
