//! Backend connections kept for reuse: reveille's own pool of HTTP/1.1 connections (spoken by `client`).
//!
//! Why not hyper-util's legacy client: its pool checks a connection out and back through a shared pool with
//! a waiter queue, a spawned task per response to notice when the connection is free again, and several
//! allocations per request. Here a connection goes back to its backend's idle list the moment its response
//! body has been read to the end ([`Conn::release`], called by the response body), and a request takes the
//! most recently used one (LIFO: warm, and the least likely to have been closed by the backend's idle timer).
//!
//! It also lets the proxy see what the legacy client hides: whether a request went out on a reused connection,
//! and whether any of it went out at all. The proxy uses both to replay what is safe to replay when a backend
//! closes a kept-alive connection just as a request goes out (see `handler::forward`). An idle connection the
//! backend has closed (or sent unasked bytes on) is noticed when it is taken, from the socket's readiness,
//! without a system call in the usual case.
//!
//! With the per-core scheduler each worker thread has its own idle lists (a shard, chosen by the thread's
//! [`worker`] index): a request takes a connection whose I/O is driven by its own thread's runtime, and no
//! two threads contend for a lock.
//!
//! Idle connections are kept up to `pool_max_idle_per_backend` per backend, for `pool_idle_timeout`. A sweep
//! every few seconds closes the expired ones, so connections to backends nobody asks for any more do not
//! linger.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::Uri;
use parking_lot::Mutex;

use super::client::Wire;
use super::connector::{ConnectError, Connector};

thread_local! {
    /// This thread's worker index (0 unless [`set_worker`] said otherwise).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`: its requests use that shard of every pool.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The current thread's worker index.
pub(crate) fn worker() -> usize {
    WORKER.with(Cell::get)
}

type IdleMap = HashMap<Box<str>, Vec<Idle>, foldhash::fast::RandomState>;

/// The pool of one proxy: idle HTTP/1.1 connections by backend.
#[derive(Debug)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
    connector: Connector,
}

#[derive(Debug)]
struct Inner {
    /// By backend authority. The keys are the operator's backends, never a client's input, so a fast hash is
    /// safe; hashed as one string (`Authority`'s own hash feeds the hasher a byte at a time).
    /// One map per worker thread ([`worker`] modulo their number).
    idle: Box<[Mutex<IdleMap>]>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    wire: Box<Wire>,
    since: Instant,
}

/// A backend connection checked out for one request; [`Conn::release`] puts it back.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Boxed: a checked-out connection moves through a request's futures, and a pointer moves cheaply.
    wire: Box<Wire>,
    key: Authority,
    pool: Weak<Inner>,
    /// The shard it goes back to.
    shard: usize,
    reused: bool,
}

impl Pool {
    /// A pool that opens connections with `connector`, with one shard per worker thread (`workers`, at least
    /// one). Starts the idle sweep when called on a runtime.
    pub(crate) fn new(connector: Connector, workers: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        let idle = (0..workers.max(1)).map(|_| Mutex::new(IdleMap::default())).collect();
        let inner = Arc::new(Inner { idle, max_idle, idle_timeout });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner, connector }
    }

    /// The most recently released idle connection to `backend` that is still open, if there is one.
    pub(crate) fn checkout(&self, backend: &Authority) -> Option<Conn> {
        let shard = self.inner.shard();
        loop {
            let idle = {
                let mut map = self.inner.idle[shard].lock();
                map.get_mut(backend.as_str())?.pop()?
            };
            let mut idle = idle;
            if idle.since.elapsed() >= self.inner.idle_timeout || !idle.wire.is_usable() {
                continue;
            }
            let pool = Arc::downgrade(&self.inner);
            return Some(Conn { wire: idle.wire, key: backend.clone(), pool, shard, reused: true });
        }
    }

    /// Opens a new connection to `backend` (within the connect timeout).
    pub(crate) async fn connect(&self, backend: &Authority) -> Result<Conn, ConnectError> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(backend.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ConnectError::other(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let io = self.connector.connect(uri).await?;
        let shard = self.inner.shard();
        Ok(Conn {
            wire: Box::new(Wire::new(io)),
            key: backend.clone(),
            pool: Arc::downgrade(&self.inner),
            shard,
            reused: false,
        })
    }
}

impl Conn {
    /// Whether this connection served a request before (a backend may close such a connection at any moment).
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// The socket and buffers, for the exchange.
    pub(crate) fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }

    /// The socket and buffers, no longer the pool's (an upgraded connection).
    pub(crate) fn into_wire(self) -> Wire {
        *self.wire
    }

    /// Puts the connection back in its backend's idle list; call only once its response has been read to the
    /// end. A connection over the backend's idle limit is dropped (and closed) instead.
    pub(crate) fn release(self) {
        let Some(pool) = self.pool.upgrade() else { return };
        let idle = Idle { wire: self.wire, since: Instant::now() };
        let mut map = pool.idle[self.shard].lock();
        match map.get_mut(self.key.as_str()) {
            Some(list) if list.len() < pool.max_idle => list.push(idle),
            Some(_) => {}
            None if pool.max_idle > 0 => {
                map.insert(self.key.as_str().into(), vec![idle]);
            }
            None => {}
        }
    }
}

impl Inner {
    /// The current thread's shard.
    fn shard(&self) -> usize {
        worker() % self.idle.len()
    }
}

/// Closes idle connections past the idle timeout (or already closed by their backend), until the pool is gone.
async fn sweep(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        for shard in &pool.idle {
            shard.lock().retain(|_, list| {
                list.retain_mut(|idle| idle.since.elapsed() < pool.idle_timeout && idle.wire.is_usable());
                !list.is_empty()
            });
        }
    }
}
