//! What a server connection and its streams' handles share, behind one lock: the frames waiting to be written,
//! the streams' states (their received data, their windows, who waits on what), the connection's windows. The
//! connection's task takes the lock once per batch of frames read; a stream's handle once per operation.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use parking_lot::Mutex;

use crate::http2::frame::{self, Reason};

pub(super) type Shared = Arc<Mutex<Core>>;

/// Streams by id. foldhash, not SipHash: every frame and every handle's operation looks a stream up (SipHash
/// was about 3 700 instructions of a gRPC call), and a client choosing ids to collide gains nothing a
/// connection's stream limit does not bound.
type Streams = HashMap<u32, StreamCore, foldhash::fast::RandomState>;

/// The receiving half of a stream: the client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    Open,
    /// END_STREAM came: what is queued is all there is.
    Ended,
    /// The body failed: reset by the client, or refused for breaking the rules (its length).
    Failed(Reason),
}

/// The sending half of a stream: the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Send {
    /// No HEADERS sent yet.
    Idle,
    Open,
    /// END_STREAM sent.
    Ended,
}

pub(super) struct StreamCore {
    pub(super) data: VecDeque<Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    pub(super) recv: Recv,
    /// What the client may still send on this stream.
    pub(super) recv_window: i64,
    /// Data taken by the body and not yet given back to the client in a WINDOW_UPDATE.
    recv_unacked: u32,
    /// Data received and counted against the connection's window, not yet taken by the body.
    pub(super) held: u32,
    pub(super) content_length: Option<u64>,
    pub(super) received: u64,
    pub(super) recv_waker: Option<Waker>,
    pub(super) send: Send,
    pub(super) send_window: i64,
    /// The stream's task, waiting for window or for a reset.
    pub(super) send_waker: Option<Waker>,
    /// Reset by either side: the stream is over.
    pub(super) reset: Option<Reason>,
    pub(super) body_gone: bool,
    pub(super) respond_gone: bool,
    /// Counted in `Core::active` (until the stream is over).
    active: bool,
}

impl StreamCore {
    pub(super) fn new(recv: Recv, recv_window: u32, send_window: u32, content_length: Option<u64>) -> Self {
        StreamCore {
            data: VecDeque::new(),
            trailers: None,
            recv,
            recv_window: i64::from(recv_window),
            recv_unacked: 0,
            held: 0,
            content_length,
            received: 0,
            recv_waker: None,
            send: Send::Idle,
            send_window: i64::from(send_window),
            send_waker: None,
            reset: None,
            body_gone: false,
            respond_gone: false,
            active: true,
        }
    }

    fn is_over(&self) -> bool {
        self.reset.is_some() || (self.send == Send::Ended && self.recv != Recv::Open)
    }

    pub(super) fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

pub(super) struct Core {
    /// Frames waiting to be taken by the connection's task.
    pub(super) out: BytesMut,
    /// What the connection's task took and has not written yet.
    pub(super) unflushed: usize,
    pub(super) max_send_buffer: usize,
    pub(super) streams: Streams,
    /// Streams not yet over: what `SETTINGS_MAX_CONCURRENT_STREAMS` limits.
    pub(super) active: u32,
    /// The connection's send window.
    pub(super) send_window: i64,
    /// What the client may still send on the connection.
    pub(super) recv_window: i64,
    pub(super) recv_unacked: u32,
    /// The windows this side gives: a stream's, the connection's.
    pub(super) stream_window: u32,
    pub(super) connection_window: u32,
    pub(super) peer_initial_window: u32,
    pub(super) peer_max_frame_size: u32,
    /// The connection's task, to wake when frames were queued while it was not polling the streams.
    pub(super) conn_waker: Option<Waker>,
    pub(super) polling: bool,
    /// Streams' tasks waiting for the connection's window (woken by its WINDOW_UPDATE), and for room in the write
    /// buffer (woken once the connection's task has written some): two lists, so that neither kind is woken for
    /// what the other waits on (a task woken for room while the window stays shut would spin).
    pub(super) window_blocked: Vec<Waker>,
    pub(super) room_blocked: Vec<Waker>,
    /// The connection is gone: every handle fails.
    pub(super) closed: bool,
    /// Streams the client reset before their response ended, less those whose response ended since.
    pub(super) premature_resets: u32,
}

impl Core {
    pub(super) fn new(stream_window: u32, connection_window: u32, max_send_buffer: usize) -> Core {
        Core {
            out: BytesMut::with_capacity(4096),
            unflushed: 0,
            max_send_buffer,
            streams: Streams::default(),
            active: 0,
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(connection_window.max(frame::DEFAULT_WINDOW)),
            recv_unacked: 0,
            stream_window,
            connection_window,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            conn_waker: None,
            polling: false,
            window_blocked: Vec::new(),
            room_blocked: Vec::new(),
            closed: false,
            premature_resets: 0,
        }
    }

    /// Frames were queued: the connection's task writes them. While it polls the streams it writes after, and
    /// needs no wake.
    pub(super) fn wake_conn(&mut self) {
        if !self.polling {
            if let Some(w) = self.conn_waker.take() {
                w.wake();
            }
        }
    }

    /// Whether the write buffer has room for a stream's data.
    pub(super) fn has_room(&self) -> bool {
        self.out.len() + self.unflushed < self.max_send_buffer
    }

    /// A stream's task waits for the connection's window (`window`) or for room in the write buffer.
    pub(super) fn block(&mut self, waker: &Waker, window: bool) {
        let list = if window { &mut self.window_blocked } else { &mut self.room_blocked };
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    /// The connection's window grew: the streams waiting on it try again.
    pub(super) fn wake_window_blocked(&mut self) {
        for w in self.window_blocked.drain(..) {
            w.wake();
        }
    }

    /// The write buffer has room again.
    pub(super) fn wake_room_blocked(&mut self) {
        for w in self.room_blocked.drain(..) {
            w.wake();
        }
    }

    /// `n` octets of stream `id`'s data were taken by its body: given back to the client, in WINDOW_UPDATEs
    /// once half a window has gathered.
    pub(super) fn release(&mut self, id: u32, n: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.held = s.held.saturating_sub(n);
        }
        self.credit(id, n);
    }

    /// `n` octets of stream `id`'s flow control given back that were never held for its body (padding).
    pub(super) fn credit(&mut self, id: u32, n: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.recv == Recv::Open {
                s.recv_unacked += n;
                if s.recv_unacked >= self.stream_window / 2 {
                    frame::put_window_update(&mut self.out, id, s.recv_unacked);
                    s.recv_window += i64::from(s.recv_unacked);
                    s.recv_unacked = 0;
                    self.wake_conn();
                }
            }
        }
        self.release_connection(n);
    }

    /// `n` octets given back to the connection's window only (data of a stream no one reads).
    pub(super) fn release_connection(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.recv_unacked += n;
        if self.recv_unacked >= self.connection_window.max(frame::DEFAULT_WINDOW) / 2 {
            frame::put_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
            self.wake_conn();
        }
    }

    /// Resets stream `id` from this side (RST_STREAM), unless it is over already; settles it either way.
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if !s.is_over() {
            frame::put_rst_stream(&mut self.out, id, reason);
            s.reset = Some(reason);
            if s.recv == Recv::Open {
                s.recv = Recv::Failed(reason);
            }
            s.wake();
            self.wake_conn();
        }
        self.settle(id);
    }

    /// Looks at stream `id` after a change: once over it no longer counts as active, its unread data goes back
    /// to the connection's window; once its handles are gone too, it is forgotten.
    pub(super) fn settle(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        // A response that has ended while the client still sends a body no one reads: stop the client (§8.1).
        if s.reset.is_none() && s.send == Send::Ended && s.recv == Recv::Open && s.body_gone {
            frame::put_rst_stream(&mut self.out, id, Reason::NO_ERROR);
            s.reset = Some(Reason::NO_ERROR);
            s.recv = Recv::Failed(Reason::NO_ERROR);
            self.wake_conn();
        }
        let Some(s) = self.streams.get_mut(&id) else { return };
        if !s.is_over() {
            return;
        }
        let was_active = std::mem::replace(&mut s.active, false);
        let mut held = 0;
        if s.body_gone || s.reset.is_some() {
            held = std::mem::take(&mut s.held);
            s.data.clear();
        }
        let forget = s.body_gone && s.respond_gone;
        if was_active {
            self.active -= 1;
        }
        self.release_connection(held);
        if forget {
            self.streams.remove(&id);
        }
    }

    /// Adds a new stream, active.
    pub(super) fn open(&mut self, id: u32, stream: StreamCore) {
        self.active += 1;
        self.streams.insert(id, stream);
    }
}
