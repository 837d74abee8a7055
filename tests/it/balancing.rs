//! Several backends per service: round-robin, skipping a dead backend, 502 when none answers, 504 on a slow one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use http::{Request, StatusCode};
use reveille::ProxySettings as Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let b = [Backend::echo("b0").await, Backend::echo("b1").await, Backend::echo("b2").await];
    let proxy =
        TestProxy::start(&routes_file(&[("s", b.iter().map(|b| b.addr).collect())], &[("app.test", "s")])).await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(get(proxy.http, "app.test", "/").await.backend());
    }
    // Strict rotation: each window of three hits each backend once.
    for w in seen.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["b0", "b1", "b2"], "{seen:?}");
    }
    assert!(b.iter().all(|b| b.hits.load(Ordering::SeqCst) == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_skipped_even_with_a_body() {
    let live = Backend::echo("live").await;
    let dead = dead_addr().await;
    let proxy = TestProxy::start(&routes_file(&[("s", vec![dead, live.addr])], &[("app.test", "s")])).await;
    let mut counts = BTreeMap::new();
    // Every request carries a body; the rotation starts on the dead backend for every other one, so half of
    // them must be retried on the live backend with their body intact.
    for i in 0..6 {
        let payload = format!("payload {i}");
        let req = Request::post("/").header("host", "app.test").body(full(payload.clone())).unwrap();
        let got = send(proxy.http, req).await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {}", got.text);
        assert_eq!(got.json()["headers"]["content-length"][0], payload.len().to_string());
        *counts.entry(got.backend()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("live"), Some(&6));
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"connect_refused\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_502_naming_nothing_internal() {
    let proxy = TestProxy::start(&routes_file(
        &[("tenant-x", vec![dead_addr().await, dead_addr().await])],
        &[("app.test", "tenant-x")],
    ))
    .await;
    let got = get(proxy.http, "app.test", "/").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    // The client learns what happened, not the service's name or its backends' addresses (the log has them).
    assert_eq!(got.text, "502 Bad Gateway: the service could not be reached\n");
    assert_eq!(got.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"connect_refused\"}").await, 2.0);
    assert_eq!(proxy.metric("reveille_requests_total{service=\"tenant-x\",class=\"5xx\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504() {
    let slow = Backend::echo("slow").await;
    // Both HTTP/1.1 server sides (the connection's watchdog keeps the response's time), then h2 (a timer).
    for side in [reveille::Http1Server::Reveille, reveille::Http1Server::Hyper] {
        let settings = Settings {
            response_timeout: Duration::from_millis(300),
            access_log: false,
            http1_server: side,
            ..Settings::default()
        };
        let routes = routes_file(&[("slowpoke", vec![slow.addr])], &[("app.test", "slowpoke")]);
        let proxy = TestProxy::start_with(&routes, settings).await;
        let started = std::time::Instant::now();
        let got = get(proxy.http, "app.test", "/sleep/3000").await;
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{side:?}");
        assert_eq!(got.text, "504 Gateway Timeout: the service did not answer in time\n");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{side:?}: not before the timeout: {took:?}");
        assert!(took < Duration::from_secs(3), "{side:?}: answered before the backend did: {took:?}");
        assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"response_timeout\"}").await, 1.0);
        // A fast request on the same service still works.
        assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);

        // On one kept-alive connection: the 504, then the next request is served whole, twice, though each
        // takes longer than a timeout would have been left over from the first.
        let accepted = proxy.metric("reveille_connections_total").await;
        let mut c = testkit::http::KeepAlive::new(proxy.http.port(), Duration::from_secs(5));
        for (path, want, wait) in [("/sleep/3000", 504, 0), ("/sleep/200", 200, 200), ("/sleep/200", 200, 200)] {
            let begin = std::time::Instant::now();
            let (status, _) = c.get("app.test", path).await.unwrap_or_else(|e| panic!("{side:?} {path}: {e}"));
            assert_eq!(status, want, "{side:?} {path}");
            assert!(begin.elapsed() >= Duration::from_millis(wait), "{side:?} {path}");
        }
        assert_eq!(c.reconnects, 0, "{side:?}: the connection stayed open");
        assert_eq!(proxy.metric("reveille_connections_total").await, accepted + 1.0, "{side:?}: one connection");
        // Shutting down with the request in flight: its response is still due in time, and the drain ends.
        let addr = proxy.http;
        let slow_one = tokio::spawn(async move { get(addr, "app.test", "/sleep/3000").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert!(proxy.stop(Duration::from_secs(10)).await, "{side:?}: drained");
        let got = slow_one.await.unwrap();
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{side:?}: while shutting down");
        assert!(started.elapsed() < Duration::from_secs(2), "{side:?}: at the response timeout, not the backend");
    }
    let settings = Settings { response_timeout: Duration::from_millis(300), access_log: false, ..Settings::default() };
    let routes = routes_file(&[("slowpoke", vec![slow.addr])], &[("app.test", "slowpoke")]);
    let proxy = TestProxy::start_with(&routes, settings).await;
    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://app.test/sleep/3000").body(full("")).unwrap();
    let got = sender.send_request(req).await.unwrap();
    assert_eq!(got.status(), StatusCode::GATEWAY_TIMEOUT, "h2");
    assert!(started.elapsed() < Duration::from_secs(3), "h2: answered before the backend did");
}

/// hyper's HTTP/1.1 side goes on reading a request head begun before a shutdown; when the head ends after the
/// header timeout has passed (which a closing connection no longer applies), the request's response is still due
/// at its time: the watchdog, polled in every turn, sees the due time the request sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_head_ends_during_a_shutdown_still_gets_its_response_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slow = Backend::echo("slow").await;
    let settings = Settings {
        response_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(200),
        access_log: false,
        http1_server: reveille::Http1Server::Hyper,
        ..Settings::default()
    };
    let routes = routes_file(&[("slowpoke", vec![slow.addr])], &[("app.test", "slowpoke")]);
    let proxy = TestProxy::start_with(&routes, settings).await;
    let mut c = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"GET /sleep/5000 HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stop = tokio::spawn(proxy.stop(Duration::from_secs(10)));
    // Past the header timeout, which no longer applies: the head ends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.write_all(b"Host: app.test\r\n\r\n").await.unwrap();
    let begin = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), c.read_to_end(&mut got)).await.expect("answered");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(begin.elapsed() < Duration::from_secs(3), "at the response timeout, not the backend's 5 s");
    assert!(stop.await.unwrap(), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_closes_without_answering_is_502() {
    // Accepts, reads the request, closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
        }
    });
    let proxy = TestProxy::start(&routes_file(&[("rude", vec![addr])], &[("app.test", "rude")])).await;
    let got = get(proxy.http, "app.test", "/").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    assert_eq!(got.text, "502 Bad Gateway: the service failed to answer\n");
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"protocol\"}").await, 1.0);
}
