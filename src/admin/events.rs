//! `GET /api/events`: the events feed as server-sent events. Each event has its id, its kind as the event name
//! (`tenant`, `routes`, `certificates`) and a JSON object as data. A client that reconnects with
//! `Last-Event-ID` (browsers' `EventSource` does it by itself) gets what it missed; when that cannot be known
//! (an id from before a restart, or older than what is kept) it gets a `reset` event: reload the state, then
//! follow. A comment every 15 s keeps idle connections open through proxies. Each stream holds one of the
//! listener's subscriber slots until it ends.

use std::collections::VecDeque;
use std::convert::Infallible;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OwnedSemaphorePermit;

use crate::events::{Event, Events, Resume};
use crate::metrics::Metrics;

/// The admin listener's response body: whole, or a stream.
pub(super) type AdminBody = BoxBody<Bytes, Infallible>;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn frame(events: &Events, e: &Event) -> Bytes {
    Bytes::from(format!("id: {}\nevent: {}\ndata: {}\n\n", events.id(e), e.kind, e.data))
}

fn reset(position: &str) -> Bytes {
    Bytes::from(format!("id: {position}\nevent: reset\ndata: {{}}\n\n"))
}

/// A subscriber's slot, and its place in the subscribers gauge, until its stream ends.
struct Subscriber {
    metrics: crate::metrics::AdminMetrics,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.metrics.subscribers(-1);
    }
}

/// The response to `GET /api/events`; the stream holds `slot` until it ends.
pub(super) fn stream(
    metrics: &Metrics,
    events: &Events,
    req: &Request<Incoming>,
    slot: OwnedSemaphorePermit,
) -> Response<AdminBody> {
    metrics.admin().subscribers(1);
    let subscriber = Subscriber { metrics: metrics.admin().clone(), _slot: slot };
    let events = events.clone();
    let last = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let (resume, rx, position) = events.subscribe(last);
    // Browsers reconnect after this many milliseconds.
    let mut queue = VecDeque::from([Bytes::from_static(b"retry: 2000\n\n")]);
    match resume {
        Resume::Now => {}
        Resume::After(missed) => queue.extend(missed.iter().map(|e| frame(&events, e))),
        Resume::Reset => queue.push_back(reset(&position)),
    }
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let state = (queue, rx, events, tick, subscriber);
    let body = futures_util::stream::unfold(state, |(mut queue, mut rx, events, mut tick, subscriber)| async {
        loop {
            if let Some(chunk) = queue.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(chunk)), (queue, rx, events, tick, subscriber)));
            }
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(e) => queue.push_back(frame(&events, &e)),
                    // Too slow to follow: what it missed is gone, so it reloads.
                    Err(RecvError::Lagged(_)) => {
                        let (_, fresh, position) = events.subscribe(None);
                        rx = fresh;
                        queue.push_back(reset(&position));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = tick.tick() => queue.push_back(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(body).boxed())
        .expect("a static response")
}
