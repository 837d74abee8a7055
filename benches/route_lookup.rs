//! Route table lookup cost as the table grows, and request-host normalisation.
//!
//! Run with `cargo bench --bench route_lookup`. Each table holds `N` tenants, and every tenant has two routes,
//! the way a multi-tenant platform usually names them: `tN.example.com` (exact) and `*.tN.example.com`
//! (wildcard), so a table of `N` tenants has `2N` routes. For each size we measure:
//!
//! - `exact_hit`: `tK.example.com`, one hash lookup;
//! - `wildcard_hit`: `a.b.tK.example.com`, an exact miss then wildcard lookups until `tK.example.com` matches;
//! - `miss`: `nobody.example.org`, an exact miss and a wildcard miss for every suffix.
//!
//! Hits cycle through 4096 pseudo-random tenants, so on the big tables lookups touch memory that is not in
//! cache, as they would with real traffic spread across tenants.
//!
//! When run as a test (`cargo test --benches`, no `--bench` flag) the million-tenant table is skipped, to keep
//! debug builds quick.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use reveille::{normalize_request_host, Backend, HostPattern, RouteTable};

/// Number of lookup keys each hit benchmark cycles through (a power of two).
const KEYS: usize = 4096;

fn table_sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &[1, 10_000, 1_000_000]
    } else {
        &[1, 10_000]
    }
}

/// A table of `tenants` tenants, each with an exact and a wildcard route to one shared service.
fn build_table(tenants: usize) -> RouteTable {
    let mut b = RouteTable::builder();
    b.service("svc", vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
    for i in 0..tenants {
        b.route(HostPattern::parse(&format!("t{i}.example.com")).unwrap(), "svc");
        b.route(HostPattern::parse(&format!("*.t{i}.example.com")).unwrap(), "svc");
    }
    b.build_table().unwrap()
}

/// `KEYS` hosts for pseudo-randomly chosen tenants, formatted by `host`.
fn keys(tenants: usize, host: impl Fn(usize) -> String) -> Vec<String> {
    // A fixed LCG (Knuth's MMIX constants): reproducible, no extra dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..KEYS)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            host((state >> 33) as usize % tenants)
        })
        .collect()
}

/// Benchmarks `table.lookup` over `hosts` in turn; asserts first that every host hits (or misses) as expected.
fn bench_lookups(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    table: &RouteTable,
    hosts: &[String],
    expect_hit: bool,
) {
    assert!(hosts.iter().all(|h| table.find(h).is_some() == expect_hit));
    let mask = hosts.len() - 1;
    let mut i = 0;
    c.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            table.lookup(black_box(&hosts[i]))
        })
    });
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for &tenants in table_sizes() {
        let started = Instant::now();
        let table = build_table(tenants);
        eprintln!("built a table of {tenants} tenants ({} routes) in {:.2?}", table.route_count(), started.elapsed());
        let exact = keys(tenants, |k| format!("t{k}.example.com"));
        let wildcard = keys(tenants, |k| format!("a.b.t{k}.example.com"));
        let miss = ["nobody.example.org".to_string()];
        bench_lookups(&mut group, BenchmarkId::new("exact_hit", tenants), &table, &exact, true);
        bench_lookups(&mut group, BenchmarkId::new("wildcard_hit", tenants), &table, &wildcard, true);
        bench_lookups(&mut group, BenchmarkId::new("miss", tenants), &table, &miss, false);
        drop(table);
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    c.bench_function("normalize_request_host/mixed_case_with_port", |b| {
        b.iter(|| normalize_request_host(black_box("Tenant-42.Example.com:8080")))
    });
    c.bench_function("normalize_request_host/already_normal", |b| {
        b.iter(|| normalize_request_host(black_box("tenant-42.example.com")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = lookup, normalize
}
criterion_main!(benches);
