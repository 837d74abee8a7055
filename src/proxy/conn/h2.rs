//! reveille's own HTTP/2 server for one client connection, on the `h2` crate: the handshake with the SETTINGS
//! hyper's server was given (see [`builder`]), then streams accepted and each request's future driven in the
//! connection's own task ([`FuturesUnordered`]), no task spawned per stream; PING keep-alive; GOAWAY when the
//! connection is asked to close ([`H2Conn`]'s `graceful`, from `drive`: idle, shutdown, drain).
//!
//! What a stream does (the handler, the response sent as flow control allows, trailers, the send timeout) is
//! `ProxyService::h2_stream`'s; this file only owns the connection. `[server] http2 = "hyper"` serves h2 with
//! hyper's server instead.
//!
//! Protection against rapid resets (CVE-2023-44487) is h2's own, with hyper's figures: streams reset by the
//! client before they were accepted are capped (`max_pending_accept_reset_streams`, h2's default of 20, as hyper
//! left it), and so are streams the server had to reset for the client's errors
//! (`max_local_error_reset_streams`, 1024); past either, h2 ends the connection with `ENHANCE_YOUR_CALM`.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{Ping, PingPong};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tracing::{debug, debug_span, Instrument};

use super::io::ConnIo;
use super::{ServerConn, Stream};
use crate::proxy::{ProxyService, Settings};

/// The flow-control windows hyper's server opened (its defaults): 1 MiB per stream and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// What one slow-reading client can make reveille buffer per stream (hyper was given the same).
const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Times the connection's stream set is polled again after it yielded, in one poll of the connection.
const STREAM_ROUNDS: usize = 4;
/// Streams reset by reveille for the client's errors before the connection is closed (hyper's figure).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The h2 server's settings, as hyper's server had them (`Proxy::new` configures hyper's).
fn builder(settings: &Settings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(settings.max_header_size.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    b
}

pin_project! {
    /// One h2 connection being served: `drive` polls it, and asks it to close with GOAWAY through `graceful`.
    pub(super) struct H2Conn<F> {
        #[pin]
        fut: F,
        graceful: Arc<AtomicBool>,
    }
}

impl<F: Future<Output = Result<(), h2::Error>>> Future for H2Conn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

impl<F: Future<Output = Result<(), h2::Error>>> ServerConn for H2Conn<F> {
    type Error = h2::Error;

    fn graceful(self: Pin<&mut Self>) {
        // Read at the connection's next poll, which `drive` makes right after (it loops to poll it again).
        self.graceful.store(true, Ordering::Relaxed);
    }
}

/// Serves h2 on `io` (whose preface may have been read already: `ConnIo` replays it) until the connection ends.
pub(super) fn serve<S: Stream>(
    io: ConnIo<S>,
    svc: ProxyService,
    settings: &Settings,
) -> H2Conn<impl Future<Output = Result<(), h2::Error>>> {
    let graceful = Arc::new(AtomicBool::new(false));
    let keep_alive = (settings.h2_keep_alive_interval, settings.h2_keep_alive_timeout);
    let fut = run(io, svc, builder(settings), keep_alive, graceful.clone());
    H2Conn { fut, graceful }
}

async fn run<S: Stream>(
    io: ConnIo<S>,
    svc: ProxyService,
    builder: h2::server::Builder,
    (interval, timeout): (Duration, Duration),
    graceful: Arc<AtomicBool>,
) -> Result<(), h2::Error> {
    let mut conn = builder.handshake::<_, Bytes>(io).await?;
    let pings = if interval.is_zero() { None } else { conn.ping_pong() };
    let mut keep_alive = KeepAlive::new(pings, interval, timeout);
    // The streams borrow the service, which lives as long as this future: no clone per stream.
    let svc = &svc;
    let mut streams = FuturesUnordered::new();
    let mut closing = false;
    poll_fn(|cx| {
        if !closing && graceful.load(Ordering::Relaxed) {
            closing = true;
            conn.graceful_shutdown();
        }
        // Reads frames, writes what the streams queued, and hands over the streams that opened.
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let span = debug_span!("stream", id = respond.stream_id().as_u32());
                    streams.push(svc.h2_stream(req, respond).instrument(span));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // Closed: GOAWAY done with no stream left, or the client went away.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        // The stream set yields (wakes this task and returns `Pending` with streams still ready) once it has made
        // as many polls as it holds streams, or two of them woke themselves while polled; and one stream's
        // progress readies others (h2 wakes the streams of a connection when it moves their frames or windows).
        // Each yield let the backend connection's task run and write the requests of the streams polled so far:
        // two or three requests a write. Asked again at once, up to `STREAM_ROUNDS` times, it polls the streams
        // ready now before that task runs: one write for them all, as a rule. Bounded, so a connection whose
        // streams are always ready still lets the others run.
        let mut rounds = 0;
        loop {
            match streams.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) => break,
                Poll::Pending => {
                    rounds += 1;
                    if rounds == STREAM_ROUNDS {
                        break;
                    }
                }
            }
        }
        if keep_alive.poll(cx).is_ready() {
            debug!("h2: the client did not answer a keep-alive PING; closing");
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await
}

/// A PING every `interval` (`Settings::h2_keep_alive_interval`, as hyper's server was given); ready when one went
/// unanswered for `timeout`: the peer vanished.
struct KeepAlive {
    pings: Option<PingPong>,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// A PING is out, unanswered.
    waiting: bool,
}

impl KeepAlive {
    fn new(pings: Option<PingPong>, interval: Duration, timeout: Duration) -> Self {
        Self { pings, interval, timeout, timer: Box::pin(tokio::time::sleep(interval)), waiting: false }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pings) = &mut self.pings else { return Poll::Pending };
        loop {
            if self.waiting {
                match pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                    }
                    // The connection is ending: `poll_accept` says so.
                    Poll::Ready(Err(_)) => {
                        self.pings = None;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(());
            }
            if pings.send_ping(Ping::opaque()).is_err() {
                self.pings = None;
                return Poll::Pending;
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}
