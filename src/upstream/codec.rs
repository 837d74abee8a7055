//! The HTTP/1.1 codec of the backend side, pure: no socket, no pool. Request heads encoded, response heads
//! parsed in place (header values are slices of the bytes read, not copies) and the response's framing (RFC 9112
//! §6.3). What both sides share — chunked bodies, `Content-Length` values, the hop-by-hop names — is
//! `crate::http1`'s, below this and the server side alike.
//!
//! [`exchange`](super::exchange) drives it over a backend connection, the benchmarks call it on buffers.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::error::UpstreamError;
use crate::http1::{field_places, parse_decimal, put_field, FieldAt};

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

    /// Puts the fields into `headers` (the map the forwarding benches and tests look at): what a map of the
    /// request holds. An h2 backend's HEADERS take them from [`Self::iter`] instead.
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
    fields: Fields,
}

/// Where a head's fields went (one or the other: a response's moves copy the larger only).
enum Fields {
    /// Into `parts.headers`, and the hop-by-hop ones that matter here:
    Map {
        /// The last `Transfer-Encoding` field.
        transfer_encoding: Option<HeaderValue>,
        /// The `Upgrade` field (passed on with a `101`).
        upgrade: Option<HeaderValue>,
    },
    /// Kept as the backend wrote them; `parts.headers` is empty. `length`: the `Content-Length` they held.
    Raw { raw: RawFields, length: Option<u64> },
}

impl Head {
    /// The head's parts, and its fields as the backend wrote them if they were kept so.
    pub(super) fn into_parts(self) -> (http::response::Parts, Option<RawFields>) {
        let raw = match self.fields {
            Fields::Raw { raw, .. } => Some(raw),
            Fields::Map { .. } => None,
        };
        (self.parts, raw)
    }

    #[cfg(test)]
    fn raw(&self) -> Option<&RawFields> {
        match &self.fields {
            Fields::Raw { raw, .. } => Some(raw),
            _ => None,
        }
    }
}

/// Most runs of lines [`RawFields`] keeps; a head that would need more is parsed into a map.
const RAW_RUNS: usize = 4;

// A run ends at most two bytes before the head's end (its last CRLF), and a head is at most `MAX_HEAD` long.
const _: () = assert!(MAX_HEAD - 2 <= u16::MAX as usize);

/// A response's fields kept as the backend wrote them, to be written to a client as they are: the lines of its
/// head that pass (runs of whole `name: value` CRLF lines, the hop-by-hop ones and `Content-Length` left out),
/// not a `HeaderMap`. This is how nginx and HAProxy pass a head on. Built for a client of reveille's own
/// HTTP/1.1 side only (which writes them, [`RawFields::write`]), and only for a plain response: a final status
/// other than 204 and 304, at most one `Content-Length`, no `Transfer-Encoding` or `Upgrade`, a `Connection`
/// that names no other field, every line ended by CRLF. Any other head is parsed into a map as before. The
/// bytes are checked as strictly either way: `httparse` refuses what `HeaderName` and `HeaderValue` would (a
/// name that is not a token; a control character other than HTAB in a value).
///
/// Putting nginx's five fields into a map, then writing them out of it, cost about 2 000 instructions a
/// request (the map allocated and hashed into, each value a shared slice, all of it dropped after).
#[derive(Debug, Clone)]
pub(crate) struct RawFields {
    head: Bytes,
    /// Start and end of each run of lines in `head`: at most its length less the final CRLF, so at most
    /// [`MAX_HEAD`] - 2, which fits a `u16` (checked below).
    runs: [(u16, u16); RAW_RUNS],
    count: u8,
    has_date: bool,
    has_sts: bool,
}

impl RawFields {
    /// Writes the fields: the lines as they came, each ended by CRLF.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        for &(start, end) in &self.runs[..self.count as usize] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
        }
    }

    /// Whether a `Date` field is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.has_date
    }

    /// Whether a `Strict-Transport-Security` field is among them.
    pub(crate) fn has_sts(&self) -> bool {
        self.has_sts
    }
}

/// What a field's name means to [`RawFields`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawName {
    /// Passes as it is.
    Keep,
    Date,
    Sts,
    /// Left out: hop-by-hop.
    Drop,
    Connection,
    ContentLength,
    /// The head is parsed into a map instead.
    Refuse,
}

fn raw_name(name: &[u8]) -> RawName {
    let is = |lower: &'static [u8]| folded_eq(name, lower);
    match name.len() {
        2 if is(b"te") => RawName::Drop,
        4 if is(b"date") => RawName::Date,
        7 if is(b"trailer") => RawName::Drop,
        7 if is(b"upgrade") => RawName::Refuse,
        // A field named `close` goes when `Connection: close` names it: the map's way knows.
        5 if is(b"close") => RawName::Refuse,
        10 if is(b"connection") => RawName::Connection,
        10 if is(b"keep-alive") => RawName::Drop,
        14 if is(b"content-length") => RawName::ContentLength,
        17 if is(b"transfer-encoding") => RawName::Refuse,
        25 if is(b"strict-transport-security") => RawName::Sts,
        n if n >= 6 && folded_eq(&name[..6], b"proxy-") => RawName::Drop,
        _ => RawName::Keep,
    }
}

/// Whether `bytes` spell `lower` (lowercase letters and `-`) in any case: each byte ORed with 0x20, compared a
/// word at a time (the name compares were a third of a head's instructions byte by byte). Exact for header names
/// and the `Connection` tokens compared with it: only a letter's two cases OR to a letter, and only `-` and CR
/// (never in a name or inside a value) OR to `-`.
#[inline(always)]
fn folded_eq(bytes: &[u8], lower: &'static [u8]) -> bool {
    let n = lower.len();
    if bytes.len() != n {
        return false;
    }
    fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
        s[at..at + W].try_into().expect("W bytes")
    }
    let eq64 =
        |at: usize| u64::from_ne_bytes(word(bytes, at)) | 0x2020_2020_2020_2020 == u64::from_ne_bytes(word(lower, at));
    let eq32 = |at: usize| u32::from_ne_bytes(word(bytes, at)) | 0x2020_2020 == u32::from_ne_bytes(word(lower, at));
    let eq16 = |at: usize| u16::from_ne_bytes(word(bytes, at)) | 0x2020 == u16::from_ne_bytes(word(lower, at));
    match n {
        0 => true,
        1 => bytes[0] | 0x20 == lower[0],
        2..=3 => eq16(0) && eq16(n - 2),
        4..=7 => eq32(0) && eq32(n - 4),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if !eq64(at) {
                    return false;
                }
                at += 8;
            }
            eq64(n - 8)
        }
    }
}

/// A `Content-Length` value, a list of equal lengths included; `None` if it is not one.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let n = parse_decimal(part.trim_ascii())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The fields of a parsed head (`at`: their places in `head`, which is `len` long) as [`RawFields`], with its
/// `Content-Length` and keep-alive (from `Connection`); `None` if the head is not a plain one.
fn raw_fields(head: &[u8], at: &[FieldAt]) -> Option<(RawFields, Option<u64>, bool, bool)> {
    let mut raw = RawFields { head: Bytes::new(), runs: [(0, 0); RAW_RUNS], count: 0, has_date: false, has_sts: false };
    let (mut length, mut close, mut keep_alive) = (None, false, false);
    // The run being extended: where it starts.
    let mut run: Option<u32> = None;
    // The head ends with an empty line; the last field's line ends where it starts.
    let fields_end = head.len().checked_sub(2)? as u32;
    for (i, &(ns, ne, vs, ve)) in at.iter().enumerate() {
        let line_end = at.get(i + 1).map_or(fields_end, |next| next.0);
        if line_end < 2 || head[line_end as usize - 2..line_end as usize] != *b"\r\n" {
            return None;
        }
        let value = &head[vs as usize..ve as usize];
        let keep = match raw_name(&head[ns as usize..ne as usize]) {
            RawName::Keep => true,
            RawName::Date => {
                raw.has_date = true;
                true
            }
            RawName::Sts => {
                raw.has_sts = true;
                true
            }
            RawName::Drop => false,
            RawName::Refuse => return None,
            RawName::ContentLength => {
                if length.is_some() {
                    return None;
                }
                length = Some(content_length(value)?);
                false
            }
            RawName::Connection => {
                for token in value.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if folded_eq(t, b"close") {
                        close = true;
                    } else if folded_eq(t, b"keep-alive") {
                        keep_alive = true;
                    } else if connection_named(t).is_some() {
                        // It names a field that must go too: the map's way removes it.
                        return None;
                    }
                }
                false
            }
        };
        match (keep, run) {
            (true, None) => run = Some(ns),
            (false, Some(start)) => {
                if raw.count as usize == RAW_RUNS {
                    return None;
                }
                raw.runs[raw.count as usize] = (start as u16, ns as u16);
                raw.count += 1;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        if raw.count as usize == RAW_RUNS {
            return None;
        }
        raw.runs[raw.count as usize] = (start as u16, fields_end as u16);
        raw.count += 1;
    }
    Some((raw, length, close, keep_alive))
}

/// Parses a response head at the start of `buf`, taking it off `buf`. `None`: not complete yet. With
/// `keep_raw`, a plain head's fields are kept as they came ([`RawFields`]) instead of put in the map.
pub(super) fn parse_head(buf: &mut BytesMut, keep_raw: bool) -> Result<Option<Head>, UpstreamError> {
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

    let status = StatusCode::from_u16(code).map_err(|_| UpstreamError::Framing("status code"))?;
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let plain =
        keep_raw && status.as_u16() >= 200 && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED;
    if let Some((mut raw, length, conn_close, conn_keep_alive)) = plain.then(|| raw_fields(&buf[..len], at)).flatten() {
        let head = buf.split_to(len).freeze();
        let parts = head_parts(status, version, &head, reason);
        raw.head = head;
        let keep_alive = keeps_alive(version, conn_close, conn_keep_alive);
        return Ok(Some(Head { parts, keep_alive, fields: Fields::Raw { raw, length } }));
    }

    let head = buf.split_to(len).freeze();
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
    let mut parts = head_parts(status, version, &head, reason);
    parts.headers = headers;
    let keep_alive = keeps_alive(version, conn_close, conn_keep_alive);
    Ok(Some(Head { parts, keep_alive, fields: Fields::Map { transfer_encoding, upgrade } }))
}

/// Whether the connection may serve again, by the response's version and its `Connection` tokens.
fn keeps_alive(version: Version, close: bool, keep_alive: bool) -> bool {
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// A response head's parts but its fields, with the backend's reason phrase (at `reason` in `head`) when it is
/// not the status's own. Inlined, and the map set only by the map's way: otherwise about 80 instructions more.
#[inline(always)]
fn head_parts(status: StatusCode, version: Version, head: &Bytes, reason: Option<(u32, u32)>) -> http::response::Parts {
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    if let Some((start, len)) = reason {
        let reason = head.slice(start as usize..(start + len) as usize);
        if parts.status.canonical_reason().is_none_or(|c| c.as_bytes() != &reason[..]) {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                parts.extensions.insert(r);
            }
        }
    }
    parts
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
        if let Fields::Map { upgrade, .. } = &mut head.fields {
            if let Some(u) = upgrade.take() {
                head.parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                head.parts.headers.insert(UPGRADE, u);
            }
        }
        return Ok(Framing::Upgrade);
    }
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let headers = &mut head.parts.headers;
    if let Fields::Map { transfer_encoding: Some(te), .. } = &head.fields {
        // The last coding decides; a Content-Length beside it is wrong (it would truncate the body) and goes,
        // and the connection is not reused (it may be an attempt at request smuggling).
        let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
        let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        if headers.remove(CONTENT_LENGTH).is_some() || !chunked {
            head.keep_alive = false;
        }
        return Ok(if chunked { Framing::Chunked } else { Framing::Eof });
    }
    let mut length = match head.fields {
        Fields::Raw { length, .. } => length,
        _ => None,
    };
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
        parse_head(&mut buf, false).expect("parses").expect("complete")
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..]);
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::OK);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert!(h.keep_alive);
        assert!(h.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        assert_eq!(&buf[..], b"hello");
    }

    fn raw_head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, true).expect("parses").expect("complete")
    }

    /// The fields a head passes on, as (lowercase name, value) in order: what [`RawFields::write`] writes, or
    /// what the map holds but its length.
    fn passed_on(h: &Head) -> Vec<(String, String)> {
        match h.raw() {
            Some(raw) => {
                let mut out = BytesMut::new();
                raw.write(&mut out);
                let text = std::str::from_utf8(&out).unwrap();
                assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
                text.split_terminator("\r\n")
                    .map(|line| {
                        let (n, v) = line.split_once(':').unwrap();
                        (n.to_ascii_lowercase(), v.trim().to_string())
                    })
                    .collect()
            }
            // `Content-Length` goes out from the framing (the server side writes the body's length).
            None => h
                .parts
                .headers
                .iter()
                .filter(|(n, _)| **n != CONTENT_LENGTH)
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect(),
        }
    }

    #[test]
    fn folded_eq_is_eq_ignore_ascii_case_for_tokens() {
        let names: [&'static [u8]; 10] = [
            b"te",
            b"date",
            b"trailer",
            b"upgrade",
            b"connection",
            b"keep-alive",
            b"content-length",
            b"transfer-encoding",
            b"strict-transport-security",
            b"proxy-",
        ];
        for lower in names {
            let upper = lower.to_ascii_uppercase();
            assert!(folded_eq(lower, lower) && folded_eq(&upper, lower));
            // Every one-byte change of every position, to every token byte, is seen (or is the same name).
            for at in 0..lower.len() {
                for b in (0u8..=255).filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)) {
                    let mut other = upper.clone();
                    other[at] = b;
                    assert_eq!(folded_eq(&other, lower), other.eq_ignore_ascii_case(lower), "{other:?} {lower:?}");
                }
            }
            assert!(!folded_eq(&lower[..lower.len() - 1], lower));
        }
        assert!(folded_eq(b"Keep-Alive", b"keep-alive") && !folded_eq(b"Keep-Alivf", b"keep-alive"));
    }

    #[test]
    fn a_plain_head_keeps_its_fields_as_they_came() {
        let text = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\n\
                    Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n";
        let mut h = raw_head(text);
        let raw = h.raw().expect("kept as it came");
        let mut out = BytesMut::new();
        raw.write(&mut out);
        assert_eq!(
            &out[..],
            &b"Server: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\nContent-Type: text/plain\r\n"[..],
            "as the backend spelled them, without Content-Length and Connection"
        );
        assert!(raw.has_date() && !raw.has_sts());
        assert!(h.parts.headers.is_empty());
        assert!(h.keep_alive);
        assert_eq!(response_framing(&Method::GET, &mut h, false).unwrap(), Framing::Length(100));
        // The same head parsed into a map passes on the same fields.
        assert_eq!(passed_on(&h), passed_on(&head(text)));
    }

    #[test]
    fn raw_fields_pass_on_what_the_map_would() {
        for text in [
            "HTTP/1.1 200 OK\r\nA: 1\r\nKeep-Alive: timeout=5\r\nB: 2\r\nProxy-Foo: x\r\nTE: trailers\r\nC: 3\r\n\
             Trailer: x\r\nd: 4\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 500 Oops\r\nConnection: close\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n",
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive, close\r\nContent-Length: 3, 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let raw = raw_head(text);
            assert!(raw.raw().is_some(), "{text:?} is plain");
            let map = head(text);
            assert_eq!(passed_on(&raw), passed_on(&map), "{text:?}");
            assert_eq!(raw.keep_alive, map.keep_alive, "{text:?}");
            assert_eq!(raw.parts.status, map.parts.status);
            assert_eq!(raw.parts.version, map.parts.version);
            assert_eq!(
                raw.parts.extensions.get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes().to_vec()),
                map.parts.extensions.get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes().to_vec()),
            );
            let (mut raw, mut map) = (raw, map);
            assert_eq!(
                response_framing(&Method::GET, &mut raw, false).unwrap(),
                response_framing(&Method::GET, &mut map, false).unwrap(),
                "{text:?}"
            );
            assert_eq!(raw.keep_alive, map.keep_alive, "{text:?} after framing");
        }
        let sts = raw_head("HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=60\r\n\r\n");
        assert!(sts.raw().unwrap().has_sts());
        assert!(!raw_head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(raw_head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_head_that_is_not_plain_goes_into_the_map() {
        for text in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\n",
            "HTTP/1.1 204 No Content\r\nA: 1\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nA: 1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nA: 1\r\n\r\n",
            // `Connection: close` names a field called `close`, which goes (RFC 9110 §7.6.1).
            "HTTP/1.1 200 OK\r\nConnection: close\r\nClose: x\r\nA: 1\r\n\r\n",
            // More runs of lines than it keeps.
            "HTTP/1.1 200 OK\r\nA: 1\r\nTE: x\r\nB: 1\r\nTE: x\r\nC: 1\r\nTE: x\r\nD: 1\r\nTE: x\r\nE: 1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(text.as_bytes());
            match parse_head(&mut buf, true) {
                Ok(Some(h)) => {
                    assert!(h.raw().is_none(), "{text:?} is not plain");
                    assert!(h.parts.headers.contains_key("a"), "{text:?}: its fields are in the map");
                }
                Ok(None) => panic!("{text:?}: incomplete"),
                // What the map's way refuses (a list of two lengths) is refused as before.
                Err(e) => assert!(parse_head(&mut BytesMut::from(text.as_bytes()), false).is_err(), "{e}"),
            }
        }
        let close = head("HTTP/1.1 200 OK\r\nConnection: close\r\nClose: x\r\nA: 1\r\n\r\n");
        assert!(!close.parts.headers.contains_key("close") && !close.keep_alive);
        // Four runs are kept.
        let four = "HTTP/1.1 200 OK\r\nA: 1\r\nTE: x\r\nB: 1\r\nTE: x\r\nC: 1\r\nTE: x\r\nD: 1\r\n\r\n";
        assert_eq!(passed_on(&raw_head(four)), passed_on(&head(four)));
    }

    #[test]
    fn a_partial_head_waits_and_a_huge_one_fails() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf, false).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed");
        let mut big = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        big.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert!(matches!(parse_head(&mut big, false), Err(UpstreamError::HeadTooLarge(_))));
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
        assert!(matches!(&h.fields, Fields::Map { upgrade: Some(u), .. } if u == "h2c"));
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
