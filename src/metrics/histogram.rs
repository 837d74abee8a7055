//! The latency histograms (the global one and one per service), updated with atomics only, and the per-service
//! handles resolved once per service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;

/// Per-service counters by status class and the service's latency histogram, resolved once per service.
#[derive(Debug, Clone)]
pub struct ServiceStats {
    pub(super) by_class: [Counter; 5],
    pub(super) latency: LatencyHistogram,
}

impl ServiceStats {
    /// Counts one response with this status, its head sent `elapsed` after the request arrived.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        let idx = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[idx].inc();
        self.latency.observe(elapsed);
    }

    /// Responses counted so far: all of them, and those of class 5xx (what the admin API's rates are made of).
    pub fn totals(&self) -> (u64, u64) {
        (self.by_class.iter().map(Counter::get).sum(), self.by_class[4].get())
    }
}

/// The buckets of `reveille_service_request_duration_seconds`: fewer than the global histogram's, as there is
/// one histogram per service; up to 30 s, so a request held through a wake lands in a bucket of its own.
const SERVICE_LATENCY_BOUNDS: [f64; 8] = [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0];

pub(super) fn service_latency() -> LatencyHistogram {
    LatencyHistogram::new(&SERVICE_LATENCY_BOUNDS)
}

/// A latency histogram updated with atomics only: prometheus-client's own takes a write lock per observation,
/// which every worker thread would contend on. Per-bucket counts (not cumulative; the encoder sums them), the
/// sum kept in microseconds.
#[derive(Debug, Clone)]
pub(super) struct LatencyHistogram(Arc<HistogramInner>);

#[derive(Debug)]
pub(super) struct HistogramInner {
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
    pub(super) fn new(bounds: &[f64]) -> Self {
        let bounds: Box<[f64]> = bounds.iter().copied().chain(std::iter::once(f64::MAX)).collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramInner { bounds, counts, sum_us: AtomicU64::new(0), count: AtomicU64::new(0) }))
    }

    #[inline]
    pub(super) fn observe(&self, d: Duration) {
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
