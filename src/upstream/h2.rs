//! HTTP/2 to backends: a few multiplexed connections per backend, each a hyper
//! `client::conn::http2` connection driven by a task of its own, and one stream per request.
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
//! waiting on nothing. Dead connections leave the list at the next lease: closed (GOAWAY, an error, PING
//! keep-alive found the peer gone) or never opened.
//!
//! GOAWAY: hyper stops taking new streams on the connection; a request still in its queue comes back unsent
//! ([`H2SendError::unprocessed`] and the request itself), and so does a stream above the peer's last stream id
//! (RFC 9113 §8.7: not processed, safe to send again). [`send`] sends a request it got back whole on another
//! connection itself; for the others it tells the caller, who has the body to make again.
//!
//! Flow control is hyper's and h2's, per stream: the request body is polled as the peer's window opens, the
//! response body as the downstream side reads it, and a stream's window opens again only as its client
//! takes the data. Nothing is buffered whole, and the windows are sized so that clients who stop reading
//! hold up their own streams, not the connection ([`STREAM_WINDOW`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

use super::error::{source_chain, BoxError, ConnectError, UpstreamError};
use super::pool::worker;

/// A request body as an h2 connection takes it: any body of `Bytes`, boxed (one allocation per h2 request,
/// none on the HTTP/1.1 path).
pub(crate) type H2RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Streams the first connection to a backend is assumed to take before the peer's SETTINGS say otherwise
/// (hyper's own default); later ones are assumed to take what the others do.
const INITIAL_STREAMS: usize = 100;

/// Flow-control windows towards the backend. A stream whose client stops reading keeps its window's worth of
/// the backend's data in reveille, and that much of the connection's window too: with hyper's defaults (2 MiB
/// per stream, 5 MiB per connection) three such clients stopped every other stream on the connection. Here it
/// takes 32 stalled streams on one connection (each bounded in time by the downstream send timeout), and a
/// stalled stream holds at most 256 KiB, the downstream side's own send buffer per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 32 * STREAM_WINDOW;

/// Times a request sent back unsent by a closing connection is tried again on another one.
const RESENDS: usize = 3;

/// What [`H2Pool`] is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Settings {
    /// Worker threads: the connections are sharded per worker, as the h1 pool's are.
    pub workers: usize,
    /// Connections to one backend per worker shard, at most.
    pub connections: usize,
    /// A PING every this long; no answer within `keep_alive_timeout` closes the connection.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
    /// A connection with no stream for about this long is closed (the h1 pool's idle timeout).
    pub idle_timeout: Duration,
}

/// A connection to a backend, as the streams see it.
struct Slot {
    state: watch::Receiver<State>,
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
    Ready(SendRequest<H2RequestBody>),
    /// It could not be opened: the error's kind (for the proxy's metrics) and text.
    Failed(io::ErrorKind, Arc<str>),
}

impl Slot {
    /// Can still take streams: being opened, or open and not closed.
    fn alive(&self) -> bool {
        match &*self.state.borrow() {
            State::Connecting => true,
            State::Ready(s) => !s.is_closed(),
            State::Failed(..) => false,
        }
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
    builder: Builder<TokioExecutor>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("connections", &self.connections).finish_non_exhaustive()
    }
}

impl H2Pool {
    pub(crate) fn new(settings: H2Settings) -> Self {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(settings.keep_alive_interval)
            .keep_alive_timeout(settings.keep_alive_timeout)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // A connection kept for later requests is checked while idle too.
            .keep_alive_while_idle(true);
        let shards = (0..settings.workers.max(1)).map(|_| Mutex::new(Slots::default())).collect();
        Self { shards, connections: settings.connections.max(1), idle_timeout: settings.idle_timeout, builder }
    }

    /// A stream on a connection under `key`: an open one with room, else a new one opened with `open` (in a
    /// task of its own), else the least loaded one.
    pub(crate) fn lease<F, I>(&self, key: &str, open: impl FnOnce() -> F) -> Lease
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
        let slot = match list.iter().find(|s| s.has_room()) {
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
        };
        slot.streams.fetch_add(1, Ordering::Relaxed);
        slot.leases.fetch_add(1, Ordering::Relaxed);
        Lease { slot }
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
        let slot =
            Arc::new(Slot { state: rx, streams: AtomicUsize::new(0), leases: AtomicU64::new(0), limit: limit.clone() });
        let connecting = open();
        let builder = self.builder.clone();
        let watched = Arc::downgrade(&slot);
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            let io = match connecting.await {
                Ok(io) => io,
                Err(e) => {
                    let _ = tx.send(State::Failed(io_kind(&e), source_chain(&e).into()));
                    return;
                }
            };
            let (send, mut conn) = match builder.handshake::<_, H2RequestBody>(TokioIo::new(io)).await {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx.send(State::Failed(io::ErrorKind::Other, source_chain(&e).into()));
                    return;
                }
            };
            let _ = tx.send(State::Ready(send));
            // Drive the connection, noting the peer's stream limit as its SETTINGS arrive.
            let drive = std::future::poll_fn(|cx| {
                let r = Pin::new(&mut conn).poll(cx);
                limit.store(conn.current_max_send_streams(), Ordering::Relaxed);
                r
            });
            tokio::select! {
                result = drive => {
                    if let Err(e) = result {
                        debug!(error = %source_chain(&e), "backend h2 connection ended");
                    }
                }
                // Dropping the connection closes it; a request that leased a stream on it just now gets its
                // request back unsent, and `send` takes it to another connection.
                () = idle(watched, idle_timeout) => debug!("backend h2 connection idle; closing it"),
            }
        });
        slot
    }
}

/// Resolves once the connection has had no stream and no new lease for a whole check period (half the idle
/// timeout, twice over), or nobody can lease on it any more.
async fn idle(slot: std::sync::Weak<Slot>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(50));
    let mut seen = None;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(period).await;
        let Some(slot) = slot.upgrade() else { return };
        let leases = slot.leases.load(Ordering::Relaxed);
        if slot.streams.load(Ordering::Relaxed) == 0 && seen == Some(leases) {
            quiet += 1;
            if quiet >= 2 {
                return;
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
        self.slot.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    /// The connection's sender, once it is open.
    async fn sender(&self) -> Result<SendRequest<H2RequestBody>, ConnectError> {
        let mut state = self.slot.state.clone();
        let current = state.wait_for(|s| !matches!(s, State::Connecting)).await.map(|s| s.clone());
        match current {
            Ok(State::Ready(send)) => Ok(send),
            Ok(State::Failed(kind, text)) => Err(ConnectError::other(io::Error::new(kind, text.to_string()))),
            // The task went away without a word (the runtime is shutting down).
            Ok(State::Connecting) | Err(_) => Err(ConnectError::other(io::Error::other("connection task ended"))),
        }
    }
}

/// A failed h2 send.
#[derive(Debug)]
pub(crate) struct H2SendError {
    pub(crate) error: UpstreamError,
    /// The backend did not process the request (a GOAWAY or `REFUSED_STREAM` said so): it may go again,
    /// whatever its method, if its body can be made again.
    pub(crate) unprocessed: bool,
}

/// Why [`send`] failed.
#[derive(Debug)]
pub(crate) enum H2Failure {
    /// No connection: nothing was sent.
    Connect(ConnectError),
    Send(H2SendError),
}

/// Sends `req` on a stream to the backend under `key` (connections opened with `open`) and waits for the
/// response head. A request a closing connection gives back unsent goes to another connection, a few times.
/// The response's body holds the stream's lease.
pub(crate) async fn send<F, I>(
    pool: &H2Pool,
    key: &str,
    open: impl Fn() -> F,
    mut req: Request<H2RequestBody>,
) -> Result<Response<H2Body>, H2Failure>
where
    F: Future<Output = Result<I, ConnectError>> + Send + 'static,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut tries = 0;
    loop {
        let lease = pool.lease(key, &open);
        let mut sender = lease.sender().await.map_err(H2Failure::Connect)?;
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(|body| H2Body { body, _lease: lease })),
            Err(mut e) => match e.take_message() {
                Some(back) if tries < RESENDS => {
                    debug!(error = %source_chain(e.error()), "backend h2 connection closing; the request goes on another");
                    tries += 1;
                    req = back;
                }
                _ => {
                    let unprocessed = is_unprocessed(e.error()) || is_dropped_unopened(e.error(), &sender);
                    let error = UpstreamError::H2(e.into_error());
                    return Err(H2Failure::Send(H2SendError { error, unprocessed }));
                }
            },
        }
    }
}

/// A GOAWAY from the peer, or a stream it refused: the request was not processed (RFC 9113 §8.7).
fn is_unprocessed(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(::h2::Reason::REFUSED_STREAM);
        }
        src = s.source();
    }
    e.is_canceled()
}

/// hyper's dispatch task went away with the request still its own: a request whose stream was still waiting to
/// open (hyper keeps the last one it took while h2 has not sent it yet) when a GOAWAY ended the connection is
/// dropped with a "dispatch gone" error of its own (a user error with no cause), not handed back. The
/// connection is closed by then. Taken as not processed; a request that fails this way for another reason
/// fails again on its next connection, and the resends are bounded.
fn is_dropped_unopened(e: &hyper::Error, sender: &SendRequest<H2RequestBody>) -> bool {
    e.is_user() && std::error::Error::source(e).is_none() && sender.is_closed()
}

/// A response body from an h2 backend: hyper's, holding the stream's lease until it ends or is dropped.
pub(crate) struct H2Body {
    body: Incoming,
    _lease: Lease,
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
        Pin::new(&mut self.body).poll_frame(cx).map_err(UpstreamError::H2)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
