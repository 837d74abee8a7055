//! reveille's own HTTP/1.1 client side: one backend exchange written and read by the request's own task.
//!
//! Why not `hyper::client::conn::http1`: there every backend connection is a task of its own. A request went
//! to it through a channel, woke it, was written by it, and its response head came back through a oneshot that
//! woke the request's task again; the response body crossed the same way. callgrind put hyper's client side
//! (the hand-offs, its dispatcher and its response parser) at about a quarter of reveille's instructions per
//! request. Here the request's task writes the head (with a small body, in the same `write`), parses the
//! response head with `httparse` in place (header values are slices of the bytes read, not copies) and reads
//! the body straight from the socket as the client's side polls it ([`UpBody`]).
//!
//! What it speaks, as hyper did: `Content-Length` and chunked bodies both ways (trailers kept), bodies read to
//! the connection's end, no body for `HEAD`, 204 and 304, interim 1xx responses skipped, `101 Switching
//! Protocols` handing the connection (and any bytes read past the head) to the tunnel, keep-alive by version and
//! `Connection`. A response that arrives while a streamed request body is still going out ends the upload (the
//! connection is then closed, not reused). A connection is reused only when its
//! response was read exactly to its end with nothing after it.
//!
//! Replays: an error tells whether any byte of the request went out ([`SendError::unsent`]) and whether any
//! byte of an answer came back, which is what the handler needs to decide what is safe to send again.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::{BodyError, RequestBody};
use super::connector::Upstream as Io;
use super::headers::{connection_named, is_hop_by_hop_field};
use super::pool::Conn;

/// Most header fields in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and fields).
const MAX_HEAD: usize = 64 * 1024;
/// Smallest and largest read.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;
/// A whole request body up to this size goes out in the head's `write`.
const INLINE_BODY: usize = 16 * 1024;
/// Longest chunk-size line (with extensions), and most trailer bytes.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the backend closed the connection before answering")]
    Closed,
    #[error("backend connection: {0}")]
    Io(#[source] io::Error),
    #[error("malformed response head from the backend: {0}")]
    Head(#[source] httparse::Error),
    #[error("the backend's response head is over {} KiB", MAX_HEAD / 1024)]
    HeadTooLarge,
    #[error("the backend's response has an invalid {0}")]
    Framing(&'static str),
    #[error("malformed chunked body from the backend: {0}")]
    Chunk(&'static str),
    #[error("the backend closed the connection in the middle of the response")]
    Incomplete,
    #[error("the backend answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("sending the request body: {0}")]
    RequestBody(#[source] Box<BodyError>),
}

impl UpstreamError {
    /// The connection ended (closed, reset) before the backend answered anything.
    pub(crate) fn closed_before_answer(&self) -> bool {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            Self::Closed => true,
            Self::Io(e) => matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof),
            _ => false,
        }
    }
}

/// What goes out before the body: written from here by every attempt, never copied.
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    /// Origin form (`/path?query`).
    pub(crate) path: PathAndQuery,
    /// As they are to be sent (`Host` set, hop-by-hop fields gone).
    pub(crate) headers: HeaderMap,
    /// The client asked for an upgrade: a `101` is expected, not an error.
    pub(crate) upgrade: bool,
}

/// A failed send: the error, and whether none of the request went out (then it can go to another connection
/// whatever its method: its body, if streamed, was not touched either).
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: UpstreamError,
    pub(crate) unsent: bool,
    /// Some byte of a response (even an interim one) came back: the request was received.
    pub(crate) answered: bool,
}

/// One backend connection's socket and buffers; kept by the pool between requests.
#[derive(Debug)]
pub(crate) struct Wire {
    io: Io,
    /// Bytes read and not consumed yet. Response bodies are split off it without copying.
    read: BytesMut,
    /// The request head is written here (kept for its capacity).
    head: BytesMut,
    /// What is still to be written, in order.
    queue: VecDeque<Bytes>,
}

impl Wire {
    pub(crate) fn new(io: Io) -> Self {
        Self { io, read: BytesMut::new(), head: BytesMut::new(), queue: VecDeque::new() }
    }

    /// An idle connection can take a request: the backend has not closed it, and sent nothing unasked. Costs no
    /// system call unless the socket was reported readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.io.stream().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: closed, reset, unasked bytes — or only readiness left over from the last read.
            Poll::Ready(Ok(())) => {
                matches!(self.io.stream().try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The socket and the bytes already read past the response head: a `101`'s tunnel.
    pub(crate) fn into_upgraded(self) -> Upgraded {
        Upgraded { io: self.io, prefix: self.read.freeze() }
    }

    /// A final response head among the bytes the socket already holds (read without waiting), if there is one.
    fn salvage_head(&mut self) -> Option<Head> {
        loop {
            self.read.reserve(READ_MIN);
            match self.io.stream().try_read_buf(&mut self.read) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        while let Ok(Some(head)) = parse_head(&mut self.read) {
            if !is_interim(head.parts.status) {
                return Some(head);
            }
        }
        None
    }

    /// Reads more into `read`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_MIN {
            self.read.reserve(want.clamp(READ_MIN, READ_MAX));
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes what is queued. `sent` is set once a byte went out.
    fn poll_flush_queue(&mut self, cx: &mut Context<'_>, sent: &mut bool) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            let mut n = 0;
            for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            let written = if n == 1 {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.queue[0]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent = true;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.queue.front_mut() else { break };
                if front.len() <= left {
                    left -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// As it is: a `Content-Length` says how long, or there is none.
    Plain,
    Chunked,
}

/// Writes the request head into `out`: origin-form target, the headers as given, and the length of a body whose
/// size is known and not declared yet. Returns how the body is to be framed.
fn encode_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &RequestBody,
) -> ReqFraming {
    out.reserve(256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut framing = None;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            framing = Some(ReqFraming::Chunked);
        } else if name == CONTENT_LENGTH && framing.is_none() {
            framing = Some(ReqFraming::Plain);
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = framing.unwrap_or_else(|| match body.size_hint().exact() {
        // No body: a method that defines one still says so (as hyper does), the others say nothing.
        Some(0) => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            ReqFraming::Plain
        }
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            ReqFraming::Plain
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ReqFraming::Chunked
        }
    });
    out.extend_from_slice(b"\r\n");
    framing
}

/// For the criterion bench: [`encode_head`].
pub(crate) fn bench_encode_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &RequestBody,
) {
    encode_head(out, method, target, headers, body);
}

/// For the criterion bench: [`parse_head`]; the number of header fields parsed.
pub(crate) fn bench_parse_head(buf: &mut BytesMut) -> Option<usize> {
    parse_head(buf).ok().flatten().map(|h| h.parts.headers.len())
}

/// A chunk's size line.
fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

/// The last chunk and the trailers.
fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(t) = trailers else { return Bytes::from_static(b"0\r\n\r\n") };
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(b"0\r\n");
    for (name, value) in t {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304, a declared length of zero).
    Empty,
    Length(u64),
    Chunked,
    /// To the end of the connection, which cannot be reused.
    Eof,
    /// 101: the connection is the tunnel's.
    Upgrade,
}

/// A response head, parsed: its hop-by-hop fields are not in `parts` but read into the others.
struct Head {
    parts: http::response::Parts,
    keep_alive: bool,
    /// The last `Transfer-Encoding` field.
    transfer_encoding: Option<HeaderValue>,
    /// The `Upgrade` field (passed on with a `101`).
    upgrade: Option<HeaderValue>,
}

/// Parses a response head at the start of `buf`, taking it off `buf`. `None`: not complete yet.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, UpstreamError> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    // Offsets into the head (it is at most MAX_HEAD long): name start and end, value start and end.
    let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(UpstreamError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::HeadTooLarge),
        Err(e) => return Err(UpstreamError::Head(e)),
    };
    if len > MAX_HEAD {
        return Err(UpstreamError::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let count = res.headers.len();
    for (slot, h) in at.iter_mut().zip(res.headers.iter()) {
        let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
        *slot = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
    }
    let code = res.code.unwrap_or_default();
    let minor = res.version.unwrap_or_default();
    let reason = res.reason.map(|r| (offset(r.as_bytes()), r.len() as u32));

    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| UpstreamError::Framing("status code"))?;
    let mut headers = HeaderMap::with_capacity(count);
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut transfer_encoding = None;
    let mut upgrade = None;
    // Fields a `Connection` header names beyond the fixed list (rare).
    let mut named = Vec::new();
    for &(ns, ne, vs, ve) in &at[..count] {
        let name = header_name(&head[ns as usize..ne as usize])?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| UpstreamError::Framing("header value"))?;
        // Hop-by-hop fields never reach the client: they are read here, and not put in the map (a second
        // pass over the map to remove them cost a twentieth of a request's instructions).
        if is_hop_by_hop_field(&name) {
            if name == CONNECTION {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    conn_close |= t.eq_ignore_ascii_case(b"close");
                    if t.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else {
                        named.extend(connection_named(token));
                    }
                }
            } else if name == TRANSFER_ENCODING {
                transfer_encoding = Some(value);
            } else if name == UPGRADE {
                upgrade = Some(value);
            }
            continue;
        }
        headers.append(name, value);
    }
    // `Connection: close` names no field unless there is one by that name.
    for name in named {
        headers.remove(name);
    }
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let keep_alive = !conn_close && (version == Version::HTTP_11 || conn_keep_alive);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    if let Some((start, len)) = reason {
        let reason = head.slice(start as usize..(start + len) as usize);
        if status.canonical_reason().map_or(true, |c| c.as_bytes() != &reason[..]) {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                parts.extensions.insert(r);
            }
        }
    }
    Ok(Some(Head { parts, keep_alive, transfer_encoding, upgrade }))
}

/// A response field's name. The names servers send on nearly every response, spelled as they send them, are
/// matched as they are (a length switch and a compare); others go through `HeaderName::from_bytes`, which
/// lowercases and checks every byte (a twenty-fifth of a request's instructions with nginx's eight fields).
fn header_name(raw: &[u8]) -> Result<HeaderName, UpstreamError> {
    use http::header;
    Ok(match raw {
        b"Server" | b"server" => header::SERVER,
        b"Date" | b"date" => header::DATE,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => CONTENT_LENGTH,
        b"Connection" | b"connection" => CONNECTION,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Transfer-Encoding" | b"transfer-encoding" => TRANSFER_ENCODING,
        b"Vary" | b"vary" => header::VARY,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Location" | b"location" => header::LOCATION,
        _ => HeaderName::from_bytes(raw).map_err(|_| UpstreamError::Framing("header name"))?,
    })
}

/// How the body of a response to `method` with `head` is delimited (RFC 9112 §6.3).
fn response_framing(method: &Method, head: &mut Head, upgrade: bool) -> Result<Framing, UpstreamError> {
    let status = head.parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return Err(UpstreamError::UnexpectedUpgrade);
        }
        // The upgrade passes: its fields go on to the client.
        if let Some(u) = head.upgrade.take() {
            head.parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            head.parts.headers.insert(UPGRADE, u);
        }
        return Ok(Framing::Upgrade);
    }
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let headers = &mut head.parts.headers;
    if let Some(te) = &head.transfer_encoding {
        // The last coding decides; a Content-Length beside it is wrong (it would truncate the body) and goes,
        // and the connection is not reused (it may be an attempt at request smuggling).
        let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
        let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        if headers.remove(CONTENT_LENGTH).is_some() || !chunked {
            head.keep_alive = false;
        }
        return Ok(if chunked { Framing::Chunked } else { Framing::Eof });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(UpstreamError::Framing("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::Framing("Content-Length (several values)"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => {
            head.keep_alive = false;
            Ok(Framing::Eof)
        }
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Sends a request (`req` and `body`) on `conn` and reads the response head. The response's body reads from the
/// connection and gives it back to the pool when it ends.
pub(crate) async fn send(
    mut conn: Conn,
    req: &RequestHead,
    mut body: RequestBody,
) -> Result<Response<UpBody>, SendError> {
    let wire = conn.wire();
    let framing = encode_head(&mut wire.head, &req.method, req.path.as_str(), &req.headers, &body);
    wire.queue.push_back(wire.head.split().freeze());
    // A whole body small enough goes out with the head, in one write.
    let mut rest = None;
    match &mut body {
        RequestBody::Empty => {}
        RequestBody::Whole { data, trailers } => {
            let data = data.take().unwrap_or_default();
            if framing == ReqFraming::Chunked {
                if !data.is_empty() {
                    wire.queue.push_back(chunk_size_line(data.len()));
                    wire.queue.push_back(data);
                    wire.queue.push_back(Bytes::from_static(b"\r\n"));
                }
                wire.queue.push_back(last_chunk(trailers.take().as_ref()));
            } else if !data.is_empty() {
                if data.len() <= INLINE_BODY && wire.queue.len() == 1 {
                    let head = wire.queue.pop_back().unwrap_or_default();
                    let mut joined = BytesMut::with_capacity(head.len() + data.len());
                    joined.extend_from_slice(&head);
                    joined.extend_from_slice(&data);
                    wire.queue.push_back(joined.freeze());
                } else {
                    wire.queue.push_back(data);
                }
            }
        }
        RequestBody::Streaming { .. } => rest = Some(framing),
    }

    let mut progress = Progress { body_done: rest.is_none(), sent: false, answered: false, early: None };
    let written = std::future::poll_fn(|cx| poll_send(conn.wire(), cx, &mut body, rest, &mut progress)).await;
    let Progress { sent, mut answered, mut early, .. } = progress;
    if let Err(error) = written {
        // A backend that refuses a body answers and closes without reading it, and the write that fails may be
        // the first news of it: its answer, already here, counts.
        let salvaged = match error {
            UpstreamError::Io(_) if sent && early.is_none() => conn.wire().salvage_head(),
            _ => None,
        };
        answered |= !conn.wire().read.is_empty();
        match salvaged {
            Some(head) => early = Some(head),
            None => return Err(SendError { error, unsent: !sent, answered }),
        }
    }
    // An upload the backend answered before it ended leaves the connection mid-request.
    let body_complete = early.is_none();
    drop(body);
    let mut head = match early {
        Some(h) => h,
        None => match read_head(conn.wire(), &mut answered).await {
            Ok(h) => h,
            Err(error) => return Err(SendError { error, unsent: false, answered }),
        },
    };
    let framing = match response_framing(&req.method, &mut head, req.upgrade) {
        Ok(f) => f,
        Err(error) => return Err(SendError { error, unsent: false, answered: true }),
    };
    let reusable = head.keep_alive && body_complete;
    let state = match framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Chunk::Size),
        Framing::Eof => State::Eof,
        Framing::Upgrade => State::Upgrade,
    };
    let mut body = UpBody { conn: Some(conn), state, reusable };
    if body.state == State::Done {
        body.finish();
    }
    Ok(Response::from_parts(head.parts, body))
}

/// How far a request has gone out.
struct Progress {
    /// The whole body is queued (or written).
    body_done: bool,
    /// A byte went out.
    sent: bool,
    /// A byte of an answer came back.
    answered: bool,
    /// A final response that came before the upload ended.
    early: Option<Head>,
}

/// Writes what is queued, then the streamed body if there is one (`stream`: its framing), watching for a
/// response that comes before the upload ends.
fn poll_send(
    wire: &mut Wire,
    cx: &mut Context<'_>,
    body: &mut RequestBody,
    stream: Option<ReqFraming>,
    p: &mut Progress,
) -> Poll<Result<(), UpstreamError>> {
    loop {
        if !wire.queue.is_empty() {
            match wire.poll_flush_queue(cx, &mut p.sent) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Io(e))),
                Poll::Pending if stream.is_some() => return poll_early(wire, cx, p),
                Poll::Pending => return Poll::Pending,
            }
        }
        if p.body_done {
            return Poll::Ready(Ok(()));
        }
        let chunked = stream == Some(ReqFraming::Chunked);
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return poll_early(wire, cx, p),
            Poll::Ready(None) => {
                if chunked {
                    wire.queue.push_back(last_chunk(None));
                }
                p.body_done = true;
                continue;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if chunked => {
                    wire.queue.push_back(chunk_size_line(data.len()));
                    wire.queue.push_back(data);
                    wire.queue.push_back(Bytes::from_static(b"\r\n"));
                }
                Ok(data) => wire.queue.push_back(data),
                Err(frame) => {
                    if chunked {
                        wire.queue.push_back(last_chunk(frame.trailers_ref()));
                    }
                    p.body_done = true;
                    continue;
                }
            },
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UpstreamError::RequestBody(Box::new(e)))),
        }
        if body.is_end_stream() {
            // The last frame was the end (a streamed body is not polled past it).
            if chunked {
                wire.queue.push_back(last_chunk(None));
            }
            p.body_done = true;
        }
    }
}

/// While an upload waits: a final response from the backend ends it (`early`), interim ones are skipped.
fn poll_early(wire: &mut Wire, cx: &mut Context<'_>, p: &mut Progress) -> Poll<Result<(), UpstreamError>> {
    loop {
        match wire.poll_fill(cx, 0) {
            Poll::Pending => return Poll::Pending,
            // The backend closed: the write side will say so, or the head read after it.
            Poll::Ready(Ok(0)) => return Poll::Pending,
            Poll::Ready(Ok(_)) => {
                p.answered = true;
                while let Some(head) = parse_head(&mut wire.read)? {
                    if is_interim(head.parts.status) {
                        continue;
                    }
                    p.early = Some(head);
                    return Poll::Ready(Ok(()));
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Io(e))),
        }
    }
}

/// 1xx other than 101: skipped, the final response follows.
fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

/// Reads until a final response head is complete.
async fn read_head(wire: &mut Wire, answered: &mut bool) -> Result<Head, UpstreamError> {
    loop {
        while !wire.read.is_empty() {
            *answered = true;
            match parse_head(&mut wire.read)? {
                Some(h) if is_interim(h.parts.status) => {}
                Some(h) => return Ok(h),
                None => break,
            }
        }
        let n = std::future::poll_fn(|cx| wire.poll_fill(cx, 0)).await.map_err(UpstreamError::Io)?;
        if n == 0 {
            return Err(if *answered { UpstreamError::Incomplete } else { UpstreamError::Closed });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Eof,
    /// A 101: no body; the connection goes to the tunnel.
    Upgrade,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many bytes of chunk data to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
}

/// A backend's response body, read from its connection as it is polled. At its end the connection goes back to
/// the pool (when it can be reused); dropped before its end, it closes the connection.
#[derive(Debug)]
pub(crate) struct UpBody {
    conn: Option<Conn>,
    state: State,
    /// The connection may serve another request once this body ends.
    reusable: bool,
}

impl UpBody {
    /// The connection of a `101` response, for the tunnel (taken once).
    pub(crate) fn take_upgraded(&mut self) -> Option<Upgraded> {
        if self.state != State::Upgrade {
            return None;
        }
        self.conn.take().map(|c| c.into_wire().into_upgraded())
    }

    /// The body ended: its connection goes back to the pool if it can serve another request.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(mut conn) = self.conn.take() {
            if self.reusable && conn.wire().read.is_empty() {
                conn.release();
            }
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        mut chunk: Chunk,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        let wire = conn.wire();
        loop {
            let buf = &mut wire.read;
            let need_more = match chunk {
                Chunk::Size => match find_line(buf, MAX_CHUNK_LINE)? {
                    Some(line_len) => {
                        let line = buf.split_to(line_len);
                        let size = parse_chunk_size(&line)?;
                        chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        false
                    }
                    None => true,
                },
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        true
                    } else {
                        let take = (buf.len() as u64).min(left) as usize;
                        let data = buf.split_to(take).freeze();
                        let left = left - take as u64;
                        self.state = State::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        true
                    } else if &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        chunk = Chunk::Size;
                        false
                    } else {
                        return Poll::Ready(Some(Err(UpstreamError::Chunk("no CRLF after a chunk's data"))));
                    }
                }
                Chunk::Trailers => match find_trailers_end(buf)? {
                    Some(len) => {
                        let block = buf.split_to(len);
                        let trailers = parse_trailers(&block)?;
                        self.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    None => true,
                },
            };
            if need_more {
                self.state = State::Chunked(chunk);
                let want = match chunk {
                    Chunk::Data(left) => usize::try_from(left).unwrap_or(usize::MAX),
                    _ => 0,
                };
                match ready!(wire.poll_fill(cx, want)) {
                    Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Incomplete))),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(UpstreamError::Io(e)))),
                }
            }
        }
    }
}

/// The length of the first line in `buf` (with its line ending), if it is complete.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, UpstreamError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() > max => Err(UpstreamError::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, optional extensions after `;`, CRLF.
fn parse_chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let line = line.strip_suffix(b"\r\n").ok_or(UpstreamError::Chunk("chunk-size line without CRLF"))?;
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(UpstreamError::Chunk("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16).ok_or(UpstreamError::Chunk("invalid chunk size"))?;
        Ok(n * 16 + u64::from(v))
    })
}

/// The length of the trailer section (up to and with its empty line), if it is complete.
fn find_trailers_end(buf: &[u8]) -> Result<Option<usize>, UpstreamError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Ok(Some(i + 4)),
        None if buf.len() > MAX_TRAILERS => Err(UpstreamError::Chunk("trailers too large")),
        None => Ok(None),
    }
}

/// The trailer fields, if there are any.
fn parse_trailers(block: &[u8]) -> Result<Option<HeaderMap>, UpstreamError> {
    if block == b"\r\n" {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let fields = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(UpstreamError::Chunk("malformed trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) {
            map.append(n, v);
        }
    }
    Ok(Some(map))
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done | State::Upgrade => return Poll::Ready(None),
                State::Chunked(chunk) => return this.poll_chunked(cx, chunk),
                State::Length(left) => {
                    let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
                    let wire = conn.wire();
                    if !wire.read.is_empty() {
                        let take = (wire.read.len() as u64).min(left) as usize;
                        let data = wire.read.split_to(take).freeze();
                        let left = left - take as u64;
                        if left == 0 {
                            this.finish();
                        } else {
                            this.state = State::Length(left);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(wire.poll_fill(cx, usize::try_from(left).unwrap_or(usize::MAX))) {
                        Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Incomplete))),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(UpstreamError::Io(e)))),
                    }
                }
                State::Eof => {
                    let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
                    let wire = conn.wire();
                    if !wire.read.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(wire.read.split().freeze()))));
                    }
                    match ready!(wire.poll_fill(cx, READ_MAX)) {
                        Ok(0) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(UpstreamError::Io(e)))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// An upgraded backend connection: first the bytes read past the `101`'s head, then the socket.
#[derive(Debug)]
pub(crate) struct Upgraded {
    io: Io,
    prefix: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).expect("parses").expect("complete")
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::OK);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert!(h.keep_alive);
        assert!(h.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn a_partial_head_waits_and_a_huge_one_fails() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed");
        let mut big = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        big.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert!(matches!(parse_head(&mut big), Err(UpstreamError::HeadTooLarge)));
    }

    #[test]
    fn common_names_are_the_same_names_as_parsed() {
        for raw in [
            "Server",
            "Date",
            "Content-Type",
            "Content-Length",
            "Connection",
            "Last-Modified",
            "ETag",
            "Accept-Ranges",
            "Cache-Control",
            "Transfer-Encoding",
            "Vary",
            "Content-Encoding",
            "Set-Cookie",
            "Location",
        ] {
            for spelled in [raw.to_string(), raw.to_ascii_lowercase()] {
                let fast = header_name(spelled.as_bytes()).unwrap();
                assert_eq!(fast, HeaderName::from_bytes(spelled.as_bytes()).unwrap(), "{spelled}");
            }
        }
        assert_eq!(header_name(b"X-Custom").unwrap(), "x-custom");
        assert!(header_name(b"bad name").is_err());
    }

    #[test]
    fn hop_by_hop_fields_are_read_but_not_kept() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
             Proxy-Authenticate: Basic\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nX-End: 2\r\nHost: stays\r\n\r\n",
        );
        let mut names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-end"]);
        assert!(h.keep_alive);
        assert_eq!(h.upgrade.as_ref().map(|u| u.as_bytes()), Some(&b"h2c"[..]));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nclose: x\r\nX-A: b\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.parts.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x-a"]);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept() {
        let h = head("HTTP/1.1 200 Fine Thanks\r\n\r\n");
        let r = h.parts.extensions.get::<hyper::ext::ReasonPhrase>().expect("kept");
        assert_eq!(r.as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |method: Method, text: &str| {
            let mut h = head(text);
            response_framing(&method, &mut h, false).map(|f| (f, h.keep_alive))
        };
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").unwrap(),
            (Framing::Length(10), true)
        );
        assert_eq!(f(Method::HEAD, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").unwrap(), (Framing::Empty, true));
        assert_eq!(f(Method::GET, "HTTP/1.1 304 Not Modified\r\n\r\n").unwrap(), (Framing::Empty, true));
        assert_eq!(f(Method::GET, "HTTP/1.1 200 OK\r\n\r\n").unwrap(), (Framing::Eof, false));
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").unwrap(),
            (Framing::Chunked, false),
            "a length beside chunked is ignored and the connection not reused"
        );
        assert_eq!(
            f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n").unwrap(),
            (Framing::Length(4), true)
        );
        assert!(f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n").is_err());
        assert!(f(Method::GET, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(matches!(
            f(Method::GET, "HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(UpstreamError::UnexpectedUpgrade)
        ));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1A\r\n").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;ext=1\r\n").unwrap(), 0);
        assert!(parse_chunk_size(b"zz\r\n").is_err());
        assert!(parse_chunk_size(b"10").is_err());
        assert!(parse_chunk_size(b"FFFFFFFFFFFFFFFFF\r\n").is_err(), "no overflow");
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.test"));
        let f = encode_head(&mut out, &Method::GET, "/x?y", &headers, &RequestBody::Empty);
        assert!(f == ReqFraming::Plain);
        assert_eq!(&out[..], b"GET /x?y HTTP/1.1\r\nhost: a.test\r\n\r\n");

        out.clear();
        let body = RequestBody::Whole { data: Some(Bytes::from_static(b"abc")), trailers: None };
        encode_head(&mut out, &Method::POST, "/", &headers, &body);
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\n\r\n");

        out.clear();
        encode_head(&mut out, &Method::POST, "/", &headers, &RequestBody::Empty);
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n");

        out.clear();
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let body = RequestBody::Whole { data: Some(Bytes::from_static(b"abc")), trailers: Some(HeaderMap::new()) };
        assert!(encode_head(&mut out, &Method::POST, "/", &headers, &body) == ReqFraming::Chunked);
    }
}
