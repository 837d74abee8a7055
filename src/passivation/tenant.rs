//! One passivated tenant: its state, the requests held while it wakes, its activity count, and the task that
//! drives its lifecycle (see `LIFECYCLE.md`).
//!
//! Concurrency: the request path only touches the tenant's state under a short lock (take an activity guard,
//! read the backend, or queue itself and ask for a wake). Every Docker call and every phase change is made by the
//! tenant's single driver task, so two wakes or a wake and a stop can never overlap. The state stays private to
//! this file and its children: the operator's views (admin API, status endpoint, etcd activity) read a
//! [`Snapshot`]. The driver task is `tenant/driver.rs`, the cluster rules it applies `tenant/coordination.rs`;
//! how a tenant looks over HTTP is `http.rs`'s; the etcd keys are `crate::cluster`'s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::{DockerHost, Shared};
use crate::routes::{Backend, ContainerSpec, Service};
use crate::runtime::{ContainerRuntime, RuntimeError};

mod coordination;
mod driver;
mod group;
mod witness;

pub(super) use group::{dependency_name, dependency_service};
mod keep_awake;

pub(crate) use keep_awake::KeepAwakeError;
pub(super) use keep_awake::LocalKeepAwake;

/// Where a tenant is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not inspected yet (reveille just started, or Docker has been unreachable since).
    Unknown,
    Running,
    Starting,
    Stopping,
    Stopped,
    Paused,
    /// The last wake failed; the next request tries again (after a short cool-down).
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "unknown",
            Phase::Running => "running",
            Phase::Starting => "starting",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Paused => "paused",
            Phase::Failed => "failed",
        }
    }
}

/// Why a request for a sleeping tenant was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A browser page request waited `page_after`: it gets the "starting" page.
    #[error("still starting")]
    Starting,
    #[error("too many requests are waiting for it to start (max_held = {max})")]
    Overflow { max: usize },
    #[error("it did not become ready within {}", humantime::format_duration(*.after))]
    Timeout { after: Duration },
    #[error("it failed to start: {reason}")]
    Failed { reason: Arc<str> },
    #[error("container runtime unavailable: {reason}")]
    Unavailable { reason: Arc<str> },
    #[error("it was removed from the configuration while the request waited")]
    Removed,
}

impl Refusal {
    /// What a client may be told: the kind of refusal, with no container, runtime or Docker detail (those are
    /// for the log and the admin API).
    pub fn public_reason(&self) -> &'static str {
        match self {
            Refusal::Overflow { .. } => "too many requests are waiting for the service to start",
            Refusal::Timeout { .. } => "the service did not start in time",
            Refusal::Removed => "the service was removed",
            Refusal::Starting | Refusal::Failed { .. } | Refusal::Unavailable { .. } => {
                "the service could not be started"
            }
        }
    }

    /// The `reveille_rejected_holds_total` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Starting => "page",
            Refusal::Overflow { .. } => "overflow",
            Refusal::Timeout { .. } => "timeout",
            Refusal::Failed { .. } => "failed",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::Removed => "removed",
        }
    }

    fn from_runtime(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unavailable { .. } | RuntimeError::Timeout(_) => {
                Refusal::Unavailable { reason: e.to_string().into() }
            }
            RuntimeError::NoSuchContainer(_) | RuntimeError::Refused { .. } => {
                Refusal::Failed { reason: e.to_string().into() }
            }
        }
    }
}

/// A phase of a wake; the label of `reveille_wake_phase_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakePhase {
    /// The Docker start (or unpause) call itself.
    StartCall,
    /// From the wake's start until Docker reports the container running.
    Running,
    /// From the wake's start until the first successful readiness probe.
    Ready,
    /// From the first held request (or the wake request) until the tenant is ready.
    Total,
}

impl WakePhase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StartCall => "start_call",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Total => "total",
        }
    }
}

/// A tenant as it is at one moment, for the operator's views (admin API, status endpoint, etcd activity keys):
/// read under the tenant's lock once, then used without it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub phase: Phase,
    /// Wall-clock time of the last phase change.
    pub since: SystemTime,
    /// Requests in flight and open upgraded connections.
    pub in_flight: usize,
    /// Wall-clock time of the last request start or end.
    pub last_activity: Option<SystemTime>,
    /// Why the last wake (or inspect) failed; cleared by the next successful wake.
    pub last_error: Option<Refusal>,
    /// Requests held while the tenant wakes (clients that gave up excluded).
    pub held: usize,
    /// How the last wake that ended went, phase by phase.
    pub last_wake: Option<WakeTimes>,
    /// The container's address while it runs (when the service has no fixed backends), with its health.
    pub backend: Option<Backend>,
}

/// How long one wake took, phase by phase (the phases of `reveille_wake_phase_seconds`). A phase the wake did
/// not reach, or a start call it did not make (another replica started the container), is `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WakeTimes {
    /// Wall-clock time the wake ended.
    pub ended: Option<SystemTime>,
    /// Whether the tenant became ready.
    pub ok: bool,
    pub start_call: Option<Duration>,
    pub running: Option<Duration>,
    pub ready: Option<Duration>,
    /// From the first held request (or the wake request) to the end.
    pub total: Option<Duration>,
}

/// Why an admin `sleep` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SleepRefused {
    #[error("it has {0} request(s) or connection(s) in progress")]
    Active(usize),
    #[error("it is {} (try again once it is running)", .0.as_str())]
    Phase(Phase),
}

/// A failed wake answers at once, without another Docker start, for this long: a crashing container is not
/// restarted by every request of a retry storm.
pub(super) const FAILURE_COOLDOWN: Duration = Duration::from_secs(1);

/// What a held request is told when the wake ends: the backend to use (`None`: the service's own backends).
type Outcome = Result<Option<Backend>, Refusal>;

/// Messages to the driver task.
#[derive(Debug)]
pub(super) enum Msg {
    /// A wake was asked for (`wake_pending` is set).
    Wake,
    /// Passivate now if idle (admin `sleep`).
    Sleep,
    /// The last activity guard was released while the driver waited for it, or a keep-awake changed: the
    /// driver recomputes its idle timer.
    Idle,
    /// Docker reported something about this container.
    Event,
    /// The Docker event stream was (re)connected (events may have been missed), or the definition changed.
    Resync,
    /// The tenant's status key changed in etcd, or this replica's place in the cluster did.
    Cluster,
}

struct State {
    phase: Phase,
    /// Wall-clock time of the last phase change.
    since: SystemTime,
    /// The same, monotonic: a paused tenant's `stop_after` counts from it.
    phase_at: Instant,
    /// The container's address while running (when the service has no fixed backends).
    backend: Option<Backend>,
    /// Requests in flight and open upgraded connections.
    active: usize,
    /// When the last activity guard was released; the idle timer counts from here.
    last_release: Instant,
    /// Wall-clock time of the last request start or end.
    last_activity: Option<SystemTime>,
    /// Held requests, in arrival order.
    queue: VecDeque<oneshot::Sender<Outcome>>,
    /// A wake has been asked for and not finished.
    wake_pending: bool,
    /// When the wake was asked for (the start of `total`).
    wake_requested_at: Option<Instant>,
    /// The last wake failure and when it happened.
    failure: Option<(Refusal, Instant)>,
    /// The phases of the wake in progress, as they complete.
    waking: WakeTimes,
    /// The last wake that ended.
    last_wake: Option<WakeTimes>,
    /// The driver waits for `active` to reach 0.
    idle_waiter: bool,
    /// Docker's id and name for the container, learnt on inspect, to match events.
    identity: Option<(String, String)>,
    /// Activity guards on its dependencies' tenants, held while it is starting, running or stopping: a
    /// dependency is not stopped for idleness while a dependant may use it (see `tenant/group.rs`).
    holds: Vec<Hold>,
    /// How many dependants hold it now (their [`Hold`]s, counted in `active` too): while any does, it is
    /// started again if it stops (see `Tenant::restart_if_held`).
    held: usize,
    /// The second witness of use before an idle stop: the last look at the container's traffic counters
    /// (`tenant/witness.rs`).
    witness: witness::Witness,
    /// Another replica's start or stop is in progress as far as this one knows: when to look at its status
    /// again if nothing changes it (`coordination.rs`, `on_cluster`).
    peer_recheck: Option<Instant>,
}

/// One passivated service.
pub struct Tenant {
    pub(super) name: Arc<str>,
    service: ArcSwap<Service>,
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    /// The Docker host its container runs on (its service's `docker_host`).
    host: Arc<DockerHost>,
    pub(super) cancel: CancellationToken,
    /// True for a dependency's tenant (`depends_on`): no route of its own; ready when its healthcheck says
    /// `healthy`, else when its port accepts connections.
    pub(super) dependency: bool,
    /// The tenants of its service's `depends_on`, in order (set by the registry; empty for a dependency).
    deps: ArcSwap<Vec<Arc<Tenant>>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Held while a request is in flight or an upgraded connection is open: a tenant with any is never stopped for
/// idleness. Cloning takes another guard.
pub struct Activity(Arc<Tenant>);

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Activity").field(&self.0.name).finish()
    }
}

impl Clone for Activity {
    fn clone(&self) -> Self {
        self.0.state.lock().active += 1;
        Activity(self.0.clone())
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.active -= 1;
        st.last_activity = Some(SystemTime::now());
        if st.active == 0 {
            st.last_release = Instant::now();
            if st.idle_waiter {
                st.idle_waiter = false;
                let _ = self.0.tx.send(Msg::Idle);
            }
        }
    }
}

/// A dependant's guard on its dependency (`tenant/group.rs`): an [`Activity`] that also counts in the
/// dependency's `held`.
pub(super) struct Hold(Activity);

impl Hold {
    fn tenant(&self) -> &Arc<Tenant> {
        &self.0 .0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Before the activity guard's own drop (the fields drop after this): two short locks, one tenant.
        self.tenant().state.lock().held -= 1;
    }
}

/// Counts a request in `reveille_held_requests` while it waits.
struct HeldGauge<'a>(&'a Shared);

impl Drop for HeldGauge<'_> {
    fn drop(&mut self) {
        self.0.metrics.held(-1);
    }
}

impl Tenant {
    /// Creates the tenant and spawns its driver; `cancel` stops the driver.
    pub(super) fn spawn(
        service: Arc<Service>,
        shared: Arc<Shared>,
        cancel: CancellationToken,
        dependency: bool,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State {
            phase: Phase::Unknown,
            since: SystemTime::now(),
            phase_at: Instant::now(),
            backend: None,
            active: 0,
            last_release: Instant::now(),
            last_activity: None,
            queue: VecDeque::new(),
            wake_pending: false,
            wake_requested_at: None,
            failure: None,
            waking: WakeTimes::default(),
            last_wake: None,
            idle_waiter: false,
            identity: None,
            holds: Vec::new(),
            held: 0,
            witness: witness::Witness::default(),
            peer_recheck: None,
        };
        shared.metrics.transition(None, Some(Phase::Unknown.as_str()));
        let host = shared.host(service.container().and_then(|c| c.docker_host.as_deref()));
        let tenant = Arc::new(Tenant {
            host,
            name: Arc::from(service.name()),
            service: ArcSwap::new(service),
            state: Mutex::new(state),
            tx,
            shared,
            cancel,
            dependency,
            deps: ArcSwap::from_pointee(Vec::new()),
        });
        let span = info_span!("tenant", service = %tenant.name, node = %tenant.shared.settings.node);
        tokio::spawn(tenant.clone().drive(rx).instrument(span));
        tenant
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Docker host its container runs on.
    pub(super) fn host(&self) -> &Arc<DockerHost> {
        &self.host
    }

    /// The runtime of its Docker host: every Docker call of this tenant goes through it.
    fn runtime(&self) -> &dyn ContainerRuntime {
        &*self.host
    }

    /// The service definition in force.
    pub fn service(&self) -> Arc<Service> {
        self.service.load_full()
    }

    /// True when `service` is the very definition this tenant runs on (the request path's cheap check).
    #[inline]
    pub(super) fn serves(&self, service: &Arc<Service>) -> bool {
        Arc::ptr_eq(&self.service.load(), service)
    }

    /// Takes a new definition of the same container.
    pub(super) fn update(&self, service: Arc<Service>) {
        self.service.store(service);
        // The driver re-inspects the container (the backend address may have changed with `port`, `network`
        // or `backends`) and recomputes its idle timer with the new definition.
        let _ = self.tx.send(Msg::Resync);
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    fn spec_of(service: &Service) -> Option<&ContainerSpec> {
        service.container()
    }

    fn idle_timeout(&self, spec: &ContainerSpec) -> Duration {
        spec.idle_timeout.unwrap_or(self.shared.settings.idle_timeout)
    }

    fn wake_timeout(&self, spec: &ContainerSpec) -> Duration {
        spec.wake_timeout.unwrap_or(self.shared.settings.wake_timeout)
    }

    /// `None`: Docker uses the container's own stop timeout.
    fn stop_timeout(&self, spec: &ContainerSpec) -> Option<Duration> {
        spec.stop_timeout.or(self.shared.settings.stop_timeout)
    }

    /// Requests held at most while this tenant wakes.
    pub fn max_held(&self) -> usize {
        self.service().container().and_then(|c| c.max_held).unwrap_or(self.shared.settings.max_held)
    }

    /// How long a browser page request waits before it gets the "starting" page.
    pub fn page_after(&self) -> Duration {
        self.service().container().and_then(|c| c.page_after).unwrap_or(self.shared.settings.page_after)
    }

    /// The request path's warm case, with no future: a running tenant's backend (`None` inside: the service's
    /// own backends) and an activity guard. `None`: not running (or removed), and the request goes through
    /// [`Self::admit`]. A request to a running tenant then costs a lock and a clock read more than one to a plain
    /// service, not an allocation and a future (issue 30: the warm path of scale-to-zero must be free).
    #[inline]
    pub fn admit_running(self: &Arc<Self>) -> Option<(Option<Backend>, Activity)> {
        if self.cancel.is_cancelled() {
            return None;
        }
        let mut st = self.state.lock();
        if st.phase != Phase::Running {
            return None;
        }
        st.active += 1;
        st.last_activity = Some(SystemTime::now());
        let backend = st.backend.clone();
        drop(st);
        Some((backend, Activity(self.clone())))
    }

    /// The request path: takes an activity guard and returns the backend to forward to (`None`: use the
    /// service's own backends), waking the tenant first if it is not running. A browser page request
    /// (`page` = true) waits at most `page_after`, then gets [`Refusal::Starting`].
    pub async fn admit(self: &Arc<Self>, page: bool) -> Result<(Option<Backend>, Activity), Refusal> {
        if self.cancel.is_cancelled() {
            // Removed from the configuration just now: its driver is gone.
            return Err(Refusal::Removed);
        }
        let (activity, rx) = {
            let mut st = self.state.lock();
            st.active += 1;
            st.last_activity = Some(SystemTime::now());
            let activity = Activity(self.clone());
            if st.phase == Phase::Running {
                let backend = st.backend.clone();
                drop(st);
                return Ok((backend, activity));
            }
            if st.phase == Phase::Failed && !st.wake_pending {
                if let Some((refusal, at)) = &st.failure {
                    if at.elapsed() < FAILURE_COOLDOWN && matches!(refusal, Refusal::Failed { .. }) {
                        let refusal = refusal.clone();
                        drop(st);
                        drop(activity);
                        self.shared.metrics.rejected(refusal.reason());
                        return Err(refusal);
                    }
                }
            }
            let max = self.max_held();
            if st.queue.len() >= max {
                // Clients that gave up free their place.
                st.queue.retain(|tx| !tx.is_closed());
                if st.queue.len() >= max {
                    drop(st);
                    drop(activity);
                    let refusal = Refusal::Overflow { max };
                    self.shared.metrics.rejected(refusal.reason());
                    return Err(refusal);
                }
            }
            let (tx, rx) = oneshot::channel();
            st.queue.push_back(tx);
            if !st.wake_pending {
                st.wake_pending = true;
                st.wake_requested_at = Some(Instant::now());
                let _ = self.tx.send(Msg::Wake);
            }
            (activity, rx)
        };
        self.shared.metrics.held(1);
        let _held = HeldGauge(&self.shared);
        let timeout = self.service().container().map_or(self.shared.settings.wake_timeout, |c| self.wake_timeout(c));
        let page_after = if page { Some(self.page_after()) } else { None };
        let outcome = tokio::select! {
            r = rx => r.unwrap_or(Err(Refusal::Removed)),
            () = tokio::time::sleep(timeout) => Err(Refusal::Timeout { after: timeout }),
            () = sleep_opt(page_after) => Err(Refusal::Starting),
        };
        match outcome {
            Ok(backend) => Ok((backend, activity)),
            Err(refusal) => {
                if refusal != Refusal::Starting {
                    self.shared.metrics.rejected(refusal.reason());
                }
                Err(refusal)
            }
        }
    }

    /// Asks for a wake without a request (admin `wake`). No-op while running or already waking.
    pub fn request_wake(&self) {
        let mut st = self.state.lock();
        if st.phase != Phase::Running && !st.wake_pending {
            st.wake_pending = true;
            st.wake_requested_at = Some(Instant::now());
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Asks the driver to passivate now. Refused (returns the count) while requests or connections are active.
    pub fn request_sleep(&self) -> Result<(), SleepRefused> {
        let st = self.state.lock();
        if st.active > 0 {
            return Err(SleepRefused::Active(st.active));
        }
        match st.phase {
            Phase::Running => {
                let _ = self.tx.send(Msg::Sleep);
                Ok(())
            }
            // Already asleep, or going to sleep.
            Phase::Stopped | Phase::Paused | Phase::Stopping => Ok(()),
            phase => Err(SleepRefused::Phase(phase)),
        }
    }

    /// A request could not reach the tenant's backend: have the container's state checked.
    pub fn suspect(&self) {
        let _ = self.tx.send(Msg::Event);
    }

    /// The tenant's state now, read under one short lock.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        Snapshot {
            phase: st.phase,
            since: st.since,
            in_flight: st.active,
            last_activity: st.last_activity,
            last_error: st.failure.as_ref().map(|(r, _)| r.clone()),
            held: st.queue.iter().filter(|tx| !tx.is_closed()).count(),
            last_wake: st.last_wake,
            backend: st.backend.clone(),
        }
    }

    /// Docker reported something about this container.
    pub(super) fn notify_event(&self) {
        let _ = self.tx.send(Msg::Event);
    }

    pub(super) fn notify_resync(&self) {
        let _ = self.tx.send(Msg::Resync);
    }

    pub(super) fn notify_cluster(&self) {
        let _ = self.tx.send(Msg::Cluster);
    }

    /// True when a Docker event about `id`/`name` concerns this tenant's container.
    pub(super) fn matches(&self, id: &str, name: &str) -> bool {
        let st = self.state.lock();
        if let Some((known_id, known_name)) = &st.identity {
            return known_id == id || known_name == name;
        }
        drop(st);
        let service = self.service();
        service
            .container()
            .is_some_and(|c| c.container == name || (c.container.len() >= 12 && id.starts_with(&c.container)))
    }

    /// Held requests right now (clients that gave up excluded).
    pub fn held(&self) -> usize {
        self.state.lock().queue.iter().filter(|tx| !tx.is_closed()).count()
    }

    fn set_phase(&self, st: &mut State, phase: Phase) {
        if st.phase == phase {
            return;
        }
        debug!(from = st.phase.as_str(), to = phase.as_str(), "tenant state");
        self.shared.metrics.transition(Some(st.phase.as_str()), Some(phase.as_str()));
        let (from, to, node) = (st.phase.as_str(), phase.as_str(), &self.shared.settings.node);
        self.shared
            .events
            .publish("tenant", serde_json::json!({ "service": &*self.name, "from": from, "state": to, "node": node }));
        st.phase = phase;
        st.since = SystemTime::now();
        st.phase_at = Instant::now();
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
