//! HPACK's encoder side: a field as a static-table index where the static table holds it whole, else as a
//! literal that is not indexed (§6.2.2), its name a static index where the table has the name. No Huffman, no
//! dynamic table: nothing to keep in step with the peer's decoder, and every field costs what it says.

use bytes::{BufMut, BytesMut};

/// Writes `:status` (§8.3.2 of RFC 9113): one octet for the seven codes the static table holds.
pub(crate) fn put_status(out: &mut BytesMut, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            // Literal, not indexed, name index 8; always three digits.
            let digits =
                [b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8];
            out.put_slice(&[0x08, 3]);
            out.put_slice(&digits);
            return;
        }
    };
    out.put_u8(0x80 | index);
}

/// Writes one field. `name` must be lowercase, as HTTP/2 requires (`http::HeaderName`s are). A `sensitive`
/// field is written never-indexed (§6.2.3), so the next hop does not index it either.
pub(crate) fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8], sensitive: bool) {
    if !sensitive {
        if let Some(index) = static_field(name, value) {
            out.put_u8(0x80 | index);
            return;
        }
    }
    let first = if sensitive { 0x10 } else { 0x00 };
    match static_name(name) {
        Some(index) => put_integer(out, usize::from(index), 4, first),
        None => {
            out.put_u8(first);
            put_integer(out, name.len(), 7, 0);
            out.put_slice(name);
        }
    }
    put_integer(out, value.len(), 7, 0);
    out.put_slice(value);
}

/// The static entries worth matching whole (a request's usual pseudo-header values).
fn static_field(name: &[u8], value: &[u8]) -> Option<u8> {
    match (name, value) {
        (b":method", b"GET") => Some(2),
        (b":method", b"POST") => Some(3),
        (b":path", b"/") => Some(4),
        (b":scheme", b"http") => Some(6),
        (b":scheme", b"https") => Some(7),
        _ => None,
    }
}

/// The static table's first index for `name`.
fn static_name(name: &[u8]) -> Option<u8> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// An integer with an N-bit prefix (§5.1); `first` holds the bits above the prefix.
fn put_integer(out: &mut BytesMut, mut value: usize, prefix: u8, first: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.put_u8(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::hpack::table::STATIC;

    #[test]
    fn every_static_name_maps_to_its_first_index() {
        for (i, (name, _)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(static_name(name.as_bytes()), Some(first as u8), "{name} at {}", i + 1);
        }
        assert_eq!(static_name(b"grpc-status"), None);
    }

    #[test]
    fn integers_are_written_as_rfc_7541_c_1_has_them() {
        let mut out = BytesMut::new();
        put_integer(&mut out, 10, 5, 0);
        put_integer(&mut out, 1337, 5, 0);
        put_integer(&mut out, 42, 8, 0);
        assert_eq!(&out[..], [0x0a, 0x1f, 0x9a, 0x0a, 0x2a]);
    }
}
