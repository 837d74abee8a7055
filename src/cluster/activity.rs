//! Activity: every `activity_interval`, this replica publishes, under its lease, `{"last", "busy"}` for each of
//! its tenants whose use changed (`<prefix>cluster/activity/<name>/<node>`), in batched transactions; and the
//! other replicas' use, as the cluster watch keeps it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{parse_time, rfc3339, Cluster, ClusterError};
use crate::etcd::within;

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

/// Transactions carry at most this many operations (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 100;

impl Cluster {
    /// How often activity is published (and so how stale another replica's may be).
    pub(crate) fn activity_interval(&self) -> Duration {
        self.activity_interval
    }

    /// Where the published activity comes from (set once, by the passivator).
    pub(crate) fn set_activity_source(&self, source: ActivitySource) {
        let _ = self.source.set(source);
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

    /// Every `activity_interval`, writes the use of the tenants that changed, under the lease, in batches.
    pub(super) async fn publish(self: Arc<Self>, cancel: CancellationToken) {
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
}

pub(super) fn parse_use(value: &[u8]) -> Option<Use> {
    let v: UseValue = serde_json::from_slice(value).ok()?;
    Some(Use { last: v.last.as_deref().and_then(parse_time), busy: v.busy })
}
