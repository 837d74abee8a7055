//! Passive ejection: a backend that fails too often in a row leaves its service's rotation for a while (doubled
//! on each repeat), never more than `max_ejected_percent` of a service's backends at once; seen in
//! `/api/services` and `/metrics`. Also the share of client requests that fail with one sick backend of four.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use http::{Response, StatusCode};

/// A backend answering every request with `status` and `{"backend": name}`.
pub(crate) async fn answering(name: &'static str, status: u16) -> Backend {
    Backend::start(Arc::new(move |_req| {
        Box::pin(async move {
            let mut r = Response::new(full(format!(r#"{{"backend": "{name}"}}"#)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        })
    }))
    .await
}

/// A routes file with one service `s` on `app.test`: `backends`, then `extra` lines in its table.
pub(crate) fn service_file(backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[services.s]\nbackends = [{}]\n{extra}\n[routes]\n\"app.test\" = \"s\"\n", list.join(", "))
}

/// One backend's entry in the service's `backend_health`.
async fn backend_view(proxy: &TestProxy, b: &Backend) -> serde_json::Value {
    let view = proxy.service_view("s").await;
    let all = view["backend_health"].as_array().unwrap().clone();
    all.into_iter().find(|v| v["address"] == b.addr.to_string()).unwrap()
}

/// How far in the future an RFC 3339 time is.
fn left(at: &serde_json::Value) -> Duration {
    let at = humantime::parse_rfc3339(at.as_str().unwrap()).unwrap();
    at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_tried_again_for_twice_as_long() {
    let _capture = log::warnings();
    let good = [Backend::echo("g0").await, Backend::echo("g1").await, Backend::echo("g2").await];
    let bad = answering("bad", 500).await;
    let file = service_file(
        &[&good[0], &good[1], &bad, &good[2]],
        r#"ejection = { consecutive_failures = 3, base_ejection = "2s" }"#,
    );
    let proxy = TestProxy::start(&file).await;
    // Round robin: every fourth request reaches it; its third 500 in a row ejects it.
    let mut failed = 0;
    for _ in 0..12 {
        failed += usize::from(get(proxy.http, "app.test", "/").await.status == StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!((bad.hits.load(Ordering::SeqCst), failed), (3, 3));
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3, "ejected: no request for base_ejection");
    let v = backend_view(&proxy, &bad).await;
    assert_eq!(v["ejections"], 1, "{v}");
    assert!(left(&v["ejected_until"]) > Duration::ZERO && left(&v["ejected_until"]) <= Duration::from_secs(2), "{v}");
    assert!(backend_view(&proxy, &good[0]).await["ejected_until"].is_null());
    let series = format!("reveille_backend_ejections_total{{service=\"s\",backend=\"{}\"}}", bad.addr);
    assert_eq!(proxy.metric(&series).await, 1.0);
    let warned = log::warnings().lock().unwrap().iter().any(|l| {
        l.get("message").is_some_and(|m| m.contains("backend ejected for 2s"))
            && l.get("backend") == Some(&bad.addr.to_string())
    });
    assert!(warned, "one warn line per ejection");

    // Its time is up: it is tried again, fails three times more, and is ejected for twice as long.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..12 {
        get(proxy.http, "app.test", "/").await;
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 6);
    let v = backend_view(&proxy, &bad).await;
    assert_eq!(v["ejections"], 2, "{v}");
    assert!(left(&v["ejected_until"]) > Duration::from_millis(3000), "doubled: {v}");
    assert_eq!(proxy.metric(&series).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_half_of_the_backends_are_ejected() {
    let (a, b) = (answering("a", 500).await, answering("b", 503).await);
    let file = service_file(&[&a, &b], r#"ejection = { consecutive_failures = 2, base_ejection = "30s" }"#);
    let proxy = TestProxy::start(&file).await;
    for _ in 0..20 {
        let got = get(proxy.http, "app.test", "/").await;
        assert!(got.status.is_server_error(), "the backend's own answer, not a 502: {}", got.status);
        assert_ne!(got.status, StatusCode::BAD_GATEWAY);
    }
    let ejected = [backend_view(&proxy, &a).await, backend_view(&proxy, &b).await]
        .iter()
        .filter(|v| !v["ejected_until"].is_null())
        .count();
    assert_eq!(ejected, 1, "two of two failing: one stays in");
    // The one still in got every request after the first ejection.
    let (ha, hb) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(ha + hb, 20);
    assert!(ha.min(hb) <= 3, "{ha} {hb}");
    // A service of one backend never ejects it.
    let one = answering("one", 500).await;
    let proxy = TestProxy::start(&service_file(&[&one], r#"ejection = { consecutive_failures = 1 }"#)).await;
    for _ in 0..5 {
        get(proxy.http, "app.test", "/").await;
    }
    assert_eq!(one.hits.load(Ordering::SeqCst), 5);
    assert!(backend_view(&proxy, &one).await["ejected_until"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_off_keeps_every_backend_in() {
    let (good, bad) = (Backend::echo("g").await, answering("bad", 500).await);
    let proxy = TestProxy::start(&service_file(&[&good, &bad], "ejection = false")).await;
    for _ in 0..40 {
        get(proxy.http, "app.test", "/").await;
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 20);
    assert_eq!(backend_view(&proxy, &bad).await["ejections"], 0);
}

/// Client requests that fail, out of `n`, with one backend of four answering 500, under `extra` settings.
async fn failures(extra: &str, n: usize) -> usize {
    let good = [Backend::echo("g0").await, Backend::echo("g1").await, Backend::echo("g2").await];
    let bad = answering("bad", 500).await;
    let proxy = TestProxy::start(&service_file(&[&good[0], &bad, &good[1], &good[2]], extra)).await;
    let mut failed = 0;
    for _ in 0..n {
        failed += usize::from(get(proxy.http, "app.test", "/").await.status != StatusCode::OK);
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_of_failed_requests_with_one_sick_backend_of_four() {
    let n = 400;
    let off = failures("ejection = false", n).await;
    let ejected = failures("", n).await;
    let retried = failures(r#"retry_on = ["500", "502", "503", "504", "reset"]"#, n).await;
    println!(
        "one backend of four answering 500, {n} requests: failed without ejection {off} ({:.2}%), with ejection \
         (defaults) {ejected} ({:.2}%), with ejection and retries {retried} ({:.2}%)",
        off as f64 * 100.0 / n as f64,
        ejected as f64 * 100.0 / n as f64,
        retried as f64 * 100.0 / n as f64
    );
    assert_eq!(off, n / 4);
    assert_eq!(ejected, 5, "consecutive_failures, then none for base_ejection (30 s)");
    assert_eq!(retried, 0);
}
