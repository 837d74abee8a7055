//! Passivation against the real Docker Engine: requests to stopped tenants are held and served, one start per
//! wake, idle tenants are stopped (never under an open WebSocket), wake failures answer fast and clearly, the
//! browser page, pause mode, Docker unreachable, adoption at startup, the admin API and the etcd status keys.
//!
//! Every test builds its own `FROM scratch` busybox image and uniquely named containers, removed on drop.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::docker::{event_count, DockerSocketProxy, TestContainer, TestImage};
use crate::support::{eventually, full, get, now_secs, send, services_file, Backend, TestProxy};
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(20);

fn container_fields(c: &TestContainer, extra: &str) -> String {
    format!("container = \"{}\"\nport = 8080\n{extra}", c.name)
}

async fn state_becomes(proxy: &TestProxy, service: &str, want: &str) {
    eventually(LONG, &format!("{service} to be {want}"), || async {
        proxy.service_view(service).await["state"] == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_tenant_is_woken_and_the_request_served() {
    let image = TestImage::build();
    let web = image.web_after("");
    let proxy = TestProxy::start(&services_file(&[("web", container_fields(&web, "idle_timeout = \"0\""))])).await;
    state_becomes(&proxy, "web", "stopped").await;

    let begin = Instant::now();
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.text.starts_with("hello from"), "{}", got.text);
    assert_eq!(web.docker_state(), "running");
    let view = proxy.service_view("web").await;
    assert_eq!(view["state"], "running");
    assert!(view["last_activity"].as_str().unwrap().ends_with("+00:00"), "{view}");
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_wake_phase_seconds_count{phase=\"ready\"}").await, 1.0);
    eprintln!("cold request served in {:?}", begin.elapsed());

    // Running: the next request is forwarded directly.
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_cause_one_start() {
    let image = TestImage::build();
    // Ready about 1 s after the start, so every request arrives during the wake.
    let web = image.web_after("sleep 1;");
    let proxy = TestProxy::start(&services_file(&[("web", container_fields(&web, "idle_timeout = \"0\""))])).await;
    state_becomes(&proxy, "web", "stopped").await;
    let since = now_secs();

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move { get(addr, "web.test", "/index.html").await }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    }
    assert_eq!(event_count(&web.name, "start", since), 1, "Docker saw exactly one start");
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_held_requests").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_is_stopped_and_woken_again() {
    let image = TestImage::build();
    let web = image.web_after("");
    let proxy = TestProxy::start(&services_file(&[("web", container_fields(&web, "idle_timeout = \"1s\""))])).await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    let served = Instant::now();
    state_becomes(&proxy, "web", "stopped").await;
    assert!(served.elapsed() >= Duration::from_secs(1), "not before the idle timeout: {:?}", served.elapsed());
    assert_eq!(web.docker_state(), "exited");
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"stop\"}").await, 1.0);
    // And it comes back on the next request.
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_the_tenant_up() {
    let image = TestImage::build();
    // The container is the tenant's lifecycle; its traffic goes to a WebSocket echo server on the host.
    let ctr = image.idle();
    let ws_backend = Backend::websocket_echo().await;
    let fields = format!("container = \"{}\"\nbackends = [\"{}\"]\nidle_timeout = \"1s\"", ctr.name, ws_backend.addr);
    let proxy = TestProxy::start(&services_file(&[("chat", fields)])).await;

    let url = format!("ws://{}/ws", proxy.http);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("host", "chat.test".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("WebSocket through reveille");
    assert_eq!(ctr.docker_state(), "running", "the upgrade request woke the tenant");
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: one"));

    // Three idle timeouts later, with no request in flight, the open WebSocket keeps it running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ctr.docker_state(), "running");
    assert_eq!(proxy.service_view("chat").await["state"], "running");
    assert_eq!(proxy.service_view("chat").await["in_flight"], 1, "the tunnel holds one activity guard");
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: two"));

    // Closed: the idle timer runs again.
    ws.close(None).await.unwrap();
    drop(ws);
    state_becomes(&proxy, "chat", "stopped").await;
    assert_eq!(ctr.docker_state(), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_stopping_is_held_and_served() {
    let image = TestImage::build();
    // Ignores SIGTERM: `docker stop` takes the whole stop timeout (the service's 2 s), a wide window to arrive in.
    let web = image.container(&["sh", "-c", "trap '' TERM; httpd -f -p 8080 -h /www"]);
    let fields = container_fields(&web, "idle_timeout = \"1s\"\nstop_timeout = \"2s\"");
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    state_becomes(&proxy, "web", "stopping").await;
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(web.docker_state(), "running");
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"stop\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_own_stop_timeout_is_used_by_default() {
    let image = TestImage::build();
    // busybox httpd as PID 1 ignores SIGTERM, so only the kill after the stop timeout ends it: with the
    // container's own 1 s instead of a 10 s default, the idle stop takes about a second.
    let web = image.container_with(&["--stop-timeout", "1"], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let proxy = TestProxy::start(&services_file(&[("web", container_fields(&web, "idle_timeout = \"1s\""))])).await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    state_becomes(&proxy, "web", "stopping").await;
    let stopping = Instant::now();
    state_becomes(&proxy, "web", "stopped").await;
    let took = stopping.elapsed();
    eprintln!("idle stop took {took:?}");
    assert!(took < Duration::from_secs(8), "the container's 1 s stop timeout was not used: {took:?}");
    let exit = support::docker::docker_cli(&["inspect", "-f", "{{.State.ExitCode}}", &web.name]);
    assert_eq!(exit, "137", "killed after the grace: PID 1 ignored SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_timeout_answers_504() {
    let image = TestImage::build();
    let ctr = image.idle(); // runs, never listens
    let proxy = TestProxy::start(&services_file(&[("slow", container_fields(&ctr, "wake_timeout = \"3s\""))])).await;
    let begin = Instant::now();
    let got = get(proxy.http, "slow.test", "/").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text);
    assert_eq!(got.text, "504 Gateway Timeout: the service did not start in time\n");
    assert!(begin.elapsed() >= Duration::from_secs(3));
    assert_eq!(proxy.metric("reveille_rejected_holds_total{reason=\"timeout\"}").await, 1.0);
    state_becomes(&proxy, "slow", "failed").await;
    let view = proxy.service_view("slow").await;
    assert!(view["last_error"].as_str().unwrap().contains("within 3s"), "{view}");
    // The failed wake's timings: it ran (the container is up) but never became ready. 3 s, not 1: with 1 s
    // the test failed once on a machine loaded by other builds (its message was not kept); a start that takes
    // Docker over 1 s to report would leave `running_ms` empty.
    let wake = &view["last_wake"];
    assert_eq!(wake["ok"], false, "{view}");
    assert!(wake["running_ms"].is_number() && wake["ready_ms"].is_null(), "{view}");
    assert!(wake["total_ms"].as_f64().unwrap() >= 3000.0, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_once_answers_503_fast() {
    let image = TestImage::build();
    let ctr = image.container(&["sh", "-c", "exit 3"]);
    let proxy = TestProxy::start(&services_file(&[("crash", container_fields(&ctr, "wake_timeout = \"60s\""))])).await;
    let begin = Instant::now();
    let got = get(proxy.http, "crash.test", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    // The client is told the service could not start; the container's exit code is the operator's to see.
    assert_eq!(got.text, "503 Service Unavailable: the service could not be started\n");
    assert!(got.headers.contains_key("retry-after"));
    // Far from the 60 s wake timeout.
    assert!(begin.elapsed() < Duration::from_secs(10), "{:?}", begin.elapsed());
    let view = proxy.service_view("crash").await;
    assert_eq!(view["state"], "failed");
    assert!(view["last_error"].as_str().unwrap().contains("code 3"), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_overflow_answers_503_with_retry_after() {
    let image = TestImage::build();
    let ctr = image.idle();
    let fields = container_fields(&ctr, "max_held = 2\nwake_timeout = \"4s\"");
    let proxy = TestProxy::start(&services_file(&[("busy", fields)])).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = proxy.http;
            tokio::spawn(async move { get(addr, "busy.test", "/").await })
        })
        .collect();
    eventually(LONG, "two requests held", || async { proxy.service_view("busy").await["held"] == 2 }).await;
    let begin = Instant::now();
    let got = get(proxy.http, "busy.test", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert!(got.text.contains("too many requests are waiting"), "{}", got.text);
    assert_eq!(got.headers["retry-after"], "2");
    assert!(begin.elapsed() < Duration::from_secs(1));
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(proxy.metric("reveille_rejected_holds_total{reason=\"overflow\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_the_starting_page_and_other_requests_are_held() {
    let image = TestImage::build();
    let web = image.web_after("sleep 2;");
    let fields = container_fields(&web, "page_after = \"300ms\"\nidle_timeout = \"0\"");
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;

    let addr = proxy.http;
    let browser = |extra: Option<(&'static str, &'static str)>| {
        let mut b = Request::get("/index.html")
            .header("host", "web.test")
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(full("")).unwrap()
    };
    // An API call and an image fetch that also accepts HTML: held, never given the page.
    let api = tokio::spawn(send(
        addr,
        Request::get("/index.html")
            .header("host", "web.test")
            .header("accept", "application/json")
            .body(full(""))
            .unwrap(),
    ));
    let image_req = tokio::spawn(send(addr, browser(Some(("sec-fetch-dest", "image")))));

    let begin = Instant::now();
    let page = send(addr, browser(None)).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{}", page.text);
    assert!(begin.elapsed() >= Duration::from_millis(300));
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.headers.contains_key("retry-after"));
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text.contains("/__reveille/status") && page.text.contains("web.test is starting"), "{}", page.text);

    let status = get(addr, "web.test", "/__reveille/status").await;
    assert_eq!(status.headers["cache-control"], "no-store");
    let s = status.json();
    assert_eq!(
        (s["service"].as_str(), s["state"].as_str(), s["ready"].as_bool()),
        (Some("web"), Some("starting"), Some(false))
    );

    for held in [api, image_req] {
        let got = held.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert!(got.text.starts_with("hello from"));
    }
    let s = get(addr, "web.test", "/__reveille/status").await.json();
    assert_eq!((s["state"].as_str(), s["ready"].as_bool()), (Some("running"), Some(true)));
    let page = send(addr, browser(None)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.starts_with("hello from"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_mode_pauses_and_unpauses() {
    let image = TestImage::build();
    let web = image.web_after("");
    let fields = container_fields(&web, "idle_timeout = \"1s\"\nidle_action = \"pause\"");
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    state_becomes(&proxy, "web", "paused").await;
    assert_eq!(web.docker_state(), "paused");
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"pause\"}").await, 1.0);
    let since = now_secs();
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(web.docker_state(), "running");
    assert_eq!(event_count(&web.name, "unpause", since), 1);
    assert_eq!(event_count(&web.name, "start", since), 0, "unpaused, not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_stop_frees_the_container_and_the_next_wake_starts_it() {
    let image = TestImage::build();
    let web = image.web_after("");
    let fields = container_fields(
        &web,
        "idle_timeout = \"1s\"\nidle_action = \"pause\"\nstop_after = \"2s\"\nstop_timeout = \"1s\"",
    );
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    assert_eq!(get(proxy.http, "web.test", "/index.html").await.status, StatusCode::OK);
    state_becomes(&proxy, "web", "paused").await;
    assert_eq!(web.docker_state(), "paused");
    state_becomes(&proxy, "web", "stopped").await;
    assert_eq!(web.docker_state(), "exited", "stopped after stop_after, its memory freed");
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"pause\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_stops_total{service=\"web\",action=\"stop\"}").await, 1.0);
    let since = now_secs();
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    // Started from `exited` (Docker's own stop of a paused container unpauses it first, in the same second as
    // `since`, so unpause events are not counted here).
    assert_eq!(event_count(&web.name, "start", since), 1, "started again");
    assert_eq!(web.docker_state(), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_fails_wakes_fast_and_spares_running_tenants() {
    let image = TestImage::build();
    let up = image.web_after("");
    let down = image.web_after("");
    support::docker::docker_cli(&["start", &up.name]);
    let mut socket = DockerSocketProxy::start();
    let endpoint = socket.endpoint();
    let r = services_file(&[
        ("up", container_fields(&up, "idle_timeout = \"0\"")),
        ("down", container_fields(&down, "idle_timeout = \"0\"")),
    ]);
    let proxy = TestProxy::start_custom(&r, |c| c.passivation.docker = Some(endpoint)).await;
    state_becomes(&proxy, "up", "running").await; // adopted
    state_becomes(&proxy, "down", "stopped").await;
    assert_eq!(get(proxy.http, "up.test", "/index.html").await.status, StatusCode::OK);

    socket.cut();
    let begin = Instant::now();
    let got = get(proxy.http, "down.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    // Nothing internal reaches the client: no socket path, no Docker error.
    assert_eq!(got.text, "503 Service Unavailable: the service could not be started\n");
    assert!(begin.elapsed() < Duration::from_secs(2), "{:?}", begin.elapsed());
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "up.test", "/index.html").await.status, StatusCode::OK, "running tenant unaffected");
    }

    socket.restore();
    eventually(LONG, "wakes work again once Docker is back", || async {
        get(proxy.http, "down.test", "/index.html").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(down.docker_state(), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_containers_are_adopted_at_startup_and_stopped_when_idle() {
    let image = TestImage::build();
    let web = image.web_after("");
    support::docker::docker_cli(&["start", &web.name]);
    let proxy = TestProxy::start(&services_file(&[("web", container_fields(&web, "idle_timeout = \"2s\""))])).await;
    state_becomes(&proxy, "web", "running").await;
    let adopted = Instant::now();
    state_becomes(&proxy, "web", "stopped").await;
    assert!(adopted.elapsed() >= Duration::from_millis(1500), "{:?}", adopted.elapsed());
    assert_eq!(web.docker_state(), "exited");
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"web\",result=\"ok\"}").await, 0.0, "no wake needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_wakes_and_sleeps_services() {
    let image = TestImage::build();
    let web = image.web_after("");
    let plain = Backend::fixed("plain").await;
    let r = services_file(&[
        ("web", container_fields(&web, "idle_timeout = \"0\"")),
        ("plain", format!("backends = [\"{}\"]", plain.addr)),
    ]);
    let proxy = TestProxy::start(&r).await;
    state_becomes(&proxy, "web", "stopped").await;
    let (status, body) = proxy.admin_post("/api/services/web/wake").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    state_becomes(&proxy, "web", "running").await;
    assert_eq!(web.docker_state(), "running");
    let (status, body) = proxy.admin_post("/api/services/web/sleep").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    state_becomes(&proxy, "web", "stopped").await;
    assert_eq!(web.docker_state(), "exited");

    assert_eq!(proxy.admin_post("/api/services/nope/wake").await.0, StatusCode::NOT_FOUND);
    assert_eq!(proxy.admin_post("/api/services/plain/sleep").await.0, StatusCode::CONFLICT);
    assert_eq!(proxy.admin_get("/api/services/web/wake").await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(proxy.service_view("plain").await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gets_status_and_activity_keys() {
    let etcd = support::etcd::Etcd::start().await;
    let image = TestImage::build();
    let web = image.web_after("");
    etcd.put("/reveille/services/web", &format!("{{\"container\": \"{}\", \"port\": 8080}}", web.name)).await;
    etcd.put("/reveille/routes/web.test", "{\"service\": \"web\"}").await;
    let endpoint = format!("http://127.0.0.1:{}", etcd.port());
    let proxy = TestProxy::start_custom("", |c| {
        c.routes = None;
        let mut e = reveille::EtcdConfig::new(vec![endpoint]);
        e.timeout = Duration::from_secs(2);
        c.etcd = Some(e);
        c.activity_interval = Duration::from_millis(200);
        c.passivation.node = "node-a".into();
    })
    .await;
    eventually(LONG, "the etcd route", || async {
        get(proxy.http, "web.test", "/index.html").await.status == StatusCode::OK
    })
    .await;

    let client = etcd.client().await;
    let read = |key: &'static str| {
        let mut c = client.clone();
        async move {
            let r = c.get(key, None).await.unwrap();
            r.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
        }
    };
    eventually(LONG, "status key says running", || async {
        read("/reveille/status/web").await.is_some_and(|v| {
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            v["state"] == "running" && v["node"] == "node-a" && v["since"].as_str().unwrap().ends_with("+00:00")
        })
    })
    .await;
    eventually(LONG, "activity key written", || async {
        read("/reveille/cluster/activity/web/node-a").await.is_some_and(|v| {
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            v["last"].as_str().is_some_and(|t| t.ends_with("+00:00") && t.starts_with("20")) && v["busy"] == false
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_path_decides_readiness() {
    let image = TestImage::build();
    // httpd listens at once, but its health CGI answers 503 until /www/ready exists, 1.5 s after the start.
    let script = concat!(
        "mkdir -p /www/cgi-bin; ",
        "printf '#!/bin/busybox sh\\nif [ -f /www/ready ]; then printf \"Status: 200 OK\\\\r\\\\n\\\\r\\\\nup\"; ",
        "else printf \"Status: 503 Service Unavailable\\\\r\\\\n\\\\r\\\\ndown\"; fi\\n' > /www/cgi-bin/health; ",
        "chmod +x /www/cgi-bin/health; (sleep 1.5; touch /www/ready) & "
    );
    let web = image.web_after(script);
    let fields = container_fields(&web, "health_path = \"/cgi-bin/health\"\nidle_timeout = \"0\"");
    let proxy = TestProxy::start(&services_file(&[("web", fields)])).await;
    state_becomes(&proxy, "web", "stopped").await;
    let begin = Instant::now();
    let got = get(proxy.http, "web.test", "/cgi-bin/health").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, "up", "forwarded only once the health check passed");
    assert!(begin.elapsed() >= Duration::from_millis(1500), "{:?}", begin.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_need_the_token_and_the_events_feed_shows_the_tenant_live() {
    let image = TestImage::build();
    let web = image.web_after("");
    let r = services_file(&[("web", container_fields(&web, "idle_timeout = \"0\""))]);
    let token = "s3cret-token-for-tests";
    let proxy = TestProxy::start_custom(&r, |c| {
        c.proxy.access_log = false;
        c.admin_token = Some(token.into());
    })
    .await;
    state_becomes(&proxy, "web", "stopped").await;
    let feed = support::EventStream::open(proxy.admin, "/api/events", &[]).await;

    // No token, or a wrong one: refused, and nothing happens.
    for auth in [None, Some("Bearer wrong-token-of-same-size!")] {
        let mut req = Request::post("/api/services/web/wake").header("host", proxy.admin.to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let got = send(proxy.admin, req.body(full("")).unwrap()).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{}", got.text);
        assert_eq!(got.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(proxy.service_view("web").await["state"], "stopped");
    // Reading stays open to anyone who reaches the listener.
    assert_eq!(proxy.admin_get("/api/services").await.0, StatusCode::OK);

    let bearer = format!("Bearer {token}");
    let command = |path: &'static str| {
        let bearer = bearer.clone();
        async move {
            let req = Request::post(path).header("host", proxy.admin.to_string()).header("authorization", bearer);
            send(proxy.admin, req.body(full("")).unwrap()).await
        }
    };
    let got = command("/api/services/web/wake").await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text);
    let seen = feed.until("\"state\":\"running\"").await;
    assert!(seen.contains("event: tenant") && seen.contains("\"service\":\"web\""), "{seen}");
    assert!(seen.contains("\"state\":\"starting\""), "the wake's steps, live: {seen}");
    assert_eq!(web.docker_state(), "running");
    let got = command("/api/services/web/sleep").await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text);
    feed.until("\"state\":\"stopped\"").await;
    assert_eq!(web.docker_state(), "exited");
}
