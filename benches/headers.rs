//! The header rewriting every proxied request and response goes through (`src/proxy/headers.rs`): hop-by-hop
//! removal (RFC 9110 §7.6.1) and the forwarding headers. Inputs: a load generator's bare request, a browser's
//! request (with `Connection: keep-alive`), a request from a trusted proxy (its `X-Forwarded-For` extended), and
//! a backend's response (`Connection: keep-alive`). Each iteration rewrites a fresh copy (the copy is not
//! timed). Before the one-pass check, the hop-by-hop removal hashed every fixed name on every message; see
//! docs/design/performance.md ("What each change bought").

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::HeaderMap;
use reveille::header_bench::{response, Forwarding};

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, value.parse().unwrap());
    }
    h
}

fn bench(c: &mut Criterion) {
    let client: IpAddr = [192, 0, 2, 10].into();
    let untrusted = Forwarding::new(client, Vec::new());
    let trusted = Forwarding::new([10, 0, 0, 2].into(), vec!["10.0.0.0/8".parse().unwrap()]);

    let bare = headers(&[("host", "app.test"), ("user-agent", "wrk")]);
    let browser = headers(&[
        ("host", "app.test"),
        ("connection", "keep-alive"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("upgrade-insecure-requests", "1"),
    ]);
    let proxied = headers(&[
        ("host", "app.test"),
        ("user-agent", "curl/8.0"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-proto", "https"),
    ]);
    let backend = headers(&[
        ("server", "nginx"),
        ("date", "Tue, 01 Dec 2026 15:00:00 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "100"),
        ("connection", "keep-alive"),
    ]);

    // What is timed does the work: a browser request loses `Connection` and gains the forwarding headers; a
    // trusted proxy's `X-Forwarded-For` is extended; a response loses `Connection`.
    let mut h = browser.clone();
    untrusted.request(&mut h);
    assert!(!h.contains_key("connection") && h["x-forwarded-for"] == "192.0.2.10" && h["x-real-ip"] == "192.0.2.10");
    let mut h = proxied.clone();
    trusted.request(&mut h);
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2");
    let mut h = backend.clone();
    response(&mut h);
    assert!(!h.contains_key("connection") && h.len() == 4);

    let mut group = c.benchmark_group("headers");
    for (name, input, fwd) in [
        ("request_bare", &bare, &untrusted),
        ("request_browser", &browser, &untrusted),
        ("request_via_trusted_proxy", &proxied, &trusted),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || input.clone(),
                |mut h| {
                    fwd.request(&mut h);
                    black_box(h)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("response_keep_alive", |b| {
        b.iter_batched(
            || backend.clone(),
            |mut h| {
                response(&mut h);
                black_box(h)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
