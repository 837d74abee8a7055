//! One stream of reveille's own HTTP/2 server (`conn::h2`, on the codec in `crate::http2`), served in its
//! connection's task: the request (its body the stream's receiving half) goes through the handler like any
//! other request, and the response goes back as the client's flow-control windows allow, then its trailers
//! (gRPC's status).
//!
//! As on hyper's server: a client's `RST_STREAM` while the handler runs drops the request (and its backend
//! stream or connection); a response whose client takes nothing of it within the send timeout is reset
//! (`stream::Guarded`, the same watch as hyper's spawned stream tasks had); a body of known length gets its
//! `content-length` when the backend gave none, and a `date` when the response has none.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{ready, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderValue, Request};
use http_body::Body;
use tracing::debug;

use super::body::ClientBody;
use super::conn::{date_now, InFlight};
use super::handler;
use super::ProxyService;
use crate::http2::frame::Reason;
use crate::http2::server::{RequestBody, Respond, StreamError};

/// Serves one stream to its end: the request through the handler, then its response.
pub(super) async fn serve(svc: &ProxyService, req: Request<RequestBody>, mut respond: Respond) {
    let guard = InFlight::new(&svc.conn);
    let req = req.map(ClientBody::H2);
    let mut handled = pin!(handler::handle(svc, req, guard));
    // The client may reset the stream while the request is on its way: then it is dropped. Looked at before the
    // handler runs, so that a stream opened and reset in one read (the rapid-reset attack) starts no work.
    let response = poll_fn(|cx| {
        if let Poll::Ready(reason) = respond.poll_reset(cx) {
            debug!(%reason, "h2: the stream was reset before its response");
            return Poll::Ready(None);
        }
        handled.as_mut().poll(cx).map(Some)
    })
    .await;
    let Some(response) = response else { return };
    let (mut head, mut body) = response.into_parts();
    // As hyper's server did, and reveille's HTTP/1.1 side does: a response without a `Date` gets one.
    head.headers.entry(DATE).or_insert_with(date_now);
    if body.is_end_stream() {
        if let Err(e) = respond.send_response(&head, true) {
            debug!(error = %e, "h2: sending the response failed");
        }
        return;
    }
    if let Some(n) = body.size_hint().exact() {
        head.headers.entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(n));
    }
    if let Err(e) = respond.send_response(&head, false) {
        debug!(error = %e, "h2: sending the response failed");
        return;
    }
    if let Err(e) = pipe(Pin::new(&mut body), &mut respond).await {
        debug!(error = %e, "h2: the response ended early");
    }
}

/// The reset reason a failed body passes on: a backend's reset stream's reason under it, as hyper's server did,
/// else `INTERNAL_ERROR`.
fn reason_of(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(StreamError::Reset(reason)) = s.downcast_ref::<StreamError>() {
            return *reason;
        }
        if let Some(reason) = s.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Reason(u32::from(reason));
        }
        src = s.source();
    }
    Reason::INTERNAL_ERROR
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
enum PipeError {
    #[error("the client reset the stream ({0})")]
    Reset(Reason),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the response body failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Sends `body` on `respond`: each data frame as the windows allow (a frame past them waits here, so a client
/// that reads slowly slows its own stream only), then the trailers, or the end of the stream. A body that fails
/// resets the stream; a stream reset while the body waits on its backend drops the body.
async fn pipe<B>(mut body: Pin<&mut B>, respond: &mut Respond) -> Result<(), PipeError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // A data frame taken from the body, not all sent yet; and whether it ends the body.
    let mut held: Option<(Bytes, bool)> = None;
    poll_fn(|cx| loop {
        if let Some((data, eos)) = held.as_mut() {
            ready!(respond.poll_send_data(cx, data, *eos))?;
            let eos = *eos;
            held = None;
            if eos {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        if let Poll::Ready(reason) = respond.poll_reset(cx) {
            return Poll::Ready(Err(PipeError::Reset(reason)));
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => held = Some((data, body.is_end_stream())),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        respond.send_trailers(&trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                respond.reset(reason_of(&e));
                return Poll::Ready(Err(PipeError::Body(Box::new(e))));
            }
            None => held = Some((Bytes::new(), true)),
        }
    })
    .await
}
