//! The route table: which service answers a hostname (and, for hosts that have path routes, a path prefix),
//! and which backends serve a service.
//!
//! Owns the routing model shared by every route source (the routes file and etcd): hostname patterns
//! ([`HostPattern`]), route keys with their optional path prefix and the path matcher ([`RouteKey`], `path.rs`),
//! backend addresses ([`Backend`]), services ([`Service`], with their container, HTTPS and balancing policies:
//! weights, ejection, retries, health checks; `balance.rs`, `budget.rs`), the immutable [`RouteTable`] snapshot
//! built from them, and [`RouteSet`], what one source defines.
//! It does not know where routes come from (that is `control/`), how requests are forwarded (`proxy/`) or
//! whether the process is ready (`readiness`).
//!
//! Readers get the table through [`RouteHandle`], an `ArcSwap`: a lookup never takes a lock, and a reload
//! builds a whole new table and swaps it in, so a request sees either the old table or the new one, never a mix.
mod backend;
mod balance;
mod budget;
mod host;
mod path;
mod service;
mod shard;
mod spec;
mod table;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use backend::Backend;
pub(crate) use backend::{Failure, Health, Load, Protocol};
pub(crate) use balance::{HealthCheck, Retries};
pub(crate) use budget::RetryBudget;
pub use host::{normalize_request_host, HostPattern};
pub(crate) use path::stripped as stripped_path;
pub use path::{RouteKey, Target};
pub(crate) use service::Rotation;
#[cfg(test)]
pub(crate) use service::SwarmSpec;
pub(crate) use service::{ContainerSpec, Dependency, IdleAction, Service};
pub(crate) use spec::{check_field, DockerHostNames, RouteSpec, ServiceSpec, ROUTE_FIELDS, SERVICE_FIELDS};
pub use table::RouteTable;
pub(crate) use table::{strip_without_prefix, Lookup, RouteSet};

/// Errors in route definitions. Every variant names the offending item, so a log line is enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("invalid hostname {host:?}: {reason}")]
    BadHostname { host: String, reason: String },
    #[error("invalid backend address {addr:?}: {reason}")]
    BadBackend { addr: String, reason: String },
    #[error("invalid service name {name:?}: {reason}")]
    BadServiceName { name: String, reason: String },
    #[error("service {service:?} has no backends (and no container with a port to reach)")]
    NoBackends { service: String },
    #[error("route {host:?} points to undefined service {service:?}")]
    UnknownService { host: String, service: String },
    #[error("route {host:?} is defined twice (hostnames are case-insensitive{})", if host.contains('/') { ", and a path prefix's trailing slash is optional" } else { "" })]
    DuplicateRoute { host: String },
    #[error("service {service:?} is defined twice")]
    DuplicateService { service: String },
    #[error("service {service:?}: {reason}")]
    BadField { service: String, reason: String },
    /// A key this version does not know: ignored when serving (logged at error), refused by `reveille check`.
    /// `hint` is empty or ` (did you mean `container`?)`.
    #[error("service {service:?}: unknown field `{field}`{hint}")]
    UnknownField { service: String, field: String, hint: String },
    /// A key this version does not know, elsewhere than in a service: `place` says where ("top-level key").
    #[error("unknown {place} `{key}`{hint}")]
    UnknownKey { place: &'static str, key: String, hint: String },
    #[error("route {host:?}: {reason}")]
    BadRoute { host: String, reason: String },
    /// A route key's path prefix that no request could match as meant (see `PathPrefix::parse`).
    #[error("route {route:?}: invalid path prefix: {reason}")]
    BadPath { route: String, reason: String },
    /// The service is defined but invalid (its own error says why): not "undefined", which would send the
    /// operator looking for a missing definition.
    #[error("route {host:?} points to service {service:?}, which is invalid")]
    InvalidService { host: String, service: String },
}

/// Checks a service name: it becomes a metric label and (later) an etcd key, so keep it to a safe alphabet.
pub(crate) fn validate_service_name(name: &str) -> Result<(), RouteError> {
    let bad = |reason: &str| RouteError::BadServiceName { name: name.to_string(), reason: reason.to_string() };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 128 {
        return Err(bad("longer than 128 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(bad(&format!("invalid character {c:?} (use letters, digits, '-', '_' and '.')")));
    }
    Ok(())
}

/// The live route table, shared by the proxy (reads) and the route sources (writes).
#[derive(Clone)]
pub struct RouteHandle {
    current: Arc<ArcSwap<RouteTable>>,
    /// Bumped on every store, so other parts (passivation) can follow the table without polling it.
    version: Arc<tokio::sync::watch::Sender<u64>>,
    /// Whether every configured route source has loaded: until then a host without a route may only be one not
    /// read yet (a replica starting while etcd is slow), so it is answered 503, not 404. `true` for a handle
    /// filled by hand; the route sources' composer holds it down until its first complete load.
    complete: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for RouteHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteHandle {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(RouteTable::empty())),
            version: Arc::new(tokio::sync::watch::Sender::new(0)),
            complete: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Whether every route source has loaded (see the field). One relaxed load, asked only for a host
    /// without a route.
    pub fn is_complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Set by the route sources' composer: `false` while a source it waits for has not loaded.
    pub(crate) fn set_complete(&self, complete: bool) {
        self.complete.store(complete, std::sync::atomic::Ordering::Release);
    }

    /// The current snapshot. Cheap; hold it for the duration of one lookup, not across awaits.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Installs a new table atomically.
    pub fn store(&self, table: RouteTable) {
        self.current.store(Arc::new(table));
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that sees a change after every [`Self::store`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}
