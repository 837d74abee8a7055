//! Metrics of the admin listener: its connections, what its limits closed or refused, its events subscribers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{KindLabels, ReasonLabels};

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
    pub(super) fn register(registry: &mut Registry) -> Self {
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
