//! HTTP/2 on the wire, for both sides of the proxy, as `http1` is for HTTP/1.1: pure, no socket, no timers, no
//! knowledge of the proxy or of backends.
//!
//! - `hpack`: header compression (RFC 7541) — a decoder that hands out fields as slices, and an encoder that
//!   writes static indexes and plain literals.
//! - `frame`: frames (RFC 9113 §4 and §6) — the 9-octet head, each frame's payload checked and parsed, and the
//!   frames reveille sends, written into a buffer.
//!
//! This is the codec an HTTP/2 connection of reveille's own is to be built on, in place of the `h2` crate (issue
//! 27, docs/design/performance.md): the `h2` crate's framing, HPACK and header maps were about half of a gRPC
//! call's instructions.

// Nothing outside the tests calls the codec yet (the connection built on it is the next step), and the tests do
// not use every error code.
#![allow(dead_code, unused_imports)]

pub(crate) mod frame;
pub(crate) mod hpack;

#[cfg(test)]
mod peer_tests;
