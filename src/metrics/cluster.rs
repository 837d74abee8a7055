//! Metrics of the cluster's coordination through etcd: this replica's node, the decider, writes and conflicts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: &'static str,
    result: &'static str,
}

/// Metrics of the cluster's coordination through etcd.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    node: Family<NodeLabels, Gauge>,
    decider: Gauge,
    leader_changes: Counter,
    writes: Family<WriteLabels, Counter>,
    conflicts: Counter,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let node = Family::<NodeLabels, Gauge>::default();
        registry.register("node_info", "This replica's node name (`serve --node`), as a label; always 1", node.clone());
        let decider = Gauge::default();
        registry.register(
            "cluster_decider",
            "1 while this replica decides idle stops for the cluster",
            decider.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "cluster_leader_changes",
            "Times this replica became, or stopped being, the one that decides idle stops",
            leader_changes.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "cluster_writes",
            "etcd coordination writes, by kind (status, activity, lease, decider) and result (ok; conflict: a status \
             compare-and-swap refused; error: etcd failed or did not answer)",
            writes.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "cluster_cas_conflicts",
            "Status transitions refused because another replica changed the status first",
            conflicts.clone(),
        );
        Self { node, decider, leader_changes, writes, conflicts }
    }

    pub fn node(&self, node: &str) {
        self.node.get_or_create(&NodeLabels { node: node.to_string() }).set(1);
    }

    pub fn decider(&self, on: bool) {
        self.decider.set(i64::from(on));
        self.leader_changes.inc();
    }

    pub fn write(&self, kind: &'static str, ok: bool) {
        self.writes.get_or_create(&WriteLabels { kind, result: if ok { "ok" } else { "error" } }).inc();
    }

    /// A status transaction etcd refused because the key had changed: counted as a write with
    /// `result="conflict"`, and in the conflicts counter.
    pub fn conflict(&self) {
        self.writes.get_or_create(&WriteLabels { kind: "status", result: "conflict" }).inc();
        self.conflicts.inc();
    }
}
