//! The list-then-watch session loop, for any key range and any consumer (a [`Sink`]).
//!
//! A session takes the shared client, lists `[start, end)` at one revision R and hands the whole listing to
//! the sink, then watches the range from R+1 and hands it each watch response as one batch, so a transaction
//! that writes several keys is never seen half-applied. When the watch breaks (etcd restarted, leader lost,
//! revision compacted, token expired, even a panic inside the etcd client), the sink keeps what it has, the
//! client is given up, and after a backoff the next session reconnects and lists again: nothing changed
//! meanwhile is lost. What the values mean, and what the sink does with a bad one, is the sink's business.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Event, KeyValue, WatchOptions};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{list_range, Etcd, EtcdError, MAX_MESSAGE, STREAM_CLOSED};

/// A consumer of a watched key range: what it is given of etcd, in order.
pub(crate) trait Sink: Sync {
    /// Every key/value of the range at `revision`: the sink's whole state from etcd, replacing the previous
    /// one. `first`: this is the watcher's first session; later ones follow a broken watch (a resync).
    fn replace(
        &self,
        revision: i64,
        kvs: Vec<KeyValue>,
        first: bool,
    ) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// The events of one watch response (never empty), all made at `revision`: to be applied together.
    fn update(&self, revision: i64, events: &[Event]) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// A watch response without events (the watch's creation, or a progress notification): etcd is at
    /// `revision`.
    fn progress(&self, _revision: i64) {}

    /// A session ended (its watch broke); the next one follows after a backoff.
    fn ended(&self) {}
}

/// Keeps `sink` in step with `[start, end)` until `shutdown`. `what` names the range in log lines.
pub(crate) async fn watch<S: Sink>(
    etcd: &Etcd,
    what: &str,
    range: (String, String),
    sink: &S,
    shutdown: CancellationToken,
) {
    let range = &range;
    supervise(what, |n| session(etcd, what, range, sink, n), || sink.ended(), etcd, shutdown).await
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// How a watch session ended: its error, and whether it had loaded its keys (which resets the backoff).
#[derive(Debug)]
struct SessionEnd {
    error: EtcdError,
    loaded: bool,
}

/// Runs watch sessions one after the other until `shutdown`: a session that ends (etcd restarted, leader lost,
/// revision compacted, token expired, even a panic inside the etcd client) is followed by another, after a
/// backoff that grows while sessions fail before loading anything. `ended` is called after each session.
///
/// What is logged: while reveille shuts down (`etcd` draining), an interruption at info. etcd gone (stopped,
/// restarted, unreachable) is one warning for the process, a line a person reads ("etcd at X went away:
/// connection refused; …retrying", or "cannot be reached" when it never answered), not one per watch and retry
/// with the transport's internals (those are at debug); any other end (a compacted revision, a permission
/// denied) is a warning with its details.
async fn supervise<F, Fut>(what: &str, mut session: F, ended: impl Fn(), etcd: &Etcd, shutdown: CancellationToken)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(), SessionEnd>>,
{
    let mut backoff = BACKOFF_MIN;
    let mut sessions = 0u64;
    // Whether a session of this watch ever loaded: etcd then went away, else it was never reached.
    let mut reached = false;
    loop {
        // A panic inside the etcd client (it asserts on some server answers) must not end the watcher.
        let run = std::panic::AssertUnwindSafe(session(sessions)).catch_unwind();
        let result = tokio::select! {
            r = run => r.unwrap_or_else(|_| Err(SessionEnd {
                error: EtcdError::WatchEnded("etcd client panicked".into()),
                loaded: false,
            })),
            _ = shutdown.cancelled() => return,
        };
        ended();
        sessions += 1;
        let end = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if end.loaded {
            backoff = BACKOFF_MIN;
            reached = true;
        }
        if etcd.is_draining() {
            info!(error = %end.error, "etcd watch of {what} interrupted while shutting down");
        } else if let Some(how) = end.error.gone() {
            if etcd.went_away() {
                let endpoints = etcd.config().endpoints.join(",");
                if reached {
                    warn!("etcd at {endpoints} went away: {how}; keeping what is in force and retrying");
                } else {
                    warn!("etcd at {endpoints} cannot be reached: {how}; retrying");
                }
            }
            debug!(error = %end.error, retry_in = ?backoff, "etcd watch of {what} still without etcd");
        } else {
            warn!(error = %end.error, retry_in = ?backoff, "etcd watch of {what} interrupted; keeping what is in force and reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session<S: Sink>(
    etcd: &Etcd,
    what: &str,
    range: &(String, String),
    sink: &S,
    n: u64,
) -> Result<(), SessionEnd> {
    let mut loaded = false;
    session_inner(etcd, what, range, sink, n, &mut loaded).await.map_err(|error| SessionEnd { error, loaded })
}

/// One session: list, hand over, watch until something breaks.
async fn session_inner<S: Sink>(
    etcd: &Etcd,
    what: &str,
    (start, end): &(String, String),
    sink: &S,
    n: u64,
    loaded: &mut bool,
) -> Result<(), EtcdError> {
    let connection = etcd.client().await?;
    // However this session ends (an error, or a panic inside the client), the next one connects afresh.
    let _give_up = GiveUpOnDrop { etcd, generation: connection.generation() };
    let client = &connection.client;
    let (revision, kvs) = list_range(client, start, end, etcd.config().timeout).await?;
    sink.replace(revision, kvs, n == 0).await?;
    // A successful load resets the backoff.
    *loaded = true;
    if etcd.came_back() {
        info!("etcd at {} is back; {what} reloaded", etcd.config().endpoints.join(","));
    }

    let (_watcher, mut stream) = watch_from(client, start.clone(), end.clone(), revision).await?;
    loop {
        let resp = next_response(&mut stream, revision).await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        if resp.events().is_empty() {
            sink.progress(rev);
        } else {
            sink.update(rev, resp.events()).await?;
        }
    }
}

/// Tells the shared client that a session's connection is given up, when the session ends.
struct GiveUpOnDrop<'a> {
    etcd: &'a Etcd,
    generation: u64,
}

impl Drop for GiveUpOnDrop<'_> {
    fn drop(&mut self) {
        self.etcd.failed_generation(self.generation);
    }
}

/// Opens a watch of `[start, end)` from `revision + 1` (the revision a listing was made at).
async fn watch_from(
    client: &Client,
    start: String,
    end: String,
    revision: i64,
) -> Result<(etcd_client::Watcher, etcd_client::WatchStream), EtcdError> {
    let options = WatchOptions::new().with_range(end).with_start_revision(revision + 1).with_progress_notify();
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    Ok(watch_client.watch(start, Some(options)).await?)
}

/// The next watch response; an error when the stream closes or etcd cancels the watch (`from` is the revision
/// the watch started after, for the message).
async fn next_response(
    stream: &mut etcd_client::WatchStream,
    from: i64,
) -> Result<etcd_client::WatchResponse, EtcdError> {
    let Some(resp) = stream.message().await? else {
        return Err(EtcdError::WatchEnded(STREAM_CLOSED.into()));
    };
    if resp.canceled() {
        let reason = match resp.compact_revision() {
            0 => resp.cancel_reason().to_string(),
            c => format!("revision {} compacted (now {c})", from + 1),
        };
        return Err(EtcdError::WatchEnded(format!("canceled: {reason}")));
    }
    Ok(resp)
}
