//! Prometheus metrics: one registry for the process, with typed handles so the request path only increments
//! atomics (per-service handles are cached on the [`crate::routes::Service`] itself).
//!
//! Owns metric names, help texts and the text exposition; does not decide when things are counted, nor what a
//! label value means. It imports nothing from the rest of the crate: the modules that count pass their own
//! vocabulary as label values (`&'static str`, or an enum implementing [`LabelValue`], such as the proxy's
//! unrouted and upstream error kinds).
//!
//! One file per domain: `passivation.rs`, `cluster.rs`, `tls.rs`, `acme.rs`, `admin.rs`, `balancer.rs`; the data path, the
//! route table, etcd and the access log are here. `labels.rs` holds the labels several domains use,
//! `histogram.rs` the latency histograms.

mod acme;
mod admin;
mod balancer;
mod cluster;
mod histogram;
mod labels;
mod passivation;
mod tls;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) use acme::AcmeMetrics;
pub(crate) use admin::AdminMetrics;
pub(crate) use balancer::BalancerMetrics;
pub(crate) use cluster::ClusterMetrics;
pub(crate) use histogram::ServiceStats;
pub(crate) use labels::{LabelValue, LabeledCounters};
pub(crate) use passivation::PassivationMetrics;
pub(crate) use tls::TlsMetrics;

use histogram::{service_latency, LatencyHistogram};
use labels::{KindLabels, ReasonLabels, ServiceLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceClassLabels {
    service: String,
    class: &'static str,
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

/// All of reveille's metrics.
pub struct Metrics {
    registry: Registry,
    passivation: PassivationMetrics,
    tls: TlsMetrics,
    acme: AcmeMetrics,
    cluster: ClusterMetrics,
    admin: AdminMetrics,
    balancer: BalancerMetrics,
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
        let passivation = PassivationMetrics::register(&mut registry);
        let tls = TlsMetrics::register(&mut registry);
        let acme = AcmeMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        let admin = AdminMetrics::register(&mut registry);
        let balancer = BalancerMetrics::register(&mut registry);

        Self {
            registry,
            passivation,
            tls,
            acme,
            cluster,
            admin,
            balancer,
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

    pub fn acme(&self) -> &AcmeMetrics {
        &self.acme
    }

    pub fn cluster(&self) -> &ClusterMetrics {
        &self.cluster
    }

    /// The balancer's metrics: ejections and retries.
    pub fn balancer(&self) -> &BalancerMetrics {
        &self.balancer
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
