//! One exchange with a backend over HTTP/1.1, written and read by the request's own task: [`send`] writes the
//! request head (with a small body, in the same `write`) and the rest of the body, reads the response head,
//! and returns the response with an [`UpstreamBody`] that reads the body straight from the socket as it is
//! polled.
//!
//! Why not `hyper::client::conn::http1`: there every backend connection is a task of its own. A request went
//! to it through a channel, woke it, was written by it, and its response head came back through a oneshot that
//! woke the request's task again; the response body crossed the same way. callgrind put hyper's client side
//! (the hand-offs, its dispatcher and its response parser) at about a quarter of reveille's instructions per
//! request.
//!
//! What it speaks, as hyper did: `Content-Length` and chunked bodies both ways (trailers kept), bodies read to
//! the connection's end, no body for `HEAD`, 204 and 304, interim 1xx responses skipped, `101 Switching
//! Protocols` handing the connection (and any bytes read past the head) to the tunnel, keep-alive by version and
//! `Connection`. A response that arrives while a streamed request body is still going out ends the upload (the
//! connection is then closed, not reused). A connection can serve again only when its response was read
//! exactly to its end with nothing after it: then [`UpstreamBody::take_reusable`] hands it to the caller, who
//! puts it back in the pool. The exchange never does (pingora's `release_http_session` is the proxy's too).
//!
//! Replays: an error tells whether any byte of the request went out ([`SendError::unsent`]) and whether any
//! byte of an answer came back, which is what the caller needs to decide what is safe to send again.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response};
use http_body::{Body, Frame, SizeHint};

use super::codec::{
    encode_head, is_interim, parse_head, response_framing, Appended, Framing, Head, RawFields, ReqFraming,
};
use super::connect::Conn;
use super::error::{BoxError, UpstreamError};
use super::h2::H2Body;
use super::wire::{Upgraded, Wire, READ_MAX};
use crate::http1::{chunk_size_line, last_chunk, Chunked, Decoded};

/// A whole request body up to this size goes out in the head's `write`.
const INLINE_BODY: usize = 16 * 1024;

/// A request body [`send`] can write: any body of `Bytes`. One that is in memory whole may hand it over at
/// once, and then a small one goes out in the same `write` as the head.
pub(crate) trait SendBody: Body<Data = Bytes> + Unpin {
    /// The whole body and its trailers, when it is in memory (taken once; the body is at its end after).
    fn take_whole(&mut self) -> Option<(Bytes, Option<HeaderMap>)> {
        None
    }
}

/// What goes out before the body: written from here by every attempt, never copied.
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    /// Origin form (`/path?query`).
    pub(crate) path: PathAndQuery,
    /// As they are to be sent (`Host` set, hop-by-hop fields gone).
    pub(crate) headers: HeaderMap,
    /// The downstream request asked for an upgrade: a `101` is expected, not an error.
    pub(crate) upgrade: bool,
    /// Fields sent after `headers` (the forwarding fields of an untrusted client's request).
    pub(crate) appended: Appended,
    /// The response's fields may be kept as the backend wrote them ([`RawFields`], in the response's body):
    /// its client is served by reveille's own HTTP/1.1 side, which writes them so, and this is not a `HEAD`.
    pub(crate) raw_fields: bool,
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

/// Sends a request (`req` and `body`) on `conn` and reads the response head. The response's body reads from the
/// connection; once it has been read to its end, [`UpstreamBody::take_reusable`] gives the connection back.
pub(crate) async fn send<B>(mut conn: Conn, req: &RequestHead, mut body: B) -> Result<Response<UpstreamBody>, SendError>
where
    B: SendBody,
    B::Error: Into<BoxError>,
{
    let wire = conn.get_mut();
    let framing = encode_head(
        &mut wire.head,
        &req.method,
        req.path.as_str(),
        &req.headers,
        &req.appended,
        body.size_hint().exact(),
    );
    wire.queue.push_back(wire.head.split().freeze());
    // A whole body small enough goes out with the head, in one write.
    let mut rest = None;
    if let Some((data, trailers)) = body.take_whole() {
        if framing == ReqFraming::Chunked {
            if !data.is_empty() {
                wire.queue.push_back(chunk_size_line(data.len()));
                wire.queue.push_back(data);
                wire.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            wire.queue.push_back(last_chunk(trailers.as_ref()));
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
    } else if !body.is_end_stream() {
        rest = Some(framing);
    }

    let mut progress = Progress { body_done: rest.is_none(), sent: false, answered: false, early: None };
    let written = std::future::poll_fn(|cx| poll_send(conn.get_mut(), cx, &mut body, rest, &mut progress)).await;
    let Progress { sent, mut answered, mut early, .. } = progress;
    if let Err(error) = written {
        // A backend that refuses a body answers and closes without reading it, and the write that fails may be
        // the first news of it: its answer, already here, counts.
        let salvaged = match error {
            UpstreamError::Io(_) if sent && early.is_none() => conn.get_mut().salvage_head(),
            _ => None,
        };
        answered |= !conn.get_mut().read.is_empty();
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
        None => match read_head(conn.get_mut(), &mut answered, req.raw_fields).await {
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
        Framing::Chunked => State::Chunked(Chunked::Size),
        Framing::Eof => State::Eof,
        Framing::Upgrade => State::Upgrade,
    };
    let (parts, raw) = head.into_parts();
    let mut body = UpstreamBody { conn: Some(conn), state, reusable, h2: None, raw };
    if body.state == State::Done {
        body.finish();
    }
    Ok(Response::from_parts(parts, body))
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
fn poll_send<B>(
    wire: &mut Wire,
    cx: &mut Context<'_>,
    body: &mut B,
    stream: Option<ReqFraming>,
    p: &mut Progress,
) -> Poll<Result<(), UpstreamError>>
where
    B: SendBody,
    B::Error: Into<BoxError>,
{
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
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UpstreamError::RequestBody(e.into()))),
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
                while let Some(head) = parse_head(&mut wire.read, false)? {
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

/// Reads until a final response head is complete.
async fn read_head(wire: &mut Wire, answered: &mut bool, keep_raw: bool) -> Result<Head, UpstreamError> {
    loop {
        while !wire.read.is_empty() {
            *answered = true;
            match parse_head(&mut wire.read, keep_raw)? {
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
    Chunked(Chunked),
    /// Until the backend closes.
    Eof,
    /// A 101: no body; the connection goes to the tunnel.
    Upgrade,
    Done,
    /// The body comes from an h2 stream (`UpstreamBody::h2`), not from this connection.
    H2,
}

/// A backend's response body, read from its connection as it is polled. At its end the connection can be taken
/// back for the pool ([`take_reusable`](Self::take_reusable)), when it can serve again; dropped with the body
/// (before its end, or never taken), it is closed. From an h2 backend it is the stream's body instead
/// ([`UpstreamBody::h2`]): the proxy handles both alike, at the cost of one branch.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    conn: Option<Conn>,
    state: State,
    /// The connection may serve another request once this body ends.
    reusable: bool,
    /// The h2 stream's body (`State::H2`); boxed, so an HTTP/1.1 body carries one empty pointer only.
    h2: Option<Box<H2Body>>,
    /// The response's fields, when they were kept as the backend wrote them (its parts have none then).
    raw: Option<RawFields>,
}

impl UpstreamBody {
    /// An h2 stream's body: read as the downstream side polls it, its stream's lease held until it ends. It
    /// never has a connection to give back (the connection stays with its other streams).
    pub(crate) fn h2(body: H2Body) -> Self {
        Self { conn: None, state: State::H2, reusable: false, h2: Some(Box::new(body)), raw: None }
    }

    /// The response's fields as the backend wrote them, if they were kept so (see [`RequestHead::raw_fields`]).
    pub(crate) fn raw_fields(&self) -> Option<&RawFields> {
        self.raw.as_ref()
    }

    /// Takes them, to write them.
    pub(crate) fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.raw.take()
    }

    /// The connection of a `101` response, for the tunnel (taken once).
    pub(crate) fn take_upgraded(&mut self) -> Option<Upgraded> {
        if self.state != State::Upgrade {
            return None;
        }
        self.conn.take().map(|c| c.into_inner().into_upgraded())
    }

    /// The connection, once the body has been read to its end and the connection can serve another request
    /// (taken once): the caller puts it back in the pool ([`Pooled::release`](super::pool::Pooled::release)).
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if self.state == State::Done {
            self.conn.take()
        } else {
            None
        }
    }

    /// The body ended: a connection that cannot serve again is closed now; one that can waits for
    /// [`take_reusable`](Self::take_reusable).
    fn finish(&mut self) {
        self.state = State::Done;
        if !self.reusable || self.conn.as_mut().is_some_and(|c| !c.get_mut().read.is_empty()) {
            self.conn = None;
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        mut chunk: Chunked,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        let wire = conn.get_mut();
        loop {
            match chunk.decode(&mut wire.read).map_err(|e| UpstreamError::Chunk(e.0))? {
                Decoded::Data(data) => {
                    self.state = State::Chunked(chunk);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::End(trailers) => {
                    self.finish();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Decoded::More(want) => {
                    self.state = State::Chunked(chunk);
                    match ready!(wire.poll_fill(cx, want)) {
                        Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Incomplete))),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(UpstreamError::Io(e)))),
                    }
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done | State::Upgrade => return Poll::Ready(None),
                State::H2 => {
                    let Some(h2) = this.h2.as_mut() else { return Poll::Ready(None) };
                    let res = Pin::new(&mut **h2).poll_frame(cx);
                    if let Poll::Ready(None | Some(Err(_))) = res {
                        // The stream's lease goes at once, not when the body is dropped.
                        this.h2 = None;
                    }
                    return res;
                }
                State::Chunked(chunk) => return this.poll_chunked(cx, chunk),
                State::Length(left) => {
                    let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
                    let wire = conn.get_mut();
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
                    let wire = conn.get_mut();
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
        match self.state {
            State::Done | State::Upgrade => true,
            State::H2 => self.h2.as_ref().is_none_or(|b| b.is_end_stream()),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            State::H2 => self.h2.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
