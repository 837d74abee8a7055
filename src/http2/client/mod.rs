//! The client side of an HTTP/2 connection (RFC 9113), without I/O, for reveille's HTTP/2 backends:
//! [`Handle::poll_open`] writes a request's head on a new stream and hands back the response to wait for
//! ([`ResponseFuture`]) and the request body's sending half; [`Connection::recv`] takes the bytes the backend
//! sent; [`Connection::output`] writes what it queued. The socket, the timers and the connection's task
//! are the caller's (`upstream::h2`).
//!
//! What it keeps from the `h2` crate's client, which it replaces: no server push (`SETTINGS_ENABLE_PUSH` 0), the
//! peer's `SETTINGS_MAX_CONCURRENT_STREAMS` respected (a request waits for a stream to end), streams above a
//! GOAWAY's last stream id and streams the peer refused failed as not processed (`REFUSED_STREAM`, RFC 9113
//! §8.7) so their requests may go again, 1xx heads skipped, a response head judged as a request's is on the
//! server side (`fields`), its `content-length` held to the body.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use parking_lot::Mutex;

pub(crate) use super::core::ConnError;
use super::core::{next_frame, protocol_error, Core, Recv, Send, Shared, StreamCore, COPY_BELOW};
use super::fields::{is_connection_specific_name, Fields, Judged};
use super::frame::{self, Frame, FrameError, Head, Reason, Settings};
use super::hpack::{self, Decoder};
use super::output::Output;
pub(crate) use super::stream::StreamError;
use super::stream::{RecvBody, SendHalf};

/// A response's body, as the backend sends it.
pub(crate) type ResponseBody = RecvBody;
/// A request's body, sent as the backend's windows allow.
pub(crate) type RequestSender = SendHalf;

/// The highest stream id a client may open (§5.1.1).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// A client connection's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// The flow-control window given to each stream, and to the connection.
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) max_header_list_size: u32,
    /// The frames waiting to be written past which streams wait to send data.
    pub(crate) max_send_buffer: usize,
    /// Streams the peer is taken to allow at once until its SETTINGS say.
    pub(crate) initial_max_streams: u32,
}

/// One client connection's protocol state, owned by its task.
pub(crate) struct Connection {
    shared: Shared,
    /// What the connection's task writes.
    pub(crate) output: Output,
    max_header_list_size: usize,
    decoder: Decoder<Judged>,
    /// A header block being put together until its END_HEADERS, and its HEADERS frame's stream and END_STREAM.
    block: BytesMut,
    continuing: Option<(u32, bool)>,
    /// The server's first frame, which must be SETTINGS (§3.4), has come.
    settings_seen: bool,
    /// The payload of the keep-alive PING out, and whether its answer came.
    ping: Option<[u8; 8]>,
    pong: bool,
}

/// What the requests' tasks open streams with.
#[derive(Clone)]
pub(crate) struct Handle {
    shared: Shared,
}

impl Connection {
    /// A connection whose first bytes (the preface, SETTINGS, the connection's window opened) are queued, and
    /// its handle.
    pub(crate) fn new(config: Config) -> (Connection, Handle) {
        let mut core = Core::new(
            config.stream_window,
            config.connection_window,
            config.max_send_buffer,
            hpack::Indexing::Requests,
        );
        core.client = true;
        core.peer_max_streams = config.initial_max_streams;
        core.out.extend_from_slice(frame::PREFACE);
        let settings = Settings {
            enable_push: Some(false),
            initial_window_size: Some(config.stream_window),
            max_header_list_size: Some(config.max_header_list_size),
            ..Settings::default()
        };
        frame::put_settings(&mut core.out, &settings);
        if config.connection_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut core.out, 0, config.connection_window - frame::DEFAULT_WINDOW);
        }
        let shared = Arc::new(Mutex::new(core));
        let conn = Connection {
            output: Output::new(shared.clone()),
            shared: shared.clone(),
            max_header_list_size: config.max_header_list_size as usize,
            decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            block: BytesMut::new(),
            continuing: None,
            settings_seen: false,
            ping: None,
            pong: false,
        };
        (conn, Handle { shared })
    }

    /// Takes the complete frames at the front of `buf`. Bytes of an incomplete frame stay in `buf`. Says, as
    /// the frames left the connection, what a pool needs: the peer's stream limit, and whether it takes new
    /// streams. An error has its GOAWAY queued: write the output, then close.
    pub(crate) fn recv(&mut self, buf: &mut BytesMut) -> Result<Received, ConnError> {
        let shared = self.shared.clone();
        let mut core = shared.lock();
        let result = self.frames(&mut core, buf);
        if let Err(e) = &result {
            // No new stream; those in flight may have been processed, and fail as the connection closes.
            frame::put_goaway(&mut core.out, 0, e.reason(), e.to_string().as_bytes());
            core.goaway.get_or_insert(0);
        }
        result.map(|()| Received { max_streams: core.peer_max_streams, going_away: is_going_away(&core) })
    }

    fn frames(&mut self, core: &mut Core, buf: &mut BytesMut) -> Result<(), ConnError> {
        while let Some((head, bytes)) = next_frame(buf)? {
            self.frame(core, head, bytes)?;
        }
        Ok(())
    }

    fn frame(&mut self, core: &mut Core, head: Head, bytes: Bytes) -> Result<(), ConnError> {
        let payload = &bytes[frame::HEAD_LEN..];
        if !self.settings_seen {
            if head.kind != frame::SETTINGS || head.flags & frame::ACK != 0 {
                return Err(protocol_error("the server's first frame is not SETTINGS"));
            }
            self.settings_seen = true;
        }
        if let Some((id, _)) = self.continuing {
            if head.kind != frame::CONTINUATION || head.stream != id {
                return Err(protocol_error("a frame other than CONTINUATION inside a header block"));
            }
        }
        let opened = |id: u32| id % 2 == 1 && id < core.next_id;
        let parsed = match frame::parse(head, payload) {
            Ok(f) => f,
            // On a stream never opened, an error of the stream would be a RST_STREAM on an idle one (§5.1).
            Err(FrameError { stream: Some(id), reason, .. }) if opened(id) => {
                stream_error(core, id, reason);
                return Ok(());
            }
            Err(FrameError { stream: Some(_), what, .. }) => return Err(protocol_error(what)),
            Err(e) => return Err(ConnError::Frame(e)),
        };
        match parsed {
            Frame::Data { stream, data, end_stream, flow } => {
                if !opened(stream) {
                    return Err(protocol_error("DATA on a stream this client never opened"));
                }
                let data = if data.len() < COPY_BELOW { Bytes::copy_from_slice(data) } else { bytes.slice_ref(data) };
                if let Some(reason) = core.recv_data(stream, data, end_stream, flow)? {
                    stream_error(core, stream, reason);
                }
            }
            Frame::Headers { stream, block, end_stream, end_headers, .. } => {
                if !opened(stream) {
                    return Err(protocol_error("HEADERS on a stream this client never opened"));
                }
                self.block.clear();
                self.block.extend_from_slice(block);
                self.continuing = Some((stream, end_stream));
                if end_headers {
                    self.headers(core)?;
                }
            }
            Frame::Continuation { block, end_headers, .. } => {
                if self.continuing.is_none() {
                    return Err(protocol_error("CONTINUATION without HEADERS"));
                }
                let limit = self.max_header_list_size.saturating_mul(2).saturating_add(1024);
                if self.block.len() + block.len() > limit {
                    return Err(ConnError::Calm("a header block larger than twice the header list size allowed"));
                }
                self.block.extend_from_slice(block);
                if end_headers {
                    self.headers(core)?;
                }
            }
            Frame::Priority { .. } | Frame::Unknown => {}
            Frame::RstStream { stream, reason } => {
                if !opened(stream) {
                    return Err(protocol_error("RST_STREAM on a stream this client never opened"));
                }
                core.recv_reset(stream, reason);
            }
            Frame::Settings { ack: false, settings } => {
                core.recv_settings(&settings)?;
                frame::put_settings_ack(&mut core.out);
            }
            Frame::Settings { ack: true, .. } => {}
            Frame::PushPromise { .. } => return Err(protocol_error("PUSH_PROMISE, which this client turned off")),
            Frame::Ping { ack: false, payload } => frame::put_ping(&mut core.out, true, payload),
            Frame::Ping { ack: true, payload } => {
                if self.ping == Some(payload) {
                    self.ping = None;
                    self.pong = true;
                }
            }
            Frame::GoAway { last_stream, .. } => {
                let last = core.goaway.map_or(last_stream, |l| l.min(last_stream));
                core.goaway = Some(last);
                refuse_above(core, last);
            }
            Frame::WindowUpdate { stream, increment } => {
                if stream != 0 && !opened(stream) {
                    return Err(protocol_error("WINDOW_UPDATE on a stream this client never opened"));
                }
                if let Some(reason) = core.recv_window_update(stream, increment)? {
                    stream_error(core, stream, reason);
                }
            }
        }
        Ok(())
    }

    /// A complete header block: a stream's response head (after any 1xx), or its trailers.
    fn headers(&mut self, core: &mut Core) -> Result<(), ConnError> {
        let (id, end_stream) = self.continuing.take().expect("a header block in progress");
        // Decoded whatever becomes of it: the decoder's table must follow the server's.
        let mut fields = Fields::new(self.max_header_list_size);
        self.decoder.decode(&self.block, |f| fields.push(f)).map_err(ConnError::Compression)?;
        // A stream already over and forgotten: what it sends is ignored.
        let Some(s) = core.streams.get_mut(&id) else { return Ok(()) };
        if s.responded {
            if let Some(reason) = core.recv_trailers(id, end_stream, fields.into_trailers()) {
                stream_error(core, id, reason);
            }
            return Ok(());
        }
        if s.recv != Recv::Open {
            if s.reset.is_none() {
                stream_error(core, id, Reason::STREAM_CLOSED);
            }
            return Ok(());
        }
        let content_length = fields.content_length();
        let Ok(head) = fields.into_response() else {
            stream_error(core, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        if head.status.is_informational() {
            // 100 Continue, 103 Early Hints: the final head follows. 101 has no place in HTTP/2 (§8.6).
            if end_stream || head.status == StatusCode::SWITCHING_PROTOCOLS {
                stream_error(core, id, Reason::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        let Ok(len) = content_length else {
            stream_error(core, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        let bodiless = s.head_request || matches!(head.status.as_u16(), 204 | 304);
        let len = if bodiless { None } else { len };
        if end_stream && len.is_some_and(|n| n != 0) {
            stream_error(core, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        s.content_length = len;
        s.responded = true;
        s.head = Some(head);
        if end_stream {
            s.recv = Recv::Ended;
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        if end_stream {
            core.settle(id);
        }
        Ok(())
    }

    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` as last read (what the first SETTINGS assumed until then).
    #[cfg(test)]
    pub(crate) fn max_streams(&self) -> u32 {
        self.shared.lock().peer_max_streams
    }

    /// Streams open now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> u32 {
        self.shared.lock().active
    }

    /// Going away, with no stream left and nothing left to write: the connection may close.
    pub(crate) fn is_done(&self) -> bool {
        let core = self.shared.lock();
        is_going_away(&core) && core.active == 0 && core.out.is_empty()
    }

    /// Takes no new stream: a GOAWAY came (or was sent), or the stream ids ran out.
    #[cfg(test)]
    pub(crate) fn is_going_away(&self) -> bool {
        is_going_away(&self.shared.lock())
    }
}

impl super::keep_alive::Pings for Connection {
    fn ping(&mut self, payload: [u8; 8]) {
        self.ping = Some(payload);
        self.pong = false;
        frame::put_ping(&mut self.shared.lock().out, false, payload);
    }

    fn take_pong(&mut self) -> bool {
        std::mem::take(&mut self.pong)
    }
}

impl Drop for Connection {
    /// The streams' handles that outlive the connection fail from now on.
    fn drop(&mut self) {
        self.shared.lock().close();
    }
}

/// What a batch of the peer's frames left: the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, and whether the
/// connection takes no new stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) max_streams: u32,
    pub(crate) going_away: bool,
}

/// Takes no new stream: a GOAWAY came (or was sent), or the stream ids ran out.
fn is_going_away(core: &Core) -> bool {
    core.goaway.is_some() || core.next_id > MAX_STREAM_ID
}

/// Streams above `last` were not processed (a GOAWAY, §6.8): they fail as refused, so their requests may go again.
fn refuse_above(core: &mut Core, last: u32) {
    let ids: Vec<u32> = core.streams.keys().copied().filter(|&id| id > last).collect();
    for id in ids {
        let Some(s) = core.streams.get_mut(&id) else { continue };
        // A stream already answered was processed, whatever the GOAWAY says: it is not refused.
        if s.reset.is_none() && !s.responded {
            s.reset = Some(Reason::REFUSED_STREAM);
            if s.recv == Recv::Open {
                s.recv = Recv::Failed(Reason::REFUSED_STREAM);
            }
            s.wake();
            core.settle(id);
        }
    }
    core.wake_open_blocked();
}

/// An error of one stream: it is reset.
fn stream_error(core: &mut Core, id: u32, reason: Reason) {
    if core.streams.contains_key(&id) {
        core.reset(id, reason);
    } else {
        frame::put_rst_stream(&mut core.out, id, reason);
    }
}

impl Handle {
    /// Opens a stream for a request with `head` (its URI absolute: scheme and authority), `end` when it has no
    /// body: ready once the peer's stream limit lets it open, with the response to wait for and, unless `end`,
    /// the body's sending half. A connection that takes no new stream fails it as refused (not processed).
    pub(crate) fn poll_open(
        &self,
        cx: &mut Context<'_>,
        head: &(impl RequestHead + ?Sized),
        end: bool,
    ) -> Poll<Result<(ResponseFuture, Option<RequestSender>), StreamError>> {
        let mut core = self.shared.lock();
        let core = &mut *core;
        if core.closed {
            return Poll::Ready(Err(StreamError::Closed));
        }
        if is_going_away(core) {
            return Poll::Ready(Err(StreamError::Reset(Reason::REFUSED_STREAM)));
        }
        if core.active >= core.peer_max_streams {
            if !core.open_blocked.iter().any(|w| w.will_wake(cx.waker())) {
                core.open_blocked.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let id = core.next_id;
        core.next_id += 2;
        let max = core.peer_max_frame_size;
        let start = frame::begin_headers(&mut core.out);
        core.encoder.begin(&mut core.out);
        let (out, encoder) = (&mut core.out, &mut core.encoder);
        head.fields(&mut |name, value, sensitive| {
            if !name.starts_with(b":") && is_forbidden(name, value) {
                return;
            }
            encoder.put_field(out, name, value, sensitive);
        });
        frame::finish_headers(&mut core.out, start, id, end, max);
        let mut stream = StreamCore::new(Recv::Open, core.stream_window, core.peer_initial_window, None);
        stream.send = if end { Send::Ended } else { Send::Open };
        stream.respond_gone = end;
        stream.head_request = *head.method() == Method::HEAD;
        core.open(id, stream);
        core.wake_conn();
        let body = RecvBody::new(self.shared.clone(), id, None, false);
        let response = ResponseFuture { shared: self.shared.clone(), id, body: Some(body) };
        let sender = (!end).then(|| SendHalf::new(self.shared.clone(), id));
        Poll::Ready(Ok((response, sender)))
    }
}

/// Takes one field of a request head: name, value, whether it is sensitive (never indexed).
pub(crate) type PutField<'a> = dyn FnMut(&[u8], &[u8], bool) + 'a;

/// A request's head, as a stream is opened with it: its method, and its fields in the order HEADERS carries them.
pub(crate) trait RequestHead {
    fn method(&self) -> &Method;

    /// Calls `put` with each field — name, value, whether it is sensitive (never indexed) — the pseudo-header
    /// fields first (`:method`, `:scheme`, `:authority`, `:path`). Fields HTTP/2 forbids may be among the others:
    /// they are left out (connection-specific ones, `host`, whose value `:authority` carries, `te` other than
    /// `trailers`).
    fn fields(&self, put: &mut PutField<'_>);
}

/// A head made of `http`'s parts, its URI absolute (scheme and authority).
impl RequestHead for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn fields(&self, put: &mut PutField<'_>) {
        let uri = &self.uri;
        put(b":method", self.method.as_str().as_bytes(), false);
        put(b":scheme", uri.scheme_str().unwrap_or("http").as_bytes(), false);
        if let Some(authority) = uri.authority() {
            put(b":authority", authority.as_str().as_bytes(), false);
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        put(b":path", if path.is_empty() { b"/" } else { path.as_bytes() }, false);
        for (name, value) in &self.headers {
            put(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive());
        }
    }
}

/// A regular field a request over HTTP/2 does not carry.
fn is_forbidden(name: &[u8], value: &[u8]) -> bool {
    match name {
        b"host" => true,
        b"te" => value != b"trailers",
        _ => is_connection_specific_name(name),
    }
}

/// A stream's response, once its head comes.
pub(crate) struct ResponseFuture {
    shared: Shared,
    id: u32,
    /// Handed over with the head; until then, held so that the stream is not forgotten under it.
    body: Option<RecvBody>,
}

impl ResponseFuture {
    /// Ready with the response (its body the stream's receiving half) once its head came, or with why it will
    /// not come: the stream reset (`REFUSED_STREAM`: not processed), the connection gone.
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<ResponseBody>, StreamError>> {
        let mut core = self.shared.lock();
        let closed = core.closed;
        let Some(s) = core.streams.get_mut(&self.id) else { return Poll::Ready(Err(StreamError::Closed)) };
        if let Some(head) = s.head.take() {
            let done = s.recv == Recv::Ended && s.data.is_empty() && s.trailers.is_none();
            let len = s.content_length;
            drop(core);
            let mut body = self.body.take().expect("the head is taken once");
            body.set_head(len, done);
            return Poll::Ready(Ok(http::Response::from_parts(head, body)));
        }
        if let Some(reason) = s.reset {
            return Poll::Ready(Err(StreamError::Reset(reason)));
        }
        if closed {
            return Poll::Ready(Err(StreamError::Closed));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl std::future::Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, StreamError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_response(cx)
    }
}

#[cfg(test)]
mod tests;
