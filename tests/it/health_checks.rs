//! Active health checks: a backend whose check fails leaves the rotation before a client request meets it, and
//! comes back when its check passes; a service with a container (a tenant passivation may put to sleep) is
//! never checked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ejection::service_file;
use crate::support::*;
use http::{Response, StatusCode};

/// A backend that answers `/healthz` 200 while `healthy`, 503 otherwise, and any other path the same way (500
/// when sick); it counts its checks.
async fn switchable(healthy: Arc<AtomicBool>, checks: Arc<AtomicUsize>) -> Backend {
    Backend::start(Arc::new(move |req| {
        let ok = healthy.load(Ordering::SeqCst);
        if req.uri().path() == "/healthz" {
            checks.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            let mut r = Response::new(full(r#"{"backend": "sick"}"#));
            if !ok {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_takes_the_backend_out_before_a_request_fails_and_a_passing_one_brings_it_back() {
    let (healthy, checks) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let sick = switchable(healthy.clone(), checks.clone()).await;
    let good = Backend::echo("good").await;
    let file = service_file(
        &[&sick, &good],
        "ejection = false\nhealth_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }",
    );
    let proxy = TestProxy::start(&file).await;
    let sick_view = || async {
        let v = proxy.service_view("s").await;
        v["backend_health"].as_array().unwrap().iter().find(|b| b["address"] == sick.addr.to_string()).unwrap().clone()
    };
    eventually(Duration::from_secs(5), "the sick backend's check to fail", || async {
        sick_view().await["check_failing"] == true
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(sick.hits.load(Ordering::SeqCst), checks.load(Ordering::SeqCst), "only checks reached it");

    healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the check to pass", || async { sick_view().await["check_failing"] == false })
        .await;
    let before = sick.hits.load(Ordering::SeqCst) - checks.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::OK);
    }
    let after = sick.hits.load(Ordering::SeqCst) - checks.load(Ordering::SeqCst);
    assert!(after >= before + 9, "back in the rotation: {before} -> {after}");

    // A table without the check stops it.
    proxy.write_routes(&service_file(&[&sick, &good], ""));
    eventually(Duration::from_secs(5), "the check to stop", || async {
        let n = checks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        checks.load(Ordering::SeqCst) == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_container_is_never_checked() {
    let runtime = runtime::ScriptedRuntime::new();
    let port = runtime.add_stopped("tenant-hc", Duration::from_millis(10)).await;
    let (healthy, checks) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let backend = switchable(healthy, checks.clone()).await;
    let file = format!(
        "[services.app]\ncontainer = \"tenant-hc\"\nport = {port}\nbackends = [\"{}\"]\n\
         health_check = {{ path = \"/healthz\", interval = \"50ms\" }}\n[routes]\n\"app.test\" = \"app\"\n",
        backend.addr
    );
    let proxy = TestProxy::start_with_runtime(&file, |_| {}, Arc::new(runtime.clone())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(checks.load(Ordering::SeqCst), 0, "a check would have woken it or counted as activity");
    assert_eq!(runtime.count("tenant-hc", "start"), 0);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_is_checked_over_tls() {
    let (healthy, checks) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let sick = switchable(healthy.clone(), checks.clone()).await;
    let ca = crate::support::tls::TestCa::new();
    // The front offers h2 first: the check offers http/1.1 alone, and speaks it.
    let front =
        crate::backend_tls::TlsFront::start(&ca.issue(&["127.0.0.1"]), None, &["h2", "http/1.1"], sick.addr).await;
    let good = Backend::echo("good").await;
    let pem = ca.cert_pem().replace('\n', "\\n");
    let file = format!(
        "[services.s]\nbackends = [\"https://{}\", \"{}\"]\nejection = false\n\
         health_check = {{ path = \"/healthz\", interval = \"100ms\" }}\n[services.s.tls]\nca_pem = \"{pem}\"\n\
         [routes]\n\"app.test\" = \"s\"\n",
        front.addr, good.addr
    );
    let proxy = TestProxy::start(&file).await;
    let view = || async {
        let v = proxy.service_view("s").await;
        let address = format!("https://{}", front.addr);
        v["backend_health"].as_array().unwrap().iter().find(|b| b["address"] == address).unwrap().clone()
    };
    eventually(Duration::from_secs(5), "the TLS backend's check to fail", || async {
        view().await["check_failing"] == true
    })
    .await;
    assert!(checks.load(Ordering::SeqCst) >= 1, "the check reached the backend through TLS");
    healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the check to pass", || async { view().await["check_failing"] == false }).await;
}
