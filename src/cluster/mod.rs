//! Several replicas, one cluster: what reveille replicas that share an etcd agree on, through etcd itself —
//! leases, transactions and watches; no home-made consensus, no gossip. See `passivation/LIFECYCLE.md`
//! ("Several replicas") for how tenants use it.
//!
//! - **Membership.** Each replica holds a lease (`lease_ttl`) and, under it, `<prefix>cluster/replicas/<node>`.
//!   A replica that dies disappears when its lease expires; one that shuts down revokes it at once.
//! - **Activity.** Every `activity_interval`, each replica writes, under its lease, `{"last", "busy"}` for each
//!   tenant whose use changed since the last write (`<prefix>cluster/activity/<name>/<node>`), batched in
//!   transactions: the writes per second are bounded by the tenants that changed, never by requests.
//! - **One decider.** `<prefix>cluster/decider` is a lease-backed lock: created only if absent, it names the
//!   replica that decides idle stops. When that replica's lease ends the key goes, every other replica sees the
//!   deletion on its watch, and one of them takes it.
//! - **Keep awake.** `<prefix>cluster/keep-awake/<name>` → `{"until", "by"}`: the decider stops no tenant kept
//!   awake. Written under a lease of its own whose TTL ends with it, so etcd removes it once it is over.
//! - **Status transitions.** `<prefix>status/<name>` is changed only by compare-and-swap on the key's
//!   revision ([`Cluster::transition`]): two replicas can never both move a tenant from `stopped` to
//!   `starting`, nor a tenant be stopped by one while another starts it.
//!
//! What it reads of etcd is kept in memory from two watches (the cluster keys, and the status keys), so the
//! tenants' questions ("who decides?", "is anybody else using it?", "what is its status?") never wait for etcd.
//! It knows nothing of containers: the tenant state machines (`passivation`) decide what to do with this.

mod activity;
mod keep_awake;
mod membership;
mod status;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

pub(crate) use activity::{ActivitySource, Use};
pub(crate) use keep_awake::{keep_awake_left, lease_ttl as keep_awake_lease_ttl, KeepAwake, KeepAwakeValue};
pub(crate) use status::{TenantState, TenantStatus, Transition};
pub(crate) use view::{read as read_status, ClusterView};

use membership::ClusterSink;
use status::StatusSink;

use crate::etcd::{Etcd, EtcdError, Keys};
use crate::metrics::ClusterMetrics;

/// Settings of the cluster (`[cluster]` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The replica's lease: how long after its death the others stop counting its activity, and how long a
    /// dead decider is replaced after.
    pub lease_ttl: Duration,
    /// How long a replica waits, after claiming a stop, for another replica that uses the tenant to veto it.
    pub stop_veto: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { lease_ttl: Duration::from_secs(10), stop_veto: Duration::from_millis(250) }
    }
}

/// RFC 3339 with milliseconds and an explicit offset (`2026-11-22T03:16:09.123+00:00`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_millis(t).to_string();
    match s.strip_suffix('Z') {
        Some(base) => format!("{base}+00:00"),
        None => s,
    }
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.get(..23)?).ok()
}

/// A change the tenants may care about.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A tenant's status key changed (by another replica, or after a resync).
    Status(Arc<str>),
    /// This replica started or stopped being the decider, or regained etcd after an outage.
    Cluster,
    /// A tenant's keep-awake key was written or removed.
    KeepAwake(Arc<str>),
}

/// Why a coordination step could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("etcd is unavailable: {0}")]
    Etcd(#[from] EtcdError),
    #[error("this replica has no live etcd lease")]
    NoLease,
    #[error("another live replica is named {0:?} (give each replica its own --node); waiting until the name is free")]
    NodeTaken(String),
}

#[derive(Default)]
struct State {
    lease: Option<i64>,
    /// The last lease this replica joined with, kept after it is lost: a key etcd still holds under it is this
    /// process's own, not another replica's.
    previous_lease: Option<i64>,
    /// Until when the lease is known to be alive (last keep-alive + TTL).
    lease_until: Option<Instant>,
    /// This replica holds the decider key (under its current lease).
    decider: bool,
    /// The node named by the decider key, if any.
    decider_node: Option<String>,
    statuses: HashMap<Arc<str>, TenantStatus>,
    statuses_loaded: bool,
    /// Service → node → use, for every replica (this one included, as published).
    activity: HashMap<String, HashMap<String, Use>>,
    /// Node → (lease, value of its replica key).
    replicas: HashMap<String, (i64, String)>,
    /// Service → its keep-awake key, as read (expired ones included until etcd removes them).
    keep_awake: HashMap<String, KeepAwake>,
}

/// A status repair asked: from which revision (`None`: the key absent), to which state.
type Repair = (Option<i64>, TenantState);

/// This replica's side of the cluster. Shared; the background work runs in [`Cluster::run`].
pub(crate) struct Cluster {
    etcd: Etcd,
    keys: Keys,
    node: Arc<str>,
    settings: Settings,
    activity_interval: Duration,
    started: SystemTime,
    state: Mutex<State>,
    events: mpsc::UnboundedSender<Event>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    source: OnceLock<ActivitySource>,
    /// Signalled when the decider key is deleted (a campaign may win).
    vacant: Notify,
    /// Tenants whose status key a repair is writing now (one task at a time per tenant), each with the latest
    /// repair asked of it (from which revision, to which state): a newer ask replaces an older one.
    repairing: Mutex<HashMap<Arc<str>, Repair>>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Cluster {
    pub(crate) fn new(
        etcd: Etcd,
        node: &str,
        settings: Settings,
        activity_interval: Duration,
        metrics: ClusterMetrics,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        metrics.node(node);
        Arc::new(Self {
            keys: etcd.keys().clone(),
            etcd,
            node: Arc::from(node),
            settings,
            activity_interval,
            started: SystemTime::now(),
            state: Mutex::new(State::default()),
            events: tx,
            events_rx: Mutex::new(Some(rx)),
            source: OnceLock::new(),
            vacant: Notify::new(),
            repairing: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The events for the tenants; taken once, by the passivator.
    pub(crate) fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events_rx.lock().take()
    }

    /// True when this replica decides idle stops now: it holds the decider key under a lease known alive.
    pub(crate) fn is_decider(&self) -> bool {
        let st = self.state.lock();
        st.decider && st.lease_until.is_some_and(|u| Instant::now() < u)
    }

    /// True while this replica's lease is known alive (etcd reachable lately).
    pub(crate) fn connected(&self) -> bool {
        self.state.lock().lease_until.is_some_and(|u| Instant::now() < u)
    }

    /// True while `node` has a replica key (its lease is alive). A node this replica has not seen join may
    /// just be newer than its watch: it counts as alive for a lease TTL after `seen` (when its work was seen).
    pub(crate) fn alive(&self, node: &str, seen: Instant) -> bool {
        node == &*self.node || self.state.lock().replicas.contains_key(node) || seen.elapsed() < self.settings.lease_ttl
    }

    /// True while `node` has a replica key, as far as the watch tells.
    pub(crate) fn is_replica(&self, node: &str) -> bool {
        self.state.lock().replicas.contains_key(node)
    }

    /// Other live replicas than this one.
    pub(crate) fn peers(&self) -> usize {
        let st = self.state.lock();
        st.replicas.keys().filter(|n| n.as_str() != &*self.node).count()
    }

    /// What operators see of the cluster (admin API).
    pub(crate) fn view(&self) -> ClusterView {
        let st = self.state.lock();
        view::build(
            &self.node,
            &st.replicas,
            st.decider_node.as_deref(),
            st.lease,
            &st.activity,
            self.is_decider_locked(&st),
        )
    }

    fn is_decider_locked(&self, st: &State) -> bool {
        st.decider && st.lease_until.is_some_and(|u| Instant::now() < u)
    }

    // ---- background work ---------------------------------------------------------------------------------

    /// Runs membership, the decider campaign, the watches and the activity publisher until `cancel`; then
    /// revokes the lease, so the other replicas stop counting this one at once.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let span = info_span!("cluster", node = %self.node);
        async {
            let watch_cluster = {
                let me = self.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let sink = ClusterSink(&me);
                    crate::etcd::watch(&me.etcd, "cluster keys", me.keys.cluster_range(), &sink, cancel).await
                })
            };
            let watch_status = {
                let me = self.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let sink = StatusSink(&me);
                    crate::etcd::watch(&me.etcd, "status keys", me.keys.status_range(), &sink, cancel).await
                })
            };
            let publisher = tokio::spawn(self.clone().publish(cancel.clone()));
            self.membership(cancel.clone()).await;
            let _ = tokio::join!(watch_cluster, watch_status, publisher);
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123+00:00");
        assert_eq!(parse_time(&rfc3339(t)), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }
}
