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
    let settings = Settings { response_timeout: Duration::from_millis(300), access_log: false, ..Settings::default() };
    let proxy =
        TestProxy::start_with(&routes_file(&[("slowpoke", vec![slow.addr])], &[("app.test", "slowpoke")]), settings)
            .await;
    let started = std::time::Instant::now();
    let got = get(proxy.http, "app.test", "/sleep/3000").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.text, "504 Gateway Timeout: the service did not answer in time\n");
    assert!(started.elapsed() < Duration::from_secs(3), "answered before the backend did");
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"response_timeout\"}").await, 1.0);
    // A fast request on the same service still works.
    assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
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
