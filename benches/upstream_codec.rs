//! The codec of reveille's own HTTP/1.1 client side (`src/upstream/codec.rs`): the two steps every proxied
//! request takes on the backend side, the request head written into the connection's buffer and the backend's
//! response head parsed in place (header values are slices of the bytes read). The response is nginx's for a
//! static file: eight fields. Before this codec, hyper's client did both, and handed every request and response
//! between the request's task and a task per backend connection; see `docs/design/upstream.md` and
//! `docs/design/performance.md` ("The upstream pool and what a request costs").

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, Method};
use reveille::upstream_codec_bench::{encode_request, parse_response};

const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Tue, 01 Dec 2026 18:00:00 GMT\r\n\
Content-Type: text/plain\r\n\
Content-Length: 100\r\n\
Last-Modified: Tue, 01 Dec 2026 17:00:00 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"692dd3b0-64\"\r\n\
Accept-Ranges: bytes\r\n\r\n";

fn bench(c: &mut Criterion) {
    let mut request = HeaderMap::new();
    for (name, value) in [
        ("host", "app.test"),
        ("user-agent", "wrk"),
        ("x-forwarded-for", "192.0.2.10"),
        ("x-forwarded-host", "app.test"),
        ("x-forwarded-proto", "http"),
        ("x-real-ip", "192.0.2.10"),
    ] {
        request.append(name, value.parse().unwrap());
    }

    // What is timed does the work.
    let mut out = BytesMut::new();
    encode_request(&mut out, &Method::GET, "/index.html?x=1", &request);
    assert!(out.starts_with(b"GET /index.html?x=1 HTTP/1.1\r\nhost: app.test\r\n") && out.ends_with(b"\r\n\r\n"));
    let mut buf = BytesMut::from(NGINX_RESPONSE);
    assert_eq!(parse_response(&mut buf), Some(8));
    assert!(buf.is_empty());

    let mut group = c.benchmark_group("upstream_codec");
    group.bench_function("encode_request_head", |b| {
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            encode_request(&mut out, &Method::GET, black_box("/index.html?x=1"), black_box(&request));
            black_box(out.split());
        })
    });
    group.bench_function("parse_nginx_response_head", |b| {
        b.iter_batched(
            || BytesMut::from(NGINX_RESPONSE),
            |mut buf| black_box(parse_response(&mut buf)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
