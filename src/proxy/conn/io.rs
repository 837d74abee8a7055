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

use super::{ConnState, Signal, Stream};

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
    /// Plain TCP (not TLS). Offers vectored writes to hyper: off for TLS, where rustls makes one record per
    /// slice, so a response's head and body would go out as two records (two AEAD operations); hyper then
    /// gathers them into one buffer. Also decides `TCP_NODELAY` and the write side's shutdown, below.
    plain: bool,
    /// Plain TCP: `TCP_NODELAY` is not set yet. It is set before the second write instead of at accept: Nagle
    /// never holds a connection's first write (nothing is unacknowledged yet), so the wire sees the same
    /// segments, and a connection that writes once (a `Connection: close` exchange) saves the `setsockopt`.
    /// TLS connections get it at accept: their handshake writes before this wrapper exists.
    nodelay_unset: bool,
    /// A write went out (counted only while `nodelay_unset`).
    wrote: bool,
}

impl<S: Stream> ConnIo<S> {
    pub(super) fn new(inner: S, prefix: Bytes, state: Arc<ConnState>, tls: bool) -> Self {
        Self { inner: Some(inner), eof: false, prefix, state, plain: !tls, nodelay_unset: !tls, wrote: false }
    }

    fn io(&mut self) -> Pin<&mut S> {
        Pin::new(self.inner.as_mut().expect("the stream is only taken on drop"))
    }

    /// Before a write: the second write of a plain TCP connection sets `TCP_NODELAY` first (see
    /// `nodelay_unset`).
    #[inline]
    fn before_write(&mut self) {
        if self.nodelay_unset && self.wrote {
            self.nodelay_unset = false;
            if let Some(s) = &self.inner {
                let _ = s.tcp().set_nodelay(true);
            }
        }
    }

    /// After a write: notes that one went out, and whether the client keeps up.
    #[inline]
    fn after_write<T>(&mut self, res: &Poll<io::Result<T>>) {
        if self.nodelay_unset && matches!(res, Poll::Ready(Ok(_))) {
            self.wrote = true;
        }
        self.state.on_write(res);
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
        // The FIN after the response: `ConnIo::poll_shutdown` left it to the close for plain TCP (and TLS
        // streams were shut down by hyper already, which makes this one return at once).
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
        _ = state.signalled(Signal::EVICTED) => {}
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
        self.before_write();
        let res = self.io().poll_write(cx, buf);
        self.after_write(&res);
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let res = self.io().poll_write_vectored(cx, bufs);
        self.after_write(&res);
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.plain && self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = self.io().poll_flush(cx);
        self.state.on_write(&res);
        res
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper shuts the write side when it ends an HTTP/1.1 connection, and drops the socket right after: for
        // plain TCP the close (or the lingering close, which shuts the write side itself) sends the same FIN,
        // one system call fewer per connection. A tunnel (WebSocket) half-closes towards the client while the
        // other way may still flow: its shutdown is real, as is TLS's (close_notify) and h2's.
        if self.plain && self.state.is_h1() && !self.state.upgraded.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        self.io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::conn::Pressure;

    /// A connected pair over loopback: (reveille's side, the client's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    /// An HTTP/1.1 connection's state, as `serve_http` leaves it.
    fn h1_state() -> Arc<ConnState> {
        let state = ConnState::for_test(&Arc::new(Pressure::new(1, Duration::ZERO)));
        state.track_heads.store(true, Ordering::Relaxed);
        state
    }

    fn nodelay(io: &ConnIo<TcpStream>) -> bool {
        io.inner.as_ref().unwrap().nodelay().unwrap()
    }

    #[tokio::test]
    async fn plain_tcp_gets_nodelay_before_its_second_write_tls_at_accept() {
        let (server, mut client) = pair().await;
        let mut io = ConnIo::new(server, Bytes::new(), h1_state(), false);
        io.write_all(b"first").await.unwrap();
        assert!(!nodelay(&io), "one write: no setsockopt");
        io.write_all(b"second").await.unwrap();
        assert!(nodelay(&io), "set before the second write");
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstsecond");
        // A TLS connection's socket had it set at accept; the wrapper does not touch it.
        let (server, _client) = pair().await;
        let mut io = ConnIo::new(server, Bytes::new(), h1_state(), true);
        io.write_all(b"a").await.unwrap();
        io.write_all(b"b").await.unwrap();
        assert!(!io.nodelay_unset && !nodelay(&io), "left as the accept loop set it");
    }

    #[tokio::test]
    async fn an_ending_http1_connection_leaves_its_fin_to_the_close() {
        let (server, mut client) = pair().await;
        let mut io = ConnIo::new(server, Bytes::new(), h1_state(), false);
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = vec![0u8; 1024];
        let n = client.read(&mut got).await.unwrap();
        assert!(got[..n].starts_with(b"HTTP/1.1 200"));
        // No FIN yet: the shutdown was left to the close, which follows at once in `drive`.
        let early = tokio::time::timeout(Duration::from_millis(200), client.read(&mut got)).await;
        assert!(early.is_err(), "no FIN before the close: {early:?}");
        drop(io);
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut got)).await.unwrap().unwrap();
        assert_eq!(n, 0, "the close sent the FIN");
    }

    #[tokio::test]
    async fn a_tunnel_half_closes_for_real() {
        let (server, mut client) = pair().await;
        let state = h1_state();
        state.upgraded();
        let mut io = ConnIo::new(server, Bytes::new(), state, false);
        io.write_all(b"last from the backend").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, b"last from the backend", "the FIN came at the shutdown, the socket still open");
        // The other way still flows.
        client.write_all(b"more from the client").await.unwrap();
        let mut more = [0u8; 20];
        io.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more from the client");
    }
}
