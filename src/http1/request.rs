//! The server side's request head: parsed with `httparse` in place (field values are slices of the bytes read,
//! not copies), and judged by hyper's rules, which reveille's HTTP/1.1 server side kept (RFC 9112 §6.3): a
//! `Transfer-Encoding` whose last coding is not `chunked`, or any on HTTP/1.0, is refused; beside a
//! `Content-Length` it wins, the length goes, and the connection closes after the response; several
//! `Content-Length`s must agree, and each is digits only (a list is refused). What httparse refuses (bare CR,
//! NUL, spaces in names or before the colon, obs-fold, a malformed request line) is 400; a head over the limit,
//! or more fields than allowed, is 431; a target over 65 534 bytes, 414.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::body::parse_decimal;
use super::fields::{field_places, has_token};

/// hyper's limit on a request target.
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// Field slots on the stack; a higher limit takes them from the heap.
const STACK_FIELDS: usize = 100;
/// Fields whose offsets are kept on the stack; a head with more keeps them on the heap.
const OFFSETS_ON_STACK: usize = 32;

/// How much of a request head the server side accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Largest head, request line and fields.
    pub(crate) max_size: usize,
    /// Most fields.
    pub(crate) max_fields: usize,
}

/// A request head refused, and the status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    TooLarge,
    #[error("request target too long")]
    UriTooLong,
}

impl HeadError {
    /// The answer: 431 for a head too large, 414 for a target too long, else 400.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Length(u64),
    Chunked,
}

/// A request head, parsed: the request (its fields there, hop-by-hop ones included, as hyper hands them over,
/// except a `Connection` field that is only `close` or `keep-alive`: `keep_alive` says it) and what the
/// connection needs to know about it.
#[derive(Debug)]
pub(crate) struct ParsedRequest {
    pub(crate) request: Request<()>,
    pub(crate) body: BodyFraming,
    /// The connection may serve another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
    /// HTTP/1.1 with an `Upgrade` field (or CONNECT).
    pub(crate) wants_upgrade: bool,
}

/// Parses a request head at the start of `buf`, taking it off `buf`. `None`: not complete yet.
pub(crate) fn parse_request(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<ParsedRequest>, HeadError> {
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_fields <= STACK_FIELDS {
        &mut stack[..limits.max_fields]
    } else {
        heap.resize(limits.max_fields, MaybeUninit::uninit());
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_size => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("version")),
        Err(httparse::Error::Token) if req.method.is_none() => return Err(HeadError::Malformed("method")),
        Err(_) => return Err(HeadError::Malformed("request line or fields")),
    };
    if len > limits.max_size {
        return Err(HeadError::TooLarge);
    }
    let path = req.path.unwrap_or_default();
    if path.len() > MAX_URI_LEN {
        return Err(HeadError::UriTooLong);
    }
    let method =
        Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let http11 = req.version == Some(1);
    // Offsets into the head, as `httparse`'s slices borrow `buf`: the target, then each field's name and value.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let target = (offset(path.as_bytes()) as usize, path.len());
    // The offsets of each field's name and value, as u32 (a head is far below 4 GiB): a few fields' worth on
    // the stack, zeroed on every request (100 slots of four words cost 3 200 instructions of memset per request
    // under callgrind), more from the heap.
    let count = req.headers.len();
    let (mut at_stack, mut at_heap) = ([(0, 0, 0, 0); OFFSETS_ON_STACK], Vec::new());
    let at = field_places(&mut at_stack, &mut at_heap, count);
    for (slot, h) in at.iter_mut().zip(req.headers.iter()) {
        *slot = (offset(h.name.as_bytes()), h.name.len() as u32, offset(h.value), h.value.len() as u32);
    }

    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Malformed("target"))?;
    // Room for the forwarding fields the proxy adds, so the map does not grow on the way.
    let mut headers = HeaderMap::with_capacity(count + 6);
    let mut keep_alive = http11;
    let mut saw_close = false;
    // A `Connection: close` kept out of the map, and a field named `close` (see below).
    let (mut dropped_close, mut close_field) = (false, false);
    let mut length: Option<u64> = None;
    let mut has_length = false;
    let mut te = None::<bool>;
    let mut expect_continue = false;
    let mut wants_upgrade = method == Method::CONNECT;
    for &(ns, nl, vs, vl) in at.iter() {
        let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
        let name = field_name(&head[ns..ns + nl])?;
        if name == CONNECTION {
            // `close` or `keep-alive` alone (a browser's every request, a client that closes after one) says
            // nothing past this hop, and `keep_alive` takes it: kept out of the map, it is not added there only
            // to be found and removed with the hop-by-hop fields before the request goes on (about 1 000
            // instructions of such a request). Any other value (`upgrade`, a field it names) goes the long way.
            let v = &head[vs..vs + vl];
            if v.eq_ignore_ascii_case(b"close") {
                (saw_close, keep_alive, dropped_close) = (true, false, true);
                continue;
            }
            if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive |= !saw_close;
                continue;
            }
        }
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..vs + vl)).map_err(|_| HeadError::Malformed("field value"))?;
        if name == TRANSFER_ENCODING {
            if !http11 {
                return Err(HeadError::Malformed("Transfer-Encoding on HTTP/1.0"));
            }
            if length.take().is_some() {
                headers.remove(CONTENT_LENGTH);
            }
            // The last coding of the last field decides (a value that is not visible ASCII is no coding).
            let last = value.to_str().ok().and_then(|v| v.rsplit(',').next()).unwrap_or_default();
            te = Some(last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == CONTENT_LENGTH {
            has_length = true;
            if te.is_some() {
                continue;
            }
            let n = parse_decimal(value.as_bytes()).ok_or(HeadError::Malformed("Content-Length"))?;
            match length {
                Some(prev) if prev != n => return Err(HeadError::Malformed("Content-Length (several values)")),
                // The same length again: kept once.
                Some(_) => continue,
                None => length = Some(n),
            }
        } else if name == CONNECTION {
            if saw_close || has_token(value.as_bytes(), b"close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(value.as_bytes(), b"keep-alive");
            }
        } else if name == EXPECT {
            // RFC 9110 §10.1.1: ignored in an HTTP/1.0 request (as hyper does).
            expect_continue = http11 && value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == UPGRADE {
            wants_upgrade = http11;
        } else if name.as_str() == "close" {
            close_field = true;
        }
        headers.append(name, value);
    }
    if dropped_close && close_field {
        // `Connection: close` then also names a field called `close`, which goes with the hop-by-hop ones.
        headers.append(CONNECTION, HeaderValue::from_static("close"));
    }
    let body = match te {
        Some(false) => return Err(HeadError::Malformed("Transfer-Encoding not ending in chunked")),
        Some(true) => {
            if has_length {
                keep_alive = false;
            }
            BodyFraming::Chunked
        }
        None => BodyFraming::Length(length.unwrap_or(0)),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    *request.headers_mut() = headers;
    Ok(Some(ParsedRequest { request, body, keep_alive, expect_continue, wants_upgrade }))
}

/// A request field's name. The names clients send on nearly every request, spelled as browsers, curl and load
/// generators send them, are matched as they are (a length switch and a compare); others go through
/// `HeaderName::from_bytes`, which lowercases and checks every byte (as the backend side's response names).
fn field_name(raw: &[u8]) -> Result<HeaderName, HeadError> {
    use http::header;
    Ok(match raw {
        b"Host" | b"host" => header::HOST,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Connection" | b"connection" => CONNECTION,
        b"Content-Length" | b"content-length" => CONTENT_LENGTH,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Referer" | b"referer" => header::REFERER,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Origin" | b"origin" => header::ORIGIN,
        b"Transfer-Encoding" | b"transfer-encoding" => TRANSFER_ENCODING,
        _ => HeaderName::from_bytes(raw).map_err(|_| HeadError::Malformed("field name"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_size: 64 * 1024, max_fields: 100 };

    fn parse(text: &[u8]) -> Result<ParsedRequest, HeadError> {
        let mut buf = BytesMut::from(text);
        parse_request(&mut buf, LIMITS).map(|r| r.expect("complete"))
    }

    #[test]
    fn a_head_parses_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"POST /x?y HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc"[..]);
        let r = parse_request(&mut buf, LIMITS).unwrap().unwrap();
        assert_eq!(r.request.method(), Method::POST);
        assert_eq!(r.request.uri(), "/x?y");
        assert_eq!(r.request.headers()["host"], "a.test");
        assert_eq!(r.body, BodyFraming::Length(3));
        assert!(r.keep_alive && !r.expect_continue && !r.wants_upgrade);
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn a_partial_head_waits_and_a_huge_one_is_431() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHo"[..]);
        assert!(parse_request(&mut buf, LIMITS).unwrap().is_none());
        assert_eq!(buf.len(), 18, "nothing consumed");
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        big.extend_from_slice(&vec![b'a'; 64 * 1024]);
        assert_eq!(parse_request(&mut big, LIMITS).unwrap_err().status(), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let err = parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err();
        assert_eq!(err.status(), 431);
        let more = HeadLimits { max_fields: 200, ..LIMITS };
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert_eq!(parse_request(&mut buf, more).unwrap().unwrap().request.headers().len(), 101);
    }

    #[test]
    fn framing_follows_hyper() {
        let chunked = parse(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.body, BodyFraming::Chunked);
        assert!(!chunked.keep_alive, "CL with TE closes after");
        assert!(chunked.request.headers().get(CONTENT_LENGTH).is_none(), "the length goes");
        let te_first = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n").unwrap();
        assert_eq!(te_first.body, BodyFraming::Chunked);
        assert!(!te_first.keep_alive);
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, CHUNKED\r\n\r\n").unwrap().body,
            BodyFraming::Chunked
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").unwrap().body,
            BodyFraming::Length(3)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n").unwrap().body, BodyFraming::Length(0));
        for bad in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n: b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            let err = parse(bad).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn common_names_are_the_same_names_as_parsed() {
        for raw in [
            "Host",
            "User-Agent",
            "Accept",
            "Accept-Encoding",
            "Accept-Language",
            "Connection",
            "Content-Length",
            "Content-Type",
            "Cookie",
            "Referer",
            "Authorization",
            "Cache-Control",
            "Origin",
            "Transfer-Encoding",
        ] {
            for spelled in [raw.to_string(), raw.to_ascii_lowercase()] {
                let fast = field_name(spelled.as_bytes()).unwrap();
                assert_eq!(fast, HeaderName::from_bytes(spelled.as_bytes()).unwrap(), "{spelled}");
            }
        }
        assert_eq!(field_name(b"X-Custom").unwrap(), "x-custom");
        assert!(field_name(b"bad name").is_err());
    }

    #[test]
    fn keep_alive_expect_and_upgrade() {
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
        assert!(!parse(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n").unwrap().keep_alive);
        assert!(parse(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").unwrap().expect_continue);
        assert!(parse(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap().wants_upgrade);
        assert!(!parse(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").unwrap().wants_upgrade);
        assert!(parse(b"CONNECT a:443 HTTP/1.1\r\n\r\n").unwrap().wants_upgrade);
        let lf = parse(b"GET / HTTP/1.1\nHost: a.test\n\n").unwrap();
        assert_eq!(lf.request.headers()["host"], "a.test", "LF alone ends lines, as with hyper");
        let close = parse(b"GET / HTTP/1.1\r\nConnection: Close\r\nHost: a\r\n\r\n").unwrap();
        assert!(!close.keep_alive);
        assert!(close.request.headers().get(CONNECTION).is_none(), "taken by keep_alive, not in the map");
        let ka = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(ka.keep_alive && ka.request.headers().get(CONNECTION).is_none());
        for kept in [&b"close, x-hop"[..], b"Upgrade", b"keep-alive, upgrade", b"x-hop"] {
            let mut text = b"GET / HTTP/1.1\r\nConnection: ".to_vec();
            text.extend_from_slice(kept);
            text.extend_from_slice(b"\r\n\r\n");
            let r = parse(&text).unwrap();
            assert_eq!(r.request.headers()[CONNECTION].as_bytes(), kept, "other values stay for the proxy to read");
        }
        // A field named `close` is then named by `Connection: close`: the connection field stays to say so.
        let named = parse(b"GET / HTTP/1.1\r\nConnection: close\r\nClose: x\r\n\r\n").unwrap();
        assert_eq!(named.request.headers()[CONNECTION], "close");
        let abs = parse(b"GET http://a.test/x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(abs.request.uri().authority().map(|a| a.as_str()), Some("a.test"));
    }
}
