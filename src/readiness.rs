//! Process readiness: whether this replica should take traffic, as `/readyz` reports it.
//!
//! Owns the gates that must all be open before the process is ready (the route sources' first load, the
//! certificates awaited from etcd...) and the draining flag set at shutdown. Each part that can hold readiness
//! back registers a named [`Gate`] at wiring time and opens it once; it does not know who reads it. The admin
//! endpoint reads [`Readiness::state`]. Nothing here is on the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The readiness of the process: cheap to clone, every clone sees the same gates.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// What readiness waits for, in registration order (the first closed one is reported).
    gates: Mutex<Vec<(&'static str, Gate)>>,
    /// Set when shutdown starts: load balancers must stop sending traffic.
    draining: AtomicBool,
}

/// One condition readiness waits for. Closed when made; opening it is final.
#[derive(Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// A gate that belongs to no [`Readiness`] (for parts used on their own, as in unit tests).
    pub fn detached() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    /// A gate is still closed: what it waits for (e.g. "route sources").
    Waiting(&'static str),
    /// Shutdown has started.
    Draining,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a closed gate: the process is not ready until it is opened. `what` names what is awaited, for
    /// `/readyz` ("route sources", "certificates").
    pub fn gate(&self, what: &'static str) -> Gate {
        let gate = Gate::default();
        self.0.gates.lock().push((what, gate.clone()));
        gate
    }

    /// Marks the process as shutting down: not ready from now on.
    pub fn mark_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    pub fn state(&self) -> State {
        if self.0.draining.load(Ordering::Acquire) {
            return State::Draining;
        }
        match self.0.gates.lock().iter().find(|(_, g)| !g.is_open()) {
            Some((what, _)) => State::Waiting(what),
            None => State::Ready,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == State::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_gate_is_open_until_draining() {
        let r = Readiness::new();
        assert_eq!(r.state(), State::Ready, "nothing awaited");
        let routes = r.gate("route sources");
        let certs = r.gate("certificates");
        assert_eq!(r.state(), State::Waiting("route sources"));
        certs.open();
        assert_eq!(r.state(), State::Waiting("route sources"));
        routes.open();
        assert!(r.is_ready());
        r.mark_draining();
        assert_eq!(r.state(), State::Draining);
    }
}
