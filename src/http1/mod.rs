//! HTTP/1.1 on the wire, for both sides of the proxy: what reveille's HTTP/1.1 client (`upstream`) and its
//! server side (`proxy`) share, below both (pingora keeps its `protocols/http/v1/body.rs` under its client and
//! its server alike). Pure: no socket, no timers, no knowledge of the proxy or of backends.
//!
//! - `fields`: the hop-by-hop field names every message loses at a hop, and `Connection`'s tokens.
//! - `body`: framing — a `Content-Length` value, the chunked decoder (one state machine for request and response
//!   bodies) and the chunked encoder's pieces.
//! - `request`: the server side's request head, parsed with `httparse` and judged by hyper's rules (what hyper
//!   refused stays refused, with the same status).

mod body;
mod fields;
mod request;

pub(crate) use body::{chunk_size_line, last_chunk, parse_decimal, Chunked, Decoded};
pub(crate) use fields::{
    connection_named, field_places, has_token, hop_by_hop_index, is_hop_by_hop, put_field, FieldAt, HOP_BY_HOP,
};
pub(crate) use request::{parse_request, BodyFraming, HeadLimits};

/// The server side's request-head parser, for the criterion benchmark `benches/http1.rs` only: not an API.
#[doc(hidden)]
pub mod bench {
    use bytes::BytesMut;

    use super::{parse_request, HeadLimits};

    /// Parses the request head at the start of `buf` (taking it off) with reveille's default limits; the number
    /// of header fields, or `None` when it is incomplete or refused.
    pub fn parse_request_head(buf: &mut BytesMut) -> Option<usize> {
        let limits = HeadLimits { max_size: 64 * 1024, max_fields: 100 };
        parse_request(buf, limits).ok().flatten().map(|r| r.request.headers().len())
    }
}
