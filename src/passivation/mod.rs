//! Passivation: tenants' containers are stopped (or paused) when idle and started again by the first request
//! that needs them. See `LIFECYCLE.md` in this folder for the states and transitions.
//!
//! Owns, next to each other:
//! - the request side: [`Tenant::admit`] gives the proxy a backend (waking the tenant first if needed) and an
//!   [`Activity`] guard the proxy holds for as long as the request or upgraded connection lasts;
//! - the lifecycle: per-tenant state machines driven by one task each (`tenant`), readiness probes (`probe`),
//!   and the registry that keeps tenants in step with the route table and Docker's events ([`Passivator`]);
//! - the HTTP face (`http`): the page decision ([`wants_page`]), the "starting" page (`page`), the status
//!   endpoint and the admin API's services view, all read from a tenant's [`Snapshot`];
//! - with several replicas (etcd configured), the cluster rules (`tenant/coordination.rs`): one start per wake,
//!   idle stops decided by one replica and vetoed by any that uses the tenant, status changes by
//!   compare-and-swap — all through [`Cluster`], which owns the etcd side.
//! - the Docker hosts (`hosts`): each tenant's calls go to the host its service names (`docker_host`), each
//!   host in use has its own event stream, and a host that is down fails only its own tenants' wakes.
//!
//! Talks to Docker only through [`ContainerRuntime`]s, one per host ([`Runtimes`]). Does not route, forward,
//! write access-log lines or count requests: the proxy does, around the small API above.

mod hosts;
mod http;
mod page;
mod probe;
mod tenant;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

pub(crate) use self::http::wants_page;
pub(crate) use page::{Page, PageValues};
pub(crate) use probe::{NetProbe, Probe, StopCheck};
use tenant::{dependency_name, dependency_service};
pub(crate) use tenant::{Activity, KeepAwakeError, Phase, Refusal, Tenant};

use crate::cluster::{self, Cluster, Use};
use crate::events::Events;
use crate::metrics::{Metrics, PassivationMetrics};
use crate::routes::{ContainerSpec, Dependency, RouteHandle, RouteTable, Service};
use crate::runtime::{ContainerRuntime, DockerEndpoint, RuntimeConfig, Runtimes};
use hosts::{DockerHost, DockerHosts};

/// Defaults and knobs of passivation (`[passivation]` in the config). Per-service fields override the first
/// five.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stop a tenant after this long without activity; zero = never.
    pub idle_timeout: Duration,
    /// How long a request waits for its tenant to become ready: past it, 504.
    pub wake_timeout: Duration,
    /// Requests held per tenant while it wakes: past it, 503.
    pub max_held: usize,
    /// How long a browser page request is held before it gets the "starting" page.
    pub page_after: Duration,
    /// Time `docker stop` gives the container before killing it, for services without their own
    /// `stop_timeout`. `None`: the container's own `StopTimeout` (Compose's `stop_grace_period`), so the
    /// platform's choice is kept.
    pub stop_timeout: Option<Duration>,
    /// Time between readiness probes while a tenant wakes.
    pub probe_interval: Duration,
    /// The path, on every routed host, that tells a tenant's state (the starting page polls it).
    pub status_path: String,
    /// The "starting" page template.
    pub page: Page,
    /// The default Docker host's endpoint (`unix:///...`, `tcp://...`); `None` = `DOCKER_HOST` or the local
    /// socket.
    pub docker: Option<String>,
    /// The other Docker hosts (`[docker.hosts.<name>]`), by name; a service picks one with `docker_host`.
    pub docker_hosts: BTreeMap<String, DockerEndpoint>,
    /// The named runtimes of `[runtimes.<name>]` (Docker, Podman...), by name; a service picks one with
    /// `runtime` (or `docker_host`). A name is in `docker_hosts` or here, not both.
    pub runtimes: BTreeMap<String, RuntimeConfig>,
    /// Time allowed for one Docker API call.
    pub docker_timeout: Duration,
    /// This instance's name in the etcd status keys.
    pub node: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15 * 60),
            wake_timeout: Duration::from_secs(60),
            max_held: 1000,
            page_after: Duration::from_secs(1),
            stop_timeout: None,
            probe_interval: Duration::from_millis(25),
            status_path: "/__reveille/status".into(),
            page: Page::default(),
            docker: None,
            docker_hosts: BTreeMap::new(),
            runtimes: BTreeMap::new(),
            docker_timeout: Duration::from_secs(10),
            node: default_node_name(),
        }
    }
}

/// The host name, for the `node` field of the etcd status keys.
pub(crate) fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "reveille".into())
}

/// What every tenant shares.
pub(crate) struct Shared {
    settings: Settings,
    hosts: DockerHosts,
    probe: Arc<dyn Probe>,
    metrics: PassivationMetrics,
    /// The events feed: each tenant state change is a `tenant` event.
    events: Events,
    /// The cluster, when etcd is configured (even with one replica).
    cluster: Option<Arc<Cluster>>,
    /// Tenants kept awake, without etcd (with it, the cluster keeps them).
    keep_awake: tenant::LocalKeepAwake,
    /// Whether an idle stop asks the runtime's traffic counters first (`tenant/witness.rs`): with a cluster,
    /// where a replica cut off from etcd uses tenants unseen; a single replica's own activity is exact.
    traffic_witness: bool,
}

/// The services' tenants by their container and Docker host: a dependency that is some service's container is
/// that service's tenant, not one of its own (two tenants would drive one container).
fn service_containers(map: &TenantMap) -> HashMap<(String, String), Arc<Tenant>> {
    let mut out = HashMap::new();
    for t in map.values().filter(|t| !t.dependency) {
        if let Some(c) = t.service().container() {
            out.insert((c.container.clone(), c.docker_host().to_string()), t.clone());
        }
    }
    out
}

/// Gives each service's tenant the tenants of its `depends_on`, in order: another service's tenant when the
/// dependency is that service's container, else the dependency's own. An entry that would close a cycle of
/// services (a waits for b, which waits for a) is left out, with an error in the log: such a wake could only
/// time out.
fn link_dependencies(map: &TenantMap) {
    let services = service_containers(map);
    let mut tenants: Vec<&Arc<Tenant>> = map.values().filter(|t| !t.dependency).collect();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    // The links kept so far between services, to find cycles.
    let mut edges: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
    let reaches = |edges: &HashMap<Arc<str>, Vec<Arc<str>>>, from: &Arc<str>, to: &Arc<str>| {
        let mut stack = vec![from.clone()];
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = stack.pop() {
            if n == *to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(edges.get(&n).into_iter().flatten().cloned());
            }
        }
        false
    };
    for t in tenants {
        let service = t.service();
        let Some(spec) = service.container() else { continue };
        let mut deps = Vec::new();
        for d in &spec.depends_on {
            let host = spec.docker_host().to_string();
            if let Some(other) = services.get(&(d.container.clone(), host.clone())) {
                if reaches(&edges, &other.name, &t.name) {
                    tracing::error!(
                        service = %t.name,
                        dependency = %d.container,
                        "depends_on: {} is the container of service {}, which depends on {} itself: left out",
                        d.container,
                        other.name,
                        t.name
                    );
                    continue;
                }
                if let Some(port) = d.port {
                    tracing::warn!(
                        service = %t.name,
                        dependency = %d.container,
                        port,
                        "depends_on: {} is the container of service {}, waited for as that service is (its own \
                         port and health_path): the port given here is not used",
                        d.container,
                        other.name
                    );
                }
                edges.entry(t.name.clone()).or_default().push(other.name.clone());
                deps.push(other.clone());
            } else if let Some(dep) = map.get(dependency_name(&d.container, &host).as_str()) {
                deps.push(dep.clone());
            }
        }
        t.set_dependencies(deps);
    }
}

/// Service name → tenant: looked up on every request to a passivated service, so a fast hash (names are the
/// operator's, not the client's).
type TenantMap = HashMap<Arc<str>, Arc<Tenant>, foldhash::fast::RandomState>;

/// The registry of passivated tenants, one per service that names a container. Kept in step with the route
/// table: a new service gets a tenant (and its container is adopted), a removed one loses it.
pub struct Passivator {
    shared: Arc<Shared>,
    tenants: ArcSwap<TenantMap>,
    /// Serialises changes to `tenants`.
    write: Mutex<()>,
    /// Signalled when the first tenant appears (the Docker event stream is only opened when needed).
    changed: Notify,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Passivator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passivator").field("tenants", &self.tenants.load().len()).finish_non_exhaustive()
    }
}

impl Passivator {
    /// `runtimes`: the Docker hosts by name (one runtime is the default host alone). `cluster`: the replicas'
    /// coordination, when etcd is configured; without it, this replica decides alone.
    pub(crate) fn new(
        settings: Settings,
        runtimes: impl Into<Runtimes>,
        probe: Arc<dyn Probe>,
        metrics: &Metrics,
        events: Events,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        let traffic_witness = cluster.is_some();
        Self::build(settings, runtimes, probe, metrics, events, cluster, traffic_witness)
    }

    /// [`Self::new`], with the traffic witness on or off whatever the cluster (the state machine's tests turn
    /// it on without etcd).
    fn build(
        settings: Settings,
        runtimes: impl Into<Runtimes>,
        probe: Arc<dyn Probe>,
        metrics: &Metrics,
        events: Events,
        cluster: Option<Arc<Cluster>>,
        traffic_witness: bool,
    ) -> Arc<Self> {
        let metrics = metrics.passivation().clone();
        let hosts = DockerHosts::new(&runtimes.into(), &metrics);
        let keep_awake = tenant::LocalKeepAwake::default();
        let shared = Arc::new(Shared {
            settings,
            hosts,
            probe,
            metrics,
            events,
            cluster: cluster.clone(),
            keep_awake,
            traffic_witness,
        });
        let passivator = Arc::new(Self {
            shared,
            tenants: ArcSwap::from_pointee(TenantMap::default()),
            write: Mutex::new(()),
            changed: Notify::new(),
            cancel: CancellationToken::new(),
        });
        if let Some(c) = &cluster {
            let weak = Arc::downgrade(&passivator);
            c.set_activity_source(Box::new(move || weak.upgrade().map(|p| p.activity()).unwrap_or_default()));
        }
        passivator
    }

    /// The cluster, when etcd is configured.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The tenant of a passivated service (`None` for a plain one). The request path: one hash lookup.
    ///
    /// Only [`Self::reconcile`] changes an existing tenant's definition: a request may hold an older table
    /// snapshot than the latest reconcile, and must not roll the tenant back to it.
    #[inline]
    pub fn tenant(&self, service: &Arc<Service>) -> Option<Arc<Tenant>> {
        service.container()?;
        if let Some(t) = self.tenants.load().get(service.name()) {
            return Some(t.clone());
        }
        Some(self.ensure(service))
    }

    /// The tenant of a service by name.
    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.load().get(name).cloned()
    }

    /// Creates the tenant of `service` if there is none yet (a request that came before the reconcile).
    fn ensure(&self, service: &Arc<Service>) -> Arc<Tenant> {
        let _w = self.write.lock();
        if let Some(t) = self.tenants.load().get(service.name()) {
            return t.clone();
        }
        let mut map = HashMap::clone(&self.tenants.load());
        let tenant = self.upsert(&mut map, service);
        // Its dependencies as this definition alone describes them, if they have no tenant yet; the next
        // reconcile sees every dependant.
        if let Some(spec) = service.container() {
            let services = service_containers(&map);
            for d in &spec.depends_on {
                let name = dependency_name(&d.container, spec.docker_host());
                let served = services.contains_key(&(d.container.clone(), spec.docker_host().to_string()));
                if !served && !map.contains_key(name.as_str()) {
                    let dep = Arc::new(dependency_service(&name, &[(spec, d)], &self.shared.settings));
                    self.upsert_dependency(&mut map, dep);
                }
            }
        }
        link_dependencies(&map);
        self.tenants.store(Arc::new(map));
        self.changed.notify_waiters();
        tenant
    }

    fn upsert(&self, map: &mut TenantMap, service: &Arc<Service>) -> Arc<Tenant> {
        // A tenant is one container on one Docker host.
        let container = service.container().map(|c| (c.container.as_str(), c.docker_host()));
        if let Some(t) = map.get(service.name()) {
            if t.service().container().map(|c| (c.container.as_str(), c.docker_host())) == container {
                if !t.serves(service) {
                    t.update(service.clone());
                }
                return t.clone();
            }
            // Another container (or another host): a different tenant. The old one's held requests are answered
            // 503.
            t.cancel.cancel();
        }
        let t = Tenant::spawn(service.clone(), self.shared.clone(), self.cancel.child_token(), false);
        map.insert(Arc::from(service.name()), t.clone());
        t
    }

    /// The tenant of a dependency, created or given its new definition.
    fn upsert_dependency(&self, map: &mut TenantMap, service: Arc<Service>) -> bool {
        let container = service.container().map(|c| (c.container.clone(), c.docker_host().to_string()));
        if let Some(t) = map.get(service.name()) {
            let own = t.service();
            if own.container().map(|c| (c.container.clone(), c.docker_host().to_string())) == container {
                if own.same_definition(&service) {
                    return false;
                }
                t.update(service);
                return true;
            }
            t.cancel.cancel();
        }
        let t = Tenant::spawn(service.clone(), self.shared.clone(), self.cancel.child_token(), true);
        map.insert(Arc::from(service.name()), t);
        true
    }

    /// Brings the tenants in line with `table`.
    pub fn reconcile(&self, table: &RouteTable) {
        let _w = self.write.lock();
        let current = self.tenants.load();
        let mut map = TenantMap::with_capacity_and_hasher(current.len(), Default::default());
        let mut unchanged = true;
        for (name, service) in table.services() {
            if service.container().is_none() {
                continue;
            }
            if let Some(t) = current.get(name) {
                map.insert(name.clone(), t.clone());
            }
            let same = map.get(name).is_some_and(|t| t.serves(service));
            if !same {
                unchanged = false;
                self.upsert(&mut map, service);
            }
        }
        // Dependencies: one tenant per container (and host) however many services depend on it, unless it is a
        // service's own container.
        let services = service_containers(&map);
        let mut groups: BTreeMap<String, Vec<(&ContainerSpec, &Dependency)>> = BTreeMap::new();
        for (_, service) in table.services() {
            let Some(spec) = service.container() else { continue };
            for d in &spec.depends_on {
                if services.contains_key(&(d.container.clone(), spec.docker_host().to_string())) {
                    continue;
                }
                groups.entry(dependency_name(&d.container, spec.docker_host())).or_default().push((spec, d));
            }
        }
        for (name, dependants) in &groups {
            if let Some(t) = current.get(name.as_str()).filter(|t| t.dependency) {
                map.insert(t.name.clone(), t.clone());
            }
            let dep = Arc::new(dependency_service(name, dependants, &self.shared.settings));
            if self.upsert_dependency(&mut map, dep) {
                unchanged = false;
            }
        }
        link_dependencies(&map);
        for (name, t) in current.iter() {
            if !map.contains_key(name) {
                unchanged = false;
                info!(service = %name, "service removed or no longer passivated: its container is left as it is");
                t.cancel.cancel();
            }
        }
        if !unchanged || map.len() != current.len() {
            self.tenants.store(Arc::new(map));
            self.changed.notify_waiters();
        }
    }

    /// Follows the route table and each Docker host's events until `cancel`.
    pub async fn run(self: Arc<Self>, routes: RouteHandle, cancel: CancellationToken) {
        let mut versions = routes.subscribe();
        self.reconcile(&routes.load());
        let mut events = tokio::task::JoinSet::new();
        for host in self.shared.hosts.all() {
            let span = tracing::info_span!("docker_host", host = %host.name, endpoint = %host.endpoint());
            events.spawn(self.clone().follow_events(host.clone(), cancel.clone()).instrument(span));
        }
        let mut cluster_events = self.shared.cluster.as_ref().and_then(|c| c.take_events());
        loop {
            tokio::select! {
                r = versions.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.reconcile(&routes.load());
                }
                Some(ev) = async { cluster_events.as_mut()?.recv().await } => match ev {
                    cluster::Event::Status(name) => {
                        if let Some(t) = self.get(&name) {
                            t.notify_cluster();
                        }
                    }
                    cluster::Event::Cluster => {
                        for t in self.tenants.load().values() {
                            t.notify_cluster();
                        }
                    }
                    cluster::Event::KeepAwake(name) => {
                        if let Some(t) = self.get(&name) {
                            t.notify_keep_awake();
                        }
                    }
                },
                () = cancel.cancelled() => break,
            }
        }
        self.cancel.cancel();
        while events.join_next().await.is_some() {}
    }

    /// One Docker host's container events, dispatched to the tenants on that host they concern. The stream is
    /// opened once a tenant runs on the host; when it breaks, it is reopened with backoff and every tenant of
    /// the host re-inspects its container (events may have been missed).
    async fn follow_events(self: Arc<Self>, host: Arc<DockerHost>, cancel: CancellationToken) {
        let on_host = |t: &Arc<Tenant>| Arc::ptr_eq(t.host(), &host);
        let metrics = &self.shared.metrics;
        let mut backoff = Duration::from_millis(100);
        loop {
            while !self.tenants.load().values().any(on_host) {
                let changed = self.changed.notified();
                if self.tenants.load().values().any(on_host) {
                    break;
                }
                tokio::select! {
                    () = changed => {}
                    () = cancel.cancelled() => return,
                }
            }
            match host.events().await {
                Ok(mut stream) => {
                    debug!("following Docker events");
                    backoff = Duration::from_millis(100);
                    for t in self.tenants.load().values().filter(|t| on_host(t)) {
                        t.notify_resync();
                    }
                    let mut first = true;
                    loop {
                        let next = tokio::select! {
                            n = stream.next() => n,
                            () = cancel.cancelled() => return,
                        };
                        match next {
                            Some(Ok(ev)) => {
                                if std::mem::take(&mut first) {
                                    metrics.docker_host(&host.name, true);
                                }
                                if !matches!(ev.action.as_str(), "start" | "die" | "pause" | "unpause" | "destroy") {
                                    continue;
                                }
                                for t in self.tenants.load().values().filter(|t| on_host(t)) {
                                    if t.matches(&ev.id, &ev.container) {
                                        t.notify_event();
                                    }
                                }
                            }
                            Some(Err(e)) => {
                                metrics.docker_host(&host.name, false);
                                warn!(error = %e, "Docker event stream broken; reconnecting");
                                break;
                            }
                            None => {
                                debug!("Docker event stream ended; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "cannot follow Docker events"),
            }
            metrics.docker_event_reconnect(&host.name);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// This replica's use of each tenant, for the cluster's activity keys: the last request start or end, and
    /// whether a request or WebSocket is open now.
    pub(crate) fn activity(&self) -> Vec<(Arc<str>, Use)> {
        self.tenants
            .load()
            .values()
            .map(|t| {
                let snap = t.snapshot();
                (t.name.clone(), Use { last: snap.last_activity, busy: snap.in_flight > 0 })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
