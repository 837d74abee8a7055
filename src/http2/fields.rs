//! A request's head from its decoded fields (RFC 9113 §8.3.1), judged as the `h2` crate judges it, so that what
//! it refused stays refused: pseudo-header fields first, each once, the known ones only; no connection-specific
//! field; `te` only as `trailers`; names in lowercase; a method, a scheme and a non-empty path (CONNECT aside).
//! A malformed request is an error of its stream alone (`PROTOCOL_ERROR`); a header list over the size allowed
//! is answered 431.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::http2::hpack::{Field, Known, STATIC};

/// The size a field counts for in `SETTINGS_MAX_HEADER_LIST_SIZE` (§6.5.2).
fn field_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A header block's fields as they are decoded: a request head, or trailers.
pub(super) struct Fields {
    max_size: usize,
    size: usize,
    /// A regular field has been seen: no pseudo-header field may follow.
    regular: bool,
    method: Option<Method>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: bool,
    status: Option<http::StatusCode>,
    headers: HeaderMap,
    /// What the `content-length` fields say, read as they come: see [`Fields::content_length`].
    content_length: Result<Option<u64>, ()>,
    malformed: Option<&'static str>,
}

/// What [`Fields::push`] makes of a field, kept as the memo of the HPACK table entry it came from
/// ([`Known::Entry`]): a field the peer sends again by index is not judged, parsed or copied again. An entry's
/// name and value never change, and neither does what they are judged to be.
#[derive(Debug, Clone)]
pub(super) enum Judged {
    /// A regular field, checked.
    Regular(HeaderName, HeaderValue),
    /// A pseudo-header field's value, copied once (its name is judged at every use: it says where it goes).
    Pseudo(Bytes),
    /// A field no request or response may carry.
    Malformed(&'static str),
}

/// A regular field's name and value, checked as `push` checks them; `name` already parsed when it is the
/// static table's.
fn judge(raw_name: &[u8], value: &[u8], parsed: Option<&HeaderName>) -> Judged {
    let name = match parsed {
        Some(name) => name.clone(),
        None => {
            if raw_name.iter().any(u8::is_ascii_uppercase) {
                return Judged::Malformed("a field name with uppercase letters");
            }
            let Ok(name) = HeaderName::from_bytes(raw_name) else {
                return Judged::Malformed("an invalid field name");
            };
            name
        }
    };
    // A name that parses is the octets it came as (lowercase), with no need to spell a standard name out again.
    if is_connection_specific_name(raw_name) {
        return Judged::Malformed("a connection-specific field");
    }
    if name == TE && value != b"trailers" {
        return Judged::Malformed("te other than \"trailers\"");
    }
    match HeaderValue::from_bytes(value) {
        Ok(value) => Judged::Regular(name, value),
        Err(_) => Judged::Malformed("an invalid field value"),
    }
}

/// The static table's regular names, parsed once (`None` for the pseudo-header fields').
fn static_name(index: usize) -> Option<&'static HeaderName> {
    static NAMES: OnceLock<Vec<Option<HeaderName>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| STATIC.iter().map(|(n, _)| HeaderName::from_bytes(n.as_bytes()).ok()).collect());
    names.get(index.checked_sub(1)?)?.as_ref()
}

/// Why a header block gives no request (or trailers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Larger than `SETTINGS_MAX_HEADER_LIST_SIZE`: answered 431.
    TooLarge,
    /// Malformed (§8.1.1): the stream is reset with `PROTOCOL_ERROR`.
    Malformed(&'static str),
}

impl Fields {
    pub(super) fn new(max_size: usize) -> Fields {
        Fields {
            max_size,
            size: 0,
            regular: false,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            protocol: false,
            status: None,
            headers: HeaderMap::new(),
            content_length: Ok(None),
            malformed: None,
        }
    }

    fn malformed(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// Takes one decoded field. Once the block is over size or malformed, fields are only counted.
    pub(super) fn push(&mut self, f: Field<'_, Judged>) {
        self.size = self.size.saturating_add(field_size(f.name, f.value));
        if self.size > self.max_size || self.malformed.is_some() {
            return;
        }
        if let Some(pseudo) = f.name.strip_prefix(b":") {
            if self.regular {
                return self.malformed("a pseudo-header field after a regular one");
            }
            let value = || match f.known {
                Known::Entry(memo) => match memo.get_or_init(|| Judged::Pseudo(Bytes::copy_from_slice(f.value))) {
                    Judged::Pseudo(value) => value.clone(),
                    _ => Bytes::copy_from_slice(f.value),
                },
                _ => Bytes::copy_from_slice(f.value),
            };
            match pseudo {
                b"method" if self.method.is_none() => match Method::from_bytes(f.value) {
                    Ok(m) => self.method = Some(m),
                    Err(_) => self.malformed("an invalid :method"),
                },
                b"scheme" if self.scheme.is_none() => self.scheme = Some(value()),
                b"authority" if self.authority.is_none() => self.authority = Some(value()),
                b"path" if self.path.is_none() => self.path = Some(value()),
                b"protocol" if !self.protocol => {
                    // Extended CONNECT (RFC 8441) is not offered: `SETTINGS_ENABLE_CONNECT_PROTOCOL` is not sent.
                    self.protocol = true;
                    self.malformed(":protocol, which this server does not offer");
                }
                b"method" | b"scheme" | b"authority" | b"path" | b"protocol" => {
                    self.malformed("a pseudo-header field twice")
                }
                b"status" if self.status.is_none() => match http::StatusCode::from_bytes(f.value) {
                    Ok(status) => self.status = Some(status),
                    Err(_) => self.malformed("an invalid :status"),
                },
                b"status" => self.malformed("a pseudo-header field twice"),
                _ => self.malformed("an unknown pseudo-header field"),
            }
            return;
        }
        self.regular = true;
        let judged = match f.known {
            // An indexed field is never sensitive: what the memo holds is the field as it is.
            Known::Entry(memo) => memo.get_or_init(|| judge(f.name, f.value, None)).clone(),
            Known::StaticName(index) => judge(f.name, f.value, static_name(index)),
            Known::Literal => judge(f.name, f.value, None),
        };
        let (name, mut value) = match judged {
            Judged::Regular(name, value) => (name, value),
            Judged::Malformed(why) => return self.malformed(why),
            Judged::Pseudo(_) => return self.malformed("an invalid field name"),
        };
        value.set_sensitive(f.sensitive);
        if name == CONTENT_LENGTH {
            self.content_length_field(&value);
        }
        // A map holds at most 24 576 distinct names: past that (a header list size set very large) the list is
        // too large, not a panic.
        if self.headers.try_append(name, value).is_err() {
            self.size = usize::MAX;
        }
    }

    /// One `content-length` field's value, as the `h2` crate judges it: digits only (HTTP/1.1's parser), and
    /// every field that gives one giving the same.
    fn content_length_field(&mut self, value: &HeaderValue) {
        let n = crate::http1::parse_decimal(value.as_bytes()).ok_or(());
        self.content_length = match (self.content_length, n) {
            (Ok(None), Ok(n)) => Ok(Some(n)),
            (Ok(Some(l)), Ok(n)) if l == n => Ok(Some(n)),
            _ => Err(()),
        };
    }

    /// The head's length, from its `content-length` fields, learned as they came (no lookup in the map after):
    /// `Err` when one is not digits or they disagree.
    pub(super) fn content_length(&self) -> Result<Option<u64>, ()> {
        self.content_length
    }

    fn check(&self) -> Result<(), Refused> {
        if self.size > self.max_size {
            return Err(Refused::TooLarge);
        }
        self.malformed.map_or(Ok(()), |why| Err(Refused::Malformed(why)))
    }

    /// The request the block's fields make, as the `h2` crate builds it (`Request<()>`, version HTTP/2; the
    /// URI with the scheme only when there is an authority).
    pub(super) fn into_request(self) -> Result<Request<()>, Refused> {
        self.check()?;
        let malformed = |why| Err(Refused::Malformed(why));
        if self.status.is_some() {
            return malformed(":status in a request");
        }
        let Some(method) = self.method else { return malformed("no :method") };
        let connect = method == Method::CONNECT;
        let mut parts = http::uri::Parts::default();
        if let Some(authority) = self.authority {
            match Authority::from_maybe_shared(authority) {
                Ok(a) => parts.authority = Some(a),
                Err(_) => return malformed("an invalid :authority"),
            }
        }
        match self.scheme {
            Some(_) if connect => return malformed(":scheme in CONNECT"),
            Some(scheme) => match Scheme::try_from(&scheme[..]) {
                Ok(s) if parts.authority.is_some() => parts.scheme = Some(s),
                Ok(_) => {}
                Err(_) => return malformed("an invalid :scheme"),
            },
            None if !connect => return malformed("no :scheme"),
            None => {}
        }
        match self.path {
            Some(_) if connect => return malformed(":path in CONNECT"),
            Some(path) if path.is_empty() => return malformed("an empty :path"),
            Some(path) => match PathAndQuery::from_maybe_shared(path) {
                Ok(p) => parts.path_and_query = Some(p),
                Err(_) => return malformed("an invalid :path"),
            },
            None if !connect => return malformed("no :path"),
            None => {}
        }
        let Ok(uri) = Uri::from_parts(parts) else { return malformed("no URI can be made of the request") };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Ok(req)
    }

    /// The block as trailers: regular fields only.
    pub(super) fn into_trailers(self) -> Result<HeaderMap, Refused> {
        self.check()?;
        if self.has_request_fields() || self.status.is_some() {
            return Err(Refused::Malformed("a pseudo-header field in trailers"));
        }
        Ok(self.headers)
    }

    fn has_request_fields(&self) -> bool {
        self.method.is_some() || self.scheme.is_some() || self.authority.is_some() || self.path.is_some()
    }

    /// The block as a response head: `:status` and regular fields.
    pub(super) fn into_response(self) -> Result<http::response::Parts, Refused> {
        self.check()?;
        if self.has_request_fields() || self.protocol {
            return Err(Refused::Malformed("a request's pseudo-header field in a response"));
        }
        let Some(status) = self.status else { return Err(Refused::Malformed("no :status")) };
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = status;
        head.version = Version::HTTP_2;
        head.headers = self.headers;
        Ok(head)
    }
}

/// The fields HTTP/2 forbids (RFC 9113 §8.2.2): refused in what the peer sends, left out of what this side sends.
pub(super) fn is_connection_specific(name: &http::header::HeaderName) -> bool {
    is_connection_specific_name(name.as_str().as_bytes())
}

pub(super) fn is_connection_specific_name(name: &[u8]) -> bool {
    matches!(name, b"connection" | b"transfer-encoding" | b"upgrade" | b"keep-alive" | b"proxy-connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Fields {
        let mut f = Fields::new(16 * 1024);
        for (name, value) in list {
            f.push(Field { name: name.as_bytes(), value: value.as_bytes(), sensitive: false, known: Known::Literal });
        }
        f
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "https"), (":authority", "a.test"), (":path", "/x?y")];

    #[test]
    fn a_request_is_built_as_the_h2_crate_builds_it() {
        let mut list = GET.to_vec();
        list.extend([("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")]);
        let req = fields(&list).into_request().unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "https://a.test/x?y");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers().get_all("cookie").iter().count(), 2);
        assert_eq!(req.headers()["te"], "trailers");
        // Without :authority, the URI is the path alone.
        let req = fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]).into_request().unwrap();
        assert_eq!(req.uri(), "/");
        // CONNECT: an authority, no scheme, no path.
        let req = fields(&[(":method", "CONNECT"), (":authority", "a.test:443")]).into_request().unwrap();
        assert_eq!(req.uri().authority().unwrap(), "a.test:443");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut list = GET.to_vec();
            list.extend_from_slice(extra);
            fields(&list).into_request().unwrap_err()
        };
        for (extra, why) in [
            (&[("connection", "close")][..], "a connection-specific field"),
            (&[("transfer-encoding", "chunked")], "a connection-specific field"),
            (&[("upgrade", "h2c")], "a connection-specific field"),
            (&[("keep-alive", "1")], "a connection-specific field"),
            (&[("proxy-connection", "x")], "a connection-specific field"),
            (&[("te", "gzip")], "te other than \"trailers\""),
            (&[("Accept", "x")], "a field name with uppercase letters"),
            (&[("a b", "x")], "an invalid field name"),
            (&[("x", "a\nb")], "an invalid field value"),
            (&[("accept", "x"), (":path", "/")], "a pseudo-header field after a regular one"),
            (&[(":path", "/again")], "a pseudo-header field twice"),
            (&[(":status", "200")], ":status in a request"),
            (&[(":foo", "x")], "an unknown pseudo-header field"),
            (&[(":protocol", "websocket")], ":protocol, which this server does not offer"),
        ] {
            assert_eq!(with(extra), Refused::Malformed(why), "{extra:?}");
        }
        let refused = |list: &[(&str, &str)]| fields(list).into_request().unwrap_err();
        assert_eq!(refused(&[(":scheme", "http"), (":path", "/")]), Refused::Malformed("no :method"));
        assert_eq!(refused(&[(":method", "GET"), (":path", "/")]), Refused::Malformed("no :scheme"));
        assert_eq!(refused(&[(":method", "GET"), (":scheme", "http")]), Refused::Malformed("no :path"));
        assert_eq!(
            refused(&[(":method", "GET"), (":scheme", "http"), (":path", "")]),
            Refused::Malformed("an empty :path")
        );
        assert_eq!(
            refused(&[(":method", "CONNECT"), (":scheme", "http"), (":authority", "a:1")]),
            Refused::Malformed(":scheme in CONNECT")
        );
    }

    #[test]
    fn a_header_list_over_its_size_is_too_large_whatever_else_it_holds() {
        let mut f = Fields::new(100);
        for (n, v) in GET {
            f.push(Field { name: n.as_bytes(), value: v.as_bytes(), sensitive: false, known: Known::Literal });
        }
        f.push(Field { name: b"x", value: &[b'v'; 100], sensitive: false, known: Known::Literal });
        f.push(Field { name: b"Bad", value: b"", sensitive: false, known: Known::Literal });
        assert_eq!(f.into_request().unwrap_err(), Refused::TooLarge);
    }

    #[test]
    fn a_memo_judges_a_field_once_and_is_trusted_after() {
        let memo = std::cell::OnceCell::new();
        let entry = |name: &'static str, value: &'static str, memo| Field {
            name: name.as_bytes(),
            value: value.as_bytes(),
            sensitive: false,
            known: Known::Entry(memo),
        };
        let mut f = fields(&GET);
        f.push(entry("x-kept", "1", &memo));
        assert!(matches!(memo.get(), Some(Judged::Regular(n, v)) if n == "x-kept" && v == "1"));
        // What the memo holds is what the entry's next reference gives.
        f.push(entry("x-kept", "1", &memo));
        assert_eq!(f.into_request().unwrap().headers().get_all("x-kept").iter().count(), 2);
        // A field judged malformed stays malformed at every reference.
        let bad = std::cell::OnceCell::new();
        for _ in 0..2 {
            let mut f = fields(&GET);
            f.push(entry("te", "gzip", &bad));
            assert_eq!(f.into_request().unwrap_err(), Refused::Malformed("te other than \"trailers\""));
        }
        // A pseudo-header field's memo is its value, copied once.
        let path = std::cell::OnceCell::new();
        let mut f = fields(&GET[..3]);
        f.push(entry(":path", "/p", &path));
        assert!(matches!(path.get(), Some(Judged::Pseudo(v)) if v == "/p"));
        assert_eq!(f.into_request().unwrap().uri(), "https://a.test/p");
        // A static name (31: content-type) is taken parsed; the static table's transfer-encoding (57) is still
        // connection-specific.
        let named = |index: usize, value: &'static str| Field {
            name: STATIC[index - 1].0.as_bytes(),
            value: value.as_bytes(),
            sensitive: false,
            known: Known::StaticName(index),
        };
        let mut f = fields(&GET);
        f.push(named(31, "text/plain"));
        assert_eq!(f.into_request().unwrap().headers()["content-type"], "text/plain");
        let mut f = fields(&GET);
        f.push(named(57, "chunked"));
        assert_eq!(f.into_request().unwrap_err(), Refused::Malformed("a connection-specific field"));
    }

    #[test]
    fn the_content_length_is_learned_as_the_fields_come() {
        let length = |list: &[(&str, &str)]| {
            let mut all = GET.to_vec();
            all.extend_from_slice(list);
            fields(&all).content_length()
        };
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&[("content-length", "5")]), Ok(Some(5)));
        assert_eq!(length(&[("content-length", "5"), ("content-length", "5")]), Ok(Some(5)));
        assert_eq!(length(&[("content-length", "5"), ("content-length", "6")]), Err(()));
        assert_eq!(length(&[("content-length", "+5")]), Err(()));
        assert_eq!(length(&[("content-length", "")]), Err(()));
    }

    #[test]
    fn trailers_take_regular_fields_only() {
        assert_eq!(fields(&[("grpc-status", "0")]).into_trailers().unwrap()["grpc-status"], "0");
        assert_eq!(
            fields(&[(":path", "/")]).into_trailers().unwrap_err(),
            Refused::Malformed("a pseudo-header field in trailers")
        );
    }
}
