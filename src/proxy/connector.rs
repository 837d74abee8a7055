//! Connections to backends: hyper-util's `HttpConnector` (`TCP_NODELAY`, the connect timeout), with each
//! upstream socket acknowledging what it receives at once.
//!
//! Why: a backend that leaves Nagle's algorithm on and writes a response's head and body in two writes (Python's
//! `http.server` and many app servers) sends the body only once the head is acknowledged. On a reused
//! connection Linux delays that ACK (up to 40 ms; the connection looks interactive), so every response would be
//! 40 ms late — through nginx and HAProxy alike. `TCP_QUICKACK` sends a pending ACK at once, but the flag does
//! not stick, and setting it after every read costs about a tenth of the throughput with fast backends (one
//! `setsockopt`, and a bare ACK the next request would otherwise have carried). So a connection turns it on only
//! once it has waited `STALL` or more for more data in the middle of a response (data read, no request written
//! since): a backend that stalls like this (or streams slowly anyway) gets an immediate ACK after every read
//! from then on; a fast one never pays, and the backend's time to answer does not count. The first stall on each connection is
//! still paid. `[upstream] quickack = false` turns it off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A wait for backend data this long turns a connection's immediate ACKs on: Linux's shortest delayed ACK is
/// 40 ms, and a stall behind one lasts about that.
const STALL: Duration = Duration::from_millis(30);

/// Opens backend connections (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: HttpConnector,
    quickack: bool,
}

impl Connector {
    pub(crate) fn new(inner: HttpConnector, quickack: bool) -> Self {
        Self { inner, quickack }
    }
}

/// A backend connection could not be opened (refused, timed out, unreachable); nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the backend")]
pub(crate) struct ConnectError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl ConnectError {
    pub(crate) fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

impl Connector {
    /// Opens a TCP connection to `uri`'s authority.
    pub(crate) async fn connect(&self, uri: Uri) -> Result<Upstream, ConnectError> {
        let mut inner = self.inner.clone();
        let io = tower::Service::<Uri>::call(&mut inner, uri).await.map_err(|e| ConnectError(Box::new(e)))?;
        Ok(Upstream { io: io.into_inner(), quickack: self.quickack, acking: false, after_data: false, waiting: None })
    }
}

/// A backend connection.
#[derive(Debug)]
pub(crate) struct Upstream {
    io: TcpStream,
    /// Immediate ACKs may be turned on.
    quickack: bool,
    /// They are on: this connection has stalled once.
    acking: bool,
    /// The last thing on this connection was data read (not a request written): a wait now is a stall in the
    /// middle of a response (a head without its body), not the backend's time to answer.
    after_data: bool,
    /// Since when a read has been waiting for data, after data.
    waiting: Option<Instant>,
}

impl Upstream {
    /// The socket, for readiness checks.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.io
    }
}

impl AsyncRead for Upstream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.quickack {
            return read;
        }
        match read {
            Poll::Pending => {
                if self.after_data && self.waiting.is_none() && !self.acking {
                    self.waiting = Some(Instant::now());
                }
            }
            Poll::Ready(Ok(())) => {
                self.after_data = true;
                if let Some(since) = self.waiting.take() {
                    if !self.acking && since.elapsed() >= STALL {
                        self.acking = true;
                    }
                }
                if self.acking {
                    // Best effort: a failure changes nothing but the ACK's timing.
                    let _ = socket2::SockRef::from(&self.io).set_tcp_quickack(true);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        read
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // A request goes out: waiting for its answer (or idle in the pool before it) is no stall.
        self.after_data = false;
        self.waiting = None;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.after_data = false;
        self.waiting = None;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
