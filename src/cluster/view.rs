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

/// A tenant as `reveille status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TenantView {
    pub(crate) state: Option<String>,
    /// The replica that wrote the state.
    pub(crate) node: Option<String>,
    pub(crate) since: Option<String>,
    /// The replicas that hold activity for it.
    pub(crate) activity: Vec<ActivityView>,
    /// Until when it is kept awake (a keep-awake key in force), and by whom.
    pub(crate) keep_awake_until: Option<String>,
    pub(crate) keep_awake_by: Option<String>,
}

/// The whole cluster, read from etcd by `reveille status` (no replica needs to be reachable).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    pub(crate) decider: Option<String>,
    pub(crate) replicas: Vec<ReplicaView>,
    pub(crate) tenants: BTreeMap<String, TenantView>,
}

/// Lists the status keys and the cluster keys (two listings) and puts them together.
pub(crate) async fn read(
    client: &etcd_client::Client,
    keys: &crate::etcd::Keys,
    timeout: std::time::Duration,
) -> Result<ClusterStatus, crate::etcd::EtcdError> {
    use crate::etcd::ClusterKey;
    let (start, end) = keys.cluster_range();
    let (_, cluster) = crate::etcd::list_range(client, &start, &end, timeout).await?;
    let (start, end) = keys.status_range();
    let (_, statuses) = crate::etcd::list_range(client, &start, &end, timeout).await?;
    let mut replicas = HashMap::new();
    let mut decider = None;
    let mut activity: HashMap<String, HashMap<String, Use>> = HashMap::new();
    let mut kept = HashMap::new();
    for kv in &cluster {
        let Ok(key) = kv.key_str() else { continue };
        match keys.cluster_kind(key) {
            ClusterKey::Replica(node) => {
                replicas.insert(node.to_string(), (kv.lease(), kv.value_str().unwrap_or_default().to_string()));
            }
            ClusterKey::Decider => decider = Some(kv.value_str().unwrap_or_default().to_string()),
            ClusterKey::Activity { service, node } => {
                if let Some(u) = super::activity::parse_use(kv.value()) {
                    activity.entry(service.to_string()).or_default().insert(node.to_string(), u);
                }
            }
            ClusterKey::KeepAwake(service) => {
                let entry = super::keep_awake::parse_keep_awake(kv.value());
                if let Some(k) = entry.filter(|k| k.until > std::time::SystemTime::now()) {
                    kept.insert(service.to_string(), k);
                }
            }
            ClusterKey::Other => {}
        }
    }
    let view = build("", &replicas, decider.as_deref(), None, &activity, false);
    let mut tenants: BTreeMap<String, TenantView> = BTreeMap::new();
    for kv in &statuses {
        let Some(name) = kv.key_str().ok().and_then(|k| keys.status_name(k)) else { continue };
        let s = super::status::parse_status(kv);
        tenants.insert(
            name.to_string(),
            TenantView {
                state: s.as_ref().map(|s| s.state.to_string()),
                node: s.as_ref().map(|s| s.node.clone()),
                since: s.and_then(|s| s.since).map(rfc3339),
                activity: Vec::new(),
                keep_awake_until: None,
                keep_awake_by: None,
            },
        );
    }
    let empty = || TenantView {
        state: None,
        node: None,
        since: None,
        activity: Vec::new(),
        keep_awake_until: None,
        keep_awake_by: None,
    };
    for (service, list) in view.activity {
        tenants.entry(service).or_insert_with(empty).activity = list;
    }
    for (service, k) in kept {
        let t = tenants.entry(service).or_insert_with(empty);
        t.keep_awake_until = Some(rfc3339(k.until));
        t.keep_awake_by = Some(k.by);
    }
    Ok(ClusterStatus { decider, replicas: view.replicas, tenants })
}

impl ClusterStatus {
    /// The text `reveille status` prints.
    pub(crate) fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "REPLICAS ({}; idle stops decided by {})",
            self.replicas.len(),
            self.decider.as_deref().unwrap_or("nobody")
        );
        let width = self.replicas.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(out, "{:width$}  {:16}  {:29}  DECIDES", "NODE", "LEASE", "STARTED");
        for r in &self.replicas {
            let decides = if r.decider { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "{:width$}  {:16}  {:29}  {decides}",
                r.node,
                r.lease,
                r.started.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(out, "\nTENANTS ({})", self.tenants.len());
        let width = self.tenants.keys().map(String::len).max().unwrap_or(7).max(7);
        let _ = writeln!(
            out,
            "{:width$}  {:9}  {:8}  {:29}  ACTIVITY (replica: last use)",
            "SERVICE", "STATE", "BY", "SINCE"
        );
        for (name, t) in &self.tenants {
            let activity: Vec<String> = t
                .activity
                .iter()
                .map(|a| {
                    let last = a.last.as_deref().unwrap_or("-");
                    if a.busy {
                        format!("{}: busy now", a.node)
                    } else {
                        format!("{}: {last}", a.node)
                    }
                })
                .collect();
            let mut activity = if activity.is_empty() { "-".to_string() } else { activity.join(", ") };
            if let Some(until) = &t.keep_awake_until {
                let by = t.keep_awake_by.as_deref().unwrap_or("-");
                let _ = write!(activity, "; kept awake until {until} (by {by})");
            }
            let _ = writeln!(
                out,
                "{name:width$}  {:9}  {:8}  {:29}  {activity}",
                t.state.as_deref().unwrap_or("-"),
                t.node.as_deref().unwrap_or("-"),
                t.since.as_deref().unwrap_or("-"),
            );
        }
        out
    }
}
