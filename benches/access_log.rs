//! The access log's cost on the request path: formatting one line, and handing it to the log (format, lock of
//! the thread's buffer, clock), with the writer thread writing to `io::sink()` meanwhile. For reference, the
//! same line as the `tracing` event it used to be, through `tracing-subscriber`'s fmt layer (inside a
//! `conn` span, as on the data path) into `io::sink()`.
//!
//! Run with `cargo bench --bench access_log`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reveille::{AccessLog, AccessLogEntry, AccessLogFormat, AccessLogFormatter, AccessLogSettings, Metrics};

fn entry() -> AccessLogEntry<'static> {
    AccessLogEntry {
        peer: "203.0.113.7",
        host: "app.tenant-42.example.com",
        method: "GET",
        path: "/api/v1/items?page=2&sort=desc",
        status: 200,
        duration: Duration::from_micros(1_234),
        service: "tenant-42",
        backend: "10.0.3.17:8080",
    }
}

const FORMATS: [(&str, AccessLogFormat); 2] = [("text", AccessLogFormat::Text), ("json", AccessLogFormat::Json)];

fn format(c: &mut Criterion) {
    let mut g = c.benchmark_group("access_log/format");
    g.throughput(Throughput::Elements(1));
    let e = entry();
    for (name, format) in FORMATS {
        let mut f = AccessLogFormatter::new(format);
        let mut buf = Vec::with_capacity(512);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                f.line(&mut buf, SystemTime::now(), black_box(&e));
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("access_log/log");
    g.throughput(Throughput::Elements(1));
    let e = entry();
    for (name, format) in FORMATS {
        let metrics = Metrics::new();
        let settings = AccessLogSettings { format, ..AccessLogSettings::default() };
        let log = AccessLog::with_writer(&settings, Box::new(std::io::sink()), &metrics).unwrap();
        g.bench_function(name, |b| b.iter(|| log.log(black_box(&e))));
        assert!(log.close(Duration::from_secs(5)));
    }
    g.finish();
}

/// The line as a `tracing` event, formatted by `tracing-subscriber` (what reveille did before).
fn tracing_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("access_log/tracing_reference");
    g.throughput(Throughput::Elements(1));
    let e = entry();
    for name in ["text", "json"] {
        let builder = tracing_subscriber::fmt().with_writer(std::io::sink).with_ansi(false);
        let dispatch = if name == "json" {
            tracing::Dispatch::new(
                builder.json().flatten_event(true).with_current_span(true).with_span_list(false).finish(),
            )
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("conn", peer = %"203.0.113.7:51234", tls = false);
            let _entered = span.enter();
            g.bench_function(name, |b| {
                b.iter(|| {
                    let e = black_box(&e);
                    tracing::info!(
                        target: "reveille::access",
                        host = e.host,
                        method = %e.method,
                        path = e.path,
                        status = e.status,
                        duration_ms = e.duration.as_micros() as f64 / 1000.0,
                        service = e.service,
                        backend = e.backend,
                    );
                })
            });
        });
    }
    g.finish();
}

criterion_group!(benches, format, handoff, tracing_reference);
criterion_main!(benches);
