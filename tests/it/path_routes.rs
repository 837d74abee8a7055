//! Routes by path against the real proxy: the routes file (longest prefix, whole segments, fallback to the host
//! route, wildcards with prefixes, `strip_prefix`, live changes), dot segments, a real etcd (put, delete,
//! `strip_prefix` in JSON, a malformed value refused), `reveille route set|ls|rm` with a path, `reveille check`,
//! `/api/routes`, h2c and WebSocket through a stripped prefix, and a tenant woken by a path route. ACME for a
//! host with path routes alone is in `acme.rs`, the dashboard's view in `dashboard.rs`.

use std::process::Command;
use std::time::Duration;

use crate::cli::{reveille, value};
use crate::support::etcd::Etcd;
use crate::support::serve::BIN;
use crate::support::*;
use http::StatusCode;

/// A routes file for `shop.test`: the web app, its API under `/api/` (prefix stripped), its v2 under
/// `/api/v2/` (kept), docs on every tenant under `*.shop.test/docs/`, and `only.test` with a path route alone.
fn shop_routes(web: &Backend, api: &Backend, v2: &Backend, docs: &Backend) -> String {
    format!(
        r#"[services.web]
backends = ["{}"]
[services.api]
backends = ["{}"]
[services.v2]
backends = ["{}"]
[services.docs]
backends = ["{}"]

[routes]
"shop.test" = "web"
"shop.test/api/" = {{ service = "api", strip_prefix = true }}
"shop.test/api/v2" = "v2"
"*.shop.test" = "web"
"*.shop.test/docs/" = "docs"
"only.test/api/" = "api"
"#,
        web.addr, api.addr, v2.addr, docs.addr
    )
}

async fn shop() -> (TestProxy, [Backend; 4]) {
    let b = [
        Backend::echo("web").await,
        Backend::echo("api").await,
        Backend::echo("v2").await,
        Backend::echo("docs").await,
    ];
    let proxy = TestProxy::start(&shop_routes(&b[0], &b[1], &b[2], &b[3])).await;
    (proxy, b)
}

/// The backend that answered `host` + `path`, and the path it saw.
async fn reached(proxy: &TestProxy, host: &str, path: &str) -> (String, String) {
    let got = get(proxy.http, host, path).await;
    assert_eq!(got.status, StatusCode::OK, "{host}{path}: {}", got.text);
    (got.backend(), got.json()["path"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_on_whole_segments_with_fallback_and_strip() {
    let (proxy, _b) = shop().await;
    let cases = [
        // (host, path, backend, path the backend sees)
        ("shop.test", "/", "web", "/"),
        ("shop.test", "/cart?id=3", "web", "/cart?id=3"),
        ("shop.test", "/api/x?q=1", "api", "/x?q=1"),
        ("shop.test", "/api", "api", "/"),
        ("shop.test", "/api/", "api", "/"),
        ("shop.test", "/api?q=1", "api", "/?q=1"),
        ("shop.test", "/apix", "web", "/apix"),
        ("shop.test", "/apix/y", "web", "/apix/y"),
        ("shop.test", "/api/v2/users", "v2", "/api/v2/users"),
        ("shop.test", "/api/v2", "v2", "/api/v2"),
        ("shop.test", "/api/v20", "api", "/v20"),
        ("SHOP.test:8080", "/api/x", "api", "/x"),
        ("a.shop.test", "/docs/intro", "docs", "/docs/intro"),
        ("a.shop.test", "/docsx", "web", "/docsx"),
        ("a.shop.test", "/", "web", "/"),
        ("only.test", "/api/1", "api", "/api/1"),
    ];
    for (host, path, backend, seen) in cases {
        assert_eq!(reached(&proxy, host, path).await, (backend.to_string(), seen.to_string()), "{host}{path}");
    }
    // A host with only path routes: its other paths are an unknown route.
    let got = get(proxy.http, "only.test", "/other").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text);

    let (_, text) = proxy.admin_get("/api/routes").await;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["routes"]["shop.test/api/"], "api", "{json}");
    assert_eq!(json["routes"]["*.shop.test/docs/"], "docs", "{json}");
    assert_eq!(json["routes"]["shop.test"], "web", "{json}");
    assert_eq!(json["strip_prefix"], serde_json::json!(["shop.test/api/"]), "{json}");
    assert_eq!(json["sources"]["routes"]["shop.test/api/v2/"], "file", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_cross_into_another_prefix() {
    let (proxy, b) = shop().await;
    let t = Duration::from_secs(5);
    for path in ["/api/../admin", "/api/%2e%2e/admin", "/api/.%2E/admin", "/web/./api/x", "/.."] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(proxy.http, request.as_bytes(), t).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("'.' or '..' segment"), "{path}: {answer}");
    }
    assert_eq!(b.iter().map(|b| b.hits.load(std::sync::atomic::Ordering::SeqCst)).sum::<usize>(), 0);
    // Percent-encoding is matched as sent: `%61pi` is not `api`, it is the host route's.
    assert_eq!(reached(&proxy, "shop.test", "/%61pi/x").await.0, "web");
    // A dot-looking segment that is not `.` or `..` is an ordinary one.
    assert_eq!(reached(&proxy, "shop.test", "/api/...").await, ("api".into(), "/...".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_adds_and_removes_path_routes_live() {
    let (proxy, b) = shop().await;
    let base = shop_routes(&b[0], &b[1], &b[2], &b[3]);
    assert_eq!(reached(&proxy, "shop.test", "/admin/x").await.0, "web");
    proxy.write_routes(&format!("{base}\"shop.test/admin\" = {{ service = \"docs\", strip_prefix = true }}\n"));
    eventually(Duration::from_secs(10), "the admin path route", || async {
        get(proxy.http, "shop.test", "/admin/x").await.backend() == "docs"
    })
    .await;
    assert_eq!(reached(&proxy, "shop.test", "/admin/x").await.1, "/x");
    // A bad prefix refuses the whole file; the table in force stays, path routes included.
    proxy.write_routes(&format!("{base}\"shop.test/a/../b\" = \"docs\"\n"));
    eventually(Duration::from_secs(10), "the bad file refused", || async {
        proxy.metric("reveille_route_reloads_total{source=\"file\",result=\"failed\"}").await >= 1.0
    })
    .await;
    assert_eq!(reached(&proxy, "shop.test", "/admin/x").await, ("docs".into(), "/x".into()));
    // Gone again: the host route answers.
    proxy.write_routes(&base);
    eventually(Duration::from_secs(10), "the admin path route removed", || async {
        get(proxy.http, "shop.test", "/admin/x").await.backend() == "web"
    })
    .await;
    assert_eq!(reached(&proxy, "shop.test", "/api/x").await, ("api".into(), "/x".into()));
}

fn route_json(service: &str) -> String {
    serde_json::json!({ "service": service }).to_string()
}

fn service_json(backend: &Backend) -> String {
    serde_json::json!({ "backends": [backend.addr.to_string()] }).to_string()
}

/// Waits until `host` + `path` reaches the echo backend `name`.
async fn reaches(proxy: &TestProxy, host: &str, path: &str, name: &str) {
    let what = format!("{host}{path} served by {name}");
    eventually(Duration::from_secs(10), &what, || async {
        let got = get(proxy.http, host, path).await;
        got.status == StatusCode::OK && got.backend() == name
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_path_routes_put_deleted_and_malformed() {
    let etcd = Etcd::start().await;
    let (web, api) = (Backend::echo("web").await, Backend::echo("api").await);
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    etcd.put("/reveille/services/web", &service_json(&web)).await;
    etcd.put("/reveille/services/api", &service_json(&api)).await;
    etcd.put("/reveille/routes/shop.test", &route_json("web")).await;
    reaches(&proxy, "shop.test", "/api/x", "web").await;

    etcd.put("/reveille/routes/shop.test/api/", r#"{"service": "api", "strip_prefix": true}"#).await;
    reaches(&proxy, "shop.test", "/api/x", "api").await;
    assert_eq!(reached(&proxy, "shop.test", "/api/x?q=1").await.1, "/x?q=1");
    assert_eq!(reached(&proxy, "shop.test", "/apix").await.0, "web");

    // Malformed values are refused with the key named; the route in force stays.
    let rejected = proxy.metric("reveille_etcd_rejected_values_total").await;
    etcd.put("/reveille/routes/shop.test/api/", r#"{"service": "api", "strip_prefix": "yes"}"#).await;
    etcd.put("/reveille/routes/shop.test/a/../b", &route_json("api")).await;
    etcd.put("/reveille/routes/shop.test", r#"{"service": "web", "strip_prefix": true}"#).await;
    eventually(Duration::from_secs(10), "three values rejected", || async {
        proxy.metric("reveille_etcd_rejected_values_total").await == rejected + 3.0
    })
    .await;
    assert_eq!(reached(&proxy, "shop.test", "/api/x").await, ("api".into(), "/x".into()));
    assert_eq!(reached(&proxy, "shop.test", "/").await.0, "web");

    // Written without the trailing slash, it is the same route; deleting it brings the host route back.
    etcd.put("/reveille/routes/shop.test/api", &route_json("api")).await;
    eventually(Duration::from_secs(10), "the prefix kept", || async {
        get(proxy.http, "shop.test", "/api/x").await.json()["path"] == "/api/x"
    })
    .await;
    etcd.delete("/reveille/routes/shop.test/api").await;
    reaches(&proxy, "shop.test", "/api/x", "web").await;
    // A path route alone: other paths are unknown.
    etcd.delete("/reveille/routes/shop.test").await;
    etcd.put("/reveille/routes/shop.test/api/", &route_json("api")).await;
    reaches(&proxy, "shop.test", "/api/x", "api").await;
    assert_eq!(get(proxy.http, "shop.test", "/").await.status, StatusCode::NOT_FOUND);
    let (_, text) = proxy.admin_get("/api/routes").await;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["routes"], serde_json::json!({"shop.test/api/": "api"}), "{json}");
    assert_eq!(json["sources"]["routes"]["shop.test/api/"], "etcd", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_commands_take_a_path() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    let api = Backend::echo("api").await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    etcd.put("/reveille/services/api", &service_json(&api)).await;

    let (code, _, err) = reveille(url, &["route", "set", "shop.test", "api", "--strip-prefix"]);
    assert_eq!(code, 1);
    assert!(err.contains("`strip_prefix` needs a path prefix"), "{err}");
    let (code, _, err) = reveille(url, &["route", "set", "shop.test/a b/", "api"]);
    assert_eq!(code, 1);
    assert!(err.contains("route \"shop.test/a b/\": invalid path prefix"), "{err}");
    assert_eq!(value(&etcd, "/reveille/routes/shop.test").await, None);

    let (code, out, err) = reveille(url, &["route", "set", "Shop.Test/api", "api", "--strip-prefix"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route shop.test/api/ -> api (new, strips the prefix)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/routes/shop.test/api/").await.unwrap(),
        serde_json::json!({"service": "api", "strip_prefix": true})
    );
    reaches(&proxy, "shop.test", "/api/x", "api").await;
    assert_eq!(reached(&proxy, "shop.test", "/api/x").await.1, "/x");

    let (code, out, _) = reveille(url, &["route", "ls"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("shop.test/api/") && l.contains("api  (strips the prefix)")), "{out}");

    // Set again without the flag: the path is sent as is.
    let (code, out, _) = reveille(url, &["route", "set", "shop.test/api/", "api"]);
    assert_eq!(code, 0);
    assert!(out.contains("(changed)"), "{out}");
    eventually(Duration::from_secs(10), "the prefix kept", || async {
        get(proxy.http, "shop.test", "/api/x").await.json()["path"] == "/api/x"
    })
    .await;

    let (code, out, _) = reveille(url, &["route", "rm", "shop.test/api"]);
    assert_eq!(code, 0);
    assert!(out.contains("route shop.test/api/ removed"), "{out}");
    assert_eq!(value(&etcd, "/reveille/routes/shop.test/api/").await, None);
    eventually(Duration::from_secs(10), "the route gone", || async {
        get(proxy.http, "shop.test", "/api/x").await.status == StatusCode::NOT_FOUND
    })
    .await;
    let (code, _, err) = reveille(url, &["route", "rm", "shop.test/api/"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn check_validates_path_routes_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    let run = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN).args(["check", "--routes"]).arg(&file).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), said)
    };
    let head = "[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n";
    let (code, out) =
        run(&format!("{head}\"a.test\" = \"a\"\n\"a.test/api/\" = {{ service = \"a\", strip_prefix = true }}\n"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (2 routes, 1 services)"), "{out}");
    for (key, why) in [
        ("a.test/api/../x", "a '.' or '..' segment"),
        ("a.test/a b", "invalid character ' '"),
        ("a.test/q?x=1", "invalid character '?'"),
        ("a.test/f#x", "invalid character '#'"),
        ("a.test/", "the prefix '/' is the host route itself"),
        ("a.test//x", "empty segment"),
    ] {
        let (code, out) = run(&format!("{head}\"{key}\" = \"a\"\n"));
        assert_eq!(code, 1, "{key}: {out}");
        assert!(out.contains(&format!("line 4: route \"{key}\": invalid path prefix: {why}")), "{key}: {out}");
    }
    let (code, out) = run(&format!("{head}\"a.test\" = {{ service = \"a\", strip_prefix = true }}\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`strip_prefix` needs a path prefix"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_websocket_follow_path_routes_and_their_strip() {
    use futures::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::Message;

    let (web, api, chat) = (Backend::echo("web").await, Backend::echo("api").await, Backend::websocket_echo().await);
    let routes = format!(
        "[services.web]\nbackends = [\"{}\"]\n[services.api]\nbackends = [\"{}\"]\n[services.chat]\nbackends = [\"{}\"]\n\
         [routes]\n\"shop.test\" = \"web\"\n\"shop.test/api/\" = {{ service = \"api\", strip_prefix = true }}\n\
         \"shop.test/ws\" = {{ service = \"chat\", strip_prefix = true }}\n",
        web.addr, api.addr, chat.addr
    );
    let proxy = TestProxy::start(&routes).await;

    // h2c: the path comes from the request target, with its authority; the backend gets the stripped one.
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for (target, backend, path) in
        [("http://shop.test/api/v1/x?q=1", "api", "/v1/x?q=1"), ("http://shop.test/apix", "web", "/apix")]
    {
        let resp = sender.send_request(http::Request::get(target).body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{target}");
        let json: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!((json["backend"].as_str(), json["path"].as_str()), (Some(backend), Some(path)), "{target}");
        assert_eq!(json["headers"]["host"][0], "shop.test");
    }

    // A WebSocket upgrade under a stripped prefix reaches its service and echoes.
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://shop.test/ws/room", stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: hi"));
    ws.close(None).await.unwrap();
    assert_eq!(proxy.metric("reveille_requests_total{service=\"chat\",class=\"1xx\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_tenant_reached_by_a_path_route_is_woken() {
    use crate::support::runtime::ScriptedRuntime;

    let web = Backend::echo("web").await;
    let runtime = ScriptedRuntime::new();
    let port = runtime.add_stopped("api-ctr", Duration::from_millis(100)).await;
    let routes = format!(
        "[services.web]\nbackends = [\"{}\"]\n[services.api]\ncontainer = \"api-ctr\"\nport = {port}\nidle_timeout = \"0\"\n\
         [routes]\n\"shop.test\" = \"web\"\n\"shop.test/api/\" = {{ service = \"api\", strip_prefix = true }}\n",
        web.addr
    );
    let proxy = TestProxy::start_with_runtime(&routes, |_| {}, std::sync::Arc::new(runtime.clone())).await;
    eventually(Duration::from_secs(10), "api stopped", || async {
        proxy.service_view("api").await["state"] == "stopped"
    })
    .await;
    // The host route does not wake the path route's tenant.
    assert_eq!(reached(&proxy, "shop.test", "/").await.0, "web");
    assert_eq!(runtime.count("api-ctr", "start"), 0);

    let got = get(proxy.http, "shop.test", "/api/x").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, "hello from api-ctr");
    assert_eq!(runtime.count("api-ctr", "start"), 1);
    assert_eq!(proxy.service_view("api").await["state"], "running");
}
