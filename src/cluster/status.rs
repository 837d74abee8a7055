//! Status: each tenant's `<prefix>status/<name>` (its state, the replica that wrote it, since when), changed
//! only by compare-and-swap on the key's revision ([`Cluster::transition`]); and the watch of `<prefix>status/`
//! that keeps the in-memory copy the tenants read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, EventType, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use tracing::{debug, warn};

use super::{parse_time, rfc3339, Cluster, ClusterError, Event};
use crate::etcd::{within, EtcdError, Sink};

/// How often a status repair is tried, how long each try may take, and the pause between tries: about 20 s in
/// all, longer than an etcd leader election.
const REPAIR_ATTEMPTS: u32 = 5;
const REPAIR_TIMEOUT: Duration = Duration::from_secs(3);
const REPAIR_RETRY: Duration = Duration::from_secs(1);

/// A tenant's state as its status key holds it. The strings ([`TenantState::as_str`]) are what every version of
/// reveille writes and reads: replicas of an older and a newer version read each other's keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub(crate) enum TenantState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Paused,
    /// The last wake failed.
    Failed,
    /// A state this version does not know (written by a newer replica, or by hand): shown as it is, and taken for
    /// none of the others.
    Other(Box<str>),
}

impl TenantState {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            TenantState::Starting => "starting",
            TenantState::Running => "running",
            TenantState::Stopping => "stopping",
            TenantState::Stopped => "stopped",
            TenantState::Paused => "paused",
            TenantState::Failed => "failed",
            TenantState::Other(s) => s,
        }
    }

    /// `starting` or `stopping`: a replica is at work on the container.
    pub(crate) fn transitional(&self) -> bool {
        matches!(self, TenantState::Starting | TenantState::Stopping)
    }
}

impl From<&str> for TenantState {
    fn from(s: &str) -> Self {
        match s {
            "starting" => TenantState::Starting,
            "running" => TenantState::Running,
            "stopping" => TenantState::Stopping,
            "stopped" => TenantState::Stopped,
            "paused" => TenantState::Paused,
            "failed" => TenantState::Failed,
            other => TenantState::Other(other.into()),
        }
    }
}

impl From<String> for TenantState {
    fn from(s: String) -> Self {
        TenantState::from(s.as_str())
    }
}

impl From<TenantState> for String {
    fn from(s: TenantState) -> Self {
        s.as_str().to_string()
    }
}

impl std::fmt::Display for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// As the string it is in etcd, which is what the logs showed before it was an enum.
impl std::fmt::Debug for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A tenant's `<prefix>status/<name>` as last seen.
#[derive(Debug, Clone)]
pub(crate) struct TenantStatus {
    pub(crate) state: TenantState,
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
        self.state.transitional()
    }
}

#[derive(Serialize, Deserialize)]
struct StatusValue {
    state: TenantState,
    #[serde(default)]
    since: String,
    #[serde(default)]
    node: String,
}

/// The result of [`Cluster::transition`].
#[derive(Debug)]
pub(crate) enum Transition {
    /// Written: the key's new revision.
    Done(i64),
    /// The key was not at the expected revision; what it holds now (`None`: absent).
    Conflict(Option<TenantStatus>),
}

impl Cluster {
    /// The tenant's status as last seen (`None`: no key, or not loaded yet).
    pub(crate) fn status(&self, service: &str) -> Option<TenantStatus> {
        self.state.lock().statuses.get(service).cloned()
    }

    /// True once the status keys have been listed.
    pub(crate) fn statuses_loaded(&self) -> bool {
        self.state.lock().statuses_loaded
    }

    /// Compare-and-swap of `<prefix>status/<service>`: writes `state` (with this node and `since`) only if the
    /// key is at `expect` (`None`: only if it is absent). Bounded by `limit` (the wake path cannot wait long).
    pub(crate) async fn transition(
        &self,
        service: &Arc<str>,
        expect: Option<i64>,
        state: TenantState,
        since: SystemTime,
        limit: Duration,
    ) -> Result<Transition, ClusterError> {
        let key = self.keys.status(service);
        let value = serde_json::to_string(&StatusValue {
            state: state.clone(),
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
            let status =
                TenantStatus { state, node: self.node.to_string(), since: Some(since), revision, seen: Instant::now() };
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
        let learnt = {
            let mut st = self.state.lock();
            match &current {
                Some(s) => {
                    let newer = st.statuses.get(&**service).is_none_or_older(s.revision);
                    if newer {
                        st.statuses.insert(service.clone(), s.clone());
                    }
                    newer
                }
                None => st.statuses.remove(&**service).is_some(),
            }
        };
        if learnt {
            // The watch will bring this revision too, but as nothing new (it is in already): the tenant is told
            // now, as the watch would have told it. Without this a claim of this replica's own that the watch had
            // not yet delivered (a claim whose answer was lost, then an unclaimed wake) was learnt here and
            // never followed: its key stayed `starting` (seen in the chaos run, seed 2901).
            let _ = self.events.send(Event::Status(service.clone()));
        }
        Ok(Transition::Conflict(current))
    }

    /// Writes `state` as the tenant's status in the background, from revision `expect`. While a repair of the
    /// same tenant is on its way, this ask replaces what it will write next (the latest observation wins).
    pub(crate) fn repair(self: &Arc<Self>, service: &Arc<str>, expect: Option<i64>, state: TenantState) {
        {
            let mut repairing = self.repairing.lock();
            if let Some(wanted) = repairing.get_mut(service) {
                *wanted = (expect, state);
                return;
            }
            repairing.insert(service.clone(), (expect, state));
        }
        let (me, service) = (self.clone(), service.clone());
        tokio::spawn(async move {
            // An etcd that fails the write (a member down under the client, a timeout) is tried again while
            // the key is still where it was expected: a status left behind would otherwise stay until the next
            // change of the key, which may never come (a settled tenant writes nothing). A newer ask made
            // meanwhile is written instead.
            let mut failures = 0;
            loop {
                let Some(wanted) = me.repairing.lock().get(&service).cloned() else { break };
                let (expect, state) = wanted.clone();
                let written = me.transition(&service, expect, state.clone(), SystemTime::now(), REPAIR_TIMEOUT).await;
                let finished = match written {
                    Ok(_) => true,
                    Err(e) => {
                        failures += 1;
                        let unmoved = me.status(&service).map(|s| s.revision) == expect;
                        let give_up = !unmoved || failures >= REPAIR_ATTEMPTS;
                        if give_up {
                            warn!(service = %service, error = %e, state = %state, "cannot repair the tenant's status in etcd");
                        } else {
                            debug!(service = %service, error = %e, "status repair failed: trying again");
                        }
                        give_up
                    }
                };
                {
                    let mut repairing = me.repairing.lock();
                    let asked_again = repairing.get(&service) != Some(&wanted);
                    if finished && !asked_again {
                        repairing.remove(&service);
                        break;
                    }
                    if asked_again {
                        continue;
                    }
                }
                tokio::time::sleep(REPAIR_RETRY).await;
            }
        });
    }
}

trait OlderThan {
    fn is_none_or_older(&self, revision: i64) -> bool;
}

impl OlderThan for Option<&TenantStatus> {
    fn is_none_or_older(&self, revision: i64) -> bool {
        self.is_none_or(|s| s.revision < revision)
    }
}

pub(super) fn parse_status(kv: &KeyValue) -> Option<TenantStatus> {
    let v: StatusValue = serde_json::from_slice(kv.value()).ok()?;
    Some(TenantStatus {
        state: v.state,
        node: v.node,
        since: parse_time(&v.since),
        revision: kv.mod_revision(),
        seen: Instant::now(),
    })
}

/// The watch of `<prefix>status/`.
pub(super) struct StatusSink<'a>(pub(super) &'a Cluster);

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
    fn states_round_trip_the_strings_in_etcd() {
        for s in ["starting", "running", "stopping", "stopped", "paused", "failed"] {
            let state = TenantState::from(s);
            assert!(!matches!(state, TenantState::Other(_)), "{s} is a known state");
            assert_eq!(state.as_str(), s);
        }
        let newer = TenantState::from("hibernating");
        assert_eq!(newer, TenantState::Other("hibernating".into()));
        assert_eq!(newer.as_str(), "hibernating");
        assert!(!newer.transitional());
        // A key as the string-typed version wrote it reads, and writes back, byte for byte.
        let old = r#"{"state":"stopping","since":"2026-11-18T11:06:40.123+00:00","node":"a"}"#;
        let v: StatusValue = serde_json::from_str(old).unwrap();
        assert_eq!(v.state, TenantState::Stopping);
        assert_eq!(serde_json::to_string(&v).unwrap(), old);
    }
}
