//! Body types of the data path. Bodies are streamed frame by frame in both directions; nothing here buffers a
//! whole body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The body sent upstream.
///
/// A request with a body is put in a shared slot that the upstream attempt only takes from when it starts
/// sending the body. If the connection to a backend fails first (refused, timed out), the body is still in the
/// slot and the request can go to the next backend without having buffered anything. The slot also records
/// when the body has been sent in full (the response timeout starts then, not while a client uploads) and
/// whether the client broke off the upload (its fault, not the backend's).
pub(crate) enum RequestBody {
    Empty,
    Streaming { shared: Arc<Shared>, body: Option<Incoming>, hint: SizeHint },
}

pub(crate) struct Shared {
    slot: Mutex<Option<Incoming>>,
    sent: AtomicBool,
    client_failed: AtomicBool,
    sent_notify: Notify,
}

/// The shared slot of a request body (see [`RequestBody`]).
pub(crate) struct BodySlot {
    shared: Arc<Shared>,
    hint: SizeHint,
}

impl BodySlot {
    /// `None` when the body is empty: such requests are always retryable.
    pub(crate) fn new(body: Incoming) -> Option<Self> {
        if body.is_end_stream() {
            return None;
        }
        let hint = body.size_hint();
        let shared = Arc::new(Shared {
            slot: Mutex::new(Some(body)),
            sent: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
            sent_notify: Notify::new(),
        });
        Some(Self { shared, hint })
    }

    /// A body for one upstream attempt.
    pub(crate) fn attempt(&self) -> RequestBody {
        RequestBody::Streaming { shared: self.shared.clone(), body: None, hint: self.hint }
    }

    /// True while no attempt has started reading the body, so another attempt can still send it.
    pub(crate) fn is_intact(&self) -> bool {
        self.shared.slot.lock().is_some()
    }

    /// The length, when the client declared it.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        self.hint.exact()
    }

    /// True when reading the client's body failed (the client went away mid-upload).
    pub(crate) fn client_failed(&self) -> bool {
        self.shared.client_failed.load(Ordering::Acquire)
    }

    /// Resolves once the whole body has been handed to the backend connection (or reading it failed).
    pub(crate) async fn sent(&self) {
        loop {
            let notified = self.shared.sent_notify.notified();
            if self.shared.sent.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    fn finish(&self, client_failed: bool) {
        if client_failed {
            self.client_failed.store(true, Ordering::Release);
        }
        self.sent.store(true, Ordering::Release);
        self.sent_notify.notify_waiters();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming { shared, body, .. } => {
                if body.is_none() {
                    *body = shared.slot.lock().take();
                }
                let Some(b) = body else { return Poll::Ready(None) };
                let res = Pin::new(&mut *b).poll_frame(cx);
                match &res {
                    Poll::Ready(None) => shared.finish(false),
                    Poll::Ready(Some(Err(_))) => shared.finish(true),
                    // hyper stops polling once `is_end_stream` says so: the last frame is the end.
                    Poll::Ready(Some(Ok(_))) if b.is_end_stream() => shared.finish(false),
                    _ => {}
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming { body: Some(b), .. } => b.is_end_stream(),
            RequestBody::Streaming { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming { body: Some(b), .. } => b.size_hint(),
            RequestBody::Streaming { hint, .. } => *hint,
        }
    }
}

/// The body sent to the client: an upstream's streamed body, or a short text reveille wrote itself. Carries a
/// guard that is released when the body is finished or dropped, which is when a request stops being "in flight".
pub(crate) struct ResponseBody<G> {
    kind: Kind,
    _guard: Option<G>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl<G> ResponseBody<G> {
    pub(crate) fn upstream(body: Incoming, guard: G) -> Self {
        Self { kind: Kind::Upstream(body), _guard: Some(guard) }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>, guard: Option<G>) -> Self {
        let b = bytes.into();
        Self { kind: Kind::Full(if b.is_empty() { None } else { Some(b) }), _guard: guard }
    }
}

impl<G: Unpin> Body for ResponseBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = match &mut this.kind {
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(None) = res {
            // Release the guard as soon as the body ends, not when hyper gets round to dropping it.
            this._guard = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
