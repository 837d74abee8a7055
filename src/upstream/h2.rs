//! HTTP/2 to backends: a few multiplexed connections per backend, each an `h2` crate client connection driven by
//! a task of its own, and one stream per request, sent and read from the request's own task.
//!
//! Unlike HTTP/1.1 (`exchange`), an h2 connection serves many requests at once, so it is not checked out and
//! released: a request leases a stream on it ([`Lease`], counted) and the connection stays in the list. A
//! request takes the first connection to its backend with a stream free (below the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection's task last read it); only when every connection is
//! full is another opened, up to `connections` per backend per worker shard (the same sharding as the h1
//! pool, [`worker`]). Past that, the least loaded connection takes the stream and h2 queues it until the peer
//! frees one. A connection being opened counts as one with every stream free, so a burst of requests to a
//! new backend waits for one connection instead of opening one each.
//!
//! The connection is opened by a spawned task (the caller's `open`: TCP for `h2c://`, anything that is
//! `AsyncRead + AsyncWrite` for others), so a request that gives up while it waits does not leave the others
//! waiting on nothing. The same task then drives the connection, sends its PING keep-alive and closes it when
//! idle. Dead connections leave the list at the next lease: closed (GOAWAY, an error, PING keep-alive found the
//! peer gone, idle) or never opened.
//!
//! One call is one future in the request's task, no task spawned for it ([`send`]): it opens the stream, sends
//! the request body as the peer's window allows while it waits for the response head, and hands back the
//! response with the stream's receiving half as its body ([`H2Body`]). Only when the head comes before the
//! request body has ended (a client-streaming or bidirectional call answered early) does the rest of the body
//! go on in a task of its own, as the response is then the caller's to read at its own pace and the two
//! directions must not wait on each other.
//!
//! GOAWAY: a connection that got one takes no new stream; a request that finds it so (h2 refuses to open the
//! stream) goes to another connection, and so does one whose stream the peer did not process (above the
//! GOAWAY's last stream id, or `REFUSED_STREAM`: RFC 9113 §8.7), when nothing of its body was taken yet.
//! Otherwise the caller hears it was not processed ([`H2SendError::unprocessed`]) and, having the body, may
//! send it again.
//!
//! Flow control is h2's, per stream: the request body is polled as the peer's window opens, the response body
//! as the downstream side reads it, and a stream's window opens again only as its client takes each data
//! frame. Nothing is buffered whole, and the windows are sized so that clients who stop reading hold up their
//! own streams, not the connection ([`STREAM_WINDOW`]).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Builder, ResponseFuture, SendRequest};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, Instrument};

use super::error::{source_chain, BoxError, ConnectError, UpstreamError};
use super::pool::worker;

/// A request body as an h2 connection takes it: any body of `Bytes`, boxed (one allocation per h2 request,
/// none on the HTTP/1.1 path).
pub(crate) type H2RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Streams the first connection to a backend is assumed to take before the peer's SETTINGS say otherwise
/// (RFC 9113's recommended minimum, hyper's default too); later ones are assumed to take what the others do.
const INITIAL_STREAMS: usize = 100;

/// Flow-control windows towards the backend. A stream whose client stops reading keeps its window's worth of
/// the backend's data in reveille, and that much of the connection's window too: with hyper's defaults (2 MiB
/// per stream, 5 MiB per connection) three such clients stopped every other stream on the connection. Here it
/// takes 32 stalled streams on one connection (each bounded in time by the downstream send timeout), and a
/// stalled stream holds at most 256 KiB, the downstream side's own send buffer per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 32 * STREAM_WINDOW;

/// The largest response head taken from a backend (decoded header list, RFC 9113 §6.5.2), as hyper's client
/// took before.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Request data h2 may hold per stream beyond what the peer's window lets out (hyper's figure).
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// The largest first data frame of a request body sent before the peer's window is known to take it: one
/// frame at the default `SETTINGS_MAX_FRAME_SIZE`, a unary gRPC call's whole body as a rule.
const FIRST_FRAME: usize = 16 * 1024;

/// Times a request is taken to another connection because the one it leased was closing.
const RESENDS: usize = 3;

/// What [`H2Pool`] is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Settings {
    /// Worker threads: the connections are sharded per worker, as the h1 pool's are.
    pub workers: usize,
    /// Connections to one backend per worker shard, at most.
    pub connections: usize,
    /// A PING every this long (zero: none); no answer within `keep_alive_timeout` closes the connection.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
    /// A connection with no stream for about this long is closed (the h1 pool's idle timeout).
    pub idle_timeout: Duration,
}

/// A connection to a backend, as the streams see it.
struct Slot {
    /// For a request that leased a stream while the connection was being opened, to wait on.
    state: watch::Receiver<State>,
    /// Once the connection is open: read by every request without a lock (the watch's is a lock).
    sender: OnceLock<SendRequest<Bytes>>,
    /// Takes no new stream: it could not be opened, its task ended, a request found it going away, or it is
    /// being closed as idle. Set
    /// before the idle close looks at `streams`, and a lease looks at it after counting itself in `streams`,
    /// so a stream is never leased on a connection that is dropped under it.
    closed: AtomicBool,
    /// Streams leased on it.
    streams: AtomicUsize,
    /// Streams ever leased on it: the connection's task closes it when this has not moved, and no stream is
    /// open, for the idle timeout.
    leases: AtomicU64,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection's task last read it.
    limit: Arc<AtomicUsize>,
}

/// Where a connection is in its life.
#[derive(Clone)]
enum State {
    Connecting,
    /// Open: its sender is in `Slot::sender`.
    Ready,
    /// It could not be opened: the error's kind (for the proxy's metrics) and text.
    Failed(io::ErrorKind, Arc<str>),
}

impl Slot {
    /// Can still take streams: being opened, or open and not closed.
    fn alive(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    fn has_room(&self) -> bool {
        self.streams.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed).max(1)
    }
}

/// Connections by key (the backend's scheme and authority), per worker shard.
type Slots = HashMap<Box<str>, Vec<Arc<Slot>>, foldhash::fast::RandomState>;

/// The HTTP/2 connections to backends.
pub(crate) struct H2Pool {
    shards: Box<[Mutex<Slots>]>,
    connections: usize,
    idle_timeout: Duration,
    keep_alive: Option<KeepAlive>,
    builder: Builder,
}

/// PING keep-alive: a PING every `interval`, while busy and while idle; no PONG within `timeout` closes the
/// connection.
#[derive(Debug, Clone, Copy)]
struct KeepAlive {
    interval: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("connections", &self.connections).finish_non_exhaustive()
    }
}

impl H2Pool {
    pub(crate) fn new(settings: H2Settings) -> Self {
        let mut builder = Builder::new();
        builder
            .initial_max_send_streams(INITIAL_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false);
        let keep_alive = (!settings.keep_alive_interval.is_zero())
            .then_some(KeepAlive { interval: settings.keep_alive_interval, timeout: settings.keep_alive_timeout });
        let shards = (0..settings.workers.max(1)).map(|_| Mutex::new(Slots::default())).collect();
        Self {
            shards,
            connections: settings.connections.max(1),
            idle_timeout: settings.idle_timeout,
            keep_alive,
            builder,
        }
    }

    /// A stream on a connection under `key`: an open one with room, else a new one opened with `open` (in a
    /// task of its own), else the least loaded one.
    pub(crate) fn lease<F, I>(&self, key: &str, open: impl Fn() -> F) -> Lease
    where
        F: Future<Output = Result<I, ConnectError>> + Send + 'static,
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        loop {
            let slot = self.pick(key, &open);
            slot.streams.fetch_add(1, Ordering::SeqCst);
            // The idle close marks the connection closed, then looks for streams: one of the two sees the other.
            if !slot.closed.load(Ordering::SeqCst) {
                slot.leases.fetch_add(1, Ordering::Relaxed);
                return Lease { slot };
            }
            // Closed since `pick` looked: the next pick drops it from the list.
            slot.streams.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn pick<F, I>(&self, key: &str, open: impl FnOnce() -> F) -> Arc<Slot>
    where
        F: Future<Output = Result<I, ConnectError>> + Send + 'static,
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut map = self.shards[worker() % self.shards.len()].lock();
        let list = match map.get_mut(key) {
            Some(l) => l,
            None => map.entry(key.into()).or_default(),
        };
        list.retain(|s| s.alive());
        match list.iter().find(|s| s.has_room()) {
            Some(s) => s.clone(),
            None if list.len() < self.connections => {
                // Until its SETTINGS come, a new connection is taken to allow what the others to the backend do.
                let limit = list.iter().map(|s| s.limit.load(Ordering::Relaxed)).max().unwrap_or(INITIAL_STREAMS);
                let slot = self.open(open, limit);
                list.push(slot.clone());
                slot
            }
            None => match list.iter().min_by_key(|s| s.streams.load(Ordering::Relaxed)) {
                Some(s) => s.clone(),
                // `connections` is at least one: a full list is never empty.
                None => self.open(open, INITIAL_STREAMS),
            },
        }
    }

    /// Whether `key` has a connection that can take streams (open, or being opened) on this worker's shard.
    pub(crate) fn has(&self, key: &str) -> bool {
        let map = self.shards[worker() % self.shards.len()].lock();
        map.get(key).is_some_and(|list| list.iter().any(|s| s.alive()))
    }

    /// A new connection, opened and then driven by a task of its own.
    fn open<F, I>(&self, open: impl FnOnce() -> F, limit: usize) -> Arc<Slot>
    where
        F: Future<Output = Result<I, ConnectError>> + Send + 'static,
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = watch::channel(State::Connecting);
        let limit = Arc::new(AtomicUsize::new(limit));
        let slot = Arc::new(Slot {
            state: rx,
            sender: OnceLock::new(),
            closed: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            leases: AtomicU64::new(0),
            limit: limit.clone(),
        });
        let connecting = open();
        let builder = self.builder.clone();
        let watched = Arc::downgrade(&slot);
        let idle_timeout = self.idle_timeout;
        let keep_alive = self.keep_alive;
        tokio::spawn(async move {
            let failed = |kind, text: String| {
                if let Some(slot) = watched.upgrade() {
                    slot.closed.store(true, Ordering::SeqCst);
                }
                let _ = tx.send(State::Failed(kind, text.into()));
            };
            let io = match connecting.await {
                Ok(io) => io,
                Err(e) => return failed(io_kind(&e), source_chain(&e)),
            };
            let (send, mut conn) = match builder.handshake::<_, Bytes>(io).await {
                Ok(pair) => pair,
                Err(e) => return failed(io_kind(&e), source_chain(&e)),
            };
            let pings = conn.ping_pong();
            // Nobody holds the slot any more (every request that leased it gave up): nothing to serve.
            let Some(slot) = watched.upgrade() else { return };
            let _ = slot.sender.set(send);
            drop(slot);
            let _ = tx.send(State::Ready);
            // Drive the connection, noting the peer's stream limit as its SETTINGS arrive.
            let drive = poll_fn(|cx| {
                let r = Pin::new(&mut conn).poll(cx);
                let max = conn.max_concurrent_send_streams();
                if limit.load(Ordering::Relaxed) != max {
                    limit.store(max, Ordering::Relaxed);
                }
                r
            });
            tokio::select! {
                result = drive => {
                    if let Err(e) = result {
                        debug!(error = %source_chain(&e), "backend h2 connection ended");
                    }
                }
                // Dropping the connection closes it; no stream is leased on it any more (`idle` saw to that).
                () = idle(watched.clone(), idle_timeout) => debug!("backend h2 connection idle; closing it"),
                () = ping(pings, keep_alive) => debug!("backend h2 connection: no answer to PING; closing it"),
            }
            if let Some(slot) = watched.upgrade() {
                slot.closed.store(true, Ordering::SeqCst);
            }
        });
        slot
    }
}

/// Resolves once the connection has had no stream and no new lease for a whole check period (half the idle
/// timeout, twice over), or nobody can lease on it any more. It marks the connection closed first, so no
/// stream is leased on it as it goes; a stream leased just before waits out here.
async fn idle(slot: Weak<Slot>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(50));
    let mut seen = None;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(period).await;
        let Some(slot) = slot.upgrade() else { return };
        if quiet >= 2 {
            // Closed already: waiting for a stream leased just before to end.
            if slot.streams.load(Ordering::SeqCst) == 0 {
                return;
            }
            continue;
        }
        let leases = slot.leases.load(Ordering::Relaxed);
        if slot.streams.load(Ordering::Relaxed) == 0 && seen == Some(leases) {
            quiet += 1;
            if quiet >= 2 {
                slot.closed.store(true, Ordering::SeqCst);
                if slot.streams.load(Ordering::SeqCst) == 0 {
                    return;
                }
            }
        } else {
            quiet = 0;
        }
        seen = Some(leases);
    }
}

/// Resolves when a PING went unanswered for the keep-alive timeout; never without keep-alive. A connection
/// that ends otherwise ends its task's `drive` first.
async fn ping(pings: Option<PingPong>, keep_alive: Option<KeepAlive>) {
    let (Some(mut pings), Some(keep_alive)) = (pings, keep_alive) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keep_alive.interval).await;
        if pings.send_ping(Ping::opaque()).is_err() {
            // The connection is closing: `drive` ends it.
            return std::future::pending().await;
        }
        match tokio::time::timeout(keep_alive.timeout, poll_fn(|cx| pings.poll_pong(cx))).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// A stream's place on a connection, held for the request and its response (its body holds it): counted
/// against the connection's streams until dropped.
pub(crate) struct Lease {
    slot: Arc<Slot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lease {
    /// The connection's sender, once it is open.
    async fn sender(&self) -> Result<SendRequest<Bytes>, ConnectError> {
        if let Some(send) = self.slot.sender.get() {
            return Ok(send.clone());
        }
        let mut state = self.slot.state.clone();
        let current = state.wait_for(|s| !matches!(s, State::Connecting)).await.map(|s| s.clone());
        match (current, self.slot.sender.get()) {
            (Ok(State::Ready), Some(send)) => Ok(send.clone()),
            (Ok(State::Failed(kind, text)), _) => Err(ConnectError::other(io::Error::new(kind, text.to_string()))),
            // The task went away without a word (the runtime is shutting down).
            _ => Err(ConnectError::other(io::Error::other("connection task ended"))),
        }
    }

    /// The connection takes no new stream: a request found it going away or failed.
    fn close(&self) {
        self.slot.closed.store(true, Ordering::SeqCst);
    }
}

/// A failed h2 send.
#[derive(Debug)]
pub(crate) struct H2SendError {
    pub(crate) error: UpstreamError,
    /// The backend did not process the request (a GOAWAY or `REFUSED_STREAM` said so, or the stream was
    /// never opened): it may go again, whatever its method, if its body can be made again.
    pub(crate) unprocessed: bool,
}

/// Why [`send`] failed.
#[derive(Debug)]
pub(crate) enum H2Failure {
    /// No connection: nothing was sent.
    Connect(ConnectError),
    Send(H2SendError),
}

impl H2Failure {
    fn send(error: UpstreamError, unprocessed: bool) -> Self {
        Self::Send(H2SendError { error, unprocessed })
    }
}

/// Sends `req` on a stream to the backend under `key` (connections opened with `open`) and waits for the
/// response head, sending the request body meanwhile. A request a closing connection does not take goes to
/// another connection, a few times. The response's body holds the stream's lease.
pub(crate) async fn send<F, I>(
    pool: &H2Pool,
    key: &str,
    open: impl Fn() -> F,
    req: Request<H2RequestBody>,
) -> Result<Response<H2Body>, H2Failure>
where
    F: Future<Output = Result<I, ConnectError>> + Send + 'static,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut head, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    // As hyper's client did: a body of known length carries it, unless the request says it already.
    if let Some(len) = body.size_hint().exact() {
        if len != 0 || !matches!(head.method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT) {
            head.headers.entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
        }
    }
    let mut pump = Pump { body, stream: None, pending: None, first: true };
    let mut tries = 0;
    loop {
        let lease = pool.lease(key, &open);
        let sender = lease.sender().await.map_err(H2Failure::Connect)?;
        let mut sender = match sender.ready().await {
            Ok(s) => s,
            // The connection went away (GOAWAY, closed) since it was leased: nothing was sent.
            Err(e) => {
                lease.close();
                if tries < RESENDS {
                    tries += 1;
                    debug!(error = %e, "backend h2 connection closing; the request goes on another");
                    continue;
                }
                return Err(H2Failure::send(UpstreamError::H2(e), true));
            }
        };
        let (response, stream) = match sender.send_request(Request::from_parts(head, ()), end_of_stream) {
            Ok(pair) => pair,
            // Nothing was sent. A connection that failed between `ready` and here is rare: the caller, who can
            // make the request again, sends it again; a request h2 refuses (a malformed head) fails.
            Err(e) => {
                let connection = is_connection_error(&e);
                if connection {
                    lease.close();
                }
                return Err(H2Failure::send(UpstreamError::H2(e), connection));
            }
        };
        if !end_of_stream {
            pump.stream = Some(stream);
        }
        return exchange(response, pump, lease).await;
    }
}

/// The response head, while the request body goes out; then the rest of the body, if any, in a task of its own.
async fn exchange(mut response: ResponseFuture, mut pump: Pump, lease: Lease) -> Result<Response<H2Body>, H2Failure> {
    let mut sending = pump.stream.is_some();
    let head = poll_fn(|cx| {
        if sending {
            match pump.poll(cx) {
                Poll::Ready(Ok(())) => sending = false,
                // The stream failed under the body (reset, connection gone): its response says why.
                Poll::Ready(Err(PumpError::Stream(_))) => sending = false,
                Poll::Ready(Err(PumpError::Body(e))) => return Poll::Ready(Err(H2Failure::send(e, false))),
                Poll::Pending => {}
            }
        }
        Pin::new(&mut response).poll(cx).map_err(|e| {
            let unprocessed = is_unprocessed(&e);
            // A GOAWAY or a broken connection closes it to new streams; a stream the peer refused alone
            // (`REFUSED_STREAM`: over its stream limit, say, before its SETTINGS were read) leaves the connection
            // in use, or a burst to a new backend would abandon one connection after another.
            if is_connection_error(&e) {
                lease.close();
            }
            H2Failure::send(UpstreamError::H2(e), unprocessed)
        })
    })
    .await?;
    // The backend answered before the request body ended (a call that streams both ways, or an early answer):
    // the body goes on beside the response, which the caller reads at its own pace.
    let pumping = sending.then(|| {
        let task = async move {
            match poll_fn(|cx| pump.poll(cx)).await {
                Ok(()) => {}
                Err(PumpError::Body(e)) => debug!(error = %source_chain(&e), "request body to the h2 backend failed"),
                Err(PumpError::Stream(e)) => debug!(error = %e, "h2 backend stream ended under the request body"),
            }
        };
        tokio::spawn(task.in_current_span()).abort_handle()
    });
    let content_length = head.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(head.map(|recv| H2Body { recv, phase: Phase::Data, content_length, pumping, _lease: lease }))
}

/// Why the request body stopped.
enum PumpError {
    /// The stream failed (reset by the peer, the connection gone): the response carries the error.
    Stream(h2::Error),
    /// The body itself failed (the downstream client went away): the stream is reset.
    Body(UpstreamError),
}

/// Sends a request body on its stream as the peer's flow-control window lets it.
struct Pump {
    body: H2RequestBody,
    /// Until the body has ended.
    stream: Option<SendStream<Bytes>>,
    /// A data frame taken from the body, waiting for send capacity, and whether it ends the body.
    pending: Option<(Bytes, bool)>,
    /// No data frame has been sent yet.
    first: bool,
}

impl Pump {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(Ok(())) };
        let done = loop {
            if let Some((data, eos)) = self.pending.take() {
                // A window of at least a byte, then the whole frame: h2 sends it as the window allows. Asking for
                // the whole frame would pin that much of the connection's window on this stream (hyper#4003).
                // The body's first frame, if small, goes at once: h2 gives no window to a stream before the
                // connection's task has opened it, and waiting for one would cost a round of wake-ups through
                // that task on every call; sent now, it goes out with the stream's HEADERS. h2 holds it (one
                // frame a stream at most) until the peer's window takes it.
                let first = std::mem::replace(&mut self.first, false);
                if stream.capacity() == 0 && !(first && data.len() <= FIRST_FRAME) {
                    stream.reserve_capacity(1);
                    match stream.poll_capacity(cx) {
                        Poll::Pending => {
                            self.pending = Some((data, eos));
                            match waiting(stream, cx) {
                                Poll::Ready(e) => break Err(e),
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            self.pending = Some((data, eos));
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => break Err(PumpError::Stream(e)),
                        Poll::Ready(None) => break Err(PumpError::Stream(h2::Error::from(Reason::CANCEL))),
                    }
                }
                if let Err(e) = stream.send_data(data, eos) {
                    break Err(PumpError::Stream(e));
                }
                if eos {
                    break Ok(());
                }
                continue;
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => match waiting(stream, cx) {
                    Poll::Ready(e) => break Err(e),
                    Poll::Pending => return Poll::Pending,
                },
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = self.body.is_end_stream();
                        if data.is_empty() {
                            if eos {
                                break stream.send_data(data, true).map_err(PumpError::Stream);
                            }
                        } else {
                            self.pending = Some((data, eos));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            stream.reserve_capacity(0);
                            break stream.send_trailers(trailers).map_err(PumpError::Stream);
                        }
                    }
                },
                Some(Err(e)) => {
                    stream.send_reset(reason_under(&*e).unwrap_or(Reason::INTERNAL_ERROR));
                    break Err(PumpError::Body(UpstreamError::RequestBody(e)));
                }
                None => break stream.send_data(Bytes::new(), true).map_err(PumpError::Stream),
            }
        };
        self.stream = None;
        Poll::Ready(done)
    }
}

/// Before the pump waits (for the body, for a window): a reset of the stream wakes it too. Asked only then, so
/// that a body sent whole in one poll (a unary call's) does not pay for it.
fn waiting(stream: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<PumpError> {
    stream.poll_reset(cx).map(|reset| {
        PumpError::Stream(match reset {
            Ok(reason) => h2::Error::from(reason),
            Err(e) => e,
        })
    })
}

/// The h2 reason under an error, if it is an h2 error (a downstream client's reset, passed on as it is).
fn reason_under(e: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        src = s.source();
    }
    None
}

/// A GOAWAY from the peer over the stream, or a stream it refused: the request was not processed (RFC 9113
/// §8.7).
fn is_unprocessed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.reason() == Some(Reason::REFUSED_STREAM)
}

/// The connection failed or is going away, not just one stream.
fn is_connection_error(e: &h2::Error) -> bool {
    e.is_go_away() || e.is_io()
}

/// A response body from an h2 backend: the stream's receiving half, holding the stream's lease until it ends or
/// is dropped.
pub(crate) struct H2Body {
    recv: RecvStream,
    phase: Phase,
    /// The response's `content-length`, for the size hint.
    content_length: Option<u64>,
    /// The task sending the rest of the request body, if the response came first: stopped with the response (a
    /// stream whose response is over or abandoned takes no more request data).
    pumping: Option<AbortHandle>,
    _lease: Lease,
}

/// What an [`H2Body`] reads next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

impl Drop for H2Body {
    fn drop(&mut self) {
        if let Some(task) = &self.pumping {
            task.abort();
        }
    }
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body").finish_non_exhaustive()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if this.phase == Phase::Data {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The downstream side has the frame: the backend may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Err(UpstreamError::H2(e))));
                }
                None => this.phase = Phase::Trailers,
            }
        }
        if this.phase == Phase::Trailers {
            let trailers = ready!(this.recv.poll_trailers(cx));
            this.phase = Phase::Done;
            return Poll::Ready(match trailers {
                Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                Ok(None) => None,
                Err(e) => Some(Err(UpstreamError::H2(e))),
            });
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.content_length {
            Some(n) => SizeHint::with_exact(n),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

/// The kind of the I/O error under `e`, for the proxy's connect-failure metrics.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> io::ErrorKind {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind();
        }
        if let Some(io) = s.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            return io.kind();
        }
        src = s.source();
    }
    io::ErrorKind::Other
}
