//! The driver of a tenant: the single task that makes every Docker call and every phase change of one tenant
//! (adoption at startup, wakes, idle stops, pause then stop), so two wakes or a wake and a stop never overlap.
//! The request path only queues itself and sends a [`Msg`]; the cluster rules it applies around its Docker
//! calls are `coordination.rs`'s.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use super::coordination::StartClaim;
use super::witness::{Next, Verdict};
use super::{sleep_opt, Msg, Outcome, Phase, Refusal, Tenant, WakePhase, WakeTimes};
use crate::cluster::TenantState;
use crate::passivation::StopCheck;
use crate::routes::{Backend, ContainerSpec, IdleAction, Service};
use crate::runtime::{ContainerInfo, ContainerState, PublishedPort, RuntimeError};

/// How often a `failed` tenant's container is inspected again.
const FAILED_RECHECK: Duration = Duration::from_secs(5);

/// Probe interval during the first [`FAST_PROBING`] of a wake.
const FAST_PROBE: Duration = Duration::from_millis(5);
const FAST_PROBING: Duration = Duration::from_secs(1);

impl Tenant {
    pub(super) async fn drive(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Msg>) {
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
            // Guards on its dependencies follow its phase (a dependant that went to sleep releases them).
            self.sync_holds();
            // A dependency found stopped while a dependant holds it is started again.
            self.restart_if_held(&mut self.state.lock());
            if self.take_wake() {
                self.wake(&mut rx).await;
                continue;
            }
            // `look`: the timer is for a look at the traffic counters (the witness's window starts), not the check.
            let mut look = false;
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
                            // Kept awake: not before the keep-awake ends.
                            let local = local.max(self.keep_awake_left().unwrap_or_default());
                            // With several replicas: only the decider stops, and the others' use counts too.
                            let timer = self.cluster_idle_timer(local, idle);
                            // And the container's own counters are looked at across the end of the idle timeout.
                            match timer {
                                Some(t) if self.witnessed(&service) && !self.busy_elsewhere() => {
                                    match st.witness.next(Instant::now(), t, idle, st.phase_at) {
                                        Next::Look(after) => {
                                            look = true;
                                            Some(after)
                                        }
                                        Next::Check(after) => Some(after),
                                    }
                                }
                                timer => timer,
                            }
                        }
                    }
                    // Pause, then stop: a paused tenant is stopped after `stop_after` more.
                    Phase::Paused => {
                        let service = self.service();
                        Self::spec_of(&service).and_then(|s| s.stop_after).and_then(|after| {
                            let left = (st.phase_at + after).saturating_duration_since(Instant::now());
                            let left = left.max(self.keep_awake_left().unwrap_or_default());
                            if self.cluster().is_some_and(|c| !c.is_decider()) {
                                None
                            } else {
                                Some(left)
                            }
                        })
                    }
                    _ => None,
                };
                // And a look again at another replica's transition, if one is due before.
                let recheck = st.peer_recheck.map(|at| at.saturating_duration_since(Instant::now()));
                let timer = match (timer, recheck) {
                    (Some(t), Some(r)) => Some(t.min(r)),
                    (t, r) => t.or(r),
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
            if msg.is_none() && self.take_peer_recheck() {
                self.on_cluster().await;
                continue;
            }
            match msg {
                None if phase == Phase::Unknown => {
                    backoff = if self.refresh().await.is_ok() { BACKOFF_MIN } else { (backoff * 2).min(BACKOFF_MAX) };
                }
                None if phase == Phase::Running && look => self.witness_look().await,
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
        let released = std::mem::take(&mut st.holds);
        drop(st);
        drop(released);
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
    pub(super) async fn refresh(&self) -> Result<(), RuntimeError> {
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
        // A dependency has no backend: it is waited for, never forwarded to.
        let backend = if self.dependency { Ok(None) } else { container_backend(&service, spec, &info) };
        let mut st = self.state.lock();
        st.identity = Some((info.id.clone(), info.name.clone()));
        match info.state {
            // Another replica is starting it: adopted once that replica's probe has passed (its status says
            // `running`), not before the application listens.
            ContainerState::Running if st.phase != Phase::Running && self.peer_starting(spec) => {}
            ContainerState::Running => match backend {
                Ok(backend) => {
                    // The same address keeps its backend, and with it what the proxy saw of it (its health):
                    // an inspect after any Docker event must not reset that to `unknown`.
                    if st.backend != backend {
                        st.backend = backend;
                    }
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
            Some(StartClaim::Mine(rev)) => {
                self.settle(rev, if outcome.is_ok() { TenantState::Running } else { TenantState::Failed }).await
            }
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

        // Its dependencies first, in order, each ready before the next.
        self.wake_dependencies().await?;

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
                    rt.start_replicas(name, spec.replicas()).await.map_err(Refusal::from_runtime)
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
        if self.dependency {
            self.dependency_ready(spec, info, rx).await?;
            self.phase_done(WakePhase::Ready, started.elapsed());
            return Ok(None);
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
        // Through a port Docker publishes (a Swarm service's), its userland proxy accepts before the application
        // listens: without a `health_path`, readiness is then any HTTP answer, not a connect.
        let via_published_port = info.published.is_some() && spec.health_path.is_none();
        let probing = Instant::now();
        let mut probes: u32 = 0;
        loop {
            let gap = if probing.elapsed() < FAST_PROBING { interval.min(FAST_PROBE) } else { interval };
            let next = Instant::now() + gap;
            let ready = if via_published_port {
                self.shared.probe.answers(&target).await
            } else {
                self.shared.probe.ready(&target, spec.health_path.as_deref()).await
            };
            if ready {
                break;
            }
            probes += 1;
            if probes.is_multiple_of(20) {
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
        let action = spec.idle_action;
        let span = info_span!(
            "passivate",
            service = %self.name,
            container = %spec.container,
            action = action.as_str(),
            node = %self.shared.settings.node
        );
        // Whether it may stop now: idle, and (unless an admin asked for it) not kept awake and not busy by its
        // own `stop_check`, asked before the claim so that a busy tenant changes nothing in etcd.
        let idle_since = {
            let st = self.state.lock();
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
            st.last_release
        };
        if !forced {
            if let Some(left) = self.keep_awake_left() {
                debug!(left = %humantime::format_duration(left), "kept awake: not stopped");
                return;
            }
            // The second witness before the stop check: it makes no traffic of its own, and a tenant used unseen
            // is not asked.
            if self.witnessed(&service) && !self.witness_allows(spec).instrument(span.clone()).await {
                return;
            }
            if let Some(path) = &spec.stop_check {
                if !self.stop_check_allows(&service, path).instrument(span.clone()).await {
                    return;
                }
            }
        }
        {
            let mut st = self.state.lock();
            // A request may have come (and gone) while the check waited: then the idle timer starts over.
            let moved = st.last_release != idle_since;
            // A keep-awake set while the stop check waited counts too (the keep-awake map after the tenant's
            // lock, the one order they are taken in).
            let kept = !forced && self.keep_awake_left().is_some();
            if st.phase != Phase::Running || st.active > 0 || st.wake_pending || moved || kept {
                return;
            }
            self.set_phase(&mut st, Phase::Stopping);
        }
        let Some(claim) = self.claim_stop(spec).await else {
            let mut st = self.state.lock();
            self.stop_abandoned(&mut st, self.idle_timeout(spec));
            return;
        };
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
                    self.settle(rev, if to == Phase::Paused { TenantState::Paused } else { TenantState::Stopped })
                        .await;
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

    /// Takes a look at the container's traffic counters: the start of the witness's window. A failed call is a
    /// look without counters, so the stop goes ahead on etcd's view alone.
    async fn witness_look(&self) {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return };
        let traffic = match self.runtime().traffic(&spec.container).await {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "traffic witness: cannot read the counters; the stop will go on etcd's view");
                None
            }
        };
        // Docker answers at its stats collector's next tick (up to a second, even with `one-shot`): the counters
        // are of the call's end, and so is the look (taken before the call, a slow answer would always be out of
        // the window, and the driver would look again and again).
        let at = Instant::now();
        debug!(packets = traffic.map(|t| t.packets()), "traffic witness: the window starts");
        self.state.lock().witness.look(at, traffic);
    }

    /// The second witness of use, at the idle check: false when the container's counters moved across the window
    /// by more than reveille's own traffic explains — used where the cluster cannot see (a replica cut off from
    /// etcd) — and then the stop is put off by an idle timeout, as a busy `stop_check` does. Whenever the
    /// witness cannot tell (no counters, a failed call, no look before), true: a broken witness never keeps a
    /// tenant up.
    async fn witness_allows(&self, spec: &ContainerSpec) -> bool {
        let now = match self.runtime().traffic(&spec.container).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                debug!("traffic witness: the runtime gives no counters; stopping on etcd's view");
                return true;
            }
            Err(e) => {
                debug!(error = %e, "traffic witness: cannot read the counters; stopping on etcd's view");
                return true;
            }
        };
        let verdict = {
            let mut st = self.state.lock();
            let at = Instant::now();
            if st.witness.look.is_some_and(|l| l.at >= st.phase_at) {
                st.witness.verdict(now, at)
            } else {
                // No look in this run of the container yet (its idle timer was set while another replica had it
                // busy, or it was adopted or woken just now): this read is the window's start, and the idle
                // check comes a whole window later. Stopping on etcd's view here would stop a tenant that a
                // replica whose lease just lapsed is still using.
                st.witness.look(at, Some(now));
                let idle = self.idle_timeout(spec);
                st.last_release = at.checked_sub(idle.saturating_sub(super::witness::window(idle))).unwrap_or(at);
                debug!("traffic witness: no look in this run yet; looked now, the idle check comes a window later");
                return false;
            }
        };
        match verdict {
            Verdict::Used { moved, window, checks } => {
                info!(
                    rx_packets = moved.rx_packets,
                    tx_packets = moved.tx_packets,
                    rx_bytes = moved.rx_bytes,
                    tx_bytes = moved.tx_bytes,
                    window_ms = window.as_millis() as u64,
                    own_checks = checks,
                    "traffic witness: the container was used where the cluster cannot see; stop put off by an idle \
                     timeout"
                );
                self.shared.metrics.idle_stop_vetoed(&self.name, "traffic");
                self.state.lock().last_release = Instant::now();
                false
            }
            Verdict::Quiet { moved } => {
                debug!(packets = moved.packets(), "traffic witness: quiet");
                true
            }
            Verdict::Unknown(why) => {
                debug!(why, "traffic witness: cannot tell; stopping on etcd's view");
                true
            }
        }
    }

    /// Whether the container's traffic counters are read before an idle stop: with a cluster, unless the service
    /// says `traffic_witness = false` (a tenant whose own outbound traffic would otherwise keep it awake).
    fn witnessed(&self, service: &Service) -> bool {
        self.shared.traffic_witness && Self::spec_of(service).is_some_and(|s| !s.no_traffic_witness)
    }

    /// Asks the tenant's `stop_check` whether it may stop now: 2xx yes; 409 or 423 no (busy: the idle timer
    /// starts over, so it is asked again after the idle timeout); any other answer, or none within 2 s, yes
    /// (logged: a broken check must not keep a tenant up forever).
    async fn stop_check_allows(&self, service: &Service, path: &str) -> bool {
        let backend = self.state.lock().backend.clone();
        let Some(target) = backend.or_else(|| service.backends().first().cloned()) else { return true };
        // Its packets are reveille's own in the traffic witness's window.
        self.state.lock().witness.checks += 1;
        let answer = self.shared.probe.stop_check(&target, path).await;
        self.shared.metrics.stop_check(&self.name, answer.as_str());
        match answer {
            StopCheck::Idle => {
                debug!(path, "stop_check: idle");
                true
            }
            StopCheck::Busy(status) => {
                info!(path, status, "stop_check: busy; asking again after the idle timeout");
                self.state.lock().last_release = Instant::now();
                false
            }
            StopCheck::Unexpected(status) => {
                warn!(path, status, "stop_check answered neither 2xx nor 409/423: stopping it anyway");
                true
            }
            StopCheck::NoAnswer => {
                warn!(path, "stop_check: no answer within 2 s: stopping it anyway");
                true
            }
        }
    }

    /// Pause, then stop: stops a container that has stayed paused for its service's `stop_after`, freeing its
    /// memory. The next wake is then a start instead of an unpause. A wake asked for meanwhile waits for the
    /// stop to finish (the tenant is `stopping`), as with any stop.
    async fn stop_paused(&self) {
        let service = self.service();
        let Some(spec) = Self::spec_of(&service) else { return };
        let Some(after) = spec.stop_after else { return };
        {
            let mut st = self.state.lock();
            // Held by a running dependant (`tenant/group.rs`): not stopped; it is unpaused instead.
            if st.phase != Phase::Paused || st.wake_pending || st.active > 0 || st.phase_at.elapsed() < after {
                return;
            }
            if self.keep_awake_left().is_some() {
                // Kept awake: not stopped either (it stays paused, and unpauses in milliseconds).
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
            self.settle(rev, TenantState::Stopped).await;
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
/// `None` when it has (they are used as they are). A swarm service on `swarm_network` is reached as a container
/// is: the runtime gives a task's address on it (and no published ports), at `port`.
fn container_backend(
    service: &Service,
    spec: &ContainerSpec,
    info: &ContainerInfo,
) -> Result<Option<Backend>, Refusal> {
    if !service.backends().is_empty() {
        return Ok(None);
    }
    if let Some(published) = &info.published {
        return published_backend(spec, info, published).map(Some);
    }
    let Some(port) = spec.port else {
        return Err(Refusal::Failed { reason: "the service has neither `backends` nor `port`".into() });
    };
    match info.ip {
        Some(ip) => Ok(Some(Backend::from_addr((ip, port).into()))),
        None => Err(Refusal::Failed {
            reason: match &spec.network {
                // A swarm service on `swarm_network`: the runtime looked at its running tasks' attachments.
                Some(n) if spec.swarm.is_some() => format!("no running task has an address on network {n:?}").into(),
                Some(n) => format!("the container has no address on network {n:?}").into(),
                None => "the container has no network address".into(),
            },
        }),
    }
}

/// The backend of what is reached through a port published on its node (a Swarm service): `backend_host`, else
/// the node's address, at the port published for `port` (or the only one published).
fn published_backend(
    spec: &ContainerSpec,
    info: &ContainerInfo,
    published: &[PublishedPort],
) -> Result<Backend, Refusal> {
    let failed = |reason: String| Refusal::Failed { reason: reason.into() };
    let port = match (spec.port, published) {
        (Some(port), _) => match published.iter().find(|p| p.target == port) {
            Some(p) => p.published,
            None => return Err(failed(format!("the service publishes no port for {port} in host mode"))),
        },
        (None, [only]) => only.published,
        (None, []) => return Err(failed("the service publishes no port in host mode".into())),
        (None, _) => {
            return Err(failed("the service publishes several ports in host mode: say which with `port`".into()))
        }
    };
    let host = spec.swarm.as_ref().and_then(|s| s.backend_host.as_deref());
    match (host, info.ip) {
        (Some(host), _) => match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Backend::from_addr((ip, port).into())),
            Err(_) => Backend::parse(&format!("{host}:{port}")).map_err(|e| failed(e.to_string())),
        },
        (None, Some(ip)) => Ok(Backend::from_addr((ip, port).into())),
        (None, None) => Err(failed("the runtime gave no address for the service's node".into())),
    }
}

pub(super) fn exited(info: &ContainerInfo) -> Refusal {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::SwarmSpec;

    fn swarm_spec(port: Option<u16>, backend_host: Option<&str>) -> ContainerSpec {
        ContainerSpec {
            container: "shop".into(),
            port,
            idle_action: IdleAction::Stop,
            swarm: Some(SwarmSpec { replicas: 1, backend_host: backend_host.map(str::to_string), network: None }),
            ..Default::default()
        }
    }

    fn info(published: &[(u16, u16)]) -> ContainerInfo {
        ContainerInfo {
            id: "s1".into(),
            name: "shop".into(),
            state: ContainerState::Running,
            ip: Some([127, 0, 0, 1].into()),
            exit_code: None,
            error: None,
            published: Some(published.iter().map(|&(target, published)| PublishedPort { target, published }).collect()),
            health: None,
            exposed_ports: Vec::new(),
        }
    }

    fn backend(spec: &ContainerSpec, info: &ContainerInfo) -> Result<String, String> {
        let service = Service::with_container("shop", vec![], Some(spec.clone()));
        match container_backend(&service, spec, info) {
            Ok(b) => Ok(b.map(|b| b.as_str().to_string()).unwrap_or_default()),
            Err(Refusal::Failed { reason }) => Err(reason.to_string()),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn a_published_port_and_the_node_address_are_the_backend() {
        let one = info(&[(8080, 18080)]);
        assert_eq!(backend(&swarm_spec(None, None), &one), Ok("127.0.0.1:18080".into()), "the only one");
        assert_eq!(backend(&swarm_spec(Some(8080), None), &one), Ok("127.0.0.1:18080".into()));
        let host = swarm_spec(None, Some("node-1.lan"));
        assert_eq!(backend(&host, &one), Ok("node-1.lan:18080".into()), "backend_host wins");
        assert_eq!(backend(&swarm_spec(None, Some("10.0.0.5")), &one), Ok("10.0.0.5:18080".into()));

        let two = info(&[(8080, 18080), (9090, 19090)]);
        assert_eq!(backend(&swarm_spec(Some(9090), None), &two), Ok("127.0.0.1:19090".into()));
        let e = backend(&swarm_spec(None, None), &two).unwrap_err();
        assert!(e.contains("several ports") && e.contains("`port`"), "{e}");
        let e = backend(&swarm_spec(Some(7070), None), &two).unwrap_err();
        assert!(e.contains("no port for 7070"), "{e}");
        let e = backend(&swarm_spec(None, None), &info(&[])).unwrap_err();
        assert!(e.contains("publishes no port in host mode"), "{e}");

        // A container (no published ports reported) keeps its own address and port.
        let mut plain = swarm_spec(Some(8080), None);
        plain.swarm = None;
        let ctr = ContainerInfo { published: None, ip: Some([10, 0, 0, 2].into()), ..one.clone() };
        assert_eq!(backend(&plain, &ctr), Ok("10.0.0.2:8080".into()));

        // A swarm service on `swarm_network`: its task's address there (no published ports) at `port`.
        let mut overlay = swarm_spec(Some(8080), None);
        overlay.network = Some("front".into());
        overlay.swarm.as_mut().unwrap().network = Some("front".into());
        let task = ContainerInfo { published: None, ip: Some([10, 0, 1, 3].into()), ..one.clone() };
        assert_eq!(backend(&overlay, &task), Ok("10.0.1.3:8080".into()));
        let e = backend(&overlay, &ContainerInfo { published: None, ip: None, ..one }).unwrap_err();
        assert!(e.contains("no running task has an address on network \"front\""), "{e}");
    }
}
