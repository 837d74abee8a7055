//! HTTP/2 on the wire, for both sides of the proxy, as `http1` is for HTTP/1.1: pure, no socket, no knowledge of
//! the proxy or of backends, and no timer but the keep-alive PING's.
//!
//! - `hpack`: header compression (RFC 7541) — a decoder that hands out fields as slices, and an encoder that
//!   writes static indexes and plain literals.
//! - `frame`: frames (RFC 9113 §4 and §6) — the 9-octet head, each frame's payload checked and parsed, and the
//!   frames reveille sends, written into a buffer.
//! - `core`, `stream`, `fields`: what both sides share — the state a connection and its streams' handles hold
//!   behind one lock (windows, queued data, who waits on what) and what the peer's DATA, WINDOW_UPDATE, SETTINGS
//!   and RST_STREAM do to it; a stream's two handles (the peer's body, this side's sending half); a header
//!   block's fields judged and made into a request, a response or trailers.
//! - `server`: the server side of a connection, without I/O — the client's frames in, requests handed over
//!   with their body and response handles, frames to write out (`proxy::conn::h2` owns the socket and the
//!   tasks).
//! - `client`: the client side, without I/O — streams opened with a request's head, the backend's frames in,
//!   responses handed to the requests that wait for them (`upstream::h2` owns the socket, the task and the pool).
//! - `output`: what a connection's task does with what the connection queued, for both: written to the socket
//!   (anything `AsyncWrite`) in batches, streams told when there is room, reads paused while writes pile up.
//! - `keep_alive`: PING keep-alive for both, the one part with a timer.
//!
//! reveille's HTTP/2 server and its HTTP/2 client to backends both run on it in place of the `h2` crate (issue
//! 27, docs/design/performance.md): the `h2` crate's framing, HPACK and header maps were about half of a gRPC
//! call's instructions.

pub(crate) mod client;
mod core;
mod fields;
pub(crate) mod frame;
pub(crate) mod hpack;
pub(crate) mod keep_alive;
pub(crate) mod output;
pub(crate) mod server;
mod stream;

#[cfg(test)]
mod peer_tests;
