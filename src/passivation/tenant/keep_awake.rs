//! Keep awake, the tenant's side: until a time an operator sets (admin API, `reveille service keep-awake`), the
//! tenant is not stopped or paused for idleness. With etcd, the entry is the cluster's (`crate::cluster`'s
//! keep-awake key, honoured by whichever replica decides stops); without, it is this replica's own.
//!
//! It only puts the idle stop off: it does not wake a sleeping tenant, and an admin `sleep` still stops it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Msg, Tenant};
use crate::cluster::{ClusterError, KeepAwake};

/// Why a keep-awake could not be set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeepAwakeError {
    #[error("`for` {0} is too long")]
    TooLong(String),
    #[error("cannot write the keep-awake to etcd: {0}")]
    Cluster(#[from] ClusterError),
}

impl Tenant {
    /// The keep-awake in force now, if any.
    pub(crate) fn keep_awake(&self) -> Option<KeepAwake> {
        match self.cluster() {
            Some(c) => c.keep_awake(&self.name),
            None => {
                let mut local = self.shared.keep_awake.lock();
                let k = local.get(&self.name).filter(|k| k.until > SystemTime::now()).cloned();
                if k.is_none() {
                    // Over: forgotten.
                    local.remove(&self.name);
                }
                k
            }
        }
    }

    /// How long the tenant is still kept awake (`None`: it is not).
    pub(super) fn keep_awake_left(&self) -> Option<Duration> {
        self.keep_awake().and_then(|k| crate::cluster::keep_awake_left(k.until))
    }

    /// Keeps the tenant awake for `time` from now; zero ends its keep-awake. Returns the entry in force.
    pub(crate) async fn set_keep_awake(&self, time: Duration) -> Result<Option<KeepAwake>, KeepAwakeError> {
        let until = if time.is_zero() {
            None
        } else {
            let t = SystemTime::now().checked_add(time);
            Some(t.ok_or_else(|| KeepAwakeError::TooLong(humantime::format_duration(time).to_string()))?)
        };
        let entry = match self.cluster() {
            // The cluster tells the passivator, which tells this tenant (as for a change by another replica).
            Some(c) => return Ok(c.set_keep_awake(&self.name, until).await?),
            None => {
                let mut local = self.shared.keep_awake.lock();
                match until {
                    Some(until) => {
                        let k = KeepAwake { until, by: self.shared.settings.node.clone() };
                        local.insert(self.name.clone(), k.clone());
                        Some(k)
                    }
                    None => {
                        local.remove(&self.name);
                        None
                    }
                }
            }
        };
        self.notify_keep_awake();
        Ok(entry)
    }

    /// The keep-awake changed: the driver recomputes its idle timer, and the events feed says so (a
    /// `keep_awake` event, `{"service", "until", "by"}`, `until` null when it ended).
    pub(in crate::passivation) fn notify_keep_awake(&self) {
        let _ = self.tx.send(Msg::Idle);
        let kept = self.keep_awake();
        self.shared.events.publish(
            "keep_awake",
            serde_json::json!({
                "service": &*self.name,
                "until": kept.as_ref().map(|k| crate::cluster::rfc3339(k.until)),
                "by": kept.map(|k| k.by),
            }),
        );
    }
}

/// This replica's keep-awakes, without etcd: service → entry.
pub(in crate::passivation) type LocalKeepAwake = parking_lot::Mutex<std::collections::HashMap<Arc<str>, KeepAwake>>;
