//! A service's retry budget (Linkerd's, and Gateway API GEP-3388's shape): retries may add at most a share of the
//! requests seen over the last [`WINDOW_SECS`] seconds, plus a floor of [`FLOOR_PER_SEC`] a second so that a
//! quiet service can still retry. Counted in one-second slots of atomics: a request adds to its second's slot,
//! a retry sums the window's slots. Approximate by design at a slot's turn (a count added while another thread
//! clears the slot may be lost), which moves the budget by a request or two, never by a window.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::backend::stamp;

/// The window the budget is measured over, in seconds.
pub(crate) const WINDOW_SECS: u64 = 10;

/// Retries always allowed per second of the window, whatever the requests.
pub(crate) const FLOOR_PER_SEC: u32 = 3;

/// The requests and retries of one second.
#[derive(Debug, Default)]
struct Slot {
    /// The second (since the process's clock base, plus one) the counts are for; 0: never used.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The retries a service may still make.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u32,
    slots: [Slot; WINDOW_SECS as usize],
}

impl RetryBudget {
    /// A budget of `percent` extra requests (plus the floor).
    pub(crate) fn new(percent: u32) -> Self {
        Self { percent, slots: Default::default() }
    }

    /// The slot of `second`, cleared first if it still holds an older second's counts.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second && slot.second.compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// A request (not a retry) started `at`.
    pub(crate) fn deposit(&self, at: Instant) {
        self.deposit_in(second(at));
    }

    /// Takes one retry now if the budget allows it.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_in(second(Instant::now()))
    }

    /// A request arrived in `second`.
    fn deposit_in(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry in `second` if the budget allows it.
    fn withdraw_in(&self, second: u64) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let at = s.second.load(Ordering::Relaxed);
            if at != 0 && at + WINDOW_SECS > second && at <= second {
                requests += u64::from(s.requests.load(Ordering::Relaxed));
                retries += u64::from(s.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = requests * u64::from(self.percent) / 100 + u64::from(FLOOR_PER_SEC) * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The second `at` falls in (since the health clock's base, plus one: 0 is "never" in a slot).
fn second(at: Instant) -> u64 {
    stamp(at) / 1000 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_then_the_share() {
        let b = RetryBudget::new(20);
        // No requests: the floor only, 3 a second over the window.
        assert_eq!((0..100).filter(|_| b.withdraw_in(1)).count(), 30);
        // 500 requests in the window: 20% of them more.
        for _ in 0..500 {
            b.deposit_in(2);
        }
        assert_eq!((0..100).filter(|_| b.withdraw_in(2)).count(), 100);
        assert!(!b.withdraw_in(5));
        // Once the window has passed, what was spent is forgotten, and so are the requests.
        assert_eq!((0..100).filter(|_| b.withdraw_in(13)).count(), 30);
    }

    #[test]
    fn a_zero_budget_keeps_the_floor() {
        let b = RetryBudget::new(0);
        for _ in 0..1000 {
            b.deposit_in(1);
        }
        assert_eq!((0..100).filter(|_| b.withdraw_in(1)).count(), 30);
    }
}
