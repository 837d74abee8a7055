//! HPACK, HTTP/2's header compression (RFC 7541).
//!
//! The decoder hands each field to a callback as slices — of the header block itself, of the dynamic table, or
//! of a scratch buffer a Huffman-coded string was decoded into — so a request's fields go from the wire to
//! their destination with no list built in between (HAProxy's `hpack-dec.c` decodes into a caller's array
//! the same way). The encoder writes no Huffman. A connection's [`Encoder`] keeps a dynamic table in step with the
//! peer's decoder and sends a field it has sent before as one index (see `encode.rs` for which fields it keeps).
//!
//! Each dynamic table entry keeps a memo beside it (a `OnceCell` of the decoder's user's type): what the user made
//! of the field the first time (for reveille, a checked `HeaderName` and `HeaderValue`), handed back with every
//! later reference to the entry. A static entry is handed out by its index, for the user to keep what it knows of
//! the static table once per process. A peer's encoder indexes the fields it repeats, so on a busy connection
//! most fields are references, and each is judged once per entry instead of once per request.

mod encode;
mod huffman;
mod table;

#[cfg(test)]
pub(crate) use encode::put_field;
pub(crate) use encode::{put_status, Encoder, Indexing};
use std::cell::OnceCell;

use table::Dynamic;
pub(crate) use table::STATIC;

/// The size of the dynamic table a decoder allows by default (`SETTINGS_HEADER_TABLE_SIZE`'s initial value).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// A header block that does not decode. Each is a connection error of type `COMPRESSION_ERROR` (RFC 9113 §4.3):
/// the decoder's table can no longer be trusted to match the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an integer in the header block is too large")]
    Integer,
    #[error("index {0} is in neither table")]
    Index(usize),
    #[error("a string's Huffman code does not decode")]
    Huffman,
    #[error("a table size update to {0} octets, above the {1} allowed")]
    TableSize(usize, usize),
    #[error("a table size update after a field")]
    LateSizeUpdate,
}

/// One decoded field. `sensitive` is the never-indexed representation (§6.2.3): an intermediary must pass it
/// on the same way.
#[derive(Debug)]
pub(crate) struct Field<'a, M = ()> {
    pub(crate) name: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) sensitive: bool,
    /// What the tables know of the field.
    pub(crate) known: Known<'a, M>,
}

/// Where a decoded field came from, so that its user need not judge it again.
#[derive(Debug)]
pub(crate) enum Known<'a, M> {
    /// A literal name and value.
    Literal,
    /// The whole field is a dynamic table entry (an indexed field, §6.1): the entry's memo. It lives as long as
    /// the entry and always stands for the same name and value; whatever a user puts in it is handed back at the
    /// entry's next reference.
    Entry(&'a OnceCell<M>),
    /// The name (and, for an indexed field, the value too) of the static table's entry at this index (1 for the
    /// first).
    StaticName(usize),
}

impl<M> Clone for Known<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Known<'_, M> {}

/// A connection's HPACK decoder: the dynamic table the peer's encoder fills (with a memo of type `M` beside each
/// entry), and two scratch buffers for Huffman-coded strings.
pub(crate) struct Decoder<M = ()> {
    table: Dynamic<M>,
    /// The largest table the peer may ask for: the `SETTINGS_HEADER_TABLE_SIZE` this side advertised.
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl<M> Decoder<M> {
    pub(crate) fn new(limit: usize) -> Decoder<M> {
        Decoder { table: Dynamic::new(limit), limit, name: Vec::new(), value: Vec::new() }
    }

    /// Decodes one whole header block (HEADERS and its CONTINUATIONs, put together), handing every field to
    /// `each` in order. The whole block is always decoded, whatever the callback does with the fields: the
    /// table must follow every insertion the peer made. After an error the decoder must not be used again.
    pub(crate) fn decode(&mut self, mut src: &[u8], mut each: impl FnMut(Field<'_, M>)) -> Result<(), DecodeError> {
        let Decoder { table, limit, name: name_buf, value: value_buf } = self;
        let mut fields = false;
        while let Some(&first) = src.first() {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(&mut src, 7)?;
                each(lookup(table, index)?);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the block's first field (§4.2).
                if fields {
                    return Err(DecodeError::LateSizeUpdate);
                }
                let size = integer(&mut src, 5)?;
                if size > *limit {
                    return Err(DecodeError::TableSize(size, *limit));
                }
                table.set_max_size(size);
                continue;
            } else {
                // A literal (§6.2): with incremental indexing (01), never indexed (0001) or not indexed (0000).
                let (prefix, indexing, sensitive) = match first {
                    _ if first & 0x40 != 0 => (6, true, false),
                    _ if first & 0x10 != 0 => (4, false, true),
                    _ => (4, false, false),
                };
                let index = integer(&mut src, prefix)?;
                let mut known = Known::Literal;
                let name: &[u8] = if index == 0 {
                    match string(&mut src, name_buf)? {
                        Some(raw) => raw,
                        None => name_buf.as_slice(),
                    }
                } else if index <= STATIC.len() {
                    known = Known::StaticName(index);
                    STATIC[index - 1].0.as_bytes()
                } else {
                    // Copied out of the table, which the insertion below may change.
                    let name = lookup(table, index)?.name;
                    name_buf.clear();
                    name_buf.extend_from_slice(name);
                    name_buf.as_slice()
                };
                let value: &[u8] = match string(&mut src, value_buf)? {
                    Some(raw) => raw,
                    None => value_buf.as_slice(),
                };
                each(Field { name, value, sensitive, known });
                if indexing {
                    table.insert(name, value);
                }
            }
            fields = true;
        }
        Ok(())
    }

    #[cfg(test)]
    fn table(&self) -> &Dynamic<M> {
        &self.table
    }

    /// The entries in the dynamic table (for the tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.table.len()
    }
}

/// The entry at `index` in either table (1 for the static table's first), as an indexed field: its name, its
/// value, and what is known of it (a dynamic entry's memo, or the static index).
fn lookup<M>(table: &Dynamic<M>, index: usize) -> Result<Field<'_, M>, DecodeError> {
    let (name, value, known) = match index {
        0 => return Err(DecodeError::Index(0)),
        1..=61 => {
            let (name, value) = STATIC[index - 1];
            (name.as_bytes(), value.as_bytes(), Known::StaticName(index))
        }
        _ => {
            let (name, value, memo) = table.get(index - STATIC.len()).ok_or(DecodeError::Index(index))?;
            (name, value, Known::Entry(memo))
        }
    };
    Ok(Field { name, value, sensitive: false, known })
}

/// An integer with an N-bit prefix (§5.1), taken off the front of `src`. Values stop below 2^28 plus the prefix:
/// larger ones describe nothing a header block of reveille's sizes can hold.
fn integer(src: &mut &[u8], prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1u8 << prefix) - 1;
    let (&first, mut rest) = src.split_first().ok_or(DecodeError::Truncated)?;
    let mut value = usize::from(first & mask);
    if value == usize::from(mask) {
        let mut shift = 0;
        loop {
            let (&b, r) = rest.split_first().ok_or(DecodeError::Truncated)?;
            rest = r;
            if shift > 21 {
                return Err(DecodeError::Integer);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *src = rest;
    Ok(value)
}

/// A string literal (§5.2) taken off the front of `src`: the raw octets when it is not Huffman-coded, `None`
/// when it was decoded into `buf`.
fn string<'s>(src: &mut &'s [u8], buf: &mut Vec<u8>) -> Result<Option<&'s [u8]>, DecodeError> {
    let huffman = src.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer(src, 7)?;
    if len > src.len() {
        return Err(DecodeError::Truncated);
    }
    let (raw, rest) = src.split_at(len);
    *src = rest;
    if !huffman {
        return Ok(Some(raw));
    }
    buf.clear();
    huffman::decode(raw, buf).map_err(|_| DecodeError::Huffman)?;
    Ok(None)
}

#[cfg(test)]
mod tests;
