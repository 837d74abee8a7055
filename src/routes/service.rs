//! A validated service, as the route table holds it: its backends, the container that serves it when it is
//! passivated, and its HTTPS policy. `spec.rs` builds these from what a source wrote; `table.rs` maps hostnames
//! to them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use super::Backend;
use crate::metrics::ServiceStats;
use crate::runtime::DEFAULT_HOST;
use crate::upstream::BackendTls;

/// A named set of backends.
#[derive(Debug)]
pub struct Service {
    name: Arc<str>,
    backends: Box<[Backend]>,
    /// Round-robin cursor. Lives with the definition, so redefining a service restarts the rotation.
    cursor: AtomicUsize,
    /// Per-service metric handles, resolved on the first request so idle services cost no series and the
    /// request path only touches atomics.
    stats: OnceLock<ServiceStats>,
    /// Set when a container serves this service and reveille passivates it.
    container: Option<Box<ContainerSpec>>,
    https: HttpsPolicy,
    /// TLS to its `https://` backends (its `tls` block, or the defaults when it has none): set when it has such
    /// a backend or a `tls` block. Built once per definition, so its session cache and its connections live as
    /// long as the definition does.
    tls: Option<Arc<BackendTls>>,
}

impl Service {
    /// Builds a service; `name` must already be validated.
    pub fn new(name: &str, backends: Vec<Backend>) -> Self {
        Self::with_container(name, backends, None)
    }

    /// Builds a service that may be backed by a container; `name` must already be validated. Without
    /// `backends`, the container's address is the backend.
    pub fn with_container(name: &str, backends: Vec<Backend>, container: Option<ContainerSpec>) -> Self {
        Self {
            name: Arc::from(name),
            backends: backends.into(),
            cursor: AtomicUsize::new(0),
            stats: OnceLock::new(),
            container: container.map(Box::new),
            https: HttpsPolicy::default(),
            tls: None,
        }
    }

    /// Sets how the service reaches its `https://` backends.
    pub(crate) fn with_tls(mut self, tls: Option<BackendTls>) -> Self {
        self.tls = tls.map(Arc::new);
        self
    }

    /// How the service reaches its `https://` backends; `None` when it has none and no `tls` block.
    pub(crate) fn backend_tls(&self) -> Option<&BackendTls> {
        self.tls.as_deref()
    }

    /// Sets how the service is served over HTTPS (redirect, HSTS).
    pub fn with_https(mut self, https: HttpsPolicy) -> Self {
        self.https = https;
        self
    }

    /// How the service is served over HTTPS.
    pub fn https(&self) -> &HttpsPolicy {
        &self.https
    }

    /// The container that serves this service, when it is passivated.
    pub fn container(&self) -> Option<&ContainerSpec> {
        self.container.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// True when both define the same thing (used to skip no-op changes).
    pub fn same_definition(&self, other: &Service) -> bool {
        self.name == other.name
            && self.backends == other.backends
            && self.container == other.container
            && self.https == other.https
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_settings(b),
                _ => false,
            }
    }

    /// The backends in the order this request should try them: round-robin start, then the others in turn, so
    /// a refused connection moves on to the next backend.
    pub fn rotation(&self) -> impl Iterator<Item = &Backend> + '_ {
        let n = self.backends.len();
        let start = if n > 1 { self.cursor.fetch_add(1, Ordering::Relaxed) % n } else { 0 };
        (0..n).map(move |i| &self.backends[(start + i) % n])
    }

    /// This service's metric handles, created on first use.
    pub fn stats(&self, init: impl FnOnce(&str) -> ServiceStats) -> &ServiceStats {
        self.stats.get_or_init(|| init(&self.name))
    }

    /// This service's metric handles if a request created them (none: it answered nothing yet).
    pub fn stats_if_any(&self) -> Option<&ServiceStats> {
        self.stats.get()
    }
}

/// What happens to an idle tenant's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleAction {
    /// `docker stop`: frees memory; the next wake is a full start.
    #[default]
    Stop,
    /// `docker pause`: keeps memory; the next wake is an unpause (milliseconds).
    Pause,
}

impl IdleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAction::Stop => "stop",
            IdleAction::Pause => "pause",
        }
    }
}

/// A service backed by a container that reveille starts on demand and stops when idle. Unset fields take the
/// `[passivation]` defaults of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub container: String,
    pub port: Option<u16>,
    pub network: Option<String>,
    /// The Docker host it runs on, as written; `None` = [`DEFAULT_HOST`] (see [`Self::docker_host`]).
    pub docker_host: Option<String>,
    pub idle_timeout: Option<Duration>,
    pub wake_timeout: Option<Duration>,
    /// `docker stop`'s grace; `None` = `[passivation] stop_timeout`, else the container's own.
    pub stop_timeout: Option<Duration>,
    pub health_path: Option<String>,
    pub idle_action: IdleAction,
    /// With [`IdleAction::Pause`]: a paused container is stopped after this much more idleness.
    pub stop_after: Option<Duration>,
    pub max_held: Option<usize>,
    pub page_after: Option<Duration>,
}

impl ContainerSpec {
    /// The name of the Docker host the container runs on.
    pub fn docker_host(&self) -> &str {
        self.docker_host.as_deref().unwrap_or(DEFAULT_HOST)
    }
}

/// How a service is served over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpsPolicy {
    /// Redirect plain HTTP to HTTPS; `None` follows the global setting.
    pub redirect: Option<bool>,
    /// `Strict-Transport-Security` for responses over HTTPS.
    pub hsts: Option<http::HeaderValue>,
    /// Certificates by ACME for the service's host names; `None` follows `[acme] hosts`.
    pub acme: Option<bool>,
}
