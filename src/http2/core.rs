//! What a connection (server or client) and its streams' handles share, behind one lock: the frames waiting to be
//! written, the streams' states (their received data, their windows, who waits on what), the connection's
//! windows. The connection's task takes the lock once per batch of frames read; a stream's handle once per
//! operation. What the peer's frames do to it that both sides share is here too (DATA, WINDOW_UPDATE, the
//! initial window of SETTINGS, RST_STREAM).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use parking_lot::Mutex;

use crate::http2::fields::Refused;
use crate::http2::frame::{self, FrameError, Head, Reason, Settings};
use crate::http2::hpack::{self, DecodeError};

pub(super) type Shared = Arc<Mutex<Core>>;

/// Streams by id. foldhash, not SipHash: every frame and every handle's operation looks a stream up (SipHash
/// was about 3 700 instructions of a gRPC call), and a client choosing ids to collide gains nothing a
/// connection's stream limit does not bound.
type Streams = HashMap<u32, StreamCore, foldhash::fast::RandomState>;

/// The receiving half of a stream: the peer's body (a server's request body, a client's response body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    Open,
    /// END_STREAM came: what is queued is all there is.
    Ended,
    /// The body failed: reset by the client, or refused for breaking the rules (its length).
    Failed(Reason),
}

/// The sending half of a stream: this side's head and body.
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
    /// A client's stream: the response head, once it came, until its request takes it.
    pub(super) head: Option<http::response::Parts>,
    pub(super) recv: Recv,
    /// What the peer may still send on this stream.
    pub(super) recv_window: i64,
    /// Data taken by the body and not yet given back to the peer in a WINDOW_UPDATE.
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
    /// The peer's head came: what follows is data, or trailers (a server's stream opens with it; a client's
    /// waits for its response's). A client's request was HEAD: the response's `content-length` describes no
    /// body.
    pub(super) responded: bool,
    pub(super) head_request: bool,
}

impl StreamCore {
    pub(super) fn new(recv: Recv, recv_window: u32, send_window: u32, content_length: Option<u64>) -> Self {
        StreamCore {
            data: VecDeque::new(),
            trailers: None,
            head: None,
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
            responded: false,
            head_request: false,
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
    /// The HPACK table this side's header blocks are encoded with, in step with the peer's decoder: every block
    /// is encoded straight into `out`, under the lock, so the peer decodes them in the order they were encoded.
    pub(super) encoder: hpack::Encoder,
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
    /// Empty DATA frames in a row that did not end their stream.
    empty_data: u32,
    /// A client connection's: the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, the next stream id, the last stream
    /// id of the peer's GOAWAY, and the requests waiting for a stream to end so that theirs may open.
    pub(super) client: bool,
    pub(super) peer_max_streams: u32,
    pub(super) next_id: u32,
    pub(super) goaway: Option<u32>,
    pub(super) open_blocked: Vec<Waker>,
}

/// DATA payloads shorter than this are copied out of the read buffer: queued as a slice of it, a small payload
/// would keep the whole buffer alive while the body waits (a peer sending one small frame per read could pin a
/// read buffer per octet of its window).
pub(super) const COPY_BELOW: usize = 8 * 1024;
/// Empty DATA frames that do not end their stream: nothing to carry, only work.
const MAX_EMPTY_DATA: u32 = 100;
/// The write buffer's size, in `max_send_buffer`s, past which the peer's frames are not read until it drains.
const READ_PAUSE_FACTOR: usize = 4;

/// Why a connection ended with an error (the socket's aside). Each has been sent in a GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("the client did not start with HTTP/2's preface")]
    Preface,
    #[error("the peer broke HTTP/2: {0}")]
    Frame(FrameError),
    #[error("a header block does not decode ({0})")]
    Compression(DecodeError),
    #[error("the peer abused the connection: {0}")]
    Calm(&'static str),
}

impl ConnError {
    pub(super) fn reason(&self) -> Reason {
        match self {
            ConnError::Preface => Reason::PROTOCOL_ERROR,
            ConnError::Frame(e) => e.reason,
            ConnError::Compression(_) => Reason::COMPRESSION_ERROR,
            ConnError::Calm(_) => Reason::ENHANCE_YOUR_CALM,
        }
    }
}

pub(super) fn protocol_error(what: &'static str) -> ConnError {
    ConnError::Frame(FrameError { reason: Reason::PROTOCOL_ERROR, stream: None, what })
}

/// The next whole frame at the front of `buf`, taken off it: its head, and its bytes with the head. None until
/// it has all come (room for it is reserved meanwhile).
pub(super) fn next_frame(buf: &mut BytesMut) -> Result<Option<(Head, Bytes)>, ConnError> {
    if buf.len() < frame::HEAD_LEN {
        return Ok(None);
    }
    let head = Head::parse(buf[..frame::HEAD_LEN].try_into().expect("nine octets"));
    if head.len > frame::DEFAULT_MAX_FRAME_SIZE as usize {
        return Err(ConnError::Frame(FrameError {
            reason: Reason::FRAME_SIZE_ERROR,
            stream: None,
            what: "a frame larger than SETTINGS_MAX_FRAME_SIZE",
        }));
    }
    if buf.len() < frame::HEAD_LEN + head.len {
        buf.reserve(frame::HEAD_LEN + head.len - buf.len());
        return Ok(None);
    }
    Ok(Some((head, buf.split_to(frame::HEAD_LEN + head.len).freeze())))
}

fn flow_control_error(what: &'static str) -> ConnError {
    ConnError::Frame(FrameError { reason: Reason::FLOW_CONTROL_ERROR, stream: None, what })
}

impl Core {
    pub(super) fn new(
        stream_window: u32,
        connection_window: u32,
        max_send_buffer: usize,
        indexing: hpack::Indexing,
    ) -> Core {
        Core {
            out: BytesMut::with_capacity(4096),
            encoder: hpack::Encoder::new(indexing),
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
            empty_data: 0,
            client: false,
            peer_max_streams: u32::MAX,
            next_id: 1,
            goaway: None,
            open_blocked: Vec::new(),
        }
    }

    /// A DATA frame of stream `id` (`flow`: its size for flow control, padding included). A stream's error is
    /// returned for the caller to reset it with.
    pub(super) fn recv_data(
        &mut self,
        id: u32,
        data: Bytes,
        end: bool,
        flow: u32,
    ) -> Result<Option<Reason>, ConnError> {
        if i64::from(flow) > self.recv_window {
            return Err(flow_control_error("DATA beyond the connection's window"));
        }
        self.recv_window -= i64::from(flow);
        if data.is_empty() && !end {
            self.empty_data += 1;
            if self.empty_data > MAX_EMPTY_DATA {
                return Err(ConnError::Calm("empty DATA frames"));
            }
        } else {
            self.empty_data = 0;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream already forgotten (reset, or done): its data only goes back to the connection's window.
            self.release_connection(flow);
            return Ok(None);
        };
        if s.recv != Recv::Open {
            let reset = s.reset.is_some();
            self.release_connection(flow);
            return Ok((!reset).then_some(Reason::STREAM_CLOSED));
        }
        if !s.responded {
            // DATA before the peer's head (a client's stream before its response's): malformed (§8.1).
            self.release_connection(flow);
            return Ok(Some(Reason::PROTOCOL_ERROR));
        }
        if i64::from(flow) > s.recv_window {
            self.release_connection(flow);
            return Ok(Some(Reason::FLOW_CONTROL_ERROR));
        }
        s.recv_window -= i64::from(flow);
        s.received += data.len() as u64;
        let too_long = s.content_length.is_some_and(|n| s.received > n);
        let too_short = end && s.content_length.is_some_and(|n| s.received != n);
        if too_long || too_short {
            self.release_connection(flow);
            return Ok(Some(Reason::PROTOCOL_ERROR));
        }
        let padding = flow - data.len() as u32;
        let n = data.len() as u32;
        if s.body_gone {
            self.release_connection(flow);
        } else {
            s.held += n;
            if !data.is_empty() {
                s.data.push_back(data);
            }
            self.credit(id, padding);
        }
        let s = self.streams.get_mut(&id).expect("looked up above");
        if end {
            s.recv = Recv::Ended;
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        if end {
            self.settle(id);
        }
        Ok(None)
    }

    /// A WINDOW_UPDATE; a stream's error is returned for the caller to reset it with.
    pub(super) fn recv_window_update(&mut self, stream: u32, increment: u32) -> Result<Option<Reason>, ConnError> {
        if stream == 0 {
            self.send_window += i64::from(increment);
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(flow_control_error("the connection's window past 2^31-1"));
            }
            self.wake_window_blocked();
            return Ok(None);
        }
        let Some(s) = self.streams.get_mut(&stream) else { return Ok(None) };
        s.send_window += i64::from(increment);
        if s.send_window > i64::from(frame::MAX_WINDOW) {
            return Ok(Some(Reason::FLOW_CONTROL_ERROR));
        }
        if let Some(w) = s.send_waker.take() {
            w.wake();
        }
        Ok(None)
    }

    /// The peer's SETTINGS, as far as both sides heed them: the initial window (every stream's send window
    /// moves by the change), the largest frame, the streams it takes at once.
    pub(super) fn recv_settings(&mut self, settings: &Settings) -> Result<(), ConnError> {
        if let Some(window) = settings.initial_window_size {
            let delta = i64::from(window) - i64::from(self.peer_initial_window);
            self.peer_initial_window = window;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(flow_control_error("SETTINGS_INITIAL_WINDOW_SIZE took a stream's window past 2^31-1"));
                }
                if delta > 0 {
                    s.wake();
                }
            }
        }
        if let Some(size) = settings.max_frame_size {
            self.peer_max_frame_size = size;
        }
        if let Some(size) = settings.header_table_size {
            self.encoder.set_peer_limit(size as usize);
        }
        if let Some(n) = settings.max_concurrent_streams {
            self.peer_max_streams = n;
            self.wake_open_blocked();
        }
        Ok(())
    }

    /// A header block on stream `id` after its head: trailers, which must end the stream. A stream's error is
    /// returned for the caller to reset it with.
    pub(super) fn recv_trailers(
        &mut self,
        id: u32,
        end_stream: bool,
        trailers: Result<HeaderMap, Refused>,
    ) -> Option<Reason> {
        let s = self.streams.get_mut(&id)?;
        if s.recv != Recv::Open {
            return s.reset.is_none().then_some(Reason::STREAM_CLOSED);
        }
        let Ok(trailers) = trailers else { return Some(Reason::PROTOCOL_ERROR) };
        let too_short = s.content_length.is_some_and(|n| s.received != n);
        if !end_stream || too_short {
            return Some(Reason::PROTOCOL_ERROR);
        }
        s.trailers = Some(trailers);
        s.recv = Recv::Ended;
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        self.settle(id);
        None
    }

    /// The peer reset stream `id`. True when it was reset before this side's half ended (a server counts
    /// those: rapid reset).
    pub(super) fn recv_reset(&mut self, id: u32, reason: Reason) -> bool {
        let Some(s) = self.streams.get_mut(&id) else { return false };
        if s.reset.is_some() {
            return false;
        }
        let premature = s.send != Send::Ended;
        s.reset = Some(reason);
        if s.recv == Recv::Open {
            s.recv = Recv::Failed(reason);
        }
        s.wake();
        self.settle(id);
        premature
    }

    /// The connection ended: every handle fails from now on.
    pub(super) fn close(&mut self) {
        self.closed = true;
        for s in self.streams.values_mut() {
            s.wake();
        }
        self.wake_window_blocked();
        self.wake_room_blocked();
        self.wake_open_blocked();
    }

    /// The bytes to write next, if any: the caller writes them before it asks again, and says how many are
    /// left unwritten with [`Self::set_unflushed`].
    pub(super) fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let out = self.out.split().freeze();
        self.unflushed += out.len();
        Some(out)
    }

    /// Of the bytes taken, `n` are still to write. Streams waiting for room are woken when there is some.
    pub(super) fn set_unflushed(&mut self, n: usize) {
        self.unflushed = n;
        if self.has_room() {
            self.wake_room_blocked();
        }
    }

    /// Whether to read the peer's frames now: not while the frames to write pile up.
    pub(super) fn wants_read(&self) -> bool {
        self.out.len() + self.unflushed < self.max_send_buffer * READ_PAUSE_FACTOR
    }

    /// The connection's task, to wake when streams queue frames while it is not polling them.
    pub(super) fn set_waker(&mut self, waker: &Waker) {
        if !self.conn_waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.conn_waker = Some(waker.clone());
        }
    }

    pub(super) fn wake_open_blocked(&mut self) {
        for w in self.open_blocked.drain(..) {
            w.wake();
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
        // Half the connection's window; on a client, a stream's whole window if less: with streams holding data
        // no one reads, the rest of the window must still come back (with upstream::h2's 8 MiB and 256 KiB, half
        // would wait on 4 MiB given back, which 17 stalled streams would make impossible).
        let half = self.connection_window.max(frame::DEFAULT_WINDOW) / 2;
        let threshold = if self.client { half.min(self.stream_window.max(1)) } else { half };
        if self.recv_unacked >= threshold {
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
        // A response that has ended while the client still sends a body no one reads: stop the client (§8.1). A
        // client whose response body is dropped before its end cancels the stream.
        if s.reset.is_none() && s.send == Send::Ended && s.recv == Recv::Open && s.body_gone {
            let reason = if self.client { Reason::CANCEL } else { Reason::NO_ERROR };
            frame::put_rst_stream(&mut self.out, id, reason);
            s.reset = Some(reason);
            s.recv = Recv::Failed(reason);
            self.wake_conn();
        }
        let Some(s) = self.streams.get_mut(&id) else { return };
        if !s.is_over() {
            return;
        }
        let was_active = std::mem::replace(&mut s.active, false);
        let mut held = 0;
        // A reset drops what the peer sent and no one read, but not a client's whole response: a server may reset
        // a stream once it has answered, to stop the request body it does not want (RFC 9113 §8.1), and the
        // client must not discard the response for it.
        let whole_response = self.client && s.recv == Recv::Ended;
        if s.body_gone || (s.reset.is_some() && !whole_response) {
            held = std::mem::take(&mut s.held);
            s.data.clear();
        }
        let forget = s.body_gone && s.respond_gone;
        if was_active {
            self.active -= 1;
            if !self.open_blocked.is_empty() {
                self.wake_open_blocked();
            }
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
