//! The dashboard in a real browser: headless Chromium (Debian's `chromium`), driven over the DevTools protocol,
//! loads the admin listener's `/`, sees a real Docker tenant change state live (through `/api/events`) with its
//! wake timings, presses its wake button, shows where each route comes from (file or etcd) and the replicas; and
//! pages through 10 000 services on a phone-sized window; plain services with the health their backends earned
//! (a refusing backend is down, not green "running"), their rates, and a route to a missing service flagged, on
//! a wide window the page fills. Screenshots of the page are written to
//! `target/dashboard.png` and `target/dashboard-phone.png`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::docker::TestImage;
use crate::support::{eventually, TestProxy};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with its DevTools endpoint on a loopback port; killed on drop.
struct Chromium {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`, the body (by its Content-Length: the DevTools endpoint keeps the connection).
async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let get = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    return Ok(body.to_string());
                }
            }
        }
        Ok(String::from_utf8_lossy(&buf).split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    };
    tokio::time::timeout(Duration::from_secs(3), get)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")))
}

impl Chromium {
    async fn start() -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let port = testkit::ports::free_port();
        let child = Command::new("chromium")
            // Its singleton socket goes into the profile (removed with it), not a directory left in /tmp.
            .env("TMPDIR", profile.path())
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
            .args(["--window-size=1100,900", "--hide-scrollbars"])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian's chromium package, installed by scripts/test) must be installed");
        let browser = Chromium { child, port, _profile: profile };
        eventually(LONG, "Chromium's DevTools endpoint", || async { http_get(port, "/json/version").await.is_ok() })
            .await;
        browser
    }

    /// A page showing the dashboard of the admin listener at `admin`, once its first load is drawn.
    async fn dashboard(&self, admin: std::net::SocketAddr) -> Page {
        let mut page = self.page().await;
        page.call("Runtime.enable", serde_json::json!({})).await;
        page.call("Page.navigate", serde_json::json!({ "url": format!("http://{admin}/") })).await;
        page
    }

    /// A DevTools session on the browser's page.
    async fn page(&self) -> Page {
        let deadline = Instant::now() + LONG;
        let url = loop {
            let list = http_get(self.port, "/json/list").await.unwrap_or_default();
            let targets: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
            let page = targets.as_array().and_then(|t| t.iter().find(|t| t["type"] == "page").cloned());
            if let Some(url) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str().map(String::from)) {
                break url;
            }
            assert!(Instant::now() < deadline, "no page target: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        Page { socket, next: 0 }
    }
}

struct Page {
    socket: Socket,
    next: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::Text(msg.to_string())).await.unwrap();
        loop {
            let Some(Ok(Message::Text(text))) = self.socket.next().await else { panic!("DevTools went away") };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its value.
    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.call("Runtime.evaluate", params).await["result"]["value"].clone()
    }

    /// Waits until `expression` evaluates to `want`.
    async fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", serde_json::json!({ "format": "png" })).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(name);
        std::fs::write(&out, png).unwrap();
    }

    /// Waits until `expression` evaluates to a string that `ok` accepts.
    async fn until_with(&mut self, expression: &str, what: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + LONG;
        loop {
            let got = self.eval(expression).await;
            if got.as_str().is_some_and(&ok) {
                return;
            }
            assert!(Instant::now() < deadline, "{expression} is {got}, not {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn until(&mut self, expression: &str, want: &str) {
        let deadline = Instant::now() + LONG;
        loop {
            let got = self.eval(expression).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{expression} is {got}, not {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_tenant_live_and_wakes_it() {
    let image = TestImage::build();
    let web = image.web_after("");
    let routes = format!(
        "[services.web]\ncontainer = \"{}\"\nport = 8080\nidle_timeout = \"0\"\n[services.static]\nbackends = [\"127.0.0.1:1\"]\n\
         [routes]\n\"web.test\" = \"web\"\n\"shop.test\" = \"static\"\n",
        web.name
    );
    let certs = tempfile::tempdir().unwrap();
    support::tls::TestCa::new().issue(&["shop.test", "*.shop.test"]).write_pair(certs.path(), "shop");
    // etcd as a second route source (one route from it) and the cluster's view (this replica, the decider).
    let etcd = support::etcd::Etcd::start().await;
    etcd.put("/reveille/routes/api.test", "{\"service\": \"static\"}").await;
    let proxy = TestProxy::start_custom(&routes, |c| {
        c.proxy.access_log = false;
        c.https = Some("127.0.0.1:0".parse().unwrap());
        c.tls.certs_dir = Some(certs.path().to_path_buf());
        let mut e = reveille::EtcdConfig::new(vec![etcd.url.clone()]);
        e.timeout = Duration::from_secs(2);
        c.etcd = Some(e);
        c.passivation.node = "edge-dash".to_string();
    })
    .await;
    eventually(LONG, "web stopped", || async { proxy.service_view("web").await["state"] == "stopped" }).await;

    let (_, listed) = proxy.admin_get("/api/certificates").await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["certificates"][0]["name"], "shop", "{listed}");
    assert_eq!(listed["certificates"][0]["acme"], false);
    assert!(listed["certificates"][0]["days_left"].as_i64().unwrap() > 365);

    // etcd's routes join the file's once reveille has read them (it serves the file's meanwhile).
    eventually(LONG, "etcd's route in the table", || async {
        proxy.admin_get("/api/routes").await.1.contains("api.test")
    })
    .await;
    let (_, listed) = proxy.admin_get("/api/routes").await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["sources"]["routes"]["shop.test"], "file", "{listed}");
    assert_eq!(listed["sources"]["routes"]["api.test"], "etcd", "{listed}");
    assert_eq!(listed["sources"]["services"]["web"], "file", "{listed}");

    let browser = Chromium::start().await;
    let mut page = browser.dashboard(proxy.admin).await;
    // The state cell also holds the last error, if any: its first text node is the state.
    let state = "document.querySelector('tr[data-service=\"web\"] .state')?.firstChild?.textContent ?? ''";
    page.until(state, "stopped").await;
    page.until("document.getElementById('live').textContent", "live").await;
    let source = |host: &str| format!("document.querySelector('tr[data-route=\"{host}\"] .source')?.textContent ?? ''");
    page.until(&source("shop.test"), "file").await;
    page.until(&source("api.test"), "etcd").await;
    page.until("document.getElementById('cluster').hidden ? 'hidden' : 'shown'", "shown").await;
    let replica = page.eval("document.querySelector('tr[data-replica=\"edge-dash\"]')?.textContent ?? ''").await;
    assert!(replica.as_str().unwrap().contains("this replica"), "{replica}");
    let wake = "document.querySelector('tr[data-service=\"web\"] .wake')?.firstChild?.textContent ?? ''";
    assert_eq!(page.eval(wake).await, "", "no wake yet");
    // Asleep, not down; stopped since when; it can wake, not sleep.
    let health = "document.querySelector('tr[data-service=\"web\"] .health')?.textContent ?? ''";
    page.until(health, "asleep").await;
    let since = page.eval("document.querySelector('tr[data-service=\"web\"] .stopped-since')?.textContent ?? ''").await;
    assert!(since.as_str().unwrap().starts_with("stopped since "), "{since}");
    let enabled =
        |c: &str| format!("String(!(document.querySelector('tr[data-service=\"web\"] button.{c}')?.disabled ?? true))");
    assert_eq!(page.eval(&enabled("wake")).await, "true");
    assert_eq!(page.eval(&enabled("sleep")).await, "false");
    let cert = page.eval("document.querySelector('tr[data-certificate=\"shop\"]')?.textContent ?? ''").await;
    let cert = cert.as_str().unwrap();
    assert!(
        cert.contains("shop.test, *.shop.test") && cert.contains("2099-01-01") && cert.contains("directory"),
        "{cert}"
    );

    // A change made elsewhere (the admin API) shows up live, without a reload.
    let (status, body) = proxy.admin_post("/api/services/web/wake").await;
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body}");
    page.until(state, "running").await;
    page.until(health, "up").await;
    page.until(&enabled("sleep"), "true").await;
    assert_eq!(page.eval(&enabled("wake")).await, "false");
    // The wake's timings arrive with it: the total, and the phases in the cell's title.
    let view = proxy.service_view("web").await;
    assert_eq!(view["last_wake"]["ok"], true, "{view}");
    // The container's address is its backend, with its health.
    assert_eq!(view["backend_health"].as_array().map(Vec::len), Some(1), "{view}");
    // Whole milliseconds.
    for phase in ["start_call_ms", "running_ms", "ready_ms", "total_ms"] {
        assert!(view["last_wake"][phase].is_u64(), "{phase}: {view}");
    }
    let total = view["last_wake"]["total_ms"].as_f64().unwrap();
    assert!(total > 0.0 && view["last_wake"]["ready_ms"].as_f64().unwrap() <= total, "{view}");
    page.until_with(wake, "a time such as 312 ms or 1.20 s", |t| t.ends_with(" ms") || t.ends_with(" s")).await;
    // A keep-awake shows with its end, live (its `keep_awake` event), and goes when it is ended.
    let kept = "document.querySelector('tr[data-service=\"web\"] .keep-awake')?.textContent ?? ''";
    let keep = |body: &'static str| {
        let req = http::Request::post("/api/services/web/keep-awake")
            .header("host", proxy.admin.to_string())
            .header("x-reveille", "1");
        support::send(proxy.admin, req.body(support::full(body)).unwrap())
    };
    assert_eq!(keep(r#"{"for": "2h"}"#).await.status, http::StatusCode::OK);
    page.until_with(kept, "kept awake until <time>", |t| t.starts_with("kept awake until ")).await;
    assert_eq!(keep(r#"{"for": "0s"}"#).await.status, http::StatusCode::OK);
    page.until(kept, "").await;
    let title = page.eval("document.querySelector('tr[data-service=\"web\"] .wake').title").await;
    assert!(title.as_str().unwrap().starts_with("Docker start call "), "{title}");
    let (status, body) = proxy.admin_post("/api/services/web/sleep").await;
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body}");
    page.until(state, "stopped").await;
    assert_eq!(web.docker_state(), "exited");

    // The wake button.
    page.eval("document.querySelector('tr[data-service=\"web\"] button.wake').click()").await;
    page.until(state, "running").await;
    assert_eq!(web.docker_state(), "running");
    // The filter narrows the table.
    page.eval("const f = document.getElementById('filter'); f.value = 'shop'; f.dispatchEvent(new Event('input')); 1")
        .await;
    page.until("String(document.querySelectorAll('#services tr').length)", "1").await;
    page.eval("const g = document.getElementById('filter'); g.value = ''; g.dispatchEvent(new Event('input')); 1")
        .await;

    page.screenshot("dashboard.png").await;
    drop(proxy);
    drop(etcd);
}

/// 10 000 services: the page draws one page of 200 rows, pages through the rest, and the filter finds one among
/// all of them; on a phone-sized window nothing is wider than the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_are_paged_and_searchable_on_a_phone() {
    let mut routes = String::new();
    for i in 0..10_000 {
        routes.push_str(&format!("[services.tenant-{i:05}]\nbackends = [\"127.0.0.1:1\"]\n"));
    }
    routes.push_str("[routes]\n");
    for i in 0..10_000 {
        routes.push_str(&format!("\"t{i:05}.test\" = \"tenant-{i:05}\"\n"));
    }
    let proxy = TestProxy::start(&routes).await;

    let browser = Chromium::start().await;
    let mut page = browser.dashboard(proxy.admin).await;
    // A phone's screen (headless Chromium's window cannot be narrower than 500 px).
    let phone = serde_json::json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true });
    page.call("Emulation.setDeviceMetricsOverride", phone).await;
    page.until("String(document.querySelectorAll('#services tr').length)", "200").await;
    let range = "document.querySelector('#services-pager .range')?.textContent ?? ''";
    page.until(range, "1–200 of 10000").await;
    page.eval("document.querySelector('#services-pager .next').click(); 1").await;
    page.until(range, "201–400 of 10000").await;
    let first = "document.querySelector('#services tr')?.dataset.service ?? ''";
    page.until(first, "tenant-00200").await;
    // The filter searches all 10 000, by name or by host.
    page.eval(
        "const f = document.getElementById('filter'); f.value = 't09876.test'; f.dispatchEvent(new Event('input')); 1",
    )
    .await;
    page.until("String(document.querySelectorAll('#services tr').length)", "1").await;
    page.until(first, "tenant-09876").await;
    page.until(range, "").await;
    // Phone-sized: the page itself never scrolls sideways.
    let overflow = page.eval("document.documentElement.scrollWidth - window.innerWidth").await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than a 390 px screen");
    page.screenshot("dashboard-phone.png").await;
}

/// Plain services (backends, no container) through the page: one whose only backend refuses shows `down`, is
/// counted as down in the header and is never shown "running"; a live one `up`; one with a live and a refusing
/// backend `degraded`, with each backend's health; requests and 5xx per second; no wake or sleep button. A route
/// (from etcd) to a service that does not exist is flagged, so is a path route that strips its prefix and an
/// ejected backend, and the page fills a wide window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_services_show_their_health_and_missing_services_are_flagged() {
    let live = support::Backend::echo("live").await;
    let dead = support::dead_addr().await;
    let routes = support::routes_file(
        &[("refusing", vec![dead]), ("answering", vec![live.addr]), ("half", vec![live.addr, dead])],
        &[("refusing.test", "refusing"), ("answering.test", "answering"), ("half.test", "half")],
    );
    // A service whose failing backend is ejected at its first 500.
    let sick = crate::ejection::answering("sick", 500).await;
    let ejecting = format!(
        "[services.ejecting]\nbackends = [\"{}\", \"{}\"]\nejection = {{ consecutive_failures = 1 }}\n[routes]\n\
         \"ejecting.test\" = \"ejecting\"\n",
        sick.addr, live.addr
    );
    let routes = routes.replacen("[routes]\n", &ejecting, 1);
    let etcd = support::etcd::Etcd::start().await;
    etcd.put("/reveille/routes/ghost.test", "{\"service\": \"ghost\"}").await;
    etcd.put("/reveille/routes/answering.test/api/", "{\"service\": \"answering\", \"strip_prefix\": true}").await;
    let proxy = TestProxy::start_custom(&routes, |c| {
        c.proxy.access_log = false;
        let mut e = reveille::EtcdConfig::new(vec![etcd.url.clone()]);
        e.timeout = Duration::from_secs(2);
        c.etcd = Some(e);
    })
    .await;
    eventually(LONG, "etcd's route in the table", || async {
        proxy.admin_get("/api/routes").await.1.contains("ghost.test")
    })
    .await;
    for _ in 0..4 {
        assert_eq!(support::get(proxy.http, "refusing.test", "/").await.status, http::StatusCode::BAD_GATEWAY);
        assert_eq!(support::get(proxy.http, "answering.test", "/").await.status, http::StatusCode::OK);
        assert_eq!(support::get(proxy.http, "half.test", "/").await.status, http::StatusCode::OK);
        support::get(proxy.http, "ejecting.test", "/").await;
    }

    let browser = Chromium::start().await;
    let mut page = browser.dashboard(proxy.admin).await;
    let wide = serde_json::json!({ "width": 1800, "height": 900, "deviceScaleFactor": 1, "mobile": false });
    page.call("Emulation.setDeviceMetricsOverride", wide).await;
    let cell = |service: &str, class: &str| {
        format!("document.querySelector('tr[data-service=\"{service}\"] .{class}')?.textContent ?? ''")
    };
    page.until(&cell("refusing", "health"), "down").await;
    page.until(&cell("answering", "health"), "up").await;
    page.until(&cell("half", "health"), "degraded").await;
    // Not "running": a plain service has no lifecycle, and its health is not a state.
    assert_eq!(page.eval(&cell("refusing", "state")).await, "no container");
    let summary = page.eval("document.getElementById('summary').textContent").await;
    let summary = summary.as_str().unwrap();
    assert!(!summary.contains("running"), "{summary}");
    let count = |h: &str| format!("document.querySelector('#summary [data-health=\"{h}\"]')?.textContent ?? ''");
    assert_eq!(page.eval(&count("down")).await, "1 down");
    assert_eq!(page.eval(&count("up")).await, "1 up");
    assert_eq!(page.eval(&count("degraded")).await, "2 degraded");
    // The ejected backend says so in its cell.
    let ejected = "document.querySelector('tr[data-service=\"ejecting\"] .backend.ejected')?.textContent ?? ''";
    assert_eq!(page.eval(ejected).await, format!("{} ejected", sick.addr));
    // Each backend with its own health.
    let backend = |h: &str| {
        format!(
            "document.querySelector('tr[data-service=\"half\"] .backend[data-health=\"{h}\"]')?.dataset.backend ?? ''"
        )
    };
    assert_eq!(page.eval(&backend("down")).await, dead.to_string());
    assert_eq!(page.eval(&backend("up")).await, live.addr.to_string());
    let title = page.eval("document.querySelector('tr[data-service=\"refusing\"] .backend').title").await;
    assert!(title.as_str().unwrap().contains("connect_refused"), "{title}");
    // No commands for a plain service.
    assert_eq!(
        page.eval("String(document.querySelectorAll('tr[data-service=\"refusing\"] button').length)").await,
        "0"
    );
    // The route to a missing service, flagged where it is listed and counted in the header.
    let ghost = "document.querySelector('tr[data-route=\"ghost.test\"]')?.className ?? ''";
    page.until(ghost, "missing").await;
    let flag = page.eval("document.querySelector('tr[data-route=\"ghost.test\"] .flag')?.textContent ?? ''").await;
    assert_eq!(flag, "missing service");
    assert_eq!(page.eval("document.querySelector('tr[data-route=\"answering.test\"]').className").await, "");
    let missing = page.eval("document.querySelector('#summary .missing')?.textContent ?? ''").await;
    assert_eq!(missing, "1 route to a missing service");
    // A path route, listed by its key, flagged when it strips its prefix.
    let api = "document.querySelector('tr[data-route=\"answering.test/api/\"] .flag')?.textContent ?? ''";
    assert_eq!(page.eval(api).await, "strips the prefix");
    // Rates arrive once the counters have been read twice (5 s apart), at the page's next reading.
    page.until_with(&cell("answering", "rps"), "a rate above 0", |t| t.parse::<f64>().is_ok_and(|r| r > 0.0)).await;
    page.until_with(&cell("refusing", "eps"), "a 5xx rate above 0", |t| t.parse::<f64>().is_ok_and(|r| r > 0.0)).await;
    assert_eq!(page.eval(&cell("answering", "eps")).await, "0");
    // The page uses the window's width.
    let width = page.eval("Math.round(document.querySelector('main').getBoundingClientRect().width)").await;
    assert!(width.as_i64().unwrap() >= 1700, "the page is {width} px wide in an 1800 px window");
    page.screenshot("dashboard-health.png").await;
    drop(proxy);
    drop(etcd);
}

/// A group: the service's row lists its dependencies under its container, each with its state, and follows
/// them live (a dependency's `tenant` event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_groups_members_and_their_states() {
    let image = TestImage::build();
    let web = image.web_after("");
    let db = image.web_after("");
    let routes = format!(
        "[services.web]\ncontainer = \"{}\"\nport = 8080\nidle_timeout = \"0\"\n\
         depends_on = [{{ container = \"{}\", port = 8080 }}]\n[routes]\n\"web.test\" = \"web\"\n",
        web.name, db.name
    );
    let proxy = TestProxy::start(&routes).await;
    eventually(LONG, "web stopped", || async { proxy.service_view("web").await["state"] == "stopped" }).await;

    let browser = Chromium::start().await;
    let mut page = browser.dashboard(proxy.admin).await;
    let member = format!(
        "document.querySelector('tr[data-service=\"web\"] .member[data-dependency=\"{}\"]')?.textContent ?? ''",
        db.name
    );
    page.until(&member, &format!("{} stopped", db.name)).await;
    page.until("document.getElementById('live').textContent", "live").await;
    let (status, body) = proxy.admin_post("/api/services/web/wake").await;
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body}");
    page.until(&member, &format!("{} running", db.name)).await;
    assert_eq!(db.docker_state(), "running");
    // Once the wake is over (while it waits, the dependency's own wake holds it too), the one dependant.
    let title = format!(
        "document.querySelector('tr[data-service=\"web\"] .member[data-dependency=\"{}\"]')?.title ?? ''",
        db.name
    );
    page.until_with(&title, "held by its one dependant", |t| t.contains("held by 1 running dependant")).await;
}
