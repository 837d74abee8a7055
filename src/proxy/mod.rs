//! The data path: accepts client (downstream) connections, routes each request by hostname and forwards it to
//! a backend.
//!
//! Owns downstream connection handling (`conn`), the request's way through and its single exit (`handler`:
//! metrics and the access-log line of every response are written there), the error vocabulary and the label
//! values of its error counters (`error`), header rewriting (`headers`), body streaming (`body`) and upgraded
//! connections (`tunnel`). The backend side is `upstream`'s: the handler takes a connection from its
//! [`Connector`], sends on it, and `body` puts the connection back in the pool once the response has been read
//! to its end. Reads the route table through [`RouteHandle`] and never changes it; knows nothing of where
//! routes come from. For passivated services it calls passivation's small API ([`Passivator::tenant`],
//! `Tenant::admit`, the page decision, the status endpoint and starting page responses) and knows nothing of
//! the lifecycle behind it. TLS handshakes are `tls`'s; metric names and exposition are `metrics`'.

mod admission;
mod body;
mod conn;
mod error;
mod h2_stream;
mod handler;
mod headers;
mod stream;
mod tunnel;
pub(crate) mod workers;

/// The header rewriting of the data path, for the criterion benchmark `benches/headers.rs` only: not an API.
#[doc(hidden)]
pub mod bench {
    use std::net::IpAddr;

    use http::{HeaderMap, HeaderValue};
    use ipnet::IpNet;

    use super::headers::{add_forwarded, strip_hop_by_hop, Peer};

    /// What one connection's requests are rewritten with.
    #[derive(Debug)]
    pub struct Forwarding {
        peer: Peer,
        trusted: Vec<IpNet>,
        proto: HeaderValue,
    }

    impl Forwarding {
        /// A plain-HTTP connection from `ip`, with `trusted` as the trusted proxies.
        pub fn new(ip: IpAddr, trusted: Vec<IpNet>) -> Self {
            Self { peer: Peer::new(ip, &trusted), trusted, proto: HeaderValue::from_static("http") }
        }

        /// A request's headers as a backend gets them: hop-by-hop headers removed, forwarding headers set.
        pub fn request(&self, headers: &mut HeaderMap) {
            let host = headers.get(http::header::HOST).cloned();
            strip_hop_by_hop(headers, None);
            add_forwarded(headers, &self.peer, &self.trusted, &self.proto, host).insert_into(headers);
        }
    }

    /// A response's headers as the client gets them: hop-by-hop headers removed.
    pub fn response(headers: &mut HeaderMap) {
        strip_hop_by_hop(headers, None);
    }
}

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info_span, Instrument};

pub(crate) use error::{ProxyError, Unrouted, UpstreamErrorKind};

use crate::access_log::AccessLog;
use crate::acme::Challenges;
use crate::metrics::{LabeledCounters, Metrics};
use crate::passivation::Passivator;
use crate::routes::RouteHandle;
use crate::tls::TlsAcceptor;
use crate::upstream::{self, ConnectSettings, Connector};
use admission::AddressLimit;
use body::{BodyLimits, ClientBody, ResponseBody};
use conn::{ConnState, InFlight, Pressure};
use headers::Peer;

/// Limits, timeouts and trust of the data path. Every field has a `serve` flag and a config-file key.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time allowed for a client to send a complete request head (slowloris protection).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1), or header list (h2); larger gets 431.
    pub max_header_size: usize,
    /// Most header fields one request may carry, HTTP/1.1 and h2 alike; more gets 431.
    pub max_header_count: usize,
    /// h2: streams one client connection may have open at once. Each holds at most one backend connection,
    /// so this also caps the backend connections one client connection can hold.
    pub h2_max_concurrent_streams: u32,
    /// How long a client connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// Client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Client connections one client address may hold open at once (nginx's `limit_conn`); more are closed at
    /// once. 0 = no limit.
    pub max_connections_per_address: usize,
    /// Time allowed to open a TCP connection to a backend before trying the next one.
    pub connect_timeout: Duration,
    /// Time allowed for a backend to send response headers: past it, 504.
    pub response_timeout: Duration,
    /// How long an unused pooled backend connection is kept.
    pub pool_idle_timeout: Duration,
    /// Pooled idle connections kept per backend.
    pub pool_max_idle_per_backend: usize,
    /// Close an upgraded connection (WebSocket) when no byte has moved either way for this long.
    pub tunnel_idle_timeout: Duration,
    /// No byte of a request body from the client for this long: 408, and the backend connection is released.
    pub body_timeout: Duration,
    /// Slowest average rate, in bytes/s, at which a request body may stream to a backend once
    /// `min_body_rate_grace` has passed; slower gets 408. 0 = no minimum.
    pub min_body_rate: u64,
    /// Time a streaming request body gets before the minimum rate applies.
    pub min_body_rate_grace: Duration,
    /// Request bodies up to this size are read whole before a backend connection is taken; larger ones have
    /// this much read first, then stream. 0 = stream from the first byte.
    pub request_buffer_size: usize,
    /// No byte of a backend's response body for this long: the client's response is cut (its status line has
    /// gone out) and both connections are closed.
    pub upstream_read_timeout: Duration,
    /// Acknowledge data from backends at once (`TCP_QUICKACK` after every read; see `connector`).
    pub upstream_quickack: bool,
    /// HTTP/2 backends: a PING on each connection this often; one not answered within
    /// `upstream_h2_keep_alive_timeout` closes the connection (its streams fail, later requests open another).
    /// Not in the config file yet: the defaults are the downstream side's.
    pub upstream_h2_keep_alive_interval: Duration,
    pub upstream_h2_keep_alive_timeout: Duration,
    /// h2 clients: a PING on each connection this often; one not answered within `h2_keep_alive_timeout`
    /// closes the connection (a vanished peer). Zero: no PINGs. Not in the config file: what hyper's server was
    /// given, made settable for the tests.
    pub h2_keep_alive_interval: Duration,
    pub h2_keep_alive_timeout: Duration,
    /// A client that reads nothing of its response for this long is disconnected.
    pub send_timeout: Duration,
    /// Total time one request may take, from its head to its response's last byte; `None` = no limit.
    pub request_timeout: Option<Duration>,
    /// While fewer than a tenth of `max_connections` are free, idle keep-alive, request-head, request-body and
    /// send waits are cut to this. Zero = never.
    pub overload_timeout: Duration,
    /// Write an access-log line per request.
    pub access_log: bool,
    /// Which HTTP/1.1 server side serves clients: hyper's, or reveille's own (`conn::h1`).
    pub http1_server: Http1Server,
    /// Which HTTP/2 server speaks to h2 clients (TLS with ALPN `h2`, and h2c with prior knowledge).
    pub http2: Http2Server,
    /// Peers (networks) whose forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are kept and
    /// extended. Any other peer's are replaced, so a client cannot choose the address a backend sees. Empty:
    /// trust no one.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            max_header_count: 100,
            h2_max_concurrent_streams: 128,
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_address: 0,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_backend: 1024,
            tunnel_idle_timeout: Duration::from_secs(3600),
            body_timeout: Duration::from_secs(60),
            min_body_rate: 240,
            min_body_rate_grace: Duration::from_secs(5),
            request_buffer_size: 64 * 1024,
            upstream_read_timeout: Duration::from_secs(60),
            upstream_quickack: true,
            upstream_h2_keep_alive_interval: Duration::from_secs(30),
            upstream_h2_keep_alive_timeout: Duration::from_secs(20),
            h2_keep_alive_interval: Duration::from_secs(30),
            h2_keep_alive_timeout: Duration::from_secs(20),
            send_timeout: Duration::from_secs(60),
            request_timeout: None,
            overload_timeout: Duration::from_secs(2),
            access_log: true,
            http1_server: Http1Server::default(),
            http2: Http2Server::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The HTTP/1.1 server side (issue 30): hyper's `http1::Builder`, or reveille's own codec (`crate::http1`, the
/// one under its HTTP/1.1 client too) in the connection's own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Server {
    Hyper,
    #[default]
    Reveille,
}

/// The HTTP/2 server of the downstream side (issue 27). reveille's own is the default: per gRPC call it runs
/// fewer instructions than hyper's and makes no more system calls, now that a connection asks its stream set
/// again when it yields, so the ready streams' requests reach the backend connection before its task writes
/// them (docs/design/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Http2Server {
    /// reveille's own, on its own HTTP/2 codec (`crate::http2`): every stream served in its connection's task
    /// (`conn::h2`).
    #[default]
    Reveille,
    /// hyper's: a task spawned per stream.
    Hyper,
}

/// hyper's own limit on an HTTP/1.1 request's header fields.
const DEFAULT_MAX_HEADERS: usize = 100;

/// HTTP/2 connections to one `h2c://` backend per worker thread, at most: each carries as many streams as the
/// backend allows (`SETTINGS_MAX_CONCURRENT_STREAMS`), so a few serve any load.
const H2_CONNECTIONS_PER_BACKEND: usize = 4;

/// How often a newcomer waiting for a slot tries again to evict a connection.
const EVICT_RETRY: Duration = Duration::from_millis(20);

/// Everything a request needs, shared by all connections of one listener.
pub(crate) struct Proxy {
    routes: RouteHandle,
    metrics: Arc<Metrics>,
    /// `reveille_unrouted_requests_total`, by the proxy's kinds.
    unrouted: LabeledCounters<Unrouted>,
    /// `reveille_upstream_errors_total`, by the proxy's kinds.
    upstream_errors: LabeledCounters<UpstreamErrorKind>,
    /// Passivated services' tenants: asked for a backend before forwarding.
    passivator: Arc<Passivator>,
    settings: Settings,
    /// How request bodies must arrive, from `settings`.
    body_limits: BodyLimits,
    /// Backend connections: opened, and kept for reuse.
    upstream: Connector,
    /// `reveille_worker_connections_total`, by worker index.
    worker_connections: Box<[prometheus_client::metrics::counter::Counter]>,
    h1: http1::Builder,
    h2: http2::Builder<SpanExecutor>,
    /// What every h2 stream is held to (the send timeout), on either HTTP/2 server.
    streams: Arc<stream::Limits>,
    /// HTTPS redirects of plain-HTTP requests; `None` when no service can ask for one.
    redirect: Redirect,
    /// Client connections served at once, over every listener.
    limit: Arc<Semaphore>,
    /// How close `limit` is to exhausted.
    pressure: Arc<Pressure>,
    /// Connections per client address, when limited.
    per_address: Option<Arc<AddressLimit>>,
    /// Connections and upgraded tunnels, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Where the exit hands each request's line (off unless `settings.access_log`).
    access_log: AccessLog,
    /// Pending ACME HTTP-01 challenges, answered before routing to the service.
    acme: Option<Arc<Challenges>>,
}

/// What requests get before they are routed: HTTPS redirects, ACME HTTP-01 answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlainHttp {
    pub redirect: Redirect,
    /// Pending ACME HTTP-01 challenges, when ACME is on.
    pub acme: Option<Arc<Challenges>>,
}

/// How plain-HTTP requests are redirected to HTTPS.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redirect {
    /// Redirect every service's requests (a service's `https_redirect = false` opts out).
    pub all: bool,
    /// The port written in `Location`; `None` (or 443) writes none.
    pub port: Option<u16>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Proxy {
    pub(crate) fn new(
        routes: RouteHandle,
        metrics: Arc<Metrics>,
        settings: Settings,
        passivator: Arc<Passivator>,
        plain: PlainHttp,
        access_log: AccessLog,
        workers: usize,
    ) -> Arc<Self> {
        let PlainHttp { redirect, acme } = plain;
        let upstream = Connector::new(ConnectSettings {
            connect_timeout: settings.connect_timeout,
            quickack: settings.upstream_quickack,
            workers,
            max_idle_per_backend: settings.pool_max_idle_per_backend,
            idle_timeout: settings.pool_idle_timeout,
            h2_connections_per_backend: H2_CONNECTIONS_PER_BACKEND,
            h2_keep_alive_interval: settings.upstream_h2_keep_alive_interval,
            h2_keep_alive_timeout: settings.upstream_h2_keep_alive_timeout,
        });

        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            // reveille's own watchdog applies the header timeout (see `conn`), so hyper's stays off.
            .header_read_timeout(None)
            .max_header_size(settings.max_header_size);
        if settings.max_header_count != DEFAULT_MAX_HEADERS {
            // hyper's default needs no allocation per request; any other count is allocated on the heap.
            h1.max_headers(settings.max_header_count);
        }
        let settings_limit = settings.max_connections.max(1);
        let pressure = Arc::new(Pressure::new(settings_limit, settings.overload_timeout));
        let streams =
            stream::Limits { send: settings.send_timeout, pressure: pressure.clone(), metrics: metrics.clone() };
        let streams = Arc::new(streams);
        let mut h2 = http2::Builder::new(SpanExecutor(streams.clone()));
        h2.timer(TokioTimer::new())
            .max_header_list_size(settings.max_header_size.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            // Bound what one slow-reading client can make reveille buffer per stream.
            .max_send_buf_size(256 * 1024)
            // Notice vanished h2 peers.
            .keep_alive_interval(Some(settings.h2_keep_alive_interval).filter(|i| !i.is_zero()))
            .keep_alive_timeout(settings.h2_keep_alive_timeout);

        let per_address = AddressLimit::new(settings.max_connections_per_address);
        let body_limits = BodyLimits {
            idle: settings.body_timeout,
            min_rate: settings.min_body_rate,
            grace: settings.min_body_rate_grace,
            buffer: settings.request_buffer_size,
        };
        let worker_connections = (0..workers.max(1)).map(|w| metrics.worker_connections(w)).collect();
        Arc::new(Self {
            routes,
            unrouted: metrics.unrouted(),
            upstream_errors: metrics.upstream_errors(),
            metrics,
            passivator,
            settings,
            body_limits,
            upstream,
            worker_connections,
            h1,
            h2,
            streams,
            redirect,
            limit: Arc::new(Semaphore::new(settings_limit)),
            pressure,
            per_address,
            tasks: TaskTracker::new(),
            access_log,
            acme,
        })
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled, then stops accepting (the listener is
    /// dropped) and asks every open connection to finish its in-flight requests and close. With `tls`, each
    /// connection starts with a TLS handshake (in its own task). Returns when the listener is closed; use
    /// [`Proxy::drained`] to wait for the connections.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<TlsAcceptor>>,
        shutdown: CancellationToken,
    ) {
        // Every way out of the loop is the shutdown (or a panic): the open connections are told, and finish what
        // is in flight and close.
        let _tell = conn::ShutDownOnExit(&self.pressure);
        // One wait for the shutdown for the whole loop: made anew each time round, it entered and left the
        // token's list of waiters (under its lock) each time (about 90 instructions of every connection with a
        // connection per request).
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = &mut cancelled => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the backlog holds clients meanwhile.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // The per-address limit first: a refused connection takes no slot and evicts no one.
            let address = match &self.per_address {
                None => None,
                Some(limit) => match limit.admit(peer.ip()) {
                    Some(guard) => Some(guard),
                    None => {
                        debug!(%peer, max = limit.max(), "the client's address holds its maximum of connections; closing");
                        self.metrics.connection_refused("per_address");
                        continue;
                    }
                },
            };
            // The slot is taken after the accept, not before: a loop waiting in `accept` holds no slot that
            // another loop's newcomer needs.
            let permit = match self.limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::Closed) => break,
                Err(tokio::sync::TryAcquireError::NoPermits) => match self.make_room(&shutdown).await {
                    Some(p) => p,
                    None => break,
                },
            };
            self.pressure.update(self.limit.available_permits(), &self.metrics);
            if tls.is_some() {
                // Plain TCP connections get it before their second write (`conn::ConnIo`), so that one that
                // writes once saves the system call; a TLS handshake writes before that wrapper exists.
                let _ = stream.set_nodelay(true);
            }
            self.worker_connections[upstream::worker() % self.worker_connections.len()].inc();
            let span = info_span!("conn", %peer, tls = tls.is_some());
            // Boxed before it is spawned: the connection's future is several KiB, and tokio moves a task's
            // future by value on its way into the task and at each change of its stage (about ten copies, 12.5
            // KiB each before: 104 000 of the 141 000 instructions of a `Connection: close` request, measured
            // with `MODE=close scripts/instructions-per-request`). Boxed, they move a pointer; built in its box
            // (`boxed`), it is not copied at all in an optimised build.
            let conn = boxed(|| conn::serve(stream, peer, self.clone(), tls.clone(), permit, address));
            // Its polls read the clock once each (`clock`).
            self.tasks.spawn(crate::clock::Clocked::new(conn.instrument(span)));
        }
    }

    /// Every slot is taken and a client is here: waits for a slot, evicting a connection that keeps its slot
    /// waiting (on its client, or lingering) to make one. The eviction is tried again every [`EVICT_RETRY`]
    /// while no slot comes, since a connection becomes evictable only after it has waited a little. The wait
    /// for the slot starts before the first eviction, so the slot it frees comes to this newcomer (the
    /// semaphore serves waiters in order) and not to an accept loop that has no client yet. `None` at shutdown.
    async fn make_room(&self, shutdown: &CancellationToken) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.pressure.update(0, &self.metrics);
        let acquire = self.limit.clone().acquire_owned();
        tokio::pin!(acquire);
        let _waiting = self.pressure.waiter();
        let retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                biased;
                p = &mut acquire => return p.ok(),
                _ = shutdown.cancelled() => return None,
                () = &mut retry => {
                    self.pressure.evict_one(&self.metrics);
                    retry.as_mut().reset(tokio::time::Instant::now() + EVICT_RETRY);
                }
            }
        }
    }

    /// Waits until every connection and upgraded tunnel has ended.
    pub(crate) async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Spawns hyper's background tasks (h2 streams) inside the current span, so their logs carry the connection's
/// fields, each held to the send timeout by a [`stream::Guarded`].
#[derive(Clone, Debug)]
pub(crate) struct SpanExecutor(Arc<stream::Limits>);

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(stream::Guarded::new(fut, self.0.clone()).in_current_span());
    }
}

/// The hyper service of one connection.
#[derive(Clone)]
pub(crate) struct ProxyService {
    proxy: Arc<Proxy>,
    /// The peer's address for the forwarding headers, and whether it is a trusted proxy; decided once per
    /// connection.
    peer: Peer,
    /// The connection's shared state; an upgraded tunnel keeps it (and so the connection's slot).
    conn: Arc<ConnState>,
    /// The connection arrived over TLS.
    tls: bool,
}

impl ProxyService {
    fn new(proxy: Arc<Proxy>, peer: SocketAddr, conn: Arc<ConnState>, tls: bool) -> Self {
        let peer = Peer::new(peer.ip(), &proxy.settings.trusted_proxies);
        Self { proxy, peer, conn, tls }
    }

    /// One stream of reveille's own h2 server (`conn::h2`), to be driven in the connection's task: the request
    /// through the handler, the response sent; held to the send timeout as hyper's stream tasks are.
    fn h2_stream(
        &self,
        req: http::Request<crate::http2::server::RequestBody>,
        respond: crate::http2::server::Respond,
    ) -> impl Future<Output = ()> + Send + '_ {
        // Boxed: the request's future is a few KiB, and on its way into the connection's set of streams it is
        // moved several times (wrapped, instrumented, pushed); boxed once, they move a pointer.
        stream::Guarded::new(boxed(|| h2_stream::serve(self, req, respond)), self.proxy.streams.clone())
    }

    /// `X-Forwarded-Proto` of this connection's requests.
    fn proto(&self) -> &'static HeaderValue {
        static HTTP: HeaderValue = HeaderValue::from_static("http");
        static HTTPS: HeaderValue = HeaderValue::from_static("https");
        if self.tls {
            &HTTPS
        } else {
            &HTTP
        }
    }
}

type Response = http::Response<ResponseBody>;

impl hyper::service::Service<http::Request<Incoming>> for ProxyService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(&self.conn);
        if self.conn.is_h1() {
            self.conn.body_unread(!http_body::Body::is_end_stream(req.body()));
        }
        let this = self.clone();
        let req = req.map(ClientBody::Hyper);
        boxed(|| async move { Ok(handler::handle(&this, req, guard).await) })
    }
}

impl ProxyService {
    /// A request from reveille's own HTTP/1.1 server side (`conn::h1`): the same way through as hyper's, its
    /// future boxed as hyper's is (the connection's own future stays small).
    fn call_h1(&self, req: http::Request<conn::H1Body>) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        let guard = InFlight::new(&self.conn);
        self.conn.body_unread(!http_body::Body::is_end_stream(req.body()));
        let req = req.map(ClientBody::H1);
        boxed(|| handler::handle(self, req, guard))
    }
}

/// `Box::pin(make())`, with the future built in its box. `Box::pin(f(..))` builds the future on the stack and
/// then copies all of it into the box — every byte of its largest state, though a future not yet polled holds
/// only its arguments: 184 instructions of `memcpy` a request for the handler's future, 328 for forwarding's.
/// Allocated first, the future's few written fields go straight to the heap in optimised builds (LLVM passes
/// the box as the place to build it in: an optimisation, not a guarantee; a debug build still copies).
#[inline(always)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
