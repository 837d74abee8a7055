//! Routes from a real etcd: propagation, atomic transactions, deletions, rejected values, and surviving a
//! broken connection (compaction meanwhile) and an etcd crash, with requests flowing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::etcd::{Etcd, Forwarder};
use crate::support::*;
use etcd_client::{Txn, TxnOp};
use http::StatusCode;

fn service_json(backends: &[std::net::SocketAddr]) -> String {
    serde_json::json!({ "backends": backends.iter().map(|b| b.to_string()).collect::<Vec<_>>() }).to_string()
}

fn route_json(service: &str) -> String {
    serde_json::json!({ "service": service }).to_string()
}

async fn ready(proxy: &TestProxy) {
    eventually(Duration::from_secs(10), "/readyz 200", || async {
        proxy.admin_get("/readyz").await.0 == StatusCode::OK
    })
    .await;
}

/// Waits until `host` is answered by the echo backend `name`.
async fn served_by(proxy: &TestProxy, host: &str, name: &str) {
    let what = format!("{host} served by {name}");
    eventually(Duration::from_secs(5), &what, || async {
        let got = get(proxy.http, host, "/").await;
        got.status == StatusCode::OK && got.backend() == name
    })
    .await;
}

async fn status_becomes(proxy: &TestProxy, host: &str, status: StatusCode) {
    let what = format!("{host} answers {status}");
    eventually(Duration::from_secs(5), &what, || async { get(proxy.http, host, "/").await.status == status }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_update_delete_propagate() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::NOT_FOUND);

    etcd.put("/reveille/services/acme", &service_json(&[a.addr])).await;
    let put_at = Instant::now();
    etcd.put("/reveille/routes/app.test", &route_json("acme")).await;
    served_by(&proxy, "app.test", "a").await;
    eprintln!("route visible {:?} after the put returned", put_at.elapsed());

    // Update the service: same route, new backend.
    etcd.put("/reveille/services/acme", &service_json(&[b.addr])).await;
    served_by(&proxy, "app.test", "b").await;
    // Wildcards and case work as with the file.
    etcd.put("/reveille/routes/*.App.test", &route_json("acme")).await;
    served_by(&proxy, "x.y.app.test", "b").await;

    etcd.delete("/reveille/routes/app.test").await;
    status_becomes(&proxy, "app.test", StatusCode::NOT_FOUND).await;
    assert_eq!(get(proxy.http, "x.app.test", "/").await.backend(), "b", "the other route stays");
    // Deleting the service leaves a route without service: 503 (the log names the service, the client is not
    // told it).
    etcd.delete("/reveille/services/acme").await;
    status_becomes(&proxy, "x.app.test", StatusCode::SERVICE_UNAVAILABLE).await;
    let text = get(proxy.http, "x.app.test", "/").await.text;
    assert!(text.contains("not served") && !text.contains("acme"), "{text}");

    let (_, routes) = proxy.admin_get("/api/routes").await;
    let json: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(json["missing_services"]["*.app.test"], "acme");
    assert_eq!(proxy.metric("reveille_etcd_connected").await, 1.0);
    assert!(proxy.metric("reveille_etcd_events_applied_total").await >= 6.0);
    assert!(proxy.metric("reveille_etcd_revision").await >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_route_deleted() {
    let etcd = Etcd::start().await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/s", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/only.test", &route_json("s")).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    served_by(&proxy, "only.test", "a").await;
    etcd.delete("/reveille/routes/only.test").await;
    status_becomes(&proxy, "only.test", StatusCode::NOT_FOUND).await;
    assert_eq!(proxy.metric("reveille_routes").await, 0.0);
    etcd.delete("/reveille/services/s").await;
    eventually(Duration::from_secs(5), "no services", || async { proxy.metric("reveille_services").await == 0.0 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_is_applied_at_once() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    etcd.put("/reveille/services/svc-0", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/app.test", &route_json("svc-0")).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    served_by(&proxy, "app.test", "a").await;

    // Readers hammer the host while transactions move it to a brand-new service each time, writing the
    // service and the route together. Half-applied, the route would name a service that does not exist yet.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bad = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (stop, bad, seen, addr) = (stop.clone(), bad.clone(), seen.clone(), proxy.http);
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let got = get(addr, "app.test", "/").await;
                seen.fetch_add(1, Ordering::SeqCst);
                if got.status != StatusCode::OK {
                    bad.fetch_add(1, Ordering::SeqCst);
                    eprintln!("half-applied state seen: {} {}", got.status, got.text);
                }
            }
        }));
    }
    let mut client = etcd.client().await;
    for i in 1..=30 {
        let backend = if i % 2 == 0 { a.addr } else { b.addr };
        let name = format!("svc-{i}");
        let txn = Txn::new().and_then(vec![
            TxnOp::put(format!("/reveille/services/{name}"), service_json(&[backend]), None),
            TxnOp::put("/reveille/routes/app.test", route_json(&name), None),
            TxnOp::delete(format!("/reveille/services/svc-{}", i - 1), None),
        ]);
        client.txn(txn).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served_by(&proxy, "app.test", "a").await; // svc-30 -> a
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert!(seen.load(Ordering::SeqCst) > 50, "readers made too few requests to mean anything");
    assert_eq!(bad.load(Ordering::SeqCst), 0, "a transaction was seen half-applied");
    assert_eq!(proxy.metric("reveille_services").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_rejected_and_the_rest_still_served() {
    let etcd = Etcd::start().await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/good", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/good.test", &route_json("good")).await;
    etcd.put("/reveille/routes/kept.test", &route_json("good")).await;
    // Bad from the start: skipped on the initial load.
    etcd.put("/reveille/routes/bad json.test", &route_json("good")).await;
    etcd.put("/reveille/services/broken", r#"{"backends": "not-a-list"}"#).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    served_by(&proxy, "good.test", "a").await;
    assert_eq!(proxy.metric("reveille_etcd_rejected_values_total").await, 2.0);

    // Bad writes over a working key keep the previous value.
    etcd.put("/reveille/routes/kept.test", "{not json").await;
    etcd.put("/reveille/services/good", r#"{"backends": ["no-port"]}"#).await;
    etcd.put("/reveille/routes/wrongtype.test", r#"{"service": 42}"#).await;
    eventually(Duration::from_secs(5), "rejections counted", || async {
        proxy.metric("reveille_etcd_rejected_values_total").await == 5.0
    })
    .await;
    assert_eq!(get(proxy.http, "kept.test", "/").await.backend(), "a");
    assert_eq!(get(proxy.http, "good.test", "/").await.backend(), "a");
    assert_eq!(get(proxy.http, "wrongtype.test", "/").await.status, StatusCode::NOT_FOUND);

    // Unknown fields are accepted (forward compatibility).
    etcd.put("/reveille/routes/future.test", r#"{"service": "good", "weight": 3}"#).await;
    served_by(&proxy, "future.test", "a").await;
    // A route to a service that does not exist answers 503.
    etcd.put("/reveille/routes/ghost.test", &route_json("ghost")).await;
    status_becomes(&proxy, "ghost.test", StatusCode::SERVICE_UNAVAILABLE).await;
    // Keys of other subsystems are ignored.
    etcd.put("/reveille/status/good", "anything").await;
    assert_eq!(proxy.metric("reveille_etcd_rejected_values_total").await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_loses_no_change() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    etcd.put("/reveille/services/b", &service_json(&[b.addr])).await;
    etcd.put("/reveille/routes/move.test", &route_json("a")).await;
    etcd.put("/reveille/routes/gone.test", &route_json("a")).await;
    let mut link = Forwarder::start(format!("127.0.0.1:{}", etcd.port()).parse().unwrap()).await;
    let proxy = TestProxy::start_etcd(&format!("http://{}", link.addr)).await;
    ready(&proxy).await;
    served_by(&proxy, "move.test", "a").await;

    link.cut();
    eventually(Duration::from_secs(10), "disconnect noticed", || async {
        proxy.metric("reveille_etcd_connected").await == 0.0
    })
    .await;
    // Changes while reveille cannot see etcd, then a compaction that erases their history.
    etcd.put("/reveille/routes/move.test", &route_json("b")).await;
    etcd.delete("/reveille/routes/gone.test").await;
    let rev = etcd.put("/reveille/routes/new.test", &route_json("b")).await;
    etcd.client().await.compact(rev, None).await.unwrap();
    // Meanwhile the last table keeps serving.
    assert_eq!(get(proxy.http, "move.test", "/").await.backend(), "a");
    assert_eq!(get(proxy.http, "gone.test", "/").await.backend(), "a");

    link.restore().await;
    served_by(&proxy, "move.test", "b").await;
    served_by(&proxy, "new.test", "b").await;
    status_becomes(&proxy, "gone.test", StatusCode::NOT_FOUND).await;
    assert!(proxy.metric("reveille_etcd_resyncs_total").await >= 1.0);
    assert_eq!(proxy.metric("reveille_etcd_connected").await, 1.0);
    // And the new watch works.
    etcd.put("/reveille/routes/after.test", &route_json("a")).await;
    served_by(&proxy, "after.test", "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_while_requests_flow() {
    let mut etcd = Etcd::start().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    etcd.put("/reveille/services/b", &service_json(&[b.addr])).await;
    etcd.put("/reveille/routes/app.test", &route_json("a")).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    served_by(&proxy, "app.test", "a").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.http);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get(addr, "app.test", "/").await.status {
                    StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    etcd.kill();
    eventually(Duration::from_secs(10), "loss noticed", || async {
        proxy.metric("reveille_etcd_connected").await == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart().await;
    // A change made right after etcd is back, possibly before reveille has reconnected.
    etcd.put("/reveille/routes/app.test", &route_json("b")).await;
    served_by(&proxy, "app.test", "b").await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(ok.load(Ordering::SeqCst) > 20, "the load loop made too few requests");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests to a known host failed while etcd was down");
    eventually(Duration::from_secs(5), "reconnected", || async {
        proxy.metric("reveille_etcd_connected").await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_etcd_is_reachable() {
    // Reserve a port for an etcd that is not there yet.
    let mut etcd = Etcd::start().await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/app.test", &route_json("a")).await;
    etcd.kill();
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.admin_get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);
    etcd.restart().await;
    ready(&proxy).await;
    served_by(&proxy, "app.test", "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_etcd_together_etcd_wins() {
    let etcd = Etcd::start().await;
    let (f, e) = (Backend::echo("file").await, Backend::echo("etcd").await);
    etcd.put("/reveille/services/shared", &service_json(&[e.addr])).await;
    etcd.put("/reveille/routes/etcd-only.test", &route_json("shared")).await;
    let routes = routes_file(
        &[("shared", vec![f.addr]), ("fileonly", vec![f.addr])],
        &[("file-only.test", "fileonly"), ("both.test", "shared")],
    );
    let mut etcd_cfg = reveille::EtcdConfig::new(vec![etcd.url.clone()]);
    etcd_cfg.timeout = Duration::from_secs(2);
    let proxy = TestProxy::start_custom(&routes, |c| c.etcd = Some(etcd_cfg)).await;
    let http = proxy.http;
    eventually(Duration::from_secs(5), "etcd loaded", || async {
        get(http, "etcd-only.test", "/").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(http, "file-only.test", "/").await.backend(), "file");
    // Service "shared" is defined in both: etcd's definition wins, also for the file's route.
    assert_eq!(get(http, "both.test", "/").await.backend(), "etcd");
    // Removing it from etcd falls back to the file's definition.
    etcd.delete("/reveille/services/shared").await;
    eventually(Duration::from_secs(5), "fallback to the file", || async {
        let got = get(http, "both.test", "/").await;
        got.status == StatusCode::OK && got.backend() == "file"
    })
    .await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_etcd() {
    let etcd = Etcd::start_with(true, &[]).await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/tls.test", &route_json("a")).await;
    let files = etcd.tls.as_ref().unwrap();
    let mut cfg = reveille::EtcdConfig::new(vec![etcd.url.clone()]);
    cfg.ca = Some(files.ca.clone());
    cfg.cert = Some(files.client_cert.clone());
    cfg.key = Some(files.client_key.clone());
    cfg.timeout = Duration::from_secs(2);
    let proxy = TestProxy::start_etcd_config(cfg.clone()).await;
    ready(&proxy).await;
    served_by(&proxy, "tls.test", "a").await;
    etcd.put("/reveille/routes/later.test", &route_json("a")).await;
    served_by(&proxy, "later.test", "a").await;

    // Without the client certificate, etcd refuses: a clear error, not a hang.
    cfg.cert = None;
    cfg.key = None;
    let err = reveille::etcd_connect(&cfg).await.err().expect("etcd must refuse a client without a certificate");
    assert!(err.to_string().contains(&etcd.url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_an_expired_token() {
    // Tokens live one second: by the time the link is cut and restored, reveille's token has long expired.
    let mut etcd = Etcd::start_with(false, &["--auth-token-ttl", "1"]).await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    etcd.put("/reveille/routes/auth.test", &route_json("a")).await;
    etcd.enable_auth("s3cret").await;

    let mut link = Forwarder::start(format!("127.0.0.1:{}", etcd.port()).parse().unwrap()).await;
    let mut cfg = reveille::EtcdConfig::new(vec![format!("http://{}", link.addr)]);
    cfg.user = Some("root".into());
    cfg.password = Some("s3cret".into());
    cfg.timeout = Duration::from_secs(2);
    let proxy = TestProxy::start_etcd_config(cfg.clone()).await;
    ready(&proxy).await;
    served_by(&proxy, "auth.test", "a").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    link.cut();
    eventually(Duration::from_secs(10), "disconnect noticed", || async {
        proxy.metric("reveille_etcd_connected").await == 0.0
    })
    .await;
    etcd.put("/reveille/routes/auth2.test", &route_json("a")).await;
    link.restore().await;
    served_by(&proxy, "auth2.test", "a").await;

    // A wrong password is reported as such.
    cfg.password = Some("wrong".into());
    let err = reveille::etcd_connect(&cfg).await.err().expect("wrong password must fail");
    assert!(err.to_string().to_lowercase().contains("authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_table_is_listed_in_pages_at_one_revision() {
    let etcd = Etcd::start().await;
    let a = Backend::echo("a").await;
    etcd.put("/reveille/services/a", &service_json(&[a.addr])).await;
    let mut client = etcd.client().await;
    // 70,000 routes: a single listing would be ~4.7 MB, past gRPC's default 4 MiB message limit.
    let n = 70_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("/reveille/routes/t{i}.bulk.test"), route_json("a"), None))
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    assert_eq!(proxy.metric("reveille_routes").await, n as f64);
    for i in [0, 4_999, 5_000, 5_001, 69_999] {
        assert_eq!(get(proxy.http, &format!("t{i}.bulk.test"), "/").await.backend(), "a", "route {i}");
    }
    let (code, out) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reveille"))
            .args(["route", "ls", "--etcd", &etcd.url])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), n + 1, "header plus every route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_naming_an_unknown_docker_host_keeps_its_previous_value() {
    let etcd = Etcd::start().await;
    let a = Backend::echo("a").await;
    let value = |container: &str, host: &str| {
        serde_json::json!({ "backends": [a.addr.to_string()], "container": container, "docker_host": host }).to_string()
    };
    etcd.put("/reveille/services/acme", &value("reveille-etcd-hosts-1", "default")).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    ready(&proxy).await;
    let view = proxy.service_view("acme").await;
    assert_eq!(
        (view["container"].as_str(), view["docker_host"].as_str()),
        (Some("reveille-etcd-hosts-1"), Some("default"))
    );

    // This reveille has no Docker host "second": the value is rejected, the previous one stays.
    etcd.put("/reveille/services/acme", &value("reveille-etcd-hosts-2", "second")).await;
    eventually(Duration::from_secs(5), "rejection counted", || async {
        proxy.metric("reveille_etcd_rejected_values_total").await == 1.0
    })
    .await;
    let view = proxy.service_view("acme").await;
    assert_eq!(
        (view["container"].as_str(), view["docker_host"].as_str()),
        (Some("reveille-etcd-hosts-1"), Some("default"))
    );

    // A known host is taken.
    etcd.put("/reveille/services/acme", &value("reveille-etcd-hosts-3", "default")).await;
    eventually(Duration::from_secs(5), "the valid value applied", || async {
        proxy.service_view("acme").await["container"] == "reveille-etcd-hosts-3"
    })
    .await;
    assert_eq!(proxy.metric("reveille_etcd_rejected_values_total").await, 1.0);
}

/// etcd stopped under a running reveille (an outage, or a walkthrough's `kill` in the wrong order): one warning a
/// person reads for the whole process, not one per watch and retry with h2's internals, and one line when it is
/// back. A service value with a misspelt field is applied without it, the field logged at error with the one
/// meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_going_away_is_one_line_a_person_reads() {
    use crate::support::serve::Serve;

    let mut etcd = Etcd::start().await;
    let backend = Backend::echo("b").await;
    etcd.put("/reveille/services/b", &format!(r#"{{"backends": ["{}"], "contaner": "x"}}"#, backend.addr)).await;
    etcd.put("/reveille/routes/b.test", &route_json("b")).await;
    let proc = Serve::start("reveille", Serve::command().args(["--etcd", &etcd.url, "--access-log", "false"]));
    let lines = || -> Vec<serde_json::Value> {
        proc.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let message = |v: &serde_json::Value| v["message"].as_str().unwrap_or_default().to_string();
    eventually(Duration::from_secs(10), "b.test served from etcd", || async {
        get(proc.http, "b.test", "/").await.status == StatusCode::OK
    })
    .await;
    let all: Vec<serde_json::Value> = proc.startup.iter().cloned().chain(lines()).collect();
    assert!(
        all.iter()
            .any(|v| v["level"] == "ERROR"
                && message(v).contains("unknown field `contaner` (did you mean `container`?)")),
        "{all:?}"
    );

    etcd.kill();
    eventually(Duration::from_secs(10), "the outage said", || {
        let found = lines().iter().any(|v| message(v).contains("went away"));
        async move { found }
    })
    .await;
    // Long enough for several retries of each watch (backoff 0.1 s, doubling).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let about_watches: Vec<serde_json::Value> =
        lines().into_iter().filter(|v| v["target"] == "reveille::etcd::session" && v["level"] != "DEBUG").collect();
    assert_eq!(about_watches.len(), 1, "{about_watches:#?}");
    let said = message(&about_watches[0]);
    assert_eq!(about_watches[0]["level"], "WARN");
    assert!(said.starts_with(&format!("etcd at {} went away: connection ", etcd.url)), "{said}");
    assert!(said.ends_with("; keeping what is in force and retrying"), "{said}");
    assert!(about_watches[0].get("error").is_none(), "no transport internals: {:?}", about_watches[0]);
    assert_eq!(get(proc.http, "b.test", "/").await.backend(), "b", "what is in force stays");

    etcd.restart().await;
    eventually(Duration::from_secs(15), "etcd back, said once", || {
        let back = lines().iter().filter(|v| message(v).contains(&format!("etcd at {} is back", etcd.url))).count();
        async move { back == 1 }
    })
    .await;
}

/// etcd not there when reveille starts: one warning that says it cannot be reached (not that it "went away"),
/// for all the watches and their retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_never_reached_is_one_line_too() {
    use crate::support::serve::Serve;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"a\"\n").unwrap();
    let args = ["--etcd", url.as_str(), "--access-log", "false"];
    let proc = Serve::start("reveille", Serve::command().arg("--routes").arg(&routes).args(args));
    // Long enough for several retries of each watch (backoff 0.1 s, doubling).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines: Vec<serde_json::Value> = proc
        .startup
        .iter()
        .cloned()
        .chain(proc.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()))
        .collect();
    let about_watches: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["target"] == "reveille::etcd::session" && v["level"] != "DEBUG").collect();
    assert_eq!(about_watches.len(), 1, "{about_watches:#?}");
    assert_eq!(about_watches[0]["message"], format!("etcd at {url} cannot be reached: connection refused; retrying"));
}
