//! h2 streams whose client reads nothing: the send timeout per stream.
//!
//! HTTP/1.1 finds a client that reads nothing through the socket: writes block, and the connection's watchdog
//! sees them blocked (`send_timeout`). An h2 client can stop reading without ever blocking a write: it opens no
//! flow-control window, hyper sends nothing more and stops polling the response body, and the socket stays
//! writable. Nothing of reveille's runs then, and the stream would hold its backend connection (and the
//! backend's worker) for as long as the client keeps the connection open.
//!
//! So every h2 stream's task, which hyper hands to [`SpanExecutor`](super::SpanExecutor), runs inside a
//! [`Guarded`] future. A response body from a backend finds its stream's [`Progress`] (a task-local) and notes
//! each frame it hands to hyper, and whether it is waiting for its backend. While the body is neither done nor
//! waiting for its backend, a frame must go out at least every `send_timeout` (the overload timeout under
//! pressure): past it, the guard drops the stream's task, which resets the stream (`RST_STREAM(CANCEL)`) and
//! closes the backend connection mid-body. Responses reveille wrote itself hold no backend and are not watched.
//! The checks are made on a timer every quarter of the limit, so a stream is reset between 1 and 1.25 times the
//! limit after its last frame.
//!
//! A reset gives the connection-level flow-control capacity the stream held back to its siblings, and they
//! send a frame with it: capacity the client granted long ago, not a sign it reads. Counted as progress, it
//! restarted every sibling's clock with each reset, and a client that read nothing kept its backends for
//! several times the limit (256 streams: 3 at 5 s, 237 at 10 s, the last 16 at 15 s). So frames a stream sent
//! during a step in which a sibling was reset for the send timeout do not count as progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::conn::{ConnState, Pressure};
use crate::metrics::Metrics;

tokio::task_local! {
    static STREAM: Arc<Progress>;
}

/// The stream's body is not a backend's, or has not begun: nothing to watch.
const IDLE: u8 = 0;
/// A backend's body is being sent: hyper must take a frame from it within the limit.
const FLOWING: u8 = 1;
/// The body waits for its backend (whose own timer applies).
const UPSTREAM: u8 = 2;

/// How a response body from a backend is moving, shared by the body and its stream's [`Guarded`] task.
#[derive(Default)]
pub(crate) struct Progress {
    /// Frames the body handed to hyper.
    frames: AtomicU64,
    phase: AtomicU8,
    /// The connection the stream is on, once its body began: its count of streams reset for a stall.
    conn: std::sync::OnceLock<Arc<ConnState>>,
}

impl Progress {
    /// The progress of the h2 stream whose task is running, if this is one; the body (on the connection of
    /// `conn`) starts being watched.
    pub(crate) fn begin(conn: &Arc<ConnState>) -> Option<Arc<Self>> {
        let progress = STREAM.try_with(Arc::clone).ok()?;
        let _ = progress.conn.set(conn.clone());
        progress.phase.store(FLOWING, Ordering::Relaxed);
        Some(progress)
    }

    /// Streams of the same connection reset for a stall so far.
    fn sibling_stalls(&self) -> u64 {
        self.conn.get().map_or(0, |c| c.stream_stalls())
    }

    /// The body handed a frame to hyper.
    #[inline]
    pub(crate) fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// The body starts (`true`) or stops waiting for its backend.
    #[inline]
    pub(crate) fn waiting_for_backend(&self, waiting: bool) {
        self.phase.store(if waiting { UPSTREAM } else { FLOWING }, Ordering::Relaxed);
    }

    /// The body is done (sent whole, or failed): nothing more to watch.
    pub(crate) fn end(&self) {
        self.phase.store(IDLE, Ordering::Relaxed);
    }
}

/// What every guarded stream of one proxy is held to.
pub(crate) struct Limits {
    pub(crate) send: Duration,
    pub(crate) pressure: Arc<Pressure>,
    pub(crate) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("send", &self.send).finish_non_exhaustive()
    }
}

impl Limits {
    /// The send timeout, cut to the overload timeout under pressure, in ms.
    fn limit_ms(&self) -> u64 {
        self.pressure.cap(self.send.as_millis() as u64).max(1)
    }
}

pin_project! {
    /// An h2 stream's task, dropped (its stream reset) when its backend response makes no progress for the
    /// limit. See the module's documentation.
    pub(crate) struct Guarded<F: Future> {
        #[pin]
        inner: TaskLocalFuture<Arc<Progress>, F>,
        progress: Arc<Progress>,
        limits: Arc<Limits>,
        // Armed once a body flows; allocated only then.
        check: Option<Pin<Box<Sleep>>>,
        // The frame count at the last check, and since how long (ms) it has not moved while flowing.
        seen: u64,
        // The connection's count of streams reset for a stall, at the last check.
        stalls_seen: u64,
        quiet_ms: u64,
        // The interval the armed check was set to, in ms.
        step_ms: u64,
    }
}

impl<F: Future> Guarded<F> {
    pub(crate) fn new(fut: F, limits: Arc<Limits>) -> Self {
        let progress = Arc::new(Progress::default());
        Self {
            inner: STREAM.scope(progress.clone(), fut),
            progress,
            limits,
            check: None,
            seen: 0,
            stalls_seen: 0,
            quiet_ms: 0,
            step_ms: 0,
        }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.inner.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.progress.phase.load(Ordering::Relaxed) != FLOWING {
            // Nothing to watch now; a check that fires meanwhile is looked at when the body flows again.
            return Poll::Pending;
        }
        loop {
            let check = match this.check {
                Some(c) => c,
                None => {
                    *this.seen = this.progress.frames.load(Ordering::Relaxed);
                    *this.stalls_seen = this.progress.sibling_stalls();
                    *this.step_ms = step(this.limits.limit_ms());
                    this.check.insert(Box::pin(tokio::time::sleep(Duration::from_millis(*this.step_ms))))
                }
            };
            if check.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let frames = this.progress.frames.load(Ordering::Relaxed);
            let stalls = this.progress.sibling_stalls();
            // Frames sent with the capacity a sibling's reset gave back are not the client's doing.
            if frames != *this.seen && stalls == *this.stalls_seen {
                *this.quiet_ms = 0;
            } else {
                *this.quiet_ms += *this.step_ms;
            }
            *this.seen = frames;
            *this.stalls_seen = stalls;
            let limit = this.limits.limit_ms();
            if *this.quiet_ms >= limit {
                debug!(
                    limit_ms = limit,
                    "h2: the client took nothing of the response within the send timeout (no flow-control \
                     window); resetting the stream and releasing its backend connection"
                );
                this.limits.metrics.send_timeout("stream");
                if let Some(conn) = this.progress.conn.get() {
                    conn.stream_stalled();
                }
                return Poll::Ready(());
            }
            *this.step_ms = step(limit);
            check.as_mut().reset(Instant::now() + Duration::from_millis(*this.step_ms));
        }
    }
}

/// How often a flowing stream is looked at: a quarter of the limit.
fn step(limit_ms: u64) -> u64 {
    (limit_ms / 4).max(1)
}
