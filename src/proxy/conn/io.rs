//! The client socket as hyper sees it ([`ConnIo`]): it replays the bytes read during protocol detection, tells
//! the connection's state when a request head starts to arrive and when a write waits on the client, and, dropped
//! while the client may still be sending, closes by lingering ([`linger`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::{ConnState, Stream};

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
    pub(super) fn new(inner: S, prefix: Bytes, state: Arc<ConnState>, vectored: bool) -> Self {
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
