//! Limits and timeouts on the client side: header read timeout (slowloris), idle keep-alive timeout, header
//! size, and the connection limit.

use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;
use reveille::ProxySettings as Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn settings() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

/// Reads until EOF; returns what was read and how long it took, or panics after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out)).await.expect("server should have closed the connection").ok();
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let a = Backend::echo("a").await;
    let s = Settings { header_read_timeout: Duration::from_millis(400), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]), s).await;

    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(proxy.http).await.unwrap();
    // A slowloris: a few header bytes every 100 ms, never finishing.
    let mut drip = TcpStream::connect(proxy.http).await.unwrap();
    let dripping = async {
        let start = Instant::now();
        drip.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n").await.unwrap();
        while start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if drip.write_all(b"X-A: b\r\n").await.is_err() {
                return start.elapsed();
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), drip.read(&mut buf)).await {
                return start.elapsed();
            }
        }
        panic!("slowloris connection was never closed");
    };
    let (silent_res, drip_elapsed) = tokio::join!(read_until_closed(&mut silent, Duration::from_secs(5)), dripping);
    assert!(silent_res.1 >= Duration::from_millis(350), "closed too early: {:?}", silent_res.1);
    assert!(drip_elapsed < Duration::from_secs(3), "slowloris kept the connection for {drip_elapsed:?}");
    assert!(proxy.metric("reveille_header_timeouts_total").await >= 2.0);

    // A slow but complete request on a kept-alive connection: the second head also has only 400 ms.
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (_, waited) = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_but_busy_ones_are_not() {
    let a = Backend::echo("a").await;
    // Idle timeout longer than the header timeout: idle time is not cut short by the header timer.
    let s = Settings {
        idle_timeout: Duration::from_millis(700),
        header_read_timeout: Duration::from_millis(300),
        ..settings()
    };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]), s).await;

    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    // Requests every 200 ms for 1.4 s: each gap is shorter than the idle timeout, the whole is longer.
    for _ in 0..7 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "connection closed while in use");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then idle: closed after about 700 ms, not after the 300 ms header timeout.
    let (_, waited) = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(400), "closed after {waited:?}, before the idle timeout");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // A request that takes longer than the idle timeout is not cut.
    let got = get(proxy.http, "app.test", "/sleep/1000").await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let a = Backend::echo("a").await;
    let s = Settings { max_header_size: 8192, ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]), s).await;
    let big = format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let reply = raw_exchange(proxy.http, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // Just under the limit passes.
    let ok = format!("GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(7_000));
    let reply = raw_exchange(proxy.http, ok.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_queues_extra_clients() {
    let a = Backend::echo("a").await;
    let s = Settings { max_connections: 2, ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]), s).await;

    // Two slow requests take both slots; a third client waits for a slot instead of being served at once.
    let started = Instant::now();
    let slow1 = tokio::spawn(get(proxy.http, "app.test", "/sleep/800"));
    let slow2 = tokio::spawn(get(proxy.http, "app.test", "/sleep/800"));
    eventually(Duration::from_secs(5), "both slow requests reached the backend", || async {
        a.hits.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    let third = get(proxy.http, "app.test", "/").await;
    let third_done = started.elapsed();
    assert_eq!(third.status, StatusCode::OK);
    assert!(third_done >= Duration::from_millis(700), "third client served after {third_done:?}, before a slot freed");
    assert_eq!(slow1.await.unwrap().status, StatusCode::OK);
    assert_eq!(slow2.await.unwrap().status, StatusCode::OK);
}
