//! Apps that say they are busy (issue 28 §2): a tenant's `stop_check` asked before an idle stop, and keep-awake
//! set through the admin API or the command line — against the real Docker Engine, a real etcd and real
//! `reveille serve` replicas; the admin API's refusals against a scripted runtime (no Docker needed for those).
//!
//! Every test builds its own `FROM scratch` busybox image and uniquely named containers, removed on drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};

use crate::cli::reveille;
use crate::support::docker::{docker_cli, TestContainer, TestImage};
use crate::support::etcd::Etcd;
use crate::support::runtime::ScriptedRuntime;
use crate::support::serve::Serve;
use crate::support::{eventually, full, get, send, Got, TestProxy};

const LONG: Duration = Duration::from_secs(20);

/// Routes: `web.test` → service `web` with the given TOML fields.
fn routes(fields: &str) -> String {
    format!("[services.web]\n{fields}\n[services.plain]\nbackends = [\"127.0.0.1:9\"]\n[routes]\n\"web.test\" = \"web\"\n\"plain.test\" = \"plain\"\n")
}

/// A container serving /www on 8080 whose `/cgi-bin/check` answers 409 while `/www/busy` exists, then 200: the
/// application says "busy" until the test removes the file with `docker exec`.
fn busy_web(image: &TestImage) -> TestContainer {
    let script = concat!(
        "mkdir -p /www/cgi-bin; touch /www/busy; ",
        "printf '#!/bin/busybox sh\\nif [ -f /www/busy ]; then printf \"Status: 409 Conflict\\\\r\\\\n\\\\r\\\\nbusy\"; ",
        "else printf \"Status: 200 OK\\\\r\\\\n\\\\r\\\\nidle\"; fi\\n' > /www/cgi-bin/check; ",
        "chmod +x /www/cgi-bin/check; "
    );
    image.web_after(script)
}

async fn state_becomes(proxy: &TestProxy, want: &str) {
    eventually(LONG, &format!("web to be {want}"), || async { proxy.service_view("web").await["state"] == want }).await;
}

/// `METHOD path` on an admin listener with a JSON body (and the header commands need without a token).
async fn admin(addr: std::net::SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("x-reveille", "1")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(addr, req.body(full(body.to_string())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tenant_is_kept_up_until_its_stop_check_says_idle() {
    let image = TestImage::build();
    let web = busy_web(&image);
    let fields =
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\nstop_check = \"/cgi-bin/check\"", web.name);
    let proxy = TestProxy::start(&routes(&fields)).await;
    state_becomes(&proxy, "stopped").await;
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let used = proxy.service_view("web").await["last_activity"].clone();

    // Idle for 1 s, but busy by its own word: asked, and asked again after another idle timeout; not stopped.
    eventually(LONG, "two busy answers", || async {
        proxy.metric("reveille_stop_checks_total{service=\"web\",result=\"busy\"}").await >= 2.0
    })
    .await;
    assert_eq!(web.docker_state(), "running");
    let view = proxy.service_view("web").await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["last_activity"], used, "the check is no activity of the tenant");
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"stop\"}").await, 0.0);

    // The application is done: the next check answers 200 and it is stopped.
    docker_cli(&["exec", &web.name, "/bin/busybox", "rm", "/www/busy"]);
    let done = Instant::now();
    state_becomes(&proxy, "stopped").await;
    assert!(done.elapsed() < Duration::from_secs(5), "stopped at the next check: {:?}", done.elapsed());
    assert_eq!(web.docker_state(), "exited");
    assert_eq!(proxy.metric("reveille_stop_checks_total{service=\"web\",result=\"idle\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"stop\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_check_without_an_answer_within_two_seconds_lets_the_tenant_stop() {
    let image = TestImage::build();
    // The check hangs (a CGI that sleeps): after 2 s without an answer, the tenant is stopped anyway.
    let script = concat!(
        "mkdir -p /www/cgi-bin; ",
        "printf '#!/bin/busybox sh\\nsleep 30\\n' > /www/cgi-bin/hang; chmod +x /www/cgi-bin/hang; "
    );
    let web = image.web_after(script);
    let fields =
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\nstop_check = \"/cgi-bin/hang\"", web.name);
    let proxy = TestProxy::start(&routes(&fields)).await;
    state_becomes(&proxy, "stopped").await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    let served = Instant::now();
    state_becomes(&proxy, "stopped").await;
    let took = served.elapsed();
    assert!(took >= Duration::from_secs(3), "1 s idle, then 2 s without an answer: {took:?}");
    assert_eq!(proxy.metric("reveille_stop_checks_total{service=\"web\",result=\"no_answer\"}").await, 1.0);
    assert_eq!(web.docker_state(), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_check_that_answers_neither_idle_nor_busy_lets_the_tenant_stop() {
    let image = TestImage::build();
    let web = image.web_after("");
    // No such CGI: busybox httpd answers 404, neither idle nor busy: stopped anyway (and logged).
    let fields =
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\nstop_check = \"/cgi-bin/none\"", web.name);
    let proxy = TestProxy::start(&routes(&fields)).await;
    state_becomes(&proxy, "stopped").await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    state_becomes(&proxy, "stopped").await;
    assert_eq!(proxy.metric("reveille_stop_checks_total{service=\"web\",result=\"unexpected\"}").await, 1.0);
    assert_eq!(web.docker_state(), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_awake_holds_off_the_idle_stop_until_it_ends() {
    let image = TestImage::build();
    let web = image.web_after("");
    let fields = format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"", web.name);
    let proxy = TestProxy::start(&routes(&fields)).await;
    state_becomes(&proxy, "stopped").await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);

    let kept = Instant::now();
    let got = admin(proxy.admin, "POST", "/api/services/web/keep-awake", r#"{"for": "4s"}"#, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let until = got.json()["keep_awake_until"].as_str().unwrap().to_string();
    assert!(until.ends_with("+00:00"), "{until}");
    assert_eq!(proxy.service_view("web").await["keep_awake_until"], until.as_str());

    // Past its 1 s idle timeout, kept awake.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(proxy.service_view("web").await["state"], "running");
    assert_eq!(web.docker_state(), "running");
    // Stopped once the keep-awake is over, and it is no longer shown.
    state_becomes(&proxy, "stopped").await;
    let took = kept.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "{took:?}");
    assert_eq!(web.docker_state(), "exited");
    assert_eq!(proxy.service_view("web").await["keep_awake_until"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_awake_refuses_bad_input_with_the_reason_and_needs_the_token() {
    let runtime = ScriptedRuntime::new();
    let port = runtime.add_stopped("ka-ctr", Duration::from_millis(10)).await;
    let fields = format!("container = \"ka-ctr\"\nport = {port}\nidle_timeout = \"0\"");
    let token = "keep-awake-token";
    let proxy = TestProxy::start_with_runtime(
        &routes(&fields),
        |c| {
            c.admin_token = Some(token.into());
        },
        Arc::new(runtime.clone()),
    )
    .await;
    let path = "/api/services/web/keep-awake";
    for (body, status, says) in [
        (r#"{}"#, StatusCode::BAD_REQUEST, "`for` is missing"),
        (r#"{"for": "-5m"}"#, StatusCode::BAD_REQUEST, "is negative"),
        (r#"{"for": "soon"}"#, StatusCode::BAD_REQUEST, "is not a duration"),
        (r#"{"for": 30}"#, StatusCode::BAD_REQUEST, "must be a string"),
        (r#"for=30m"#, StatusCode::BAD_REQUEST, "must be JSON"),
    ] {
        let got = admin(proxy.admin, "POST", path, body, Some(token)).await;
        assert_eq!(got.status, status, "{body}: {}", got.text);
        assert!(got.json()["error"].as_str().unwrap().contains(says), "{body}: {}", got.text);
    }
    let got = admin(proxy.admin, "POST", "/api/services/nope/keep-awake", r#"{"for": "1m"}"#, Some(token)).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text);
    assert_eq!(got.json()["error"], "no service \"nope\"");
    let got = admin(proxy.admin, "POST", "/api/services/plain/keep-awake", r#"{"for": "1m"}"#, Some(token)).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text);
    assert!(got.json()["error"].as_str().unwrap().contains("has no container"), "{}", got.text);
    let got = admin(proxy.admin, "GET", path, "", Some(token)).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{}", got.text);
    // Without the token: refused, and nothing kept awake.
    for method in ["POST", "DELETE"] {
        let got = admin(proxy.admin, method, path, r#"{"for": "1m"}"#, None).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{method}: {}", got.text);
    }
    assert_eq!(proxy.service_view("web").await["keep_awake_until"], serde_json::Value::Null);

    // Set, then ended by DELETE; `"0s"` ends it too.
    for end in [("DELETE", ""), ("POST", r#"{"for": "0s"}"#)] {
        let got = admin(proxy.admin, "POST", path, r#"{"for": "1h"}"#, Some(token)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert!(proxy.service_view("web").await["keep_awake_until"].is_string());
        let got = admin(proxy.admin, end.0, path, end.1, Some(token)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.json()["keep_awake_until"], serde_json::Value::Null);
        assert_eq!(proxy.service_view("web").await["keep_awake_until"], serde_json::Value::Null);
    }
    assert_eq!(runtime.count("ka-ctr", "start"), 0, "a keep-awake does not wake the tenant");
}

/// A `reveille serve` replica named `node`, reading routes from `etcd`.
fn replica(etcd: &Etcd, node: &str) -> Serve {
    let url = format!("http://127.0.0.1:{}", etcd.port());
    let mut command = Serve::command();
    command
        .args(["--etcd", &url, "--node", node, "--lease-ttl", "2s", "--activity-interval", "200ms"])
        .env("RUST_LOG", "info,reveille::access=off");
    Serve::start(node, &mut command)
}

/// The tenant's state as a replica's status endpoint says it (empty until the replica has loaded the route).
async fn cluster_state(r: &Serve) -> String {
    let got = get(r.http, "web.test", "/__reveille/status").await;
    let v: serde_json::Value = serde_json::from_str(&got.text).unwrap_or_default();
    v["state"].as_str().unwrap_or_default().to_string()
}

async fn decider(etcd: &Etcd) -> Option<String> {
    let resp = etcd.client().await.get("/reveille/cluster/decider", None).await.unwrap();
    resp.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_awake_set_on_one_replica_is_honoured_by_the_decider() {
    let etcd = Etcd::start().await;
    let image = TestImage::build();
    let web = image.web_after("");
    let service = format!("{{\"container\": \"{}\", \"port\": 8080, \"idle_timeout\": \"1s\"}}", web.name);
    etcd.put("/reveille/services/web", &service).await;
    etcd.put("/reveille/routes/web.test", "{\"service\": \"web\"}").await;
    let replicas = [replica(&etcd, "n1"), replica(&etcd, "n2")];
    eventually(LONG, "a decider", || async { decider(&etcd).await.is_some() }).await;
    for r in &replicas {
        eventually(LONG, "stopped", || async { cluster_state(r).await == "stopped" }).await;
    }
    // Set on the replica that does not decide: the decider must honour it.
    let decides = decider(&etcd).await.unwrap();
    let other = replicas.iter().find(|r| r.name != decides).unwrap();
    assert_eq!(get(other.http, "web.test", "/index.html").await.status, StatusCode::OK);
    let kept = Instant::now();
    let got = admin(other.admin, "POST", "/api/services/web/keep-awake", r#"{"for": "5s"}"#, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json()["by"], other.name.as_str());
    let key = etcd.client().await.get("/reveille/cluster/keep-awake/web", None).await.unwrap();
    let kv = key.kvs().first().expect("the keep-awake key");
    assert_ne!(kv.lease(), 0, "under a lease of its own, so etcd removes it once over");
    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(v["by"], other.name.as_str());
    // Set again: a new lease, the old one revoked (they do not pile up over renewals).
    let leases = || async { etcd.client().await.leases().await.unwrap().leases().len() };
    let before = leases().await;
    let got = admin(other.admin, "POST", "/api/services/web/keep-awake", r#"{"for": "5s"}"#, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(leases().await, before, "the replaced keep-awake's lease is revoked");
    for r in &replicas {
        eventually(LONG, "keep-awake seen by every replica", || async {
            let (_, text) = admin_get(r.admin, "/api/services").await;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["services"]["web"]["keep_awake_until"].is_string()
        })
        .await;
    }

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(web.docker_state(), "running", "kept awake past its idle timeout");
    for r in &replicas {
        eventually(LONG, "stopped after the keep-awake", || async { cluster_state(r).await == "stopped" }).await;
    }
    assert!(kept.elapsed() >= Duration::from_secs(5), "{:?}", kept.elapsed());
    assert_eq!(web.docker_state(), "exited");
    let stopper = replicas.iter().find(|r| r.log_has("idle: stopped")).expect("a replica stopped it");
    assert_eq!(stopper.name, decides, "the decider stopped it");
    eventually(LONG, "etcd removed the key with its lease", || async {
        etcd.client().await.get("/reveille/cluster/keep-awake/web", None).await.unwrap().kvs().is_empty()
    })
    .await;
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
    let r = send(addr, Request::get(path).header("host", addr.to_string()).body(full("")).unwrap()).await;
    (r.status, r.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_awake_command_writes_the_key_and_refuses_bad_input() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    etcd.put("/reveille/services/web", r#"{"container": "c", "port": 8080}"#).await;
    etcd.put("/reveille/services/plain", r#"{"backends": ["127.0.0.1:9"]}"#).await;
    for (args, says) in [
        (vec!["service", "keep-awake", "web", "--for", "-5m"], "is negative"),
        (vec!["service", "keep-awake", "web", "--for", "soon"], "is not a duration"),
        (vec!["service", "keep-awake", "plain", "--for", "1m"], "has no container"),
        (vec!["service", "keep-awake", "nope", "--for", "1m"], "no service \"nope\" in etcd"),
    ] {
        let (code, _, err) = reveille(url, &args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let key = "/reveille/cluster/keep-awake/web";
    assert!(etcd.client().await.get(key, None).await.unwrap().kvs().is_empty(), "bad input writes nothing");

    let (code, out, err) = reveille(url, &["service", "keep-awake", "web", "--for", "30m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("service web: kept awake until 20"), "{out}");
    let resp = etcd.client().await.get(key, None).await.unwrap();
    let kv = resp.kvs().first().expect("written");
    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(v["by"], "cli");
    assert!(out.contains(v["until"].as_str().unwrap()), "{out} {v}");
    let ttl = etcd.client().await.lease_time_to_live(kv.lease(), None).await.unwrap().ttl();
    assert!((1790..=1802).contains(&ttl), "the lease ends with the keep-awake: {ttl}");

    // `reveille status` shows it, with its end and who set it.
    let (code, out, err) = reveille(url, &["status"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("kept awake until 20") && line.contains("(by cli)"), "{out}");
    let (_, json, _) = reveille(url, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["tenants"]["web"]["keep_awake_by"], "cli", "{json}");

    // Renewed, it gets a new lease and the old one is revoked: leases do not pile up.
    let leases = || async { etcd.client().await.leases().await.unwrap().leases().len() };
    let before = leases().await;
    let (code, _, err) = reveille(url, &["service", "keep-awake", "web", "--for", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(leases().await, before, "the renewed keep-awake's old lease is revoked");
    let renewed = etcd.client().await.get(key, None).await.unwrap().kvs()[0].lease();
    assert_ne!(renewed, kv.lease());

    // A Swarm service can be kept awake too.
    etcd.put("/reveille/services/swarmed", r#"{"swarm_service": "shop", "port": 8080, "runtime": "sw"}"#).await;
    let (code, _, err) = reveille(url, &["service", "keep-awake", "swarmed", "--for", "1m"]);
    assert_eq!(code, 0, "{err}");

    // A service of a routes file only: with --force.
    let (code, _, err) = reveille(url, &["service", "keep-awake", "nope", "--for", "1m", "--force"]);
    assert_eq!(code, 0, "{err}");
    let before = leases().await;
    let (code, out, _) = reveille(url, &["service", "keep-awake", "web", "--for", "0s"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "service web: no longer kept awake");
    assert!(etcd.client().await.get(key, None).await.unwrap().kvs().is_empty());
    assert_eq!(leases().await, before - 1, "an ended keep-awake's lease is revoked");
}

async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let (_, text) = admin_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_tenant_causes_no_status_churn_in_etcd() {
    let etcd = Etcd::start().await;
    let image = TestImage::build();
    let web = busy_web(&image);
    let service = format!(
        "{{\"container\": \"{}\", \"port\": 8080, \"idle_timeout\": \"1s\", \"stop_check\": \"/cgi-bin/check\"}}",
        web.name
    );
    etcd.put("/reveille/services/web", &service).await;
    etcd.put("/reveille/routes/web.test", "{\"service\": \"web\"}").await;
    let replicas = [replica(&etcd, "n1"), replica(&etcd, "n2")];
    eventually(LONG, "a decider", || async { decider(&etcd).await.is_some() }).await;
    for r in &replicas {
        eventually(LONG, "stopped", || async { cluster_state(r).await == "stopped" }).await;
    }
    assert_eq!(get(replicas[0].http, "web.test", "/index.html").await.status, StatusCode::OK);
    let decides = decider(&etcd).await.unwrap();
    let decider_admin = replicas.iter().find(|r| r.name == decides).unwrap().admin;
    let status_revision = || async {
        let resp = etcd.client().await.get("/reveille/status/web", None).await.unwrap();
        let kv = resp.kvs().first().cloned().expect("a status key");
        (serde_json::from_slice::<serde_json::Value>(kv.value()).unwrap()["state"].clone(), kv.mod_revision())
    };
    eventually(LONG, "status running", || async { status_revision().await.0 == "running" }).await;
    let before = status_revision().await;

    eventually(LONG, "the decider asked twice and heard busy", || async {
        metric(decider_admin, "reveille_stop_checks_total{service=\"web\",result=\"busy\"}").await >= 2.0
    })
    .await;
    assert_eq!(status_revision().await, before, "busy: the status key was not touched");
    assert_eq!(web.docker_state(), "running");

    docker_cli(&["exec", &web.name, "/bin/busybox", "rm", "/www/busy"]);
    eventually(LONG, "status stopped", || async { status_revision().await.0 == "stopped" }).await;
    assert_eq!(web.docker_state(), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_set_writes_stop_check_and_refuses_a_relative_one() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    let (code, _, err) =
        reveille(url, &["service", "set", "web", "--container", "c", "--port", "80", "--stop-check", "busy"]);
    assert_eq!(code, 1);
    assert!(err.contains("`stop_check` \"busy\" must be a path starting with '/'"), "{err}");
    let (code, _, err) =
        reveille(url, &["service", "set", "plain", "--backend", "127.0.0.1:9", "--stop-check", "/busy"]);
    assert_eq!(code, 1);
    assert!(err.contains("`stop_check` needs `container`"), "{err}");
    let (code, _, err) =
        reveille(url, &["service", "set", "web", "--container", "c", "--port", "80", "--stop-check", "/cgi-bin/check"]);
    assert_eq!(code, 0, "{err}");
    let v = crate::cli::value(&etcd, "/reveille/services/web").await.unwrap();
    assert_eq!(v["stop_check"], "/cgi-bin/check", "{v}");
    let (code, _, err) = reveille(url, &["service", "set", "web", "--unset", "stop_check"]);
    assert_eq!(code, 0, "{err}");
    let v = crate::cli::value(&etcd, "/reveille/services/web").await.unwrap();
    assert!(v.get("stop_check").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_awake_with_etcd_gone_answers_503_and_keeps_nothing() {
    let mut etcd = Etcd::start().await;
    let runtime = ScriptedRuntime::new();
    let port = runtime.add_stopped("down-ctr", Duration::from_millis(10)).await;
    let fields = format!("container = \"down-ctr\"\nport = {port}\nidle_timeout = \"0\"");
    let url = etcd.url.clone();
    let proxy = TestProxy::start_with_runtime(
        &routes(&fields),
        |c| {
            let mut e = reveille::EtcdConfig::new(vec![url]);
            e.timeout = Duration::from_secs(1);
            c.etcd = Some(e);
        },
        Arc::new(runtime.clone()),
    )
    .await;
    let path = "/api/services/web/keep-awake";
    let got = admin(proxy.admin, "POST", path, r#"{"for": "1h"}"#, None).await;
    assert_eq!(got.status, StatusCode::OK, "with etcd: {}", got.text);
    let got = admin(proxy.admin, "DELETE", path, "", None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);

    etcd.kill();
    let begin = Instant::now();
    let got = admin(proxy.admin, "POST", path, r#"{"for": "1h"}"#, None).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    let error = got.json()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("cannot write the keep-awake to etcd"), "{error}");
    assert!(begin.elapsed() < Duration::from_secs(5), "bounded by the etcd timeout: {:?}", begin.elapsed());
    assert_eq!(proxy.service_view("web").await["keep_awake_until"], serde_json::Value::Null);
}
