//! Metrics of TLS termination: certificates in force, their expiry, handshakes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::labels::ReasonLabels;

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
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    certificates: Gauge,
    expiry_days: ExpiryDays,
    expiry_timestamp: Gauge,
    rejected: Family<SourceLabels, Counter>,
    handshakes: Counter,
    failures: Family<ReasonLabels, Counter>,
}

impl TlsMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
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
        Self { certificates, expiry_days, expiry_timestamp, rejected, handshakes, failures }
    }

    /// The certificates in force changed: `count` of them, the earliest expiring at `earliest` (epoch seconds).
    pub fn certificates(&self, count: usize, earliest: Option<i64>) {
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
