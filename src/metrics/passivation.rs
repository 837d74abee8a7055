//! Metrics of passivation: wakes, holds, stops, tenants per state, each Docker host's health.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{ReasonLabels, ServiceLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceResultLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostResultLabels {
    host: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceActionLabels {
    service: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReasonLabels {
    service: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Metrics of passivation: wakes, holds, stops, how many tenants are in each state, and each Docker host's
/// health.
#[derive(Clone)]
pub struct PassivationMetrics {
    wakes: Family<ServiceResultLabels, Counter>,
    wakes_by_host: Family<HostResultLabels, Counter>,
    host_up: Family<HostLabels, Gauge>,
    docker_errors: Family<HostLabels, Counter>,
    event_reconnects: Family<HostLabels, Counter>,
    phases: Family<PhaseLabels, prometheus_client::metrics::histogram::Histogram>,
    held: Gauge,
    rejected: Family<ReasonLabels, Counter>,
    stops: Family<ServiceActionLabels, Counter>,
    stop_failures: Family<ServiceLabels, Counter>,
    stop_checks: Family<ServiceResultLabels, Counter>,
    idle_stop_vetoes: Family<ServiceReasonLabels, Counter>,
    tenants: Family<StateLabels, Gauge>,
}

impl PassivationMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let wakes = Family::<ServiceResultLabels, Counter>::default();
        registry.register(
            "wakes",
            "Tenant wakes, by service and result (ok, failed, timeout, unavailable)",
            wakes.clone(),
        );
        let wakes_by_host = Family::<HostResultLabels, Counter>::default();
        registry.register(
            "wakes_by_host",
            "Tenant wakes, by Docker host and result (ok, failed, timeout, unavailable, removed)",
            wakes_by_host.clone(),
        );
        let host_up = Family::<HostLabels, Gauge>::default();
        registry.register(
            "docker_host_up",
            "1 when the last call or event stream to this Docker host worked, 0 when it was unreachable",
            host_up.clone(),
        );
        let docker_errors = Family::<HostLabels, Counter>::default();
        registry.register(
            "docker_unavailable",
            "Docker calls (and event streams) that failed because the host was unreachable or did not answer in time",
            docker_errors.clone(),
        );
        let event_reconnects = Family::<HostLabels, Counter>::default();
        registry.register(
            "docker_event_reconnects",
            "Times a Docker host's event stream broke (or could not be opened) and was reopened, by host",
            event_reconnects.clone(),
        );
        let phases =
            Family::<PhaseLabels, prometheus_client::metrics::histogram::Histogram>::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
            });
        registry.register(
            "wake_phase_seconds",
            "Duration of wake phases: start_call (Docker start/unpause call), running (until Docker reports it \
             running), ready (until the first successful probe), total (from the first held request)",
            phases.clone(),
        );
        let held = Gauge::default();
        registry.register("held_requests", "Requests currently held while their tenant wakes", held.clone());
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_holds",
            "Held requests answered with an error, by reason (overflow, timeout, failed, unavailable, removed)",
            rejected.clone(),
        );
        let stops = Family::<ServiceActionLabels, Counter>::default();
        registry.register("stops", "Idle tenants stopped or paused, by service and action", stops.clone());
        let stop_failures = Family::<ServiceLabels, Counter>::default();
        registry.register("stop_failures", "Failed attempts to stop or pause an idle tenant", stop_failures.clone());
        let stop_checks = Family::<ServiceResultLabels, Counter>::default();
        registry.register(
            "stop_checks",
            "Answers of a tenant's stop_check before an idle stop: idle (2xx), busy (409, 423: not stopped), \
             unexpected (another status) and no_answer (both stopped)",
            stop_checks.clone(),
        );
        let idle_stop_vetoes = Family::<ServiceReasonLabels, Counter>::default();
        registry.register(
            "idle_stop_vetoes",
            "Idle stops put off by an idle timeout before any claim, by service and reason: traffic (the \
             container's network counters moved more than reveille's own checks explain: used where the cluster \
             cannot see)",
            idle_stop_vetoes.clone(),
        );
        let tenants = Family::<StateLabels, Gauge>::default();
        registry.register("tenants", "Passivated tenants, by state", tenants.clone());
        Self {
            wakes,
            wakes_by_host,
            host_up,
            docker_errors,
            event_reconnects,
            phases,
            held,
            rejected,
            stops,
            stop_failures,
            stop_checks,
            idle_stop_vetoes,
            tenants,
        }
    }

    /// A wake of `service`, whose container is on Docker host `host`, ended with `result`.
    pub fn wake(&self, service: &str, host: &str, result: &'static str) {
        self.wakes.get_or_create(&ServiceResultLabels { service: service.to_string(), result }).inc();
        self.wakes_by_host.get_or_create(&HostResultLabels { host: host.to_string(), result }).inc();
    }

    /// A call to (or the event stream of) Docker host `host` worked (`true`) or found it unreachable.
    pub fn docker_host(&self, host: &str, up: bool) {
        let labels = HostLabels { host: host.to_string() };
        self.host_up.get_or_create(&labels).set(i64::from(up));
        if !up {
            self.docker_errors.get_or_create(&labels).inc();
        }
    }

    /// Docker host `host`'s event stream broke or could not be opened; it is reopened.
    pub fn docker_event_reconnect(&self, host: &str) {
        self.event_reconnects.get_or_create(&HostLabels { host: host.to_string() }).inc();
    }

    /// One wake phase (`start_call`, `running`, `ready`, `total`) took `d`.
    pub fn phase(&self, phase: &'static str, d: Duration) {
        self.phases.get_or_create(&PhaseLabels { phase }).observe(d.as_secs_f64());
    }

    pub fn held(&self, delta: i64) {
        self.held.inc_by(delta);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn stopped(&self, service: &str, action: &'static str) {
        self.stops.get_or_create(&ServiceActionLabels { service: service.to_string(), action }).inc();
    }

    pub fn stop_failed(&self, service: &str) {
        self.stop_failures.get_or_create(&ServiceLabels { service: service.to_string() }).inc();
    }

    /// A tenant's `stop_check` answered `result` (`idle`, `busy`, `unexpected`, `no_answer`).
    pub fn stop_check(&self, service: &str, result: &'static str) {
        self.stop_checks.get_or_create(&ServiceResultLabels { service: service.to_string(), result }).inc();
    }

    /// An idle stop of `service` was put off for `reason` (`traffic`).
    pub fn idle_stop_vetoed(&self, service: &str, reason: &'static str) {
        self.idle_stop_vetoes.get_or_create(&ServiceReasonLabels { service: service.to_string(), reason }).inc();
    }

    /// A tenant moved from state `from` (`None`: it is new) to `to` (`None`: it is gone).
    pub fn transition(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(f) = from {
            self.tenants.get_or_create(&StateLabels { state: f }).dec();
        }
        if let Some(t) = to {
            self.tenants.get_or_create(&StateLabels { state: t }).inc();
        }
    }
}
