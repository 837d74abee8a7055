//! HPACK's encoder side: a field as a static-table index where the static table holds it whole, else as a
//! literal (§6.2), its name a static index where the table has the name. No Huffman.
//!
//! [`put_field`] keeps no state: a literal that is not indexed (§6.2.2). A connection's [`Encoder`] keeps a
//! dynamic table in step with the peer's decoder: a field it has sent before is one index (§6.1), and a field
//! worth keeping is sent the first time as a literal with incremental indexing (§6.2.1). Requests to a backend
//! and responses to a client repeat most of their fields (`:authority`, `content-type`, `te`, `user-agent`, the
//! forwarding fields, `grpc-status`), and a field sent by index is the cheapest there is for the peer to decode:
//! the `h2` crate and nghttp2 clone it out of their table instead of parsing and checking it again.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use bytes::{BufMut, BytesMut};

use super::table::ENTRY_OVERHEAD;
use super::DEFAULT_TABLE_SIZE;

/// Which fields an encoder puts in its table. A connection's table is shared by everything sent on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Indexing {
    /// Responses to one client: every field but those whose values change from one message to the next (the `h2`
    /// crate's list), and never a sensitive one.
    Responses,
    /// Requests to a backend, from every client whose requests the connection carries: only the fields named in
    /// [`indexed_in_requests`], whose values are no secret and repeat across clients. A field in a table shared
    /// between clients is a side channel (RFC 7541 §7.1): one who can send requests and see the size of what goes
    /// to the backend could tell whether a guess of another client's value is in the table (an index is shorter
    /// than a literal). Per-request values (`x-forwarded-for`, trace ids, tokens) also stay out, and do not push
    /// out the fields that repeat.
    Requests,
}

/// A connection's encoder: its dynamic table, as the peer's decoder holds it.
pub(crate) struct Encoder {
    indexing: Indexing,
    /// The newest first, as the indices count (§2.3.3): index 62 is the front.
    entries: VecDeque<Entry>,
    size: usize,
    /// The table's size, at most the peer's `SETTINGS_HEADER_TABLE_SIZE` and at most [`DEFAULT_TABLE_SIZE`].
    max_size: usize,
    /// Changes of `max_size` the peer has not been told of, as the smallest and the last: the next header block
    /// starts with them (§4.2: the smallest first, since the table was evicted down to it).
    update: Option<(usize, usize)>,
    /// Entries ever inserted: an entry's number is the count before it.
    inserted: u64,
    /// Each entry's number by the hash of its name and value (an entry whose hash another took is not found:
    /// it is sent as a literal, which is always correct).
    by_hash: HashMap<u64, u64, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
    hash: u64,
}

impl Encoder {
    /// An empty table of the size every peer allows until its SETTINGS say otherwise.
    pub(crate) fn new(indexing: Indexing) -> Encoder {
        Encoder {
            indexing,
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            update: None,
            inserted: 0,
            by_hash: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The peer's `SETTINGS_HEADER_TABLE_SIZE`: the table shrinks to it at once (the peer's decoder applies it
    /// once it has this side's acknowledgement, which goes out before any header block encoded from now on),
    /// and the next header block says so.
    pub(crate) fn set_peer_limit(&mut self, limit: usize) {
        let max = limit.min(DEFAULT_TABLE_SIZE);
        if max != self.max_size {
            self.max_size = max;
            self.evict_to(max);
            let smallest = self.update.map_or(max, |(smallest, _)| smallest.min(max));
            self.update = Some((smallest, max));
        }
    }

    /// Starts a header block: a size change the peer has not been told of goes first (§4.2).
    pub(crate) fn begin(&mut self, out: &mut BytesMut) {
        if let Some((smallest, last)) = self.update.take() {
            if smallest != last {
                put_integer(out, smallest, 5, 0x20);
            }
            put_integer(out, last, 5, 0x20);
        }
    }

    /// Writes one field, as [`put_field`] does, but by index when the dynamic table holds it, and indexed for
    /// next time when it is worth keeping.
    pub(crate) fn put_field(&mut self, out: &mut BytesMut, name: &[u8], value: &[u8], sensitive: bool) {
        let worth = match self.indexing {
            Indexing::Responses => worth_indexing(name),
            Indexing::Requests => indexed_in_requests(name),
        };
        if sensitive || !worth {
            return put_field(out, name, value, sensitive);
        }
        if let Some(index) = static_field(name, value) {
            out.put_u8(0x80 | index);
            return;
        }
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // A field that would take more than a quarter of the table would push out the fields that repeat.
        if size > self.max_size / 4 {
            return put_field(out, name, value, false);
        }
        let hash = self.hasher.hash_one((name, value));
        if let Some(index) = self.find(hash, name, value) {
            return put_integer(out, index, 7, 0x80);
        }
        match static_name(name) {
            Some(index) => put_integer(out, usize::from(index), 6, 0x40),
            None => {
                out.put_u8(0x40);
                put_integer(out, name.len(), 7, 0);
                out.put_slice(name);
            }
        }
        put_integer(out, value.len(), 7, 0);
        out.put_slice(value);
        self.insert(hash, name, value, size);
    }

    /// The index of the entry holding `name` and `value`, if there is one.
    fn find(&self, hash: u64, name: &[u8], value: &[u8]) -> Option<usize> {
        let number = *self.by_hash.get(&hash)?;
        // The newest entry's number is `inserted - 1`, at index 62.
        let position = usize::try_from(self.inserted - 1 - number).ok()?;
        let e = self.entries.get(position)?;
        let same = e.hash == hash && e.bytes.len() == name.len() + value.len() && e.bytes[..e.name_len] == *name;
        (same && e.bytes[e.name_len..] == *value).then_some(super::STATIC.len() + 1 + position)
    }

    /// Adds an entry as the peer's decoder does on a literal with incremental indexing (§4.4): the oldest go
    /// until it fits. `size` is never above `max_size` here.
    fn insert(&mut self, hash: u64, name: &[u8], value: &[u8], size: usize) {
        self.evict_to(self.max_size - size);
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front(Entry { bytes: bytes.into_boxed_slice(), name_len: name.len(), hash });
        self.by_hash.insert(hash, self.inserted);
        self.inserted += 1;
        self.size += size;
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(old) = self.entries.pop_back() else { break };
            self.size -= old.bytes.len() + ENTRY_OVERHEAD;
            // The oldest entry's number: the newest's, less the entries left after it.
            let number = self.inserted - 1 - self.entries.len() as u64;
            if self.by_hash.get(&old.hash) == Some(&number) {
                self.by_hash.remove(&old.hash);
            }
        }
    }

    /// The entries in the table (for the tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The entry at `index` (1 for the newest), as name and value (for the tests).
    #[cfg(test)]
    pub(crate) fn entry(&self, index: usize) -> (&[u8], &[u8]) {
        let e = &self.entries[index - 1];
        (&e.bytes[..e.name_len], &e.bytes[e.name_len..])
    }
}

/// The fields a request to a backend indexes (see [`Indexing::Requests`]): what describes the request's kind and
/// the proxy's own, the same for every client of a service.
fn indexed_in_requests(name: &[u8]) -> bool {
    matches!(
        name,
        b":authority"
            | b":method"
            | b":scheme"
            | b"accept"
            | b"accept-encoding"
            | b"accept-language"
            | b"cache-control"
            | b"content-type"
            | b"grpc-accept-encoding"
            | b"grpc-encoding"
            | b"te"
            | b"user-agent"
            | b"x-forwarded-host"
            | b"x-forwarded-proto"
    )
}

/// Whether a response's field is worth a place in the table: not one whose value changes from one message to the
/// next (the `h2` crate's list: a request's path, lengths, validators, cookies, dates of a resource).
fn worth_indexing(name: &[u8]) -> bool {
    !matches!(
        name,
        b":path"
            | b"age"
            | b"authorization"
            | b"content-length"
            | b"etag"
            | b"if-modified-since"
            | b"if-none-match"
            | b"location"
            | b"cookie"
            | b"set-cookie"
    )
}

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
