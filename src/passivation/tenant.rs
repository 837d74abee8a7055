//! One passivated tenant: its state, the requests held while it wakes, its activity count, and the task that
//! drives its lifecycle (see `LIFECYCLE.md`).
//!
//! Concurrency: the request path only touches the tenant's state under a short lock (take an activity guard,
//! read the backend, or queue itself and ask for a wake). Every Docker call and every phase change is made by the
//! tenant's single driver task, so two wakes or a wake and a stop can never overlap. The state stays private to
//! this file: the operator's views (admin API, status endpoint, etcd activity) read a [`Snapshot`]. How a tenant
//! looks over HTTP is `http.rs`'s; its etcd keys are `crate::cluster`'s, its cluster rules `tenant/coordination.rs`'s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{DockerHost, Shared};
use crate::routes::{Backend, ContainerSpec, IdleAction, Service};
use crate::runtime::{ContainerInfo, ContainerRuntime, ContainerState, RuntimeError};

mod coordination;

use coordination::StartClaim;

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

/// How often a `failed` tenant's container is inspected again.
const FAILED_RECHECK: Duration = Duration::from_secs(5);

/// Probe interval during the first [`FAST_PROBING`] of a wake.
const FAST_PROBE: Duration = Duration::from_millis(5);
const FAST_PROBING: Duration = Duration::from_secs(1);

/// What a held request is told when the wake ends: the backend to use (`None`: the service's own backends).
type Outcome = Result<Option<Backend>, Refusal>;

/// Messages to the driver task.
#[derive(Debug)]
pub(super) enum Msg {
    /// A wake was asked for (`wake_pending` is set).
    Wake,
    /// Passivate now if idle (admin `sleep`).
    Sleep,
    /// The last activity guard was released while the driver waited for it: the driver recomputes its idle
    /// timer.
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

/// Counts a request in `reveille_held_requests` while it waits.
struct HeldGauge<'a>(&'a Shared);

impl Drop for HeldGauge<'_> {
    fn drop(&mut self) {
        self.0.metrics.held(-1);
    }
}

impl Tenant {
    /// Creates the tenant and spawns its driver; `cancel` stops the driver.
    pub(super) fn spawn(service: Arc<Service>, shared: Arc<Shared>, cancel: CancellationToken) -> Arc<Self> {
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
        self.shared.metrics.tenant_changed(&self.name, st.phase.as_str(), phase.as_str(), &self.shared.settings.node);
        st.phase = phase;
        st.since = SystemTime::now();
        st.phase_at = Instant::now();
    }

    // ---- the driver -------------------------------------------------------------------------------------

    async fn drive(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Msg>) {
        const BACKOFF_MIN: Duration = Duration::from_millis(500);
        const BACKOFF_MAX: Duration = Duration::from_secs(30);
        let mut backoff = BACKOFF_MIN;
        // Adopt whatever the container is doing now; a running one starts its idle timer here.
        if self.refresh().await.is_err() {
            backoff = BACKOFF_MIN;
        }
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            if self.take_wake() {
                self.wake(&mut rx).await;
                continue;
            }
            let (phase, timer) = {
                let mut st = self.state.lock();
                let timer = match st.phase {
                    Phase::Unknown => Some(backoff),
                    // A wake that timed out may have left the container running (an app slower than
                    // `wake_timeout`): look again now and then, so it is adopted (and later stopped when idle).
                    Phase::Failed => Some(FAILED_RECHECK),
                    Phase::Running => {
                        let service = self.service();
                        let idle = Self::spec_of(&service).map_or(Duration::ZERO, |s| self.idle_timeout(s));
                        if idle.is_zero() {
                            None
                        } else if st.active > 0 {
                            st.idle_waiter = true;
                            None
                        } else {
                            let local = (st.last_release + idle).saturating_duration_since(Instant::now());
                            // With several replicas: only the decider stops, and the others' use counts too.
                            self.cluster_idle_timer(local, idle)
                        }
                    }
                    // Pause, then stop: a paused tenant is stopped after `stop_after` more.
                    Phase::Paused => {
                        let service = self.service();
                        Self::spec_of(&service).and_then(|s| s.stop_after).and_then(|after| {
                            let left = (st.phase_at + after).saturating_duration_since(Instant::now());
                            if self.cluster().is_some_and(|c| !c.is_decider()) {
                                None
                            } else {
                                Some(left)
                            }
                        })
                    }
                    _ => None,
                };
                (st.phase, timer)
            };
            let msg = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => break,
                },
                () = sleep_opt(timer) => None,
            };
            match msg {
                None if phase == Phase::Unknown => {
                    backoff = if self.refresh().await.is_ok() { BACKOFF_MIN } else { (backoff * 2).min(BACKOFF_MAX) };
                }
                None if phase == Phase::Running => self.passivate(false).await,
                None if phase == Phase::Paused => self.stop_paused().await,
                None if phase == Phase::Failed => {
                    let _ = self.refresh().await;
                }
                None | Some(Msg::Wake | Msg::Idle) => {}
                Some(Msg::Sleep) => self.passivate(true).await,
                Some(Msg::Event | Msg::Resync) => {
                    let _ = self.refresh().await;
                }
                Some(Msg::Cluster) => self.on_cluster().await,
            }
        }
        let mut st = self.state.lock();
        for tx in st.queue.drain(..) {
            let _ = tx.send(Err(Refusal::Removed));
        }
        self.shared.metrics.transition(Some(st.phase.as_str()), None);
    }

    /// True when a wake must run now. A wake asked for while running is answered at once.
    fn take_wake(&self) -> bool {
        let mut st = self.state.lock();
        if !st.wake_pending {
            return false;
        }
        if st.phase == Phase::Running {
            st.wake_pending = false;
            st.wake_requested_at = None;
            let backend = st.backend.clone();
            for tx in st.queue.drain(..) {
                let _ = tx.send(Ok(backend.clone()));
            }
            return false;
        }
        true
    }

    /// Inspects the container and takes its state as the tenant's (adoption at startup, events, resyncs).
    async fn refresh(&self) -> Result<(), RuntimeError> {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return Ok(()) };
        let info = match self.runtime().inspect(&spec.container, spec.network.as_deref()).await {
            Ok(info) => info,
            Err(e @ RuntimeError::NoSuchContainer(_)) => {
                warn!(container = %spec.container, "no such container");
                let mut st = self.state.lock();
                st.backend = None;
                st.failure = Some((Refusal::from_runtime(e), Instant::now()));
                self.set_phase(&mut st, Phase::Failed);
                return Ok(());
            }
            Err(e) => {
                debug!(error = %e, "cannot inspect the container");
                return Err(e);
            }
        };
        let backend = container_backend(&service, spec, &info);
        let mut st = self.state.lock();
        st.identity = Some((info.id.clone(), info.name.clone()));
        match info.state {
            // Another replica is starting it: adopted once that replica's probe has passed (its status says
            // `running`), not before the application listens.
            ContainerState::Running if st.phase != Phase::Running && self.peer_starting(spec) => {}
            ContainerState::Running => match backend {
                Ok(backend) => {
                    st.backend = backend;
                    if st.phase != Phase::Running {
                        if st.active == 0 {
                            st.last_release = Instant::now();
                        }
                        info!(container = %spec.container, "container is running: adopted");
                        self.set_phase(&mut st, Phase::Running);
                    }
                }
                Err(refusal) => {
                    st.backend = None;
                    st.failure = Some((refusal, Instant::now()));
                    self.set_phase(&mut st, Phase::Failed);
                }
            },
            ContainerState::Paused => {
                st.backend = None;
                self.set_phase(&mut st, Phase::Paused);
            }
            ContainerState::Stopped | ContainerState::Restarting | ContainerState::Dead => {
                st.backend = None;
                if st.phase != Phase::Failed {
                    self.set_phase(&mut st, Phase::Stopped);
                }
            }
        }
        let phase = st.phase;
        drop(st);
        self.observe(phase, spec);
        Ok(())
    }

    /// Starts (or unpauses) the container, waits until it accepts connections, and releases the held requests
    /// in arrival order; or fails them all with the reason.
    async fn wake(&self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return };
        let timeout = self.wake_timeout(spec);
        let started = Instant::now();
        let (requested, known) = {
            let mut st = self.state.lock();
            let known = st.phase;
            st.waking = WakeTimes::default();
            self.set_phase(&mut st, Phase::Starting);
            (st.wake_requested_at.unwrap_or(started), known)
        };
        let span =
            info_span!("wake", service = %self.name, container = %spec.container, node = %self.shared.settings.node);
        let mut claim = None;
        let outcome = async {
            info!("waking");
            let bring_up = tokio::time::timeout(timeout, self.bring_up(&service, spec, rx, started, known, &mut claim));
            tokio::select! {
                r = bring_up => match r {
                    Ok(r) => r,
                    Err(_) => Err(Refusal::Timeout { after: timeout }),
                },
                () = self.cancel.cancelled() => Err(Refusal::Removed),
            }
        }
        .instrument(span.clone())
        .await;
        {
            let metrics = &self.shared.metrics;
            let mut st = self.state.lock();
            st.wake_pending = false;
            st.wake_requested_at = None;
            st.last_wake = Some(WakeTimes {
                ended: Some(SystemTime::now()),
                ok: outcome.is_ok(),
                total: Some(requested.elapsed()),
                ..st.waking
            });
            match &outcome {
                Ok(backend) => {
                    st.backend = backend.clone();
                    st.failure = None;
                    if st.active == 0 {
                        st.last_release = Instant::now();
                    }
                    self.set_phase(&mut st, Phase::Running);
                    metrics.wake(&self.name, &self.host.name, "ok");
                    metrics.phase(WakePhase::Total.as_str(), requested.elapsed());
                    span.in_scope(|| {
                        info!(ms = requested.elapsed().as_millis() as u64, held = st.queue.len(), "ready")
                    });
                }
                Err(refusal) => {
                    st.backend = None;
                    st.failure = Some((refusal.clone(), Instant::now()));
                    self.set_phase(&mut st, Phase::Failed);
                    metrics.wake(&self.name, &self.host.name, refusal.reason());
                    span.in_scope(|| warn!(error = %refusal, held = st.queue.len(), "wake failed"));
                }
            }
            for tx in st.queue.drain(..) {
                let _ = tx.send(outcome.clone());
            }
        }
        // The cluster learns the outcome (its watchers among the other replicas release their held requests).
        match claim {
            Some(StartClaim::Mine(rev)) => self.settle(rev, if outcome.is_ok() { "running" } else { "failed" }).await,
            _ if outcome.is_ok() => self.observe(Phase::Running, spec),
            _ => {}
        }
    }

    async fn bring_up(
        &self,
        service: &Service,
        spec: &ContainerSpec,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        started: Instant,
        known: Phase,
        claim: &mut Option<StartClaim>,
    ) -> Outcome {
        let rt = self.runtime();
        let interval = self.shared.settings.probe_interval;
        let (name, network) = (spec.container.as_str(), spec.network.as_deref());
        let inspect = || async { rt.inspect(name, network).await.map_err(Refusal::from_runtime) };

        // With several replicas, the start is claimed cluster-wide first: one replica starts the container,
        // the others wait for it and only probe.
        let claimed = self.claim_start(spec, rx).await?;
        let already_up = matches!(claimed, StartClaim::AlreadyUp);
        *claim = Some(claimed);

        // When reveille itself stopped or paused the container (or saw it so), it acts at once; otherwise, or if
        // that knowledge turns out stale, it asks Docker first. Another replica may have changed it: then always
        // ask.
        let assumed = match known {
            _ if self.cluster().is_some() => None,
            Phase::Stopped => Some(ContainerState::Stopped),
            Phase::Paused => Some(ContainerState::Paused),
            _ => None,
        };
        let state = match (already_up, assumed) {
            (true, _) => ContainerState::Running,
            (false, Some(s)) => s,
            (false, None) => inspect().await?.state,
        };
        let call = Instant::now();
        let act = |state: ContainerState| async move {
            match state {
                ContainerState::Running => Ok(()),
                ContainerState::Paused => rt.unpause(name).await.map_err(Refusal::from_runtime),
                ContainerState::Stopped | ContainerState::Restarting => {
                    rt.start(name).await.map_err(Refusal::from_runtime)
                }
                ContainerState::Dead => {
                    Err(Refusal::Failed { reason: "the container is dead or being removed".into() })
                }
            }
        };
        match act(state).await {
            Ok(()) => {}
            Err(Refusal::Failed { .. }) if assumed.is_some() => act(inspect().await?.state).await?,
            Err(e) => return Err(e),
        }
        if !already_up {
            // Only a wake that called Docker has a start call to time.
            self.phase_done(WakePhase::StartCall, call.elapsed());
        }

        let mut info = inspect().await?;
        loop {
            match info.state {
                ContainerState::Running => break,
                ContainerState::Stopped | ContainerState::Dead => return Err(exited(&info)),
                // Restarting right after our start: it exited and Docker's restart policy is at work.
                ContainerState::Restarting => {
                    return Err(Refusal::Failed {
                        reason: format!("{} (Docker is restarting it)", exited(&info)).into(),
                    })
                }
                ContainerState::Paused => {
                    tokio::time::sleep(interval).await;
                    info = inspect().await?;
                }
            }
        }
        self.phase_done(WakePhase::Running, started.elapsed());
        {
            let mut st = self.state.lock();
            st.identity = Some((info.id.clone(), info.name.clone()));
        }
        let backend = container_backend(service, spec, &info)?;
        let target = match (&backend, service.backends().first()) {
            (Some(b), _) | (None, Some(b)) => b.clone(),
            (None, None) => return Err(Refusal::Failed { reason: "the service has no address to probe".into() }),
        };

        // Probe until the application answers: every 5 ms during the first second (a refused connect costs
        // microseconds, and most applications are ready within it), then every `probe_interval`. Docker's events
        // (or, every 20 probes, an inspect) tell if the container died meanwhile, so a crash fails the wake at
        // once.
        let probing = Instant::now();
        let mut probes: u32 = 0;
        loop {
            let gap = if probing.elapsed() < FAST_PROBING { interval.min(FAST_PROBE) } else { interval };
            let next = Instant::now() + gap;
            if self.shared.probe.ready(&target, spec.health_path.as_deref()).await {
                break;
            }
            probes += 1;
            if probes % 20 == 0 {
                let info = inspect().await?;
                if info.state != ContainerState::Running {
                    return Err(exited(&info));
                }
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    m = rx.recv() => match m {
                        Some(Msg::Event) => {
                            let info = inspect().await?;
                            if info.state != ContainerState::Running {
                                return Err(exited(&info));
                            }
                        }
                        Some(_) => {}
                        None => return Err(Refusal::Removed),
                    },
                }
            }
        }
        self.phase_done(WakePhase::Ready, started.elapsed());
        Ok(backend)
    }

    /// A phase of the wake in progress completed after `took`: counted in the metrics and kept for the
    /// operator's views.
    fn phase_done(&self, phase: WakePhase, took: Duration) {
        self.shared.metrics.phase(phase.as_str(), took);
        let mut st = self.state.lock();
        let slot = match phase {
            WakePhase::StartCall => &mut st.waking.start_call,
            WakePhase::Running => &mut st.waking.running,
            WakePhase::Ready => &mut st.waking.ready,
            WakePhase::Total => &mut st.waking.total,
        };
        *slot = Some(took);
    }

    /// Stops (or pauses) the container if the tenant is idle: past its idle timeout, or at once when `forced`
    /// (admin `sleep`). Never while a request or connection is active, or a wake is pending.
    async fn passivate(&self, forced: bool) {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return };
        {
            let mut st = self.state.lock();
            if st.phase != Phase::Running || st.active > 0 || st.wake_pending {
                return;
            }
            let idle = self.idle_timeout(spec);
            if !forced && (idle.is_zero() || st.last_release.elapsed() < idle) {
                return;
            }
            if !self.cluster_allows_stop(idle, forced) {
                return;
            }
            self.set_phase(&mut st, Phase::Stopping);
        }
        let Some(claim) = self.claim_stop(spec).await else {
            let mut st = self.state.lock();
            self.stop_abandoned(&mut st, self.idle_timeout(spec));
            return;
        };
        let action = spec.idle_action;
        let span = info_span!(
            "passivate",
            service = %self.name,
            container = %spec.container,
            action = action.as_str(),
            node = %self.shared.settings.node
        );
        let rt = self.runtime();
        let result = async {
            match action {
                IdleAction::Stop => rt.stop(&spec.container, self.stop_timeout(spec)).await,
                IdleAction::Pause => rt.pause(&spec.container).await,
            }
        }
        .instrument(span.clone())
        .await;
        match result {
            Ok(()) => {
                let to = if action == IdleAction::Pause { Phase::Paused } else { Phase::Stopped };
                {
                    let mut st = self.state.lock();
                    st.backend = None;
                    self.set_phase(&mut st, to);
                }
                self.shared.metrics.stopped(&self.name, action.as_str());
                span.in_scope(|| {
                    let done = if action == IdleAction::Pause { "paused" } else { "stopped" };
                    if forced {
                        info!("{done} on request (admin sleep)")
                    } else {
                        info!("idle: {done}")
                    }
                });
                if let Some(rev) = claim {
                    self.settle(rev, to.as_str()).await;
                }
            }
            Err(e) => {
                self.shared.metrics.stop_failed(&self.name);
                span.in_scope(|| warn!(error = %e, "could not passivate; will try again after another idle period"));
                {
                    let mut st = self.state.lock();
                    st.last_release = Instant::now();
                    self.set_phase(&mut st, Phase::Running);
                }
                let _ = self.refresh().await;
            }
        }
    }
}

impl Tenant {
    /// Pause, then stop: stops a container that has stayed paused for its service's `stop_after`, freeing its
    /// memory. The next wake is then a start instead of an unpause. A wake asked for meanwhile waits for the
    /// stop to finish (the tenant is `stopping`), as with any stop.
    async fn stop_paused(&self) {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return };
        let Some(after) = spec.stop_after else { return };
        {
            let mut st = self.state.lock();
            if st.phase != Phase::Paused || st.wake_pending || st.phase_at.elapsed() < after {
                return;
            }
            if self.cluster().is_some_and(|c| !c.is_decider()) {
                return;
            }
            self.set_phase(&mut st, Phase::Stopping);
        }
        let Some(claim) = self.claim_stop(spec).await else {
            // Tried again after another `stop_after`.
            let mut st = self.state.lock();
            self.set_phase(&mut st, Phase::Paused);
            return;
        };
        let span = info_span!(
            "passivate",
            service = %self.name,
            container = %spec.container,
            action = "stop",
            node = %self.shared.settings.node
        );
        let result = self.runtime().stop(&spec.container, self.stop_timeout(spec)).instrument(span.clone()).await;
        if let (Ok(()), Some(rev)) = (&result, claim) {
            self.settle(rev, "stopped").await;
        }
        let mut st = self.state.lock();
        match result {
            Ok(()) => {
                st.backend = None;
                self.set_phase(&mut st, Phase::Stopped);
                self.shared.metrics.stopped(&self.name, "stop");
                span.in_scope(|| info!(after = %humantime::format_duration(after), "paused long enough: stopped"));
            }
            Err(e) => {
                self.shared.metrics.stop_failed(&self.name);
                span.in_scope(|| warn!(error = %e, "could not stop the paused container; it stays paused"));
                // Try again after another `stop_after`.
                self.set_phase(&mut st, Phase::Paused);
            }
        }
    }
}

/// The backend of a running container: `Some(address:port)` when the service has no fixed backends,
/// `None` when it has (they are used as they are).
fn container_backend(
    service: &Service,
    spec: &ContainerSpec,
    info: &ContainerInfo,
) -> Result<Option<Backend>, Refusal> {
    if !service.backends().is_empty() {
        return Ok(None);
    }
    let Some(port) = spec.port else {
        return Err(Refusal::Failed { reason: "the service has neither `backends` nor `port`".into() });
    };
    match info.ip {
        Some(ip) => Ok(Some(Backend::from_addr((ip, port).into()))),
        None => Err(Refusal::Failed {
            reason: match &spec.network {
                Some(n) => format!("the container has no address on network {n:?}").into(),
                None => "the container has no network address".into(),
            },
        }),
    }
}

fn exited(info: &ContainerInfo) -> Refusal {
    let mut reason = match info.exit_code {
        Some(code) => format!("the container exited with code {code}"),
        None => "the container stopped".to_string(),
    };
    if let Some(e) = &info.error {
        reason.push_str(": ");
        reason.push_str(e);
    }
    Refusal::Failed { reason: reason.into() }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
