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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::admission::AddressGuard;
use super::{Proxy, ProxyService, SpanExecutor};
use crate::tls::TlsAcceptor;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's place in the `max_connections` limit and the open-connections gauge, released on drop.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The connection's place in its client address's count, when that is limited.
    _address: Option<AddressGuard>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.pressure.conns.lock().remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// Eviction spares connections that have waited less than this: a newcomer that has not yet sent its request is
/// not evicted by the next one.
const EVICT_AFTER_MS: u64 = 50;

/// An evicted connection normally ends within a millisecond; one still open after this no longer counts as an
/// eviction in progress (see [`Pressure::evict_one`]).
const EVICTION_SETTLE_MS: u64 = 1_000;

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
    /// Whether the connection slots are nearly exhausted.
    pressure: Arc<Pressure>,
    /// This connection's key in `pressure`'s registry.
    id: u64,
    /// Cancelled to evict the connection when a newcomer needs its slot (see [`Pressure::evict_one`]).
    evicted: CancellationToken,
    /// When it was evicted, in ms since `epoch` plus one; 0 = not evicted.
    evicted_at: AtomicU64,
    /// Its response is done and it is closing by lingering ([`linger`]): first in line for eviction.
    lingering: AtomicBool,
    /// Upgraded to a tunnel: doing work, never evicted.
    upgraded: AtomicBool,
    track_heads: AtomicBool,
    /// HTTP/1.1: the current request has a body that has not been read to its end. Closing the socket then
    /// would reset the connection, and the reset can destroy the response before the client reads it.
    body_unread: AtomicBool,
    /// hyper finished the connection itself (rather than reveille cutting it for a timeout or eviction): a
    /// close that may linger.
    finished: AtomicBool,
    /// h2: streams reset because their client took nothing of the response within the send timeout.
    stream_stalls: AtomicU64,
}

impl ConnState {
    /// A new connection's state, entered in `pressure`'s registry.
    fn register(slot: Slot, pressure: Arc<Pressure>) -> Arc<Self> {
        let id = pressure.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Self::new(slot, pressure, id));
        state.pressure.conns.lock().insert(id, Arc::downgrade(&state));
        state
    }

    fn new(slot: Slot, pressure: Arc<Pressure>, id: u64) -> Self {
        Self {
            id,
            evicted: CancellationToken::new(),
            evicted_at: AtomicU64::new(0),
            lingering: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            epoch: Instant::now(),
            slot,
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            body_wait: AtomicU64::new(0),
            upstream_wait: AtomicU64::new(0),
            pressure,
            track_heads: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            stream_stalls: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The connection now carries a tunnel (WebSocket): it is doing work and is never evicted.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// How long the connection has been waiting on its client (for a first request, a request head, the rest
    /// of a body, or to read its response) or on a backend gone quiet mid-body; `None` while it is doing work.
    fn waiting_ms(&self) -> Option<u64> {
        if self.upgraded.load(Ordering::Relaxed) || self.evicted.is_cancelled() {
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

/// The client socket (TCP, or TLS over TCP), replaying the bytes read during protocol detection and noting when
/// a request head starts to arrive. Dropped while the client may still be sending, it closes by lingering
/// ([`linger`]).
pub(crate) struct ConnIo<S: Stream> {
    /// Taken only by `drop`, to linger.
    inner: Option<S>,
    /// The client closed its side: nothing can follow, no need to linger.
    eof: bool,
    prefix: Bytes,
    state: Arc<ConnState>,
    /// Offer vectored writes to hyper. Off for TLS: rustls makes one record per slice, so a response's head
    /// and body would go out as two records (two AEAD operations); hyper then gathers them into one buffer.
    vectored: bool,
}

impl<S: Stream> ConnIo<S> {
    fn new(inner: S, prefix: Bytes, state: Arc<ConnState>, vectored: bool) -> Self {
        Self { inner: Some(inner), eof: false, prefix, state, vectored }
    }

    fn io(&mut self) -> Pin<&mut S> {
        Pin::new(self.inner.as_mut().expect("the stream is only taken on drop"))
    }
}

impl<S: Stream> Drop for ConnIo<S> {
    fn drop(&mut self) {
        let state = &self.state;
        // Only an HTTP/1.1 connection that hyper finished itself, whose client has not closed: a connection
        // reveille cut (timeouts, eviction) closes at once, and h2 ends with GOAWAY.
        if self.eof || !state.is_h1() || !state.finished.load(Ordering::Relaxed) {
            return;
        }
        let Some(inner) = self.inner.take() else { return };
        if !state.body_unread.load(Ordering::Relaxed) && !has_input(inner.tcp()) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            state.lingering.store(true, Ordering::Relaxed);
            rt.spawn(linger(inner, state.clone()).in_current_span());
        }
    }
}

/// Whether the client has sent bytes nobody read (or closed: then a read returns at once, too).
fn has_input(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(tcp.poll_peek(&mut Context::from_waker(futures_util::task::noop_waker_ref()), &mut buf), Poll::Ready(Ok(n)) if n > 0)
}

/// How long a lingering close waits for the client's next bytes, and how long it lingers at most: nginx's
/// `lingering_timeout` and `lingering_time`. Both are cut to the overload timeout under pressure.
const LINGER_READ: Duration = Duration::from_secs(5);
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// Closes a connection whose client may still be sending (an upload the response came before, a request body
/// nobody read, a pipelined request): the response is followed by a FIN, and what the client still sends is
/// read and dropped until it closes, stops sending for [`LINGER_READ`], or [`LINGER_TOTAL`] has passed. Closed
/// at once, the socket would answer the client's next bytes with a reset, and a reset can destroy the response
/// in the client's buffers before it reads it (RFC 9112 §9.6). The connection keeps its slot meanwhile; under
/// pressure both waits are cut to the overload timeout (looked at again when pressure rises), and a newcomer
/// that needs the slot evicts a lingering connection before any other.
async fn linger<S: Stream>(mut stream: S, state: Arc<ConnState>) {
    use tokio::io::AsyncWriteExt;
    let pressure = state.pressure.clone();
    let wait = async {
        let start = Instant::now();
        let limit = |d: Duration| Duration::from_millis(pressure.cap(d.as_millis() as u64));
        // hyper shut the write side already when it closed; this is for a stream it did not.
        if tokio::time::timeout(limit(LINGER_READ), stream.shutdown()).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let rose = pressure.rose.notified();
            let until = (start + limit(LINGER_TOTAL)).min(Instant::now() + limit(LINGER_READ));
            tokio::select! {
                r = tokio::time::timeout_at(until, stream.read(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                // Pressure rose: the limits are cut; look again.
                () = rose => {}
            }
        }
    };
    tokio::select! {
        () = wait => {}
        () = state.evicted.cancelled() => {}
    }
    debug!("lingering close done");
}

impl<S: Stream> AsyncRead for ConnIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the detection buffer now, not when the connection ends: an idle or held connection
                // should not keep 4 KiB it will never read again.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = self.io().poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) {
            if buf.filled().len() > before {
                self.state.on_bytes_read();
            } else if buf.remaining() > 0 {
                self.eof = true;
            }
        }
        res
    }
}

impl<S: Stream> AsyncWrite for ConnIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = self.io().poll_write(cx, buf);
        self.state.on_write(&res);
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = self.io().poll_write_vectored(cx, bufs);
        self.state.on_write(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.vectored && self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.io().poll_flush(cx);
        self.state.on_write(&res);
        res
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// Reads until the first bytes tell HTTP/1.x from the h2 preface. Returns whether it is h2, and what was read.
async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
    }
}

/// Whether nearly every connection slot is taken. While it is, the waits a client imposes (idle keep-alive,
/// request head, request body, not reading its response) are cut to the overload timeout, so a flood of slow
/// clients turns over in seconds instead of holding every slot for a minute each (Envoy's overload manager
/// does the same with `reduce_timeouts`). Re-evaluated at each accept: on when fewer than a tenth of the slots
/// are free, off again once a fifth are.
pub(crate) struct Pressure {
    /// Every open connection, so that one waiting on its client can be evicted for a newcomer.
    conns: parking_lot::Mutex<std::collections::HashMap<u64, std::sync::Weak<ConnState>>>,
    next_id: AtomicU64,
    high: AtomicBool,
    /// Woken when pressure rises, so connections apply the shorter limits at once.
    rose: tokio::sync::Notify,
    slots: usize,
    /// The cut, in ms; 0 = never cut.
    cap_ms: u64,
    /// Accept loops waiting for a slot for a client they accepted (see [`Pressure::waiter`]).
    waiting: AtomicUsize,
}

/// An accept loop's wait for a slot, counted while it lasts.
pub(crate) struct Waiter<'a>(&'a Pressure);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pressure {
    pub(crate) fn new(slots: usize, cap: Duration) -> Self {
        Self {
            conns: parking_lot::Mutex::new(std::collections::HashMap::new()),
            next_id: AtomicU64::new(0),
            high: AtomicBool::new(false),
            rose: tokio::sync::Notify::new(),
            slots,
            cap_ms: cap.as_millis() as u64,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Counts an accept loop waiting for a slot until the guard is dropped: as many evictions as waiters may be
    /// in progress at once.
    pub(crate) fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter(self)
    }

    /// Takes note of the free slots.
    pub(crate) fn update(&self, free: usize, metrics: &crate::metrics::Metrics) {
        if self.cap_ms == 0 {
            return;
        }
        let was = self.high.load(Ordering::Relaxed);
        let high = if was { free < (self.slots / 5).max(1) } else { free < (self.slots / 10).max(1) };
        if high != was {
            self.high.store(high, Ordering::Relaxed);
            metrics.set_overloaded(high);
            if high {
                tracing::warn!(
                    free,
                    slots = self.slots,
                    "nearly every connection slot is taken: client waits are cut to the overload timeout"
                );
                self.rose.notify_waiters();
            } else {
                tracing::info!(free, slots = self.slots, "connection slots available again: normal timeouts");
            }
        }
    }

    /// Every slot is taken and a client waits for one: evicts the connection that has waited longest on its
    /// client (or on a quiet backend), if one has waited at least [`EVICT_AFTER_MS`], so the newcomer is served
    /// at once instead of after the attacker's next timeout. A lingering connection (its response is out) goes
    /// first. Connections doing work (a request waiting for its response head, a response flowing, a tunnel)
    /// are never evicted. Called again while the newcomer waits; evicts nobody while the evictions already
    /// made for the waiting newcomers have not ended yet. Every eviction is counted. Returns whether one was.
    pub(crate) fn evict_one(&self, metrics: &crate::metrics::Metrics) -> bool {
        if self.cap_ms == 0 {
            return false;
        }
        // Look at them outside the lock: dropping the last reference to a connection takes the lock again.
        let conns: Vec<std::sync::Weak<ConnState>> = self.conns.lock().values().cloned().collect();
        let mut in_progress = 0;
        let mut victim: Option<(u64, Arc<ConnState>)> = None;
        for c in conns.iter().filter_map(std::sync::Weak::upgrade) {
            let at = c.evicted_at.load(Ordering::Relaxed);
            if at != 0 {
                if c.now_ms() + 1 < at + EVICTION_SETTLE_MS {
                    in_progress += 1;
                }
                continue;
            }
            if let Some(w) = c.waiting_ms().filter(|&w| w >= EVICT_AFTER_MS) {
                if victim.as_ref().map_or(true, |(v, _)| w > *v) {
                    victim = Some((w, c));
                }
            }
        }
        if in_progress >= self.waiting.load(Ordering::Relaxed).max(1) {
            return false;
        }
        match victim {
            Some((waited_ms, c)) => {
                if waited_ms == u64::MAX {
                    debug!("every slot taken: evicting a lingering connection");
                } else {
                    debug!(waited_ms, "every slot taken: evicting the connection that waited longest");
                }
                c.evicted_at.store(c.now_ms() + 1, Ordering::Relaxed);
                c.evicted.cancel();
                metrics.connection_evicted();
                true
            }
            None => false,
        }
    }

    fn is_high(&self) -> bool {
        self.high.load(Ordering::Relaxed)
    }

    /// Resolves once pressure is high and the overload timeout has passed since `since`: a connection still
    /// waiting for its client's first bytes or TLS handshake then is cut. Never resolves with the cut off.
    async fn cut_after(&self, since: Instant) {
        if self.cap_ms == 0 {
            return std::future::pending().await;
        }
        loop {
            let rose = self.rose.notified();
            tokio::pin!(rose);
            rose.as_mut().enable();
            if self.is_high() {
                return tokio::time::sleep_until(since + Duration::from_millis(self.cap_ms)).await;
            }
            rose.await;
        }
    }

    /// `ms`, cut to the overload timeout while pressure is high.
    pub(super) fn cap(&self, ms: u64) -> u64 {
        if self.is_high() {
            ms.min(self.cap_ms)
        } else {
            ms
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    Idle,
    HeaderTimeout,
    /// The client read nothing of a response for the send timeout.
    SendTimeout,
    /// Under pressure: a request body waited on its client, or a response body on its backend, for the
    /// overload timeout.
    Shed,
    /// HTTP/1.1: the response body waited on its backend for the upstream read timeout.
    UpstreamIdle,
}

/// Fires when the connection has been idle for `idle`, has spent `header` reading one request head, or has
/// waited `send` for a client to read its response.
struct Watchdog<'a> {
    state: Arc<ConnState>,
    pressure: &'a Pressure,
    idle_ms: u64,
    header_ms: u64,
    send_ms: u64,
    read_ms: u64,
    sleep: Pin<Box<Sleep>>,
    /// Deadline the sleep is set to, in ms since the connection's epoch.
    armed_ms: u64,
}

impl<'a> Watchdog<'a> {
    fn new(state: Arc<ConnState>, pressure: &'a Pressure, settings: &super::Settings) -> Self {
        let (idle, header, send) = (settings.idle_timeout, settings.header_read_timeout, settings.send_timeout);
        let epoch = state.epoch;
        Self {
            state,
            pressure,
            idle_ms: idle.as_millis() as u64,
            header_ms: header.as_millis() as u64,
            send_ms: send.as_millis() as u64,
            read_ms: settings.upstream_read_timeout.as_millis() as u64,
            sleep: Box::pin(tokio::time::sleep_until(epoch)),
            armed_ms: 0,
        }
    }

    /// Sets the timer for `deadline_ms`, unless it is already set to fire before it (and after `now_ms`):
    /// then it is kept, and on firing the state is looked at again. Deadlines move with every request;
    /// an occasional early wake-up costs less than resetting a timer each time.
    fn arm(&mut self, deadline_ms: u64, now_ms: u64) {
        if self.armed_ms > now_ms && self.armed_ms <= deadline_ms {
            return;
        }
        if deadline_ms != self.armed_ms {
            self.armed_ms = deadline_ms;
            self.sleep.as_mut().reset(self.state.epoch + Duration::from_millis(deadline_ms));
        }
    }
}

/// What [`drive`]'s rare branch saw.
enum Rare {
    Evicted,
    PressureRose,
    Shutdown,
}

/// Polls a future only once it asked to be woken (and the first time). `select!` polls every branch each time
/// its task runs; wrapped like this, a branch that waits for something rare costs an atomic swap instead.
struct OnWake<F> {
    fut: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

/// Set by the wrapped future's waker, which then wakes the task.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    fn new(fut: F) -> Self {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(flag.clone());
        Self { fut, flag, waker }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        Pin::new(&mut this.fut).poll(&mut Context::from_waker(&this.waker))
    }
}

impl Future for Watchdog<'_> {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        loop {
            let s = &self.state;
            let now = s.now_ms();
            let p = self.pressure;
            let (deadline, expiry) = if s.in_flight.load(Ordering::Relaxed) > 0 {
                // The earliest of: a client not reading; a response body waiting on its backend (HTTP/1.1, whose
                // bodies keep no timer of their own, or anyone under pressure); a request body waiting on its
                // client, under pressure.
                let mut next: Option<(u64, Expiry)> = None;
                let mut consider = |at: u64, e: Expiry| {
                    if next.as_ref().map_or(true, |(n, _)| at < *n) {
                        next = Some((at, e));
                    }
                };
                let blocked = s.write_blocked.load(Ordering::Relaxed);
                if blocked != 0 {
                    consider(blocked - 1 + p.cap(self.send_ms), Expiry::SendTimeout);
                }
                let upstream = s.upstream_wait.load(Ordering::Relaxed);
                if upstream != 0 && p.is_high() {
                    consider(upstream - 1 + p.cap_ms.min(self.read_ms), Expiry::Shed);
                } else if upstream != 0 && s.is_h1() {
                    consider(upstream - 1 + self.read_ms, Expiry::UpstreamIdle);
                }
                let body = s.body_wait.load(Ordering::Relaxed);
                if body != 0 && p.is_high() {
                    consider(body - 1 + p.cap_ms, Expiry::Shed);
                }
                match next {
                    Some((at, e)) => (at, Some(e)),
                    // Busy: the body and upstream timeouts apply, not ours. Look again later (nothing wakes the
                    // watchdog when a write or a body starts to wait on another task, so it looks at least
                    // every `send`, and every overload timeout under pressure).
                    None => {
                        let every = p.cap(self.idle_ms.min(self.send_ms)).max(100);
                        (now + every, None)
                    }
                }
            } else {
                match s.head_started.load(Ordering::Relaxed) {
                    0 => (s.idle_since.load(Ordering::Relaxed) + p.cap(self.idle_ms), Some(Expiry::Idle)),
                    started => (started - 1 + p.cap(self.header_ms), Some(Expiry::HeaderTimeout)),
                }
            };
            if let Some(e) = expiry {
                if now >= deadline {
                    return Poll::Ready(e);
                }
            }
            self.arm(deadline, now);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The sleep fired: re-evaluate with fresh state (the deadline may have moved on).
            self.armed_ms = 0;
        }
    }
}

/// What hyper's HTTP/1 and HTTP/2 connections have in common for us.
trait ServerConn: Future<Output = Result<(), hyper::Error>> {
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
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S: Stream> ServerConn for hyper::server::conn::http2::Connection<Io<S>, ProxyService, SpanExecutor> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves one accepted connection until it closes, times out, or shutdown completes it. With `tls`, the
/// connection starts with a handshake, and ALPN (when the client offered it) decides between h2 and HTTP/1.1.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    tls: Option<Arc<TlsAcceptor>>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
    address: Option<AddressGuard>,
) {
    proxy.metrics.connection_opened();
    let slot = Slot { _permit: permit, _address: address, metrics: proxy.metrics.clone() };
    let state = ConnState::register(slot, proxy.pressure.clone());
    let Some(acceptor) = tls else {
        return serve_http(stream, None, false, peer, proxy, state, shutdown).await;
    };
    let handshake = tokio::select! {
        r = acceptor.accept(stream, peer.ip()) => r,
        () = proxy.pressure.cut_after(state.epoch) => {
            debug!("under pressure, the TLS handshake took longer than the overload timeout; closing");
            proxy.metrics.connection_shed();
            return;
        }
        // Counted by the eviction.
        () = state.evicted.cancelled() => return,
        _ = shutdown.cancelled() => return,
    };
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
            serve_http(stream, h2, true, peer, proxy, state, shutdown).await
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
    shutdown: CancellationToken,
) {
    let settings = &proxy.settings;
    let (is_h2, prefix) = match h2 {
        Some(h2) => (h2, Bytes::new()),
        None => {
            let detected = tokio::select! {
                r = tokio::time::timeout(settings.header_read_timeout, detect(&mut stream)) => r,
                () = proxy.pressure.cut_after(state.epoch) => {
                    debug!("under pressure, no request within the overload timeout; closing");
                    proxy.metrics.connection_shed();
                    return;
                }
                // Counted by the eviction.
                () = state.evicted.cancelled() => return,
                _ = shutdown.cancelled() => return,
            };
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
    let io = TokioIo::new(ConnIo::new(stream, prefix, state.clone(), !tls));
    let service = ProxyService::new(proxy.clone(), peer, state.clone(), tls);
    let dog = Watchdog::new(state, &proxy.pressure, settings);
    let result = if is_h2 {
        drive(proxy.h2.serve_connection(io, service), dog, &proxy, shutdown).await
    } else {
        drive(proxy.h1.serve_connection(io, service).with_upgrades(), dog, &proxy, shutdown).await
    };
    if let Err(e) = result {
        // Client resets and half-finished requests are routine at an edge proxy: debug, not warn.
        debug!(error = %e, "connection ended with an error");
    }
}

async fn drive<C: ServerConn>(
    conn: C,
    dog: Watchdog<'_>,
    proxy: &Proxy,
    shutdown: CancellationToken,
) -> Result<(), hyper::Error> {
    let evicted = dog.state.evicted.clone();
    tokio::pin!(conn);
    tokio::pin!(dog);
    let mut closing = false;
    // Armed when an idle connection was asked to close: past it, the connection is dropped.
    let hard_close = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(hard_close);
    let mut hard_armed = false;
    loop {
        // The rare events, in one future polled only when one of them woke it: as separate `select!` branches
        // they took a lock and re-registered a waiter every time the connection's task ran (about 1 000
        // instructions per request).
        let (ev, sd, pressure, was_closing) = (&evicted, &shutdown, &proxy.pressure, closing);
        let mut rare = OnWake::new(Box::pin(async move {
            tokio::select! {
                biased;
                () = ev.cancelled() => Rare::Evicted,
                _ = pressure.rose.notified(), if !was_closing => Rare::PressureRose,
                _ = sd.cancelled(), if !was_closing => Rare::Shutdown,
            }
        }));
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                dog.state.finished.store(true, Ordering::Relaxed);
                return res;
            }
            expiry = dog.as_mut(), if !closing => match expiry {
                Expiry::Idle => {
                    debug!("idle timeout");
                    if proxy.pressure.is_high() {
                        proxy.metrics.connection_shed();
                    }
                    closing = true;
                    conn.as_mut().graceful();
                    hard_close.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    hard_armed = true;
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
            r = &mut rare => match r {
                // Counted by the eviction.
                Rare::Evicted => return Ok(()),
                // Pressure rose: the watchdog is polled again on the next turn and applies the shorter limits.
                Rare::PressureRose => {}
                Rare::Shutdown => {
                    closing = true;
                    conn.as_mut().graceful();
                }
            },
            _ = hard_close.as_mut(), if hard_armed => {
                if dog.state.in_flight.load(Ordering::Relaxed) == 0 {
                    debug!("peer did not close after GOAWAY; dropping the connection");
                    return Ok(());
                }
                // A request slipped in: let it finish, look again later.
                hard_close.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A future that counts its polls and is ready once `notify` has been notified.
    fn counted(notify: Arc<tokio::sync::Notify>, polls: Arc<AtomicUsize>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut notified = Box::pin(async move { notify.notified().await });
        Box::pin(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            notified.as_mut().poll(cx)
        }))
    }

    #[tokio::test]
    async fn on_wake_polls_its_future_only_once_it_was_woken() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let polls = Arc::new(AtomicUsize::new(0));
        let mut rare = OnWake::new(counted(notify.clone(), polls.clone()));
        let mut other = Box::pin(tokio::time::sleep(Duration::from_millis(1)));
        // The task runs many times for other reasons: the wrapped future is polled once, to register.
        for _ in 0..20 {
            let pending = std::future::poll_fn(|cx| {
                let _ = other.as_mut().poll(cx);
                Poll::Ready(Pin::new(&mut rare).poll(cx).is_pending())
            })
            .await;
            assert!(pending);
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own wake-up wakes the task and gets it polled, and it completes.
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), &mut rare).await.expect("woken and completed");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
