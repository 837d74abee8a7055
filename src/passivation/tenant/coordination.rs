//! The cluster rules of a tenant, when etcd is configured (see "Several replicas" in `LIFECYCLE.md`):
//!
//! - a wake first moves the status key to `starting` for this replica by compare-and-swap; a replica that
//!   finds another one starting (or stopping) the container waits for it instead of starting it again;
//! - an idle stop is decided only by the decider, only when no replica has used the tenant within its idle
//!   timeout, and only after moving the status to `stopping`; any replica that uses the tenant then vetoes
//!   the stop (moves the status back to `running`) within `stop_veto`;
//! - a replica that sees another one stop the tenant holds its requests until the stop is over, then wakes it;
//! - with etcd unreachable, wakes go on without a claim and nothing is stopped.
//!
//! The etcd side (watches, transactions, leases) is `crate::cluster`'s; this file only applies the rules to the
//! tenant's state.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Msg, Phase, Refusal, State, Tenant};
use crate::cluster::{Cluster, TenantState, TenantStatus, Transition};
use crate::routes::ContainerSpec;
use crate::runtime::ContainerState;

/// The longest a status transition may take on the wake path before the wake goes on without it.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a settling transition (after the Docker call) may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a replica waiting for another one's start or stop looks again on its own.
const WAIT_RECHECK: Duration = Duration::from_millis(500);
/// When a take-over of another replica's transition left behind tries again after a failed Docker call.
const TAKE_OVER_RETRY: Duration = Duration::from_secs(2);

/// What a wake may do after [`Tenant::claim_start`].
#[derive(Debug)]
pub(super) enum StartClaim {
    /// This replica moved the status to `starting` (at this revision): it starts the container.
    Mine(i64),
    /// No claim could be made (no cluster, or etcd unreachable): it starts the container anyway.
    Unclaimed,
    /// Another replica started it and Docker runs it: only the readiness probe is left.
    AlreadyUp,
}

impl Tenant {
    pub(super) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    /// True when another live replica is starting or stopping the container, as far as this one knows.
    fn peer_at_work(&self, c: &Cluster, s: &TenantStatus, spec: &ContainerSpec) -> bool {
        s.node != c.node() && s.transitional() && c.alive(&s.node, s.seen) && s.seen.elapsed() < self.wake_timeout(spec)
    }

    /// Until when another replica's transition `s` counts as work in progress ([`Self::peer_at_work`]) by time
    /// alone: `wake_timeout` after it was seen, or a lease TTL after while its writer has no replica key.
    /// `None`: it does not count now. (A replica key that goes tells the tenant: `Cluster::replica_gone`.)
    fn peer_work_until(&self, c: &Cluster, s: &TenantStatus, spec: &ContainerSpec) -> Option<Instant> {
        if !self.peer_at_work(c, s, spec) {
            return None;
        }
        let until = s.seen + self.wake_timeout(spec);
        Some(if c.is_replica(&s.node) { until } else { until.min(s.seen + c.settings().lease_ttl) })
    }

    /// Another replica's start or stop, left behind (`on_cluster`): a start that left the container running is
    /// finished as a wake of this replica's (claimed, and the application probed before anything is forwarded
    /// to it: it may not listen yet); anything else is what Docker says, adopted, and the key repaired after the
    /// inspect. A failed Docker call is tried again later: nothing else would look at the key again.
    async fn take_over(&self, s: &TenantStatus, spec: &ContainerSpec) {
        if s.state == TenantState::Starting && self.phase() != Phase::Running {
            match self.docker_runs(spec).await {
                Ok(true) => {
                    self.request_wake();
                    return;
                }
                Ok(false) => {}
                Err(_) => {
                    self.state.lock().peer_recheck = Some(Instant::now() + TAKE_OVER_RETRY);
                    return;
                }
            }
        }
        if self.refresh().await.is_err() {
            self.state.lock().peer_recheck = Some(Instant::now() + TAKE_OVER_RETRY);
        }
    }

    /// True once the look again that [`Self::on_cluster`] set for another replica's transition is due (and
    /// then it is taken).
    pub(super) fn take_peer_recheck(&self) -> bool {
        let mut st = self.state.lock();
        let due = st.peer_recheck.is_some_and(|at| at <= Instant::now());
        if due {
            st.peer_recheck = None;
        }
        due
    }

    /// Before a wake's Docker call: claims the start cluster-wide, or waits while another replica starts or
    /// stops the container. Never refuses for etcd's sake: unreachable, the wake goes on unclaimed.
    pub(super) async fn claim_start(
        &self,
        spec: &ContainerSpec,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
    ) -> Result<StartClaim, Refusal> {
        let Some(c) = self.cluster() else { return Ok(StartClaim::Unclaimed) };
        let mut waited = false;
        loop {
            if !c.connected() || !c.statuses_loaded() {
                debug!("etcd unreachable: starting without a cluster-wide claim");
                return Ok(StartClaim::Unclaimed);
            }
            let current = c.status(&self.name);
            if let Some(s) = current.as_ref().filter(|s| self.peer_at_work(c, s, spec)) {
                if s.state == TenantState::Starting && self.docker_runs(spec).await? {
                    info!(node = %s.node, "another replica started it: probing it from here");
                    return Ok(StartClaim::AlreadyUp);
                }
                if !waited {
                    info!(node = %s.node, state = %s.state, "another replica is at work on the container: waiting for it");
                    waited = true;
                }
                tokio::select! {
                    m = rx.recv() => if m.is_none() { return Err(Refusal::Removed) },
                    () = tokio::time::sleep(WAIT_RECHECK) => {}
                }
                continue;
            }
            if current.as_ref().is_some_and(|s| s.state == TenantState::Running) && self.docker_runs(spec).await? {
                return Ok(StartClaim::AlreadyUp);
            }
            let expect = current.as_ref().map(|s| s.revision);
            match c.transition(&self.name, expect, TenantState::Starting, SystemTime::now(), CLAIM_TIMEOUT).await {
                Ok(Transition::Done(rev)) => {
                    info!("start claimed for the cluster");
                    return Ok(StartClaim::Mine(rev));
                }
                Ok(Transition::Conflict(now)) => {
                    debug!(now = ?now.map(|s| (s.state, s.node)), "status changed meanwhile: looking again");
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim the start in etcd: starting without a claim");
                    return Ok(StartClaim::Unclaimed);
                }
            }
        }
    }

    async fn docker_runs(&self, spec: &ContainerSpec) -> Result<bool, Refusal> {
        let info = self.runtime().inspect(&spec.container, spec.network.as_deref()).await;
        Ok(info.map_err(Refusal::from_runtime)?.state == ContainerState::Running)
    }

    /// After a claimed start or stop: moves the status from the claim's revision to `state`. A failed write is
    /// tried again in the background (`Cluster::repair`) while the key still holds the claim: nothing else would
    /// move it on, and the other replicas would take it for work in progress.
    pub(super) async fn settle(&self, claim: i64, state: TenantState) {
        let Some(c) = self.cluster() else { return };
        match c.transition(&self.name, Some(claim), state.clone(), SystemTime::now(), SETTLE_TIMEOUT).await {
            Ok(Transition::Done(_)) => {}
            Ok(Transition::Conflict(now)) => {
                debug!(state = %state, now = ?now.map(|s| (s.state, s.node)), "status changed by another replica meanwhile")
            }
            Err(e) => {
                warn!(error = %e, state = %state, "cannot write the tenant's status to etcd: trying again in the background");
                if c.status(&self.name).is_some_and(|s| s.revision == claim) {
                    c.repair(&self.name, Some(claim), state);
                }
            }
        }
    }

    /// The idle stop's cluster check, before the stop is claimed: this replica must decide stops, and no other
    /// replica may have used the tenant within `idle` (or be using it). `forced` (admin `sleep`) skips both;
    /// the veto still applies.
    pub(super) fn cluster_allows_stop(&self, idle: Duration, forced: bool) -> bool {
        let Some(c) = self.cluster() else { return true };
        if forced {
            return true;
        }
        if !c.is_decider() {
            return false;
        }
        let remote = c.remote_use(&self.name);
        !remote.busy && remote.last.is_none_or(|l| l.elapsed().unwrap_or_default() >= idle)
    }

    /// The idle timer of a running tenant (`local`: from this replica's own use), pushed back by the other
    /// replicas' use. `None`: this replica does not decide stops (it is told when that changes).
    pub(super) fn cluster_idle_timer(&self, local: Duration, idle: Duration) -> Option<Duration> {
        let Some(c) = self.cluster() else { return Some(local) };
        if !c.is_decider() {
            return None;
        }
        let remote = c.remote_use(&self.name);
        if remote.busy {
            return Some(c.activity_interval());
        }
        let remote_left = remote.last.map_or(Duration::ZERO, |l| idle.saturating_sub(l.elapsed().unwrap_or_default()));
        Some(local.max(remote_left))
    }

    /// True when another replica has a request or connection open on the tenant (published `busy`): no idle
    /// check can stop it then, so the traffic witness takes no look either (an open WebSocket elsewhere would
    /// otherwise have the decider read the counters at every `activity_interval`).
    pub(super) fn busy_elsewhere(&self) -> bool {
        self.cluster().is_some_and(|c| c.remote_use(&self.name).busy)
    }

    /// Claims a stop cluster-wide (status → `stopping`), then gives the other replicas `stop_veto` to refuse
    /// it. Returns the claim's revision, or `None` when the stop must not happen (claim refused, vetoed, a
    /// request arrived here meanwhile, or etcd unreachable: nothing is stopped without etcd).
    pub(super) async fn claim_stop(&self, spec: &ContainerSpec) -> Option<Option<i64>> {
        let Some(c) = self.cluster() else { return Some(None) };
        if !c.connected() || !c.statuses_loaded() {
            debug!("etcd unreachable: no stop");
            return None;
        }
        let current = c.status(&self.name);
        if current.as_ref().is_some_and(|s| self.peer_at_work(c, s, spec)) {
            return None;
        }
        let expect = current.as_ref().map(|s| s.revision);
        let rev = match c.transition(&self.name, expect, TenantState::Stopping, SystemTime::now(), CLAIM_TIMEOUT).await
        {
            Ok(Transition::Done(rev)) => rev,
            Ok(Transition::Conflict(_)) => return None,
            Err(e) => {
                debug!(error = %e, "cannot claim the stop in etcd: not stopping");
                return None;
            }
        };
        if c.peers() > 0 {
            tokio::time::sleep(c.settings().stop_veto).await;
        }
        let vetoed = c.status(&self.name).map(|s| s.revision) != Some(rev);
        let wanted_here = {
            let st = self.state.lock();
            st.active > 0 || st.wake_pending
        };
        if vetoed {
            let by = c.status(&self.name).map(|s| s.node).unwrap_or_default();
            info!(by = %by, "stop vetoed: another replica uses the tenant");
            return None;
        }
        if wanted_here {
            self.settle(rev, TenantState::Running).await;
            return None;
        }
        if c.peers() == 0 {
            return Some(Some(rev));
        }
        // The view above may be stale: a replica frozen during the veto window (a VM steal, a long pause) wakes
        // with its timer fired and its watch not yet caught up, and would stop a tenant the others had vetoed
        // meanwhile (the chaos long run, seed 2903: a stop 10 ms after a thaw, 299 ms after a request through
        // another replica). So the claim is confirmed in etcd itself, by compare-and-swap on its revision.
        match c.transition(&self.name, Some(rev), TenantState::Stopping, SystemTime::now(), CLAIM_TIMEOUT).await {
            Ok(Transition::Done(confirmed)) => Some(Some(confirmed)),
            Ok(Transition::Conflict(now)) => {
                info!(now = ?now.map(|s| (s.state, s.node)), "stop vetoed (seen in etcd): another replica uses the tenant");
                None
            }
            Err(e) => {
                debug!(error = %e, "cannot confirm the stop in etcd: not stopping");
                c.repair(&self.name, Some(rev), TenantState::Running);
                None
            }
        }
    }

    /// A stop did not happen: back to `running`, and the idle check is tried again after `retry` (not at once,
    /// or a refused claim would loop).
    pub(super) fn stop_abandoned(&self, st: &mut State, idle: Duration) {
        let retry = idle.min(Duration::from_secs(2));
        let now = Instant::now();
        st.last_release = now.checked_sub(idle.saturating_sub(retry)).unwrap_or(now);
        self.set_phase(st, Phase::Running);
    }

    /// The status key changed (another replica's transition, or a resync), or this replica's place in the
    /// cluster did: follow it.
    pub(super) async fn on_cluster(&self) {
        let Some(c) = self.cluster() else { return };
        let service = self.service();
        let Some(spec) = service.container() else { return };
        // A look again is set below only while another replica's transition is in progress.
        self.state.lock().peer_recheck = None;
        let Some(s) = c.status(&self.name) else {
            // No status yet (a new tenant, or this replica just joined): write what Docker said.
            self.observe(self.phase(), spec);
            return;
        };
        if s.node == c.node() {
            // This replica's own claim, left behind: its start or stop is over (the phase says so) but the status
            // never moved on, e.g. etcd went away between the claim and its settle. Left as it is, the other
            // replicas would take it for work in progress and wait; repair it from what this replica knows.
            if s.transitional() && matches!(self.phase(), Phase::Running | Phase::Stopped | Phase::Paused) {
                self.observe(self.phase(), spec);
            }
            return;
        }
        if s.transitional() {
            // Another replica's start or stop. While it counts as work in progress it is followed (below), and
            // looked at again when it would stop counting by time alone. Once it does not count (its replica
            // gone: lease lapsed, cut off from etcd or dead; or older than `wake_timeout`), nothing else would
            // move the key on: this replica takes it over.
            let Some(until) = self.peer_work_until(c, &s, spec) else {
                info!(node = %s.node, state = %s.state, "a transition left by a replica no longer at work: taking it over");
                self.take_over(&s, spec).await;
                return;
            };
            self.state.lock().peer_recheck = Some(until);
        }
        let idle = self.idle_timeout(spec);
        let phase = self.phase();
        match s.state {
            TenantState::Stopping if phase == Phase::Running => {
                let in_use = {
                    let st = self.state.lock();
                    st.active > 0 || st.wake_pending || (!idle.is_zero() && st.last_release.elapsed() < idle)
                };
                if in_use {
                    info!(node = %s.node, "vetoing a stop: the tenant is in use on this replica");
                    self.settle(s.revision, TenantState::Running).await;
                } else {
                    // Hold requests from now on, until the stop is over and a wake can start it again.
                    let mut st = self.state.lock();
                    st.backend = None;
                    self.set_phase(&mut st, Phase::Stopping);
                }
            }
            // Docker is the truth: a status may be stale (written before an etcd outage), so look.
            TenantState::Stopped | TenantState::Paused
                if matches!(phase, Phase::Running | Phase::Stopping | Phase::Unknown) =>
            {
                debug!(node = %s.node, state = %s.state, "stopped by another replica? asking Docker");
                let _ = self.refresh().await;
            }
            TenantState::Running if phase != Phase::Running && phase != Phase::Starting => {
                let _ = self.refresh().await;
            }
            _ => {}
        }
    }

    /// True when another live replica is starting the container: a running container is not adopted before it
    /// answers that replica's probe (its `running` status says so).
    pub(super) fn peer_starting(&self, spec: &ContainerSpec) -> bool {
        let Some(c) = self.cluster() else { return false };
        c.status(&self.name).is_some_and(|s| s.state == TenantState::Starting && self.peer_at_work(c, &s, spec))
    }

    /// This replica saw the container settled in `phase` (an inspect): repairs the status key if it is missing
    /// or says otherwise — unless another live replica is at work on it. In the background: never delays the
    /// tenant.
    pub(super) fn observe(&self, phase: Phase, spec: &ContainerSpec) {
        let Some(c) = self.cluster() else { return };
        if !c.connected() || !c.statuses_loaded() {
            return;
        }
        let state = match phase {
            Phase::Running => TenantState::Running,
            Phase::Stopped => TenantState::Stopped,
            Phase::Paused => TenantState::Paused,
            _ => return,
        };
        let current = c.status(&self.name);
        let repair = match &current {
            None => true,
            Some(s) if s.transitional() => !self.peer_at_work(c, s, spec),
            Some(s) => s.state != state,
        };
        if !repair {
            return;
        }
        c.repair(&self.name, current.map(|s| s.revision), state);
    }
}
