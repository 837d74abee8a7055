//! reveille's own HTTP/1.1 server side (issue 30), in the connection's own task: the request head read into
//! the connection's buffer and parsed in place (`crate::http1::parse_request`, hyper's rules), the request
//! handed to the handler with a body read from the same buffer and socket as it is polled ([`H1Body`]), the
//! response head encoded once and written with the response's first bytes, the body streamed (by its length,
//! chunked, or to the close for HTTP/1.0), then the next request: keep-alive and pipelining in order,
//! `Expect: 100-continue` (the interim answer when the body is first read, as hyper sends it), upgrades (the
//! socket and the bytes read past the head go to the tunnel once the `101` is out).
//!
//! The loop and the body share the socket and its buffer through one lock, never contended: both are polled by
//! the connection's task. Timers, eviction, shutdown and the lingering close are the connection's, as with
//! hyper's side (`drive`, the watchdog, `ConnIo`).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::date::write_date;
use super::io::ConnIo;
use super::{ServerConn, Stream};
use crate::http1::{
    chunk_size_line, has_token, last_chunk, parse_request, put_field, BodyFraming, Chunked, Decoded, HeadLimits,
};
use crate::proxy::ProxyService;
use crate::upstream::RawFields;

/// Most bytes one read of a request body asks for.
const READ_MAX: usize = 64 * 1024;
/// A response's first data frame up to this size goes out in the head's write.
const INLINE_BODY: usize = 16 * 1024;

/// The connection's socket and what was read from it, shared by the connection's loop and the body of the
/// request in flight.
struct Inner<S: Stream> {
    /// Taken by an upgrade.
    io: Option<ConnIo<S>>,
    /// Bytes read and not yet taken: the rest of a head, a body, pipelined requests.
    buf: BytesMut,
    body: BodyRead,
    /// `Expect: 100-continue`: the interim answer is owed before the body is first read.
    continue_owed: bool,
    /// What is left to write of a `100 Continue`.
    interim: Bytes,
}

/// How far the current request's body has been read.
#[derive(Debug, Clone, Copy)]
enum BodyRead {
    Length(u64),
    Chunked(Chunked),
    Done,
    Failed,
}

impl<S: Stream> Inner<S> {
    fn io(&mut self) -> io::Result<Pin<&mut ConnIo<S>>> {
        self.io.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Reads more of the client's bytes into `buf`; `Ok(0)` when the client closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.clamp(8 * 1024, READ_MAX);
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        let Inner { io, buf, .. } = self;
        let io = io.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
    }

    /// Writes the `100 Continue` owed, if one is.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.continue_owed {
            self.continue_owed = false;
            self.interim = Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        while !self.interim.is_empty() {
            let interim = self.interim.clone();
            let n = ready!(self.io()?.poll_write(cx, &interim))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.interim.advance(n);
            if self.interim.is_empty() {
                ready!(self.io()?.poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What the request body reads through, whatever the connection's stream.
trait ReadBody: Send + Sync {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>>;
    fn is_done(&self) -> bool;
    fn left(&self) -> Option<u64>;
}

impl<S: Stream> ReadBody for Mutex<Inner<S>> {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Err(e) = ready!(inner.poll_continue(cx)) {
            inner.body = BodyRead::Failed;
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let want = match inner.body {
                BodyRead::Done => return Poll::Ready(None),
                BodyRead::Failed => {
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, "request body failed"))))
                }
                BodyRead::Length(left) => {
                    if !inner.buf.is_empty() {
                        let take = (inner.buf.len() as u64).min(left) as usize;
                        let left = left - take as u64;
                        inner.body = if left == 0 { BodyRead::Done } else { BodyRead::Length(left) };
                        return Poll::Ready(Some(Ok(Frame::data(inner.buf.split_to(take).freeze()))));
                    }
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                BodyRead::Chunked(mut chunked) => match chunked.decode(&mut inner.buf) {
                    Ok(Decoded::Data(data)) => {
                        inner.body = BodyRead::Chunked(chunked);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::End(trailers)) => {
                        inner.body = BodyRead::Done;
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::More(want)) => {
                        inner.body = BodyRead::Chunked(chunked);
                        want
                    }
                    Err(e) => {
                        inner.body = BodyRead::Failed;
                        return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                    }
                },
            };
            match ready!(inner.poll_fill(cx, want)) {
                Ok(0) => {
                    inner.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    inner.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.lock().body, BodyRead::Done)
    }

    fn left(&self) -> Option<u64> {
        match self.lock().body {
            BodyRead::Length(n) => Some(n),
            BodyRead::Done => Some(0),
            _ => None,
        }
    }
}

/// A request body on reveille's own HTTP/1.1 server side, read from the connection as it is polled.
pub(crate) struct H1Body {
    /// `None` for a request whose framing is a length of 0 (no `Content-Length` nor `Transfer-Encoding`, as a
    /// GET's, or `Content-Length: 0`): ended from the start, it takes neither the connection's lock nor a
    /// reference to it, and never reads the state of a later request if it outlives its own.
    src: Option<Arc<dyn ReadBody>>,
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &self.src {
            Some(src) => src.poll_body(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.src.as_ref().is_none_or(|src| src.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.src.as_ref().map_or(Some(0), |src| src.left()) {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// What an upgraded client connection is.
pub(crate) trait UpgradeIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradeIo for T {}

/// The client's side of an upgrade on reveille's own HTTP/1.1 server side, in the request's extensions: the
/// connection and the bytes the client sent past its head, handed over once the `101` is out.
#[derive(Clone)]
pub(crate) struct H1Upgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl H1Upgrade {
    /// The connection, once the `101` has been written.
    pub(crate) async fn upgraded(self) -> io::Result<Upgraded> {
        let rx = self.0.lock().take().ok_or(io::ErrorKind::NotConnected)?;
        rx.await.map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "the connection ended before the 101"))
    }
}

/// An upgraded client connection: the bytes read past the head first, then the socket.
pub(crate) type Upgraded = crate::upstream::Prefixed<Box<dyn UpgradeIo>>;

/// One connection served by reveille's own HTTP/1.1 side, as [`drive`](super::drive) runs it.
pub(super) struct H1Conn {
    fut: Pin<Box<dyn Future<Output = io::Result<()>> + Send>>,
    /// The socket, kept until the connection is dropped rather than when its loop ends: `drive` marks the
    /// connection finished in between, and only a finished connection's close may linger (`ConnIo`'s drop).
    _socket: Arc<dyn ReadBody>,
}

impl H1Conn {
    /// `read`: what the connection's protocol detection read (the start of the first head), and its buffer.
    pub(super) fn new<S: Stream>(io: ConnIo<S>, read: BytesMut, svc: ProxyService, limits: HeadLimits) -> Self {
        let inner =
            Inner { io: Some(io), buf: read, body: BodyRead::Done, continue_owed: false, interim: Bytes::new() };
        let shared = Arc::new(Mutex::new(inner));
        let fut = crate::proxy::boxed(|| serve(shared.clone(), svc, limits));
        Self { fut, _socket: shared }
    }
}

impl Future for H1Conn {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fut.as_mut().poll(cx)
    }
}

impl ServerConn for H1Conn {
    type Error = io::Error;

    /// Nothing to do: the loop reads `ConnState::closing`, which `drive` has set, when it is polled next.
    fn graceful(self: Pin<&mut Self>) {}
}

/// The connection's loop: a request head, the handler, the response; again while the connection stays open.
async fn serve<S: Stream>(shared: Arc<Mutex<Inner<S>>>, svc: ProxyService, limits: HeadLimits) -> io::Result<()> {
    let closing = &svc.conn.closing;
    // What a response's writes gather (its head, body frames, chunk framing): one per connection, emptied by
    // each write. Made per response, it was the block whose pages mimalloc most often emptied and made anew
    // with hundreds of connections (`crate::allocator` says why that costs).
    let mut queue: Vec<Bytes> = Vec::with_capacity(4);
    loop {
        let parsed = poll_fn(|cx| {
            let mut guard = shared.lock();
            let inner = &mut *guard;
            loop {
                if !inner.buf.is_empty() {
                    match parse_request(&mut inner.buf, limits) {
                        Ok(Some(p)) => return Poll::Ready(Ok(Some(p))),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                // Closing between requests: a head not whole yet (a stray CRLF, a client half-way through its
                // next head) is not waited for — hyper's graceful shutdown closes such a connection too; waiting
                // would hold the drain for its whole grace (the header timeout is off while closing).
                if closing.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(None));
                }
                match ready!(inner.poll_fill(cx, 0)) {
                    // The client closed: between requests, or with half a head (nothing to answer).
                    Ok(0) | Err(_) => return Poll::Ready(Ok(None)),
                    Ok(_) => {}
                }
            }
        })
        .await;
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "request head refused");
                let mut out = BytesMut::with_capacity(128);
                write_status_line(&mut out, Version::HTTP_11, e.status());
                out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
                write_date(&mut out);
                out.extend_from_slice(b"\r\n");
                return write_all(&shared, &mut vec![out.freeze()]).await;
            }
        };
        let http11 = parsed.request.version() == Version::HTTP_11;
        let head_request = parsed.request.method() == Method::HEAD;
        let mut keep_alive = parsed.keep_alive;
        {
            let mut inner = shared.lock();
            inner.body = match parsed.body {
                BodyFraming::Length(0) => BodyRead::Done,
                BodyFraming::Length(n) => BodyRead::Length(n),
                BodyFraming::Chunked => BodyRead::Chunked(Chunked::Size),
            };
            inner.continue_owed = parsed.expect_continue && !matches!(inner.body, BodyRead::Done);
        }
        let empty = matches!(parsed.body, BodyFraming::Length(0));
        let (parts, ()) = parsed.request.into_parts();
        let src = (!empty).then(|| shared.clone() as Arc<dyn ReadBody>);
        let mut req = Request::from_parts(parts, H1Body { src });
        let upgrade = parsed.wants_upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut().insert(H1Upgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });
        // Kept whole, its head read in place and its body polled in place (split by `into_parts`, its body moved
        // into the writer and pinned there, it was three copies of a few hundred bytes a request).
        let mut response = svc.call_h1(req).await;
        let raw = response.body_mut().take_raw_fields();
        // The response starts: a `100 Continue` not yet begun is owed no more (as hyper's `Writing::Init` rule),
        // and one a body poll began (the body may be pumped by another task, for an h2 backend) is finished
        // first, so that it never lands inside the response.
        let interim_begun = {
            let mut inner = shared.lock();
            inner.continue_owed = false;
            !inner.interim.is_empty()
        };
        if interim_begun {
            std::future::poll_fn(|cx| shared.lock().poll_continue(cx)).await?;
        }
        if response.headers().get_all(CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"close")) {
            keep_alive = false;
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(tx) = upgrade {
                let mut out = BytesMut::with_capacity(256);
                encode_head(&mut out, &response, None, http11, Out::None, true);
                write_all(&shared, &mut vec![out.freeze()]).await?;
                let mut inner = shared.lock();
                let io = inner.io.take().ok_or(io::ErrorKind::NotConnected)?;
                let read = inner.buf.split().freeze();
                let _ = tx.send(Upgraded::new(Box::new(io), read));
                return Ok(());
            }
        }
        let out = framing(&response, response.body().size_hint(), head_request, http11);
        if out == Out::Close {
            keep_alive = false;
        }
        if closing.load(Ordering::Relaxed) {
            keep_alive = false;
        }
        write_response(&shared, &mut queue, &mut response, raw.as_ref(), out, http11, keep_alive).await?;
        // The body ends with its write, as when it was moved into the writer: its backend connection goes back to
        // the pool and its guard is released before the next request is read.
        drop(response);
        // A body of many small frames ready at once may have grown it: an idle connection does not keep that.
        if queue.capacity() > 16 {
            queue = Vec::with_capacity(4);
        }
        let body_done = empty || matches!(shared.lock().body, BodyRead::Done);
        // A body nobody read to its end: the connection cannot serve again (the lingering close takes the rest).
        if !keep_alive || !body_done {
            return Ok(());
        }
    }
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// To the close: an HTTP/1.0 client and a body of unknown length.
    Close,
}

/// RFC 9112 §6.3 from the server's side, as hyper decides it.
fn framing<B>(response: &http::Response<B>, hint: SizeHint, head_request: bool, http11: bool) -> Out {
    let status = response.status();
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Out::None;
    }
    if let Some(n) = hint.exact() {
        return Out::Length(n);
    }
    if let Some(n) = response.headers().get(CONTENT_LENGTH).and_then(|v| crate::http1::parse_decimal(v.as_bytes())) {
        return Out::Length(n);
    }
    if http11 {
        Out::Chunked
    } else {
        Out::Close
    }
}

fn write_status_line(out: &mut BytesMut, version: Version, status: StatusCode) {
    if version == Version::HTTP_11 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The response head: the status line (with the backend's own reason phrase, if it had one), the fields as
/// they are but the framing ones, which follow `out`, and `Connection` and `Date` when needed.
fn encode_head<B>(
    out: &mut BytesMut,
    response: &http::Response<B>,
    raw: Option<&RawFields>,
    http11: bool,
    framing: Out,
    keep_alive: bool,
) {
    out.reserve(512);
    // An HTTP/1.0 client gets an HTTP/1.0 status line, as hyper answers it.
    let version = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => {
            out.extend_from_slice(if http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
            out.extend_from_slice(response.status().as_str().as_bytes());
            out.extend_from_slice(b" ");
            out.extend_from_slice(reason.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => write_status_line(out, version, response.status()),
    }
    let no_length = response.status().is_informational() || response.status() == StatusCode::NO_CONTENT;
    let mut wrote_length = false;
    let (mut has_connection, mut has_date) = (false, false);
    // The backend's fields as it wrote them, when they were kept so (none of them framing or hop-by-hop); the
    // map then holds only what reveille adds.
    if let Some(raw) = raw {
        raw.write(out);
        has_date = raw.has_date();
    }
    for (name, value) in response.headers() {
        if *name == TRANSFER_ENCODING {
            continue;
        }
        has_connection |= *name == CONNECTION;
        has_date |= *name == DATE;
        if *name == CONTENT_LENGTH {
            if no_length || wrote_length || matches!(framing, Out::Chunked | Out::Close) {
                continue;
            }
            wrote_length = true;
        }
        put_field(out, name, value);
    }
    match framing {
        Out::Length(n) if !wrote_length => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !has_connection {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if !http11 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the response: its head with the first bytes of its body, then the rest as the body gives it.
async fn write_response<S: Stream, B>(
    shared: &Arc<Mutex<Inner<S>>>,
    out: &mut Vec<Bytes>,
    response: &mut http::Response<B>,
    raw: Option<&RawFields>,
    framing: Out,
    http11: bool,
    keep_alive: bool,
) -> io::Result<()>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut head = BytesMut::with_capacity(512);
    encode_head(&mut head, response, raw, http11, framing, keep_alive);
    out.clear();
    out.push(head.freeze());
    if framing == Out::None {
        return write_all(shared, out).await;
    }
    let mut body = Pin::new(response.body_mut());
    let mut left = match framing {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    let mut queued = 0usize;
    loop {
        // A frame ready now joins what is queued; when none is, what is queued goes out first.
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let frame = match next {
            None => {
                write_all(shared, out).await?;
                queued = 0;
                continue;
            }
            Some(frame) => frame,
        };
        match frame {
            None => {
                if framing == Out::Chunked {
                    out.push(last_chunk(None));
                } else if matches!(framing, Out::Length(_)) && left != 0 {
                    let _ = write_all(shared, out).await;
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "response body shorter than its length"));
                }
                return write_all(shared, out).await;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing");
                let _ = write_all(shared, out).await;
                return Err(io::Error::other("response body failed"));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    match framing {
                        Out::Chunked => {
                            out.push(chunk_size_line(data.len()));
                            queued += data.len();
                            out.push(data);
                            out.push(Bytes::from_static(b"\r\n"));
                        }
                        _ => {
                            let n = (data.len() as u64).min(left);
                            left -= n;
                            queued += n as usize;
                            out.push(data.slice(..n as usize));
                        }
                    }
                    if queued > INLINE_BODY {
                        write_all(shared, out).await?;
                        queued = 0;
                    }
                }
                Err(frame) => {
                    if let (Out::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                        out.push(last_chunk(Some(&trailers)));
                        return write_all(shared, out).await;
                    }
                }
            },
        }
        if matches!(framing, Out::Length(_)) && left == 0 && body.is_end_stream() {
            return write_all(shared, out).await;
        }
    }
}

/// Writes `out` whole (vectored on plain TCP; gathered into one buffer for TLS, one record), then flushes.
async fn write_all<S: Stream>(shared: &Arc<Mutex<Inner<S>>>, out: &mut Vec<Bytes>) -> io::Result<()> {
    poll_fn(|cx| {
        let mut guard = shared.lock();
        let mut io = guard.io()?;
        if out.len() > 1 && !io.is_write_vectored() {
            let mut one = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
            for b in out.drain(..) {
                one.extend_from_slice(&b);
            }
            out.push(one.freeze());
        }
        while !out.is_empty() {
            let n = if out.len() == 1 {
                ready!(io.as_mut().poll_write(cx, &out[0]))?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 16];
                let k = out.len().min(slices.len());
                for (slice, b) in slices.iter_mut().zip(out.iter()) {
                    *slice = io::IoSlice::new(b);
                }
                ready!(io.as_mut().poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut n = n;
            while n > 0 {
                if n >= out[0].len() {
                    n -= out[0].len();
                    out.remove(0);
                } else {
                    out[0].advance(n);
                    n = 0;
                }
            }
        }
        io.as_mut().poll_flush(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    #[test]
    fn heads_frame_their_bodies() {
        let mut resp = Response::new(());
        resp.headers_mut().insert("x-a", "b".parse().unwrap());
        let mut out = BytesMut::new();
        encode_head(&mut out, &resp, None, true, Out::Length(5), true);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 5\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let mut out = BytesMut::new();
        encode_head(&mut out, &resp, None, false, Out::Close, false);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n") && !text.contains("content-length"), "{text}");
        assert_eq!(framing(&resp, SizeHint::default(), false, true), Out::Chunked);
        assert_eq!(framing(&resp, SizeHint::default(), false, false), Out::Close);
        assert_eq!(framing(&resp, SizeHint::with_exact(3), true, true), Out::None);
    }
}
