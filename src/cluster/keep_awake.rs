//! Keep awake: `<prefix>cluster/keep-awake/<name>` → `{"until", "by"}`, a tenant that the decider must not stop
//! for idleness until then (admin `POST /api/services/<name>/keep-awake`, `reveille service keep-awake`).
//!
//! The key lives under a lease of its own, granted for the time it lasts (plus a second), so etcd removes it
//! once it is over: nobody has to clean up after a replica that wrote one and died. The `until` it holds is
//! what counts; an entry past it is ignored even while etcd still holds it. The cluster watch keeps the
//! in-memory copy the tenants read.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{DeleteOptions, PutOptions};
use serde::{Deserialize, Serialize};

use super::{parse_time, rfc3339, Cluster, ClusterError, Event};
use crate::etcd::{within, EtcdError};

/// A tenant kept awake: until when, and by which replica (or `cli`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeepAwake {
    pub(crate) until: SystemTime,
    pub(crate) by: String,
}

/// The value of a keep-awake key, as every writer (replicas, the command line) writes it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeepAwakeValue {
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) by: String,
}

impl KeepAwakeValue {
    pub(crate) fn new(until: SystemTime, by: &str) -> Self {
        Self { until: rfc3339(until), by: by.to_string() }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The TTL of a keep-awake key's lease: whole seconds, rounded up, plus one, so the key outlives its `until`.
pub(crate) fn lease_ttl(until: SystemTime) -> i64 {
    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
    left.as_secs() as i64 + 2
}

pub(super) fn parse_keep_awake(value: &[u8]) -> Option<KeepAwake> {
    let v: KeepAwakeValue = serde_json::from_slice(value).ok()?;
    Some(KeepAwake { until: parse_time(&v.until)?, by: v.by })
}

impl Cluster {
    /// The tenant's keep-awake, if one is in force now.
    pub(crate) fn keep_awake(&self, service: &str) -> Option<KeepAwake> {
        let st = self.state.lock();
        st.keep_awake.get(service).filter(|k| k.until > SystemTime::now()).cloned()
    }

    /// Keeps `service` awake until `until` cluster-wide, or ends its keep-awake (`None`). The replica's own copy
    /// changes at once; the others learn it from their watch.
    pub(crate) async fn set_keep_awake(
        &self,
        service: &Arc<str>,
        until: Option<SystemTime>,
    ) -> Result<Option<KeepAwake>, ClusterError> {
        // To the millisecond, as the key holds it: what the watch reads back is then the same entry.
        let until = until.map(|t| {
            let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
        });
        let key = self.keys.keep_awake(service);
        let timeout = self.etcd.config().timeout;
        let connection = self.etcd.client().await?;
        let client = &connection.client;
        let written = async {
            // Each keep-awake has a lease of its own, ending with it: the one it replaces (or ends) is revoked,
            // and so is a new one whose put failed, so leases do not pile up over renewals.
            let revoke = |lease: i64| async move {
                if lease != 0 {
                    let _ = within(timeout, client.lease_client().revoke(lease)).await;
                }
            };
            match until {
                Some(until) => {
                    let lease = within(timeout, client.lease_client().grant(lease_ttl(until), None)).await?.id();
                    let value = KeepAwakeValue::new(until, &self.node).to_json();
                    let options = PutOptions::new().with_lease(lease).with_prev_key();
                    match within(timeout, client.kv_client().put(key.as_str(), value, Some(options))).await {
                        Ok(put) => revoke(put.prev_key().map_or(0, |kv| kv.lease())).await,
                        Err(e) => {
                            revoke(lease).await;
                            return Err(e);
                        }
                    }
                    Ok::<_, EtcdError>(Some(KeepAwake { until, by: self.node.to_string() }))
                }
                None => {
                    let options = DeleteOptions::new().with_prev_key();
                    let deleted = within(timeout, client.kv_client().delete(key.as_str(), Some(options))).await?;
                    for kv in deleted.prev_kvs() {
                        revoke(kv.lease()).await;
                    }
                    Ok(None)
                }
            }
        }
        .await
        .inspect_err(|_| {
            self.etcd.failed(&connection);
            self.metrics.write("keep_awake", false);
        })?;
        self.metrics.write("keep_awake", true);
        {
            let mut st = self.state.lock();
            match &written {
                Some(k) => st.keep_awake.insert(service.to_string(), k.clone()),
                None => st.keep_awake.remove(&**service),
            };
        }
        let _ = self.events.send(Event::KeepAwake(service.clone()));
        Ok(written)
    }
}

/// How long is left of a keep-awake, from now (`None`: over).
pub(crate) fn keep_awake_left(until: SystemTime) -> Option<Duration> {
    until.duration_since(SystemTime::now()).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_leases_outlive_them() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let json = KeepAwakeValue::new(until, "a").to_json();
        assert_eq!(json, r#"{"until":"2026-11-18T11:06:40.123+00:00","by":"a"}"#);
        assert_eq!(parse_keep_awake(json.as_bytes()), Some(KeepAwake { until, by: "a".into() }));
        assert_eq!(parse_keep_awake(b"{\"until\": \"soon\"}"), None);
        let ttl = lease_ttl(SystemTime::now() + Duration::from_millis(1500));
        assert_eq!(ttl, 3, "1.5 s left: a lease of 3 s");
        assert_eq!(keep_awake_left(SystemTime::now() - Duration::from_secs(1)), None);
    }
}
