//! Message bodies on the wire, both ways and on both sides (pingora's `protocols/http/v1/body.rs`): a
//! `Content-Length` value, the chunked decoder (a state machine over a buffer: size lines, data, the CRLF after
//! it, the last chunk and the trailers) and the chunked encoder's pieces. Pure: no socket.
//!
//! The chunk-size rules are hyper's (whose decoder served both sides before): hex digits without overflow,
//! optional spaces or tabs, an optional extension after `;` that holds no CR or LF, then CRLF. Anything else
//! is malformed, and a malformed body ends its connection.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line (with extensions).
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer bytes.
const MAX_TRAILERS: usize = 16 * 1024;

/// A body that breaks the framing rules; the reason in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// A `Content-Length` value: ASCII digits only (no sign, no spaces, no list), at most 19 of them.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// A chunk's size line.
pub(crate) fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

/// The last chunk and the trailers.
pub(crate) fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(t) = trailers else { return Bytes::from_static(b"0\r\n\r\n") };
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(b"0\r\n");
    for (name, value) in t {
        super::fields::put_field(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this much left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: the trailers and the final CRLF.
    Trailers,
}

/// What [`Chunked::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Data, as much of the current chunk as the buffer held.
    Data(Bytes),
    /// The body's end, with its trailers if there were any.
    End(Option<HeaderMap>),
    /// The buffer holds too little: read more (up to this much data is wanted; 0 for a line).
    More(usize),
}

impl Chunked {
    /// Takes the next piece of the body off the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(len) = find_line(buf, MAX_CHUNK_LINE)? else { return Ok(Decoded::More(0)) };
                    let size = parse_chunk_size(&buf[..len])?;
                    buf.advance(len);
                    *self = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More(usize::try_from(left).unwrap_or(usize::MAX)));
                    }
                    let take = (buf.len() as u64).min(left) as usize;
                    let left = left - take as u64;
                    *self = if left == 0 { Chunked::DataEnd } else { Chunked::Data(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More(0));
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let Some(len) = find_trailers_end(buf)? else { return Ok(Decoded::More(0)) };
                    let block = buf.split_to(len);
                    return Ok(Decoded::End(parse_trailers(&block)?));
                }
            }
        }
    }
}

/// The length of the first line in `buf` (with its line ending), if it is complete.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, Malformed> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() > max => Err(Malformed("chunk-size line too long")),
        None => Ok(None),
    }
}

/// A chunk-size line, with its CRLF: hex digits, optional spaces or tabs, an optional extension after `;`.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let line = line.strip_suffix(b"\r\n").ok_or(Malformed("chunk-size line without CRLF"))?;
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(Malformed("CR or LF inside a chunk-size line"));
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("invalid chunk size"));
    }
    let size = line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16).unwrap_or_default();
        n.checked_mul(16).and_then(|n| n.checked_add(u64::from(v))).ok_or(Malformed("chunk size overflows"))
    })?;
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Malformed("invalid chunk size"));
    }
    Ok(size)
}

/// The length of the trailer section (up to and with its empty line), if it is complete.
fn find_trailers_end(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Ok(Some(i + 4)),
        None if buf.len() > MAX_TRAILERS => Err(Malformed("trailers too large")),
        None => Ok(None),
    }
}

/// The trailer fields, if there are any.
fn parse_trailers(block: &[u8]) -> Result<Option<HeaderMap>, Malformed> {
    if block == b"\r\n" {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let fields = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(Malformed("malformed trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) {
            map.append(n, v);
        }
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_hypers_rules() {
        assert_eq!(parse_chunk_size(b"1A\r\n").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;ext=1\r\n").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"5 \t;a=b\r\n").unwrap(), 5);
        assert_eq!(parse_chunk_size(b"000000000000000000005\r\n").unwrap(), 5, "leading zeros do not overflow");
        for bad in [
            &b"zz\r\n"[..],
            b"10",
            b"5\n",
            b"0x5\r\n",
            b"-1\r\n",
            b" 5\r\n",
            b"5 5\r\n",
            b"\r\n",
            b"5;a\rb\r\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn decode_all(mut input: BytesMut) -> Result<(Vec<u8>, Option<HeaderMap>), Malformed> {
        let mut state = Chunked::Size;
        let mut data = Vec::new();
        loop {
            match state.decode(&mut input)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(t) => return Ok((data, t)),
                Decoded::More(_) => return Err(Malformed("incomplete")),
            }
        }
    }

    #[test]
    fn a_body_decodes_with_its_trailers_and_leaves_the_rest() {
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n6;x\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT"[..]);
        let mut state = Chunked::Size;
        let mut data = Vec::new();
        let trailers = loop {
            match state.decode(&mut buf).unwrap() {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(t) => break t,
                Decoded::More(_) => panic!("complete"),
            }
        };
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "1");
        assert_eq!(&buf[..], b"NEXT", "the bytes after the body stay");
        assert!(decode_all(BytesMut::from(&b"5\r\nhelloXX0\r\n\r\n"[..])).is_err());
        assert!(decode_all(BytesMut::from(&b"5\r\nhello\n0\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn a_body_in_pieces_asks_for_more() {
        let whole = b"3\r\nabc\r\n0\r\n\r\n";
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for &b in whole {
            buf.extend_from_slice(&[b]);
            loop {
                match state.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::End(t) => {
                        assert!(t.is_none());
                        assert_eq!(data, b"abc");
                        return;
                    }
                    Decoded::More(_) => break,
                }
            }
        }
        panic!("never ended");
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_decimal(b"42"), Some(42));
        for bad in [&b""[..], b"-1", b"+3", b"0x3", b"3, 3", b" 3", b"99999999999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
