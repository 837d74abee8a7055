//! One admin connection's timeouts: the request head must arrive in time, a connection without a request in
//! flight is closed once idle, and a client that reads nothing of its answer is dropped.
//!
//! The socket is wrapped ([`Watched`]) so that its reads and writes see the deadlines, and each request holds an
//! [`InFlight`] guard until its response body is dropped (sent whole, or abandoned), which is how the socket
//! knows whether the connection is between requests. hyper's own header timeout is not used: it restarts at
//! every request and would also cut idle keep-alive connections at the header timeout.
//!
//! Owns the deadlines only; which limits apply is [`super::Settings`], and the counting is `metrics`'.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::events::AdminBody;
use crate::metrics::Metrics;

/// The deadlines of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// From the connection's start, or from the first byte of a later request, to a whole request head.
    pub header: Duration,
    /// Between requests (after the first): no byte of a next request for this long closes the connection.
    pub idle: Duration,
    /// A write that cannot proceed (the client reads nothing) for this long closes the connection.
    pub send: Duration,
}

// === impl Activity ===

/// What the connection is doing, shared by its socket (which reads it at every wait) and its requests.
#[derive(Debug)]
pub(super) struct Activity {
    /// Times below are milliseconds after this.
    start: Instant,
    /// Requests whose response body is not dropped yet.
    in_flight: AtomicUsize,
    /// Whether a request arrived: the wait for the first one is a header wait, later ones idle waits.
    served: AtomicBool,
    /// When the connection last had no request in flight (its start, or the end of its last response).
    idle_since: AtomicU64,
    /// 1 + when the first byte after `idle_since` arrived (a request head begins); 0: none yet.
    head_since: AtomicU64,
    /// The connection's task, when its socket waited for bytes with no deadline (a request in flight): woken
    /// when the last request ends, so that the wait gets its deadline.
    reader: AtomicWaker,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            reader: AtomicWaker::new(),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived while no request is in flight: the next request head has begun.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now() + 1, Ordering::Release);
        }
    }

    /// The deadline of a read that waits, and what it is; none while a request is in flight (its handler or
    /// its client decides when it ends; a blocked write has its own deadline).
    fn read_deadline(&self, t: &Timeouts) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 if self.served.load(Ordering::Acquire) => {
                Some((self.at(self.idle_since.load(Ordering::Acquire)) + t.idle, "idle"))
            }
            0 => Some((self.start + t.header, "header")),
            since => Some((self.at(since - 1) + t.header, "header")),
        }
    }
}

/// Held by a request from its head's arrival until its response body is dropped.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.served.store(true, Ordering::Release);
        activity.head_since.store(0, Ordering::Release);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Release);
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.reader.wake();
        }
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub(super) struct Tracked {
    body: AdminBody,
    _in_flight: InFlight,
}

impl Tracked {
    pub(super) fn new(body: AdminBody, in_flight: InFlight) -> Self {
        Self { body, _in_flight: in_flight }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Watched ===

/// The connection's socket, whose waits end at the connection's deadlines with a `TimedOut` error (which ends
/// the connection).
pub(super) struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    read_timer: Pin<Box<Sleep>>,
    /// What `read_timer` is set to.
    read_deadline: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    /// Whether the last write waited: `write_timer` then runs from when it began to.
    write_blocked: bool,
}

impl<IO> Watched<IO> {
    pub(super) fn new(io: IO, activity: Arc<Activity>, timeouts: Timeouts, metrics: Arc<Metrics>) -> Self {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Self {
            io,
            activity,
            timeouts,
            metrics,
            read_timer: Box::pin(tokio::time::sleep_until(far)),
            read_deadline: None,
            write_timer: Box::pin(tokio::time::sleep_until(far)),
            write_blocked: false,
        }
    }

    /// A write's outcome: progress clears the send deadline; a wait starts it, or ends the connection past it.
    fn after_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_blocked = false;
            return r;
        }
        if !self.write_blocked {
            self.write_blocked = true;
            let deadline = Instant::now() + self.timeouts.send;
            self.write_timer.as_mut().reset(deadline);
        }
        ready!(self.write_timer.as_mut().poll(cx));
        self.metrics.admin().timeout("send");
        Poll::Ready(Err(timed_out("send")))
    }
}

fn timed_out(kind: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("admin connection closed: {kind} timeout"))
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.activity.reader.register(cx.waker());
                let Some((deadline, kind)) = this.activity.read_deadline(&this.timeouts) else {
                    return Poll::Pending;
                };
                if this.read_deadline != Some(deadline) {
                    this.read_deadline = Some(deadline);
                    this.read_timer.as_mut().reset(deadline);
                }
                ready!(this.read_timer.as_mut().poll(cx));
                this.metrics.admin().timeout(kind);
                Poll::Ready(Err(timed_out(kind)))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.after_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts =
        Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(60), send: Duration::from_secs(30) };

    #[tokio::test(start_paused = true)]
    async fn the_first_head_gets_the_header_timeout_later_waits_the_idle_one() {
        let a = Activity::new();
        let start = Instant::now();
        assert_eq!(a.read_deadline(&T), Some((start + T.header, "header")));
        let req = InFlight::new(&a);
        assert_eq!(a.read_deadline(&T), None, "in flight: no read deadline");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(req);
        let (deadline, kind) = a.read_deadline(&T).unwrap();
        assert_eq!((deadline - start, kind), (Duration::from_secs(65), "idle"));
        // The next head begins: from its first byte, the header timeout.
        tokio::time::advance(Duration::from_secs(20)).await;
        a.bytes_read();
        let (deadline, kind) = a.read_deadline(&T).unwrap();
        assert_eq!((deadline - start, kind), (Duration::from_secs(35), "header"));
        // Bytes while a request is in flight (a body, a pipelined head) start nothing.
        let req = InFlight::new(&a);
        a.bytes_read();
        drop(req);
        assert_eq!(a.read_deadline(&T).unwrap().1, "idle");
    }
}
