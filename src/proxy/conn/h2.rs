//! reveille's own HTTP/2 server for one client connection, on the codec in `crate::http2` (its server
//! connection, `http2::server::Connection`, holds the protocol; this file the socket, the timers and the
//! streams' futures): frames read and handed to the connection, each request's future driven in the
//! connection's own task ([`FuturesUnordered`], no task spawned per stream), what they queue written once they
//! have all been polled; PING keep-alive; GOAWAY when the connection is asked to close ([`H2Conn`]'s `graceful`,
//! from `drive`: idle, shutdown, drain).
//!
//! What a stream does (the handler, the response sent as flow control allows, trailers, the send timeout) is
//! `ProxyService::h2_stream`'s. `[server] http2 = "hyper"` serves h2 with hyper's server instead. The protections
//! (rapid reset, CONTINUATION flood, floods of SETTINGS, PING or empty DATA) are the codec's.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::io::AsyncWrite;
use tracing::{debug, debug_span, Instrument};

use super::io::ConnIo;
use super::{ServerConn, Stream};
use crate::http2::keep_alive::KeepAlive;
use crate::http2::server::{Config, ConnError, Connection};
use crate::proxy::{ProxyService, Settings};

/// The flow-control windows hyper's server opened (its defaults): 1 MiB per stream and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// What one slow-reading client can make reveille buffer (hyper was given the same, per stream).
const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Times the connection's stream set is polled again after it yielded, in one poll of the connection.
const STREAM_ROUNDS: usize = 4;
/// Streams reset by reveille for the client's errors before the connection is closed (hyper's figure).
const MAX_LOCAL_ERROR_RESETS: u32 = 1024;
/// What a read asks the socket for, at least.
const READ_SIZE: usize = 16 * 1024;

/// The connection's settings, as hyper's server had them (`Proxy::new` configures hyper's).
fn config(settings: &Settings) -> Config {
    Config {
        max_concurrent_streams: settings.h2_max_concurrent_streams,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_header_list_size: settings.max_header_size.min(u32::MAX as usize) as u32,
        max_send_buffer: MAX_SEND_BUFFER,
        max_local_resets: MAX_LOCAL_ERROR_RESETS,
    }
}

/// How an h2 connection ended badly.
#[derive(Debug, thiserror::Error)]
pub(super) enum H2Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ConnError),
}

pin_project! {
    /// One h2 connection being served: `drive` polls it, and asks it to close with GOAWAY through `graceful`.
    pub(super) struct H2Conn<F> {
        #[pin]
        fut: F,
        graceful: Arc<AtomicBool>,
    }
}

impl<F: Future<Output = Result<(), H2Error>>> Future for H2Conn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

impl<F: Future<Output = Result<(), H2Error>>> ServerConn for H2Conn<F> {
    type Error = H2Error;

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
) -> H2Conn<impl Future<Output = Result<(), H2Error>>> {
    let graceful = Arc::new(AtomicBool::new(false));
    let keep_alive = KeepAlive::new(settings.h2_keep_alive_interval, settings.h2_keep_alive_timeout);
    let fut = run(io, svc, config(settings), keep_alive, graceful.clone());
    H2Conn { fut, graceful }
}

async fn run<S: Stream>(
    mut io: ConnIo<S>,
    svc: ProxyService,
    config: Config,
    mut keep_alive: KeepAlive,
    graceful: Arc<AtomicBool>,
) -> Result<(), H2Error> {
    let mut conn = Connection::new(config);
    // The streams borrow the service, which lives as long as this future: no clone per stream.
    let svc = &svc;
    let mut streams = FuturesUnordered::new();
    let mut read = BytesMut::with_capacity(READ_SIZE);
    // What is being written: taken from the connection, written before more is taken.
    let mut write = Bytes::new();
    // A protocol error: its GOAWAY is written, then the connection ends.
    let mut failed: Option<ConnError> = None;
    poll_fn(|cx| {
        conn.output.set_waker(cx.waker());
        if !conn.is_going_away() && graceful.load(Ordering::Relaxed) {
            conn.go_away();
        }
        // Reads frames, and hands over the streams that opened; not while the frames to write pile up (a client
        // that sends and does not read), until the writes below have made room.
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
                // The client closed the connection: its streams end with it.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {
                    let mut accept = |req, respond: crate::http2::server::Respond| {
                        let span = debug_span!("stream", id = respond.stream_id());
                        streams.push(svc.h2_stream(req, respond).instrument(span));
                    };
                    if let Err(e) = conn.recv(&mut read, &mut accept) {
                        debug!(error = %e, "h2: closing the connection");
                        failed = Some(e);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        if failed.is_none() {
            // The stream set yields (wakes this task and returns `Pending` with streams still ready) once it has
            // made as many polls as it holds streams, or two of them woke themselves while polled. Asked again at
            // once, up to `STREAM_ROUNDS` times, it polls the streams ready now before the backend connection's
            // task writes their requests: one write for them all, as a rule. Bounded, so a connection whose
            // streams are always ready still lets the others run.
            conn.polling(true);
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
            conn.polling(false);
            if keep_alive.poll(cx, &mut conn).is_ready() {
                debug!("h2: the client did not answer a keep-alive PING; closing");
                return Poll::Ready(Ok(()));
            }
        }
        // Writes what the connection and its streams queued.
        if let Err(e) = ready!(conn.output.poll_write(cx, &mut io, &mut write)) {
            return Poll::Ready(Err(e.into()));
        }
        let flushed = Pin::new(&mut io).poll_flush(cx);
        if let Poll::Ready(Err(e)) = flushed {
            return Poll::Ready(Err(e.into()));
        }
        if failed.is_some() || (conn.is_going_away() && streams.is_empty()) {
            // The last frames (the GOAWAY, the end of the last response) must leave before the socket is
            // dropped: TLS holds them until flushed. Then the close (TLS's close_notify, TCP's FIN).
            if flushed.is_pending() {
                return Poll::Pending;
            }
            let _ = ready!(Pin::new(&mut io).poll_shutdown(cx));
            return Poll::Ready(failed.map_or(Ok(()), |e| Err(e.into())));
        }
        if paused && conn.output.wants_read() {
            // Nothing waits on the socket's reads: poll again to read.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}
