//! What operators see of the cluster: the replicas (node, lease, start, who decides) and each tenant's use per
//! replica. Built from the same in-memory copy of etcd the tenants use (`/api/services`), or from one listing
//! of etcd (`reveille status`, which needs no replica).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{rfc3339, Use};

/// One replica.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReplicaView {
    pub(crate) node: String,
    /// The replica's lease, in hex (as `etcdctl lease list` shows it).
    pub(crate) lease: String,
    pub(crate) started: Option<String>,
    pub(crate) decider: bool,
}

/// One replica's use of one tenant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ActivityView {
    pub(crate) node: String,
    pub(crate) last: Option<String>,
    pub(crate) busy: bool,
}

/// The cluster as one replica sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterView {
    /// This replica.
    pub(crate) node: String,
    /// True while this replica decides idle stops.
    pub(crate) decider: bool,
    /// The node that decides idle stops, if any.
    pub(crate) decider_node: Option<String>,
    pub(crate) replicas: Vec<ReplicaView>,
    /// Service → the replicas that hold activity for it.
    #[serde(skip)]
    pub(crate) activity: BTreeMap<String, Vec<ActivityView>>,
}

pub(super) fn build(
    node: &str,
    replicas: &HashMap<String, (i64, String)>,
    decider_node: Option<&str>,
    lease: Option<i64>,
    activity: &HashMap<String, HashMap<String, Use>>,
    decider: bool,
) -> ClusterView {
    let mut list: Vec<ReplicaView> = replicas
        .iter()
        .map(|(n, (l, value))| ReplicaView {
            node: n.clone(),
            lease: format!("{l:x}"),
            started: serde_json::from_str::<serde_json::Value>(value)
                .ok()
                .and_then(|v| v["started"].as_str().map(str::to_string)),
            decider: decider_node == Some(n.as_str()),
        })
        .collect();
    if !replicas.contains_key(node) {
        if let Some(l) = lease {
            list.push(ReplicaView { node: node.to_string(), lease: format!("{l:x}"), started: None, decider });
        }
    }
    list.sort_by(|a, b| a.node.cmp(&b.node));
    let activity = activity
        .iter()
        .map(|(service, nodes)| {
            let mut v: Vec<ActivityView> = nodes
                .iter()
                .map(|(n, u)| ActivityView { node: n.clone(), last: u.last.map(rfc3339), busy: u.busy })
                .collect();
            v.sort_by(|a, b| a.node.cmp(&b.node));
            (service.clone(), v)
        })
        .collect();
    ClusterView {
        node: node.to_string(),
        decider,
        decider_node: decider_node.map(str::to_string),
        replicas: list,
        activity,
    }
}
