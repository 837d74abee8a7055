//! Pressure on the connection slots: while nearly every slot is taken, the waits a client imposes are cut to the
//! overload timeout, and a newcomer with no free slot evicts the connection that has waited longest on its
//! client. Every open connection is entered in [`Pressure`]'s registry for that, which also carries a rise of
//! pressure and the shutdown to each connection (its signals).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::{ConnState, Signal, Slot};

/// Eviction spares connections that have waited less than this: a newcomer that has not yet sent its request is
/// not evicted by the next one.
const EVICT_AFTER_MS: u64 = 50;

/// An evicted connection normally ends within a millisecond; one still open after this no longer counts as an
/// eviction in progress (see [`Pressure::evict_one`]).
const EVICTION_SETTLE_MS: u64 = 1_000;
/// Whether nearly every connection slot is taken. While it is, the waits a client imposes (idle keep-alive,
/// request head, request body, not reading its response) are cut to the overload timeout, so a flood of slow
/// clients turns over in seconds instead of holding every slot for a minute each (Envoy's overload manager
/// does the same with `reduce_timeouts`). Re-evaluated at each accept: on when fewer than a tenth of the slots
/// are free, off again once a fifth are.
pub(crate) struct Pressure {
    /// Every open connection, so that one waiting on its client can be evicted for a newcomer, and each can be
    /// told of a rise of pressure and of the shutdown. A slab: a connection's key is its index, taken and given
    /// back with no hashing (a hash map's insert and remove were about 200 instructions of every connection).
    pub(super) conns: parking_lot::Mutex<Registry>,
    high: AtomicBool,
    /// Woken when pressure rises, so the waits before a request and the lingering closes apply the shorter
    /// limits at once (connections serving HTTP are told through their signals).
    pub(super) rose: tokio::sync::Notify,
    /// The proxy is shutting down: every connection is told, those registered after it too.
    shutting_down: AtomicBool,
    slots: usize,
    /// The cut, in ms; 0 = never cut.
    pub(super) cap_ms: u64,
    /// Accept loops waiting for a slot for a client they accepted (see [`Pressure::waiter`]).
    waiting: AtomicUsize,
}

/// The open connections, by their key in the slab.
pub(super) type Registry = slab::Slab<std::sync::Weak<ConnState>>;

/// An accept loop's wait for a slot, counted while it lasts.
pub(crate) struct Waiter<'a>(&'a Pressure);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pressure {
    pub(crate) fn new(slots: usize, cap: Duration) -> Self {
        Self {
            conns: parking_lot::Mutex::new(Registry::default()),
            high: AtomicBool::new(false),
            rose: tokio::sync::Notify::new(),
            shutting_down: AtomicBool::new(false),
            slots,
            cap_ms: cap.as_millis() as u64,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Counts an accept loop waiting for a slot until the guard is dropped: as many evictions as waiters may be
    /// in progress at once.
    pub(crate) fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter(self)
    }

    /// Takes note of the free slots.
    pub(crate) fn update(&self, free: usize, metrics: &crate::metrics::Metrics) {
        if self.cap_ms == 0 {
            return;
        }
        let was = self.high.load(Ordering::Relaxed);
        let high = if was { free < (self.slots / 5).max(1) } else { free < (self.slots / 10).max(1) };
        if high != was {
            self.high.store(high, Ordering::Relaxed);
            metrics.set_overloaded(high);
            if high {
                tracing::warn!(
                    free,
                    slots = self.slots,
                    "nearly every connection slot is taken: client waits are cut to the overload timeout"
                );
                self.rose.notify_waiters();
                self.tell_all(Signal::ROSE);
            } else {
                tracing::info!(free, slots = self.slots, "connection slots available again: normal timeouts");
            }
        }
    }

    /// Tells every open connection that the proxy is shutting down (they finish what is in flight and close), and
    /// every connection registered from now on. Called by each accept loop as it stops.
    pub(crate) fn shut_down(&self) {
        // Once: every accept loop calls it, and a connection registered later sees the flag.
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            self.tell_all(Signal::SHUTDOWN);
        }
    }

    /// Sets `signal` on every open connection.
    fn tell_all(&self, signal: u8) {
        for c in self.open() {
            c.signal(signal);
        }
    }

    /// The open connections, looked at outside the registry's lock: dropping the last reference to a connection
    /// takes the lock again.
    fn open(&self) -> impl Iterator<Item = Arc<ConnState>> {
        let conns: Vec<std::sync::Weak<ConnState>> = self.conns.lock().iter().map(|(_, c)| c.clone()).collect();
        conns.into_iter().filter_map(|c| c.upgrade())
    }

    /// Every slot is taken and a client waits for one: evicts the connection that has waited longest on its
    /// client (or on a quiet backend), if one has waited at least [`EVICT_AFTER_MS`], so the newcomer is served
    /// at once instead of after the attacker's next timeout. A lingering connection (its response is out) goes
    /// first. Connections doing work (a request waiting for its response head, a response flowing, a tunnel)
    /// are never evicted. Called again while the newcomer waits; evicts nobody while the evictions already
    /// made for the waiting newcomers have not ended yet. Every eviction is counted. Returns whether one was.
    pub(crate) fn evict_one(&self, metrics: &crate::metrics::Metrics) -> bool {
        if self.cap_ms == 0 {
            return false;
        }
        let mut in_progress = 0;
        let mut victim: Option<(u64, Arc<ConnState>)> = None;
        for c in self.open() {
            let at = c.evicted_at.load(Ordering::Relaxed);
            if at != 0 {
                if c.now_ms() + 1 < at + EVICTION_SETTLE_MS {
                    in_progress += 1;
                }
                continue;
            }
            if let Some(w) = c.waiting_ms().filter(|&w| w >= EVICT_AFTER_MS) {
                if victim.as_ref().is_none_or(|(v, _)| w > *v) {
                    victim = Some((w, c));
                }
            }
        }
        if in_progress >= self.waiting.load(Ordering::Relaxed).max(1) {
            return false;
        }
        match victim {
            Some((waited_ms, c)) => {
                if waited_ms == u64::MAX {
                    debug!("every slot taken: evicting a lingering connection");
                } else {
                    debug!(waited_ms, "every slot taken: evicting the connection that waited longest");
                }
                c.evicted_at.store(c.now_ms() + 1, Ordering::Relaxed);
                c.signal(Signal::EVICTED);
                metrics.connection_evicted();
                true
            }
            None => false,
        }
    }

    pub(super) fn is_high(&self) -> bool {
        self.high.load(Ordering::Relaxed)
    }

    /// Resolves once pressure is high and the overload timeout has passed since `since`: a connection still
    /// waiting for its client's first bytes or TLS handshake then is cut. Never resolves with the cut off.
    pub(super) async fn cut_after(&self, since: Instant) {
        if self.cap_ms == 0 {
            return std::future::pending().await;
        }
        loop {
            let rose = self.rose.notified();
            tokio::pin!(rose);
            rose.as_mut().enable();
            if self.is_high() {
                return tokio::time::sleep_until(since + Duration::from_millis(self.cap_ms)).await;
            }
            rose.await;
        }
    }

    /// `ms`, cut to the overload timeout while pressure is high.
    pub(crate) fn cap(&self, ms: u64) -> u64 {
        if self.is_high() {
            ms.min(self.cap_ms)
        } else {
            ms
        }
    }
}

impl ConnState {
    /// A new connection's state, entered in `pressure`'s registry.
    pub(super) fn register(slot: Slot, pressure: Arc<Pressure>) -> Arc<Self> {
        // Made under the registry's lock, with the key its entry will have.
        let mut conns = pressure.conns.lock();
        let entry = conns.vacant_entry();
        let state = Arc::new(Self::new(slot, pressure.clone(), entry.key()));
        entry.insert(Arc::downgrade(&state));
        drop(conns);
        // After the insert: a shutdown that began before it did not see this connection in the registry, and
        // its flag is visible here (the registry's lock orders the two).
        if state.pressure.shutting_down.load(Ordering::SeqCst) {
            state.signal(Signal::SHUTDOWN);
        }
        state
    }
}

#[cfg(test)]
impl ConnState {
    /// A connection's state for a unit test: its own one slot, registered with `pressure`.
    pub(super) fn for_test(pressure: &Arc<Pressure>) -> Arc<Self> {
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let slot = Slot { _permit: permit, _address: None, metrics: Arc::new(crate::metrics::Metrics::new()) };
        Self::register(slot, pressure.clone())
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.pressure.conns.lock().remove(self.id);
    }
}

/// Calls [`Pressure::shut_down`] when dropped: an accept loop that ends, however it ends, tells the connections.
pub(crate) struct ShutDownOnExit<'a>(pub(crate) &'a Pressure);

impl Drop for ShutDownOnExit<'_> {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn connection(pressure: &Arc<Pressure>) -> Arc<ConnState> {
        ConnState::for_test(pressure)
    }

    #[test]
    fn connections_are_told_of_a_rise_the_shutdown_and_their_eviction_and_woken() {
        let pressure = Arc::new(Pressure::new(10, Duration::from_secs(1)));
        let metrics = crate::metrics::Metrics::new();
        let first = connection(&pressure);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let all = Signal::EVICTED | Signal::SHUTDOWN | Signal::ROSE;
        assert_eq!(first.poll_signals(&mut cx, all), Poll::Pending);

        // Every slot taken: pressure rises, the connection is woken and told once.
        pressure.update(0, &metrics);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.poll_signals(&mut cx, all), Poll::Ready(Signal::ROSE));
        assert_eq!(first.poll_signals(&mut cx, all), Poll::Pending);

        // The shutdown: told, and it stays told; not to a wait that does not look for it.
        pressure.shut_down();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(first.poll_signals(&mut cx, all), Poll::Ready(Signal::SHUTDOWN));
        assert_eq!(first.poll_signals(&mut cx, all), Poll::Ready(Signal::SHUTDOWN));
        assert_eq!(first.poll_signals(&mut cx, Signal::EVICTED), Poll::Pending);
        // A connection registered after the shutdown began is told at once (later, so that it has waited less).
        std::thread::sleep(Duration::from_millis(5));
        let late = connection(&pressure);
        assert_eq!(late.poll_signals(&mut cx, all), Poll::Ready(Signal::SHUTDOWN));

        // A newcomer needs a slot: the connection that waited longest (past EVICT_AFTER_MS) is evicted and woken.
        std::thread::sleep(Duration::from_millis(EVICT_AFTER_MS + 20));
        assert!(pressure.evict_one(&metrics));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 3);
        assert!(first.is_evicted() && !late.is_evicted());
        assert_eq!(first.poll_signals(&mut cx, Signal::EVICTED), Poll::Ready(Signal::EVICTED));
        assert_eq!(first.waiting_ms(), None, "an evicted connection is not evicted again");
    }
}
