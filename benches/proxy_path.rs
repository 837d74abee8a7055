//! The data path end to end, in-process: one request through a running reveille to a backend and back, on a
//! kept-alive client connection, over loopback. It covers what a request costs reveille — parsing, routing,
//! header rewriting, the upstream pool's checkout and return, response streaming, metrics — so a regression in
//! any of them shows up here.
//!
//! Run with `cargo bench --bench proxy_path`. Benchmarks:
//!
//! - `direct/get_100b`: the same request straight to the backend (the floor: client, backend and loopback);
//! - `proxied/get_100b`: a `GET` answered with 100 bytes, through reveille;
//! - `proxied/post_1k`: a `POST` with a 1 KiB body (read whole, then forwarded);
//! - `proxied/get_64k`: a 64 KiB response streamed through.
//!
//! The difference between `proxied/get_100b` and `direct/get_100b` is reveille's cost per request. Client,
//! proxy and backend share the machine (the backend on its own thread), so absolute numbers include their
//! scheduling; compare runs on the same machine. The peer comparison with nginx and HAProxy, pinned per core,
//! is `reveille-lab peers`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use reveille::{Config, Listeners, ProxySettings, Running};
use tokio::net::TcpStream;

const SMALL: &[u8; 100] =
    b"reveille proxy_path bench: a fixed response body from the upstream backend, one hundred bytes in al\n";

fn large() -> &'static [u8] {
    Box::leak(vec![b'x'; 64 * 1024].into_boxed_slice())
}

/// A kept-alive HTTP/1.1 client connection.
struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    host: &'static str,
}

impl Client {
    async fn connect(addr: SocketAddr, host: &'static str) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Client { sender, host }
    }

    /// One request; returns the response body's length.
    async fn request(&mut self, method: &str, path: &str, body: &'static [u8]) -> usize {
        self.sender.ready().await.expect("connection ready");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("response");
        assert!(resp.status().is_success(), "status {}", resp.status());
        resp.into_body().collect().await.expect("body").to_bytes().len()
    }
}

/// A reveille routing `small.test` and `large.test` to two backends; kept running for the whole bench.
async fn start_proxy(dir: &std::path::Path, small: u16, large: u16) -> Running {
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[services.small]\nbackends = [\"127.0.0.1:{small}\"]\n[services.large]\nbackends = [\"127.0.0.1:{large}\"]\n\
             [routes]\n\"small.test\" = \"small\"\n\"large.test\" = \"large\"\n"
        ),
    )
    .unwrap();
    let config = Config {
        http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        routes: Some(routes),
        proxy: ProxySettings { access_log: false, ..ProxySettings::default() },
        // One worker, on this runtime: the per-core scheduler would hand some connections to a second thread.
        threads: 1,
        ..Config::default()
    };
    let listeners = Listeners::bind(&config).await.expect("bind");
    reveille::start(&config, listeners, reveille::docker(&config)).await.expect("start")
}

fn bench(c: &mut Criterion) {
    let small_port = testkit::backend::start_backend(SMALL);
    let large_port = testkit::backend::start_backend(large());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = rt.block_on(start_proxy(dir.path(), small_port, large_port));
    let proxy = running.http_addr;
    let backend: SocketAddr = ([127, 0, 0, 1], small_port).into();

    let mut group = c.benchmark_group("direct");
    let mut client = rt.block_on(Client::connect(backend, "small.test"));
    group.bench_function("get_100b", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert_eq!(client.request("GET", "/", b"").await, SMALL.len());
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("proxied");
    let mut small = rt.block_on(Client::connect(proxy, "small.test"));
    let upload: &'static [u8] = Box::leak(vec![b'u'; 1024].into_boxed_slice());
    for (name, method, body) in [("get_100b", "GET", &b""[..]), ("post_1k", "POST", upload)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert_eq!(small.request(method, "/", body).await, SMALL.len());
                    }
                    start.elapsed()
                })
            })
        });
    }
    // Connected only now: reveille closes a connection that sends no request within its header timeout.
    let mut large_client = rt.block_on(Client::connect(proxy, "large.test"));
    group.bench_function("get_64k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert_eq!(large_client.request("GET", "/", b"").await, 64 * 1024);
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    running.shutdown();
    rt.block_on(running.wait(Duration::from_secs(2)));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
