//! The server side of an HTTP/2 connection (RFC 9113), without I/O: [`Connection::recv`] takes the bytes the
//! client sent and hands over each request that opens, with its two handles ([`RequestBody`], [`Respond`]);
//! [`Connection::output`] writes what it queued. The socket, the timers and the tasks are the caller's
//! (`proxy::conn::h2`).
//!
//! What it keeps from the `h2` crate's server, which it replaces: the settings and windows hyper's server had,
//! the same requests refused the same way (`request.rs`), and the protections — a cap on streams reset by the
//! client before their response (rapid reset, CVE-2023-44487), on streams reset for the client's errors, on a
//! header block's size across CONTINUATION frames (CONTINUATION flood), on empty DATA frames; and no reading
//! while the frames to write pile up (SETTINGS and PING floods answer into a bounded buffer).

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use parking_lot::Mutex;

pub(crate) use super::core::ConnError;
use super::core::{next_frame, protocol_error, Core, Recv, Shared, StreamCore, COPY_BELOW};
use super::fields::{Fields, Judged, Refused};
use super::frame::{self, Frame, FrameError, Head, Reason, Settings};
use super::hpack::{self, Decoder};
use super::output::Output;
pub(crate) use super::stream::StreamError;

/// A request's body, as the client sends it.
pub(crate) type RequestBody = super::stream::RecvBody;
/// A request's response: its head, then its body as the client's windows allow.
pub(crate) type Respond = super::stream::SendHalf;

/// A connection's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) max_concurrent_streams: u32,
    /// The flow-control window given to each stream, and to the connection.
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) max_header_list_size: u32,
    /// The frames waiting to be written past which streams wait to send data.
    pub(crate) max_send_buffer: usize,
    /// Streams this side may reset for the client's errors before it closes the connection.
    pub(crate) max_local_resets: u32,
}

/// Streams the client may reset before their response has ended, beyond those whose response ended since.
const MAX_PREMATURE_RESETS: u32 = 100;

/// One server connection's protocol state.
pub(crate) struct Connection {
    shared: Shared,
    /// What the connection's task writes.
    pub(crate) output: Output,
    config: Config,
    decoder: Decoder<Judged>,
    preface: bool,
    /// A header block being put together until its END_HEADERS, and its HEADERS frame's stream, END_STREAM and
    /// whether its priority made the stream depend on itself.
    block: BytesMut,
    continuing: Option<(u32, bool, bool)>,
    /// The client's first frame, which must be SETTINGS (§3.4), has come.
    settings_seen: bool,
    /// The highest stream the client opened.
    last_id: u32,
    /// GOAWAY sent or received: no new stream.
    going_away: bool,
    local_resets: u32,
    /// The payload of the keep-alive PING out, and whether its answer came.
    ping: Option<[u8; 8]>,
    pong: bool,
}

impl Connection {
    /// A connection whose first frames (SETTINGS, and the connection's window opened) are queued.
    pub(crate) fn new(config: Config) -> Connection {
        let mut core = Core::new(
            config.stream_window,
            config.connection_window,
            config.max_send_buffer,
            hpack::Indexing::Responses,
        );
        let settings = Settings {
            max_concurrent_streams: Some(config.max_concurrent_streams),
            initial_window_size: Some(config.stream_window),
            max_header_list_size: Some(config.max_header_list_size),
            ..Settings::default()
        };
        frame::put_settings(&mut core.out, &settings);
        if config.connection_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut core.out, 0, config.connection_window - frame::DEFAULT_WINDOW);
        }
        let shared = Arc::new(Mutex::new(core));
        Connection {
            output: Output::new(shared.clone()),
            shared,
            config,
            decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            preface: false,
            block: BytesMut::new(),
            continuing: None,
            settings_seen: false,
            last_id: 0,
            going_away: false,
            local_resets: 0,
            ping: None,
            pong: false,
        }
    }

    /// Takes the complete frames at the front of `buf`, handing each request that opens to `accept`. Bytes of
    /// an incomplete frame stay in `buf`. An error has its GOAWAY queued: write the output
    /// gives, then close.
    pub(crate) fn recv(
        &mut self,
        buf: &mut BytesMut,
        accept: &mut dyn FnMut(Request<RequestBody>, Respond),
    ) -> Result<(), ConnError> {
        let result = self.frames(buf, accept);
        if let Err(e) = &result {
            let mut core = self.shared.lock();
            frame::put_goaway(&mut core.out, self.last_id, e.reason(), e.to_string().as_bytes());
            self.going_away = true;
        }
        result
    }

    fn frames(
        &mut self,
        buf: &mut BytesMut,
        accept: &mut dyn FnMut(Request<RequestBody>, Respond),
    ) -> Result<(), ConnError> {
        if !self.preface {
            let n = buf.len().min(frame::PREFACE.len());
            if buf[..n] != frame::PREFACE[..n] {
                return Err(ConnError::Preface);
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            buf.advance(n);
            self.preface = true;
        }
        let shared = self.shared.clone();
        let mut core = shared.lock();
        while let Some((head, bytes)) = next_frame(buf)? {
            self.frame(&mut core, head, bytes, accept)?;
        }
        Ok(())
    }

    fn frame(
        &mut self,
        core: &mut Core,
        head: Head,
        bytes: Bytes,
        accept: &mut dyn FnMut(Request<RequestBody>, Respond),
    ) -> Result<(), ConnError> {
        let payload = &bytes[frame::HEAD_LEN..];
        if !self.settings_seen {
            if head.kind != frame::SETTINGS || head.flags & frame::ACK != 0 {
                return Err(protocol_error("the client's first frame is not SETTINGS"));
            }
            self.settings_seen = true;
        }
        if let Some((id, _, _)) = self.continuing {
            if head.kind != frame::CONTINUATION || head.stream != id {
                return Err(protocol_error("a frame other than CONTINUATION inside a header block"));
            }
        }
        let parsed = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(FrameError { stream: Some(id), reason, .. }) => {
                self.stream_error(core, id, reason)?;
                return Ok(());
            }
            Err(e) => return Err(ConnError::Frame(e)),
        };
        match parsed {
            Frame::Data { stream, data, end_stream, flow } => {
                let data = if data.len() < COPY_BELOW { Bytes::copy_from_slice(data) } else { bytes.slice_ref(data) };
                self.data(core, stream, data, end_stream, flow)?;
            }
            Frame::Headers { stream, block, end_stream, end_headers, self_dependent } => {
                if stream % 2 == 0 {
                    return Err(protocol_error("HEADERS on a stream a client may not open"));
                }
                self.block.clear();
                self.block.extend_from_slice(block);
                self.continuing = Some((stream, end_stream, self_dependent));
                if end_headers {
                    self.headers(core, accept)?;
                }
            }
            Frame::Continuation { stream, block, end_headers } => {
                let Some((id, _, _)) = self.continuing else {
                    return Err(protocol_error("CONTINUATION without HEADERS"));
                };
                debug_assert_eq!(id, stream);
                // A header block may not grow without bound (CONTINUATION flood): twice the header list
                // size allowed is more than any compressed block of an acceptable list needs.
                let limit = (self.config.max_header_list_size as usize).saturating_mul(2).saturating_add(1024);
                if self.block.len() + block.len() > limit {
                    return Err(ConnError::Calm("a header block larger than twice the header list size allowed"));
                }
                self.block.extend_from_slice(block);
                if end_headers {
                    self.headers(core, accept)?;
                }
            }
            Frame::Priority { .. } | Frame::Unknown => {}
            Frame::RstStream { stream, reason } => {
                if stream > self.last_id {
                    return Err(protocol_error("RST_STREAM on a stream that was never opened"));
                }
                if core.recv_reset(stream, reason) {
                    core.premature_resets += 1;
                    if core.premature_resets > MAX_PREMATURE_RESETS {
                        return Err(ConnError::Calm("streams reset as fast as they were opened"));
                    }
                }
            }
            Frame::Settings { ack: false, settings } => {
                // The client's stream limit is not the server's to heed.
                core.recv_settings(&Settings { max_concurrent_streams: None, ..settings })?;
                frame::put_settings_ack(&mut core.out);
            }
            Frame::Settings { ack: true, .. } => {}
            Frame::PushPromise { .. } => return Err(protocol_error("PUSH_PROMISE from a client")),
            Frame::Ping { ack: false, payload } => frame::put_ping(&mut core.out, true, payload),
            Frame::Ping { ack: true, payload } => {
                if self.ping == Some(payload) {
                    self.ping = None;
                    self.pong = true;
                }
            }
            Frame::GoAway { .. } => self.going_away = true,
            Frame::WindowUpdate { stream, increment } => {
                if stream > self.last_id {
                    return Err(protocol_error("WINDOW_UPDATE on a stream that was never opened"));
                }
                if let Some(reason) = core.recv_window_update(stream, increment)? {
                    self.stream_error(core, stream, reason)?;
                }
            }
        }
        Ok(())
    }

    fn data(&mut self, core: &mut Core, id: u32, data: Bytes, end: bool, flow: u32) -> Result<(), ConnError> {
        if id > self.last_id {
            return Err(protocol_error("DATA on a stream that was never opened"));
        }
        if let Some(reason) = core.recv_data(id, data, end, flow)? {
            self.stream_error(core, id, reason)?;
        }
        Ok(())
    }

    /// A complete header block: a new request, or a stream's trailers.
    fn headers(
        &mut self,
        core: &mut Core,
        accept: &mut dyn FnMut(Request<RequestBody>, Respond),
    ) -> Result<(), ConnError> {
        let (id, end_stream, self_dependent) = self.continuing.take().expect("a header block in progress");
        // Decoded whatever becomes of it: the decoder's table must follow the client's.
        let mut fields = Fields::new(self.config.max_header_list_size as usize);
        self.decoder.decode(&self.block, |f| fields.push(f)).map_err(ConnError::Compression)?;
        if self_dependent {
            self.last_id = self.last_id.max(id);
            return self.stream_error(core, id, Reason::PROTOCOL_ERROR);
        }
        if core.streams.contains_key(&id) {
            match core.recv_trailers(id, end_stream, fields.into_trailers()) {
                Some(reason) => self.stream_error(core, id, reason),
                None => Ok(()),
            }
        } else if id <= self.last_id {
            // A stream already over: what it sends is ignored.
            Ok(())
        } else {
            self.last_id = id;
            if self.going_away {
                frame::put_rst_stream(&mut core.out, id, Reason::REFUSED_STREAM);
                return Ok(());
            }
            if core.active >= self.config.max_concurrent_streams {
                frame::put_rst_stream(&mut core.out, id, Reason::REFUSED_STREAM);
                return Ok(());
            }
            let content_length = fields.content_length();
            let req = match fields.into_request() {
                Ok(req) => req,
                Err(Refused::TooLarge) => {
                    // As the h2 crate answers it: 431, then the rest of the request refused.
                    let start = frame::begin_headers(&mut core.out);
                    core.encoder.begin(&mut core.out);
                    hpack::put_status(&mut core.out, 431);
                    frame::finish_headers(&mut core.out, start, id, true, core.peer_max_frame_size);
                    if !end_stream {
                        frame::put_rst_stream(&mut core.out, id, Reason::REFUSED_STREAM);
                    }
                    return self.local_reset();
                }
                Err(Refused::Malformed(_)) => {
                    frame::put_rst_stream(&mut core.out, id, Reason::PROTOCOL_ERROR);
                    return self.local_reset();
                }
            };
            // Digits only, every field giving the same; and none but 0 on a request without a body.
            let content_length = match content_length {
                Ok(Some(n)) if end_stream && n != 0 => Err(()),
                other => other,
            };
            let Ok(content_length) = content_length else {
                frame::put_rst_stream(&mut core.out, id, Reason::PROTOCOL_ERROR);
                return self.local_reset();
            };
            let recv = if end_stream { Recv::Ended } else { Recv::Open };
            let mut stream = StreamCore::new(recv, self.config.stream_window, core.peer_initial_window, content_length);
            stream.responded = true;
            core.open(id, stream);
            let body = RequestBody::new(self.shared.clone(), id, content_length, end_stream);
            accept(req.map(|()| body), Respond::new(self.shared.clone(), id));
            Ok(())
        }
    }

    /// An error of one stream: it is reset; too many such resets end the connection.
    fn stream_error(&mut self, core: &mut Core, id: u32, reason: Reason) -> Result<(), ConnError> {
        if core.streams.contains_key(&id) {
            core.reset(id, reason);
        } else {
            frame::put_rst_stream(&mut core.out, id, reason);
        }
        self.local_reset()
    }

    fn local_reset(&mut self) -> Result<(), ConnError> {
        self.local_resets += 1;
        if self.local_resets > self.config.max_local_resets {
            return Err(ConnError::Calm("too many streams reset for the client's errors"));
        }
        Ok(())
    }

    pub(crate) fn polling(&self, polling: bool) {
        self.shared.lock().polling = polling;
    }

    /// Sends GOAWAY: streams open so far are served, no new one is.
    pub(crate) fn go_away(&mut self) {
        if self.going_away {
            return;
        }
        self.going_away = true;
        let mut core = self.shared.lock();
        frame::put_goaway(&mut core.out, self.last_id, Reason::NO_ERROR, b"");
    }

    pub(crate) fn is_going_away(&self) -> bool {
        self.going_away
    }
}

impl super::keep_alive::Pings for Connection {
    fn ping(&mut self, payload: [u8; 8]) {
        self.ping = Some(payload);
        self.pong = false;
        let mut core = self.shared.lock();
        frame::put_ping(&mut core.out, false, payload);
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

#[cfg(test)]
mod tests;
