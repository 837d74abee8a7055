//! Backends lab (issue 27): reveille against nginx and HAProxy when the backend is not plain HTTP/1.1, side by
//! side in one run, with the backend reached directly beside them. It prints one table (req/s, ratios to nginx
//! and HAProxy, p99, proxy CPU time per request, errors) and writes it to `target/backends-bench.md`.
//!
//! Run with `cargo run --release -p reveille-lab -- backends`. Needs `nginx`, `haproxy`, `wrk`, `h2load`
//! (Debian's `nghttp2-client`) and `taskset`; without one of them it says which and exits 0. Only 127.0.0.1 is
//! used.
//!
//! # Scenarios (`BACKENDS_SCENARIOS`, e.g. `grpc`)
//!
//! - `grpc`: gRPC unary calls over h2c end to end: `h2load -t1 -c50 -m10` (50 connections × 10 streams, HTTP/2
//!   with prior knowledge) posts a 5-byte-framed 32-byte message with `content-type: application/grpc` and
//!   `te: trailers` to the proxy, which forwards it over h2c to a gRPC-shaped backend: a hyper HTTP/2 server
//!   that reads the request body and answers 200, one framed 32-byte message and the trailer `grpc-status: 0`.
//!   nginx: `listen ... http2` and `grpc_pass grpc://` to an upstream with `keepalive 1024`; HAProxy: `bind ...
//!   proto h2` and `server ... proto h2`, `http-reuse always`; reveille: the backend `h2c://127.0.0.1:<port>`.
//!   Before the rounds, one call through each proxy is checked for the trailer (a proxy that loses trailers
//!   breaks gRPC, whatever its rate).
//! - `https`: HTTPS backends with keep-alive, small responses: `wrk -t1 -c50` over plain HTTP/1.1 to the proxy,
//!   which forwards over TLS 1.3 (HTTP/1.1; the backend offers no h2) to a hyper HTTP/1.1 server behind rustls
//!   answering 100 bytes, its certificate verified against the lab's CA with the name `bench.test`. nginx:
//!   `proxy_pass https://` to an upstream with `keepalive 1024`, `proxy_ssl_verify on`,
//!   `proxy_ssl_trusted_certificate`, `proxy_ssl_name`, `proxy_ssl_server_name on`, `proxy_ssl_session_reuse on`;
//!   HAProxy: `server ... ssl verify required ca-file ... sni str(bench.test)`, `http-reuse always`; reveille:
//!   the backend `https://127.0.0.1:<port>` with `[services.s.tls] ca` and `server_name`. `direct` is wrk over
//!   TLS to the backend itself.
//!
//! # Layout and method
//!
//! As the peers lab's one-core setting ([`crate::onecore`]): the proxy on CPU 0 (`BACKENDS_PROXY_CPU`) with one
//! worker, the load generator and the backends on CPU 1 (`BACKENDS_CLIENT_CPU`, this process pinned there first).
//! A warm-up run of every cell, then `BACKENDS_ROUNDS` (3) rounds of `BACKENDS_SECONDS` (5) each, interleaved;
//! medians. `BACKENDS_PROXIES` chooses among `direct,nginx,haproxy,reveille`; `REVEILLE_BIN` the binary.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use testkit::env::list;
use testkit::machine::{cpu_model, first_line, kernel, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::procfs::clock_ticks_per_sec;
use testkit::report::{heading, write_report, Table};
use testkit::stats::{format_us, median};
use tokio::net::TcpListener;

use crate::onecore::{self, describe_usage, pin_all_threads, pinned, Lab, Rounds, Usage};
use crate::tlsclient::BenchCert;

/// The `Host` / `:authority` of every request, and the backend certificate's name.
const HOST: &str = "bench.test";

/// The HTTPS backend's answer: exactly 100 bytes.
const SMALL: &[u8; 100] =
    b"reveille backends bench: a fixed response body from the HTTPS backend, one hundred bytes in all....\n";

/// The gRPC message both ways (its 5-byte frame header added): 32 bytes of payload.
const MESSAGE: &[u8; 32] = b"reveille grpc bench message 32 B";

/// The gRPC method called (any path: the backend answers every one alike).
const GRPC_PATH: &str = "/bench.Bench/Unary";

const NAMES: [&str; 4] = ["direct", "nginx", "haproxy", "reveille"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scenario {
    Grpc,
    Https,
    /// reveille alone: its two balancing strategies over four h2c backends, one slow.
    Balance,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Grpc, Scenario::Https, Scenario::Balance];

    fn id(self) -> &'static str {
        match self {
            Scenario::Grpc => "grpc",
            Scenario::Https => "https",
            Scenario::Balance => "balance",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Grpc => "gRPC unary over h2c end to end, 50 conns × 10 streams",
            Scenario::Https => "HTTPS backend (TLS 1.3, keep-alive), 50 client conns over HTTP/1.1, 100 B",
            Scenario::Balance => {
                "reveille's round_robin against least_request: gRPC unary as in `grpc`, to four h2c backends, one \
                 answering 20 ms late"
            }
        }
    }
}

/// How late the slow backend of the `balance` scenario answers.
const SLOW: Duration = Duration::from_millis(20);

/// Runs the lab; false if no measurement succeeded.
pub(crate) fn main() -> bool {
    let started = Instant::now();
    let Some([wrk, h2load, nginx, haproxy, taskset]) =
        onecore::find_tools("backends", ["wrk", "h2load", "nginx", "haproxy", "taskset"])
    else {
        return true;
    };
    let tools = Tools { wrk, h2load, nginx, haproxy, taskset };
    let rounds = Rounds::from_env("BACKENDS", (3, 5, 1), &NAMES);
    let scenarios: Vec<Scenario> = match std::env::var("BACKENDS_SCENARIOS") {
        Err(_) => Scenario::ALL.to_vec(),
        Ok(wanted) => {
            let wanted: Vec<&str> = list(&wanted).collect();
            for w in &wanted {
                assert!(
                    Scenario::ALL.iter().any(|s| s.id() == *w),
                    "BACKENDS_SCENARIOS: unknown {w:?} (grpc, https, balance)"
                );
            }
            Scenario::ALL.into_iter().filter(|s| wanted.contains(&s.id())).collect()
        }
    };
    let machine = describe_machine(&tools);
    if !pin_all_threads("backends", &tools.taskset, rounds.client_cpu) {
        return true;
    }
    let mut lab = Lab::new("reveille-backends-");
    let cert = BenchCert::generate(HOST);
    let ca_pem = cert.chain_pem.split_inclusive("-----END CERTIFICATE-----\n").nth(1).unwrap_or_default().to_string();
    let ca = lab.write("ca.pem", &ca_pem);
    let grpc_backend = start_grpc_backend();
    let tls_backend = start_tls_backend(&cert);
    println!(
        "gRPC (h2c) backend 127.0.0.1:{grpc_backend}, HTTPS backend 127.0.0.1:{tls_backend}, CPU {}",
        rounds.client_cpu
    );

    let env = Env { tools: &tools, rounds: &rounds, ca: &ca, grpc_backend, tls_backend };
    let mut cells: Vec<(Scenario, &'static str)> = Vec::new();
    for &sc in &scenarios {
        if sc == Scenario::Balance {
            continue;
        }
        for &p in &NAMES {
            if rounds.proxies.contains(&p) {
                cells.push((sc, p));
            }
        }
    }
    let mut running: BTreeMap<(Scenario, &'static str), Result<Proxy, String>> = BTreeMap::new();
    for &(sc, p) in &cells {
        if p == "direct" {
            continue;
        }
        let started = env.start(&mut lab, sc, p);
        match &started {
            Ok(proxy) => println!("{} {p}: pid {}, 127.0.0.1:{}", sc.id(), proxy.pid, proxy.port),
            Err(e) => println!("{} {p}: FAILED to start: {}", sc.id(), e.lines().next().unwrap_or_default()),
        }
        running.insert((sc, p), started);
    }
    // A proxy that loses the trailers fails gRPC whatever its rate: checked once before measuring.
    let mut checks = Vec::new();
    for &(sc, p) in &cells {
        if sc != Scenario::Grpc {
            continue;
        }
        let port = match running.get(&(sc, p)) {
            None => grpc_backend,
            Some(Ok(proxy)) => proxy.port,
            Some(Err(_)) => continue,
        };
        checks.push(format!("{p}: {}", grpc_call(port).unwrap_or_else(|e| format!("FAILED: {e}"))));
    }

    let ticks = clock_ticks_per_sec();
    let mut results: BTreeMap<(Scenario, &'static str), Vec<Run>> = BTreeMap::new();
    for round in 0..=rounds.rounds {
        let seconds = if round == 0 { rounds.warmup } else { rounds.seconds };
        for &(sc, p) in &cells {
            let proxy = match running.get(&(sc, p)) {
                None => None,
                Some(Ok(proxy)) => Some(proxy),
                Some(Err(_)) => continue,
            };
            let run = env.run(sc, proxy, seconds, ticks);
            let label = if round == 0 { "warm-up  ".to_string() } else { format!("round {round}/{}", rounds.rounds) };
            match &run {
                Ok(r) => println!(
                    "{label} {:<5} {:<8} {:>9.0} req/s p99 {:>9}  CPU/req {:>8}  {}  errors {}",
                    sc.id(),
                    p,
                    r.per_sec,
                    format_us(r.p99_us),
                    cpu_us(r.cpu_per_req_us()),
                    describe_usage(&r.usage),
                    r.errors
                ),
                Err(e) => println!("{label} {:<5} {p:<8} FAILED: {}", sc.id(), e.lines().next().unwrap_or_default()),
            }
            if let (Ok(r), true) = (run, round > 0) {
                results.entry((sc, p)).or_default().push(r);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let mut md = heading("reveille backends lab: gRPC over h2c and HTTPS backends", &machine.0);
    let _ = writeln!(md, "{}\n", machine.1);
    let _ = writeln!(
        md,
        "{} round(s) of {} s per cell after a {} s warm-up, interleaved; medians. Proxy on CPU {}, load generator \
         and backends on CPU {}.\n",
        rounds.rounds, rounds.seconds, rounds.warmup, rounds.proxy_cpu, rounds.client_cpu
    );
    let mut table = Table::new("scenario | proxy | req/s | vs nginx | vs HAProxy | p99 | CPU/req | errors", "llrrrrrl");
    for &sc in &scenarios {
        let med = |p: &str| results.get(&(sc, p)).map(|runs| Medians::of(runs));
        for &p in &NAMES {
            let Some(m) = med(p) else { continue };
            let ratio = |base: Option<Medians>| match base {
                Some(b) if b.per_sec > 0.0 && p != "direct" => format!("{:.2}×", m.per_sec / b.per_sec),
                _ => "—".into(),
            };
            table.row([
                sc.id().to_string(),
                p.to_string(),
                format!("{:.0}", m.per_sec),
                ratio(med("nginx")),
                ratio(med("haproxy")),
                format_us(m.p99_us),
                cpu_us(m.cpu_per_req_us),
                m.errors.to_string(),
            ]);
        }
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md, "\nScenarios:\n");
    for &sc in &scenarios {
        let _ = writeln!(md, "- `{}`: {}", sc.id(), sc.title());
    }
    if scenarios.contains(&Scenario::Balance) {
        balance(&mut lab, &tools, &rounds, &mut md);
    }
    let saturated: Vec<String> = results
        .iter()
        .filter(|(_, runs)| runs.iter().any(|r| r.usage.cpu_busy_pct.1 >= 95.0))
        .map(|((sc, p), _)| format!("{} {p}", sc.id()))
        .collect();
    if !saturated.is_empty() {
        let _ = writeln!(
            md,
            "\nThe client CPU (load generator and backends) was saturated (≥ 95% busy) in: {}. There the rate is the \
             client's limit, not the proxy's: compare CPU/req.",
            saturated.join(", ")
        );
    }
    if !checks.is_empty() {
        let _ = writeln!(md, "\ngRPC call through each (status and `grpc-status` trailer): {}", checks.join("; "));
    }
    let _ = writeln!(md, "\nTook {:.0} s.", started.elapsed().as_secs_f64());
    println!("\n{md}");
    write_report("backends-bench.md", &md);
    !results.is_empty()
}

struct Tools {
    wrk: PathBuf,
    h2load: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    taskset: PathBuf,
}

/// The date, and the hardware and versions in one paragraph.
fn describe_machine(t: &Tools) -> (String, String) {
    let versions = [
        version(std::process::Command::new(crate::reveille_bin()).arg("--version")),
        version(std::process::Command::new(&t.nginx).arg("-v")),
        version(std::process::Command::new(&t.haproxy).arg("-v")),
        version(std::process::Command::new(&t.wrk).arg("-v")),
        first_line(std::process::Command::new(&t.h2load).arg("--version")),
    ];
    let text = format!("{} CPUs ({}), {}; {}", nproc(), cpu_model(), kernel(), versions.join(", "));
    (utc_date(), text)
}

struct Env<'a> {
    tools: &'a Tools,
    rounds: &'a Rounds,
    ca: &'a Path,
    grpc_backend: u16,
    tls_backend: u16,
}

/// A proxy started for one scenario.
struct Proxy {
    pid: u32,
    /// Its listener (h2c for `grpc`, HTTP/1.1 for `https`).
    port: u16,
}

/// One measured run.
struct Run {
    per_sec: f64,
    p99_us: f64,
    ok: u64,
    errors: String,
    usage: Usage,
}

impl Run {
    fn cpu_per_req_us(&self) -> f64 {
        if self.ok == 0 {
            return f64::NAN;
        }
        self.usage.proxy_cpu_secs / self.ok as f64 * 1e6
    }
}

#[derive(Clone)]
struct Medians {
    per_sec: f64,
    p99_us: f64,
    cpu_per_req_us: f64,
    errors: String,
}

impl Medians {
    fn of(runs: &[Run]) -> Self {
        let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let errors: Vec<&str> = runs.iter().map(|r| r.errors.as_str()).filter(|e| !e.is_empty() && *e != "0").collect();
        Self {
            per_sec: m(|r| r.per_sec),
            p99_us: m(|r| r.p99_us),
            cpu_per_req_us: m(Run::cpu_per_req_us),
            errors: if errors.is_empty() { "0".into() } else { errors.join(" / ") },
        }
    }
}

fn cpu_us(us: f64) -> String {
    if us.is_nan() {
        "—".into()
    } else {
        format!("{us:.1} µs")
    }
}

impl Env<'_> {
    /// Starts `proxy` for scenario `sc` and waits until a request through it succeeds.
    fn start(&self, lab: &mut Lab, sc: Scenario, proxy: &'static str) -> Result<Proxy, String> {
        let [port, admin] = free_ports();
        let name = format!("{proxy}-{}", sc.id());
        let dir = lab.path(&name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cpu = self.rounds.proxy_cpu.to_string();
        let t = self.tools;
        let ca = self.ca.display();
        let cmd = match proxy {
            "reveille" => {
                let service = match sc {
                    Scenario::Grpc | Scenario::Balance => {
                        format!("[services.s]\nbackends = [\"h2c://127.0.0.1:{}\"]\n", self.grpc_backend)
                    }
                    Scenario::Https => format!(
                        "[services.s]\nbackends = [\"https://127.0.0.1:{}\"]\n[services.s.tls]\nca = \"{ca}\"\n\
                         server_name = \"{HOST}\"\n",
                        self.tls_backend
                    ),
                };
                let routes =
                    lab.write(&format!("{name}/routes.toml"), &format!("{service}[routes]\n\"{HOST}\" = \"s\"\n"));
                let mut cmd = pinned(&t.taskset, &cpu, "sh");
                crate::serve(&mut cmd, &routes, port, admin).args([
                    "--threads",
                    "1",
                    "--access-log",
                    "false",
                    "--log-level",
                    "warn",
                ]);
                cmd
            }
            "nginx" => {
                let p = dir.display();
                let (upstream_port, listen, location) = match sc {
                    Scenario::Grpc | Scenario::Balance => {
                        (self.grpc_backend, " http2", "            grpc_pass grpc://up;\n".to_string())
                    }
                    Scenario::Https => (
                        self.tls_backend,
                        "",
                        format!(
                            "            proxy_pass https://up;\n            proxy_http_version 1.1;\n            \
                             proxy_set_header Connection \"\";\n            proxy_set_header Host $host;\n            \
                             proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate {ca};\n            \
                             proxy_ssl_name {HOST};\n            proxy_ssl_server_name on;\n            \
                             proxy_ssl_session_reuse on;\n            proxy_ssl_protocols TLSv1.3;\n"
                        ),
                    ),
                };
                let conf = format!(
                    "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
                     events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {p}/cb;\n    \
                     proxy_temp_path {p}/proxy;\n    fastcgi_temp_path {p}/fcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    \
                     scgi_temp_path {p}/scgi;\n    keepalive_requests 1000000;\n    http2_max_requests 1000000;\n    \
                     upstream up {{\n        server 127.0.0.1:{upstream_port};\n        keepalive 1024;\n        \
                     keepalive_requests 1000000;\n    }}\n    server {{\n        listen 127.0.0.1:{port}{listen};\n        \
                     server_name {HOST};\n        location / {{\n{location}        }}\n    }}\n}}\n"
                );
                let conf = lab.write(&format!("{name}/nginx.conf"), &conf);
                let mut cmd = pinned(&t.taskset, &cpu, "sh");
                cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&t.nginx);
                cmd.arg("-p").arg(&dir).arg("-c").arg(conf).arg("-e").arg(dir.join("error.log"));
                cmd
            }
            "haproxy" => {
                let (bind, server) = match sc {
                    Scenario::Grpc | Scenario::Balance => {
                        (" proto h2", format!("127.0.0.1:{} proto h2", self.grpc_backend))
                    }
                    Scenario::Https => (
                        "",
                        format!(
                            "127.0.0.1:{} ssl verify required ca-file {ca} sni str({HOST}) ssl-min-ver TLSv1.3",
                            self.tls_backend
                        ),
                    ),
                };
                let conf = format!(
                    "global\n    nbthread 1\n    maxconn 4096\ndefaults\n    mode http\n    option forwardfor\n    \
                     http-reuse always\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    \
                     timeout http-request 10s\n    timeout http-keep-alive 60s\nfrontend fe\n    \
                     bind 127.0.0.1:{port}{bind}\n    default_backend be\nbackend be\n    server b1 {server}\n"
                );
                let conf = lab.write(&format!("{name}/haproxy.cfg"), &conf);
                let mut cmd = pinned(&t.taskset, &cpu, "sh");
                cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&t.haproxy).arg("-db").arg("-f").arg(conf);
                cmd
            }
            other => return Err(format!("unknown proxy {other}")),
        };
        let (pid, _log) = lab.try_start(&name, cmd, || match sc {
            Scenario::Grpc | Scenario::Balance => grpc_call(port).is_ok(),
            Scenario::Https => onecore::get(port, HOST, "/").is_some_and(|(s, body)| s == 200 && body[..] == SMALL[..]),
        })?;
        Ok(Proxy { pid, port })
    }

    /// One run of `sc` against `proxy` (the backend itself if `None`).
    fn run(&self, sc: Scenario, proxy: Option<&Proxy>, seconds: u64, ticks: f64) -> Result<Run, String> {
        let r = self.rounds;
        let t = self.tools;
        let (run, usage) =
            onecore::measure(proxy.map(|p| p.pid), (r.proxy_cpu, r.client_cpu), ticks, || -> Result<Run, String> {
                match sc {
                    Scenario::Grpc | Scenario::Balance => {
                        grpc_load(t, r, proxy.map_or(self.grpc_backend, |p| p.port), seconds)
                    }
                    Scenario::Https => {
                        let url = match proxy {
                            Some(p) => format!("http://127.0.0.1:{}/", p.port),
                            None => format!("https://127.0.0.1:{}/", self.tls_backend),
                        };
                        let host = format!("Host: {HOST}");
                        let mut cmd = pinned(&t.taskset, r.client_cpu, "sh");
                        cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&t.wrk);
                        cmd.args(testkit::wrk::args_with(1, 50, seconds, &[&host], &url));
                        let wrk = testkit::wrk::run(&mut cmd)?;
                        let ok = wrk.requests.saturating_sub(wrk.errors.non_2xx_3xx);
                        let share = if wrk.requests > 0 { ok as f64 / wrk.requests as f64 } else { 0.0 };
                        Ok(Run {
                            per_sec: wrk.requests_per_sec * share,
                            p99_us: wrk.p99_us,
                            ok,
                            errors: wrk.errors.to_string(),
                            usage: Usage::default(),
                        })
                    }
                }
            });
        let mut run: Run = run?;
        run.usage = usage;
        Ok(run)
    }
}

/// The `balance` scenario: one reveille per strategy in front of the same four h2c backends (the first
/// answering [`SLOW`] late), measured in alternating rounds; adds its table to `md`.
fn balance(lab: &mut Lab, t: &Tools, r: &Rounds, md: &mut String) {
    let calls: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let ports: Vec<u16> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| start_grpc_backend_with(if i == 0 { SLOW } else { Duration::ZERO }, c.clone()))
        .collect();
    let backends: Vec<String> = ports.iter().map(|p| format!("\"h2c://127.0.0.1:{p}\"")).collect();
    let mut proxies = Vec::new();
    for strategy in ["round_robin", "least_request"] {
        let [port, admin] = free_ports();
        let routes = lab.write(
            &format!("balance-{strategy}.toml"),
            &format!(
                "[services.s]\nbackends = [{}]\nbalance = \"{strategy}\"\n[routes]\n\"{HOST}\" = \"s\"\n",
                backends.join(", ")
            ),
        );
        let mut cmd = pinned(&t.taskset, r.proxy_cpu, "sh");
        crate::serve(&mut cmd, &routes, port, admin).args([
            "--threads",
            "1",
            "--access-log",
            "false",
            "--log-level",
            "warn",
        ]);
        match lab.try_start(&format!("reveille-{strategy}"), cmd, || grpc_call(port).is_ok()) {
            Ok((pid, _)) => proxies.push((strategy, pid, port)),
            Err(e) => {
                let _ = writeln!(
                    md,
                    "\n`balance`: reveille ({strategy}) did not start: {}",
                    e.lines().next().unwrap_or_default()
                );
                return;
            }
        }
    }
    let ticks = clock_ticks_per_sec();
    let mut results: BTreeMap<&str, Vec<(Run, f64)>> = BTreeMap::new();
    for round in 0..=r.rounds {
        let seconds = if round == 0 { r.warmup } else { r.seconds };
        for &(strategy, pid, port) in &proxies {
            let before: Vec<u64> = calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let (run, usage) =
                onecore::measure(Some(pid), (r.proxy_cpu, r.client_cpu), ticks, || grpc_load(t, r, port, seconds));
            let after: Vec<u64> = calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
            let slow = if total > 0 { (after[0] - before[0]) as f64 / total as f64 } else { f64::NAN };
            match run {
                Ok(mut run) => {
                    run.usage = usage;
                    println!(
                        "balance {strategy:<13} {:>9.0} req/s p99 {:>9}  slow backend {:.1}% of calls  errors {}",
                        run.per_sec,
                        format_us(run.p99_us),
                        slow * 100.0,
                        run.errors
                    );
                    if round > 0 {
                        results.entry(strategy).or_default().push((run, slow));
                    }
                }
                Err(e) => println!("balance {strategy}: FAILED: {}", e.lines().next().unwrap_or_default()),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let _ = writeln!(
        md,
        "\n`balance`: gRPC unary calls (50 conns × 10 streams) through reveille to four h2c backends, the first \
         answering {} ms late; medians:\n",
        SLOW.as_millis()
    );
    let mut table = Table::new("balance | req/s | p99 | calls to the slow backend | CPU/req | errors", "lrrrrl");
    for (strategy, runs) in &results {
        let just: Vec<Run> = runs.iter().map(|(r, _)| Run { errors: r.errors.clone(), ..*r }).collect();
        let m = Medians::of(&just);
        let slow = median(&runs.iter().map(|(_, s)| *s).collect::<Vec<_>>());
        table.row([
            strategy.to_string(),
            format!("{:.0}", m.per_sec),
            format_us(m.p99_us),
            format!("{:.1}%", slow * 100.0),
            cpu_us(m.cpu_per_req_us),
            m.errors,
        ]);
    }
    md.push_str(&table.to_string());
}

/// h2load's gRPC unary calls (50 connections × 10 streams, one framed message each) to 127.0.0.1:`port` for
/// `seconds`, from the client CPU.
fn grpc_load(t: &Tools, r: &Rounds, port: u16, seconds: u64) -> Result<Run, String> {
    let log = std::env::temp_dir().join(format!("reveille-backends-h2load-{}.log", std::process::id()));
    let data = std::env::temp_dir().join(format!("reveille-backends-grpc-{}.bin", std::process::id()));
    std::fs::write(&data, grpc_frame(MESSAGE)).map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{port}{GRPC_PATH}");
    let headers =
        [format!(":authority: {HOST}"), "content-type: application/grpc".to_string(), "te: trailers".to_string()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut args = testkit::h2load::args(50, 10, seconds, &headers, &log, &url);
    args.insert(args.len() - 1, format!("--data={}", data.display()));
    let mut cmd = pinned(&t.taskset, r.client_cpu, "sh");
    cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&t.h2load).args(args);
    let h = testkit::h2load::run(&mut cmd, &log)?;
    let ok = h.succeeded.saturating_sub(h.errors.non_2xx);
    let all = h.succeeded + h.errors.failed;
    let share = if all > 0 { ok as f64 / all as f64 } else { 0.0 };
    Ok(Run {
        per_sec: h.requests_per_sec * share,
        p99_us: h.p99_us,
        ok,
        errors: h.errors.to_string(),
        usage: Usage::default(),
    })
}

/// `message` as one gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// One gRPC-shaped call over h2c to 127.0.0.1:`port` (within 2 s): "200, grpc-status 0" when the answer has the
/// status, the message and the trailer, else why not.
fn grpc_call(port: u16) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::post(format!("http://{HOST}{GRPC_PATH}"))
                .header(CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(MESSAGE)))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            let grpc_status =
                trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap_or("?").to_string());
            match (status.as_u16(), grpc_status.as_deref(), body == grpc_frame(MESSAGE)) {
                (200, Some("0"), true) => Ok("200, grpc-status 0".to_string()),
                (s, g, b) => Err(format!("status {s}, grpc-status {g:?}, message {}", if b { "ok" } else { "wrong" })),
            }
        })
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
    })
}

/// The gRPC backend's answer: the message, then the trailer `grpc-status: 0`.
struct GrpcReply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcReply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A gRPC-shaped h2c backend on its own thread (inheriting this process's CPU): reads each request's body,
/// answers 200 with one framed message and `grpc-status: 0`. Returns its port.
fn start_grpc_backend() -> u16 {
    start_grpc_backend_with(Duration::ZERO, Arc::new(AtomicU64::new(0)))
}

/// [`start_grpc_backend`] answering each call `delay` late, counting calls in `calls`.
fn start_grpc_backend_with(delay: Duration, calls: Arc<AtomicU64>) -> u16 {
    serve_on_thread(move |stream| {
        let calls = calls.clone();
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let _ = req.into_body().collect().await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let reply = GrpcReply { data: Some(grpc_frame(MESSAGE)), trailers: Some(trailers) };
                    let mut resp = Response::new(reply);
                    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
}

/// An HTTPS backend (rustls, TLS 1.3, ALPN `http/1.1`, the bench certificate) on its own thread: HTTP/1.1,
/// 200 with [`SMALL`] to every request. Returns its port.
fn start_tls_backend(cert: &BenchCert) -> u16 {
    let certs: Vec<_> = rustls_pem_certs(&cert.chain_pem);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("the bench key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the bench certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve_on_thread(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut resp = Response::new(Full::new(Bytes::from_static(SMALL)));
                resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        }
    })
}

/// Serves every connection a listener on 127.0.0.1 accepts (`TCP_NODELAY`) with `serve`, each in a task of a
/// single-threaded runtime on a thread of its own (inheriting this process's CPU affinity). Returns the port.
fn serve_on_thread<F, Fut>(serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a lab backend");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
        });
    });
    port
}

/// The certificates of a PEM chain.
fn rustls_pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the bench chain")
}
