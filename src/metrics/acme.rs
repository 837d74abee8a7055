//! Metrics of certificates by ACME: orders, challenges, renewals and refusals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::ReasonLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcmeLabels {
    kind: &'static str,
    result: &'static str,
}

/// Certificates by ACME: orders, challenges, renewals and refusals.
#[derive(Clone, Debug)]
pub struct AcmeMetrics {
    orders: Family<AcmeLabels, Counter>,
    challenges: Family<AcmeLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    on_demand_refused: Family<ReasonLabels, Counter>,
    managed: Gauge,
    renewal_due: Gauge,
}

impl AcmeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let orders = Family::<AcmeLabels, Counter>::default();
        registry.register(
            "acme_orders",
            "ACME orders by kind (new, renewal, on_demand) and result (issued, or the failure's reason)",
            orders.clone(),
        );
        let challenges = Family::<AcmeLabels, Counter>::default();
        registry.register(
            "acme_challenges",
            "ACME challenges answered by this replica, by kind (http-01, tls-alpn-01) and result (answered, unknown)",
            challenges.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "acme_refused",
            "Certificates not ordered, by reason (no_route, opted_out, wildcard, backoff, budget_domain, \
             budget_account, on_demand_domain, on_demand_account, per_client, per_minute, no_challenge)",
            refused.clone(),
        );
        let on_demand_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "acme_on_demand_refused",
            "On-demand orders (started by a handshake) refused, by reason: per_client, per_minute (the per-minute \
             limits); on_demand_domain, on_demand_account (the on-demand share of a budget); budget_domain, \
             budget_account (the whole budget)",
            on_demand_refused.clone(),
        );
        let managed = Gauge::default();
        registry.register("acme_certificates", "Certificates managed by ACME and in force", managed.clone());
        let renewal_due = Gauge::default();
        registry.register(
            "acme_renewals_due",
            "Certificates managed by ACME past their renewal time and not yet renewed",
            renewal_due.clone(),
        );
        Self { orders, challenges, refused, on_demand_refused, managed, renewal_due }
    }

    pub fn order(&self, kind: &'static str, result: &'static str) {
        self.orders.get_or_create(&AcmeLabels { kind, result }).inc();
    }

    pub fn challenge(&self, kind: &'static str, result: &'static str) {
        self.challenges.get_or_create(&AcmeLabels { kind, result }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn on_demand_refused(&self, reason: &'static str) {
        self.on_demand_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn managed(&self, count: usize, due: usize) {
        self.managed.set(count as i64);
        self.renewal_due.set(due as i64);
    }
}
