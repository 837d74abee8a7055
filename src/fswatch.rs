//! Waiting for a watched file or directory to change: file-system events (notify) with a poll as the safety
//! net, shared by the routes file (`control::file`) and the certificates directory (`tls::dir`).
//!
//! Owns setting the watch up (a directory, not recursive), ignoring access events (reveille's own reads would
//! otherwise trigger the next reload, forever), debouncing a burst of events, and polling: on file systems that
//! notify poorly, and as the only way left when the watch could not be set up. It does not read or parse
//! anything: the caller says which events are relevant and how to tell, on a poll tick, that something changed.

use std::path::Path;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// A watch of one directory's changes.
pub(crate) struct FsWatch {
    /// One `()` per relevant event; closed when the watch could not be set up.
    events: UnboundedReceiver<()>,
    /// Kept alive for as long as we watch; `None` when the platform watch failed and we only poll.
    _watcher: Option<notify::RecommendedWatcher>,
    /// How often the caller's `changed` check runs even without an event.
    poll_every: Duration,
    /// Made at the first wait (it needs the runtime's timer).
    poll: Option<tokio::time::Interval>,
    /// How long a burst of events is given to end.
    debounce: Duration,
}

impl FsWatch {
    /// Starts watching `dir` right away (before the caller's first load, so no change can slip between the
    /// two). `relevant` picks the events that matter (access events never do). On error, the caller reports it
    /// and falls back to [`FsWatch::polling`].
    pub(crate) fn new(
        dir: &Path,
        relevant: impl Fn(&notify::Event) -> bool + Send + 'static,
        poll_every: Duration,
        debounce: Duration,
    ) -> Result<Self, notify::Error> {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|ev| !ev.kind.is_access() && relevant(&ev)) {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(Self { events, _watcher: Some(watcher), poll_every, poll: None, debounce })
    }

    /// No file-system events: only the poll.
    pub(crate) fn polling(poll_every: Duration, debounce: Duration) -> Self {
        let (_, events) = tokio::sync::mpsc::unbounded_channel();
        Self { events, _watcher: None, poll_every, poll: None, debounce }
    }

    /// Waits for the next change: a relevant event (then lets the burst settle and drains it), or a poll tick
    /// for which `changed` says so. Returns false at shutdown.
    pub(crate) async fn next_change(
        &mut self,
        shutdown: &CancellationToken,
        mut changed: impl FnMut() -> bool,
    ) -> bool {
        let poll_every = self.poll_every;
        let poll = self.poll.get_or_insert_with(|| {
            let mut poll = tokio::time::interval(poll_every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll
        });
        let mut watching = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                ev = self.events.recv(), if watching => {
                    if ev.is_none() {
                        watching = false;
                        continue;
                    }
                    tokio::time::sleep(self.debounce).await;
                    while self.events.try_recv().is_ok() {}
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
}
