//! Body types of the data path, and the timers that keep a body from holding a slot forever.
//!
//! A request body is read under [`BodyLimits`]: no byte from the client for `idle` fails it (408), and so does
//! a body slower than `min_rate` once `grace` has passed (408, Kestrel's rule), measured while it is read into
//! reveille and again from when it streams to a backend. Only the time reveille waits on the client counts:
//! while a slow backend is not reading, the client is not to blame.
//! Small bodies are read whole before a backend connection is taken ([`BodySlot::read`]), as nginx does, so a
//! slow upload costs reveille a buffer, not a tenant's worker; larger ones stream frame by frame after their
//! buffered first part, with flat memory. A response body fails when the backend sends no byte for the
//! upstream read timeout, and when the request's total time limit passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::conn::{ConnState, H1Body, InFlight};
use super::error::UpstreamErrorKind;
use super::stream::Progress;
use crate::routes::{Backend, Load, Service};
use crate::upstream::{RawFields, SendBody, UpstreamBody, UpstreamError};

/// How a client's request body must arrive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Longest wait for the next byte.
    pub idle: Duration,
    /// Slowest average rate (bytes/s); 0 = none.
    pub min_rate: u64,
    /// Waiting time before the rate is enforced.
    pub grace: Duration,
    /// Bodies up to this size are read whole before a backend is contacted; larger ones have this much read
    /// first, then stream. 0 = stream from the first byte.
    pub buffer: usize,
}

/// Why a body failed. The downstream kinds are also recorded in the request's [`BodySlot`], so the handler
/// can answer with the right status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("no byte of the request body for {}", humantime::format_duration(*.0))]
    DownstreamIdle(Duration),
    #[error("request body slower than {0} bytes/s")]
    DownstreamTooSlow(u64),
    #[error("reading the request body: {0}")]
    Downstream(#[source] DownstreamError),
    #[error("no byte of the response body from the backend for {}", humantime::format_duration(*.0))]
    UpstreamIdle(Duration),
    #[error("the request's time limit passed")]
    Deadline,
    #[error("reading the response body: {0}")]
    Upstream(#[source] UpstreamError),
}

/// How reading a client's body failed, as the handler answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownstreamFailure {
    /// The client went away (499, for logs only).
    Aborted,
    /// The body's framing was invalid, e.g. a bad chunk size (400).
    Malformed,
    /// No byte for the idle timeout (408).
    Idle,
    /// Slower than the minimum rate (408).
    TooSlow,
}

impl DownstreamFailure {
    fn of(e: &BodyError) -> Self {
        match e {
            BodyError::DownstreamIdle(_) => Self::Idle,
            BodyError::DownstreamTooSlow(_) => Self::TooSlow,
            BodyError::Downstream(DownstreamError::Hyper(e)) if is_malformed(e) => Self::Malformed,
            BodyError::Downstream(DownstreamError::H1(e)) if is_malformed(e) => Self::Malformed,
            _ => Self::Aborted,
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::Aborted, Self::Malformed, Self::Idle, Self::TooSlow].get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// hyper (and reveille's own HTTP/1.1 side) report a bad chunk size, an overlong chunk extension and the like
/// as `InvalidData`/`InvalidInput` I/O errors of the body; a vanished client as `UnexpectedEof`, a reset, or an
/// h2 stream error.
fn is_malformed(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput);
        }
        src = s.source();
    }
    false
}

/// How a client's body failed to arrive: hyper's error, reveille's own HTTP/1.1 side's (an I/O error, with
/// bad framing as `InvalidData`), or a stream's on reveille's own h2 server (reset, or the connection closed;
/// a body that does not match its `content-length` is reset by the server).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownstreamError {
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    H1(std::io::Error),
    #[error(transparent)]
    H2(crate::http2::server::StreamError),
}

/// A client's request body as a server side hands it over: hyper's (HTTP/1.1 or h2, when hyper serves it),
/// reveille's own HTTP/1.1 side's, or an h2 stream of reveille's own h2 server.
pub(crate) enum ClientBody {
    Hyper(Incoming),
    H1(H1Body),
    H2(crate::http2::server::RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = DownstreamError;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, DownstreamError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(DownstreamError::Hyper),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(DownstreamError::H1),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(DownstreamError::H2),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// Times the waits of one body: fires when no frame has come for `idle` while the body was being waited on,
/// or when a rate limit or a fixed deadline is passed. The sleep is allocated at the first wait only, so a body
/// that arrives with its head costs no timer.
struct Stall {
    idle: Duration,
    /// When the current wait began.
    waiting_since: Option<Instant>,
    /// Total time spent waiting before the current wait.
    waited: Duration,
    bytes: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// What fired.
enum Expired {
    Idle,
    TooSlow,
    Deadline,
}

impl Stall {
    fn new(idle: Duration) -> Self {
        Self { idle, waiting_since: None, waited: Duration::ZERO, bytes: 0, sleep: None }
    }

    /// Forgets the waits and bytes so far (a wait in progress starts again now).
    fn restart(&mut self) {
        self.waited = Duration::ZERO;
        self.bytes = 0;
        if self.waiting_since.is_some() {
            self.waiting_since = Some(Instant::now());
        }
    }

    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        if let Some(d) = frame.data_ref() {
            self.bytes += d.len() as u64;
        }
    }

    /// The body is not ready, and someone else keeps time: only note since when.
    fn note_wait(&mut self) {
        if self.waiting_since.is_none() {
            self.waiting_since = Some(Instant::now());
        }
    }

    /// The body is not ready: arm the timer for the earliest limit and poll it.
    fn on_pending(
        &mut self,
        cx: &mut Context<'_>,
        rate: Option<(u64, Duration)>,
        deadline: Option<Instant>,
    ) -> Poll<Expired> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let mut at = (since + self.idle, Expired::Idle);
        if let Some((rate, grace)) = rate.filter(|(r, _)| *r > 0) {
            // Waiting time the bytes so far allow, at the minimum rate; never less than the grace.
            let allowed = grace.max(Duration::from_secs_f64(self.bytes as f64 / rate as f64));
            let t = since + allowed.saturating_sub(self.waited);
            if t < at.0 {
                at = (t, Expired::TooSlow);
            }
        }
        if let Some(d) = deadline.filter(|d| *d < at.0) {
            at = (d, Expired::Deadline);
        }
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.0)));
        if sleep.deadline() != at.0 {
            sleep.as_mut().reset(at.0);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(at.1),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The client's body as it is read: its buffered first part, then the rest from the connection, under the
/// limits.
pub(crate) struct DownstreamBody {
    prefix: Option<Bytes>,
    inner: ClientBody,
    stall: Stall,
    /// The minimum rate and its grace.
    rate: Option<(u64, Duration)>,
    /// Told when the body waits on the client: under pressure, the connection's watchdog cuts long waits.
    conn: Arc<ConnState>,
}

impl DownstreamBody {
    /// Tells the connection the wait is over, if one was on.
    fn end_wait(&mut self) {
        if self.stall.waiting_since.is_some() {
            self.conn.body_waiting(false);
        }
    }
}

impl Drop for DownstreamBody {
    fn drop(&mut self) {
        self.end_wait();
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Pending if this.stall.waiting_since.is_none() => this.conn.body_waiting(true),
            Poll::Pending => {}
            Poll::Ready(_) => this.end_wait(),
        }
        let res = match res {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.on_frame(&frame);
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.conn.body_unread(false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Downstream(e)))),
            Poll::Ready(None) => {
                this.conn.body_unread(false);
                Poll::Ready(None)
            }
            Poll::Pending => {
                match this.stall.on_pending(cx, this.rate.map(|(r, g)| (r, this.conn.rate_grace(g))), None) {
                    Poll::Ready(Expired::TooSlow) => {
                        Poll::Ready(Some(Err(BodyError::DownstreamTooSlow(this.rate.map_or(0, |r| r.0)))))
                    }
                    Poll::Ready(_) => Poll::Ready(Some(Err(BodyError::DownstreamIdle(this.stall.idle)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        if let Poll::Ready(Some(Err(_))) = res {
            // A client that stalled, trickled or broke its body is not lingered for (as nginx does not after a
            // timeout): its connection closes at once.
            this.conn.body_unread(false);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(n) = self.prefix.as_ref().map(|p| p.len() as u64) else { return inner };
        let mut hint = SizeHint::new();
        if let Some(u) = inner.upper() {
            hint.set_upper(u + n);
        }
        hint.set_lower(inner.lower() + n);
        hint
    }
}

/// A request's body, once read as far as [`BodySlot::read`] reads it.
///
/// A body read whole is kept and sent again to every backend tried. A longer one is put in a shared slot that
/// an upstream attempt only takes from when it starts sending the body: if the connection to a backend fails
/// first (refused, timed out), the body is still in the slot and the request can go to the next backend. The
/// slot also records when the body has been sent in full (the response timeout starts then, not while a client
/// uploads) and how reading it failed, if it did.
pub(crate) enum BodySlot {
    Whole { data: Bytes, trailers: Option<HeaderMap> },
    Streamed { shared: Arc<Shared>, hint: SizeHint },
}

pub(crate) struct Shared {
    slot: Mutex<Option<DownstreamBody>>,
    sent: AtomicBool,
    /// A [`DownstreamFailure`] code; 0 = none.
    failure: AtomicU8,
    sent_notify: Notify,
}

impl BodySlot {
    /// Reads the first `limits.buffer` bytes of `body` (all of a body that fits). `Ok(None)` when the body is
    /// empty: such requests are always retryable.
    pub(crate) async fn read(
        body: ClientBody,
        limits: &BodyLimits,
        conn: &Arc<ConnState>,
    ) -> Result<Option<Self>, DownstreamFailure> {
        if body.is_end_stream() {
            return Ok(None);
        }
        let rate = Some((limits.min_rate, limits.grace));
        let mut body =
            DownstreamBody { prefix: None, inner: body, stall: Stall::new(limits.idle), rate, conn: conn.clone() };
        let mut data = Gather::default();
        let mut trailers = None;
        let complete = loop {
            if body.is_end_stream() {
                break true;
            }
            if limits.buffer == 0 || data.len() > limits.buffer {
                // Too big to hold whole (or holding is off): the rest streams.
                break false;
            }
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => data.push(chunk),
                    Err(frame) => {
                        // Trailers end the body.
                        trailers = frame.into_trailers().ok();
                        break true;
                    }
                },
                Some(Err(e)) => return Err(DownstreamFailure::of(&e)),
            }
        };
        let data = data.finish();
        if complete {
            return Ok(Some(Self::Whole { data, trailers }));
        }
        body.prefix = (!data.is_empty()).then_some(data);
        // The rate is measured again from here, where a backend connection starts to wait on the client: a
        // quick first part earns no credit for trickling the rest.
        body.stall.restart();
        let hint = body.size_hint();
        let shared = Arc::new(Shared {
            slot: Mutex::new(Some(body)),
            sent: AtomicBool::new(false),
            failure: AtomicU8::new(0),
            sent_notify: Notify::new(),
        });
        Ok(Some(Self::Streamed { shared, hint }))
    }

    /// A body for one upstream attempt.
    pub(crate) fn attempt(&self) -> RequestBody {
        match self {
            Self::Whole { data, trailers } => {
                RequestBody::Whole { data: Some(data.clone()), trailers: trailers.clone() }
            }
            Self::Streamed { shared, hint } => {
                RequestBody::Streaming { shared: shared.clone(), body: None, hint: *hint }
            }
        }
    }

    /// The body was read whole: every attempt can send it again.
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self, Self::Whole { .. })
    }

    /// True while another attempt can still send the body: always for a body read whole, and for a streamed
    /// one while no attempt has started reading it.
    pub(crate) fn is_intact(&self) -> bool {
        match self {
            Self::Whole { .. } => true,
            Self::Streamed { shared, .. } => shared.slot.lock().is_some(),
        }
    }

    /// The length, when it is known: the client declared it, or the body was read whole (and has no trailers,
    /// which need chunked framing).
    pub(crate) fn exact_len(&self) -> Option<u64> {
        match self {
            Self::Whole { data, trailers: None } => Some(data.len() as u64),
            Self::Whole { .. } => None,
            Self::Streamed { hint, .. } => hint.exact(),
        }
    }

    /// How reading the client's body failed, if it did.
    pub(crate) fn downstream_failure(&self) -> Option<DownstreamFailure> {
        match self {
            Self::Whole { .. } => None,
            Self::Streamed { shared, .. } => DownstreamFailure::from_code(shared.failure.load(Ordering::Acquire)),
        }
    }

    /// Resolves once the whole body has been handed to the backend connection (or reading it failed).
    pub(crate) async fn sent(&self) {
        let Self::Streamed { shared, .. } = self else { return };
        loop {
            let notified = shared.sent_notify.notified();
            if shared.sent.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The chunks read so far, as one buffer; copies only from the second chunk on.
#[derive(Default)]
struct Gather {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Gather {
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, chunk: Bytes) {
        match &mut self.joined {
            Some(j) => j.extend_from_slice(&chunk),
            None if self.first.is_empty() => self.first = chunk,
            None => {
                let mut j = BytesMut::with_capacity(self.first.len() + chunk.len());
                j.extend_from_slice(&self.first);
                j.extend_from_slice(&chunk);
                self.joined = Some(j);
            }
        }
    }

    fn finish(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }
}

impl Shared {
    fn finish(&self, failure: Option<DownstreamFailure>) {
        if let Some(f) = failure {
            self.failure.store(f.code(), Ordering::Release);
        }
        self.sent.store(true, Ordering::Release);
        self.sent_notify.notify_waiters();
    }
}

/// The body sent upstream for one attempt.
pub(crate) enum RequestBody {
    Empty,
    Whole { data: Option<Bytes>, trailers: Option<HeaderMap> },
    Streaming { shared: Arc<Shared>, body: Option<DownstreamBody>, hint: SizeHint },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Whole { data, trailers } => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            RequestBody::Streaming { shared, body, .. } => {
                if body.is_none() {
                    *body = shared.slot.lock().take();
                }
                let Some(b) = body else { return Poll::Ready(None) };
                let res = Pin::new(&mut *b).poll_frame(cx);
                match &res {
                    Poll::Ready(None) => shared.finish(None),
                    Poll::Ready(Some(Err(e))) => shared.finish(Some(DownstreamFailure::of(e))),
                    // hyper stops polling once `is_end_stream` says so: the last frame is the end.
                    Poll::Ready(Some(Ok(_))) if b.is_end_stream() => shared.finish(None),
                    _ => {}
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Whole { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Streaming { body: Some(b), .. } => b.is_end_stream(),
            RequestBody::Streaming { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Whole { data, trailers: None } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Whole { .. } => SizeHint::default(),
            RequestBody::Streaming { body: Some(b), .. } => b.size_hint(),
            RequestBody::Streaming { hint, .. } => *hint,
        }
    }
}

impl SendBody for RequestBody {
    fn take_whole(&mut self) -> Option<(Bytes, Option<HeaderMap>)> {
        match self {
            RequestBody::Whole { data, trailers } => Some((data.take().unwrap_or_default(), trailers.take())),
            _ => None,
        }
    }
}

/// The body sent to the client: an upstream's streamed body, or a short text reveille wrote itself. Carries the
/// request's in-flight guard, released when the body is finished or dropped, which is when a request stops
/// being "in flight".
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<InFlight>,
    /// The backend's count of requests in flight, for `least_request`: released with the body, as the guard.
    load: Option<Load>,
}

// Boxing the upstream variant would cost an allocation per response; the size is only moved a few times.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Upstream(Upstream),
    Full(Option<Bytes>),
}

/// A backend's response body and what watches it.
struct Upstream {
    /// It owns the connection it comes on, which goes back to the pool once the body has been read to its end
    /// ([`release`]).
    body: UpstreamBody,
    stall: Stall,
    /// The request's total time limit, if one is set.
    deadline: Option<Instant>,
    /// Named in the log line when the backend stalls.
    service: Option<Arc<Service>>,
    backend: Option<Backend>,
    /// HTTP/1.1: the body is polled by its connection's task, whose watchdog enforces the idle limit (from
    /// the connection's `upstream_wait`), so no timer per response is needed. h2 streams keep their own.
    watched: bool,
    /// The stall was logged and counted.
    reported: bool,
    /// h2: the stream's progress, for its send timeout (see `stream`).
    progress: Option<Arc<Progress>>,
}

impl ResponseBody {
    /// A backend's body; it fails when the backend sends nothing for `idle`, or at `deadline`.
    /// A backend's response body; `load` (`least_request`: a request in flight at its backend) is held until the
    /// body ends or is dropped.
    pub(crate) fn upstream(
        mut body: UpstreamBody,
        guard: InFlight,
        idle: Duration,
        deadline: Option<Instant>,
        load: Option<Load>,
    ) -> Self {
        // A body with nothing to read (HEAD, 204, 304, a length of zero) is at its end already.
        release(&mut body);
        let watched = guard.conn().is_h1();
        let progress = if watched { None } else { Progress::begin(guard.state()) };
        let up = Upstream {
            body,
            stall: Stall::new(idle),
            deadline,
            service: None,
            backend: None,
            watched,
            reported: false,
            progress,
        };
        Self { kind: Kind::Upstream(up), guard: Some(guard), load }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>, guard: Option<InFlight>) -> Self {
        let b = bytes.into();
        Self { kind: Kind::Full(if b.is_empty() { None } else { Some(b) }), guard, load: None }
    }

    /// The backend's fields as it wrote them, when they were kept so: they are not in the response's map then,
    /// and reveille's own HTTP/1.1 side writes them (see `upstream::RawFields`).
    pub(crate) fn raw_fields(&self) -> Option<&RawFields> {
        match &self.kind {
            Kind::Upstream(up) => up.body.raw_fields(),
            Kind::Full(_) => None,
        }
    }

    /// Takes them, to write them.
    pub(crate) fn take_raw_fields(&mut self) -> Option<RawFields> {
        match &mut self.kind {
            Kind::Upstream(up) => up.body.take_raw_fields(),
            Kind::Full(_) => None,
        }
    }

    /// Names the service and backend a stall is logged with.
    pub(crate) fn set_origin(&mut self, service: Option<Arc<Service>>, backend: Option<Backend>) {
        if let Kind::Upstream(up) = &mut self.kind {
            up.service = service;
            up.backend = backend;
        }
    }

    /// Why the backend's body is given up, logged and counted once.
    fn give_up(up: &mut Upstream, guard: Option<&InFlight>, expired: Expired) -> BodyError {
        let err = match expired {
            Expired::Deadline => BodyError::Deadline,
            _ => BodyError::UpstreamIdle(up.stall.idle),
        };
        up.reported = true;
        warn!(
            service = up.service.as_ref().map_or("-", |s| s.name()),
            backend = up.backend.as_ref().map_or("-", |b| b.as_str()),
            "{err}; closing the client's response"
        );
        if let (Some(g), Expired::Idle) = (guard, &expired) {
            g.metrics().upstream_errors::<UpstreamErrorKind>().inc(UpstreamErrorKind::BodyTimeout);
        }
        err
    }
}

/// Puts a backend's connection back in the pool once its response has been read to the end, as pingora's
/// `release_http_session`: the exchange only says when the connection can serve again, the proxy decides.
fn release(body: &mut UpstreamBody) {
    if let Some(conn) = body.take_reusable() {
        conn.release();
    }
}

/// How early, at most, the connection's watchdog (millisecond counters) may cut a stalled response.
const WATCHDOG_SLACK: Duration = Duration::from_millis(2);

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body dropped before its end takes its connection with it (closed: it is mid-response).
        if let (Kind::Upstream(up), Some(g)) = (&mut self.kind, &self.guard) {
            if let Some(since) = up.stall.waiting_since {
                g.conn().upstream_waiting(false);
                // The watchdog counts whole milliseconds from the connection's epoch, so it may cut a millisecond
                // or two before this body's own clock says the limit is reached.
                if up.watched && !up.reported && since.elapsed() + WATCHDOG_SLACK >= up.stall.idle {
                    // The connection's watchdog cut the response at the idle limit.
                    Self::give_up(up, Some(g), Expired::Idle);
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let res = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => {
                if up.deadline.is_some_and(|d| Instant::now() >= d) {
                    return Poll::Ready(Some(Err(Self::give_up(up, this.guard.as_ref(), Expired::Deadline))));
                }
                let res = Pin::new(&mut up.body).poll_frame(cx);
                if res.is_ready() {
                    // Before the last frame is passed on: the client may send its next request as soon as it has
                    // the response, and that request should find the connection idle.
                    release(&mut up.body);
                }
                if let Some(g) = &this.guard {
                    // Under pressure, the connection's watchdog cuts a backend that keeps the body waiting.
                    match &res {
                        Poll::Pending if up.stall.waiting_since.is_none() => g.conn().upstream_waiting(true),
                        Poll::Ready(_) if up.stall.waiting_since.is_some() => g.conn().upstream_waiting(false),
                        _ => {}
                    }
                }
                if let Some(p) = &up.progress {
                    match &res {
                        Poll::Pending if up.stall.waiting_since.is_none() => p.waiting_for_backend(true),
                        Poll::Ready(Some(Ok(_))) => {
                            if up.stall.waiting_since.is_some() {
                                p.waiting_for_backend(false);
                            }
                            p.frame();
                        }
                        Poll::Ready(_) => p.end(),
                        Poll::Pending => {}
                    }
                }
                match res {
                    Poll::Ready(Some(Ok(frame))) => {
                        up.stall.on_frame(&frame);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Upstream(e)))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending if up.watched && up.deadline.is_none() => {
                        up.stall.note_wait();
                        Poll::Pending
                    }
                    Poll::Pending => match up.stall.on_pending(cx, None, up.deadline) {
                        Poll::Ready(expired) => Poll::Ready(Some(Err(Self::give_up(up, this.guard.as_ref(), expired)))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        };
        if let Poll::Ready(None) = res {
            // Release the guard as soon as the body ends, not when hyper gets round to dropping it.
            this.guard = None;
            this.load = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(up) => up.body.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(up) => up.body.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
