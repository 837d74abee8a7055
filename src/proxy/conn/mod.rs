//! One client connection: protocol detection (HTTP/1.1 or h2c prior knowledge), the header-read, idle and
//! send timers, shedding slow connections when the slots run out ([`Pressure`]), and graceful shutdown.
//!
//! hyper's own `header_read_timeout` also runs while an HTTP/1.1 connection waits for its next request, so it
//! would cap the keep-alive idle time at the header timeout. reveille keeps the two apart: [`ConnState`] knows
//! whether the connection is idle, reading a request head, or busy, and [`Watchdog`] applies the matching limit.
//! An h2 connection gets the header timeout until its first stream opens. While a request is in flight the
//! watchdog only watches for a client that reads nothing (`send_timeout`) and, under pressure, for a body that
//! waits on its client or its backend; the bodies' own timers are `body`'s.
//!
//! [`ConnState`] also holds the connection's slot (the `max_connections` permit and the open-connections gauge):
//! an upgraded connection (WebSocket) keeps it for as long as its tunnel lives.
//!
//! HTTP/1.1 is served by reveille's own server side (`h1.rs`, on the codec in `crate::http1`) unless
//! `[server] http1 = "hyper"` asks for hyper's; h2 by reveille's own (`h2.rs`, on the codec in `crate::http2`) unless
//! `[server] http2 = "hyper"` asks for hyper's. All of them run under the same `drive` loop.
//!
//! The files: this one holds the connection's state ([`ConnState`], [`InFlight`]) and its task (`serve`, the
//! `drive` loop); `h1.rs` reveille's own HTTP/1.1 server side; `h2.rs` reveille's own h2 server; `io.rs` the
//! socket wrapper and the lingering close; `pressure.rs` the slots' pressure and evictions; `watchdog.rs` the timer that applies the limits;
//! `date.rs` the `Date` both servers add.

mod date;
mod h1;
pub(super) use date::date_now;
mod h2;
mod io;
mod pressure;
mod watchdog;

use std::future::Future;
use std::io as std_io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

pub(crate) use h1::{H1Body, H1Upgrade};
pub(crate) use pressure::{Pressure, ShutDownOnExit};

use super::admission::AddressGuard;
use super::{boxed, Http1Server, Http2Server, Proxy, ProxyService, SpanExecutor};
use crate::tls::TlsAcceptor;
use io::ConnIo;
use watchdog::{Expiry, Watchdog};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's place in the `max_connections` limit and the open-connections gauge, released on drop.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The connection's place in its client address's count, when that is limited.
    _address: Option<AddressGuard>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}
/// How long an idle connection that was asked to close (GOAWAY sent) may take before it is dropped: an h2
/// client that never acknowledges must not keep its slot.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the watchdog and the request path share about one connection.
pub(crate) struct ConnState {
    epoch: Instant,
    /// Held by the connection task, its requests and its tunnel, if upgraded.
    slot: Slot,
    /// Requests whose response has not finished (0 or 1 for HTTP/1.1, any number for h2).
    in_flight: AtomicU32,
    /// When the first bytes of the next request head arrived, in ms since `epoch` plus one; 0 = not reading a
    /// head. Only tracked for HTTP/1.1.
    head_started: AtomicU64,
    /// When `in_flight` last dropped to zero, in ms since `epoch`.
    idle_since: AtomicU64,
    /// Since when a write to the client has been waiting for the socket, in ms since `epoch` plus one; 0 = not
    /// waiting.
    write_blocked: AtomicU64,
    /// Since when a request body has been waiting for the client's next bytes, in ms since `epoch` plus one;
    /// 0 = not waiting. With h2, the last stream to start or stop waiting sets it.
    body_wait: AtomicU64,
    /// The same for a response body waiting on its backend.
    upstream_wait: AtomicU64,
    /// HTTP/1.1: when the response head of the request in flight is due from its backend (ms since `epoch`,
    /// + 1), 0 when none is awaited; and whether the watchdog found it late.
    response_due: AtomicU64,
    response_late: AtomicBool,
    /// Whether the connection slots are nearly exhausted.
    pressure: Arc<Pressure>,
    /// This connection's key in `pressure`'s registry.
    id: usize,
    /// What others told the connection ([`Signal`]): set by an eviction, the shutdown, a rise of pressure.
    signals: AtomicU8,
    /// Woken when a signal is set: the task of the connection's wait that looked at `signals` last. One waiter
    /// at a time (a second would silently replace the first): the connection's task (`guarded!`, then `drive`),
    /// then its lingering close, which starts once `drive` has ended.
    signal_waker: AtomicWaker,
    /// When it was evicted, in ms since `epoch` plus one; 0 = not evicted.
    evicted_at: AtomicU64,
    /// Its response is done and it is closing by lingering (`io::linger`): first in line for eviction.
    lingering: AtomicBool,
    /// Upgraded to a tunnel: doing work, never evicted.
    upgraded: AtomicBool,
    track_heads: AtomicBool,
    /// HTTP/1.1: the current request has a body that has not been read to its end. Closing the socket then
    /// would reset the connection, and the reset can destroy the response before the client reads it.
    body_unread: AtomicBool,
    /// Asked to close (idle, or shutting down; set by `drive`): no new request is read once the one in flight
    /// (if any) is answered, and the watchdog watches only that request.
    closing: AtomicBool,
    /// hyper finished the connection itself (rather than reveille cutting it for a timeout or eviction): a
    /// close that may linger.
    finished: AtomicBool,
    /// h2: streams reset because their client took nothing of the response within the send timeout.
    stream_stalls: AtomicU64,
}

/// What the rest of the proxy tells a connection, as bits of [`ConnState`]'s `signals`. They were a
/// cancellation token per connection and waiters on notifiers every connection shares (the shutdown token,
/// pressure's `rose`); registered and dropped by every connection, they cost about 800 instructions of each
/// (`MODE=close scripts/instructions-per-request`). The registry of connections that eviction keeps anyway
/// ([`Pressure`]) now reaches each connection instead.
struct Signal;

impl Signal {
    /// A newcomer needs the slot: end now (see [`Pressure::evict_one`]).
    const EVICTED: u8 = 1;
    /// The proxy is shutting down: finish what is in flight and close ([`Pressure::shut_down`]).
    const SHUTDOWN: u8 = 2;
    /// Pressure rose: the waits are cut, look at the limits again.
    const ROSE: u8 = 4;
}

impl ConnState {
    fn new(slot: Slot, pressure: Arc<Pressure>, id: usize) -> Self {
        Self {
            id,
            signals: AtomicU8::new(0),
            signal_waker: AtomicWaker::new(),
            evicted_at: AtomicU64::new(0),
            lingering: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            epoch: Instant::from_std(crate::clock::now()),
            slot,
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            body_wait: AtomicU64::new(0),
            upstream_wait: AtomicU64::new(0),
            response_due: AtomicU64::new(0),
            response_late: AtomicBool::new(false),
            pressure,
            track_heads: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            stream_stalls: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        crate::clock::now().saturating_duration_since(self.epoch.into_std()).as_millis() as u64
    }

    /// Tells the connection `signal` and wakes the wait that looks for it.
    fn signal(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.signal_waker.wake();
    }

    fn is_evicted(&self) -> bool {
        self.signals.load(Ordering::Acquire) & Signal::EVICTED != 0
    }

    /// Ready with those of `wanted` that were signalled, once one was; a [`Signal::ROSE`] it returns is
    /// consumed (each rise is told once). One waiter at a time: the connection's task, or its lingering close
    /// after it.
    fn poll_signals(&self, cx: &mut Context<'_>, wanted: u8) -> Poll<u8> {
        self.signal_waker.register(cx.waker());
        let got = self.signals.load(Ordering::Acquire) & wanted;
        if got == 0 {
            return Poll::Pending;
        }
        if got & Signal::ROSE != 0 {
            self.signals.fetch_and(!Signal::ROSE, Ordering::AcqRel);
        }
        Poll::Ready(got)
    }

    /// [`ConnState::poll_signals`] as a future.
    async fn signalled(&self, wanted: u8) -> u8 {
        std::future::poll_fn(|cx| self.poll_signals(cx, wanted)).await
    }

    /// The connection now carries a tunnel (WebSocket): it is doing work and is never evicted.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// How long the connection has been waiting on its client (for a first request, a request head, the rest
    /// of a body, or to read its response) or on a backend gone quiet mid-body; `None` while it is doing work.
    fn waiting_ms(&self) -> Option<u64> {
        if self.upgraded.load(Ordering::Relaxed) || self.is_evicted() {
            return None;
        }
        if self.lingering.load(Ordering::Relaxed) {
            // Its response is out: it only waits for the client to stop sending. Evicted before anyone else.
            return Some(u64::MAX);
        }
        let since = if self.in_flight.load(Ordering::Relaxed) == 0 {
            match self.head_started.load(Ordering::Relaxed) {
                0 => self.idle_since.load(Ordering::Relaxed),
                started => started - 1,
            }
        } else {
            [&self.body_wait, &self.upstream_wait, &self.write_blocked]
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|&t| t != 0)
                .min()?
                - 1
        };
        Some(self.now_ms().saturating_sub(since))
    }

    /// Notes whether a write to the client could proceed; a client that reads nothing is found by the watchdog.
    #[inline]
    fn on_write<T>(&self, res: &Poll<T>) {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        match res {
            Poll::Pending if blocked == 0 => self.write_blocked.store(self.now_ms() + 1, Ordering::Relaxed),
            Poll::Ready(_) if blocked != 0 => self.write_blocked.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// A request body starts (or stops) waiting for the client.
    pub(crate) fn body_waiting(&self, waiting: bool) {
        self.body_wait.store(if waiting { self.now_ms() + 1 } else { 0 }, Ordering::Relaxed);
    }

    /// An HTTP/1.1 request with a body starts (`true`), or its body was read to the end (`false`).
    pub(crate) fn body_unread(&self, unread: bool) {
        self.body_unread.store(unread, Ordering::Relaxed);
    }

    /// HTTP/1.1 (not h2): one request at a time, its bodies polled by the connection's own task.
    pub(crate) fn is_h1(&self) -> bool {
        self.track_heads.load(Ordering::Relaxed)
    }

    /// h2: a stream of this connection was reset for the send timeout.
    pub(crate) fn stream_stalled(&self) {
        self.stream_stalls.fetch_add(1, Ordering::Relaxed);
    }

    /// h2: how many streams of this connection were reset for the send timeout so far.
    pub(crate) fn stream_stalls(&self) -> u64 {
        self.stream_stalls.load(Ordering::Relaxed)
    }

    /// HTTP/1.1: the response head is due from the backend within `timeout` from now, until the guard is
    /// dropped. The connection's watchdog keeps the time, with the timer it already has: a timer of its own
    /// for every request (made, registered, cancelled) was some 600 instructions of each. When the time is up,
    /// [`ResponseDue::poll_late`] says so.
    pub(crate) fn response_due(&self, timeout: Duration) -> ResponseDue<'_> {
        // + 1 for "none" being 0, and 1 more: the clock is read in whole ms, and the limit must not come early.
        let due = self.now_ms().saturating_add(timeout.as_millis() as u64).saturating_add(2);
        self.response_late.store(false, Ordering::Relaxed);
        self.response_due.store(due, Ordering::Relaxed);
        ResponseDue(self)
    }

    /// A response body starts (or stops) waiting for its backend.
    pub(crate) fn upstream_waiting(&self, waiting: bool) {
        self.upstream_wait.store(if waiting { self.now_ms() + 1 } else { 0 }, Ordering::Relaxed);
    }

    /// The minimum body rate's grace, cut to the overload timeout while the slots are nearly exhausted.
    pub(crate) fn rate_grace(&self, grace: Duration) -> Duration {
        Duration::from_millis(self.pressure.cap(grace.as_millis() as u64))
    }

    fn on_bytes_read(&self) {
        if self.track_heads.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }
}

/// The response head a request waits for is due: see [`ConnState::response_due`].
pub(crate) struct ResponseDue<'a>(&'a ConnState);

impl ResponseDue<'_> {
    /// Ready once the watchdog found the response late. No waker is kept: the watchdog runs in the
    /// connection's task, which polls the request again right after it marks the response late (`drive`).
    pub(crate) fn poll_late(&self) -> Poll<()> {
        if self.0.response_late.load(Ordering::Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for ResponseDue<'_> {
    fn drop(&mut self) {
        self.0.response_due.store(0, Ordering::Relaxed);
        self.0.response_late.store(false, Ordering::Relaxed);
    }
}

/// Held from the moment a request is handed to reveille until its response body is done (or dropped).
/// For a passivated service it also carries the tenant's activity guard, so the tenant counts as active until
/// the response body is done.
pub(crate) struct InFlight(Arc<ConnState>, Option<crate::passivation::Activity>);

impl InFlight {
    pub(crate) fn new(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        Self(state.clone(), None)
    }

    pub(crate) fn with_activity(mut self, activity: crate::passivation::Activity) -> Self {
        self.1 = Some(activity);
        self
    }

    /// The tenant's activity guard this request holds, if its service is passivated.
    pub(crate) fn activity(&self) -> Option<&crate::passivation::Activity> {
        self.1.as_ref()
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0.slot.metrics
    }

    pub(crate) fn conn(&self) -> &ConnState {
        &self.0
    }

    /// The connection's state, to keep.
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Reads until the first bytes tell HTTP/1.x from the h2 preface. Returns whether it is h2, and what was read.
/// The buffer is the size of one read of reveille's own HTTP/1.1 side, which keeps it as its read buffer.
async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> std_io::Result<(bool, BytesMut)> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std_io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf));
        }
    }
}
/// What [`drive`]'s rare branch saw.
enum Rare {
    Evicted,
    PressureRose,
    Shutdown,
}
/// What hyper's HTTP/1 and HTTP/2 connections, and reveille's own HTTP/1.1 and h2 ones, have in common for us.
trait ServerConn: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    fn graceful(self: Pin<&mut Self>);
}

type Io<S> = TokioIo<ConnIo<S>>;

/// What a client connection is read from and written to.
/// A client connection's stream: TCP, or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<S: Stream> ServerConn for hyper::server::conn::http1::UpgradeableConnection<Io<S>, ProxyService> {
    type Error = hyper::Error;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S: Stream> ServerConn for hyper::server::conn::http2::Connection<Io<S>, ProxyService, SpanExecutor> {
    type Error = hyper::Error;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The waits before HTTP begins (the TLS handshake, the protocol detection): `Some` of the future's output, or
/// `None` when the connection is cut first: under pressure past the overload timeout (logged as the message
/// given, counted), evicted, or shut down. A macro, not an `async fn`: as a function of its own, its future's
/// layer cost every later poll of the connection's task about 40 instructions per request (measured with
/// `scripts/instructions-per-request`), though it only runs before the first request. Biased, the wait first:
/// a client's first bytes are usually there by the time its task runs, and then the other arms are never
/// polled, so pressure's cut registers no waiter (a lock on a notifier every connection shares) only to drop it.
macro_rules! guarded {
    ($fut:expr, $proxy:expr, $state:expr, $shed:literal) => {
        tokio::select! {
            biased;
            r = $fut => Some(r),
            () = $proxy.pressure.cut_after($state.epoch) => {
                debug!($shed);
                $proxy.metrics.connection_shed();
                None
            }
            // Evicted (counted by the eviction), or shut down.
            _ = $state.signalled(Signal::EVICTED | Signal::SHUTDOWN) => None,
        }
    };
}

/// Serves one accepted connection until it closes, times out, or shutdown completes it. With `tls`, the
/// connection starts with a handshake, and ALPN (when the client offered it) decides between h2 and HTTP/1.1.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    tls: Option<Arc<TlsAcceptor>>,
    permit: OwnedSemaphorePermit,
    address: Option<AddressGuard>,
) {
    proxy.metrics.connection_opened();
    let slot = Slot { _permit: permit, _address: address, metrics: proxy.metrics.clone() };
    let state = ConnState::register(slot, proxy.pressure.clone());
    let Some(acceptor) = tls else {
        return serve_http(stream, None, false, peer, proxy, state).await;
    };
    // In a box of its own: the handshake's future and a TLS stream are large, and inline they would make every
    // plain connection's future (copied once into its task) as large as a TLS one.
    boxed(|| serve_tls(stream, acceptor, peer, proxy, state)).await
}

/// [`serve`]'s TLS connections: the handshake, then HTTP over the TLS stream.
async fn serve_tls(
    stream: TcpStream,
    acceptor: Arc<TlsAcceptor>,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
) {
    let handshake = guarded!(
        acceptor.accept(stream, peer.ip()),
        proxy,
        state,
        "under pressure, the TLS handshake took longer than the overload timeout; closing"
    );
    let Some(handshake) = handshake else { return };
    match handshake {
        Ok(mut stream) => {
            let h2 = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Some(true),
                // A TLS-ALPN-01 validation: the handshake was all (RFC 8737 §3); no HTTP on it.
                Some(b"acme-tls/1") => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                    return;
                }
                Some(_) => Some(false),
                // No ALPN: look at the first bytes, as on the plain listener.
                None => None,
            };
            serve_http(stream, h2, true, peer, proxy, state).await
        }
        Err(e) => debug!(reason = e.reason(), error = %e, "TLS handshake failed"),
    }
}

/// Serves HTTP on an established stream. `h2`: the protocol, when ALPN chose it; `None` detects it.
async fn serve_http<S: Stream>(
    mut stream: S,
    h2: Option<bool>,
    tls: bool,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
) {
    let settings = &proxy.settings;
    let (is_h2, prefix) = match h2 {
        Some(h2) => (h2, BytesMut::new()),
        None => {
            let detected = {
                let mut detect = std::pin::pin!(detect(&mut stream));
                // Nearly always the first bytes are here by the time the connection's task first runs: then no
                // timer is made for the wait (one made and dropped unused was about 150 instructions of every
                // connection).
                match std::future::poll_fn(|cx| Poll::Ready(detect.as_mut().poll(cx))).await {
                    Poll::Ready(first) => Some(Ok(first)),
                    Poll::Pending => {
                        let detect = tokio::time::timeout(settings.header_read_timeout, detect);
                        guarded!(
                            detect,
                            proxy,
                            state,
                            "under pressure, no request within the overload timeout; closing"
                        )
                    }
                }
            };
            let Some(detected) = detected else { return };
            match detected {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    debug!(error = %e, "connection closed before a request");
                    return;
                }
                Err(_) => {
                    debug!("no request within the header timeout");
                    proxy.metrics.header_timeout();
                    return;
                }
            }
        }
    };

    // HTTP/1.1: the head began arriving during detection. h2: the first stream must open within the header
    // timeout (later streams are covered by the idle timeout).
    state.head_started.store(1, Ordering::Relaxed);
    state.track_heads.store(!is_h2, Ordering::Relaxed);
    // reveille's own HTTP/1.1 side parses what detection read in place, in the same buffer (one allocation and
    // one copy fewer per connection); the others read it again through `ConnIo`.
    let own_h1 = !is_h2 && settings.http1_server == Http1Server::Reveille;
    let (prefix, read) = if own_h1 { (Bytes::new(), prefix) } else { (prefix.freeze(), BytesMut::new()) };
    let io = ConnIo::new(stream, prefix, state.clone(), tls);
    let service = ProxyService::new(proxy.clone(), peer, state.clone(), tls);
    let dog = Watchdog::new(state, &proxy.pressure, settings);
    // Client resets and half-finished requests are routine at an edge proxy: debug, not warn.
    let ended = |e: &dyn std::fmt::Display| debug!(error = %e, "connection ended with an error");
    if is_h2 {
        // Boxed: an h2 connection is much larger than an HTTP/1.1 one, and inline it would size every HTTP/1.1
        // connection's future.
        if settings.http2 == Http2Server::Reveille {
            if let Err(e) = boxed(|| drive(h2::serve(io, service, settings), dog, &proxy)).await {
                ended(&e);
            }
        } else {
            let conn = proxy.h2.serve_connection(TokioIo::new(io), service);
            if let Err(e) = boxed(|| drive(conn, dog, &proxy)).await {
                ended(&e);
            }
        }
    } else if own_h1 {
        let limits =
            crate::http1::HeadLimits { max_size: settings.max_header_size, max_fields: settings.max_header_count };
        if let Err(e) = drive(h1::H1Conn::new(io, read, service, limits), dog, &proxy).await {
            ended(&e);
        }
    } else {
        let conn = proxy.h1.serve_connection(TokioIo::new(io), service).with_upgrades();
        if let Err(e) = drive(conn, dog, &proxy).await {
            ended(&e);
        }
    }
}

/// Asks the connection to close once the request in flight (if any) is answered.
fn close_gracefully<C: ServerConn>(state: &ConnState, conn: Pin<&mut C>) {
    state.closing.store(true, Ordering::Relaxed);
    conn.graceful();
}

async fn drive<C: ServerConn>(conn: C, dog: Watchdog<'_>, proxy: &Proxy) -> Result<(), C::Error> {
    let state = dog.state.clone();
    tokio::pin!(conn);
    tokio::pin!(dog);
    // Set when an idle connection was asked to close: past it, the connection is dropped. Made only then: a
    // timer made and dropped unused was some 300 instructions of every connection.
    let hard_close = None::<tokio::time::Sleep>;
    tokio::pin!(hard_close);
    loop {
        // The rare events, as the connection's signals: a load and a waker registration each time the task
        // runs. Once closing, only an eviction still matters.
        let closing = state.closing.load(Ordering::Relaxed);
        let wanted = if closing { Signal::EVICTED } else { Signal::EVICTED | Signal::ROSE | Signal::SHUTDOWN };
        let rare = std::future::poll_fn(|cx| {
            state.poll_signals(cx, wanted).map(|got| {
                if got & Signal::EVICTED != 0 {
                    Rare::Evicted
                } else if got & Signal::ROSE != 0 {
                    Rare::PressureRose
                } else {
                    Rare::Shutdown
                }
            })
        });
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                dog.state.finished.store(true, Ordering::Relaxed);
                return res;
            }
            // Closing, the limits of a request still in flight apply (its response head's due time among them):
            // the watchdog knows (`ConnState::closing`), and is polled in every turn, since a request may start
            // in the turn that polls the connection.
            expiry = dog.as_mut() => match expiry {
                Expiry::ResponseDue => {
                    // The request, polled again on the next turn, finds it late and answers 504.
                    state.response_due.store(0, Ordering::Relaxed);
                    state.response_late.store(true, Ordering::Relaxed);
                }
                Expiry::Idle => {
                    debug!("idle timeout");
                    if proxy.pressure.is_high() {
                        proxy.metrics.connection_shed();
                    }
                    close_gracefully(&state, conn.as_mut());
                    hard_close.set(Some(tokio::time::sleep(CLOSE_GRACE)));
                }
                Expiry::HeaderTimeout => {
                    debug!("request headers not received in time; closing");
                    proxy.metrics.header_timeout();
                    if proxy.pressure.is_high() {
                        proxy.metrics.connection_shed();
                    }
                    return Ok(());
                }
                Expiry::Shed => {
                    debug!("under pressure, a body waited on its client or backend for the overload timeout; closing");
                    proxy.metrics.connection_shed();
                    return Ok(());
                }
                Expiry::UpstreamIdle => {
                    // The response body, dropped with the connection, logs and counts it with its service.
                    debug!("the backend sent no body byte within the upstream read timeout; closing");
                    return Ok(());
                }
                Expiry::SendTimeout => {
                    debug!("the client read nothing of its response within the send timeout; closing");
                    proxy.metrics.send_timeout("connection");
                    return Ok(());
                }
            },
            r = rare => match r {
                // Counted by the eviction.
                Rare::Evicted => return Ok(()),
                // Pressure rose: the watchdog is polled again on the next turn and applies the shorter limits.
                Rare::PressureRose => {}
                Rare::Shutdown => close_gracefully(&state, conn.as_mut()),
            },
            () = std::future::poll_fn(|cx| hard_close.as_mut().as_pin_mut().map_or(Poll::Pending, |s| s.poll(cx))),
                if hard_close.is_some() => {
                if dog.state.in_flight.load(Ordering::Relaxed) == 0 {
                    debug!("peer did not close after GOAWAY; dropping the connection");
                    return Ok(());
                }
                // A request slipped in: let it finish, look again later.
                if let Some(s) = hard_close.as_mut().as_pin_mut() {
                    s.reset(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}
