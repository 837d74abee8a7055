//! HTTP/2 to backends: a few multiplexed connections per backend, each a client connection of reveille's own
//! codec (`http2::client`) driven by a task of its own ([`drive`]: the socket, PING keep-alive), and one stream
//! per request, sent and read from the request's own task.
//!
//! Unlike HTTP/1.1 (`exchange`), an h2 connection serves many requests at once, so it is not checked out and
//! released: a request leases a stream on it ([`Lease`], counted) and the connection stays in the list. A
//! request takes the first connection to its backend with a stream free (below the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection's task last read it, and below
//! [`STREAMS_PER_CONNECTION`]); only when every connection is
//! full is another opened, up to `connections` per backend per worker shard (the same sharding as the h1
//! pool, [`worker`]). Past that, the least loaded connection takes the stream, which waits to open until the
//! peer frees one. A connection being opened counts as one with every stream free, so a burst of requests to a
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
//! GOAWAY: a connection that got one takes no new stream (its task marks it closed); a request that finds it
//! so (the stream is refused before anything is sent) goes to another connection, and so does one whose stream the peer did not process (above the
//! GOAWAY's last stream id, or `REFUSED_STREAM`: RFC 9113 §8.7), when nothing of its body was taken yet.
//! Otherwise the caller hears it was not processed ([`H2SendError::unprocessed`]) and, having the body, may
//! send it again.
//!
//! Flow control is per stream: the request body is polled as the peer's window opens, the response body
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

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, Instrument};

use super::error::{source_chain, BoxError, ConnectError, UpstreamError};
use super::pool::worker;
use crate::http2::client::{self, ConnError, Connection, Handle, RequestSender, ResponseBody, ResponseFuture};
pub(crate) use crate::http2::client::{PutField, RequestHead as H2Head};
use crate::http2::frame::Reason;
use crate::http2::keep_alive::KeepAlive;
use crate::http2::server::StreamError;

/// A request body as an h2 connection takes it: any body of `Bytes`, boxed (one allocation per h2 request,
/// none on the HTTP/1.1 path).
pub(crate) type H2RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Streams a connection takes before another is opened (up to `connections`; past them all, the least loaded
/// takes more, up to the peer's limit). A backend frames each connection in one task (hyper's, tonic's and
/// nginx's do), so 500 streams on one connection wait on one loop there: through the peer lab's gRPC
/// scenario (50 connections × 10 streams), one connection left both CPUs a third idle, reveille at 0.76-0.81×
/// HAProxy's rate; at 100 a connection (HAProxy opened 5 for the same load) the load generator's CPU was the
/// limit again, reveille at 0.95-0.96× (docs/benchmarks.md).
const STREAMS_PER_CONNECTION: usize = 100;

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

/// The frames waiting to be written on a connection past which its request bodies wait (the server side's
/// figure per connection).
const MAX_SEND_BUFFER: usize = 256 * 1024;

/// What a read asks the socket for, at least.
const READ_SIZE: usize = 16 * 1024;

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
    handle: OnceLock<Handle>,
    /// Takes no new stream: it could not be opened, its task ended, a GOAWAY came, a request found it gone, or
    /// it is being closed as idle. Set before the idle close looks at `streams`, and a lease looks at it after
    /// counting itself in `streams`, so a stream is never leased on a connection that is dropped under it.
    closed: AtomicBool,
    /// Streams leased on it.
    streams: AtomicUsize,
    /// Streams ever leased on it: the connection's task closes it when this has not moved, and no stream is
    /// open, for the idle timeout.
    leases: AtomicU64,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection's task last read it.
    limit: AtomicUsize,
}

/// Where a connection is in its life.
#[derive(Clone)]
enum State {
    Connecting,
    /// Open: its handle is in `Slot::handle`.
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
        self.streams.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed).clamp(1, STREAMS_PER_CONNECTION)
    }
}

/// Connections by key (the backend's scheme and authority), per worker shard.
type Slots = HashMap<Box<str>, Vec<Arc<Slot>>, foldhash::fast::RandomState>;

/// The HTTP/2 connections to backends.
pub(crate) struct H2Pool {
    shards: Box<[Mutex<Slots>]>,
    connections: usize,
    idle_timeout: Duration,
    keep_alive_interval: Duration,
    keep_alive_timeout: Duration,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("connections", &self.connections).finish_non_exhaustive()
    }
}

impl H2Pool {
    pub(crate) fn new(settings: H2Settings) -> Self {
        let shards = (0..settings.workers.max(1)).map(|_| Mutex::new(Slots::default())).collect();
        Self {
            shards,
            connections: settings.connections.max(1),
            idle_timeout: settings.idle_timeout,
            keep_alive_interval: settings.keep_alive_interval,
            keep_alive_timeout: settings.keep_alive_timeout,
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
        let slot = Arc::new(Slot {
            state: rx,
            handle: OnceLock::new(),
            closed: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            leases: AtomicU64::new(0),
            limit: AtomicUsize::new(limit),
        });
        let connecting = open();
        let watched = Arc::downgrade(&slot);
        let idle_timeout = self.idle_timeout;
        let keep_alive = KeepAlive::new(self.keep_alive_interval, self.keep_alive_timeout);
        tokio::spawn(async move {
            let io = match connecting.await {
                Ok(io) => io,
                Err(e) => {
                    if let Some(slot) = watched.upgrade() {
                        slot.closed.store(true, Ordering::SeqCst);
                    }
                    let _ = tx.send(State::Failed(io_kind(&e), source_chain(&e).into()));
                    return;
                }
            };
            let (conn, handle) = Connection::new(client::Config {
                stream_window: STREAM_WINDOW,
                connection_window: CONNECTION_WINDOW,
                max_header_list_size: MAX_HEADER_LIST,
                max_send_buffer: MAX_SEND_BUFFER,
                initial_max_streams: limit.min(u32::MAX as usize) as u32,
            });
            // Nobody holds the slot any more (every request that leased it gave up): nothing to serve.
            let Some(slot) = watched.upgrade() else { return };
            let _ = slot.handle.set(handle);
            drop(slot);
            let _ = tx.send(State::Ready);
            tokio::select! {
                result = drive(io, conn, &watched, keep_alive) => match result {
                    Ok(()) => debug!("backend h2 connection ended"),
                    Err(e) => debug!(error = %e, "backend h2 connection failed"),
                },
                // Dropping the connection closes it; no stream is leased on it any more (`idle` saw to that).
                () = idle(watched.clone(), idle_timeout) => debug!("backend h2 connection idle; closing it"),
            }
            if let Some(slot) = watched.upgrade() {
                slot.closed.store(true, Ordering::SeqCst);
            }
        });
        slot
    }
}

/// How a backend connection ended badly.
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ConnError),
    #[error("no answer to a keep-alive PING")]
    KeepAlive,
}

/// Drives a client connection on `io`: the backend's frames read and handed to the connection (its streams'
/// handles see them), what the streams queue written, PING keep-alive. The slot learns the peer's stream limit
/// and is closed to new streams once a GOAWAY came. Ends when the backend closes, a GOAWAY's streams are all
/// over, or on an error (its GOAWAY written first).
async fn drive<I>(
    mut io: I,
    mut conn: Connection,
    slot: &Weak<Slot>,
    mut keep_alive: KeepAlive,
) -> Result<(), DriveError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = BytesMut::with_capacity(READ_SIZE);
    // What is being written: taken from the connection, written before more is taken.
    let mut write = Bytes::new();
    let mut failed: Option<ConnError> = None;
    poll_fn(|cx| {
        conn.output.set_waker(cx.waker());
        let mut paused = false;
        while failed.is_none() {
            if !conn.output.wants_read() {
                paused = true;
                break;
            }
            if read.capacity() - read.len() < READ_SIZE / 4 {
                read.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut read) {
                // The backend closed the connection: its streams end with it.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => match conn.recv(&mut read) {
                    Ok(received) => {
                        if let Some(slot) = slot.upgrade() {
                            let limit = received.max_streams as usize;
                            if slot.limit.load(Ordering::Relaxed) != limit {
                                slot.limit.store(limit, Ordering::Relaxed);
                            }
                            if received.going_away {
                                slot.closed.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    // Its GOAWAY is written below; the task's end marks the slot closed.
                    Err(e) => failed = Some(e),
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        if failed.is_none() && keep_alive.poll(cx, &mut conn).is_ready() {
            return Poll::Ready(Err(DriveError::KeepAlive));
        }
        if let Err(e) = ready!(conn.output.poll_write(cx, &mut io, &mut write)) {
            return Poll::Ready(Err(e.into()));
        }
        let flushed = Pin::new(&mut io).poll_flush(cx);
        if let Poll::Ready(Err(e)) = flushed {
            return Poll::Ready(Err(e.into()));
        }
        if failed.is_some() || conn.is_done() {
            // The GOAWAY, or the last stream's last frames, leave before the socket is closed.
            if flushed.is_pending() {
                return Poll::Pending;
            }
            let _ = ready!(Pin::new(&mut io).poll_shutdown(cx));
            return Poll::Ready(failed.map_or(Ok(()), |e| Err(e.into())));
        }
        if paused && conn.output.wants_read() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
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
    /// The connection's handle, once it is open.
    async fn handle(&self) -> Result<&Handle, ConnectError> {
        if let Some(handle) = self.slot.handle.get() {
            return Ok(handle);
        }
        let mut state = self.slot.state.clone();
        let current = state.wait_for(|s| !matches!(s, State::Connecting)).await.map(|s| s.clone());
        match (current, self.slot.handle.get()) {
            (Ok(State::Ready), Some(handle)) => Ok(handle),
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

/// Sends a request (`head`, written straight into its HEADERS frame, and `body`) on a stream to the backend
/// under `key` (connections opened with `open`) and waits for the response head, sending the request body
/// meanwhile. A request a closing connection does not take goes to another connection, a few times. The
/// response's body holds the stream's lease.
pub(crate) async fn send<F, I>(
    pool: &H2Pool,
    key: &str,
    open: impl Fn() -> F,
    head: &(impl H2Head + Sync + ?Sized),
    body: H2RequestBody,
) -> Result<Response<H2Body>, H2Failure>
where
    F: Future<Output = Result<I, ConnectError>> + Send + 'static,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let end_of_stream = body.is_end_stream();
    let mut tries = 0;
    loop {
        let lease = pool.lease(key, &open);
        let handle = lease.handle().await.map_err(H2Failure::Connect)?;
        let (response, sender) = match poll_fn(|cx| handle.poll_open(cx, head, end_of_stream)).await {
            Ok(pair) => pair,
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
        let pump = Pump { body, sender, pending: None };
        return exchange(response, pump, lease).await;
    }
}

/// The response head, while the request body goes out; then the rest of the body, if any, in a task of its own.
async fn exchange(mut response: ResponseFuture, mut pump: Pump, lease: Lease) -> Result<Response<H2Body>, H2Failure> {
    let mut sending = pump.sender.is_some();
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
        response.poll_response(cx).map_err(|e| {
            // A stream refused alone (`REFUSED_STREAM`: over the peer's stream limit, say, before its SETTINGS
            // were read) leaves the connection in use, or a burst to a new backend would abandon one connection
            // after another; a GOAWAY closed it already (the connection's task).
            if e == StreamError::Closed {
                lease.close();
            }
            H2Failure::send(UpstreamError::H2(e), e == StreamError::Reset(Reason::REFUSED_STREAM))
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
    Ok(head.map(|recv| H2Body { recv, pumping, _lease: lease }))
}

/// Why the request body stopped.
enum PumpError {
    /// The stream failed (reset by the peer, the connection gone): the response carries the error.
    Stream(StreamError),
    /// The body itself failed (the downstream client went away): the stream is reset.
    Body(UpstreamError),
}

/// Sends a request body on its stream as the peer's flow-control windows let it.
struct Pump {
    body: H2RequestBody,
    /// Until the body has ended.
    sender: Option<RequestSender>,
    /// A data frame taken from the body, not all sent yet, and whether it ends the body.
    pending: Option<(Bytes, bool)>,
}

impl Pump {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        let Some(sender) = self.sender.as_mut() else { return Poll::Ready(Ok(())) };
        let done = loop {
            if let Some((data, eos)) = self.pending.as_mut() {
                // As the windows allow; a reset of the stream wakes it too.
                match sender.poll_send_data(cx, data, *eos) {
                    Poll::Ready(Ok(())) => {
                        let eos = *eos;
                        self.pending = None;
                        if eos {
                            break Ok(());
                        }
                    }
                    Poll::Ready(Err(e)) => break Err(PumpError::Stream(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                // Waiting on the body: a reset of the stream (asked only now, so that a body sent whole in one
                // poll, a unary call's, does not pay for it) ends the wait.
                Poll::Pending => match sender.poll_reset(cx) {
                    Poll::Ready(reason) => break Err(PumpError::Stream(StreamError::Reset(reason))),
                    Poll::Pending => return Poll::Pending,
                },
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = self.body.is_end_stream();
                        if !data.is_empty() || eos {
                            self.pending = Some((data, eos));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            break sender.send_trailers(&trailers).map_err(PumpError::Stream);
                        }
                    }
                },
                Some(Err(e)) => {
                    sender.reset(reason_under(&*e).unwrap_or(Reason::INTERNAL_ERROR));
                    break Err(PumpError::Body(UpstreamError::RequestBody(e)));
                }
                None => self.pending = Some((Bytes::new(), true)),
            }
        };
        self.sender = None;
        Poll::Ready(done)
    }
}

/// The HTTP/2 reason under an error, if it is a stream's reset (a downstream client's, passed on as it is).
fn reason_under(e: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(StreamError::Reset(reason)) = s.downcast_ref::<StreamError>() {
            return Some(*reason);
        }
        if let Some(reason) = s.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Some(Reason(u32::from(reason)));
        }
        src = s.source();
    }
    None
}

/// A response body from an h2 backend: the stream's receiving half, holding the stream's lease until it ends or
/// is dropped.
pub(crate) struct H2Body {
    recv: ResponseBody,
    /// The task sending the rest of the request body, if the response came first: stopped with the response (a
    /// stream whose response is over or abandoned takes no more request data).
    pumping: Option<AbortHandle>,
    _lease: Lease,
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
        Pin::new(&mut self.recv).poll_frame(cx).map_err(|e| match e {
            StreamError::Reset(reason) => UpstreamError::H2Reset(h2::Error::from(h2::Reason::from(reason.0))),
            e => UpstreamError::H2(e),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.recv.size_hint()
    }
}

/// The kind of the I/O error under `e`, for the proxy's connect-failure metrics.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> io::ErrorKind {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind();
        }
        src = s.source();
    }
    io::ErrorKind::Other
}
