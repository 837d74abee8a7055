//! Every response leaves the proxy through one exit: whether it was forwarded, answered 404 for an unknown
//! host, redirected to HTTPS, answered by the status endpoint, given the "starting" page or refused because
//! the tenant did not wake in time, it adds exactly one observation to `reveille_request_duration_seconds`
//! and writes exactly one access-log line, with its service wherever one was routed.
//!
//! The access log is read for real, from the file reveille writes it to (JSON lines); reveille's warnings are
//! captured by `support::log`. The passivated tenant needs no Docker: a scripted runtime starts its
//! "container", whose application never becomes ready, so a wake never ends in time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support;
use crate::support::runtime::ScriptedRuntime;
use crate::support::{eventually, full, get, send, Backend, Got, TestProxy};
use http::{Request, StatusCode};
use reveille::{AccessLogFormat, Config};

/// One access-log line's fields, as strings.
type Line = BTreeMap<String, String>;

/// reveille's warnings that name `service`.
fn warnings_for(service: &str) -> Vec<Line> {
    support::log::warnings()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.get("service").map(String::as_str) == Some(service))
        .cloned()
        .collect()
}

/// The access log of one test's reveille: a JSON-lines file in a temp dir.
struct AccessLog {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl AccessLog {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self { path: dir.path().join("access.log"), _dir: dir }
    }

    /// Turns the access log on, written to this file.
    fn configure(&self, c: &mut Config) {
        c.proxy.access_log = true;
        c.access_log.file = Some(self.path.clone());
        c.access_log.format = AccessLogFormat::Json;
    }

    /// The lines of requests to `host` with target `path`, each field as a string.
    fn lines_for(&self, host: &str, path: &str) -> Vec<Line> {
        read_lines(&self.path)
            .into_iter()
            .filter(|l| {
                l.get("host").map(String::as_str) == Some(host) && l.get("path").map(String::as_str) == Some(path)
            })
            .collect()
    }
}

fn read_lines(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(l).unwrap();
            v.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), String::from))).collect()
        })
        .collect()
}

const DURATION_COUNT: &str = "reveille_request_duration_seconds_count";

/// Sends `request()` and checks it added one duration observation and one access-log line for `host` and
/// `path`, with `status` and `service`.
async fn one_exit(
    proxy: &TestProxy,
    log: &AccessLog,
    host: &str,
    path: &str,
    status: StatusCode,
    service: &str,
    request: impl std::future::Future<Output = Got>,
) -> Got {
    let before = proxy.metric(DURATION_COUNT).await;
    let got = request.await;
    assert_eq!(got.status, status, "{host}{path}: {}", got.text);
    let after = proxy.metric(DURATION_COUNT).await;
    assert_eq!(after - before, 1.0, "{host}{path}: one observation in the request-duration histogram");

    // The line was handed over before the response went out; the writer writes it shortly after.
    eventually(Duration::from_secs(5), "the access-log line", || {
        let n = log.lines_for(host, path).len();
        async move { n >= 1 }
    })
    .await;
    let lines = log.lines_for(host, path);
    assert_eq!(lines.len(), 1, "{host}{path}: one access-log line, got {lines:?}");
    let line = &lines[0];
    assert_eq!(line["status"], status.as_u16().to_string(), "{line:?}");
    assert_eq!(line["service"], service, "{line:?}");
    assert_eq!(line["method"], "GET", "{line:?}");
    assert!(line.contains_key("duration_ms") && line.contains_key("backend"), "{line:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_timed_and_logged_once_with_its_service() {
    let log = AccessLog::new();
    let app = Backend::echo("app").await;
    let runtime = ScriptedRuntime::new();
    let port = runtime.add_stopped("reveille-exits-sleepy", Duration::from_secs(3600)).await;
    let routes = format!(
        "[services.app]\nbackends = [\"{app}\"]\n\
         [services.secure]\nbackends = [\"{app}\"]\nhttps_redirect = true\n\
         [services.sleepy]\ncontainer = \"reveille-exits-sleepy\"\nport = {port}\n\
         page_after = \"50ms\"\nwake_timeout = \"300ms\"\nidle_timeout = \"0\"\n\
         [routes]\n\"app.exits.test\" = \"app\"\n\"secure.exits.test\" = \"secure\"\n\
         \"sleepy.exits.test\" = \"sleepy\"\n",
        app = app.addr
    );
    let proxy = TestProxy::start_with_runtime(&routes, |c| log.configure(c), Arc::new(runtime)).await;

    // Forwarded.
    let got = one_exit(&proxy, &log, "app.exits.test", "/forwarded", StatusCode::OK, "app", async {
        get(proxy.http, "app.exits.test", "/forwarded").await
    })
    .await;
    assert_eq!(got.backend(), "app");
    let line = &log.lines_for("app.exits.test", "/forwarded")[0];
    assert_eq!(line["peer"], "127.0.0.1", "{line:?}");
    assert_eq!(line["backend"], app.addr.to_string(), "{line:?}");

    // Unknown host: no service.
    one_exit(&proxy, &log, "nobody.exits.test", "/unknown", StatusCode::NOT_FOUND, "-", async {
        get(proxy.http, "nobody.exits.test", "/unknown").await
    })
    .await;

    // HTTPS redirect, from the service's policy.
    let got =
        one_exit(&proxy, &log, "secure.exits.test", "/redirected", StatusCode::PERMANENT_REDIRECT, "secure", async {
            get(proxy.http, "secure.exits.test", "/redirected").await
        })
        .await;
    assert_eq!(got.headers["location"], "https://secure.exits.test/redirected");

    // The status endpoint of a routed host.
    let got = one_exit(&proxy, &log, "sleepy.exits.test", "/__reveille/status", StatusCode::OK, "sleepy", async {
        get(proxy.http, "sleepy.exits.test", "/__reveille/status").await
    })
    .await;
    assert_eq!(got.json()["ready"], false, "{}", got.text);

    // A browser navigation to a tenant that is not ready within `page_after`: the starting page.
    let got = one_exit(&proxy, &log, "sleepy.exits.test", "/page", StatusCode::SERVICE_UNAVAILABLE, "sleepy", async {
        let req = Request::get("/page")
            .header("host", "sleepy.exits.test")
            .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
            .body(full(""))
            .unwrap();
        send(proxy.http, req).await
    })
    .await;
    assert!(got.headers["content-type"].to_str().unwrap().starts_with("text/html"), "{:?}", got.headers);
    assert!(got.text.contains("sleepy.exits.test"), "{}", got.text);

    // Any other request waits for the wake, which does not end in time: refused.
    let got = one_exit(&proxy, &log, "sleepy.exits.test", "/refused", StatusCode::GATEWAY_TIMEOUT, "sleepy", async {
        get(proxy.http, "sleepy.exits.test", "/refused").await
    })
    .await;
    assert!(got.text.contains("did not start in time"), "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cause_of_a_502_or_504_is_logged_at_warn_and_not_told_to_the_client() {
    support::log::warnings();
    let log = AccessLog::new();
    let dead = support::dead_addr().await;
    let runtime = ScriptedRuntime::new();
    let port = runtime.add_stopped("reveille-exits-drowsy", Duration::from_secs(3600)).await;
    let routes = format!(
        "[services.dead]\nbackends = [\"{dead}\"]\n\
         [services.drowsy]\ncontainer = \"reveille-exits-drowsy\"\nport = {port}\n\
         wake_timeout = \"300ms\"\nidle_timeout = \"0\"\n\
         [routes]\n\"dead.warn.test\" = \"dead\"\n\"drowsy.warn.test\" = \"drowsy\"\n"
    );
    let proxy = TestProxy::start_with_runtime(&routes, |c| log.configure(c), Arc::new(runtime)).await;

    let got = get(proxy.http, "dead.warn.test", "/").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(!got.text.contains("dead") && !got.text.contains(&dead.to_string()), "{}", got.text);
    let warns = warnings_for("dead");
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert_eq!(warns[0]["backend"], dead.to_string(), "{warns:?}");
    assert!(warns[0]["message"].contains("could be reached"), "{warns:?}");

    let got = get(proxy.http, "drowsy.warn.test", "/").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!got.text.contains("drowsy") && !got.text.contains("300ms"), "{}", got.text);
    let warns = warnings_for("drowsy");
    assert!(warns.iter().any(|w| w["message"].contains("within 300ms")), "{warns:?}");
}
