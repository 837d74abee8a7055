//! The hop-by-hop fields (RFC 9110 §7.6.1): the names every message loses at a hop, whichever side reads or
//! writes it. The backend side drops them from responses as it parses them (`upstream::codec`), the downstream
//! side strips them from requests (`proxy::headers`).

use bytes::BytesMut;
use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue};

/// Writes one field of a head: `name: value` and CRLF (request and response heads, trailers).
#[inline]
pub(crate) fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Where a parsed field's name and value are in its head, as `u32`s (a head is far below 4 GiB): each parser
/// keeps its own four numbers (starts and ends, or starts and lengths).
pub(crate) type FieldAt = (u32, u32, u32, u32);

/// `count` zeroed places for a head's fields: in `stack` when they fit, else in `heap`. Zeroing a table for the
/// most fields a head may have, on every head, cost up to 3 200 instructions of `memset` a request.
#[inline]
pub(crate) fn field_places<'a, const N: usize>(
    stack: &'a mut [FieldAt; N],
    heap: &'a mut Vec<FieldAt>,
    count: usize,
) -> &'a mut [FieldAt] {
    if count <= N {
        &mut stack[..count]
    } else {
        heap.resize(count, (0, 0, 0, 0));
        heap
    }
}

/// The hop-by-hop fields every message loses (RFC 9110 §7.6.1, and the obsolete `Proxy-Connection`).
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// The position of `name` in [`HOP_BY_HOP`]: a match on the lowercase name (a length switch, then a compare).
pub(crate) fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "te" => Some(2),
        "trailer" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "proxy-connection" => Some(6),
        _ => None,
    }
}

/// A field that never passes a hop by itself: `Connection` (which may name others), the fixed list, and every
/// `Proxy-*` field.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some() || name.as_str().starts_with("proxy-")
}

/// A field named by a `Connection` token that must go beyond the fixed list (which goes anyway), if the token
/// names one: never `Host` (`Connection: host` must not make a request lose its Host).
pub(crate) fn connection_named(token: &[u8]) -> Option<HeaderName> {
    let token = token.trim_ascii();
    if token.is_empty() || HOP_BY_HOP.iter().any(|f| token.eq_ignore_ascii_case(f.as_str().as_bytes())) {
        return None;
    }
    HeaderName::from_bytes(token).ok().filter(|name| *name != HOST)
}

/// Whether a comma-separated field value (`Connection`) holds `token`, in any case.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&HOST), None);
    }

    #[test]
    fn connection_tokens() {
        assert!(has_token(b"Upgrade, close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert_eq!(connection_named(b" X-Hop "), Some(HeaderName::from_static("x-hop")));
        assert_eq!(connection_named(b"host"), None);
        assert_eq!(connection_named(b"Keep-Alive"), None);
    }
}
