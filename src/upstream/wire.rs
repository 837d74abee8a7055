//! One backend connection's bytes: its socket ([`Socket`], TCP or TLS over TCP, which acknowledges at once what
//! a stalling backend sends), the buffers an exchange reads into and writes from ([`Wire`], kept with the socket in the pool
//! between requests), and an upgraded connection handed to a tunnel ([`Upgraded`]).
//!
//! Why the immediate ACKs: a backend that leaves Nagle's algorithm on and writes a response's head and body in
//! two writes (Python's `http.server` and many app servers) sends the body only once the head is acknowledged.
//! On a reused connection Linux delays that ACK (up to 40 ms; the connection looks interactive), so every
//! response would be 40 ms late — through nginx and HAProxy alike. `TCP_QUICKACK` sends a pending ACK at once,
//! but the flag does not stick, and setting it after every read costs about a tenth of the throughput with fast
//! backends (one `setsockopt`, and a bare ACK the next request would otherwise have carried). So a connection
//! turns it on only once it has waited `STALL` or more for more data in the middle of a response (data read, no
//! request written since): a backend that stalls like this (or streams slowly anyway) gets an immediate ACK
//! after every read from then on; a fast one never pays, and the backend's time to answer does not count. The
//! first stall on each connection is still paid. `[upstream] quickack = false` turns it off.
//!
//! TLS (`https://` backends) is a second variant of the socket's stream, not a boxed trait object: the plain
//! path pays one match per read and write. Under TLS a readable TCP socket says nothing about the HTTP
//! bytes (it may hold a session ticket, a `close_notify`, or a record not complete yet), so whether an idle
//! TLS connection is usable, and what a failed write left to read, are asked of the TLS stream, never of the
//! TCP socket under it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::codec::{is_interim, parse_head, Head};
use super::pool::Reusable;

/// Smallest and largest read.
const READ_MIN: usize = 8 * 1024;
pub(super) const READ_MAX: usize = 64 * 1024;

/// A wait for backend data this long turns a connection's immediate ACKs on: Linux's shortest delayed ACK is
/// 40 ms, and a stall behind one lasts about that.
const STALL: Duration = Duration::from_millis(30);

/// One backend connection's socket and buffers; kept by the pool between requests.
#[derive(Debug)]
pub(crate) struct Wire {
    io: Socket,
    /// Bytes read and not consumed yet. Response bodies are split off it without copying.
    pub(super) read: BytesMut,
    /// The request head is written here (kept for its capacity).
    pub(super) head: BytesMut,
    /// What is still to be written, in order.
    pub(super) queue: VecDeque<Bytes>,
}

impl Wire {
    pub(crate) fn new(io: Socket) -> Self {
        Self { io, read: BytesMut::new(), head: BytesMut::new(), queue: VecDeque::new() }
    }

    /// The socket and the bytes already read past the response head: a `101`'s tunnel.
    pub(crate) fn into_upgraded(self) -> Upgraded {
        Prefixed::new(self.io, self.read.freeze())
    }

    /// A final response head among the bytes the socket already holds (read without waiting), if there is one.
    pub(super) fn salvage_head(&mut self) -> Option<Head> {
        loop {
            self.read.reserve(READ_MIN);
            match self.io.try_read_buf(&mut self.read) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        while let Ok(Some(head)) = parse_head(&mut self.read, false) {
            if !is_interim(head.parts.status) {
                return Some(head);
            }
        }
        None
    }

    /// Reads more into `read`; `Ok(0)` at the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_MIN {
            self.read.reserve(want.clamp(READ_MIN, READ_MAX));
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes what is queued, and flushes it (TLS may hold a record back otherwise). `sent` is set once a byte
    /// went out.
    pub(super) fn poll_flush_queue(&mut self, cx: &mut Context<'_>, sent: &mut bool) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            let mut n = 0;
            for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            let written = if n == 1 {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.queue[0]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent = true;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.queue.front_mut() else { break };
                if front.len() <= left {
                    left -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        if self.io.is_tls() {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Reusable for Wire {
    /// An idle connection can take a request: the backend has not closed it, and sent nothing unasked. Costs no
    /// system call unless the socket was reported readable.
    fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match &mut self.io.io {
            Stream::Tcp(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readable: closed, reset, unasked bytes — or only readiness left over from the last read.
                Poll::Ready(Ok(())) => {
                    matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // Through rustls: a session ticket (or a record not complete yet) reads as nothing, and the
            // connection stays usable; a `close_notify` reads as the end, an alert as an error, and plaintext
            // nobody asked for as data: all three close it. rustls' buffered plaintext is seen too, and the TCP
            // socket is only read (a system call) when it was reported readable.
            Stream::Tls(tls) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                Pin::new(tls.as_mut()).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

/// What a backend connection's bytes travel on.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    /// Boxed: a TLS session is a few KiB, and plain connections should not carry its size.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket (under TLS, the one TLS runs on).
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

/// A backend connection's socket (see the module docs).
#[derive(Debug)]
pub(crate) struct Socket {
    io: Stream,
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

impl Socket {
    /// `io` as a backend connection; `quickack`: immediate ACKs after a stall.
    pub(crate) fn new(io: TcpStream, quickack: bool) -> Self {
        Self { io: Stream::Tcp(io), quickack, acking: false, after_data: false, waiting: None }
    }

    /// A TLS stream (over TCP) as a backend connection.
    pub(crate) fn tls(io: TlsStream<TcpStream>, quickack: bool) -> Self {
        Self { io: Stream::Tls(Box::new(io)), quickack, acking: false, after_data: false, waiting: None }
    }

    /// Whether the connection is TLS.
    fn is_tls(&self) -> bool {
        matches!(self.io, Stream::Tls(_))
    }

    /// Reads what is there without waiting: `WouldBlock` when nothing is.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match &mut self.io {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Tls(s) => {
                let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                match tokio_util::io::poll_read_buf(Pin::new(s.as_mut()), &mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

impl AsyncRead for Socket {
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
                    let _ = socket2::SockRef::from(self.io.tcp()).set_tcp_quickack(true);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        read
    }
}

impl AsyncWrite for Socket {
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

/// An upgraded backend connection: first the bytes read past the `101`'s head, then the socket.
pub(crate) type Upgraded = Prefixed<Socket>;

/// A connection handed to a tunnel: first the bytes already read past a head, then the stream itself (a backend's
/// socket after its `101`, a client's after reveille's `101`).
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    io: T,
    prefix: Bytes,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(io: T, prefix: Bytes) -> Self {
        Self { io, prefix }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
