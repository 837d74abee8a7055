//! The server side's request-head parser (`src/http1/request.rs`): an h2load-shaped request and a browser's,
//! parsed in place with `httparse` and judged by hyper's rules. hyper's server side parsed the same heads inside
//! its dispatcher; this is the first step of reveille's own (issue 30).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use reveille::http1_bench::parse_request_head;

const H2LOAD: &[u8] = b"GET / HTTP/1.1\r\nhost: b.test\r\nuser-agent: h2load nghttp2/1.52.0\r\n\r\n";
const BROWSER: &[u8] = b"GET /assets/app.js?v=3 HTTP/1.1\r\n\
Host: app.test\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: */*\r\n\
Accept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://app.test/\r\n\
Connection: keep-alive\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Site: same-origin\r\n\r\n";

fn bench(c: &mut Criterion) {
    // What is timed does the work.
    assert_eq!(parse_request_head(&mut BytesMut::from(H2LOAD)), Some(2));
    assert_eq!(parse_request_head(&mut BytesMut::from(BROWSER)), Some(11));

    let mut group = c.benchmark_group("http1");
    for (name, head) in [("parse_request_head_h2load", H2LOAD), ("parse_request_head_browser", BROWSER)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(head),
                |mut buf| black_box(parse_request_head(&mut buf)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
