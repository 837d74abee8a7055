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
//! - **Status transitions.** `<prefix>status/<name>` is changed only by compare-and-swap on the key's
//!   revision ([`Cluster::transition`]): two replicas can never both move a tenant from `stopped` to
//!   `starting`, nor a tenant be stopped by one while another starts it.
//!
//! What it reads of etcd is kept in memory from two watches (the cluster keys, and the status keys), so the
//! tenants' questions ("who decides?", "is anybody else using it?", "what is its status?") never wait for etcd.
//! It knows nothing of containers: the tenant state machines (`passivation`) decide what to do with this.

mod view;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, EventType, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

pub(crate) use view::{read as read_status, ClusterView};

use crate::etcd::{within, ClusterKey, Etcd, EtcdError, Keys, Sink};
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

/// A tenant's `<prefix>status/<name>` as last seen.
#[derive(Debug, Clone)]
pub(crate) struct TenantStatus {
    pub(crate) state: String,
    pub(crate) node: String,
    pub(crate) since: Option<SystemTime>,
    /// The key's modification revision: what a transition compares.
    pub(crate) revision: i64,
    /// When this replica learnt it.
    pub(crate) seen: Instant,
}

impl TenantStatus {
    /// `starting` or `stopping`: a replica is at work on the container.
    pub(crate) fn transitional(&self) -> bool {
        matches!(self.state.as_str(), "starting" | "stopping")
    }
}

#[derive(Serialize, Deserialize)]
struct StatusValue {
    state: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    node: String,
}

/// A replica's use of a tenant, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Use {
    /// Last request start or end.
    pub(crate) last: Option<SystemTime>,
    /// A request in flight or an open WebSocket right now.
    pub(crate) busy: bool,
}

#[derive(Serialize, Deserialize)]
struct UseValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<String>,
    #[serde(default)]
    busy: bool,
}

/// What this replica's tenants report for publishing: name, last use, busy now.
pub(crate) type ActivitySource = Box<dyn Fn() -> Vec<(Arc<str>, Use)> + Send + Sync>;

/// A change the tenants may care about.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A tenant's status key changed (by another replica, or after a resync).
    Status(Arc<str>),
    /// This replica started or stopped being the decider, or regained etcd after an outage.
    Cluster,
}

/// The result of [`Cluster::transition`].
#[derive(Debug)]
pub(crate) enum Transition {
    /// Written: the key's new revision.
    Done(i64),
    /// The key was not at the expected revision; what it holds now (`None`: absent).
    Conflict(Option<TenantStatus>),
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
}

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
    /// Tenants whose status key a repair is writing now (one at a time per tenant).
    repairing: Mutex<std::collections::HashSet<Arc<str>>>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Transactions carry at most this many operations (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 100;

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
            repairing: Mutex::new(std::collections::HashSet::new()),
            metrics,
        })
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How often activity is published (and so how stale another replica's may be).
    pub(crate) fn activity_interval(&self) -> Duration {
        self.activity_interval
    }

    /// The events for the tenants; taken once, by the passivator.
    pub(crate) fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events_rx.lock().take()
    }

    /// Where the published activity comes from (set once, by the passivator).
    pub(crate) fn set_activity_source(&self, source: ActivitySource) {
        let _ = self.source.set(source);
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

    /// The tenant's status as last seen (`None`: no key, or not loaded yet).
    pub(crate) fn status(&self, service: &str) -> Option<TenantStatus> {
        self.state.lock().statuses.get(service).cloned()
    }

    /// True once the status keys have been listed.
    pub(crate) fn statuses_loaded(&self) -> bool {
        self.state.lock().statuses_loaded
    }

    /// True while `node` has a replica key (its lease is alive). A node this replica has not seen join may
    /// just be newer than its watch: it counts as alive for a lease TTL after `seen` (when its work was seen).
    pub(crate) fn alive(&self, node: &str, seen: Instant) -> bool {
        node == &*self.node || self.state.lock().replicas.contains_key(node) || seen.elapsed() < self.settings.lease_ttl
    }

    /// Other live replicas than this one.
    pub(crate) fn peers(&self) -> usize {
        let st = self.state.lock();
        st.replicas.keys().filter(|n| n.as_str() != &*self.node).count()
    }

    /// The use of `service` by the other replicas: the latest `last`, and whether any is busy.
    pub(crate) fn remote_use(&self, service: &str) -> Use {
        let st = self.state.lock();
        let mut out = Use { last: None, busy: false };
        if let Some(nodes) = st.activity.get(service) {
            for (node, u) in nodes {
                if node.as_str() == &*self.node {
                    continue;
                }
                out.busy |= u.busy;
                out.last = out.last.max(u.last);
            }
        }
        out
    }

    /// Compare-and-swap of `<prefix>status/<service>`: writes `state` (with this node and `since`) only if the
    /// key is at `expect` (`None`: only if it is absent). Bounded by `limit` (the wake path cannot wait long).
    pub(crate) async fn transition(
        &self,
        service: &Arc<str>,
        expect: Option<i64>,
        state: &str,
        since: SystemTime,
        limit: Duration,
    ) -> Result<Transition, ClusterError> {
        let key = self.keys.status(service);
        let value = serde_json::to_string(&StatusValue {
            state: state.to_string(),
            since: rfc3339(since),
            node: self.node.to_string(),
        })
        .unwrap_or_default();
        let cmp = match expect {
            Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key.as_str(), value, None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let limit = limit.min(self.etcd.config().timeout);
        let attempt = async {
            let connection = self.etcd.client().await?;
            let mut kv = connection.client.kv_client();
            within(limit, kv.txn(txn)).await.inspect_err(|_| self.etcd.failed(&connection))
        };
        let resp = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.metrics.write("status", false);
                return Err(e.into());
            }
            Err(_) => {
                self.metrics.write("status", false);
                return Err(EtcdError::Timeout(limit).into());
            }
        };
        if resp.succeeded() {
            self.metrics.write("status", true);
            let revision = resp.header().map_or(0, |h| h.revision());
            let status = TenantStatus {
                state: state.to_string(),
                node: self.node.to_string(),
                since: Some(since),
                revision,
                seen: Instant::now(),
            };
            let mut st = self.state.lock();
            let newer = st.statuses.get(&**service).is_none_or_older(revision);
            if newer {
                st.statuses.insert(service.clone(), status);
            }
            return Ok(Transition::Done(revision));
        }
        self.metrics.conflict();
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().first().and_then(parse_status)),
            _ => None,
        });
        let current = current.flatten();
        let mut st = self.state.lock();
        match &current {
            Some(s) => {
                if st.statuses.get(&**service).is_none_or_older(s.revision) {
                    st.statuses.insert(service.clone(), s.clone());
                }
            }
            None => {
                st.statuses.remove(&**service);
            }
        }
        Ok(Transition::Conflict(current))
    }

    /// Writes `state` as the tenant's status in the background, from revision `expect`, unless a repair of the
    /// same tenant is already on its way (its outcome updates what this replica knows first).
    pub(crate) fn repair(self: &Arc<Self>, service: &Arc<str>, expect: Option<i64>, state: &'static str) {
        if !self.repairing.lock().insert(service.clone()) {
            return;
        }
        let (me, service) = (self.clone(), service.clone());
        tokio::spawn(async move {
            let _ = me.transition(&service, expect, state, SystemTime::now(), Duration::from_secs(3)).await;
            me.repairing.lock().remove(&service);
        });
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

    /// Holds a lease and the replica key, keeps them alive, and campaigns for the decider key.
    async fn membership(&self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.hold_lease(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    if self.state.lock().lease.is_some() {
                        // It had joined: a new outage starts the backoff over.
                        backoff = Duration::from_millis(100);
                    }
                    self.lost_lease();
                    match e {
                        ClusterError::NodeTaken(_) => error!(error = %e, "cannot join the cluster"),
                        e => {
                            warn!(error = %e, retry_in = ?backoff, "etcd lease lost or not granted: this replica stops no tenant until it has one again")
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn lost_lease(&self) {
        let mut st = self.state.lock();
        let was = st.decider;
        st.lease = None;
        st.lease_until = None;
        st.decider = false;
        drop(st);
        if was {
            self.metrics.decider(false);
            let _ = self.events.send(Event::Cluster);
        }
    }

    /// One lease's life: grant, replica key, campaign, keep-alive until it fails (an error) or `cancel` (Ok,
    /// after revoking it).
    async fn hold_lease(&self, cancel: &CancellationToken) -> Result<(), ClusterError> {
        let timeout = self.etcd.config().timeout;
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let connection = self.etcd.client().await?;
        let client = connection.client.clone();
        let result = async {
            let mut leases = client.lease_client();
            let granted = within(timeout, leases.grant(ttl, None)).await?;
            let lease = granted.id();
            let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
            let granted_at = Instant::now();
            let mut kv = client.kv_client();
            let value = serde_json::json!({ "node": &*self.node, "lease": format!("{lease:x}"), "started": rfc3339(self.started) });
            // The node name is the replica's identity in every key: taken only if no live replica has it (a
            // replica restarted under the same name waits for its old lease to expire).
            let key = self.keys.replica(&self.node);
            let join = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.to_string(), Some(PutOptions::new().with_lease(lease)))]);
            if !within(timeout, kv.txn(join)).await?.succeeded() {
                let _ = within(timeout, leases.revoke(lease)).await;
                return Err(ClusterError::NodeTaken(self.node.to_string()));
            }
            self.metrics.write("lease", true);
            {
                let mut st = self.state.lock();
                st.lease = Some(lease);
                st.lease_until = Some(granted_at + ttl);
            }
            info!(lease = format!("{lease:x}"), ttl = ?ttl, "joined the cluster");
            let _ = self.events.send(Event::Cluster);
            let (mut keeper, mut answers) = within(timeout, leases.keep_alive(lease)).await?;
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.campaign(&client, lease).await?;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let sent = Instant::now();
                        within(timeout.min(ttl / 2), keeper.keep_alive()).await?;
                        let answer = within(timeout.min(ttl / 2), answers.message()).await?;
                        match answer {
                            Some(a) if a.ttl() > 0 => {
                                self.state.lock().lease_until = Some(sent + Duration::from_secs(a.ttl() as u64));
                                self.metrics.write("lease", true);
                            }
                            _ => {
                                self.metrics.write("lease", false);
                                return Err(ClusterError::NoLease);
                            }
                        }
                        if !self.state.lock().decider && self.state.lock().decider_node.is_none() {
                            self.campaign(&client, lease).await?;
                        }
                    }
                    () = self.vacant.notified() => self.campaign(&client, lease).await?,
                    () = cancel.cancelled() => {
                        let _ = within(Duration::from_secs(1), leases.revoke(lease)).await;
                        info!("left the cluster (lease revoked)");
                        return Ok(());
                    }
                }
            }
        }
        .await;
        if result.is_err() {
            self.metrics.write("lease", false);
            self.etcd.failed(&connection);
        }
        result
    }

    /// Takes the decider key if it is absent.
    async fn campaign(&self, client: &etcd_client::Client, lease: i64) -> Result<(), ClusterError> {
        let key = self.keys.decider();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), self.node.as_bytes(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut kv = client.kv_client();
        let resp = within(self.etcd.config().timeout, kv.txn(txn))
            .await
            .inspect_err(|_| self.metrics.write("decider", false))?;
        self.metrics.write("decider", true);
        let holder = if resp.succeeded() {
            Some((self.node.to_string(), lease))
        } else {
            resp.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| (kv.value_str().unwrap_or_default().to_string(), kv.lease()))
                }
                _ => None,
            })
        };
        let mine = holder.as_ref().is_some_and(|(n, l)| n == &*self.node && *l == lease);
        let mut st = self.state.lock();
        st.decider_node = holder.map(|(n, _)| n);
        if mine != st.decider {
            st.decider = mine;
            drop(st);
            self.metrics.decider(mine);
            if mine {
                info!("this replica now decides idle stops");
            } else {
                info!("another replica decides idle stops");
            }
            let _ = self.events.send(Event::Cluster);
        }
        Ok(())
    }

    /// Every `activity_interval`, writes the use of the tenants that changed, under the lease, in batches.
    async fn publish(self: Arc<Self>, cancel: CancellationToken) {
        let mut written: HashMap<Arc<str>, Use> = HashMap::new();
        let mut written_lease = None;
        let mut tick = tokio::time::interval(self.activity_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let Some(source) = self.source.get() else { continue };
            let Some(lease) = self.state.lock().lease else { continue };
            if written_lease != Some(lease) {
                // A new lease: the old one's keys are gone with it.
                written.clear();
                written_lease = Some(lease);
            }
            let changed: Vec<(Arc<str>, Use)> = source()
                .into_iter()
                .filter(|(name, u)| (u.last.is_some() || u.busy) && written.get(name) != Some(u))
                .collect();
            if changed.is_empty() {
                continue;
            }
            if let Err(e) = self.write_activity(lease, &changed).await {
                debug!(error = %e, "activity not published; will retry");
                continue;
            }
            written.extend(changed);
        }
    }

    async fn write_activity(&self, lease: i64, changed: &[(Arc<str>, Use)]) -> Result<(), ClusterError> {
        let connection = self.etcd.client().await?;
        let mut kv = connection.client.kv_client();
        for batch in changed.chunks(TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(name, u)| {
                    let value = UseValue { last: u.last.map(rfc3339), busy: u.busy };
                    TxnOp::put(
                        self.keys.activity(name, &self.node),
                        serde_json::to_string(&value).unwrap_or_default(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            if let Err(e) = within(self.etcd.config().timeout, kv.txn(Txn::new().and_then(ops))).await {
                self.metrics.write("activity", false);
                self.etcd.failed(&connection);
                return Err(e.into());
            }
            self.metrics.write("activity", true);
        }
        Ok(())
    }

    fn apply_cluster_kv(&self, st: &mut State, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        match self.keys.cluster_kind(key) {
            ClusterKey::Replica(node) => {
                st.replicas.insert(node.to_string(), (kv.lease(), kv.value_str().unwrap_or_default().to_string()));
            }
            ClusterKey::Decider => st.decider_node = Some(kv.value_str().unwrap_or_default().to_string()),
            ClusterKey::Activity { service, node } => {
                let Some(u) = parse_use(kv.value()) else { return };
                st.activity.entry(service.to_string()).or_default().insert(node.to_string(), u);
            }
            ClusterKey::Other => {}
        }
    }

    /// A cluster key was deleted (its lease expired or was revoked, or an operator removed it).
    fn remove_cluster_key(&self, st: &mut State, key: &str) -> bool {
        match self.keys.cluster_kind(key) {
            ClusterKey::Replica(node) => {
                st.replicas.remove(node);
                false
            }
            ClusterKey::Decider => {
                st.decider_node = None;
                if st.decider {
                    st.decider = false;
                    self.metrics.decider(false);
                    let _ = self.events.send(Event::Cluster);
                }
                true
            }
            ClusterKey::Activity { service, node } => {
                if let Some(nodes) = st.activity.get_mut(service) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        st.activity.remove(service);
                    }
                }
                false
            }
            ClusterKey::Other => false,
        }
    }
}

trait OlderThan {
    fn is_none_or_older(&self, revision: i64) -> bool;
}

impl OlderThan for Option<&TenantStatus> {
    fn is_none_or_older(&self, revision: i64) -> bool {
        self.map_or(true, |s| s.revision < revision)
    }
}

fn parse_use(value: &[u8]) -> Option<Use> {
    let v: UseValue = serde_json::from_slice(value).ok()?;
    Some(Use { last: v.last.as_deref().and_then(parse_time), busy: v.busy })
}

fn parse_status(kv: &KeyValue) -> Option<TenantStatus> {
    let v: StatusValue = serde_json::from_slice(kv.value()).ok()?;
    Some(TenantStatus {
        state: v.state,
        node: v.node,
        since: parse_time(&v.since),
        revision: kv.mod_revision(),
        seen: Instant::now(),
    })
}

/// The watch of `<prefix>cluster/`: replicas, decider, activity.
struct ClusterSink<'a>(&'a Cluster);

impl Sink for ClusterSink<'_> {
    async fn replace(&self, _revision: i64, kvs: Vec<KeyValue>, _first: bool) -> Result<(), EtcdError> {
        let c = self.0;
        let mut st = c.state.lock();
        st.replicas.clear();
        st.activity.clear();
        st.decider_node = None;
        for kv in &kvs {
            c.apply_cluster_kv(&mut st, kv);
        }
        let vacant = st.decider_node.is_none();
        drop(st);
        if vacant {
            c.vacant.notify_one();
        }
        Ok(())
    }

    async fn update(&self, _revision: i64, events: &[etcd_client::Event]) -> Result<(), EtcdError> {
        let c = self.0;
        let mut vacant = false;
        let mut st = c.state.lock();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => c.apply_cluster_kv(&mut st, kv),
                EventType::Delete => vacant |= c.remove_cluster_key(&mut st, kv.key_str().unwrap_or_default()),
            }
        }
        drop(st);
        if vacant {
            c.vacant.notify_one();
        }
        Ok(())
    }
}

/// The watch of `<prefix>status/`.
struct StatusSink<'a>(&'a Cluster);

impl Sink for StatusSink<'_> {
    async fn replace(&self, _revision: i64, kvs: Vec<KeyValue>, _first: bool) -> Result<(), EtcdError> {
        let c = self.0;
        let mut changed = Vec::new();
        {
            let mut st = c.state.lock();
            let mut fresh = HashMap::with_capacity(kvs.len());
            for kv in &kvs {
                let Some(name) = kv.key_str().ok().and_then(|k| c.keys.status_name(k)) else { continue };
                if let Some(s) = parse_status(kv) {
                    fresh.insert(Arc::<str>::from(name), s);
                }
            }
            for (name, s) in &fresh {
                if st.statuses.get(name).map(|o| o.revision) != Some(s.revision) {
                    changed.push(name.clone());
                }
            }
            for name in st.statuses.keys() {
                if !fresh.contains_key(name) {
                    changed.push(name.clone());
                }
            }
            st.statuses = fresh;
            st.statuses_loaded = true;
        }
        for name in changed {
            let _ = c.events.send(Event::Status(name));
        }
        Ok(())
    }

    async fn update(&self, _revision: i64, events: &[etcd_client::Event]) -> Result<(), EtcdError> {
        let c = self.0;
        let mut changed = Vec::new();
        {
            let mut st = c.state.lock();
            for ev in events {
                let Some(kv) = ev.kv() else { continue };
                let Some(name) = kv.key_str().ok().and_then(|k| c.keys.status_name(k)) else { continue };
                let name = Arc::<str>::from(name);
                match ev.event_type() {
                    EventType::Put => {
                        let Some(s) = parse_status(kv) else { continue };
                        if st.statuses.get(&name).is_none_or_older(s.revision) {
                            // This replica's own writes are already in (at the same revision).
                            st.statuses.insert(name.clone(), s);
                            changed.push(name);
                        }
                    }
                    EventType::Delete => {
                        st.statuses.remove(&name);
                        changed.push(name);
                    }
                }
            }
        }
        for name in changed {
            let _ = c.events.send(Event::Status(name));
        }
        Ok(())
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
