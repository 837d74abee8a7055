//! Membership: this replica's lease and replica key, kept alive, and its campaign for the decider key; and the
//! watch of `<prefix>cluster/` (replicas, decider, activity) that keeps the in-memory copy of them.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::activity::parse_use;
use super::keep_awake::parse_keep_awake;
use super::{rfc3339, Cluster, ClusterError, Event, State};
use crate::etcd::{within, ClusterKey, EtcdError, Sink};

impl Cluster {
    /// Holds a lease and the replica key, keeps them alive, and campaigns for the decider key.
    pub(super) async fn membership(&self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // An outage is said once (here, that the lease is lost; the watches say that etcd went away), not at
        // every retry.
        let mut said = false;
        loop {
            match self.hold_lease(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    if self.state.lock().lease.is_some() {
                        // It had joined: a new outage starts the backoff over.
                        backoff = Duration::from_millis(100);
                        said = false;
                    }
                    self.lost_lease();
                    let gone = matches!(&e, ClusterError::Etcd(ee) if ee.gone().is_some());
                    match e {
                        ClusterError::NodeTaken(_) => error!(error = %e, "cannot join the cluster"),
                        e if gone && said => debug!(error = %e, retry_in = ?backoff, "etcd lease: still without etcd"),
                        e => {
                            said = true;
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
                .and_then([TxnOp::put(key.as_str(), value.to_string(), Some(PutOptions::new().with_lease(lease)))])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let mut joined = within(timeout, kv.txn(join.clone())).await?;
            let previous = self.state.lock().previous_lease;
            if !joined.succeeded() && previous.is_some() && holder_lease(&joined) == previous {
                // etcd kept the key under this replica's own previous lease (etcd restarted with its data, which
                // keeps leases, and the keep-alive stream broke): that lease is this process's, not another
                // replica's. Revoking it frees the name (and whatever else it held: the decider key, activity).
                let old = previous.unwrap_or_default();
                within(timeout, leases.revoke(old)).await?;
                info!(lease = format!("{old:x}"), "etcd still held this replica's key under its previous lease: revoked it");
                joined = within(timeout, kv.txn(join)).await?;
            }
            if !joined.succeeded() {
                let _ = within(timeout, leases.revoke(lease)).await;
                return Err(ClusterError::NodeTaken(self.node.to_string()));
            }
            self.metrics.write("lease", true);
            {
                let mut st = self.state.lock();
                st.lease = Some(lease);
                st.previous_lease = Some(lease);
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
            ClusterKey::KeepAwake(service) => {
                let entry = parse_keep_awake(kv.value());
                let changed = match entry {
                    Some(e) => st.keep_awake.insert(service.to_string(), e.clone()) != Some(e),
                    None => st.keep_awake.remove(service).is_some(),
                };
                if changed {
                    let _ = self.events.send(Event::KeepAwake(service.into()));
                }
            }
            ClusterKey::Other => {}
        }
    }

    /// `node`'s replica key is gone (its lease expired or was revoked): the tenants whose status is a start or
    /// stop of its are told, so that they take it over (`Tenant::on_cluster`). Nothing else
    /// would look at such a key until its next change: a replica cut off from etcd between its start and the
    /// `running` write left a tenant that Docker ran and the decider took for stopped, so never stopped it (the
    /// partition test of issue 29, 2 runs in 8).
    fn replica_gone(&self, st: &State, node: &str) {
        for (service, s) in &st.statuses {
            if s.node == node && s.transitional() {
                let _ = self.events.send(Event::Status(service.clone()));
            }
        }
    }

    /// A cluster key was deleted (its lease expired or was revoked, or an operator removed it).
    fn remove_cluster_key(&self, st: &mut State, key: &str) -> bool {
        match self.keys.cluster_kind(key) {
            ClusterKey::Replica(node) => {
                if st.replicas.remove(node).is_some() {
                    self.replica_gone(st, node);
                }
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
            ClusterKey::KeepAwake(service) => {
                if st.keep_awake.remove(service).is_some() {
                    let _ = self.events.send(Event::KeepAwake(service.into()));
                }
                false
            }
            ClusterKey::Other => false,
        }
    }
}

/// The lease of the key a failed join transaction read (its `or_else` get), if the key exists.
fn holder_lease(resp: &etcd_client::TxnResponse) -> Option<i64> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(KeyValue::lease),
        _ => None,
    })
}

/// The watch of `<prefix>cluster/`: replicas, decider, activity.
pub(super) struct ClusterSink<'a>(pub(super) &'a Cluster);

impl Sink for ClusterSink<'_> {
    async fn replace(&self, _revision: i64, kvs: Vec<KeyValue>, _first: bool) -> Result<(), EtcdError> {
        let c = self.0;
        let mut st = c.state.lock();
        let before = std::mem::take(&mut st.replicas);
        st.activity.clear();
        // Every tenant kept awake before the resync is told (its entry may be gone), and every one after it (as
        // new): a tenant told twice only recomputes its timer twice.
        for service in std::mem::take(&mut st.keep_awake).into_keys() {
            let _ = c.events.send(Event::KeepAwake(service.into()));
        }
        st.decider_node = None;
        for kv in &kvs {
            c.apply_cluster_kv(&mut st, kv);
        }
        for node in before.keys().filter(|n| !st.replicas.contains_key(*n)) {
            c.replica_gone(&st, node);
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
