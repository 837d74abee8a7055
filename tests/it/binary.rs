//! The `reveille` binary as operators and harnesses run it: `check`, refusing to start on a bad file, graceful
//! shutdown on SIGTERM, and flat memory on a 1 GiB upload.

use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::serve::{Serve, BIN};
use crate::support::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// `reveille serve` on `routes`, with `extra` arguments.
fn reveille(routes: &Path, extra: &[&str]) -> Serve {
    Serve::start("reveille", Serve::command().arg("--routes").arg(routes).args(extra))
}

/// Like [`reveille`], but stdout is left to the caller after the "listening" line (see [`Serve::start_unread`]).
fn reveille_unread(routes: &Path, extra: &[&str]) -> (Serve, Lines<BufReader<ChildStdout>>) {
    Serve::start_unread("reveille", Serve::command().arg("--routes").arg(routes).args(extra))
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_reports_problems_with_lines_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"a\"\n").unwrap();
    let (code, out) = run(&["check", "--routes", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 routes, 1 services)"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[services.a]\nbackends = [\"127.0.0.1\"]\n[routes]\n\"a.test\" = \"b\"\n").unwrap();
    let (code, out) = run(&["check", "--routes", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 2") && out.contains("missing port"), "{out}");

    // A config file naming the routes file, relative to itself.
    let cfg = dir.path().join("reveille.toml");
    std::fs::write(&cfg, "[server]\nroutes = \"bad.toml\"\n").unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad.toml"), "{out}");
    std::fs::write(&cfg, "[server]\nroutes = \"good.toml\"\nbogus = 1\n").unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown field") && out.contains("bogus"), "{out}");
    // A key in the place it moved from is refused, with its new place.
    std::fs::write(&cfg, "[server]\nroutes = \"good.toml\"\n[passivation]\nnode = \"edge-1\"\n").unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 4") && out.contains("write it as `node` in [cluster]"), "{out}");

    // A file without routes is valid, with a warning: a running reveille would refuse it over routes.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let (code, out) = run(&["check", "--routes", empty.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (0 routes, 0 services)") && out.contains("warning:"), "{out}");
    assert!(out.contains("allow_empty = true"), "{out}");
    std::fs::write(&empty, "allow_empty = true\n").unwrap();
    let (code, out) = run(&["check", "--routes", empty.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");

    // With a config file, a service's `docker_host` must be one of its Docker hosts (by line); the hosts
    // themselves are checked too.
    let hosts = "[server]\nroutes = \"hosts.toml\"\n[docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n";
    std::fs::write(&cfg, hosts).unwrap();
    let routes = |host: &str| {
        format!(
            "[services.a]\ncontainer = \"a-1\"\nport = 80\ndocker_host = \"{host}\"\n[routes]\n\"a.test\" = \"a\"\n"
        )
    };
    std::fs::write(dir.path().join("hosts.toml"), routes("second")).unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(dir.path().join("hosts.toml"), routes("third")).unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 1") && out.contains("unknown `docker_host` \"third\" (configured: default, second)"),
        "{out}"
    );
    std::fs::write(&cfg, hosts.replace("tcp://127.0.0.1:2375", "ftp://x:1")).unwrap();
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[docker.hosts.second] docker endpoint \"ftp://x:1\""), "{out}");

    // The repository's example files are valid.
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = run(&["check", "--config", &format!("{root}/config/reveille.toml")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn serve_refuses_to_start_on_an_invalid_routes_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("routes.toml");
    std::fs::write(&bad, "[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"nope\"\n").unwrap();
    let (code, out) =
        run(&["serve", "--routes", bad.to_str().unwrap(), "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(out.contains("line 4") && out.contains("undefined service \"nope\""), "{out}");
    let (code, out) = run(&["serve", "--http", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(out.contains("no route source"), "{out}");
    let (code, out) =
        run(&["serve", "--routes", "/nonexistent/routes.toml", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(out.contains("cannot read routes file"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_routes_file_is_refused_with_an_error() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("a", vec![backend.addr])], &[("app.test", "a"), ("www.test", "a")]))
        .unwrap();
    let proc = reveille(&routes, &["--access-log", "false"]);
    std::fs::File::create(&routes).unwrap();
    let log = proc.log.clone();
    eventually(Duration::from_secs(5), "the refusal logged at error", || {
        let found =
            log.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|v| {
                let message = v["message"].as_str().unwrap_or_default();
                v["level"] == "ERROR" && message.contains("defines no routes (0 bytes") && message.contains("2 routes")
            });
        async move { found }
    })
    .await;
    assert_eq!(get(proc.http, "app.test", "/").await.backend(), "a", "the last table stays in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("a", vec![backend.addr])], &[("app.test", "a")])).unwrap();
    let mut proc = reveille(&routes, &["--shutdown-grace", "10s"]);

    let http = proc.http;
    let in_flight = tokio::spawn(async move { get(http, "app.test", "/sleep/1500").await });
    eventually(Duration::from_secs(5), "request reached the backend", || async {
        backend.hits.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    proc.signal("TERM");
    // While draining, readiness says so, so a load balancer stops sending new clients.
    let admin = proc.admin;
    eventually(Duration::from_secs(2), "readyz 503 while draining", || async {
        get(admin, "admin", "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    // New connections are refused soon after the signal...
    eventually(Duration::from_secs(2), "listener closed", || async {
        tokio::net::TcpStream::connect(http).await.is_err()
    })
    .await;
    // ...while the request in flight completes normally.
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.backend(), "a");
    let status = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(5))).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The per-core scheduler (`--threads 2`): a second thread with its own runtime accepts its share of the
/// connections, and on SIGTERM both workers stop accepting and let their requests in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_share_connections_and_drain_on_sigterm() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("a", vec![backend.addr])], &[("app.test", "a")])).unwrap();
    let mut proc = reveille(&routes, &["--threads", "2", "--scheduler", "per-core", "--shutdown-grace", "10s"]);
    let (http, admin) = (proc.http, proc.admin);

    // The kernel cuts thread names to 15 bytes: "reveille-worker-1" reads "reveille-worker". A new thread names
    // itself once it runs, so this may take a moment.
    let pid = proc.child.id();
    eventually(Duration::from_secs(5), "a thread named reveille-worker", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let named = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .any(|n| n.trim() == "reveille-worker");
        async move { named }
    })
    .await;

    // Each `get` is a new connection; whichever worker is free first accepts it, so both get some.
    let w0 = "reveille_worker_connections_total{worker=\"0\"}";
    let w1 = "reveille_worker_connections_total{worker=\"1\"}";
    eventually(Duration::from_secs(20), "both workers accepted connections", || async {
        let gets = (0..20).map(|_| tokio::spawn(async move { get(http, "app.test", "/").await.status }));
        for g in gets {
            assert_eq!(g.await.unwrap(), StatusCode::OK);
        }
        metric(admin, w0).await > 0 && metric(admin, w1).await > 0
    })
    .await;
    let accepted = metric(admin, "reveille_connections_total").await;
    assert_eq!(metric(admin, w0).await + metric(admin, w1).await, accepted, "every connection counted once");

    // Slow requests in flight on both workers, then SIGTERM: all finish, the process exits 0.
    let before = (metric(admin, w0).await, metric(admin, w1).await);
    let mut in_flight = Vec::new();
    let hits = backend.hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..16 {
        in_flight.push(tokio::spawn(async move { get(http, "app.test", "/sleep/1500").await }));
    }
    eventually(Duration::from_secs(5), "slow requests reached the backend", || async {
        backend.hits.load(std::sync::atomic::Ordering::SeqCst) == hits + 16
    })
    .await;
    let after = (metric(admin, w0).await, metric(admin, w1).await);
    proc.signal("TERM");
    eventually(Duration::from_secs(2), "listener closed on every worker", || async {
        tokio::net::TcpStream::connect(http).await.is_err()
    })
    .await;
    for r in in_flight {
        let got = r.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.backend(), "a");
    }
    let status = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(5))).await.unwrap();
    assert_eq!(status.code(), Some(0));
    // Reported last: which worker held the slow requests (both, usually; not asserted, the kernel decides).
    eprintln!("slow requests per worker: {} and {}", after.0 - before.0, after.1 - before.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_passes_with_flat_memory() {
    // The backend counts what it receives.
    let backend = Backend::start(Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(f) = body.frame().await {
                total += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
            }
            Response::new(full(total.to_string()))
        })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("up", vec![backend.addr])], &[("up.test", "up")])).unwrap();
    let proc = reveille(&routes, &["--access-log", "false"]);
    assert_eq!(get(proc.admin, "admin", "/readyz").await.status, StatusCode::OK);
    // Warm up so the baseline includes the runtime, pools and buffers.
    assert_eq!(get(proc.http, "up.test", "/").await.status, StatusCode::OK);
    let baseline = proc.peak_rss_kib();

    const GIB: u64 = 1 << 30;
    let chunk = bytes::Bytes::from(vec![42u8; 1 << 20]);
    let stream =
        futures::stream::iter((0..1024).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))));
    let body =
        http_body_util::StreamBody::new(stream).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    let req = Request::post("/")
        .header("host", "up.test")
        .header("content-length", GIB.to_string())
        .body(body.boxed())
        .unwrap();
    let got = send(proc.http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text, GIB.to_string());
    let peak = proc.peak_rss_kib();
    eprintln!("reveille peak RSS: {baseline} KiB before, {peak} KiB after a 1 GiB upload");
    assert!(peak < baseline + 64 * 1024, "memory grew by {} KiB for a 1 GiB upload", peak - baseline);
}

/// The JSON access-log lines among `lines` (stdout or a file).
fn access_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "reveille::access")
        .collect()
}

/// Waits until `proc`'s stdout holds `n` access-log lines, and returns them.
async fn stdout_access_lines(proc: &Serve, n: usize) -> Vec<serde_json::Value> {
    let log = proc.log.clone();
    let mut found = Vec::new();
    eventually(Duration::from_secs(5), "access log lines", || {
        found = access_lines(&log.lock().unwrap());
        let done = found.len() >= n;
        async move { done }
    })
    .await;
    found
}

/// One series of `/metrics` (`name{labels}` exactly as exposed), 0 when absent.
async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let text = get(admin, "admin", "/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

const LINES: &str = "reveille_access_log_lines_total";
const OVERFLOW: &str = "reveille_access_log_dropped_total{reason=\"overflow\"}";
const WRITE_ERROR: &str = "reveille_access_log_dropped_total{reason=\"write_error\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_in_json_and_text() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("acme", vec![backend.addr])], &[("app.test", "acme")])).unwrap();

    let proc = reveille(&routes, &[]);
    assert_eq!(get(proc.http, "App.Test:80", "/hello?x=1").await.status, StatusCode::OK);
    assert_eq!(get(proc.http, "other.test", "/").await.status, StatusCode::NOT_FOUND);
    let lines = stdout_access_lines(&proc, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Lines logged on different threads may be written in either order.
    let ok = lines.iter().find(|l| l["status"] == 200).unwrap();
    assert_eq!(ok["host"], "app.test");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/hello?x=1");
    assert_eq!(ok["service"], "acme");
    assert_eq!(ok["backend"], backend.addr.to_string());
    assert_eq!(ok["peer"], "127.0.0.1");
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    let ts = ok["timestamp"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    let missing = lines.iter().find(|l| l["status"] == 404).unwrap();
    assert_eq!(missing["host"], "other.test");
    assert_eq!((missing["service"].as_str(), missing["backend"].as_str()), (Some("-"), Some("-")));
    assert_eq!(metric(proc.admin, LINES).await, 2);
    drop(proc);

    // Text format: one line with the same fields.
    let mut child = Command::new(BIN)
        .args(["serve", "--routes"])
        .arg(&routes)
        .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "text"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = loop {
        let l = lines.next().unwrap().unwrap();
        if l.contains("listening") {
            break l;
        }
    };
    let http: SocketAddr = listening.split("http=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(get(http, "app.test", "/text").await.status, StatusCode::OK);
    let line = lines.find(|l| l.as_ref().unwrap().contains(" reveille::access ")).unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let fields = " reveille::access peer=127.0.0.1 host=app.test method=GET path=/text status=200 duration_ms=";
    assert!(line[24..].starts_with(fields), "{line}");
    assert!(line.ends_with(&format!(" service=acme backend={}", backend.addr)), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_a_file_every_line_through_rotation_and_exit() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("acme", vec![backend.addr])], &[("app.test", "acme")])).unwrap();
    let file = dir.path().join("access.log");
    let mut proc = reveille(&routes, &["--access-log-file", file.to_str().unwrap()]);
    let read = |p: &Path| {
        access_lines(&std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>())
    };

    // 400 requests over 8 connections at once: every one gets its line, in the file and not on stdout.
    let http = proc.http;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                for i in 0..50 {
                    assert_eq!(get(http, "app.test", &format!("/c{c}/{i}")).await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    eventually(Duration::from_secs(5), "400 lines in the file", || {
        let n = read(&file).len();
        async move { n >= 400 }
    })
    .await;
    let lines = read(&file);
    let mut paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!((lines.len(), paths.len()), (400, 400), "each request exactly once");
    for l in &lines {
        assert_eq!(
            (l["status"].as_u64(), l["service"].as_str(), l["host"].as_str()),
            (Some(200), Some("acme"), Some("app.test"))
        );
        assert_eq!(l["backend"], backend.addr.to_string());
    }
    assert!(access_lines(&proc.log.lock().unwrap()).is_empty(), "no access line on stdout");
    assert_eq!(metric(proc.admin, LINES).await, 400);

    // Rotated: moved away, then SIGHUP (which must not stop reveille).
    std::fs::rename(&file, dir.path().join("access.log.1")).unwrap();
    proc.signal("HUP");
    eventually(Duration::from_secs(5), "the file reopened", || {
        let exists = file.exists();
        async move { exists }
    })
    .await;
    assert_eq!(get(proc.http, "app.test", "/after-rotation").await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the line in the new file", || {
        let n = read(&file).len();
        async move { n >= 1 }
    })
    .await;
    assert_eq!(read(&file)[0]["path"], "/after-rotation");
    assert_eq!(read(&dir.path().join("access.log.1")).len(), 400);

    // The last lines before SIGTERM are written before reveille exits.
    for i in 0..20 {
        assert_eq!(get(proc.http, "app.test", &format!("/last/{i}")).await.status, StatusCode::OK);
    }
    proc.signal("TERM");
    let status = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(read(&file).len(), 21, "every line written at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_costs_lines_that_are_all_counted() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("acme", vec![backend.addr])], &[("app.test", "acme")])).unwrap();
    // Nobody reads stdout for now: its pipe (64 KiB) and the 4 KiB buffers fill up.
    let (proc, stdout) = reveille_unread(&routes, &["--access-log-buffer", "4096"]);
    const N: u64 = 2000;
    let http = proc.http;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                for i in 0..N / 4 {
                    let path = format!("/c{c}/{i}/{}", "x".repeat(100));
                    assert_eq!(
                        get(http, "app.test", &path).await.status,
                        StatusCode::OK,
                        "requests never wait for the log"
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let dropped = metric(proc.admin, OVERFLOW).await;
    assert!(dropped > 0, "lines dropped while stdout was stalled");
    assert!(metric(proc.admin, LINES).await + dropped < N, "lines still wait for the pipe");

    // Now stdout is read: what was not dropped arrives, and the counts add up.
    let read = std::thread::spawn(move || {
        stdout
            .map_while(Result::ok)
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["target"] == "reveille::access"))
            .count() as u64
    });
    let admin = proc.admin;
    eventually(Duration::from_secs(10), "every line written or dropped", || async move {
        metric(admin, LINES).await + metric(admin, OVERFLOW).await == N
    })
    .await;
    assert_eq!(metric(admin, OVERFLOW).await, dropped, "nothing more dropped once stdout was read");
    assert_eq!(metric(admin, WRITE_ERROR).await, 0);
    let written = metric(admin, LINES).await;
    drop(proc);
    assert_eq!(read.join().unwrap(), written, "each line counted as written arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_filter_without_reveille_access_turns_the_access_log_off() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("acme", vec![backend.addr])], &[("app.test", "acme")])).unwrap();
    let file = dir.path().join("access.log");
    for flags in [["--log-level", "info,reveille::access=off"], ["--access-log", "false"]] {
        let mut args = vec!["--access-log-file", file.to_str().unwrap()];
        args.extend(flags);
        let proc = reveille(&routes, &args);
        assert_eq!(get(proc.http, "app.test", "/").await.status, StatusCode::OK);
        // A line would be written at once (the writer wakes on the first line after a quiet spell).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metric(proc.admin, LINES).await, 0, "{flags:?}");
        assert!(!file.exists(), "{flags:?}: the file is not even created");
    }
}

/// etcd stopping while reveille drains (both told to stop, as `docker compose down` does) is logged at info,
/// not as a warning about reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopping_during_the_drain_is_not_a_warning() {
    let backend = Backend::echo("a").await;
    let mut etcd = support::etcd::Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("a", vec![backend.addr])], &[("app.test", "a")])).unwrap();
    let proc = reveille(&routes, &["--etcd", &etcd.url, "--shutdown-grace", "10s", "--access-log", "false"]);
    let admin = proc.admin;
    eventually(Duration::from_secs(10), "ready with etcd", || async {
        get(admin, "admin", "/readyz").await.status == StatusCode::OK
    })
    .await;
    let http = proc.http;
    let in_flight = tokio::spawn(async move { get(http, "app.test", "/sleep/2000").await });
    eventually(Duration::from_secs(5), "request reached the backend", || async {
        backend.hits.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    proc.signal("TERM");
    eventually(Duration::from_secs(2), "draining", || async {
        get(admin, "admin", "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    etcd.kill();
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    let mut proc = proc;
    let status = tokio::task::spawn_blocking(move || {
        let status = proc.wait_exit(Duration::from_secs(10));
        (status, proc)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    let lines: Vec<serde_json::Value> =
        status.1.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let about_watch = |v: &&serde_json::Value| v["message"].as_str().unwrap_or_default().contains("etcd watch of");
    let watch_lines: Vec<_> = lines.iter().filter(about_watch).collect();
    assert!(
        watch_lines.iter().any(|v| v["level"] == "INFO"
            && v["message"].as_str().unwrap().contains("interrupted while shutting down")),
        "the interruption is logged, at info: {watch_lines:?}"
    );
    assert!(watch_lines.iter().all(|v| v["level"] != "WARN"), "no warning: {watch_lines:?}");
}

// === The routes file read within bounds (issue 24, items 3 and 6) ===

/// A routes file of `n` hosts `h0.test`..., all routed to `service` (one of `a` and `b`, both defined).
fn hosts_file(backends: [SocketAddr; 2], n: usize, service: &str) -> String {
    let routes: Vec<(String, &str)> = (0..n).map(|i| (format!("h{i}.test"), service)).collect();
    let routes: Vec<(&str, &str)> = routes.iter().map(|(h, s)| (h.as_str(), *s)).collect();
    routes_file(&[("a", vec![backends[0]]), ("b", vec![backends[1]])], &routes)
}

/// Points the symlink `link` at `target`, atomically (a new symlink renamed over it, as Kubernetes does).
fn relink(link: &Path, target: &Path) {
    let tmp = link.with_extension("link~");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Replaces `path` with a new FIFO, atomically.
fn fifo_over(path: &Path) {
    let tmp = path.with_extension("fifo~");
    assert!(Command::new("mkfifo").arg(&tmp).status().unwrap().success());
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the binary with `args`, killing it if it has not exited within `limit`: `None` then.
fn run_within(args: &[&str], limit: Duration) -> Option<(i32, String)> {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.code().unwrap_or(-1), text))
}

impl Serve {
    /// The error lines logged so far whose message contains every one of `words`.
    fn errors_with(&self, words: &[&str]) -> usize {
        let log = self.log.lock().unwrap();
        let lines = log.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        lines
            .filter(|v| v["level"] == "ERROR" && words.iter().all(|w| v["message"].as_str().unwrap_or("").contains(w)))
            .count()
    }

    /// Waits until an error line holds every one of `words`, failing at once if the process has died.
    async fn error_logged(&mut self, words: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.errors_with(words) == 0 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("reveille died ({status}) before logging {words:?}; last lines: {:?}", self.tail(5));
            }
            assert!(Instant::now() < deadline, "no error with {words:?} logged; last lines: {:?}", self.tail(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Caps the address space at its current size plus `extra` bytes (`prlimit` of util-linux): a process that
    /// reads without bound then fails its allocations there instead of taking the machine's memory.
    fn cap_address_space(&self, extra: u64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
        let size_kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let cap = size_kib * 1024 + extra;
        let ok = Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--as={cap}")).status().unwrap();
        assert!(ok.success(), "prlimit failed");
    }
}

/// A bystander's `n` requests to `host` through the proxy, `gap` apart: how many got 200, and the p99 latency.
async fn bystander(http: SocketAddr, host: &str, n: usize, gap: Duration) -> (usize, Duration) {
    let mut ok = 0;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let req = Request::get("/").header("host", host).body(full("")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), testkit::http::send(http, req)).await;
        took.push(start.elapsed());
        if matches!(got, Ok(Ok(r)) if r.status() == StatusCode::OK) {
            ok += 1;
        }
        tokio::time::sleep(gap).await;
    }
    took.sort();
    (ok, took[(n * 99 / 100).min(n - 1)])
}

/// The routes path, a symlink to a good file, switched to `/dev/zero` while reveille runs (under an
/// address-space cap, so a reveille that reads without bound fails there instead of eating the machine): the
/// switch is refused with an error naming the file, logged once, memory stays flat, the old routes keep being
/// served, and a later good file still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_symlink_switched_to_dev_zero_is_refused_with_memory_bounded() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, link) = (dir.path().join("v1.toml"), dir.path().join("v2.toml"), dir.path().join("routes.toml"));
    std::fs::write(&v1, hosts_file([a.addr, b.addr], 50, "a")).unwrap();
    relink(&link, &v1);
    let mut proc = reveille(&link, &["--access-log", "false"]);
    assert_eq!(get(proc.http, "h49.test", "/").await.backend(), "a");
    proc.cap_address_space(768 << 20);
    let before = proc.peak_rss_kib();

    relink(&link, Path::new("/dev/zero"));
    let link_name = link.display().to_string();
    let words = [link_name.as_str(), "not a regular file but a character device", "last route table stays"];
    let http = proc.http;
    let bystanding = tokio::spawn(async move { bystander(http, "h49.test", 1000, Duration::from_millis(2)).await });
    proc.error_logged(&words).await;
    let (ok, p99) = bystanding.await.unwrap();
    let (peak, now) = (proc.peak_rss_kib(), proc.rss_kib());
    eprintln!(
        "/dev/zero: reveille peak RSS {before} KiB before, {peak} KiB after (now {now} KiB); bystander {ok}/1000 \
         ok, p99 {p99:?}"
    );
    assert!(proc.child.try_wait().unwrap().is_none(), "reveille is still running");
    assert!(peak < before + 32 * 1024, "memory grew by {} KiB", peak - before);
    assert_eq!(ok, 1000, "the old routes kept being served (p99 {p99:?})");
    // Once per change, not at every poll (every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(proc.errors_with(&words), 1, "logged once: {:?}", proc.tail(5));
    assert_eq!(get(proc.http, "h0.test", "/").await.backend(), "a");

    std::fs::write(&v2, hosts_file([a.addr, b.addr], 50, "b")).unwrap();
    relink(&link, &v2);
    eventually(Duration::from_secs(5), "a later good file applied", || async {
        get(http, "h0.test", "/").await.status == StatusCode::OK && get(http, "h0.test", "/").await.backend() == "b"
    })
    .await;
}

/// A FIFO as the routes path: `check` and `serve` return at once with an error (an ordinary open would wait
/// for a writer forever), and a FIFO put in place while reveille runs neither hangs its watcher nor changes
/// the table: a later good file still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_the_routes_path_hangs_neither_check_nor_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    fifo_over(&fifo);
    let fifo_name = fifo.to_str().unwrap();
    let limit = Duration::from_secs(10);
    let (code, out) = run_within(&["check", "--routes", fifo_name], limit).expect("`check` returned");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("cannot read routes file {fifo_name}: not a regular file but a FIFO")), "{out}");
    let serve = ["serve", "--routes", fifo_name, "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let (code, out) = run_within(&serve, limit).expect("`serve` returned");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not a regular file but a FIFO"), "{out}");

    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, hosts_file([a.addr, b.addr], 20, "a")).unwrap();
    let mut proc = reveille(&routes, &["--access-log", "false"]);
    fifo_over(&routes);
    let routes_name = routes.display().to_string();
    proc.error_logged(&[routes_name.as_str(), "not a regular file but a FIFO"]).await;
    assert_eq!(get(proc.http, "h19.test", "/").await.backend(), "a", "the table stays");
    write_routes_atomically(&routes, &hosts_file([a.addr, b.addr], 20, "b"));
    let http = proc.http;
    eventually(Duration::from_secs(5), "a later good file applied", || async {
        let got = get(http, "h19.test", "/").await;
        got.status == StatusCode::OK && got.backend() == "b"
    })
    .await;
}

fn write_routes_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A routes file over `--max-file-size` is refused like an invalid one: at start (exit 1, the reason said),
/// by `check`, and while running (the table in force stays, a later file within the limit applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_file_over_the_size_limit_is_refused() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (big, routes) = (dir.path().join("big.toml"), dir.path().join("routes.toml"));
    let big_text = hosts_file([a.addr, b.addr], 400, "b");
    assert!(big_text.len() > 4096);
    std::fs::write(&big, &big_text).unwrap();
    let big_name = big.to_str().unwrap();
    let refusal = format!("cannot read routes file {big_name}: larger than 4096 bytes");
    let (code, out) = run(&["check", "--routes", big_name, "--max-file-size", "4096"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&refusal), "{out}");
    let (code, _) = run(&["check", "--routes", big_name]);
    assert_eq!(code, 0, "within the default limit");
    let (code, out) = run(&[
        "serve",
        "--routes",
        big_name,
        "--max-file-size",
        "4096",
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&refusal), "{out}");

    std::fs::write(&routes, hosts_file([a.addr, b.addr], 20, "a")).unwrap();
    let mut proc = reveille(&routes, &["--access-log", "false", "--max-file-size", "4096"]);
    write_routes_atomically(&routes, &big_text);
    let routes_name = routes.display().to_string();
    proc.error_logged(&[routes_name.as_str(), "larger than 4096 bytes", "last route table stays"]).await;
    assert_eq!(get(proc.http, "h0.test", "/").await.backend(), "a", "the table stays");
    assert_eq!(get(proc.http, "h300.test", "/").await.status, StatusCode::NOT_FOUND);
    write_routes_atomically(&routes, &hosts_file([a.addr, b.addr], 30, "b"));
    let http = proc.http;
    eventually(Duration::from_secs(5), "a file within the limit applied", || async {
        let got = get(http, "h29.test", "/").await;
        got.status == StatusCode::OK && got.backend() == "b"
    })
    .await;
}

/// A routes file rewritten in place, over and over (truncated, half written, a pause, the rest), as config
/// managers and `cat new > routes.toml` do: a poller of `/api/routes` never sees a table with fewer hosts than
/// the whole file has, and a bystander on the last host is always served; each version still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_file_rewritten_in_place_is_never_applied_half_written() {
    use std::io::Write;
    const HOSTS: usize = 300;
    const CYCLES: usize = 24;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let versions = [hosts_file([a.addr, b.addr], HOSTS, "a"), hosts_file([a.addr, b.addr], HOSTS, "b")];
    std::fs::write(&routes, &versions[0]).unwrap();
    let proc = reveille(&routes, &["--access-log", "false"]);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (routes, versions, done) = (routes.clone(), versions.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..CYCLES {
                let text = &versions[(i + 1) % 2];
                // Cut at a line boundary inside [routes]: the first half is valid TOML with half the hosts.
                let cut = text[..text.len() / 2].rfind('\n').unwrap() + 1;
                let mut f = std::fs::File::create(&routes).unwrap();
                f.write_all(&text.as_bytes()[..cut]).unwrap();
                // Shorter and longer than the 30 ms debounce, both shorter than the settle.
                std::thread::sleep(Duration::from_millis(if i % 2 == 0 { 20 } else { 50 }));
                f.write_all(&text.as_bytes()[cut..]).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(220));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let http = proc.http;
    let last = format!("h{}.test", HOSTS - 1);
    let bystanding = tokio::spawn(async move { bystander(http, &last, 1000, Duration::from_millis(4)).await });
    // The poller: every table it sees, by its number of hosts and the service they go to.
    let (mut polls, mut partial, mut switches, mut current) = (0, 0, 0, "a".to_string());
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let view = get(proc.admin, &proc.admin.to_string(), "/api/routes").await.json();
        let routes = view["routes"].as_object().unwrap();
        polls += 1;
        if routes.len() < HOSTS {
            partial += 1;
            continue;
        }
        let service = routes["h0.test"].as_str().unwrap();
        if service != current {
            switches += 1;
            current = service.to_string();
        }
    }
    writer.join().unwrap();
    let (ok, p99) = bystanding.await.unwrap();
    eprintln!(
        "in-place rewrites: {partial} partial tables in {polls} polls, {switches} versions applied of {CYCLES} \
         written; bystander on the last host {ok}/1000 ok, p99 {p99:?}"
    );
    assert_eq!(partial, 0, "tables with fewer than {HOSTS} hosts were seen");
    assert_eq!(ok, 1000, "the bystander on the last host was refused (p99 {p99:?})");
    assert!(switches >= 3, "the versions written applied ({switches} switches seen)");
    // The last version written applies.
    let expected = if CYCLES.is_multiple_of(2) { "a" } else { "b" };
    let admin = proc.admin;
    eventually(Duration::from_secs(5), "the last version applied", || async {
        get(admin, &admin.to_string(), "/api/routes").await.json()["routes"]["h0.test"] == expected
    })
    .await;
}

/// Until every route source has loaded, a host without a route may only be one not read yet (a replica
/// starting while etcd is unreachable): it is answered 503 with `Retry-After`, not 404, while the routes file's
/// hosts are served. Once etcd has loaded, an unknown host is a 404 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_route_is_503_until_etcd_has_loaded_then_404() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("a", vec![backend.addr])], &[("app.test", "a")])).unwrap();

    // etcd at a port nothing listens on.
    let nowhere = format!("http://127.0.0.1:{}", testkit::ports::free_port());
    let proc = reveille(&routes, &["--etcd", &nowhere, "--access-log", "false"]);
    assert_eq!(get(proc.admin, "admin", "/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(proc.http, "app.test", "/").await.status, StatusCode::OK, "the file's routes are served");
    let early = get(proc.http, "other.test", "/").await;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE, "{}", early.text);
    assert_eq!(early.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(early.text.contains("still loading"), "{}", early.text);
    assert_eq!(metric(proc.admin, "reveille_unrouted_requests_total{kind=\"routes_loading\"}").await, 1);
    assert_eq!(metric(proc.admin, "reveille_unrouted_requests_total{kind=\"unknown_host\"}").await, 0);
    drop(proc);

    let etcd = support::etcd::Etcd::start().await;
    let proc = reveille(&routes, &["--etcd", &etcd.url, "--access-log", "false"]);
    let admin = proc.admin;
    eventually(Duration::from_secs(10), "ready with etcd", || async {
        get(admin, "admin", "/readyz").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(proc.http, "other.test", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(metric(proc.admin, "reveille_unrouted_requests_total{kind=\"routes_loading\"}").await, 0);
}
