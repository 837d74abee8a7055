//! The admin endpoint: health, readiness, metrics and the route table as JSON; the admin listener's limits
//! (timeouts, connection and subscriber caps, the open-files limit of the binary) and who may use it (Host,
//! cross-site commands, framing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::serve::{Serve, BIN, SERVE};
use crate::support::*;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use reveille::{AdminState, Events, Metrics, Readiness, RouteHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_routes() {
    let a = Backend::echo("a").await;
    let proxy =
        TestProxy::start(&routes_file(&[("acme", vec![a.addr])], &[("acme.test", "acme"), ("*.acme.test", "acme")]))
            .await;

    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(proxy.admin_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(proxy.admin_get("/nope").await.0, StatusCode::NOT_FOUND);

    let (status, body) = proxy.admin_get("/api/routes").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["routes"]["acme.test"], "acme");
    assert_eq!(json["routes"]["*.acme.test"], "acme");
    assert_eq!(json["services"]["acme"]["backends"][0], a.addr.to_string());

    for _ in 0..3 {
        assert_eq!(get(proxy.http, "acme.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(get(proxy.http, "unknown.test", "/").await.status, StatusCode::NOT_FOUND);
    let (_, text) = proxy.admin_get("/metrics").await;
    for series in [
        "reveille_requests_total{service=\"acme\",class=\"2xx\"} 3",
        "reveille_unrouted_requests_total{kind=\"unknown_host\"} 1",
        "reveille_request_duration_seconds_count 4", // the 404 is timed too
        "reveille_routes 2",
        "reveille_services 1",
        "reveille_route_reloads_total{source=\"file\",result=\"ok\"} 1",
        "reveille_upstream_errors_total{kind=\"connect_refused\"} 0",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // Connections: at least the ones above; the gauge is exposed.
    assert!(proxy.metric("reveille_connections_total").await >= 4.0);
    assert!(text.contains("reveille_open_connections "), "{text}");
}

/// `/api/services` gives every service a health from what the proxy saw of its backends: a plain service whose
/// only backend refuses is down (not "running" and healthy), one whose backend answers is up, one with a live and a
/// refusing backend degraded, one whose backend answers 500 down, and one nobody reached unknown; each backend's
/// own health and last failure; and requests and 5xx per second over the last minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_have_a_health_from_their_backends() {
    let live = Backend::echo("live").await;
    let failing = Backend::start(Arc::new(|_req| {
        Box::pin(async {
            let mut r = http::Response::new(full("broken"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }))
    .await;
    let dead = dead_addr().await;
    let proxy = TestProxy::start(&routes_file(
        &[
            ("health-dead", vec![dead]),
            ("health-live", vec![live.addr]),
            ("health-mixed", vec![live.addr, dead]),
            ("health-broken", vec![failing.addr]),
            ("health-idle", vec![live.addr]),
        ],
        &[
            ("health-dead.test", "health-dead"),
            ("health-live.test", "health-live"),
            ("health-mixed.test", "health-mixed"),
            ("health-broken.test", "health-broken"),
            ("health-idle.test", "health-idle"),
        ],
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(proxy.http, "health-dead.test", "/").await.status, StatusCode::BAD_GATEWAY);
        assert_eq!(get(proxy.http, "health-live.test", "/").await.status, StatusCode::OK);
        // Round-robin from each backend in turn: the refusing one is tried (and passed over) every other time.
        assert_eq!(get(proxy.http, "health-mixed.test", "/").await.status, StatusCode::OK);
        assert_eq!(get(proxy.http, "health-broken.test", "/").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    let (status, body) = proxy.admin_get("/api/services").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let services = &v["services"];
    for (name, health) in [
        ("health-dead", "down"),
        ("health-live", "up"),
        ("health-mixed", "degraded"),
        ("health-broken", "down"),
        ("health-idle", "unknown"),
    ] {
        assert_eq!(services[name]["health"], health, "{name}: {}", services[name]);
    }
    let dead_backend = &services["health-dead"]["backend_health"][0];
    assert_eq!(dead_backend["address"], dead.to_string());
    assert_eq!(dead_backend["health"], "down", "{dead_backend}");
    assert_eq!(dead_backend["last_failure"]["kind"], "connect_refused", "{dead_backend}");
    assert_eq!(dead_backend["failures"], 4, "{dead_backend}");
    assert!(dead_backend["last_answer"].is_null(), "{dead_backend}");
    let mixed: std::collections::HashMap<String, String> = services["health-mixed"]["backend_health"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b["health"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(mixed[&live.addr.to_string()], "up", "{mixed:?}");
    assert_eq!(mixed[&dead.to_string()], "down", "{mixed:?}");
    assert_eq!(services["health-broken"]["backend_health"][0]["last_failure"]["kind"], "5xx");
    assert_eq!(services["health-idle"]["backend_health"][0]["health"], "unknown");
    // A plain service has no lifecycle: its state stays what it was; the health says whether it is served.
    assert_eq!(services["health-dead"]["state"], "running");

    // Rates, from the counters read every 5 s: live answered 4 requests and broken 4 errors within the window.
    eventually(Duration::from_secs(20), "rates over two samples", || async {
        proxy.service_view("health-live").await["requests_per_s"].as_f64().is_some_and(|r| r > 0.0)
    })
    .await;
    let (live_view, broken_view) = (proxy.service_view("health-live").await, proxy.service_view("health-broken").await);
    assert_eq!(live_view["errors_per_s"], 0.0, "{live_view}");
    assert!(broken_view["errors_per_s"].as_f64().unwrap() > 0.0, "{broken_view}");
    assert_eq!(broken_view["errors_per_s"], broken_view["requests_per_s"], "{broken_view}");
    assert_eq!(proxy.service_view("health-idle").await["requests_per_s"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_a_table_is_loaded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteHandle::new();
    let readiness = Readiness::new();
    let loaded = readiness.gate("route sources");
    let stop = CancellationToken::new();
    tokio::spawn(reveille::serve_admin(
        listener,
        AdminState {
            routes: routes.clone(),
            metrics: Arc::new(Metrics::new()),
            events: Events::new(),
            passivator: None,
            readiness,
            token: None,
            certificates: None,
            sources: None,
            settings: reveille::AdminSettings::default(),
        },
        stop.clone(),
    ));

    let got = get(addr, "admin", "/readyz").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(addr, "admin", "/healthz").await.status, StatusCode::OK);
    routes.store(reveille::RouteTable::empty());
    assert_eq!(
        get(addr, "admin", "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a table alone is not readiness"
    );
    loaded.open();
    assert_eq!(get(addr, "admin", "/readyz").await.status, StatusCode::OK);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_feed_streams_route_changes_and_resumes_after_a_reconnect() {
    let backend = support::Backend::fixed("x").await;
    let table = |hosts: &[&str]| {
        let mut t = format!("[services.s]\nbackends = [\"{}\"]\n[routes]\n", backend.addr);
        for h in hosts {
            t.push_str(&format!("\"{h}\" = \"s\"\n"));
        }
        t
    };
    let proxy = support::TestProxy::start(&table(&["a.test"])).await;
    let feed = support::EventStream::open(proxy.admin, "/api/events", &[]).await;
    proxy.write_routes(&table(&["a.test", "b.test"]));
    let seen = feed.until("\"routes\":2").await;
    assert!(seen.contains("event: routes"), "{seen}");
    let id = feed.last_id().expect("events carry ids");
    drop(feed);

    // Missed while disconnected: delivered on reconnecting with Last-Event-ID, and nothing from before it.
    proxy.write_routes(&table(&["a.test", "b.test", "c.test"]));
    let resumed = support::EventStream::open(proxy.admin, "/api/events", &[("Last-Event-ID", &id)]).await;
    let seen = resumed.until("\"routes\":3").await;
    assert!(!seen.contains("\"routes\":2"), "{seen}");
    // An id this process never gave: reload, then follow.
    let stale = support::EventStream::open(proxy.admin, "/api/events", &[("Last-Event-ID", "1-5")]).await;
    let seen = stale.until("event: reset").await;
    assert!(!seen.contains("event: routes"), "{seen}");
    proxy.write_routes(&table(&["a.test"]));
    stale.until("\"routes\":1").await;
}

/// Every series the Grafana dashboard (`deploy/grafana/reveille.json`) queries is one reveille exposes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let proxy =
        support::TestProxy::start("[services.s]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"s\"\n").await;
    let (_, exposed) = proxy.admin_get("/metrics").await;
    let families: std::collections::BTreeSet<&str> =
        exposed.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/reveille.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("reveille_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() > 15, "{queried:?}");
    for name in &queried {
        let family = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(families.contains(family), "the dashboard queries {name}, which reveille does not expose");
    }
}

// === The admin listener's limits ===

/// A reveille with one fast tenant (`app.test`, for a bystander) and its admin listener's settings adjusted by
/// `f`.
async fn with_admin(f: impl FnOnce(&mut reveille::AdminSettings)) -> (TestProxy, Backend) {
    let app = Backend::fixed("ok").await;
    let routes = routes_file(&[("app", vec![app.addr])], &[("app.test", "app")]);
    let proxy = TestProxy::start_custom(&routes, |c| {
        c.proxy.access_log = false;
        f(&mut c.admin_settings);
    })
    .await;
    (proxy, app)
}

/// Reads (and drops) what arrives until the peer closes the connection: how long after `since` it closed, or
/// `None` if it is still open after `limit`.
async fn closed_after(stream: &mut (impl AsyncRead + Unpin), since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = vec![0u8; 65536];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()
}

/// The value of one sample of the process's own metrics (read in process: the admin listener may be full).
fn sample(proxy: &TestProxy, series: &str) -> f64 {
    let text = proxy.running().metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_are_closed_at_the_header_timeout() {
    let (proxy, _app) = with_admin(|a| {
        a.header_read_timeout = Duration::from_secs(1);
        a.max_connections = 1000;
    })
    .await;
    let begin = Instant::now();
    let mut conns = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(proxy.admin).await.unwrap();
        // Most send half a head; some send nothing at all.
        if i % 10 != 0 {
            s.write_all(b"GET /api/routes HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        }
        conns.push(s);
    }
    // Slowloris: a header line every 200 ms does not restart the clock.
    let (mut drip_read, mut drip_write) = TcpStream::connect(proxy.admin).await.unwrap().into_split();
    let drip_begin = Instant::now();
    let dripping = tokio::spawn(async move {
        let _ = drip_write.write_all(b"GET /api/routes HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if drip_write.write_all(format!("X-Drip-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let opened = begin.elapsed();
    for (i, s) in conns.iter_mut().enumerate() {
        let closed = closed_after(s, begin, Duration::from_secs(10)).await;
        let closed = closed.unwrap_or_else(|| panic!("half-sent head {i} still open after 10 s"));
        assert!(closed >= Duration::from_millis(900), "head {i} closed after {closed:?}, before the 1 s timeout");
        assert!(closed <= opened + Duration::from_secs(3), "head {i} closed after {closed:?}");
    }
    let closed = closed_after(&mut drip_read, drip_begin, Duration::from_secs(10)).await;
    let closed = closed.expect("the dripping head still open after 10 s");
    assert!(closed >= Duration::from_millis(900) && closed <= Duration::from_secs(3), "{closed:?}");
    dripping.abort();
    assert_eq!(proxy.metric("reveille_admin_timeouts_total{kind=\"header\"}").await, 301.0);
    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK, "the listener still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_at_the_idle_timeout_not_the_header_one() {
    let (proxy, _app) = with_admin(|a| {
        a.header_read_timeout = Duration::from_millis(500);
        a.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut s = TcpStream::connect(proxy.admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ok\n") {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let closed = closed_after(&mut s, answered, Duration::from_secs(10)).await.expect("still open after 10 s");
    assert!(closed >= Duration::from_millis(1800) && closed <= Duration::from_secs(4), "closed after {closed:?}");
    assert_eq!(proxy.metric("reveille_admin_timeouts_total{kind=\"idle\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_past_the_cap_are_closed_while_the_proxy_serves() {
    let (proxy, _app) = with_admin(|a| a.max_connections = 16).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    eventually(Duration::from_secs(5), "16 admin connections open", || async {
        sample(&proxy, "reveille_admin_open_connections") == 16.0
    })
    .await;
    for i in 0..10 {
        let mut s = TcpStream::connect(proxy.admin).await.unwrap();
        let begin = Instant::now();
        let closed = closed_after(&mut s, begin, Duration::from_secs(5)).await;
        assert!(closed.is_some_and(|d| d < Duration::from_secs(2)), "connection {i} past the cap: {closed:?}");
        // The bystander, through the proxy listener, meanwhile.
        let got = get(proxy.http, "app.test", "/").await;
        assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(sample(&proxy, "reveille_admin_connections_refused_total"), 10.0);
    assert_eq!(sample(&proxy, "reveille_admin_open_connections"), 16.0);
    // Closed ones free their slot.
    drop(held);
    eventually(Duration::from_secs(5), "the admin listener serving again", || async {
        let req = http::Request::get("/healthz").header("host", proxy.admin.to_string()).body(full("")).unwrap();
        testkit::http::send(proxy.admin, req).await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_subscriber_past_the_cap_gets_503() {
    let (proxy, _app) = with_admin(|a| a.max_event_subscribers = 2).await;
    let first = EventStream::open(proxy.admin, "/api/events", &[]).await;
    let _second = EventStream::open(proxy.admin, "/api/events", &[]).await;
    let req = http::Request::get("/api/events").header("host", proxy.admin.to_string()).body(full("")).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), testkit::http::send(proxy.admin, req)).await;
    let got = got.expect("a third subscriber got a stream (or nothing) instead of a whole 503").unwrap();
    let (status, text) = (got.status(), String::from_utf8_lossy(got.body()).into_owned());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("too many clients follow /api/events") && text.contains("max_event_subscribers"), "{text}");
    assert_eq!(proxy.metric("reveille_admin_events_refused_total").await, 1.0);
    assert_eq!(proxy.metric("reveille_admin_event_subscribers").await, 2.0);
    // A subscriber that leaves frees its place.
    drop(first);
    eventually(Duration::from_secs(5), "a free subscriber slot", || async {
        proxy.metric("reveille_admin_event_subscribers").await == 1.0
    })
    .await;
    let third = EventStream::open(proxy.admin, "/api/events", &[]).await;
    third.until("retry: 2000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_subscriber_that_never_reads_is_dropped_at_the_send_timeout() {
    let (proxy, _app) = with_admin(|a| a.send_timeout = Duration::from_secs(1)).await;
    // A client with a small receive buffer that asks for the feed and never reads it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(proxy.admin).await.unwrap();
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.admin).as_bytes()).await.unwrap();
    eventually(Duration::from_secs(5), "the subscriber counted", || async {
        sample(&proxy, "reveille_admin_event_subscribers") == 1.0
    })
    .await;
    // Events it does not read: 8 MB, far more than the socket buffers hold.
    let pad = "x".repeat(32 * 1024);
    for _ in 0..256 {
        proxy.running().events.publish("routes", serde_json::json!({ "pad": pad }));
    }
    let published = Instant::now();
    eventually(Duration::from_secs(10), "the never-reading subscriber dropped", || async {
        sample(&proxy, "reveille_admin_event_subscribers") == 0.0
    })
    .await;
    assert!(published.elapsed() >= Duration::from_millis(900), "dropped before the send timeout");
    assert_eq!(sample(&proxy, "reveille_admin_timeouts_total{kind=\"send\"}"), 1.0);
    // Its connection is closed: what was in flight, then the end.
    assert!(closed_after(&mut s, published, Duration::from_secs(10)).await.is_some(), "still open");
    // A client that reads follows the feed as before.
    let feed = EventStream::open(proxy.admin, "/api/events", &[]).await;
    proxy.running().events.publish("routes", serde_json::json!({ "routes": 99 }));
    feed.until("\"routes\":99").await;
}

// === The binary's file descriptors ===

/// `reveille serve` on port 0 under `prlimit --nofile=SOFT:HARD`, killed on drop.
struct Limited {
    serve: Serve,
    _dir: tempfile::TempDir,
}

impl Limited {
    fn start(nofile: &str, backend: SocketAddr) -> Limited {
        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.toml");
        std::fs::write(&routes, routes_file(&[("app", vec![backend])], &[("app.test", "app")])).unwrap();
        let mut command = std::process::Command::new("prlimit");
        command.arg(format!("--nofile={nofile}")).arg(BIN).args(SERVE).arg("--routes").arg(&routes);
        let serve = Serve::start("reveille", command.args(["--access-log", "false"]));
        Limited { serve, _dir: dir }
    }
}

/// A bystander's request through the proxy listener: whether it got its 200 within 2 s.
async fn bystander(http: SocketAddr) -> bool {
    let req = http::Request::get("/").header("host", "app.test").body(full("")).unwrap();
    matches!(tokio::time::timeout(Duration::from_secs(2), testkit::http::send(http, req)).await,
        Ok(Ok(r)) if r.status() == StatusCode::OK)
}

/// With few file descriptors (400, soft and hard), a flood of idle admin connections used to take them all, and
/// the proxy listener could accept nothing (the issue measured 0% for its bystander). The admin listener now
/// holds at most `max_connections` (256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_leaves_the_proxy_its_file_descriptors() {
    let app = Backend::fixed("ok").await;
    let reveille = Limited::start("400:400", app.addr);
    assert!(bystander(reveille.serve.http).await, "the bystander before the flood");
    // 700 connections that send nothing, opened at once (a listener that stops accepting leaves some of them
    // unconnected: those give up after 3 s).
    let connects =
        (0..700).map(|_| tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(reveille.serve.admin)));
    let mut flood: Vec<TcpStream> =
        futures::future::join_all(connects).await.into_iter().filter_map(|c| c.ok()?.ok()).collect();
    // Every connection past the cap is accepted and closed: wait for the last one's close.
    let closed = closed_after(flood.last_mut().unwrap(), Instant::now(), Duration::from_secs(5)).await;
    let mut served = 0;
    for _ in 0..40 {
        served += usize::from(bystander(reveille.serve.http).await);
    }
    assert_eq!(served, 40, "bystander requests served during the admin flood ({} connected)", flood.len());
    assert!(closed.is_some(), "the last admin connection was never closed");
}

/// Started with a soft limit of 256 open files and a hard one of 4096, reveille raises the soft one and holds
/// 600 client connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_one_at_start() {
    let app = Backend::fixed("ok").await;
    let reveille = Limited::start("256:4096", app.addr);
    let raised =
        reveille.serve.startup.iter().find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("open files")));
    let raised = raised.and_then(|v| v["message"].as_str()).unwrap_or_default();
    assert_eq!(raised, "open files limit raised from 256 to 4096", "{:?}", reveille.serve.startup);

    let mut held = Vec::new();
    for i in 0..600 {
        let stream = TcpStream::connect(reveille.serve.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/").header("host", "app.test").body(full("")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await;
        assert!(
            matches!(&got, Ok(Ok(r)) if r.status() == StatusCode::OK),
            "connection {i} of 600 held at once: {got:?}"
        );
        held.push(sender);
    }
}

// === Who may use the admin listener ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_name_the_listener_gets_421() {
    let a = Backend::fixed("a").await;
    let proxy = TestProxy::start(&routes_file(&[("acme", vec![a.addr])], &[("acme.test", "acme")])).await;
    let port = proxy.admin.port();
    // DNS rebinding: a page of evil.example whose name now points at the listener.
    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        for path in ["/api/routes", "/api/services", "/", "/api/events"] {
            let got = get(proxy.admin, &host, path).await;
            assert_eq!(got.status, StatusCode::MISDIRECTED_REQUEST, "{host} {path}: {}", got.text);
            assert!(got.text.contains("allowed_hosts"), "{}", got.text);
            assert!(!got.text.contains(&a.addr.to_string()), "{}", got.text);
        }
        // Probes and Prometheus reach these by any name.
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(get(proxy.admin, &host, path).await.status, StatusCode::OK, "{host} {path}");
        }
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "127.0.0.1:19090".into(), "[::1]".into()] {
        let got = get(proxy.admin, &host, "/api/routes").await;
        assert_eq!(got.status, StatusCode::OK, "{host}: {}", got.text);
        assert!(got.text.contains(&a.addr.to_string()), "{}", got.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_name_the_listener_too() {
    let (proxy, _app) = with_admin(|a| a.allowed_hosts = vec!["admin.internal".into()]).await;
    assert_eq!(get(proxy.admin, "Admin.Internal:9090", "/api/routes").await.status, StatusCode::OK);
    assert_eq!(get(proxy.admin, "other.internal", "/api/routes").await.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(proxy.metric("reveille_admin_requests_refused_total{reason=\"host\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_cannot_be_framed_or_sniffed() {
    let a = Backend::fixed("a").await;
    let proxy = TestProxy::start(&routes_file(&[("acme", vec![a.addr])], &[("acme.test", "acme")])).await;
    for path in ["/", "/api/routes", "/metrics"] {
        let got = get(proxy.admin, &proxy.admin.to_string(), path).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        let csp = got.headers.get("content-security-policy").map(|v| v.to_str().unwrap()).unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert_eq!(got.headers.get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"), "{path}");
        assert_eq!(got.headers.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{path}");
    }
    // The dashboard keeps its own policy: nothing fetched from elsewhere.
    let got = get(proxy.admin, &proxy.admin.to_string(), "/").await;
    assert!(got.headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
}

/// A page on another site posts a plain HTML form (a "simple" request: no preflight) to sleep a real tenant.
/// Refused, and the container keeps running; the dashboard's own command (same origin, `X-Reveille`) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_cannot_sleep_a_real_tenant() {
    use support::docker::TestImage;
    let image = TestImage::build();
    let web = image.web_after("");
    let routes = format!(
        "[services.web]\ncontainer = \"{}\"\nport = 8080\nidle_timeout = \"0\"\n[routes]\n\"web.test\" = \"web\"\n",
        web.name
    );
    let proxy = TestProxy::start(&routes).await;
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(web.docker_state(), "running");
    let admin = proxy.admin.to_string();
    let own_origin = format!("http://{admin}");
    let post = |headers: Vec<(&'static str, String)>| {
        let mut req = http::Request::post("/api/services/web/sleep").header("host", admin.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(proxy.admin, req.body(full("x=1")).unwrap())
    };
    let form = ("content-type", "application/x-www-form-urlencoded".to_string());
    let refused = [
        // What a browser sends for a form on evil.example.
        vec![("origin", "https://evil.example".into()), ("sec-fetch-site", "cross-site".into()), form.clone()],
        // An older browser: Origin only.
        vec![("origin", "https://evil.example".into()), form.clone()],
        // Even with the header: another origin.
        vec![("origin", "https://evil.example".into()), ("x-reveille", "1".into()), form.clone()],
        // Another port of this host is the same site, not the same origin.
        vec![("origin", "http://127.0.0.1:1".into()), ("sec-fetch-site", "same-site".into()), form.clone()],
        // No Origin (a client that hides it), no X-Reveille: a form could have sent it.
        vec![form.clone()],
    ];
    for headers in refused {
        let got = post(headers.clone()).await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{headers:?}: {}", got.text);
        assert!(got.json()["error"].as_str().unwrap().starts_with("refused: "), "{}", got.text);
    }
    assert_eq!(proxy.metric("reveille_admin_requests_refused_total{reason=\"cross_site\"}").await, 4.0);
    assert_eq!(proxy.metric("reveille_admin_requests_refused_total{reason=\"no_header\"}").await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.service_view("web").await["state"], "running");
    assert_eq!(web.docker_state(), "running", "a refused command stopped the container");

    // The dashboard's request: its own origin, with the header.
    let got =
        post(vec![("origin", own_origin), ("sec-fetch-site", "same-origin".into()), ("x-reveille", "1".into()), form])
            .await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text);
    eventually(Duration::from_secs(20), "web stopped", || async {
        proxy.service_view("web").await["state"] == "stopped"
    })
    .await;
    assert_eq!(web.docker_state(), "exited");
}
