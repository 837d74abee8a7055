//! HTTP/2 frames (RFC 9113 §4.1 and §6): the 9-octet head, each frame type's payload checked and parsed into a
//! [`Frame`] that borrows it, and the frames reveille sends, written into a `BytesMut`.
//!
//! Parsing checks what a frame can get wrong on its own: its stream (0 or not), its length for its type, its
//! padding, its settings' values. What depends on a connection's state (a frame size above the size advertised,
//! a CONTINUATION that follows nothing, a window overflow) is the connection's to check.

use bytes::{BufMut, BytesMut};

/// What a client sends first on every HTTP/2 connection (§3.4), before its SETTINGS.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of a frame's head.
pub(crate) const HEAD_LEN: usize = 9;
/// `SETTINGS_MAX_FRAME_SIZE`'s initial value, and the least a peer may set.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The most `SETTINGS_MAX_FRAME_SIZE` may be set to.
pub(crate) const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// A flow-control window's initial size, for streams and the connection (§6.9.2).
pub(crate) const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window (§6.9.1).
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

/// DATA and HEADERS: the last frame of the stream from this side.
pub(crate) const END_STREAM: u8 = 0x1;
/// SETTINGS and PING: an acknowledgement.
pub(crate) const ACK: u8 = 0x1;
/// HEADERS and CONTINUATION: the field block is complete.
pub(crate) const END_HEADERS: u8 = 0x4;
/// DATA and HEADERS: a pad length octet comes first, padding last.
pub(crate) const PADDED: u8 = 0x8;
/// HEADERS: a priority (dependency and weight, 5 octets) comes before the field block.
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// An error code (§7), in RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reason(pub(crate) u32);

impl Reason {
    pub(crate) const NO_ERROR: Reason = Reason(0x0);
    pub(crate) const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub(crate) const INTERNAL_ERROR: Reason = Reason(0x2);
    pub(crate) const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub(crate) const STREAM_CLOSED: Reason = Reason(0x5);
    pub(crate) const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub(crate) const REFUSED_STREAM: Reason = Reason(0x7);
    pub(crate) const CANCEL: Reason = Reason(0x8);
    pub(crate) const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub(crate) const ENHANCE_YOUR_CALM: Reason = Reason(0xb);

    fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

/// A frame's head (§4.1). The stream identifier's reserved bit is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
}

impl Head {
    pub(crate) fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    pub(crate) fn put(self, out: &mut BytesMut) {
        debug_assert!(self.len <= MAX_MAX_FRAME_SIZE as usize);
        let len = (self.len as u32).to_be_bytes();
        out.put_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.put_u32(self.stream);
    }
}

/// A frame that breaks RFC 9113: a connection error, or an error of `stream` alone when it is set (the stream is
/// reset, the connection goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {what}")]
pub(crate) struct FrameError {
    pub(crate) reason: Reason,
    pub(crate) stream: Option<u32>,
    pub(crate) what: &'static str,
}

fn connection_error(reason: Reason, what: &'static str) -> FrameError {
    FrameError { reason, stream: None, what }
}

/// A parsed frame, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// `flow` is what the frame counts against flow control: its whole payload, padding included (§6.1).
    Data {
        stream: u32,
        data: &'a [u8],
        end_stream: bool,
        flow: u32,
    },
    /// A HEADERS frame's field block fragment, its padding and priority taken off. `self_dependent`: its
    /// priority makes the stream depend on itself, an error of the stream (§5.3.1) that the connection raises
    /// once it has decoded the block (HPACK's state must follow every block).
    Headers {
        stream: u32,
        block: &'a [u8],
        end_stream: bool,
        end_headers: bool,
        self_dependent: bool,
    },
    Priority {
        stream: u32,
    },
    RstStream {
        stream: u32,
        reason: Reason,
    },
    Settings {
        ack: bool,
        settings: Settings,
    },
    /// Never valid from a client, nor to a client that disabled push: the connection refuses it whole.
    PushPromise {
        stream: u32,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: Reason,
        debug: &'a [u8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        block: &'a [u8],
        end_headers: bool,
    },
    /// A frame of a type this side does not know, to be ignored (§4.1, §5.5).
    Unknown,
}

/// SETTINGS parameters (§6.5.2); those a frame does not carry are `None`. Unknown identifiers are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) header_table_size: Option<u32>,
    pub(crate) enable_push: Option<bool>,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) initial_window_size: Option<u32>,
    pub(crate) max_frame_size: Option<u32>,
    pub(crate) max_header_list_size: Option<u32>,
    /// RFC 8441: extended CONNECT (WebSocket over HTTP/2).
    pub(crate) enable_connect_protocol: Option<bool>,
}

impl Settings {
    fn parse(mut payload: &[u8]) -> Result<Settings, FrameError> {
        let mut s = Settings::default();
        let flag = |value: u32, what| match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(connection_error(Reason::PROTOCOL_ERROR, what)),
        };
        while let Some((param, rest)) = payload.split_first_chunk::<6>() {
            payload = rest;
            let value = u32::from_be_bytes([param[2], param[3], param[4], param[5]]);
            match u16::from_be_bytes([param[0], param[1]]) {
                0x1 => s.header_table_size = Some(value),
                0x2 => s.enable_push = Some(flag(value, "SETTINGS_ENABLE_PUSH is neither 0 nor 1")?),
                0x3 => s.max_concurrent_streams = Some(value),
                0x4 if value > MAX_WINDOW => {
                    return Err(connection_error(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ))
                }
                0x4 => s.initial_window_size = Some(value),
                0x5 if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                    return Err(connection_error(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"))
                }
                0x5 => s.max_frame_size = Some(value),
                0x6 => s.max_header_list_size = Some(value),
                0x8 => {
                    s.enable_connect_protocol =
                        Some(flag(value, "SETTINGS_ENABLE_CONNECT_PROTOCOL is neither 0 nor 1")?)
                }
                _ => {}
            }
        }
        Ok(s)
    }

    fn params(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (0x1, self.header_table_size),
            (0x2, self.enable_push.map(u32::from)),
            (0x3, self.max_concurrent_streams),
            (0x4, self.initial_window_size),
            (0x5, self.max_frame_size),
            (0x6, self.max_header_list_size),
            (0x8, self.enable_connect_protocol.map(u32::from)),
        ]
        .into_iter()
        .filter_map(|(id, value)| Some((id, value?)))
    }
}

/// Parses the frame `head` announced, `payload` being its whole payload (`head.len` octets; the caller has
/// checked that length against the `SETTINGS_MAX_FRAME_SIZE` it advertised).
pub(crate) fn parse(head: Head, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    debug_assert_eq!(head.len, payload.len());
    let Head { kind, flags, stream, .. } = head;
    let on_stream = |what| if stream == 0 { Err(connection_error(Reason::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let on_connection = |what| if stream != 0 { Err(connection_error(Reason::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let frame = match kind {
        DATA => {
            on_stream("DATA on stream 0")?;
            Frame::Data {
                stream,
                data: unpad(flags, payload)?,
                end_stream: flags & END_STREAM != 0,
                flow: payload.len() as u32,
            }
        }
        HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut block = unpad(flags, payload)?;
            let mut self_dependent = false;
            if flags & PRIORITY_FLAG != 0 {
                let Some((priority, rest)) = block.split_first_chunk::<5>() else {
                    return Err(connection_error(Reason::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                };
                self_dependent = depends_on_itself(stream, priority).is_err();
                block = rest;
            }
            Frame::Headers {
                stream,
                block,
                end_stream: flags & END_STREAM != 0,
                end_headers: flags & END_HEADERS != 0,
                self_dependent,
            }
        }
        PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            let Ok(priority) = <&[u8; 5]>::try_from(payload) else {
                return Err(FrameError {
                    reason: Reason::FRAME_SIZE_ERROR,
                    stream: Some(stream),
                    what: "PRIORITY is not 5 octets",
                });
            };
            depends_on_itself(stream, priority)?;
            Frame::Priority { stream }
        }
        RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            let code = four(payload, "RST_STREAM is not 4 octets")?;
            Frame::RstStream { stream, reason: Reason(code) }
        }
        SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            let ack = flags & ACK != 0;
            if ack && !payload.is_empty() {
                return Err(connection_error(Reason::FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload"));
            }
            if !payload.len().is_multiple_of(6) {
                return Err(connection_error(Reason::FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 octets"));
            }
            Frame::Settings { ack, settings: Settings::parse(payload)? }
        }
        PUSH_PROMISE => {
            on_stream("PUSH_PROMISE on stream 0")?;
            Frame::PushPromise { stream }
        }
        PING => {
            on_connection("PING on a stream")?;
            let Ok(payload) = <[u8; 8]>::try_from(payload) else {
                return Err(connection_error(Reason::FRAME_SIZE_ERROR, "PING is not 8 octets"));
            };
            Frame::Ping { ack: flags & ACK != 0, payload }
        }
        GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            let Some((fixed, debug)) = payload.split_first_chunk::<8>() else {
                return Err(connection_error(Reason::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 octets"));
            };
            let last_stream = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) & MAX_WINDOW;
            let reason = Reason(u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]));
            Frame::GoAway { last_stream, reason, debug }
        }
        WINDOW_UPDATE => {
            let increment = four(payload, "WINDOW_UPDATE is not 4 octets")? & MAX_WINDOW;
            if increment == 0 {
                let what = "WINDOW_UPDATE of 0";
                return Err(FrameError {
                    reason: Reason::PROTOCOL_ERROR,
                    stream: (stream != 0).then_some(stream),
                    what,
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Frame::Continuation { stream, block: payload, end_headers: flags & END_HEADERS != 0 }
        }
        _ => Frame::Unknown,
    };
    Ok(frame)
}

/// The payload of a DATA or HEADERS frame without its padding (§6.1).
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return Err(connection_error(Reason::FRAME_SIZE_ERROR, "padded frame without its pad length"));
    };
    match rest.len().checked_sub(usize::from(pad)) {
        Some(len) => Ok(&rest[..len]),
        None => Err(connection_error(Reason::PROTOCOL_ERROR, "padding as long as the frame or longer")),
    }
}

fn four(payload: &[u8], what: &'static str) -> Result<u32, FrameError> {
    match <[u8; 4]>::try_from(payload) {
        Ok(b) => Ok(u32::from_be_bytes(b)),
        Err(_) => Err(connection_error(Reason::FRAME_SIZE_ERROR, what)),
    }
}

/// A stream may not depend on itself (§5.3.1): an error of that stream.
fn depends_on_itself(stream: u32, priority: &[u8; 5]) -> Result<(), FrameError> {
    let dependency = u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & MAX_WINDOW;
    if dependency == stream {
        return Err(FrameError {
            reason: Reason::PROTOCOL_ERROR,
            stream: Some(stream),
            what: "a stream that depends on itself",
        });
    }
    Ok(())
}

pub(crate) fn put_settings(out: &mut BytesMut, settings: &Settings) {
    let start = out.len();
    Head { len: 0, kind: SETTINGS, flags: 0, stream: 0 }.put(out);
    for (id, value) in settings.params() {
        out.put_u16(id);
        out.put_u32(value);
    }
    let len = (out.len() - start - HEAD_LEN) as u32;
    out[start..start + 3].copy_from_slice(&len.to_be_bytes()[1..]);
}

pub(crate) fn put_settings_ack(out: &mut BytesMut) {
    Head { len: 0, kind: SETTINGS, flags: ACK, stream: 0 }.put(out);
}

pub(crate) fn put_ping(out: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    Head { len: 8, kind: PING, flags: if ack { ACK } else { 0 }, stream: 0 }.put(out);
    out.put_slice(&payload);
}

pub(crate) fn put_goaway(out: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    Head { len: 8 + debug.len(), kind: GOAWAY, flags: 0, stream: 0 }.put(out);
    out.put_u32(last_stream);
    out.put_u32(reason.0);
    out.put_slice(debug);
}

pub(crate) fn put_rst_stream(out: &mut BytesMut, stream: u32, reason: Reason) {
    Head { len: 4, kind: RST_STREAM, flags: 0, stream }.put(out);
    out.put_u32(reason.0);
}

pub(crate) fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    debug_assert!((1..=MAX_WINDOW).contains(&increment));
    Head { len: 4, kind: WINDOW_UPDATE, flags: 0, stream }.put(out);
    out.put_u32(increment);
}

/// A DATA frame's head, for a payload of `len` octets the caller writes (or sends vectored) after it.
pub(crate) fn put_data_head(out: &mut BytesMut, stream: u32, len: usize, end_stream: bool) {
    Head { len, kind: DATA, flags: if end_stream { END_STREAM } else { 0 }, stream }.put(out);
}

/// Where a HEADERS frame's field block starts in a buffer: [`begin_headers`] reserves its head, the caller
/// encodes the fields after it, [`finish_headers`] writes the head.
#[must_use]
pub(crate) struct HeadersStart(usize);

pub(crate) fn begin_headers(out: &mut BytesMut) -> HeadersStart {
    let start = out.len();
    out.put_slice(&[0; HEAD_LEN]);
    HeadersStart(start)
}

/// Writes the head of the HEADERS frame begun at `start`, splitting its field block into CONTINUATION frames
/// where it is longer than the peer's `max_frame_size`.
pub(crate) fn finish_headers(
    out: &mut BytesMut,
    HeadersStart(start): HeadersStart,
    stream: u32,
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size as usize;
    let end_stream = if end_stream { END_STREAM } else { 0 };
    let len = out.len() - start - HEAD_LEN;
    if len <= max {
        let mut head = BytesMut::with_capacity(HEAD_LEN);
        Head { len, kind: HEADERS, flags: END_HEADERS | end_stream, stream }.put(&mut head);
        out[start..start + HEAD_LEN].copy_from_slice(&head);
        return;
    }
    // Rare: a field block larger than a frame. Written again, a head before every piece.
    let block = out.split_off(start + HEAD_LEN).freeze();
    out.truncate(start);
    let mut pieces = block.chunks(max).peekable();
    let mut kind = HEADERS;
    let mut flags = end_stream;
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_none() {
            flags |= END_HEADERS;
        }
        Head { len: piece.len(), kind, flags, stream }.put(out);
        out.put_slice(piece);
        kind = CONTINUATION;
        flags = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
        let mut out = BytesMut::new();
        Head { len: payload.len(), kind, flags, stream }.put(&mut out);
        let head = Head::parse(out[..HEAD_LEN].try_into().unwrap());
        assert_eq!(head, Head { len: payload.len(), kind, flags, stream });
        parse(head, payload)
    }

    fn err(result: Result<Frame<'_>, FrameError>) -> (Reason, Option<u32>) {
        let e = result.unwrap_err();
        (e.reason, e.stream)
    }

    #[test]
    fn heads_drop_the_reserved_bit_and_carry_24_bit_lengths() {
        let head = Head::parse(&[0xff, 0xff, 0xff, 0x1, 0x4, 0x80, 0, 0, 0x3]);
        assert_eq!(head, Head { len: MAX_MAX_FRAME_SIZE as usize, kind: HEADERS, flags: END_HEADERS, stream: 3 });
    }

    #[test]
    fn padding_is_taken_off_and_counted_for_flow_control() {
        let payload = [3, b'a', b'b', 0, 0, 0];
        let got = frame(DATA, PADDED | END_STREAM, 1, &payload).unwrap();
        assert_eq!(got, Frame::Data { stream: 1, data: b"ab", end_stream: true, flow: 6 });
        assert_eq!(err(frame(DATA, PADDED, 1, &[3, 0, 0])), (Reason::PROTOCOL_ERROR, None));
        assert_eq!(err(frame(DATA, PADDED, 1, &[])), (Reason::FRAME_SIZE_ERROR, None));
        // Padding and priority both, on HEADERS.
        let payload = [1, 0, 0, 0, 0, 16, 0x82, 0];
        let got = frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 3, &payload).unwrap();
        let want =
            Frame::Headers { stream: 3, block: &[0x82], end_stream: false, end_headers: true, self_dependent: false };
        assert_eq!(got, want);
    }

    #[test]
    fn frames_on_the_wrong_stream_or_of_the_wrong_length_are_refused() {
        let connection = |r| (r, None);
        assert_eq!(err(frame(DATA, 0, 0, b"x")), connection(Reason::PROTOCOL_ERROR));
        assert_eq!(err(frame(HEADERS, 0, 0, b"")), connection(Reason::PROTOCOL_ERROR));
        assert_eq!(err(frame(CONTINUATION, 0, 0, b"")), connection(Reason::PROTOCOL_ERROR));
        assert_eq!(err(frame(SETTINGS, 0, 1, b"")), connection(Reason::PROTOCOL_ERROR));
        assert_eq!(err(frame(SETTINGS, 0, 0, &[0; 5])), connection(Reason::FRAME_SIZE_ERROR));
        assert_eq!(err(frame(SETTINGS, ACK, 0, &[0; 6])), connection(Reason::FRAME_SIZE_ERROR));
        assert_eq!(err(frame(PING, 0, 0, &[0; 7])), connection(Reason::FRAME_SIZE_ERROR));
        assert_eq!(err(frame(PING, 0, 1, &[0; 8])), connection(Reason::PROTOCOL_ERROR));
        assert_eq!(err(frame(GOAWAY, 0, 0, &[0; 7])), connection(Reason::FRAME_SIZE_ERROR));
        assert_eq!(err(frame(RST_STREAM, 0, 1, &[0; 3])), connection(Reason::FRAME_SIZE_ERROR));
        assert_eq!(err(frame(WINDOW_UPDATE, 0, 0, &[0; 4])), connection(Reason::PROTOCOL_ERROR));
        // The errors of one stream.
        assert_eq!(err(frame(WINDOW_UPDATE, 0, 5, &[0; 4])), (Reason::PROTOCOL_ERROR, Some(5)));
        assert_eq!(err(frame(PRIORITY, 0, 5, &[0; 4])), (Reason::FRAME_SIZE_ERROR, Some(5)));
        assert_eq!(err(frame(PRIORITY, 0, 5, &[0, 0, 0, 5, 16])), (Reason::PROTOCOL_ERROR, Some(5)));
        // HEADERS that depends on itself is parsed, flagged: its block must still be decoded.
        let headers = [0, 0, 0, 7, 16, 0x82];
        let got = frame(HEADERS, PRIORITY_FLAG, 7, &headers).unwrap();
        assert!(matches!(got, Frame::Headers { self_dependent: true, block: [0x82], .. }), "{got:?}");
        // Unknown types are ignored, whatever they carry.
        assert_eq!(frame(0xfa, 0xff, 0, b"anything").unwrap(), Frame::Unknown);
    }

    #[test]
    fn settings_round_trip_and_their_values_are_checked() {
        let settings = Settings {
            header_table_size: Some(0),
            enable_push: Some(false),
            max_concurrent_streams: Some(100),
            initial_window_size: Some(MAX_WINDOW),
            max_frame_size: Some(MAX_MAX_FRAME_SIZE),
            max_header_list_size: Some(65_536),
            enable_connect_protocol: Some(true),
        };
        let mut out = BytesMut::new();
        put_settings(&mut out, &settings);
        let head = Head::parse(out[..HEAD_LEN].try_into().unwrap());
        assert_eq!(head.len, 7 * 6);
        assert_eq!(parse(head, &out[HEAD_LEN..]).unwrap(), Frame::Settings { ack: false, settings });

        let one = |id: u16, value: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend(value.to_be_bytes());
            p
        };
        let bad = [
            (one(0x2, 2), Reason::PROTOCOL_ERROR),
            (one(0x4, MAX_WINDOW + 1), Reason::FLOW_CONTROL_ERROR),
            (one(0x5, DEFAULT_MAX_FRAME_SIZE - 1), Reason::PROTOCOL_ERROR),
            (one(0x5, MAX_MAX_FRAME_SIZE + 1), Reason::PROTOCOL_ERROR),
            (one(0x8, 7), Reason::PROTOCOL_ERROR),
        ];
        for (payload, reason) in bad {
            assert_eq!(err(frame(SETTINGS, 0, 0, &payload)), (reason, None), "{payload:?}");
        }
        // An unknown identifier is ignored; the last of two values wins.
        let mut payload = one(0x99, 1);
        payload.extend(one(0x3, 1));
        payload.extend(one(0x3, 2));
        let want = Settings { max_concurrent_streams: Some(2), ..Settings::default() };
        assert_eq!(frame(SETTINGS, 0, 0, &payload).unwrap(), Frame::Settings { ack: false, settings: want });
    }

    #[test]
    fn control_frames_are_written_as_they_parse() {
        let mut out = BytesMut::new();
        put_ping(&mut out, true, *b"12345678");
        put_goaway(&mut out, 7, Reason::ENHANCE_YOUR_CALM, b"calm");
        put_rst_stream(&mut out, 9, Reason::CANCEL);
        put_window_update(&mut out, 0, MAX_WINDOW);
        put_settings_ack(&mut out);
        put_data_head(&mut out, 11, 2, true);
        out.put_slice(b"hi");
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let head = Head::parse(rest[..HEAD_LEN].try_into().unwrap());
            frames.push(parse(head, &rest[HEAD_LEN..HEAD_LEN + head.len]).unwrap());
            rest = &rest[HEAD_LEN + head.len..];
        }
        assert_eq!(
            frames,
            [
                Frame::Ping { ack: true, payload: *b"12345678" },
                Frame::GoAway { last_stream: 7, reason: Reason::ENHANCE_YOUR_CALM, debug: b"calm" },
                Frame::RstStream { stream: 9, reason: Reason::CANCEL },
                Frame::WindowUpdate { stream: 0, increment: MAX_WINDOW },
                Frame::Settings { ack: true, settings: Settings::default() },
                Frame::Data { stream: 11, data: b"hi", end_stream: true, flow: 2 },
            ]
        );
        assert_eq!(Reason::ENHANCE_YOUR_CALM.to_string(), "ENHANCE_YOUR_CALM");
        assert_eq!(Reason(0x42).to_string(), "error code 0x42");
    }

    #[test]
    fn a_field_block_larger_than_a_frame_goes_on_in_continuations() {
        for (len, frames) in [(10, 1), (16, 1), (17, 2), (40, 3)] {
            let mut out = BytesMut::from(&b"before"[..]);
            let start = begin_headers(&mut out);
            let block: Vec<u8> = (0..len as u8).collect();
            out.put_slice(&block);
            finish_headers(&mut out, start, 5, true, 16);
            assert_eq!(&out[..6], b"before");
            let mut rest = &out[6..];
            let mut got = Vec::new();
            let mut heads = Vec::new();
            while !rest.is_empty() {
                let head = Head::parse(rest[..HEAD_LEN].try_into().unwrap());
                assert!(head.len <= 16);
                heads.push((head.kind, head.flags));
                got.extend_from_slice(&rest[HEAD_LEN..HEAD_LEN + head.len]);
                rest = &rest[HEAD_LEN + head.len..];
            }
            assert_eq!(got, block);
            assert_eq!(heads.len(), frames, "{len} octets");
            assert_eq!(heads[0], (HEADERS, END_STREAM | if frames == 1 { END_HEADERS } else { 0 }));
            assert_eq!(heads.last().unwrap().1 & END_HEADERS, END_HEADERS);
            assert!(heads[1..].iter().all(|&(kind, _)| kind == CONTINUATION));
        }
    }
}
