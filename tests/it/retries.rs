//! Retries on another backend: idempotent requests only, on the statuses and resets a service lists, within its
//! budget (20% of the requests over 10 s, plus 3 a second); and weighted round robin.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::ejection::{answering, service_file};
use crate::support::*;
use http::{Request, StatusCode};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_holds_under_a_backend_that_always_fails() {
    let (bad, good) = (answering("bad", 503).await, Backend::echo("good").await);
    let file = service_file(&[&bad, &good], "ejection = false\nretry_on = [\"503\"]");
    let proxy = TestProxy::start(&file).await;
    let n = 300;
    let mut failed = 0;
    for _ in 0..n {
        let got = get(proxy.http, "app.test", "/").await;
        failed += usize::from(got.status == StatusCode::SERVICE_UNAVAILABLE);
    }
    let seen = bad.hits.load(Ordering::SeqCst) + good.hits.load(Ordering::SeqCst);
    let extra = seen - n;
    println!("retry budget: {n} requests, half starting on an always-503 backend: {extra} retries, {failed} 503s");
    // 20% of the requests, plus 3 a second over the 10 s window (the test takes well under 10 s).
    assert!(extra <= n / 5 + 30, "{extra} retries");
    assert!(extra >= n / 5, "the budget is used: {extra}");
    assert_eq!(extra + failed, n / 2, "every request that met the failing backend was retried or answered 503");
    assert_eq!(proxy.metric("reveille_retries_total{service=\"s\",result=\"retried\"}").await, extra as f64);
    assert_eq!(proxy.metric("reveille_retries_total{service=\"s\",result=\"budget_exhausted\"}").await, failed as f64);
    assert!(failed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried() {
    let (bad, good) = (answering("bad", 503).await, Backend::echo("good").await);
    let file = service_file(&[&bad, &good], "ejection = false\nretry_on = [\"503\"]");
    let proxy = TestProxy::start(&file).await;
    let mut statuses = BTreeMap::new();
    for _ in 0..4 {
        let req = Request::post("/").header("host", "app.test").body(full("order")).unwrap();
        *statuses.entry(send(proxy.http, req).await.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 2), (503, 2)]));
    assert_eq!(bad.hits.load(Ordering::SeqCst), 2);
    // The same with PUT (idempotent, body read whole) is retried.
    for _ in 0..4 {
        let req = Request::put("/").header("host", "app.test").body(full("doc")).unwrap();
        assert_eq!(send(proxy.http, req).await.status, StatusCode::OK);
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 4);
    assert_eq!(proxy.metric("reveille_retries_total{service=\"s\",result=\"retried\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_when_listed() {
    // A backend that reads the request and closes the connection without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        }
    });
    let good = Backend::echo("good").await;
    let list = |extra: &str| {
        format!("[services.s]\nbackends = [\"{rude}\", \"{}\"]\nejection = false\n{extra}\n[routes]\n\"app.test\" = \"s\"\n", good.addr)
    };
    let proxy = TestProxy::start(&list("retry_on = [\"reset\"]")).await;
    for _ in 0..4 {
        assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
    }
    let proxy = TestProxy::start(&list("")).await;
    let statuses: Vec<u16> = futures::future::join_all((0..4).map(|_| get(proxy.http, "app.test", "/")))
        .await
        .iter()
        .map(|g| g.status.as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 2, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_requests_exactly() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let file = format!(
        "[services.s]\nbackends = [\"{}\", {{ address = \"{}\", weight = 3 }}]\n[routes]\n\"app.test\" = \"s\"\n",
        a.addr, b.addr
    );
    let proxy = TestProxy::start(&file).await;
    let mut order = String::new();
    for _ in 0..400 {
        order.push_str(&get(proxy.http, "app.test", "/").await.backend());
    }
    assert_eq!((a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)), (100, 300));
    // Smooth: never more than three in a row for b, a once in every four.
    assert!(order.starts_with("babbbabb") || order.starts_with("bab"), "{}", &order[..16]);
    assert!(!order.contains("aa") && !order.contains("bbbb"), "{}", &order[..32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_fewer_to_a_slow_backend() {
    let slow = Backend::start(std::sync::Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            http::Response::new(full(r#"{"backend": "slow"}"#))
        })
    }))
    .await;
    let fast = Backend::echo("fast").await;
    let file = service_file(&[&slow, &fast], "balance = \"least_request\"");
    let proxy = TestProxy::start(&file).await;
    // 10 clients, 10 requests each: the slow backend keeps its requests in flight longer, and gets fewer.
    let clients = (0..10).map(|_| async {
        for _ in 0..10 {
            assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
        }
    });
    futures::future::join_all(clients).await;
    let (s, f) = (slow.hits.load(Ordering::SeqCst), fast.hits.load(Ordering::SeqCst));
    println!("least_request: slow backend {s} requests, fast {f}");
    assert_eq!(s + f, 100);
    assert!(s * 4 < f, "slow {s}, fast {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_balancing_fields_from_etcd_json() {
    let etcd = crate::support::etcd::Etcd::start().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let service = serde_json::json!({
        "backends": [a.addr.to_string(), {"address": b.addr.to_string(), "weight": 3}],
        "retry_on": ["503"],
    });
    etcd.put("/reveille/services/s", &service.to_string()).await;
    etcd.put("/reveille/routes/app.test", r#"{"service": "s"}"#).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    eventually(std::time::Duration::from_secs(10), "the etcd table", || async {
        get(proxy.http, "app.test", "/").await.status == StatusCode::OK
    })
    .await;
    let before = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    for _ in 0..40 {
        get(proxy.http, "app.test", "/").await;
    }
    let after = (a.hits.load(Ordering::SeqCst) - before.0, b.hits.load(Ordering::SeqCst) - before.1);
    assert_eq!(after, (10, 30));
    // The operator's listing shows the weight.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reveille"))
        .args(["service", "ls", "--etcd", etcd.url.as_str()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&format!("{} (weight 3)", b.addr)), "{out}");
    // A bad weight is refused with its key, and the service keeps its previous value.
    let bad = serde_json::json!({"backends": [{"address": a.addr.to_string(), "weight": 500}]});
    etcd.put("/reveille/services/s", &bad.to_string()).await;
    eventually(std::time::Duration::from_secs(10), "the bad value to be rejected", || async {
        proxy.metric("reveille_etcd_rejected_values_total").await >= 1.0
    })
    .await;
    let before = b.hits.load(Ordering::SeqCst);
    for _ in 0..4 {
        get(proxy.http, "app.test", "/").await;
    }
    assert_eq!(b.hits.load(Ordering::SeqCst) - before, 3, "the previous definition, weights and all");
}
