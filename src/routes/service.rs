//! A validated service, as the route table holds it: its backends (with their weights, and the order a request
//! tries them in, around ejected ones), the container that serves it when it is passivated, its HTTPS policy,
//! and its balancing policy (ejection, retries and their budget). `spec.rs` builds these from what a source
//! wrote; `table.rs` maps hostnames to them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use tracing::info;

use super::backend::stamp;
use super::balance::{mix, schedule, Ejection, HealthCheck, Retries, Strategy};
use super::budget::RetryBudget;
use super::{Backend, Failure};
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
    balance: Balance,
    /// The smooth weighted round-robin order of backend indices, when weights differ.
    schedule: Option<Box<[u32]>>,
    /// The retries made over the last seconds, when the service retries.
    budget: Option<Box<RetryBudget>>,
    /// Taken to decide an ejection (the rare case), so that two backends failing at once cannot both pass
    /// the `max_ejected` check.
    ejecting: Mutex<()>,
    /// TLS to its `https://` backends (its `tls` block, or the defaults when it has none): set when it has such
    /// a backend or a `tls` block. Built once per definition, so its session cache and its connections live as
    /// long as the definition does.
    tls: Option<Arc<BackendTls>>,
}

/// How a service balances: its backends' weights, when it ejects a backend, what it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// One weight per backend (1 to [`super::balance::MAX_WEIGHT`]); empty: all 1.
    pub weights: Vec<u32>,
    /// `None`: never ejects.
    pub ejection: Option<Ejection>,
    /// `None`: no retries beyond the replay of a request a kept-alive connection lost unsent.
    pub retries: Option<Retries>,
    /// How a request's first backend is picked.
    pub strategy: Strategy,
    /// The active health check of its backends, if any.
    pub health_check: Option<HealthCheck>,
}

impl Default for Balance {
    /// Equal weights, ejection with its defaults, no retries.
    fn default() -> Self {
        Self {
            weights: Vec::new(),
            ejection: Some(Ejection::default()),
            retries: None,
            strategy: Strategy::RoundRobin,
            health_check: None,
        }
    }
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
            balance: Balance::default(),
            schedule: None,
            budget: None,
            ejecting: Mutex::new(()),
            tls: None,
        }
    }

    /// Sets how the service balances (weights, ejection, retries).
    pub fn with_balance(mut self, balance: Balance) -> Self {
        self.schedule = if balance.weights.len() == self.backends.len() { schedule(&balance.weights) } else { None };
        self.budget = balance.retries.as_ref().map(|r| Box::new(RetryBudget::new(r.budget_percent)));
        self.balance = balance;
        self
    }

    /// How the service balances.
    pub fn balance(&self) -> &Balance {
        &self.balance
    }

    /// The weight of backend `i` (1 unless set).
    pub fn weight(&self, i: usize) -> u32 {
        self.balance.weights.get(i).copied().unwrap_or(1)
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
            && self.balance == other.balance
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_settings(b),
                _ => false,
            }
    }

    /// The backends in the order a request that started at `now` should try them: a round-robin start (smooth
    /// weighted when weights differ), then the others in turn, so a refused connection moves on to the next
    /// backend; ejected backends are passed over (one whose time is up is back in). When every backend not
    /// ejected has been tried, the ejected ones follow, as a last resort: the rotation only goes on after an
    /// attempt where nothing reached the backend (a refused connection) or a retry, and a backend that may
    /// answer beats a certain 502 (Envoy's panic threshold, for the case `max_ejected` leaves open).
    #[inline]
    pub fn rotation(&self, now: Instant) -> Rotation<'_> {
        let n = self.backends.len();
        let start = match (&self.schedule, n) {
            (_, 0 | 1) => 0,
            _ if self.balance.strategy == Strategy::LeastRequest => self.least_request(),
            (None, n) => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            (Some(s), _) => s[self.cursor.fetch_add(1, Ordering::Relaxed) % s.len()] as usize,
        };
        Rotation { service: self, start, step: 0, now, stamp: 0, skipped: false }
    }

    /// Power of two choices: of two backends picked at random (two different ones), the index of the one with
    /// fewer requests in flight (the first on a tie). At least two backends.
    fn least_request(&self) -> usize {
        let n = self.backends.len() as u64;
        let r = mix(self.cursor.fetch_add(1, Ordering::Relaxed) as u64);
        let a = (r % n) as usize;
        let mut b = ((r >> 32) % (n - 1)) as usize;
        if b >= a {
            b += 1;
        }
        if self.backends[b].in_flight() < self.backends[a].in_flight() {
            b
        } else {
            a
        }
    }

    /// True when a request's attempts at backends are counted in flight (`least_request`).
    #[inline]
    pub(crate) fn counts_load(&self) -> bool {
        self.balance.strategy == Strategy::LeastRequest
    }

    /// Records a failed attempt at `backend` (one of this service's, or its container's address) and ejects it
    /// when that makes too many in a row and the policy allows it. Returns the ejection's length when it did.
    pub(crate) fn failed(&self, backend: &Backend, why: Failure) -> Option<Duration> {
        let in_a_row = backend.failed(why);
        let policy = self.balance.ejection.as_ref()?;
        if in_a_row < policy.consecutive_failures || backend.ejected_until() != 0 {
            return None;
        }
        let max = policy.max_ejected(self.backends.len());
        if max == 0 || !self.backends.iter().any(|b| std::ptr::eq(b, backend) || b == backend) {
            return None;
        }
        let _deciding = self.ejecting.lock();
        let now = Instant::now();
        let t = stamp(now);
        if backend.ejected_until() != 0 || self.backends.iter().filter(|b| b.ejected_until() > t).count() >= max {
            return None;
        }
        backend.eject(now, |repeats| policy.length(repeats))
    }

    /// What the service retries, and the budget it retries within.
    pub(crate) fn retries(&self) -> Option<(&Retries, &RetryBudget)> {
        self.balance.retries.as_ref().zip(self.budget.as_deref())
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

/// The backends one request tries, in order (see [`Service::rotation`]).
pub struct Rotation<'a> {
    service: &'a Service,
    start: usize,
    /// Steps taken: the first pass over the backends, then the last-resort pass over the ejected ones.
    step: usize,
    now: Instant,
    /// `now` as a health time, computed at the first ejected backend met (0: not yet).
    stamp: u64,
    /// An ejected backend was passed over in the first pass.
    skipped: bool,
}

impl<'a> Iterator for Rotation<'a> {
    type Item = &'a Backend;

    /// The first step, a backend not ejected, is nearly every request's whole rotation: inlined, the rest not.
    #[inline]
    fn next(&mut self) -> Option<&'a Backend> {
        let backends = &self.service.backends;
        if self.step == 0 {
            if let Some(b) = backends.get(self.start).filter(|b| b.ejected_until() == 0) {
                self.step = 1;
                return Some(b);
            }
        }
        self.next_slow()
    }
}

impl<'a> Rotation<'a> {
    /// [`Iterator::next`] past its first step: ejected backends passed over (or back in when their time is up),
    /// then the ejected ones as a last resort.
    #[cold]
    #[inline(never)]
    fn next_slow(&mut self) -> Option<&'a Backend> {
        let backends = &self.service.backends;
        let n = backends.len();
        while self.step < n {
            let b = &backends[(self.start + self.step) % n];
            self.step += 1;
            let until = b.ejected_until();
            if until == 0 {
                return Some(b);
            }
            if self.stamp == 0 {
                self.stamp = stamp(self.now);
            }
            if self.stamp >= until {
                if b.end_ejection(until) {
                    info!(
                        service = self.service.name(),
                        backend = b.as_str(),
                        "backend back in the rotation after its ejection"
                    );
                }
                return Some(b);
            }
            self.skipped = true;
        }
        while self.skipped && self.step < 2 * n {
            let b = &backends[(self.start + self.step) % n];
            self.step += 1;
            if b.ejected_until() != 0 {
                return Some(b);
            }
        }
        None
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    pub container: String,
    pub port: Option<u16>,
    pub network: Option<String>,
    /// The runtime it runs on, as written in `runtime` or in its older name `docker_host`; `None` =
    /// [`DEFAULT_HOST`] (see [`Self::docker_host`]).
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
    /// Set when `container` is a Swarm service (`swarm_service`): woken by scaling it up.
    pub swarm: Option<SwarmSpec>,
    /// Containers started, in this order and each waited for, before this one (`depends_on`); on the same
    /// Docker host.
    pub depends_on: Vec<Dependency>,
    /// Asked before an idle stop (`GET`): 409 or 423 = busy, ask again after the idle timeout.
    pub stop_check: Option<String>,
    /// `traffic_witness = false`: with a cluster, the container's traffic counters are not read before an idle
    /// stop (etcd's view of use only). Negative so that the default (and `Default`) is the witness on.
    pub no_traffic_witness: bool,
}

impl ContainerSpec {
    /// The name of the runtime (Docker host) the container runs on.
    pub fn docker_host(&self) -> &str {
        self.docker_host.as_deref().unwrap_or(DEFAULT_HOST)
    }

    /// The name of the runtime the container runs on: the same as [`Self::docker_host`].
    pub fn runtime(&self) -> &str {
        self.docker_host()
    }

    /// How many instances a wake starts: a Swarm service's `replicas`, else the one container.
    pub fn replicas(&self) -> u32 {
        self.swarm.as_ref().map_or(1, |s| s.replicas)
    }
}

/// What a Swarm service adds to a container's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmSpec {
    /// The replicas a wake scales it to (at least 1).
    pub replicas: u32,
    /// Where its published port is reached; `None`: the runtime's node address.
    pub backend_host: Option<String>,
    /// `swarm_network`: the overlay network whose task address is the backend (at `port`), instead of a
    /// published port. Also the spec's `network`, which the runtime's inspect is given.
    pub network: Option<String>,
}

/// A container a service's own container needs running first (`depends_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub container: String,
    /// The port that says it is ready when it has no Docker healthcheck; `None`: the only port it exposes.
    pub port: Option<u16>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(n: usize, ejection: Ejection) -> Service {
        let backends = (1..=n).map(|i| Backend::parse(&format!("127.0.0.1:{i}")).unwrap()).collect();
        Service::new("s", backends).with_balance(Balance { ejection: Some(ejection), ..Balance::default() })
    }

    fn order(s: &Service, at: Instant) -> Vec<String> {
        s.rotation(at).map(|b| b.as_str().to_string()).collect()
    }

    #[test]
    fn ejection_skips_the_backend_for_its_time_then_doubles() {
        let policy = Ejection { consecutive_failures: 2, base: Duration::from_secs(10), ..Ejection::default() };
        let s = service(4, policy);
        let b = &s.backends()[1];
        assert_eq!(s.failed(b, Failure::ServerError), None);
        assert_eq!(s.failed(b, Failure::ServerError), Some(Duration::from_secs(10)));
        let now = Instant::now();
        for _ in 0..8 {
            assert!(!order(&s, now)[..3].contains(&"127.0.0.1:2".to_string()));
        }
        // As a last resort, after every other backend.
        assert!(order(&s, now).len() == 4 && order(&s, now)[3] == "127.0.0.1:2");
        // Failures while it is out do not eject it again.
        assert_eq!(s.failed(b, Failure::Timeout), None);
        assert_eq!(s.failed(b, Failure::Timeout), None);
        // Its time is up: back in, and the next ejection, without an answer in between, lasts twice as long.
        let later = now + Duration::from_secs(11);
        assert!(s.rotation(later).any(|x| x == b));
        assert_eq!(b.ejected_until(), 0);
        assert_eq!(b.health(later).ejections, 1);
        s.failed(b, Failure::ServerError);
        assert_eq!(s.failed(b, Failure::ServerError), Some(Duration::from_secs(20)));
        // An answer resets the doubling.
        assert!(s.rotation(later + Duration::from_secs(21)).any(|x| x == b));
        std::thread::sleep(Duration::from_millis(2));
        b.answered(Instant::now());
        s.failed(b, Failure::ServerError);
        assert_eq!(s.failed(b, Failure::ServerError), Some(Duration::from_secs(10)));
    }

    #[test]
    fn at_most_max_ejected_at_once() {
        let policy = Ejection { consecutive_failures: 1, ..Ejection::default() };
        let s = service(3, policy);
        let ejected: Vec<bool> = s.backends().iter().map(|b| s.failed(b, Failure::Refused).is_some()).collect();
        assert_eq!(ejected, [true, false, false], "half of three, rounded down");
        let one = service(1, policy);
        assert_eq!(one.failed(&one.backends()[0], Failure::Refused), None);
        let off =
            Service::new("s", vec![Backend::parse("127.0.0.1:1").unwrap(), Backend::parse("127.0.0.1:2").unwrap()])
                .with_balance(Balance { ejection: None, ..Balance::default() });
        assert!((0..10).all(|_| off.failed(&off.backends()[0], Failure::Refused).is_none()));
    }

    #[test]
    fn least_request_starts_with_the_less_loaded_of_two() {
        let backends = vec![Backend::parse("127.0.0.1:1").unwrap(), Backend::parse("127.0.0.1:2").unwrap()];
        let s = Service::new("s", backends)
            .with_balance(Balance { strategy: Strategy::LeastRequest, ..Balance::default() });
        let busy = super::super::Load::start(&s.backends()[0]);
        let also = busy.clone();
        assert_eq!(s.backends()[0].in_flight(), 2);
        let now = Instant::now();
        assert!((0..20).all(|_| order(&s, now)[0] == "127.0.0.1:2"));
        drop((busy, also));
        assert_eq!(s.backends()[0].in_flight(), 0);
        // Equal loads: both are picked, about as often.
        let firsts = (0..200).filter(|_| order(&s, now)[0] == "127.0.0.1:1").count();
        assert!((60..140).contains(&firsts), "{firsts}");
    }

    #[test]
    fn weighted_rotation_follows_the_schedule() {
        let backends = vec![Backend::parse("127.0.0.1:1").unwrap(), Backend::parse("127.0.0.1:2").unwrap()];
        let s = Service::new("s", backends).with_balance(Balance { weights: vec![1, 3], ..Balance::default() });
        let now = Instant::now();
        let firsts: Vec<String> = (0..8).map(|_| order(&s, now)[0].clone()).collect();
        assert_eq!(firsts.iter().filter(|b| *b == "127.0.0.1:1").count(), 2);
        // Every rotation still holds every backend, for failover.
        assert_eq!(order(&s, now).len(), 2);
    }
}
