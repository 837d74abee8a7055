//! HPACK's two tables (RFC 7541 §2.3): the static table of Appendix A, and a connection's dynamic table.

use std::cell::OnceCell;
use std::collections::VecDeque;

/// RFC 7541, Appendix A: index 1 is the first entry.
pub(crate) const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// An entry as a lookup gives it: name, value, and its user's memo.
pub(crate) type EntryRef<'t, M> = (&'t [u8], &'t [u8], &'t OnceCell<M>);

/// What an entry costs in the table beside its octets (§4.1), in a decoder's table and an encoder's alike.
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// One entry: its name and value in one allocation, and its user's memo.
struct Entry<M> {
    bytes: Box<[u8]>,
    name_len: usize,
    memo: OnceCell<M>,
}

impl<M> Entry<M> {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// A decoder's dynamic table: the newest entry first (index 62), the oldest evicted first.
pub(crate) struct Dynamic<M> {
    entries: VecDeque<Entry<M>>,
    size: usize,
    max_size: usize,
}

impl<M> Dynamic<M> {
    pub(crate) fn new(max_size: usize) -> Dynamic<M> {
        Dynamic { entries: VecDeque::new(), size: 0, max_size }
    }

    /// The entry at `index` (1 for the newest), as name, value and memo.
    pub(crate) fn get(&self, index: usize) -> Option<EntryRef<'_, M>> {
        let e = self.entries.get(index.checked_sub(1)?)?;
        Some((e.name(), e.value(), &e.memo))
    }

    /// Adds an entry, evicting the oldest until it fits; an entry larger than the whole table empties it and is
    /// not added (§4.4).
    pub(crate) fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict_to(self.max_size.saturating_sub(size));
        if size > self.max_size {
            return;
        }
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front(Entry { bytes: bytes.into_boxed_slice(), name_len: name.len(), memo: OnceCell::new() });
        self.size += size;
    }

    /// A size update from the encoder (§6.3), already checked against the limit the decoder allows.
    pub(crate) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(old) = self.entries.pop_back() else { break };
            self.size -= old.size();
        }
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
