//! The HTTP/1.1 codec of the backend side, pure: no socket, no pool. Request heads encoded, response heads
//! parsed in place (header values are slices of the bytes read, not copies) and the response's framing (RFC 9112
//! §6.3). What both sides share — chunked bodies, `Content-Length` values, the hop-by-hop names — is
//! `crate::http1`'s, below this and the server side alike.
//!
//! [`exchange`](super::exchange) drives it over a backend connection, the benchmarks call it on buffers.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::error::UpstreamError;
use crate::http1::{field_places, parse_decimal, put_field};

/// Up to four fields sent after a request's header map and kept out of it: the forwarding fields set on nearly
/// every request (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`). Inserted into the map they cost about
/// 1 400 instructions a request (each name hashed, the table probed and grown, the entries dropped), written
/// straight after the map's fields the same bytes go out with none of it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Appended {
    fields: [Option<(&'static HeaderName, HeaderValue)>; 4],
}

impl Appended {
    /// Adds a field after the others; past four, into nothing (no caller sets more).
    pub(crate) fn push(&mut self, name: &'static HeaderName, value: HeaderValue) {
        if let Some(slot) = self.fields.iter_mut().find(|f| f.is_none()) {
            *slot = Some((name, value));
        }
    }

    /// The fields, in the order they were added.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        self.fields.iter().map_while(|f| f.as_ref().map(|(n, v)| (*n, v)))
    }

    /// Puts the fields into `headers` (an h2 request's map, a test's): what a map of the request holds.
    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Most header fields in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Response fields whose offsets fit on the stack (nginx sends five or six).
const OFFSETS_ON_STACK: usize = 16;
/// Largest response head (status line and fields).
const MAX_HEAD: usize = 64 * 1024;

// The hop-by-hop names are both sides' (`crate::http1`); the module's face passes them on from here.
pub(crate) use crate::http1::{connection_named, hop_by_hop_index, is_hop_by_hop, HOP_BY_HOP};

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    /// As it is: a `Content-Length` says how long, or there is none.
    Plain,
    Chunked,
}

/// Writes the request head into `out`: origin-form target, the headers as given, and the length of a body whose
/// size is known (`body_len`) and not declared yet. Returns how the body is to be framed.
pub(super) fn encode_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    appended: &Appended,
    body_len: Option<u64>,
) -> ReqFraming {
    out.reserve(256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut framing = None;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            framing = Some(ReqFraming::Chunked);
        } else if name == CONTENT_LENGTH && framing.is_none() {
            framing = Some(ReqFraming::Plain);
        }
        put_field(out, name, value);
    }
    for (name, value) in appended.iter() {
        put_field(out, name, value);
    }
    let framing = framing.unwrap_or_else(|| match body_len {
        // No body: a method that defines one still says so (as hyper does), the others say nothing.
        Some(0) => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            ReqFraming::Plain
        }
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            ReqFraming::Plain
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ReqFraming::Chunked
        }
    });
    out.extend_from_slice(b"\r\n");
    framing
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304, a declared length of zero).
    Empty,
    Length(u64),
    Chunked,
    /// To the end of the connection, which cannot be reused.
    Eof,
    /// 101: the connection is the tunnel's.
    Upgrade,
}

/// A response head, parsed: its hop-by-hop fields are not in `parts` but read into the others.
pub(super) struct Head {
    pub(super) parts: http::response::Parts,
    pub(super) keep_alive: bool,
    /// The last `Transfer-Encoding` field.
    transfer_encoding: Option<HeaderValue>,
    /// The `Upgrade` field (passed on with a `101`).
    upgrade: Option<HeaderValue>,
}

/// Parses a response head at the start of `buf`, taking it off `buf`. `None`: not complete yet.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, UpstreamError> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(UpstreamError::HeadTooLarge(MAX_HEAD)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::HeadTooLarge(MAX_HEAD)),
        Err(e) => return Err(UpstreamError::Head(e)),
    };
    if len > MAX_HEAD {
        return Err(UpstreamError::HeadTooLarge(MAX_HEAD));
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let count = res.headers.len();
    // Offsets into the head (it is at most MAX_HEAD long): name start and end, value start and end. A few
    // fields' worth on the stack, more from the heap, as the server side's request parse does: all
    // MAX_HEADERS slots zeroed on every response were about 100 instructions of memset.
    let (mut at_stack, mut at_heap) = ([(0, 0, 0, 0); OFFSETS_ON_STACK], Vec::new());
    let at = field_places(&mut at_stack, &mut at_heap, count);
    for (slot, h) in at.iter_mut().zip(res.headers.iter()) {
        let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
        *slot = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
    }
    let code = res.code.unwrap_or_default();
    let minor = res.version.unwrap_or_default();
    let reason = res.reason.map(|r| (offset(r.as_bytes()), r.len() as u32));

    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| UpstreamError::Framing("status code"))?;
    let mut headers = HeaderMap::with_capacity(count);
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut transfer_encoding = None;
    let mut upgrade = None;
    // Fields a `Connection` header names beyond the fixed list (rare).
    let mut named = Vec::new();
    for &(ns, ne, vs, ve) in at.iter() {
        let name = header_name(&head[ns as usize..ne as usize])?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| UpstreamError::Framing("header value"))?;
        // Hop-by-hop fields never pass downstream: they are read here, and not put in the map (a second pass
        // over the map to remove them cost a twentieth of a request's instructions).
        if is_hop_by_hop(&name) {
            if name == CONNECTION {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    conn_close |= t.eq_ignore_ascii_case(b"close");
                    if t.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else {
                        named.extend(connection_named(token));
                    }
                }
            } else if name == TRANSFER_ENCODING {
                transfer_encoding = Some(value);
            } else if name == UPGRADE {
                upgrade = Some(value);
            }
            continue;
        }
        headers.append(name, value);
    }
    // `Connection: close` names no field unless there is one by that name.
    for name in named {
        headers.remove(name);
    }
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let keep_alive = !conn_close && (version == Version::HTTP_11 || conn_keep_alive);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    if let Some((start, len)) = reason {
        let reason = head.slice(start as usize..(start + len) as usize);
        if status.canonical_reason().is_none_or(|c| c.as_bytes() != &reason[..]) {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                parts.extensions.insert(r);
            }
        }
    }
    Ok(Some(Head { parts, keep_alive, transfer_encoding, upgrade }))
}

/// A response field's name. The names servers send on nearly every response, spelled as they send them, are
/// matched as they are (a length switch and a compare); others go through `HeaderName::from_bytes`, which
/// lowercases and checks every byte (a twenty-fifth of a request's instructions with nginx's eight fields).
fn header_name(raw: &[u8]) -> Result<HeaderName, UpstreamError> {
    use http::header;
    Ok(match raw {
        b"Server" | b"server" => header::SERVER,
        b"Date" | b"date" => header::DATE,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => CONTENT_LENGTH,
        b"Connection" | b"connection" => CONNECTION,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Transfer-Encoding" | b"transfer-encoding" => TRANSFER_ENCODING,
        b"Vary" | b"vary" => header::VARY,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Location" | b"location" => header::LOCATION,
        _ => HeaderName::from_bytes(raw).map_err(|_| UpstreamError::Framing("header name"))?,
    })
}

/// How the body of a response to `method` with `head` is delimited (RFC 9112 §6.3).
pub(super) fn response_framing(method: &Method, head: &mut Head, upgrade: bool) -> Result<Framing, UpstreamError> {
    let status = head.parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return Err(UpstreamError::UnexpectedUpgrade);
        }
        // The upgrade passes: its fields go on downstream.
        if let Some(u) = head.upgrade.take() {
            head.parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            head.parts.headers.insert(UPGRADE, u);
        }
        return Ok(Framing::Upgrade);
    }
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let headers = &mut head.parts.headers;
    if let Some(te) = &head.transfer_encoding {
        // The last coding decides; a Content-Length beside it is wrong (it would truncate the body) and goes,
        // and the connection is not reused (it may be an attempt at request smuggling).
        let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
        let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        if headers.remove(CONTENT_LENGTH).is_some() || !chunked {
            head.keep_alive = false;
        }
        return Ok(if chunked { Framing::Chunked } else { Framing::Eof });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(UpstreamError::Framing("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::Framing("Content-Length (several values)"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => {
            head.keep_alive = false;
            Ok(Framing::Eof)
        }
    }
}

/// 1xx other than 101: skipped, the final response follows.
pub(super) fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).expect("parses").expect("complete")
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::OK);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert!(h.keep_alive);
        assert!(h.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn a_partial_head_waits_and_a_huge_one_fails() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed");
        let mut big = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        big.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert!(matches!(parse_head(&mut big), Err(UpstreamError::HeadTooLarge(_))));
    }

    #[test]
    fn common_names_are_the_same_names_as_parsed() {
        for raw in [
            "Server",
            "Date",
            "Content-Type",
            "Content-Length",
            "Connection",
            "Last-Modified",
            "ETag",
            "Accept-Ranges",
            "Cache-Control",
            "Transfer-Encoding",
            "Vary",
            "Content-Encoding",
            "Set-Cookie",
            "Location",
        ] {
            for spelled in [raw.to_string(), raw.to_ascii_lowercase()] {
                let fast = header_name(spelled.as_bytes()).unwrap();
                assert_eq!(fast, HeaderName::from_bytes(spelled.as_bytes()).unwrap(), "{spelled}");
            }
        }
        assert_eq!(header_name(b"X-Custom").unwrap(), "x-custom");
        assert!(header_name(b"bad name").is_err());
    }

    #[test]
    fn hop_by_hop_fields_are_read_but_not_kept() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
             Proxy-Authenticate: Basic\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nX-End: 2\r\nHost: stays\r\n\r\n",
        );
        let mut names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-end"]);
        assert!(h.keep_alive);
        assert_eq!(h.upgrade.as_ref().map(|u| u.as_bytes()), Some(&b"h2c"[..]));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nclose: x\r\nX-A: b\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.parts.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x-a"]);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept() {
        let h = head("HTTP/1.1 200 Fine Thanks\r\n\r\n");
        let r = h.parts.extensions.get::<hyper::ext::ReasonPhrase>().expect("kept");
        assert_eq!(r.as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |method: Method, text: &str| {
            let mut h = head(text);
            response_framing(&method, &mut h, false).map(|f| (f, h.keep_alive))
        };
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").unwrap(),
            (Framing::Length(10), true)
        );
        assert_eq!(f(Method::HEAD, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").unwrap(), (Framing::Empty, true));
        assert_eq!(f(Method::GET, "HTTP/1.1 304 Not Modified\r\n\r\n").unwrap(), (Framing::Empty, true));
        assert_eq!(f(Method::GET, "HTTP/1.1 200 OK\r\n\r\n").unwrap(), (Framing::Eof, false));
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").unwrap(),
            (Framing::Chunked, false),
            "a length beside chunked is ignored and the connection not reused"
        );
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n").unwrap(),
            (Framing::Length(4), true)
        );
        assert!(f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n").is_err());
        assert!(f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(matches!(
            f(Method::GET, "HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(UpstreamError::UnexpectedUpgrade)
        ));
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.test"));
        let f = encode_head(&mut out, &Method::GET, "/x?y", &headers, &Appended::default(), Some(0));
        assert!(f == ReqFraming::Plain);
        assert_eq!(&out[..], b"GET /x?y HTTP/1.1\r\nhost: a.test\r\n\r\n");

        out.clear();
        encode_head(&mut out, &Method::POST, "/", &headers, &Appended::default(), Some(3));
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\n\r\n");

        out.clear();
        encode_head(&mut out, &Method::POST, "/", &headers, &Appended::default(), Some(0));
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n");

        out.clear();
        assert!(encode_head(&mut out, &Method::POST, "/", &headers, &Appended::default(), None) == ReqFraming::Chunked);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));

        out.clear();
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(encode_head(&mut out, &Method::POST, "/", &headers, &Appended::default(), None) == ReqFraming::Chunked);
    }
}
