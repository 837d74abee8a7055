//! Prometheus metrics: one registry for the process, with typed handles so the request path only increments
//! atomics (per-service handles are cached on the [`crate::routes::Service`] itself).
//!
//! Owns metric names, help texts and the text exposition; does not decide when things are counted, nor what a
//! label value means. It imports nothing from the rest of the crate: the modules that count pass their own
//! vocabulary as label values (`&'static str`, or an enum implementing [`LabelValue`], such as the proxy's
//! unrouted and upstream error kinds).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};

use crate::events::Events;
use prometheus_client::metrics::MetricType;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceClassLabels {
    service: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    source: &'static str,
    result: &'static str,
}

/// A label whose values are a closed set, defined by the module that counts (the proxy's unrouted kinds and
/// upstream error kinds): metrics exposes it without knowing the type.
pub trait LabelValue: Copy + 'static {
    /// Every value. Their series are created together, so each is exposed (at 0) before its first count.
    const ALL: &'static [Self];
    /// The value as exposed.
    fn as_label(self) -> &'static str;
    /// The position of `self` in [`Self::ALL`].
    fn index(self) -> usize;
}

/// One counter per value of `L`, all created up front: counting is an index and an atomic add, no lookup.
#[derive(Debug, Clone)]
pub struct LabeledCounters<L> {
    counters: Box<[Counter]>,
    _label: PhantomData<fn(L)>,
}

impl<L: LabelValue> LabeledCounters<L> {
    /// The counters of `family`, one per value of `L`, labelled by `label`.
    fn new<S>(family: &Family<S, Counter>, label: impl Fn(&'static str) -> S) -> Self
    where
        S: Clone + std::hash::Hash + Eq,
    {
        let counters = L::ALL.iter().map(|v| family.get_or_create(&label(v.as_label())).clone()).collect();
        Self { counters, _label: PhantomData }
    }

    #[inline]
    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    #[inline]
    pub fn inc_by(&self, value: L, n: u64) {
        if let Some(c) = self.counters.get(value.index()) {
            c.inc_by(n);
        }
    }

    /// The count for `value` so far.
    pub fn get(&self, value: L) -> u64 {
        self.counters.get(value.index()).map_or(0, Counter::get)
    }
}

/// Per-service counters by status class and the service's latency histogram, resolved once per service.
#[derive(Debug, Clone)]
pub struct ServiceStats {
    by_class: [Counter; 5],
    latency: LatencyHistogram,
}

impl ServiceStats {
    /// Counts one response with this status, its head sent `elapsed` after the request arrived.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        let idx = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[idx].inc();
        self.latency.observe(elapsed);
    }
}

/// The buckets of `reveille_service_request_duration_seconds`: fewer than the global histogram's, as there is
/// one histogram per service; up to 30 s, so a request held through a wake lands in a bucket of its own.
const SERVICE_LATENCY_BOUNDS: [f64; 8] = [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0];

fn service_latency() -> LatencyHistogram {
    LatencyHistogram::new(&SERVICE_LATENCY_BOUNDS)
}

/// A latency histogram updated with atomics only: prometheus-client's own takes a write lock per observation,
/// which every worker thread would contend on. Per-bucket counts (not cumulative; the encoder sums them), the
/// sum kept in microseconds.
#[derive(Debug, Clone)]
struct LatencyHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Box<[f64]>,
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl std::ops::Deref for LatencyHistogram {
    type Target = HistogramInner;
    fn deref(&self) -> &HistogramInner {
        &self.0
    }
}

impl LatencyHistogram {
    fn new(bounds: &[f64]) -> Self {
        let bounds: Box<[f64]> = bounds.iter().copied().chain(std::iter::once(f64::MAX)).collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramInner { bounds, counts, sum_us: AtomicU64::new(0), count: AtomicU64::new(0) }))
    }

    #[inline]
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> =
            self.bounds.iter().zip(self.counts.iter()).map(|(b, c)| (*b, c.load(Ordering::Relaxed))).collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

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
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
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
    tenants: Family<StateLabels, Gauge>,
    events: Events,
}

impl PassivationMetrics {
    fn register(registry: &mut Registry, events: Events) -> Self {
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
            tenants,
            events,
        }
    }

    /// A tenant's state changed: the events feed's `tenant` event.
    pub fn tenant_changed(&self, service: &str, from: &'static str, to: &'static str, node: &str) {
        let data = serde_json::json!({ "service": service, "from": from, "state": to, "node": node });
        self.events.publish("tenant", data);
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
    fn register(registry: &mut Registry) -> Self {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// Days until the earliest certificate expiry, computed when scraped (a stored value would go stale).
#[derive(Debug, Clone, Default)]
struct ExpiryDays(Arc<std::sync::atomic::AtomicI64>);

/// `ExpiryDays` value meaning "no certificate loaded".
const NO_EXPIRY: i64 = i64::MIN;

impl EncodeMetric for ExpiryDays {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0.load(Ordering::Relaxed) {
            NO_EXPIRY => Ok(()),
            at => encoder.encode_gauge(&((at - unix_now()) as f64 / 86_400.0)),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Metrics of TLS termination: certificates in force, their expiry, handshakes.
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
    fn register(registry: &mut Registry) -> Self {
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

/// The admin listener: its connections, what its limits closed or refused, and the requests its access rules
/// refused.
#[derive(Clone, Debug)]
pub struct AdminMetrics {
    open: Gauge,
    refused: Counter,
    timeouts: Family<KindLabels, Counter>,
    subscribers: Gauge,
    events_refused: Counter,
    requests_refused: Family<ReasonLabels, Counter>,
}

impl AdminMetrics {
    fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register("admin_open_connections", "Admin listener connections open", open.clone());
        let refused = Counter::default();
        registry.register(
            "admin_connections_refused",
            "Admin listener connections closed at once because max_connections were open",
            refused.clone(),
        );
        let timeouts = Family::<KindLabels, Counter>::default();
        registry.register(
            "admin_timeouts",
            "Admin listener connections closed by a timeout, by kind (header: a request head not received in \
             time; idle: no request for idle_timeout; send: a client that read nothing for send_timeout)",
            timeouts.clone(),
        );
        for kind in ["header", "idle", "send"] {
            let _ = timeouts.get_or_create(&KindLabels { kind });
        }
        let subscribers = Gauge::default();
        registry.register("admin_event_subscribers", "Clients following /api/events", subscribers.clone());
        let events_refused = Counter::default();
        registry.register(
            "admin_events_refused",
            "/api/events requests answered 503 because max_event_subscribers were following it",
            events_refused.clone(),
        );
        let requests_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "admin_requests_refused",
            "Admin requests refused, by reason (host: 421, a Host that does not name the listener; cross_site: \
             403, a command from another origin; no_header: 403, a command without X-Reveille or the token; \
             token: 401, a command without the right token)",
            requests_refused.clone(),
        );
        for reason in ["host", "cross_site", "no_header", "token"] {
            let _ = requests_refused.get_or_create(&ReasonLabels { reason });
        }
        Self { open, refused, timeouts, subscribers, events_refused, requests_refused }
    }

    pub fn connection_opened(&self) {
        self.open.inc();
    }

    pub fn connection_closed(&self) {
        self.open.dec();
    }

    pub fn connection_refused(&self) {
        self.refused.inc();
    }

    /// A connection closed by a timeout: `header`, `idle` or `send`.
    pub fn timeout(&self, kind: &'static str) {
        self.timeouts.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn subscribers(&self, delta: i64) {
        self.subscribers.inc_by(delta);
    }

    pub fn events_refused(&self) {
        self.events_refused.inc();
    }

    /// A request refused by the listener's access rules: `host`, `cross_site`, `no_header` or `token`.
    pub fn request_refused(&self, reason: &'static str) {
        self.requests_refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}

#[derive(Clone, Debug)]
pub struct TlsMetrics {
    certificates: Gauge,
    expiry_days: ExpiryDays,
    expiry_timestamp: Gauge,
    rejected: Family<SourceLabels, Counter>,
    handshakes: Counter,
    failures: Family<ReasonLabels, Counter>,
    events: Events,
}

impl TlsMetrics {
    fn register(registry: &mut Registry, events: Events) -> Self {
        let certificates = Gauge::default();
        registry.register("tls_certificates", "TLS certificates loaded and in force", certificates.clone());
        let expiry_days = ExpiryDays(Arc::new(std::sync::atomic::AtomicI64::new(NO_EXPIRY)));
        registry.register(
            "tls_certificate_expiry_days",
            "Days until the earliest expiry among the certificates in force (negative: expired)",
            expiry_days.clone(),
        );
        let expiry_timestamp = Gauge::default();
        registry.register(
            "tls_certificate_earliest_expiry_timestamp_seconds",
            "Unix time of the earliest expiry among the certificates in force (0: none loaded)",
            expiry_timestamp.clone(),
        );
        let rejected = Family::<SourceLabels, Counter>::default();
        registry.register(
            "tls_certificate_errors",
            "Certificates rejected (unreadable, malformed, key mismatch), by source (dir, etcd)",
            rejected.clone(),
        );
        let handshakes = Counter::default();
        registry.register("tls_handshakes", "TLS handshakes completed", handshakes.clone());
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason (unrecognized_name, protocol_version, incompatible, \
             no_application_protocol, client_alert, invalid, timeout, closed, other)",
            failures.clone(),
        );
        Self { certificates, expiry_days, expiry_timestamp, rejected, handshakes, failures, events }
    }

    /// The certificates in force changed: `count` of them, the earliest expiring at `earliest` (epoch seconds).
    pub fn certificates(&self, count: usize, earliest: Option<i64>) {
        self.events.publish("certificates", serde_json::json!({ "certificates": count, "earliest_expiry": earliest }));
        self.certificates.set(count as i64);
        self.expiry_days.0.store(earliest.unwrap_or(NO_EXPIRY), Ordering::Relaxed);
        self.expiry_timestamp.set(earliest.unwrap_or(0));
    }

    pub fn rejected(&self, source: &'static str) {
        self.rejected.get_or_create(&SourceLabels { source }).inc();
    }

    #[inline]
    pub fn handshake(&self) {
        self.handshakes.inc();
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// All of reveille's metrics.
pub struct Metrics {
    registry: Registry,
    passivation: PassivationMetrics,
    tls: TlsMetrics,
    /// The events feed (`/api/events`), published to by the parts that hold these metrics.
    events: Events,
    acme: AcmeMetrics,
    cluster: ClusterMetrics,
    admin: AdminMetrics,
    requests: Family<ServiceClassLabels, Counter>,
    unrouted: Family<KindLabels, Counter>,
    duration: LatencyHistogram,
    service_duration: Family<ServiceLabels, LatencyHistogram, fn() -> LatencyHistogram>,
    open_connections: Gauge,
    connections: Counter,
    worker_connections: Family<WorkerLabels, Counter>,
    header_timeouts: Counter,
    overloaded: Gauge,
    shed: Counter,
    evicted: Counter,
    refused_connections: Family<ReasonLabels, Counter>,
    send_timeouts: Family<KindLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    routes: Gauge,
    services: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    etcd_connected: Gauge,
    etcd_revision: Gauge,
    etcd_events: Counter,
    etcd_rejected: Counter,
    etcd_resyncs: Counter,
    access_log_lines: Counter,
    access_log_dropped: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reveille");
        let requests = Family::<ServiceClassLabels, Counter>::default();
        registry.register("requests", "Requests answered, by service and status class", requests.clone());

        let unrouted = Family::<KindLabels, Counter>::default();
        registry.register(
            "unrouted_requests",
            "Requests answered without a service: unknown host (404), missing/malformed Host (400), route to an undefined service (503)",
            unrouted.clone(),
        );

        let service_duration: Family<ServiceLabels, LatencyHistogram, fn() -> LatencyHistogram> =
            Family::new_with_constructor(service_latency);
        registry.register(
            "service_request_duration_seconds",
            "Time from request received to response headers sent, by service (created on its first request)",
            service_duration.clone(),
        );

        let duration = LatencyHistogram::new(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            duration.clone(),
        );

        let open_connections = Gauge::default();
        registry.register("open_connections", "Client connections currently open", open_connections.clone());
        let connections = Counter::default();
        registry.register("connections", "Client connections accepted", connections.clone());
        let worker_connections = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "worker_connections",
            "Client connections accepted, by the worker thread that serves them (per-core scheduler; 0 otherwise)",
            worker_connections.clone(),
        );
        let header_timeouts = Counter::default();
        registry.register(
            "header_timeouts",
            "Client connections closed because request headers did not arrive in time",
            header_timeouts.clone(),
        );
        let overloaded = Gauge::default();
        registry.register(
            "overloaded",
            "1 while nearly every connection slot is taken and client waits are cut to the overload timeout",
            overloaded.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "connections_shed",
            "Client connections closed to keep slots free: at the overload timeout (idle, or slow to send a request head or body), or evicted for a newcomer",
            shed.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Client connections closed because every slot was taken and a newcomer needed one (also counted in connections_shed)",
            evicted.clone(),
        );
        let refused_connections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed as soon as they were accepted, by reason (per_address: the address already holds max_connections_per_address)",
            refused_connections.clone(),
        );
        let send_timeouts = Family::<KindLabels, Counter>::default();
        registry.register(
            "send_timeouts",
            "Responses given up because the client read none of them within the send timeout (the overload timeout under pressure): kind=connection (HTTP/1.1, the connection closed), kind=stream (h2, the stream reset, its backend connection released)",
            send_timeouts.clone(),
        );

        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register("upstream_errors", "Failed upstream attempts, by kind", upstream_errors.clone());

        let routes = Gauge::default();
        registry.register("routes", "Routes in the table in force", routes.clone());
        let services = Gauge::default();
        registry.register("services", "Services in the table in force", services.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "route_reloads",
            "Route table loads, by source and result (ok; failed, empty, missing: refused, the last table kept)",
            reloads.clone(),
        );

        let etcd_connected = Gauge::default();
        registry.register("etcd_connected", "1 while the etcd watch is established, else 0", etcd_connected.clone());
        let etcd_revision = Gauge::default();
        registry.register("etcd_revision", "Last etcd revision applied", etcd_revision.clone());
        let etcd_events = Counter::default();
        registry.register(
            "etcd_events_applied",
            "Route and service changes applied from etcd watch events",
            etcd_events.clone(),
        );
        let etcd_rejected = Counter::default();
        registry.register(
            "etcd_rejected_values",
            "etcd values rejected (bad JSON, bad hostname, bad backend...)",
            etcd_rejected.clone(),
        );
        let etcd_resyncs = Counter::default();
        registry.register("etcd_resyncs", "Full re-lists of etcd after a broken watch", etcd_resyncs.clone());
        let access_log_lines = Counter::default();
        registry.register(
            "access_log_lines",
            "Access-log lines written to their destination",
            access_log_lines.clone(),
        );
        let access_log_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines not written, by reason (overflow: the writer was behind and the buffer full; \
             write_error: the destination refused them; closed: logged after shutdown)",
            access_log_dropped.clone(),
        );
        let events = Events::new();
        let passivation = PassivationMetrics::register(&mut registry, events.clone());
        let tls = TlsMetrics::register(&mut registry, events.clone());
        let acme = AcmeMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        let admin = AdminMetrics::register(&mut registry);

        Self {
            registry,
            events,
            passivation,
            tls,
            acme,
            cluster,
            admin,
            requests,
            unrouted,
            duration,
            service_duration,
            open_connections,
            connections,
            worker_connections,
            header_timeouts,
            overloaded,
            shed,
            evicted,
            refused_connections,
            send_timeouts,
            upstream_errors,
            routes,
            services,
            reloads,
            etcd_connected,
            etcd_revision,
            etcd_events,
            etcd_rejected,
            etcd_resyncs,
            access_log_lines,
            access_log_dropped,
        }
    }

    /// Creates the handles for one service; called once per service per table (see `Service::stats`).
    pub fn service_stats(&self, service: &str) -> ServiceStats {
        let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.requests.get_or_create(&ServiceClassLabels { service: service.to_string(), class }).clone()
        });
        let latency = self.service_duration.get_or_create(&ServiceLabels { service: service.to_string() }).clone();
        ServiceStats { by_class, latency }
    }

    /// The counter of `reveille_worker_connections_total` for worker `worker` (created at 0, so every worker
    /// shows up from the start).
    pub fn worker_connections(&self, worker: usize) -> Counter {
        self.worker_connections.get_or_create(&WorkerLabels { worker }).clone()
    }

    /// The counters of `reveille_unrouted_requests_total`, one per kind of `L`.
    pub fn unrouted<L: LabelValue>(&self) -> LabeledCounters<L> {
        LabeledCounters::new(&self.unrouted, |kind| KindLabels { kind })
    }

    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.duration.observe(d);
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn header_timeout(&self) {
        self.header_timeouts.inc();
    }

    pub fn set_overloaded(&self, on: bool) {
        self.overloaded.set(i64::from(on));
    }

    pub fn connection_shed(&self) {
        self.shed.inc();
    }

    /// A connection evicted for a newcomer: counted as evicted and as shed.
    pub fn connection_evicted(&self) {
        self.evicted.inc();
        self.shed.inc();
    }

    /// A connection closed at once, for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.refused_connections.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A response given up for a client that read none of it: `kind` is `connection` or `stream`.
    pub fn send_timeout(&self, kind: &'static str) {
        self.send_timeouts.get_or_create(&KindLabels { kind }).inc();
    }

    /// The counters of `reveille_upstream_errors_total`, one per kind of `L`.
    pub fn upstream_errors<L: LabelValue>(&self) -> LabeledCounters<L> {
        LabeledCounters::new(&self.upstream_errors, |kind| KindLabels { kind })
    }

    /// `reveille_access_log_lines_total`: the access log counts the lines it wrote.
    pub fn access_log_lines(&self) -> Counter {
        self.access_log_lines.clone()
    }

    /// The counters of `reveille_access_log_dropped_total`, one per reason of `L`.
    pub fn access_log_dropped<L: LabelValue>(&self) -> LabeledCounters<L> {
        LabeledCounters::new(&self.access_log_dropped, |reason| ReasonLabels { reason })
    }

    pub fn table_installed(&self, routes: usize, services: usize) {
        self.events.publish("routes", serde_json::json!({ "routes": routes, "services": services }));
        self.routes.set(routes as i64);
        self.services.set(services as i64);
    }

    /// Counts one load of a route source: `result` is `ok`, or why that version was refused.
    pub fn reload(&self, source: &'static str, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { source, result }).inc();
    }

    pub fn etcd_connected(&self, up: bool) {
        self.etcd_connected.set(up as i64);
    }

    pub fn etcd_revision(&self, revision: i64) {
        self.etcd_revision.set(revision);
    }

    pub fn etcd_events(&self, n: u64) {
        self.etcd_events.inc_by(n);
    }

    pub fn etcd_rejected(&self) {
        self.etcd_rejected.inc();
    }

    pub fn etcd_resync(&self) {
        self.etcd_resyncs.inc();
    }

    pub fn passivation(&self) -> &PassivationMetrics {
        &self.passivation
    }

    pub fn tls(&self) -> &TlsMetrics {
        &self.tls
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn acme(&self) -> &AcmeMetrics {
        &self.acme
    }

    pub fn cluster(&self) -> &ClusterMetrics {
        &self.cluster
    }

    pub fn admin(&self) -> &AdminMetrics {
        &self.admin
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_exposition_is_cumulative() {
        let m = Metrics::new();
        for ms in [0, 3, 3, 40, 70_000] {
            m.observe_duration(Duration::from_millis(ms));
        }
        let text = m.encode();
        for line in [
            "reveille_request_duration_seconds_count 5",
            "reveille_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "reveille_request_duration_seconds_bucket{le=\"0.005\"} 3",
            "reveille_request_duration_seconds_bucket{le=\"0.05\"} 4",
            "reveille_request_duration_seconds_bucket{le=\"60.0\"} 4",
            "reveille_request_duration_seconds_bucket{le=\"+Inf\"} 5",
            "reveille_request_duration_seconds_sum 70.046",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn each_service_has_its_latency_histogram() {
        let m = Metrics::new();
        let shop = m.service_stats("shop");
        shop.record(200, Duration::from_millis(2));
        shop.record(503, Duration::from_millis(1500));
        m.service_stats("blog").record(200, Duration::from_millis(50));
        let text = m.encode();
        for line in [
            "reveille_service_request_duration_seconds_count{service=\"shop\"} 2",
            "reveille_service_request_duration_seconds_bucket{le=\"0.005\",service=\"shop\"} 1",
            "reveille_service_request_duration_seconds_bucket{le=\"1.0\",service=\"shop\"} 1",
            "reveille_service_request_duration_seconds_bucket{le=\"2.5\",service=\"shop\"} 2",
            "reveille_service_request_duration_seconds_bucket{le=\"0.025\",service=\"blog\"} 0",
            "reveille_service_request_duration_seconds_bucket{le=\"0.1\",service=\"blog\"} 1",
            "reveille_requests_total{service=\"shop\",class=\"5xx\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[derive(Clone, Copy)]
    enum Kind {
        A,
        B,
    }

    impl LabelValue for Kind {
        const ALL: &'static [Self] = &[Kind::A, Kind::B];
        fn as_label(self) -> &'static str {
            match self {
                Kind::A => "a",
                Kind::B => "b",
            }
        }
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn labeled_counters_expose_every_value_from_the_start() {
        let m = Metrics::new();
        let counters = m.upstream_errors::<Kind>();
        counters.inc(Kind::B);
        counters.inc(Kind::B);
        let text = m.encode();
        assert!(text.contains("reveille_upstream_errors_total{kind=\"a\"} 0"), "{text}");
        assert!(text.contains("reveille_upstream_errors_total{kind=\"b\"} 2"), "{text}");
    }
}
