//! Metrics of the balancer: backends ejected from their service's rotation, and retries on another backend.
//! Both are counted on the rare path (an ejection, a retry decision): the family lookup is paid then, not per
//! request. Their label values are the operator's own services and backends, so their number is bounded by the
//! route table.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    service: String,
    result: &'static str,
}

/// `reveille_backend_ejections_total` and `reveille_retries_total`.
#[derive(Clone, Debug)]
pub struct BalancerMetrics {
    ejections: Family<BackendLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
}

impl BalancerMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let ejections = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_ejections",
            "Backends taken out of their service's rotation after failing too often in a row",
            ejections.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests that could be retried on another backend, by result (retried; budget_exhausted: the \
             service's retry budget was spent, the failed response went to the client)",
            retries.clone(),
        );
        Self { ejections, retries }
    }

    /// `backend` of `service` was ejected.
    pub fn ejected(&self, service: &str, backend: &str) {
        self.ejections.get_or_create(&BackendLabels { service: service.into(), backend: backend.into() }).inc();
    }

    /// A request of `service` that could be retried was (`retried`), or was not (`budget_exhausted`).
    pub fn retry(&self, service: &str, result: &'static str) {
        self.retries.get_or_create(&RetryLabels { service: service.into(), result }).inc();
    }
}
