//! A tenant of several containers (`depends_on`) against the real Docker Engine: a dependency started and
//! waited for (its port, the only port it exposes, or its healthcheck) before the service's own container; a
//! dependency that cannot start fails the wake with a 503 naming nothing internal; a dependency shared by two
//! services is started once, kept while either runs, and stopped once both sleep.
//!
//! Every test builds its own `FROM scratch` busybox image and uniquely named containers, removed on drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::docker::{docker_cli, event_count, TestContainer, TestImage};
use crate::support::runtime::ScriptedRuntime;
use crate::support::serve::Serve;
use crate::support::{eventually, get, now_secs, services_file, TestProxy};
use http::StatusCode;
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

/// A dependency that listens on `port` (HTTP, but only its TCP accept counts) after `delay`, and exits at once
/// on `docker stop`; created with `options`.
fn database(image: &TestImage, options: &[&str], delay: &str, port: u16) -> TestContainer {
    let cmd = format!("trap 'exit 0' TERM; sleep {delay}; httpd -f -p {port} -h /www & wait");
    image.container_with(options, &["sh", "-c", &cmd])
}

/// Docker's `State.StartedAt` (RFC 3339, nanoseconds, UTC: ordered as strings).
fn started_at(c: &TestContainer) -> String {
    docker_cli(&["inspect", "-f", "{{.State.StartedAt}}", &c.name])
}

async fn state_becomes(proxy: &TestProxy, service: &str, want: &str) {
    eventually(LONG, &format!("{service} to be {want}"), || async {
        proxy.service_view(service).await["state"] == want
    })
    .await;
}

/// The fields of a service `web` that never sleeps by itself and waits for `db`'s port 5432 first.
fn web_after_db(web: &TestContainer, db: &TestContainer) -> String {
    format!(
        "container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\ndepends_on = [{{ container = \"{}\", port = 5432 }}]",
        web.name, db.name
    )
}

async fn docker_state_becomes(c: &TestContainer, want: &str) {
    eventually(LONG, &format!("{} to be {want} in Docker", c.name), || async { c.docker_state() == want }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_is_started_and_waited_for_before_the_service() {
    let image = TestImage::build();
    // Listens half a second after its start: the service's container must not start before.
    let db = database(&image, &[], "0.5", 5432);
    let web = image.web_after("");
    let fields = web_after_db(&web, &db);
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;
    let view = proxy.service_view("web").await;
    assert_eq!(view["depends_on"][0]["container"], db.name.as_str(), "{view}");
    assert_eq!(view["depends_on"][0]["state"], "stopped", "{view}");

    let begin = Instant::now();
    let got = get(proxy.http, "web.test", "/index.html").await;
    let took = begin.elapsed();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.text.starts_with("hello from"), "{}", got.text);
    assert_eq!((db.docker_state(), web.docker_state()), ("running".into(), "running".into()));
    let (db_at, web_at) = (started_at(&db), started_at(&web));
    assert!(db_at < web_at, "the dependency first: {db_at} then {web_at}");
    assert!(took >= Duration::from_millis(500), "waited for the dependency's port: {took:?}");
    let view = proxy.service_view("web").await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["depends_on"][0]["state"], "running", "{view}");
    assert_eq!(view["depends_on"][0]["held_by"], 1, "the running dependant holds it: {view}");
}

/// A dependency must run while a dependant does: stopped behind reveille's back (a crash, an operator's
/// `docker stop`) while its dependant runs, it is started again, and the dependant stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_stopped_while_its_dependant_runs_is_started_again() {
    let image = TestImage::build();
    let db = database(&image, &[], "0", 5432);
    let web = image.web_after("");
    let fields = web_after_db(&web, &db);
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    let first_start = started_at(&db);

    docker_cli(&["stop", "-t", "1", &db.name]);
    eventually(LONG, "the dependency started again", || async { started_at(&db) != first_start }).await;
    docker_state_becomes(&db, "running").await;
    eventually(LONG, "reveille to see it running again", || async {
        proxy.service_view("web").await["depends_on"][0]["state"] == "running"
    })
    .await;
    assert_eq!(web.docker_state(), "running", "the dependant was left running");
    assert_eq!(proxy.service_view("web").await["state"], "running");
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_with_a_healthcheck_is_waited_for_until_healthy() {
    let image = TestImage::build();
    // Its port is open at once, but it says healthy only after a second: the healthcheck is what counts. The
    // image has no /bin/sh for Docker's CMD-SHELL check: the container links one first. It exposes one port,
    // and the dependency names none.
    let script =
        "ln -s /bin/busybox /bin/sh; trap 'exit 0' TERM; httpd -f -p 5432 -h /www & sleep 1; touch /ready; wait";
    let health =
        ["--health-cmd", "test -f /ready", "--health-interval", "200ms", "--health-retries", "50", "--expose", "5432"];
    let db = image.container_with(&health, &["sh", "-c", script]);
    let web = image.web_after("");
    let fields =
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\ndepends_on = [\"{}\"]", web.name, db.name);
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;

    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{} {}", got.text, proxy.service_view("web").await);
    let health = docker_cli(&["inspect", "-f", "{{.State.Health.Status}}", &db.name]);
    assert_eq!(health, "healthy");
    // The service's container started only once the dependency was healthy: a second or more after it.
    let parse = |s: String| humantime::parse_rfc3339(&s).unwrap();
    let (db_at, web_at) = (parse(started_at(&db)), parse(started_at(&web)));
    let gap = web_at.duration_since(db_at).unwrap();
    assert!(gap >= Duration::from_secs(1), "started {gap:?} after the dependency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_that_cannot_start_fails_the_wake_with_503() {
    let image = TestImage::build();
    let db = image.container(&["sh", "-c", "exit 3"]);
    let web = image.web_after("");
    let fields = format!(
        "container = \"{}\"\nport = 8080\nwake_timeout = \"10s\"\ndepends_on = [{{ container = \"{}\", port = 5439 }}]",
        web.name, db.name
    );
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;

    let begin = Instant::now();
    let got = get(proxy.http, "web.test", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert!(begin.elapsed() < Duration::from_secs(5), "at once, not at the timeout: {:?}", begin.elapsed());
    // The client learns nothing internal; the operator learns which dependency and why.
    assert!(!got.text.contains(&db.name) && !got.text.contains("exit"), "{}", got.text);
    assert_eq!(web.docker_state(), "created", "the service's own container is not started");
    let view = proxy.service_view("web").await;
    assert_eq!(view["state"], "failed");
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains(&format!("dependency {}", db.name)) && error.contains("code 3"), "{error}");
    assert_eq!(view["depends_on"][0]["state"], "failed", "{view}");
    assert_eq!(view["depends_on"][0]["held_by"], 0, "a failed dependant holds nothing: {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_dependency_starts_once_and_stops_only_when_every_dependant_sleeps() {
    let image = TestImage::build();
    let db = database(&image, &[], "0.5", 5432);
    let (a, b) = (image.web_after(""), image.web_after(""));
    let dep = format!("depends_on = [{{ container = \"{}\", port = 5432 }}]", db.name);
    // `a` sleeps after 1 s idle; `b` never on its own (it is put to sleep by the admin API below). The
    // dependency's own idle timeout is the shortest of its dependants': 1 s after the last one sleeps.
    let fa = format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\n{dep}", a.name);
    let fb = format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\n{dep}", b.name);
    let proxy = TestProxy::start(&services_file(&[("a", fa), ("b", fb)])).await;
    state_becomes(&proxy, "a", "stopped").await;
    state_becomes(&proxy, "b", "stopped").await;
    let since = now_secs();

    // Both woken at the same time: the dependency is started once.
    let (ra, rb) = tokio::join!(get(proxy.http, "a.test", "/index.html"), get(proxy.http, "b.test", "/index.html"));
    assert_eq!((ra.status, rb.status), (StatusCode::OK, StatusCode::OK), "{} / {}", ra.text, rb.text);
    assert_eq!(event_count(&db.name, "start", since), 1, "one start for two dependants");
    assert_eq!(proxy.service_view("a").await["depends_on"][0]["held_by"], 2);

    // `a` goes to sleep; `b` still runs, so the dependency stays up, well past its own idle timeout.
    docker_state_becomes(&a, "exited").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.docker_state(), "running", "never stopped while a dependant runs");
    assert_eq!(b.docker_state(), "running");
    assert_eq!(proxy.service_view("b").await["depends_on"][0]["held_by"], 1);

    // `b` sleeps too: the dependency is stopped after its idle timeout.
    let (status, body) = proxy.admin_post("/api/services/b/sleep").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    docker_state_becomes(&b, "exited").await;
    docker_state_becomes(&db, "exited").await;
    assert_eq!(event_count(&db.name, "start", since), 1);

    // The next request wakes the group again, the dependency first.
    let got = get(proxy.http, "a.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(db.docker_state(), "running");
    assert!(started_at(&db) < started_at(&a));
}

/// A `reveille serve` replica named `node`, reading routes from etcd (as in `cluster.rs`).
fn replica(etcd: &support::etcd::Etcd, node: &str) -> Serve {
    let url = format!("http://127.0.0.1:{}", etcd.port());
    let mut command = Serve::command();
    command
        .args(["--etcd", &url, "--node", node, "--lease-ttl", "2s", "--activity-interval", "200ms"])
        .env("RUST_LOG", std::env::var("CLUSTER_LOG").unwrap_or("info,reveille::access=off".into()));
    Serve::start(node, &mut command)
}

async fn etcd_raw(etcd: &support::etcd::Etcd, key: &str) -> Option<String> {
    let mut c = etcd.client().await;
    let r = c.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
}

async fn etcd_value(etcd: &support::etcd::Etcd, key: &str) -> Option<serde_json::Value> {
    etcd_raw(etcd, key).await.map(|v| serde_json::from_str(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_dependency_across_three_replicas_is_kept_while_a_dependant_runs_on_any() {
    let etcd = support::etcd::Etcd::start().await;
    let image = TestImage::build();
    let db = database(&image, &[], "0.5", 5432);
    let (a, b) = (image.web_after(""), image.web_after(""));
    for (name, c, idle) in [("a", &a, "1s"), ("b", &b, "3s")] {
        let value = json!({
            "container": c.name, "port": 8080, "idle_timeout": idle,
            "depends_on": [{"container": db.name, "port": 5432}],
        });
        etcd.put(&format!("/reveille/services/{name}"), &value.to_string()).await;
        etcd.put(&format!("/reveille/routes/{name}.test"), &json!({"service": name}).to_string()).await;
    }
    let replicas: Vec<Serve> = ["n1", "n2", "n3"].iter().map(|n| replica(&etcd, n)).collect();
    for r in &replicas {
        for host in ["a.test", "b.test"] {
            eventually(LONG, "the route is loaded and the tenant stopped", || async {
                let got = get(r.http, host, "/__reveille/status").await;
                got.status == StatusCode::OK && got.json()["state"] == "stopped"
            })
            .await;
        }
    }
    let decider = || async { etcd_raw(&etcd, "/reveille/cluster/decider").await };
    eventually(LONG, "a decider", || async { decider().await.is_some() }).await;
    let boss = decider().await.unwrap();
    let other = replicas.iter().find(|r| r.name != boss).unwrap();
    let since = now_secs();

    // Every replica wakes both services at the same time: one start of the shared dependency.
    let mut requests = Vec::new();
    for r in &replicas {
        for host in ["a.test", "b.test", "a.test", "b.test"] {
            let addr = r.http;
            requests.push(tokio::spawn(async move { get(addr, host, "/index.html").await }));
        }
    }
    for req in requests {
        let got = req.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    }
    let starts = |c: &TestContainer| event_count(&c.name, "start", since);
    assert_eq!(
        (starts(&db), starts(&a), starts(&b)),
        (1, 1, 1),
        "one start each for twelve requests on three replicas"
    );

    // `b` used on a replica that does not decide, for 4 s; `a` idle everywhere: the decider stops `a`, never
    // the dependency.
    let begin = std::time::Instant::now();
    while begin.elapsed() < Duration::from_secs(4) {
        let got = get(other.http, "b.test", "/index.html").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(a.docker_state(), "exited", "`a` was idle everywhere");
    assert_eq!(event_count(&db.name, "die", since), 0, "the dependency was stopped while `b` ran");
    let status_key = format!("/reveille/status/dep:{}", db.name);
    assert_eq!(etcd_value(&etcd, &status_key).await.unwrap()["state"], "running");

    // `b` idle too: it is stopped, then the dependency, by the decider.
    docker_state_becomes(&b, "exited").await;
    docker_state_becomes(&db, "exited").await;
    eventually(LONG, "the dependency's status stopped", || async {
        etcd_value(&etcd, &status_key).await.is_some_and(|s| s["state"] == "stopped")
    })
    .await;
    assert_eq!(etcd_value(&etcd, &status_key).await.unwrap()["node"], boss.as_str());
    assert_eq!(starts(&db), 1);
}

/// The state machine alone (scripted containers, no Docker): ten services sharing one dependency, all woken at
/// once, make one start of it, and each holds it while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_services_woken_at_once_start_their_shared_dependency_once() {
    let runtime = ScriptedRuntime::new();
    let db_port = runtime.add_stopped("db", Duration::from_millis(300)).await;
    let mut services = Vec::new();
    for i in 0..10 {
        let port = runtime.add_stopped(&format!("app-{i}"), Duration::from_millis(20)).await;
        let fields = format!(
            "container = \"app-{i}\"\nport = {port}\nidle_timeout = \"0\"\ndepends_on = [{{ container = \"db\", port = {db_port} }}]"
        );
        services.push((format!("app{i}"), fields));
    }
    let refs: Vec<(&str, String)> = services.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    let proxy = TestProxy::start_with_runtime(&services_file(&refs), |_| {}, Arc::new(runtime.clone())).await;
    for (name, _) in &services {
        state_becomes(&proxy, name, "stopped").await;
    }

    let addr = proxy.http;
    let requests: Vec<_> =
        (0..30).map(|i| tokio::spawn(async move { get(addr, &format!("app{}.test", i % 10), "/").await })).collect();
    for (i, r) in requests.into_iter().enumerate() {
        let got = r.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.text, format!("hello from app-{}", i % 10));
    }
    assert_eq!(runtime.count("db", "start"), 1, "one start of the shared dependency");
    for i in 0..10 {
        assert_eq!(runtime.count(&format!("app-{i}"), "start"), 1);
    }
    let view = proxy.service_view("app0").await;
    assert_eq!(view["depends_on"][0]["state"], "running", "{view}");
    assert_eq!(view["depends_on"][0]["held_by"], 10, "every running dependant holds it: {view}");
    assert_eq!(view["depends_on"][0]["tenant"], "dep:db");
}

/// A dependency that is another service's container is that service's tenant (one tenant per container): it is
/// woken first and held while its dependant runs, past its own idle timeout. An entry that would close a cycle
/// (b on a's container, while a depends on b's) is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_on_another_services_container_is_that_services_tenant() {
    let runtime = ScriptedRuntime::new();
    let a_port = runtime.add_stopped("a-ctr", Duration::from_millis(20)).await;
    let b_port = runtime.add_stopped("b-ctr", Duration::from_millis(200)).await;
    let fa = format!("container = \"a-ctr\"\nport = {a_port}\nidle_timeout = \"0\"\ndepends_on = [\"b-ctr\"]");
    let fb = format!("container = \"b-ctr\"\nport = {b_port}\nidle_timeout = \"1s\"\ndepends_on = [\"a-ctr\"]");
    let proxy =
        TestProxy::start_with_runtime(&services_file(&[("a", fa), ("b", fb)]), |_| {}, Arc::new(runtime.clone())).await;
    state_becomes(&proxy, "a", "stopped").await;
    state_becomes(&proxy, "b", "stopped").await;
    let (va, vb) = (proxy.service_view("a").await, proxy.service_view("b").await);
    assert_eq!(va["depends_on"][0]["tenant"], "b", "{va}");
    assert!(vb.get("depends_on").is_none(), "the cycle's second link is left out: {vb}");

    let got = get(proxy.http, "a.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!((runtime.count("b-ctr", "start"), runtime.count("a-ctr", "start")), (1, 1));
    assert_eq!(proxy.service_view("b").await["state"], "running");
    // b's own idle timeout passes twice over: a still runs, so b is not stopped.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runtime.count("b-ctr", "stop"), 0, "never stopped while its dependant runs");
    assert_eq!(proxy.service_view("b").await["state"], "running");
    // a put to sleep: b is stopped after its idle timeout.
    let (status, body) = proxy.admin_post("/api/services/a/sleep").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    state_becomes(&proxy, "b", "stopped").await;
    assert_eq!(runtime.count("b-ctr", "stop"), 1);
}

/// Without a healthcheck or a `port`, the only port the dependency exposes is waited for; none exposed is a
/// clear error; a healthcheck that fails fails the wake at once, without waiting for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependencys_exposed_port_or_failing_healthcheck() {
    let image = TestImage::build();
    let exposed = database(&image, &["--expose", "5433"], "0.5", 5433);
    let bare = database(&image, &[], "0", 5433);
    let script = "ln -s /bin/busybox /bin/sh; trap 'exit 0' TERM; sleep 100000 & wait";
    let sick = image.container_with(
        &["--health-cmd", "exit 1", "--health-interval", "100ms", "--health-retries", "1"],
        &["sh", "-c", script],
    );
    let (w1, w2, w3) = (image.web_after(""), image.web_after(""), image.web_after(""));
    let fields = |web: &TestContainer, dep: &TestContainer| {
        format!("container = \"{}\"\nport = 8080\nwake_timeout = \"15s\"\ndepends_on = [\"{}\"]", web.name, dep.name)
    };
    let proxy = TestProxy::start(&services_file(&[
        ("w1", fields(&w1, &exposed)),
        ("w2", fields(&w2, &bare)),
        ("w3", fields(&w3, &sick)),
    ]))
    .await;
    for s in ["w1", "w2", "w3"] {
        state_becomes(&proxy, s, "stopped").await;
    }

    let begin = Instant::now();
    let got = get(proxy.http, "w1.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{} {}", got.text, proxy.service_view("w1").await);
    assert!(begin.elapsed() >= Duration::from_millis(500), "waited for the exposed port: {:?}", begin.elapsed());
    assert!(started_at(&exposed) < started_at(&w1));

    let got = get(proxy.http, "w2.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    let error = proxy.service_view("w2").await["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("exposes no port: give the dependency a `port`"), "{error}");
    assert_eq!(w2.docker_state(), "created");

    let begin = Instant::now();
    let got = get(proxy.http, "w3.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert!(begin.elapsed() < Duration::from_secs(10), "not the timeout: {:?}", begin.elapsed());
    let error = proxy.service_view("w3").await["last_error"].as_str().unwrap().to_string();
    assert!(error.contains(&format!("dependency {}: its healthcheck reports unhealthy", sick.name)), "{error}");
    assert_eq!(w3.docker_state(), "created");
}

/// Against Docker: a dependency that is another service's container is that service's tenant, started first and
/// kept while its dependant runs, past its own idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_container_another_depends_on_is_kept_while_it_runs() {
    let image = TestImage::build();
    let (app, api) = (image.web_after(""), image.web_after("sleep 0.3;"));
    let fa =
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\ndepends_on = [\"{}\"]", app.name, api.name);
    let fb = format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"", api.name);
    let proxy = TestProxy::start(&services_file(&[("app", fa), ("api", fb)])).await;
    state_becomes(&proxy, "app", "stopped").await;
    state_becomes(&proxy, "api", "stopped").await;
    assert_eq!(proxy.service_view("app").await["depends_on"][0]["tenant"], "api");
    let since = now_secs();

    let got = get(proxy.http, "app.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(started_at(&api) < started_at(&app));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api.docker_state(), "running", "kept while its dependant runs");
    assert_eq!(event_count(&api.name, "die", since), 0);
    let (status, body) = proxy.admin_post("/api/services/app/sleep").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    docker_state_becomes(&api, "exited").await;
}
