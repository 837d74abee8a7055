//! Requests and 5xx per second over the last minute, per service, for `/api/services` and the dashboard: made
//! from the counters the proxy already keeps (`reveille_requests_total` by service and class), read every
//! [`SAMPLE_EVERY`] by a task of the admin listener and kept for a minute. Nothing is added to the request path.
//!
//! A rate is over the span between the oldest sample kept (at most [`WINDOW`] old) and the newest; until two
//! samples exist (the first [`SAMPLE_EVERY`] after start), there is none.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::routes::RouteHandle;

/// How often the counters are read.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The span a rate covers, at most.
const WINDOW: Duration = Duration::from_secs(60);

/// One reading of every service's counters: responses so far, and 5xx among them.
struct Sample {
    at: Instant,
    totals: HashMap<Arc<str>, (u64, u64)>,
}

/// The readings of the last minute. Locked only by the sampler (every few seconds) and by `/api/services`.
#[derive(Default, Clone)]
pub(super) struct Rates {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

/// A service's rates over the window, per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    pub requests: f64,
    pub errors: f64,
    /// The span they cover.
    pub over: Duration,
}

impl Rates {
    /// Reads the counters of every service of the table in force every [`SAMPLE_EVERY`] until `shutdown`.
    pub(super) async fn run(self, routes: RouteHandle, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&routes, Instant::now()),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes one reading at `at`, and forgets the readings the window no longer needs (it keeps the newest one
    /// older than the window, so a rate always covers a whole minute once there is one).
    fn sample(&self, routes: &RouteHandle, at: Instant) {
        let table = routes.snapshot();
        let totals = table
            .services()
            .filter_map(|(name, s)| s.stats_if_any().map(|stats| (name.clone(), stats.totals())))
            .collect();
        let mut samples = self.samples.lock();
        samples.push_back(Sample { at, totals });
        while samples.get(1).is_some_and(|s| at.duration_since(s.at) >= WINDOW) {
            samples.pop_front();
        }
    }

    /// `service`'s rates over the samples kept; `None` before there are two. A service that answered nothing
    /// has 0.
    pub(super) fn of(&self, service: &str) -> Option<Rate> {
        let samples = self.samples.lock();
        let (first, last) = (samples.front()?, samples.back()?);
        let over = last.at.duration_since(first.at);
        if over.is_zero() {
            return None;
        }
        let get = |s: &Sample| s.totals.get(service).copied().unwrap_or((0, 0));
        let ((r0, e0), (r1, e1)) = (get(first), get(last));
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / over.as_secs_f64();
        Some(Rate { requests: per_s(r0, r1), errors: per_s(e0, e1), over })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_last_minute() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let push = |at: Instant, total: u64, errors: u64| {
            let totals = HashMap::from([(Arc::from("a"), (total, errors))]);
            rates.samples.lock().push_back(Sample { at, totals });
        };
        push(t0, 100, 0);
        assert_eq!(rates.of("a"), None, "one sample is no rate");
        push(t0 + Duration::from_secs(10), 150, 10);
        let r = rates.of("a").unwrap();
        assert_eq!((r.requests, r.errors, r.over), (5.0, 1.0, Duration::from_secs(10)));
        assert_eq!(rates.of("unseen").unwrap().requests, 0.0);
    }
}
