//! The `reveille` binary as operators and harnesses run it: `check`, refusing to start on a bad file, graceful
//! shutdown on SIGTERM, and flat memory on a 1 GiB upload.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_reveille");

/// A `reveille serve` child process on port 0, killed on drop.
struct Proc {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    /// Every stdout line after the "listening" one.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts the binary with JSON logs and reads the bound addresses from its "listening" line.
    fn start(routes: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(["serve", "--routes"])
            .arg(routes)
            .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (http, admin) = loop {
            let line = lines.next().expect("reveille exited before listening").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                break (v["http"].as_str().unwrap().parse().unwrap(), v["admin"].as_str().unwrap().parse().unwrap());
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        Proc { child, http, admin, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {sig} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "reveille did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
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
    let proc = Proc::start(&routes, &["--access-log", "false"]);
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
    let mut proc = Proc::start(&routes, &["--shutdown-grace", "10s"]);

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
    let proc = Proc::start(&routes, &["--access-log", "false"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_in_json_and_text() {
    let backend = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, routes_file(&[("acme", vec![backend.addr])], &[("app.test", "acme")])).unwrap();

    let proc = Proc::start(&routes, &[]);
    assert_eq!(get(proc.http, "App.Test:80", "/hello?x=1").await.status, StatusCode::OK);
    assert_eq!(get(proc.http, "other.test", "/").await.status, StatusCode::NOT_FOUND);
    let access = |proc: &Proc, n: usize| {
        let log = proc.log.clone();
        async move {
            let mut found = Vec::new();
            eventually(Duration::from_secs(5), "access log lines", || {
                found = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| v["target"] == "reveille::access")
                    .collect::<Vec<_>>();
                let done = found.len() >= n;
                async move { done }
            })
            .await;
            found
        }
    };
    let lines = access(&proc, 2).await;
    let ok = &lines[0];
    assert_eq!(ok["host"], "app.test");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/hello?x=1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["service"], "acme");
    assert_eq!(ok["backend"], backend.addr.to_string());
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["host"], "other.test");
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
    let line = lines.find(|l| l.as_ref().unwrap().contains("reveille::access")).unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for field in ["host=\"app.test\"", "method=GET", "path=\"/text\"", "status=200", "service=\"acme\"", "duration_ms="]
    {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}
