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
//! Path routes (`path_lookup`): 100k hosts with a host route each, of which 10k also have 10 path routes (`/app0/`
//! to `/app4/` and `/app0/v2/` to `/app4/v2/`), looked up with a request path as the proxy does:
//!
//! - `host_without_paths`: a host of the 90k without path routes (`/app3/v2/users/7`): the path is never read;
//! - `path_hit`: a host with path routes, `/app3/v2/users/7`, which reaches `/app3/v2/`;
//! - `path_miss_fallback`: a host with path routes, `/static/css/site.css`, which matches no prefix and falls
//!   back to the host route.
//!
//! Hits cycle through 4096 pseudo-random tenants, so on the big tables lookups touch memory that is not in
//! cache, as they would with real traffic spread across tenants.
//!
//! When run as a test (`cargo test --benches`, no `--bench` flag) the million-tenant table is skipped, to keep
//! debug builds quick.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use reveille::{normalize_request_host, Backend, HostPattern, RouteKey, RouteTable};

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

/// Hosts, and of them those with path routes, in the path benchmarks (smaller when run as a test).
fn path_sizes() -> (usize, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (100_000, 10_000)
    } else {
        (1_000, 100)
    }
}

/// `hosts` hosts `hN.example.com` with a host route each; the first `with_paths` also have 10 path routes.
fn build_path_table(hosts: usize, with_paths: usize) -> RouteTable {
    let mut b = RouteTable::builder();
    b.service("svc", vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
    b.service("api", vec![Backend::parse("127.0.0.1:2").unwrap()]).unwrap();
    for i in 0..hosts {
        b.route(HostPattern::parse(&format!("h{i}.example.com")).unwrap(), "svc");
        if i < with_paths {
            for j in 0..5 {
                b.route_with(RouteKey::parse(&format!("h{i}.example.com/app{j}/")).unwrap(), "api", false);
                b.route_with(RouteKey::parse(&format!("h{i}.example.com/app{j}/v2/")).unwrap(), "api", true);
            }
        }
    }
    b.build_table().unwrap()
}

/// Benchmarks `table.lookup_request` of `path` over `hosts` in turn; asserts first that each reaches `service`.
fn bench_path_lookups(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    table: &RouteTable,
    hosts: &[String],
    path: &str,
    service: &str,
) {
    for h in hosts {
        let found = table.find_request(h, path).map(|(s, _)| s.name());
        assert_eq!(found, Some(service), "{h}{path}");
    }
    let mask = hosts.len() - 1;
    let mut i = 0;
    c.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            table.lookup_request(black_box(&hosts[i]), || black_box(path))
        })
    });
}

fn path_lookup(c: &mut Criterion) {
    let (hosts, with_paths) = path_sizes();
    let mut group = c.benchmark_group("path_lookup");
    let started = Instant::now();
    let table = build_path_table(hosts, with_paths);
    eprintln!(
        "built a table of {hosts} hosts, {with_paths} with path routes ({} routes) in {:.2?}",
        table.route_count(),
        started.elapsed()
    );
    let plain = keys(hosts - with_paths, |k| format!("h{}.example.com", with_paths + k));
    let pathed = keys(with_paths, |k| format!("h{k}.example.com"));
    bench_path_lookups(&mut group, "host_without_paths", &table, &plain, "/app3/v2/users/7", "svc");
    bench_path_lookups(&mut group, "path_hit", &table, &pathed, "/app3/v2/users/7", "api");
    bench_path_lookups(&mut group, "path_miss_fallback", &table, &pathed, "/static/css/site.css", "svc");
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
    targets = lookup, path_lookup, normalize
}
criterion_main!(benches);
