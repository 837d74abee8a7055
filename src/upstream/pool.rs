//! Connections kept for reuse, by key: a pool that knows no HTTP (as `pingora-pool`), only idle connections
//! that can say whether they are still usable ([`Reusable`]).
//!
//! Why not hyper-util's legacy client: its pool checks a connection out and back through a shared pool with a
//! waiter queue, a spawned task per response to notice when the connection is free again, and several
//! allocations per request. Here a connection goes back to its key's idle list when whoever used it says it can
//! serve again ([`Pooled::release`]: the proxy, once a response body has been read to its end), and a checkout
//! takes the most recently used one (LIFO: warm, and the least likely to have been closed by the backend's idle
//! timer). A checked-out connection tells whether it served before ([`Pooled::is_reused`]): a backend may close
//! such a connection just as a request goes out, and the proxy replays what is safe to replay then.
//!
//! With the per-core scheduler each worker thread has its own idle lists (a shard, chosen by the thread's
//! [`worker`] index): a request takes a connection whose I/O is driven by its own thread's runtime, and no two
//! threads contend for a lock.
//!
//! Idle connections are kept up to `max_idle` per key, for `idle_timeout`. A sweep every few seconds closes the
//! expired ones (and those [`Reusable::is_usable`] gives up), so connections to backends nobody asks for any more
//! do not linger.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

thread_local! {
    /// This thread's worker index (0 unless [`set_worker`] said otherwise).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`: its checkouts and releases use that shard of every pool.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The current thread's worker index.
pub(crate) fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// A connection the pool can keep.
pub(crate) trait Reusable {
    /// An idle connection can take a request: the peer has not closed it, and sent nothing unasked. Called at
    /// every checkout, so it should cost no system call in the usual case.
    fn is_usable(&mut self) -> bool;
}

/// By key. The keys are the operator's backends, never a client's input, so a fast hash is safe; hashed as one
/// string (`http::uri::Authority`'s own hash feeds the hasher a byte at a time).
type IdleMap<T> = HashMap<Box<str>, Vec<Idle<T>>, foldhash::fast::RandomState>;

/// Idle connections of type `T` by key (`K`: what a checked-out connection remembers its key as).
pub(crate) struct Pool<K, T> {
    inner: Arc<Inner<T>>,
    _key: std::marker::PhantomData<fn(K)>,
}

impl<K, T> std::fmt::Debug for Pool<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("max_idle", &self.inner.max_idle).finish_non_exhaustive()
    }
}

struct Inner<T> {
    /// One map per worker thread ([`worker`] modulo their number).
    idle: Box<[Mutex<IdleMap<T>>]>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle<T> {
    conn: Box<T>,
    since: Instant,
}

/// A connection checked out for one use (or new, to be kept after it); [`Pooled::release`] puts it back, and
/// dropping it closes it.
pub(crate) struct Pooled<K, T> {
    /// Boxed: a checked-out connection moves through a request's futures, and a pointer moves cheaply.
    conn: Box<T>,
    key: K,
    pool: Weak<Inner<T>>,
    /// The shard it goes back to.
    shard: usize,
    reused: bool,
}

impl<K: std::fmt::Debug, T> std::fmt::Debug for Pooled<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("key", &self.key).field("reused", &self.reused).finish_non_exhaustive()
    }
}

impl<K: AsRef<str> + Clone, T: Reusable + Send + 'static> Pool<K, T> {
    /// A pool with one shard per worker thread (`workers`, at least one). Starts the idle sweep when called on a
    /// runtime.
    pub(crate) fn new(workers: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        let idle = (0..workers.max(1)).map(|_| Mutex::new(IdleMap::default())).collect();
        let inner = Arc::new(Inner { idle, max_idle, idle_timeout });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner, _key: std::marker::PhantomData }
    }

    /// The most recently released idle connection under `key` that is still usable, if there is one.
    pub(crate) fn checkout(&self, key: &K) -> Option<Pooled<K, T>> {
        let shard = self.inner.shard();
        loop {
            let mut idle = {
                let mut map = self.inner.idle[shard].lock();
                map.get_mut(key.as_ref())?.pop()?
            };
            if crate::clock::now().saturating_duration_since(idle.since) >= self.inner.idle_timeout
                || !idle.conn.is_usable()
            {
                continue;
            }
            let pool = Arc::downgrade(&self.inner);
            return Some(Pooled { conn: idle.conn, key: key.clone(), pool, shard, reused: true });
        }
    }

    /// A new connection under `key`, which can be released into this pool once it has been used.
    pub(crate) fn adopt(&self, key: &K, conn: T) -> Pooled<K, T> {
        let shard = self.inner.shard();
        Pooled { conn: Box::new(conn), key: key.clone(), pool: Arc::downgrade(&self.inner), shard, reused: false }
    }
}

impl<K: AsRef<str>, T> Pooled<K, T> {
    /// Whether this connection was used before (its peer may close such a connection at any moment).
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// The connection.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.conn
    }

    /// The connection, no longer the pool's (an upgraded connection).
    pub(crate) fn into_inner(self) -> T {
        *self.conn
    }

    /// Puts the connection back in its key's idle list; call only once it can serve again (the proxy: once a
    /// response has been read to its end). A connection over the key's idle limit is dropped (and closed)
    /// instead.
    pub(crate) fn release(self) {
        let Some(pool) = self.pool.upgrade() else { return };
        let idle = Idle { conn: self.conn, since: crate::clock::now() };
        let mut map = pool.idle[self.shard].lock();
        match map.get_mut(self.key.as_ref()) {
            Some(list) if list.len() < pool.max_idle => list.push(idle),
            Some(_) => {}
            None if pool.max_idle > 0 => {
                map.insert(self.key.as_ref().into(), vec![idle]);
            }
            None => {}
        }
    }
}

impl<T> Inner<T> {
    /// The current thread's shard.
    fn shard(&self) -> usize {
        worker() % self.idle.len()
    }
}

/// Closes idle connections past the idle timeout (or no longer usable), until the pool is gone.
async fn sweep<T: Reusable>(pool: Weak<Inner<T>>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        for shard in &pool.idle {
            shard.lock().retain(|_, list| {
                list.retain_mut(|idle| idle.since.elapsed() < pool.idle_timeout && idle.conn.is_usable());
                !list.is_empty()
            });
        }
    }
}
