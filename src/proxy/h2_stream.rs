//! One stream of reveille's own HTTP/2 server (`conn::h2`), served in its connection's task: the request (its
//! head moved out of h2's, its body h2's receiving half) goes through the handler like any other request, and
//! the response goes back as the client's flow-control window allows, then its trailers (gRPC's status).
//!
//! As on hyper's server: a client's `RST_STREAM` while the handler runs drops the request (and its backend
//! stream or connection); a response whose client takes nothing of it within the send timeout is reset
//! (`stream::Guarded`, the same watch as hyper's spawned stream tasks had); a body of known length gets its
//! `content-length` when the backend gave none, and a `date` when the response has none.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{ready, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderValue, Request};
use http_body::Body;
use tracing::debug;

use super::body::{ClientBody, H2RequestBody};
use super::conn::{date_now, InFlight};
use super::handler;
use super::ProxyService;

/// Serves one stream to its end: the request through the handler, then its response.
pub(super) async fn serve(svc: &ProxyService, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let guard = InFlight::new(&svc.conn);
    let (parts, recv) = req.into_parts();
    let len = content_length(&parts.headers);
    let req = Request::from_parts(parts, ClientBody::H2(H2RequestBody::new(recv, len)));
    let mut handled = pin!(handler::handle(svc, req, guard));
    // The client may reset the stream while the request is on its way: then it is dropped.
    let response = poll_fn(|cx| {
        if let Poll::Ready(r) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => {
                debug!(?reason, "h2: the client reset the stream before its response");
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "h2: the stream ended before its response");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(response) = response else { return };
    let (head, mut body) = response.into_parts();
    let mut head = http::Response::from_parts(head, ());
    // As hyper's server did, and reveille's HTTP/1.1 side does: a response without a `Date` gets one.
    head.headers_mut().entry(DATE).or_insert_with(date_now);
    if body.is_end_stream() {
        if let Err(e) = respond.send_response(head, true) {
            debug!(error = %e, "h2: sending the response failed");
        }
        return;
    }
    if let Some(n) = body.size_hint().exact() {
        head.headers_mut().entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(n));
    }
    let mut send = match respond.send_response(head, false) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "h2: sending the response failed");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if let Err(e) = pipe(Pin::new(&mut body), &mut send).await {
        debug!(error = %e, "h2: the response ended early");
    }
}

/// The `content-length` a client declared (h2 holds the body's data to it).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The reset reason a failed body passes on: an h2 reason under it (a backend's reset stream), as hyper's
/// server did, else `INTERNAL_ERROR`.
fn reason_of(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(reason) = s.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        src = s.source();
    }
    Reason::INTERNAL_ERROR
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
enum PipeError {
    #[error("the client reset the stream ({0:?})")]
    Reset(Reason),
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("the response body failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Sends `body` on `send`: each data frame once the stream has window for it (h2 holds what is past the window,
/// up to its send buffer), so a client that reads slowly slows its own stream only; then the trailers, or the
/// end of the stream. A body that fails resets the stream.
async fn pipe<B>(mut body: Pin<&mut B>, send: &mut SendStream<Bytes>) -> Result<(), PipeError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // A data frame taken from the body, waiting for window; and whether it ends the body.
    let mut held: Option<(Bytes, bool)> = None;
    poll_fn(|cx| loop {
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            return Poll::Ready(Err(reason.map_or_else(PipeError::H2, PipeError::Reset)));
        }
        if held.is_some() {
            while send.capacity() == 0 {
                match ready!(send.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err(PipeError::Reset(Reason::CANCEL))),
                }
            }
            let (data, eos) = held.take().expect("checked above");
            send.send_data(data, eos)?;
            if eos {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if data.is_empty() {
                        send.send_data(data, eos)?;
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    send.reserve_capacity(1);
                    held = Some((data, eos));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                send.send_reset(reason_of(&e));
                return Poll::Ready(Err(PipeError::Body(Box::new(e))));
            }
            None => {
                send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    })
    .await
}
