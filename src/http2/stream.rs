//! A stream's two handles: [`RecvBody`], the peer's body (an `http_body::Body`: a server's request body, a
//! client's response body), and [`SendHalf`], which sends this side's body as the peer's windows allow (a
//! server's response, its head included; a client's request body). Both work on the connection's shared state;
//! the connection's task writes what they queue.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::core::{Core, Recv, Send, Shared};
use super::fields::is_connection_specific;
use crate::http2::frame::{self, Reason};
use crate::http2::hpack;

/// Why a stream's handle could not do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    /// Reset by the peer, or by this side (a body that broke its `content-length`, a stream error).
    #[error("the stream was reset ({0})")]
    Reset(Reason),
    /// The connection ended.
    #[error("the connection is closed")]
    Closed,
}

/// The peer's body.
pub(crate) struct RecvBody {
    shared: Shared,
    id: u32,
    /// The declared `content-length`.
    len: Option<u64>,
    /// Nothing more will come (END_STREAM seen, or the body failed).
    done: bool,
}

impl RecvBody {
    pub(super) fn new(shared: Shared, id: u32, len: Option<u64>, done: bool) -> Self {
        RecvBody { shared, id, len, done }
    }

    /// A client's response head came: the body's declared length, and whether it is over already.
    pub(super) fn set_head(&mut self, len: Option<u64>, done: bool) {
        self.len = len;
        self.done = done;
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut core = self.shared.lock();
        let core = &mut *core;
        let Some(s) = core.streams.get_mut(&self.id) else {
            self.done = true;
            return Poll::Ready(Some(Err(StreamError::Closed)));
        };
        if let Some(data) = s.data.pop_front() {
            // The last of a body that ended with no trailers: said now, so that whoever passes it on can end
            // the body with this frame (one DATA frame with END_STREAM, not one more frame that is empty).
            self.done = s.data.is_empty() && s.recv == Recv::Ended && s.trailers.is_none();
            let n = data.len() as u32;
            core.release(self.id, n);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match s.recv {
            Recv::Open if core.closed => {
                self.done = true;
                Poll::Ready(Some(Err(StreamError::Closed)))
            }
            Recv::Open => {
                s.recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Recv::Ended => match s.trailers.take() {
                Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                None => {
                    self.done = true;
                    Poll::Ready(None)
                }
            },
            // Even with NO_ERROR: RFC 9113 §8.1 lets a server stop a client's body so, not a client end one. A
            // body cut short must not reach the backend as if whole.
            Recv::Failed(reason) => {
                self.done = true;
                Poll::Ready(Some(Err(StreamError::Reset(reason))))
            }
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            _ if self.done => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        if let Some(s) = core.streams.get_mut(&self.id) {
            s.body_gone = true;
            s.recv_waker = None;
            let held = std::mem::take(&mut s.held);
            s.data.clear();
            core.release_connection(held);
            core.settle(self.id);
        }
    }
}

/// The sending half: the response's head, its data as the windows allow, its trailers.
pub(crate) struct SendHalf {
    shared: Shared,
    id: u32,
}

impl SendHalf {
    pub(super) fn new(shared: Shared, id: u32) -> Self {
        SendHalf { shared, id }
    }

    pub(crate) fn stream_id(&self) -> u32 {
        self.id
    }

    /// Ready with the reason once the stream is reset (by the client, or by this side) or the connection is gone.
    pub(crate) fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Reason> {
        let mut core = self.shared.lock();
        let closed = core.closed;
        match core.streams.get_mut(&self.id) {
            Some(s) if s.reset.is_some() => Poll::Ready(s.reset.unwrap_or(Reason::CANCEL)),
            Some(_) if closed => Poll::Ready(Reason::CANCEL),
            Some(s) => {
                s.send_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(Reason::CANCEL),
        }
    }

    /// The response's head; `end` when it has no body.
    pub(crate) fn send_response(&mut self, head: &http::response::Parts, end: bool) -> Result<(), StreamError> {
        let mut core = self.shared.lock();
        let core = &mut *core;
        writable(core, self.id, Send::Idle)?;
        let max = core.peer_max_frame_size;
        let start = frame::begin_headers(&mut core.out);
        core.encoder.begin(&mut core.out);
        hpack::put_status(&mut core.out, head.status.as_u16());
        put_fields(&mut core.encoder, &mut core.out, &head.headers);
        frame::finish_headers(&mut core.out, start, self.id, end, max);
        self.sent(core, end);
        Ok(())
    }

    /// Sends `data` (taking it off the front as it goes) as the windows and the write buffer allow: ready once
    /// all of it is queued, with END_STREAM after it when `end`.
    pub(crate) fn poll_send_data(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), StreamError>> {
        let mut core = self.shared.lock();
        let core = &mut *core;
        loop {
            writable(core, self.id, Send::Open)?;
            if data.is_empty() {
                if end {
                    frame::put_data_head(&mut core.out, self.id, 0, true);
                    self.sent(core, true);
                }
                return Poll::Ready(Ok(()));
            }
            let room = core.has_room();
            let connection_window = core.send_window;
            let s = core.streams.get_mut(&self.id).expect("checked by writable");
            if !room || s.send_window <= 0 || connection_window <= 0 {
                // Whatever it waits for, a reset of the stream wakes it too, as does a WINDOW_UPDATE of the
                // stream's own (`send_waker`).
                s.send_waker = Some(cx.waker().clone());
                if !room {
                    core.block(cx.waker(), false);
                } else if connection_window <= 0 {
                    core.block(cx.waker(), true);
                }
                return Poll::Pending;
            }
            let window = s.send_window.min(core.send_window).min(i64::from(core.peer_max_frame_size));
            let n = (window as usize).min(data.len());
            let chunk = data.split_to(n);
            s.send_window -= n as i64;
            core.send_window -= n as i64;
            let last = end && data.is_empty();
            frame::put_data_head(&mut core.out, self.id, n, last);
            core.out.extend_from_slice(&chunk);
            if last {
                self.sent(core, true);
                return Poll::Ready(Ok(()));
            }
            core.wake_conn();
        }
    }

    /// The trailers, which end the stream.
    pub(crate) fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), StreamError> {
        let mut core = self.shared.lock();
        let core = &mut *core;
        writable(core, self.id, Send::Open)?;
        let max = core.peer_max_frame_size;
        let start = frame::begin_headers(&mut core.out);
        core.encoder.begin(&mut core.out);
        put_fields(&mut core.encoder, &mut core.out, trailers);
        frame::finish_headers(&mut core.out, start, self.id, true, max);
        self.sent(core, true);
        Ok(())
    }

    /// Resets the stream (RST_STREAM with `reason`), unless it is over.
    pub(crate) fn reset(&mut self, reason: Reason) {
        self.shared.lock().reset(self.id, reason);
    }

    fn sent(&self, core: &mut Core, end: bool) {
        if let Some(s) = core.streams.get_mut(&self.id) {
            s.send = if end { Send::Ended } else { Send::Open };
        }
        core.wake_conn();
        if end {
            core.premature_resets = core.premature_resets.saturating_sub(1);
            core.settle(self.id);
        }
    }
}

/// The stream may send in state `state`: not reset, the connection not closed.
fn writable(core: &mut Core, id: u32, state: Send) -> Result<(), StreamError> {
    if core.closed {
        return Err(StreamError::Closed);
    }
    match core.streams.get(&id) {
        Some(s) if s.reset.is_some() => Err(StreamError::Reset(s.reset.unwrap_or(Reason::CANCEL))),
        Some(s) if s.send == state => Ok(()),
        Some(_) => Err(StreamError::Reset(Reason::INTERNAL_ERROR)),
        None => Err(StreamError::Closed),
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        let Some(s) = core.streams.get_mut(&self.id) else { return };
        s.respond_gone = true;
        s.send_waker = None;
        // Dropped before the response ended: the stream is cancelled (before its head: an internal error).
        let reason = match s.send {
            Send::Idle => Some(Reason::INTERNAL_ERROR),
            Send::Open => Some(Reason::CANCEL),
            Send::Ended => None,
        };
        match reason {
            Some(reason) => core.reset(self.id, reason),
            None => core.settle(self.id),
        }
    }
}

/// A head's or trailers' fields, without the connection-specific ones HTTP/2 forbids (RFC 9113 §8.2.2).
fn put_fields(encoder: &mut hpack::Encoder, out: &mut bytes::BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        if is_connection_specific(name) {
            continue;
        }
        encoder.put_field(out, name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive());
    }
}
