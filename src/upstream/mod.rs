//! The backend side: reveille's own HTTP/1.1 client, its connections and their pool; and HTTP/2 to backends
//! (`h2`: the `h2` crate's client on a few multiplexed connections per backend, a stream leased per request).
//!
//! Cut by what each part does, as pingora's layout is: the codec (`codec`: heads, framing, chunks, trailers,
//! hop-by-hop names; pure), a connection's bytes (`wire`: the socket and its buffers), one exchange (`exchange`:
//! [`send`] and the response body), the pool (`pool`: generic, knows no HTTP), opening connections
//! (`connect`: checkout or connect; `tls`: a service's TLS settings and pool, for `https://` backends) and the
//! errors (`error`). The files import downwards only (`codec` and
//! `pool` below `wire`, below `exchange` and `connect`), and nothing here knows the proxy: the proxy takes a
//! connection ([`Connector`]), sends on it, and puts it back in the pool once the response has been read to
//! its end ([`UpstreamBody::take_reusable`], [`Pooled::release`](pool::Pooled::release)).
//! `docs/design/upstream.md` says why.

mod codec;
mod connect;
mod error;
mod exchange;
mod get;
mod h2;
mod pool;
mod tls;
mod wire;

pub(crate) use self::h2::{H2Failure, H2Head, H2RequestBody, H2SendError, PutField};
pub(crate) use codec::{connection_named, hop_by_hop_index, HOP_BY_HOP};
pub(crate) use codec::{Appended, RawFields};
pub(crate) use connect::{Conn, ConnectSettings, Connector, TlsConnected};
pub(crate) use error::{source_chain, ConnectError, UpstreamError};
pub(crate) use exchange::{send, RequestHead, SendBody, SendError, UpstreamBody};
pub(crate) use get::{get_status, GetError};
pub(crate) use pool::{set_worker, worker};
pub(crate) use tls::{Alpn, BackendTls, TlsOptions, TlsSetupError};
pub(crate) use wire::{Prefixed, Upgraded};

/// The codec's two steps every proxied request takes, for the criterion benchmark `benches/upstream_codec.rs`
/// only: not an API.
#[doc(hidden)]
pub mod bench {
    use bytes::BytesMut;
    use http::{HeaderMap, Method};

    use super::codec::{encode_head, parse_head};

    /// Writes a bodiless request head into `out`.
    pub fn encode_request(out: &mut BytesMut, method: &Method, target: &str, headers: &HeaderMap) {
        encode_head(out, method, target, headers, &super::Appended::default(), Some(0));
    }

    /// Parses the response head at the start of `buf` (taking it off); the number of header fields.
    pub fn parse_response(buf: &mut BytesMut) -> Option<usize> {
        parse_head(buf, false).ok().flatten().map(|h| h.parts.headers.len())
    }
}
