//! What operators see of passivation in etcd: `<prefix>status/<name>` → `{"state", "since", "node"}` on each
//! transition, and `<prefix>activity/<name>` → the last access time, at most every `activity_interval` while the
//! tenant is used.
//!
//! Written by one background task fed through a channel: the request path and the tenant drivers never wait
//! for etcd. Writes that fail (etcd down) are kept, the latest per key, and retried after a reconnect. The
//! client is the process's shared one (`crate::etcd::Etcd`); the key names are `crate::etcd::Keys`'.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Passivator, StatusUpdate};
use crate::etcd::{within, Etcd};

/// RFC 3339 with milliseconds and an explicit offset (`2026-11-22T03:16:09.123+00:00`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_millis(t).to_string();
    match s.strip_suffix('Z') {
        Some(base) => format!("{base}+00:00"),
        None => s,
    }
}

/// Runs the writer until `cancel`. `passivator` is read every `interval` for activity.
pub(crate) async fn run(
    etcd: Etcd,
    node: String,
    mut updates: mpsc::UnboundedReceiver<StatusUpdate>,
    passivator: Arc<Passivator>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let keys = etcd.keys().clone();
    let timeout = etcd.config().timeout;
    // Latest value per key not yet written.
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut written_activity: HashMap<Arc<str>, SystemTime> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            u = updates.recv() => match u {
                Some(StatusUpdate::State { service, state, since }) => {
                    let value = json!({ "state": state.as_str(), "since": rfc3339(since), "node": node });
                    pending.insert(keys.status(&service), value.to_string());
                    // Take whatever else is queued, so a burst becomes one round of writes.
                    while let Ok(StatusUpdate::State { service, state, since }) = updates.try_recv() {
                        let value = json!({ "state": state.as_str(), "since": rfc3339(since), "node": node });
                        pending.insert(keys.status(&service), value.to_string());
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                for (service, last) in passivator.activity() {
                    let Some(last) = last else { continue };
                    if written_activity.get(&service).is_some_and(|w| *w >= last) {
                        continue;
                    }
                    written_activity.insert(service.clone(), last);
                    pending.insert(keys.activity(&service), json!(rfc3339(last)).as_str().unwrap_or_default().to_string());
                }
            }
            () = cancel.cancelled() => return,
        }
        if pending.is_empty() || tokio::time::Instant::now() < retry_at {
            continue;
        }
        let mut connection = match etcd.client().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "status writer: etcd unreachable; will retry");
                retry_at = tokio::time::Instant::now() + Duration::from_secs(2);
                continue;
            }
        };
        while let Some((key, value)) = pending.pop_first() {
            if let Err(e) = within(timeout, connection.client.put(key.clone(), value.clone(), None)).await {
                warn!(error = %e, key, "status writer: etcd write failed; will retry");
                pending.insert(key, value);
                etcd.failed(&connection);
                retry_at = tokio::time::Instant::now() + Duration::from_secs(2);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_an_offset() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123+00:00");
    }
}
