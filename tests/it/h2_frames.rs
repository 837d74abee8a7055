//! reveille's own HTTP/2 server (the default, on its own codec) against a client that writes frames by hand:
//! requests HTTP/2 forbids are reset and the connection goes on (a block refused for its priority still feeds the
//! HPACK table); what abuses the connection (a header block that never ends, empty DATA frames, a window pushed
//! past its maximum, frames for streams never opened, a first frame that is not SETTINGS) ends it with the GOAWAY
//! code RFC 9113 names; a header list over its size is answered 431; streams past the concurrency limit are
//! refused; PINGs and SETTINGS are answered; a response larger than the client's window waits for its
//! WINDOW_UPDATEs; fields sent again by index are judged as they were the first time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use reveille::ProxySettings as Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame, written by hand (also `h2_server`'s).
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string of fewer than 127 octets, not Huffman-coded.
fn string(s: &[u8]) -> Vec<u8> {
    assert!(s.len() < 127);
    [&[s.len() as u8][..], s].concat()
}

/// A field as a literal without indexing, its name a literal too.
fn field(name: &str, value: &str) -> Vec<u8> {
    [&[0x00][..], &string(name.as_bytes()), &string(value.as_bytes())].concat()
}

/// `:method`, `:scheme http`, `:path` and `:authority` (static table entries 2/3, 6, 4 and 1), then `extra`.
fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![if method == "POST" { 0x83 } else { 0x82 }, 0x86];
    block.extend([0x04]);
    block.extend(string(path.as_bytes()));
    block.extend([0x01]);
    block.extend(string(b"a.test"));
    for (n, v) in extra {
        block.extend(field(n, v));
    }
    block
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let p = &self.payload;
        match self.kind {
            RST_STREAM => u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            GOAWAY => u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            _ => panic!("no error code in {self:?}"),
        }
    }

    /// The `:status` of a response's HEADERS, as reveille's encoder writes it: a static index, or a literal
    /// with name index 8.
    fn status(&self) -> u16 {
        match self.payload[0] {
            0x88 => 200,
            0x89 => 204,
            0x8c => 400,
            0x8d => 404,
            0x8e => 500,
            0x08 => std::str::from_utf8(&self.payload[2..5]).unwrap().parse().unwrap(),
            b => panic!("a block that does not start with :status ({b:#x})"),
        }
    }
}

/// A client connection, its preface and SETTINGS sent (`settings`: the payload).
struct Raw {
    conn: TcpStream,
    buf: Vec<u8>,
    frames: Vec<Frame>,
    closed: bool,
}

impl Raw {
    async fn open(proxy: SocketAddr, settings: &[u8]) -> Raw {
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, settings));
        conn.write_all(&out).await.unwrap();
        Raw { conn, buf: Vec::new(), frames: Vec::new(), closed: false }
    }

    async fn send(&mut self, frames: &[Vec<u8>]) {
        // A server that closed may refuse the rest: what it answered before is what the tests look at.
        let _ = self.conn.write_all(&frames.concat()).await;
    }

    /// Reads frames until one satisfies `done`, the connection closes, or 5 s pass; true when one did.
    async fn until(&mut self, done: impl Fn(&Frame) -> bool) -> bool {
        let read = async {
            loop {
                while self.buf.len() >= 9 {
                    let len =
                        (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                    if self.buf.len() < 9 + len {
                        break;
                    }
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    let hit = done(&f);
                    self.frames.push(f);
                    if hit {
                        return true;
                    }
                }
                let mut chunk = [0u8; 16384];
                match self.conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        self.closed = true;
                        return false;
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.unwrap_or(false)
    }

    async fn goaway(&mut self) -> u32 {
        assert!(self.until(|f| f.kind == GOAWAY).await, "no GOAWAY: {:?}", self.frames);
        self.frames.last().unwrap().code()
    }

    async fn reset(&mut self, stream: u32) -> u32 {
        assert!(
            self.until(|f| f.kind == RST_STREAM && f.stream == stream).await,
            "no RST_STREAM on {stream}: {:?}",
            self.frames
        );
        self.frames.last().unwrap().code()
    }

    /// The body of `stream`'s response: its DATA frames, up to the one that ends it.
    async fn body(&mut self, stream: u32) -> Vec<u8> {
        let end = |f: &Frame| f.kind == DATA && f.stream == stream && f.flags & END_STREAM != 0;
        assert!(self.until(end).await, "no end of the body on {stream}: {:?}", self.frames);
        self.frames.iter().filter(|f| f.kind == DATA && f.stream == stream).flat_map(|f| f.payload.clone()).collect()
    }

    async fn status(&mut self, stream: u32) -> u16 {
        assert!(
            self.until(|f| f.kind == HEADERS && f.stream == stream).await,
            "no HEADERS on {stream}: {:?}",
            self.frames
        );
        self.frames.last().unwrap().status()
    }
}

async fn proxy_with(settings: Settings) -> (TestProxy, Backend) {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), settings).await;
    (proxy, a)
}

fn settings() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_reset_and_the_connection_goes_on() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    let cases: [(u32, &[(&str, &str)]); 5] = [
        (1, &[("Accept", "*/*")]),
        (3, &[("connection", "close")]),
        (5, &[("te", "gzip")]),
        (7, &[("transfer-encoding", "chunked")]),
        (9, &[("x", "a\x01b")]),
    ];
    for (id, extra) in cases {
        c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, id, &request("GET", "/", extra))]).await;
        assert_eq!(c.reset(id).await, PROTOCOL_ERROR, "stream {id}: {extra:?}");
    }
    // content-length: two that differ, or not digits only.
    let post = |id: u32, extra: &[(&str, &str)]| frame(HEADERS, END_HEADERS, id, &request("POST", "/", extra));
    c.send(&[post(11, &[("content-length", "5"), ("content-length", "100")])]).await;
    assert_eq!(c.reset(11).await, PROTOCOL_ERROR);
    c.send(&[post(13, &[("content-length", "+5")])]).await;
    assert_eq!(c.reset(13).await, PROTOCOL_ERROR);
    // A body shorter than its content-length.
    c.send(&[
        frame(HEADERS, END_HEADERS, 15, &request("POST", "/", &[("content-length", "5")])),
        frame(DATA, END_STREAM, 15, b"abc"),
    ])
    .await;
    assert_eq!(c.reset(15).await, PROTOCOL_ERROR);
    // The connection still serves.
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 17, &request("GET", "/", &[]))]).await;
    assert_eq!(c.status(17).await, 200);
    assert!(!c.frames.iter().any(|f| f.kind == GOAWAY), "{:?}", c.frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_ends_is_refused() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    // CONTINUATION frames of 16 KiB without END_HEADERS, well past twice the 64 KiB header list allowed.
    let mut frames = vec![frame(HEADERS, 0, 1, &request("GET", "/", &[]))];
    for _ in 0..12 {
        frames.push(frame(CONTINUATION, 0, 1, &[0x82; 16384]));
    }
    c.send(&frames).await;
    assert_eq!(c.goaway().await, ENHANCE_YOUR_CALM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_over_its_size_gets_431() {
    let (proxy, _a) = proxy_with(Settings { max_header_size: 4096, ..settings() }).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    let mut block = request("GET", "/", &[]);
    for i in 0..50 {
        block.extend(field(&format!("x-field-{i}"), &"v".repeat(100)));
    }
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)]).await;
    assert_eq!(c.status(1).await, 431);
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 3, &request("GET", "/", &[]))]).await;
    assert_eq!(c.status(3).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    let (proxy, _a) = proxy_with(Settings { h2_max_concurrent_streams: 2, ..settings() }).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    // Two uploads that do not end hold their streams open; a third is refused, retryable.
    let post = request("POST", "/", &[]);
    c.send(&[frame(HEADERS, END_HEADERS, 1, &post), frame(HEADERS, END_HEADERS, 3, &post)]).await;
    c.send(&[frame(HEADERS, END_HEADERS | END_STREAM, 5, &request("GET", "/", &[]))]).await;
    assert_eq!(c.reset(5).await, REFUSED_STREAM);
    // One ends: its slot is free again.
    c.send(&[frame(DATA, END_STREAM, 1, b"x")]).await;
    assert_eq!(c.status(1).await, 200);
    assert!(c.until(|f| f.kind == DATA && f.stream == 1 && f.flags & END_STREAM != 0).await);
    c.send(&[frame(HEADERS, END_HEADERS | END_STREAM, 7, &request("GET", "/", &[]))]).await;
    assert_eq!(c.status(7).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_and_settings_acknowledged() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    assert!(c.until(|f| f.kind == SETTINGS && f.flags == 1).await, "our SETTINGS acknowledged");
    c.send(&[frame(PING, 0, 0, b"8 octets")]).await;
    assert!(c.until(|f| f.kind == PING && f.flags == 1).await);
    assert_eq!(c.frames.last().unwrap().payload, b"8 octets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_abuses_end_it_with_their_code() {
    let (proxy, _a) = proxy_with(settings()).await;
    // Empty DATA frames that do not end their stream.
    let mut c = Raw::open(proxy.http, &[]).await;
    let mut frames = vec![frame(HEADERS, END_HEADERS, 1, &request("POST", "/", &[]))];
    frames.extend((0..150).map(|_| frame(DATA, 0, 1, b"")));
    c.send(&frames).await;
    assert_eq!(c.goaway().await, ENHANCE_YOUR_CALM);
    // The connection's window pushed past 2^31-1.
    let mut c = Raw::open(proxy.http, &[]).await;
    c.send(&[frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes())]).await;
    assert_eq!(c.goaway().await, FLOW_CONTROL_ERROR);
    // DATA on a stream never opened.
    let mut c = Raw::open(proxy.http, &[]).await;
    c.send(&[frame(DATA, 0, 11, b"x")]).await;
    assert_eq!(c.goaway().await, PROTOCOL_ERROR);
    // A stream's window pushed past 2^31-1 is that stream's error.
    let mut c = Raw::open(proxy.http, &[]).await;
    c.send(&[
        frame(HEADERS, END_HEADERS, 1, &request("POST", "/", &[])),
        frame(WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes()),
    ])
    .await;
    assert_eq!(c.reset(1).await, FLOW_CONTROL_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_clients_window_waits_for_it() {
    let body = vec![b'x'; 10_000];
    let sent = body.clone();
    let big = Backend::start(Arc::new(move |_: Request<Incoming>| {
        let body = sent.clone();
        Box::pin(async move { Response::new(full(body)) })
    }))
    .await;
    let proxy = TestProxy::start_with(&routes_file(&[("b", vec![big.addr])], &[("a.test", "b")]), settings()).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 1000.
    let mut c = Raw::open(proxy.http, &[0, 4, 0, 0, 0x03, 0xe8]).await;
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 1, &request("GET", "/", &[]))]).await;
    assert_eq!(c.status(1).await, 200);
    let data =
        |c: &Raw| c.frames.iter().filter(|f| f.kind == DATA && f.stream == 1).map(|f| f.payload.len()).sum::<usize>();
    // What the window allows arrives; then nothing until the window grows.
    assert!(!c.until(|f| f.kind == DATA && f.flags & END_STREAM != 0).await);
    assert!(!c.closed);
    assert_eq!(data(&c), 1000);
    c.send(&[frame(WINDOW_UPDATE, 0, 1, &9000u32.to_be_bytes())]).await;
    assert!(c.until(|f| f.kind == DATA && f.flags & END_STREAM != 0).await);
    assert_eq!(data(&c), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_refused_for_its_priority_still_updates_the_hpack_table() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    // Stream 1 depends on itself (a stream error), and its block indexes `x-indexed: 1` into the dynamic table.
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend(request("GET", "/", &[]));
    payload.extend([&[0x40][..], &string(b"x-indexed"), &string(b"1")].concat());
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS | 0x20, 1, &payload)]).await;
    assert_eq!(c.reset(1).await, PROTOCOL_ERROR);
    // Stream 3 refers to that entry (index 62): the server's table must have it.
    let mut block = request("GET", "/", &[]);
    block.push(0xbe);
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 3, &block)]).await;
    assert_eq!(c.status(3).await, 200);
    assert!(!c.frames.iter().any(|f| f.kind == GOAWAY), "{:?}", c.frames);
}

/// A field as a literal with incremental indexing (§6.2.1), its name a literal.
fn indexed(name: &str, value: &str) -> Vec<u8> {
    [&[0x40][..], &string(name.as_bytes()), &string(value.as_bytes())].concat()
}

/// The server keeps what it made of a dynamic-table entry (a memo beside the entry): a field sent again by index
/// must be judged as it was when it came as a literal — refused, passed on, or counted as a length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_sent_again_by_index_are_judged_as_they_were_first() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut c = Raw::open(proxy.http, &[]).await;
    // Stream 1 indexes `x-kept: 1` and then `te: gzip` (now 62, `x-kept` 63); `te: gzip` gets it reset.
    let mut block = request("GET", "/", &[]);
    block.extend(indexed("x-kept", "1"));
    block.extend(indexed("te", "gzip"));
    c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)]).await;
    assert_eq!(c.reset(1).await, PROTOCOL_ERROR);
    // `te: gzip` by index: refused again, twice.
    for id in [3, 5] {
        let mut block = request("GET", "/", &[]);
        block.push(0x80 | 62);
        c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, id, &block)]).await;
        assert_eq!(c.reset(id).await, PROTOCOL_ERROR, "stream {id}");
    }
    // `x-kept: 1` by index, twice in one request and again in the next: the backend gets it each time.
    for id in [7, 9] {
        let mut block = request("GET", "/", &[]);
        block.extend([0x80 | 63, 0x80 | 63]);
        c.send(&[frame(HEADERS, END_STREAM | END_HEADERS, id, &block)]).await;
        assert_eq!(c.status(id).await, 200, "stream {id}");
        let seen: serde_json::Value = serde_json::from_slice(&c.body(id).await).unwrap();
        assert_eq!(seen["headers"]["x-kept"], serde_json::json!(["1", "1"]), "stream {id}: {seen}");
    }
    // `content-length: 3`, indexed (62) with a body of 3 octets: answered.
    let mut block = request("POST", "/", &[]);
    block.extend(indexed("content-length", "3"));
    c.send(&[frame(HEADERS, END_HEADERS, 11, &block), frame(DATA, END_STREAM, 11, b"abc")]).await;
    assert_eq!(c.status(11).await, 200);
    // By index with 4 octets: the length is the entry's, and the body does not match it.
    let mut block = request("POST", "/", &[]);
    block.push(0x80 | 62);
    c.send(&[frame(HEADERS, END_HEADERS, 13, &block), frame(DATA, END_STREAM, 13, b"abcd")]).await;
    assert_eq!(c.reset(13).await, PROTOCOL_ERROR);
    // By index beside a literal `content-length: 4`: two lengths that differ.
    let mut block = request("POST", "/", &[("content-length", "4")]);
    block.push(0x80 | 62);
    c.send(&[frame(HEADERS, END_HEADERS, 15, &block)]).await;
    assert_eq!(c.reset(15).await, PROTOCOL_ERROR);
    assert!(!c.frames.iter().any(|f| f.kind == GOAWAY), "{:?}", c.frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_first_frame_is_not_settings_is_refused() {
    let (proxy, _a) = proxy_with(settings()).await;
    let mut conn = TcpStream::connect(proxy.http).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(PING, 0, 0, b"8 octets"));
    conn.write_all(&out).await.unwrap();
    let mut c = Raw { conn, buf: Vec::new(), frames: Vec::new(), closed: false };
    assert_eq!(c.goaway().await, PROTOCOL_ERROR);
}
