//! HTTP/2 on the wire, for both sides of the proxy, as `http1` is for HTTP/1.1: pure, no socket, no timers, no
//! knowledge of the proxy or of backends.
//!
//! - `hpack`: header compression (RFC 7541) — a decoder that hands out fields as slices, and an encoder that
//!   writes static indexes and plain literals.
//! - `frame`: frames (RFC 9113 §4 and §6) — the 9-octet head, each frame's payload checked and parsed, and the
//!   frames reveille sends, written into a buffer.
//! - `server`: the server side of a connection, without I/O — the client's frames in, requests handed over
//!   with their body and response handles, frames to write out (`proxy::conn::h2` owns the socket and the
//!   tasks).
//!
//! reveille's own h2 server runs on it in place of the `h2` crate (issue 27, docs/design/performance.md): the
//! `h2` crate's framing, HPACK and header maps were about half of a gRPC call's instructions. The backend side
//! (`upstream::h2`) is still the `h2` crate's client.

pub(crate) mod frame;
pub(crate) mod hpack;
pub(crate) mod server;

#[cfg(test)]
mod peer_tests;
