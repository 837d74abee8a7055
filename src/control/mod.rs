//! Route sources: where route tables come from and how changes reach the proxy.
//!
//! Owns loading, validating and watching route definitions (today: the routes file). A source builds a complete
//! set of routes and services (or a batch of changes) and hands it to the [`Composer`], the single writer of the
//! table in force. It does not know how
//! requests are routed (that is `routes/`) or proxied (`proxy/`).

pub mod compose;
pub mod etcd;
pub mod file;
pub mod ops;

pub use compose::{Change, Composer, Source};

use std::time::Duration;

/// Waits for the next change of a watched file or directory: a file-system event (then lets the burst settle
/// for `debounce` and drains it), or a `poll` tick for which `changed` says so (the safety net for file systems
/// that notify poorly, and the only way left when the watch could not be set up and `events` is closed).
/// Returns false at shutdown.
pub(crate) async fn next_change(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    poll: &mut tokio::time::Interval,
    debounce: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut changed: impl FnMut() -> bool,
) -> bool {
    let mut watching = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            ev = events.recv(), if watching => {
                if ev.is_none() {
                    watching = false;
                    continue;
                }
                tokio::time::sleep(debounce).await;
                while events.try_recv().is_ok() {}
                return true;
            }
            _ = poll.tick() => {
                if changed() {
                    return true;
                }
            }
        }
    }
}
