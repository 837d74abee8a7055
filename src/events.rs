//! The events feed: what changed, in order, for the admin API's `GET /api/events` (server-sent events) and
//! whatever watches it (the dashboard).
//!
//! `app::start` makes one feed and hands it to its publishers: the route composer (`routes`), the certificate
//! store (`certificates`) and the tenants (`tenant`); the admin listener follows it. Each event gets an id
//! `<boot>-<seq>`: `boot` names this process (its start time), `seq` counts from 1. The last [`KEPT`] events are
//! kept, so a client that reconnects with `Last-Event-ID` gets what it missed — or, when its id is from another
//! process or too old, a `reset` event telling it to reload the state it shows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Events kept for clients that resume.
pub(crate) const KEPT: usize = 4096;

/// One event.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    /// `tenant`, `routes`, `certificates`.
    pub kind: &'static str,
    /// The event's JSON object.
    pub data: serde_json::Value,
}

/// Where a subscriber starts.
#[derive(Debug)]
pub enum Resume {
    /// From now on (no id given).
    Now,
    /// After the given event: these are the ones it missed.
    After(Vec<Arc<Event>>),
    /// The id is from another process, or older than what is kept: reload everything.
    Reset,
}

struct Inner {
    boot: String,
    ring: Mutex<(u64, VecDeque<Arc<Event>>)>,
    tx: broadcast::Sender<Arc<Event>>,
}

/// The feed; cloning shares it.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("boot", &self.inner.boot).finish_non_exhaustive()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()).to_string();
        let (tx, _) = broadcast::channel(KEPT);
        Self { inner: Arc::new(Inner { boot, ring: Mutex::new((0, VecDeque::with_capacity(KEPT))), tx }) }
    }

    /// This process's part of every id.
    pub fn boot(&self) -> &str {
        &self.inner.boot
    }

    /// The id of `event`, as sent.
    pub fn id(&self, event: &Event) -> String {
        format!("{}-{}", self.inner.boot, event.seq)
    }

    /// Publishes an event. Cheap when nobody listens: one lock, one allocation.
    pub fn publish(&self, kind: &'static str, data: serde_json::Value) {
        let mut ring = self.inner.ring.lock();
        ring.0 += 1;
        let event = Arc::new(Event { seq: ring.0, kind, data });
        if ring.1.len() == KEPT {
            ring.1.pop_front();
        }
        ring.1.push_back(event.clone());
        // Sent under the lock, so a subscriber's backlog and its live events neither overlap nor leave a gap.
        let _ = self.inner.tx.send(event);
    }

    /// Subscribes, resuming after `last_id` (a `Last-Event-ID`) when given. Also returns the id of the last
    /// event published before the subscription (what a client that reloads its state is up to date with).
    pub fn subscribe(&self, last_id: Option<&str>) -> (Resume, broadcast::Receiver<Arc<Event>>, String) {
        let ring = self.inner.ring.lock();
        let rx = self.inner.tx.subscribe();
        let position = format!("{}-{}", self.inner.boot, ring.0);
        let resume = match last_id {
            None => Resume::Now,
            Some(id) => match id.split_once('-') {
                Some((boot, seq)) if boot == self.inner.boot => match seq.parse::<u64>() {
                    Ok(seq) if seq == ring.0 => Resume::After(Vec::new()),
                    Ok(seq) if seq < ring.0 && ring.1.front().is_some_and(|e| e.seq <= seq + 1) => {
                        Resume::After(ring.1.iter().filter(|e| e.seq > seq).cloned().collect())
                    }
                    _ => Resume::Reset,
                },
                _ => Resume::Reset,
            },
        };
        (resume, rx, position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_after_an_id_of_this_process_else_reset() {
        let e = Events::new();
        let (resume, mut rx, position) = e.subscribe(None);
        assert_eq!(position, format!("{}-0", e.boot()));
        assert!(matches!(resume, Resume::Now));
        e.publish("tenant", serde_json::json!({"service": "a"}));
        e.publish("routes", serde_json::json!({"routes": 1}));
        let first = rx.try_recv().unwrap();
        assert_eq!((first.seq, first.kind), (1, "tenant"));
        let id = e.id(&first);
        assert!(id.starts_with(e.boot()));

        let (resume, mut rx, _) = e.subscribe(Some(&id));
        let Resume::After(missed) = resume else { panic!("{resume:?}") };
        assert_eq!(missed.iter().map(|m| m.seq).collect::<Vec<_>>(), [2]);
        e.publish("certificates", serde_json::json!({}));
        assert_eq!(rx.try_recv().unwrap().seq, 3, "then live, with no gap and no repeat");

        let last = format!("{}-3", e.boot());
        assert!(matches!(e.subscribe(Some(&last)).0, Resume::After(v) if v.is_empty()));
        for stale in ["123-1", "garbage", &format!("{}-99", e.boot())] {
            assert!(matches!(e.subscribe(Some(stale)).0, Resume::Reset), "{stale}");
        }
        for _ in 0..KEPT {
            e.publish("tenant", serde_json::json!({}));
        }
        assert!(matches!(e.subscribe(Some(&id)).0, Resume::Reset), "older than what is kept");
    }
}
