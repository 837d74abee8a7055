//! Load benchmark: reveille against nginx and haproxy, each a one-core reverse proxy in front of the same
//! backend, driven by `wrk`.
//!
//! Run with `cargo run --release -p reveille-lab -- load`. Needs `wrk`, `nginx`, `haproxy` and `taskset`; without them it says
//! which is missing and exits 0. Only 127.0.0.1 is used.
//!
//! Layout, on a machine with at least two CPUs:
//!
//! - CPU 0 (`LOAD_PROXY_CPU`): the proxy under test, started with `taskset -c 0`, single-threaded
//!   (`--threads 1`, `worker_processes 1` with `master_process off`, `nbthread 1`);
//! - CPU 1 (`LOAD_CLIENT_CPU`): `wrk -t1` (started with `taskset -c 1`) and the backend. The backend is a
//!   hyper HTTP/1.1 server on a single-threaded tokio runtime in this process, which pins itself (all of its
//!   threads) to that CPU with `taskset -a -cp 1 <pid>` before starting it. It answers every request 200 with a
//!   fixed 100-byte body.
//!
//! After a warm-up run per proxy, the proxies are measured in turn, interleaved (reveille, nginx, haproxy,
//! reveille, ...), so slow drift on a shared machine hits all of them alike. The table shows medians over the
//! rounds and is also written to `target/load-bench.md`.
//!
//! Environment: `LOAD_ROUNDS` (5), `LOAD_SECONDS` (10), `LOAD_WARMUP` (3, seconds per proxy),
//! `LOAD_CONNECTIONS` (50), `LOAD_PROXIES` (`reveille,nginx,haproxy`), `LOAD_PROXY_CPU` (0),
//! `LOAD_CLIENT_CPU` (1), `LOAD_ACCESS_LOG` (off; see [`AccessLog`]).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::backend::start_backend;
use testkit::machine::{cpu_model, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::process::read_log;
use testkit::procfs::clock_ticks_per_sec;
use testkit::report::{heading, print_log, write_report};
use testkit::stats::{format_us, median};
use testkit::wrk::{WrkErrors, WrkReport};

use crate::onecore::{self, describe_usage, pin_all_threads, pinned, Lab, NginxSite, Rounds, Usage};

/// The `Host` every request carries; every proxy routes it to the backend.
const HOST: &str = "bench.local";

/// The backend's answer to every request: exactly 100 bytes (the array type checks the length).
const BODY: &[u8; 100] =
    b"reveille load bench: a fixed response body from the upstream backend, one hundred bytes in all.....\n";

const PROXY_NAMES: [&str; 3] = ["reveille", "nginx", "haproxy"];

/// Runs the lab; false if a measurement failed.
pub(crate) fn main() -> bool {
    let Some([wrk, nginx, haproxy, taskset]) = onecore::find_tools("load", ["wrk", "nginx", "haproxy", "taskset"])
    else {
        return true;
    };
    let tools = Tools { wrk, nginx, haproxy, taskset };
    let settings = settings();
    let access = AccessLog::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let machine = Machine::describe(&tools);
    if !pin_all_threads("load", &tools.taskset, settings.client_cpu) {
        return true;
    }
    let backend = start_backend(BODY);
    let mut lab = Lab::new("reveille-load-");
    let ports: [u16; 4] = free_ports();
    let mut proxies = Vec::new();
    for name in &settings.proxies {
        let proxy = match *name {
            "reveille" => start_reveille(&mut lab, &tools, &settings, access, backend, ports[0], ports[1]),
            "nginx" => start_nginx(&mut lab, &tools, &settings, access, backend, ports[2]),
            _ => start_haproxy(&mut lab, &tools, &settings, backend, ports[3]),
        };
        proxies.push(proxy);
    }
    println!(
        "backend 127.0.0.1:{backend}; {}",
        proxies.iter().map(|p| format!("{} 127.0.0.1:{}", p.name, p.port)).collect::<Vec<_>>().join(", ")
    );
    measure(&tools, &settings, &mut proxies);
    let report = report(&machine, &settings, access, &proxies);
    println!("\n{report}");
    print_proxy_logs(&proxies);
    write_report("load-bench.md", &report);
    true
}

// ---------------------------------------------------------------------------------------------------------
// Settings, tools, machine

/// Rounds, durations, connections, CPUs and the proxies (`LOAD_PROXIES`).
type Settings = Rounds;

fn settings() -> Settings {
    Rounds::from_env("LOAD", (5, 10, 3), &PROXY_NAMES)
}

/// `LOAD_ACCESS_LOG`: whether the proxies write an access log, to a file each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AccessLog {
    /// No access log (reveille `--access-log false`, nginx `access_log off`); the default.
    Off,
    /// `1`: reveille `--access-log true`, to `--access-log-file` (when the binary has it, else to its stdout,
    /// which the lab sends to a file); nginx `access_log <file>` (its default `combined` format, unbuffered: a
    /// `write` per request). haproxy logs nothing either way.
    File,
    /// `buffered`: as `File`, with nginx's `buffer=64k flush=1s`.
    Buffered,
}

impl AccessLog {
    fn from_env() -> Self {
        match std::env::var("LOAD_ACCESS_LOG").unwrap_or_default().as_str() {
            "" | "0" | "off" => Self::Off,
            "buffered" => Self::Buffered,
            _ => Self::File,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Off => "access log off",
            Self::File => {
                "access log on, to a file: reveille `--access-log-file` (text), nginx `access_log <file>` (combined, \
                 unbuffered); haproxy none"
            }
            Self::Buffered => {
                "access log on, to a file: reveille `--access-log-file` (text), nginx `access_log <file> buffer=64k \
                 flush=1s` (combined); haproxy none"
            }
        }
    }
}

fn describe(s: &Settings) -> String {
    let Rounds { rounds, seconds, warmup, connections, proxy_cpu, client_cpu, .. } = s;
    format!(
        "wrk -t1 -c{connections} -d{seconds}s --latency, {rounds} round(s) after a {warmup}s warm-up per proxy; \
         proxy on CPU {proxy_cpu}, wrk + backend on CPU {client_cpu}"
    )
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    taskset: PathBuf,
}

struct Machine {
    date: String,
    nproc: String,
    cpu: String,
    versions: Vec<(&'static str, String)>,
}

impl Machine {
    fn describe(tools: &Tools) -> Self {
        let versions = vec![
            ("reveille", version(Command::new(crate::reveille_bin()).arg("--version"))),
            ("nginx", version(Command::new(&tools.nginx).arg("-v"))),
            ("haproxy", version(Command::new(&tools.haproxy).arg("-v"))),
            ("wrk", version(Command::new(&tools.wrk).arg("-v"))),
        ];
        Self { date: utc_date(), nproc: nproc(), cpu: cpu_model(), versions }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The proxies

/// A running proxy and what was measured through it.
struct Proxy {
    name: &'static str,
    port: u16,
    pid: u32,
    log: PathBuf,
    /// Its access log, when `LOAD_ACCESS_LOG` is on.
    access_log: Option<PathBuf>,
    /// reveille's admin port, for its access-log counters.
    admin: Option<u16>,
    /// Requests of the warm-up run (they are logged too).
    warmup_requests: u64,
    runs: Vec<Run>,
}

/// Starts `cmd` as `name` in the lab and waits until every `(port, path)` in `ready` answers 200 (each request
/// has `Host: bench.local`).
fn start(lab: &mut Lab, name: &'static str, cmd: Command, ready: &[(u16, &str)]) -> Proxy {
    let (pid, log) = lab.start(name, cmd, || {
        ready.iter().all(|&(port, path)| onecore::get(port, HOST, path).is_some_and(|(status, _)| status == 200))
    });
    Proxy {
        name,
        port: ready.last().map_or(0, |r| r.0),
        pid,
        log,
        access_log: None,
        admin: None,
        warmup_requests: 0,
        runs: Vec::new(),
    }
}

fn start_reveille(
    lab: &mut Lab,
    tools: &Tools,
    s: &Settings,
    access: AccessLog,
    backend: u16,
    port: u16,
    admin: u16,
) -> Proxy {
    let cmd = match access {
        AccessLog::Off => onecore::reveille(lab, &tools.taskset, s.proxy_cpu, &[(HOST, backend)], port, admin),
        AccessLog::File | AccessLog::Buffered => reveille_logging(lab, tools, s, backend, port, admin),
    };
    let mut proxy = start(lab, "reveille", cmd, &[(admin, "/readyz"), (port, "/")]);
    proxy.admin = Some(admin);
    if access != AccessLog::Off {
        let file = lab.path("reveille-access.log");
        proxy.access_log = Some(if file.exists() { file } else { proxy.log.clone() });
    }
    proxy
}

/// reveille as [`onecore::reveille`] starts it, but with its access log on: to `reveille-access.log` in the
/// lab's dir, or to stdout (the lab's `reveille.log`) with a binary that has no `--access-log-file`. The
/// filter lets `reveille::access` through at `info`, which `--log-level warn` alone would not.
fn reveille_logging(lab: &Lab, tools: &Tools, s: &Settings, backend: u16, port: u16, admin: u16) -> Command {
    let routes = lab.write(
        "routes.toml",
        &format!("[services.s0]\nbackends = [\"127.0.0.1:{backend}\"]\n[routes]\n\"{HOST}\" = \"s0\"\n"),
    );
    let mut cmd = pinned(&tools.taskset, s.proxy_cpu, "sh");
    cmd.arg("-c")
        .arg(crate::RAISE_NOFILE)
        .arg(crate::reveille_bin())
        .arg("serve")
        .arg("--routes")
        .arg(&routes)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--threads", "1", "--access-log", "true", "--log-level", "warn,reveille::access=info"]);
    let help = Command::new(crate::reveille_bin()).args(["serve", "--help"]).output();
    if help.is_ok_and(|h| String::from_utf8_lossy(&h.stdout).contains("--access-log-file")) {
        cmd.arg("--access-log-file").arg(lab.path("reveille-access.log"));
    }
    cmd
}

fn start_nginx(lab: &mut Lab, tools: &Tools, s: &Settings, access: AccessLog, backend: u16, port: u16) -> Proxy {
    let file = lab.path("nginx-access.log");
    let server = match access {
        AccessLog::Off => String::new(),
        AccessLog::File => format!("        access_log {};\n", file.display()),
        AccessLog::Buffered => format!("        access_log {} combined buffer=64k flush=1s;\n", file.display()),
    };
    let site = NginxSite {
        name: "nginx",
        workers: 1,
        keepalive: 64,
        host: HOST,
        backend,
        listen: format!("127.0.0.1:{port}"),
        http: "",
        server,
        location: "",
    };
    let (cmd, log) = onecore::nginx(lab, &tools.taskset, &tools.nginx, s.proxy_cpu, &site);
    let mut proxy = start(lab, "nginx", cmd, &[(port, "/")]);
    proxy.log = log;
    proxy.access_log = (access != AccessLog::Off).then_some(file);
    proxy
}

fn start_haproxy(lab: &mut Lab, tools: &Tools, s: &Settings, backend: u16, port: u16) -> Proxy {
    // No `log` line anywhere: haproxy logs nothing.
    let conf = format!(
        "global
    nbthread 1
    maxconn 4096
defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend fe_bench
    bind 127.0.0.1:{port}
    use_backend be_bench if {{ req.hdr(host) -i {HOST} }}
backend be_bench
    server b1 127.0.0.1:{backend}
"
    );
    let conf_path = lab.write("haproxy.cfg", &conf);
    let mut cmd = pinned(&tools.taskset, s.proxy_cpu, &tools.haproxy);
    cmd.arg("-db").arg("-f").arg(&conf_path);
    start(lab, "haproxy", cmd, &[(port, "/")])
}

// ---------------------------------------------------------------------------------------------------------
// Measuring

/// One wrk run through one proxy.
struct Run {
    wrk: WrkReport,
    usage: Usage,
}

/// Warm-up for each proxy, then `rounds` interleaved measured runs.
fn measure(tools: &Tools, s: &Settings, proxies: &mut [Proxy]) {
    let ticks_per_sec = clock_ticks_per_sec();
    println!("{}", describe(s));
    for p in proxies.iter_mut() {
        let run = run_wrk(tools, s, p, s.warmup, ticks_per_sec);
        println!("warm-up   {:<9} {}", p.name, summary(&run));
        p.warmup_requests = run.wrk.requests;
    }
    for round in 1..=s.rounds {
        for p in proxies.iter_mut() {
            std::thread::sleep(Duration::from_millis(500));
            let run = run_wrk(tools, s, p, s.seconds, ticks_per_sec);
            println!("round {round}/{} {:<9} {}", s.rounds, p.name, summary(&run));
            p.runs.push(run);
        }
    }
}

fn summary(run: &Run) -> String {
    format!(
        "{:>9.0} req/s  p99 {:>9}  proxy process {}  errors {}",
        run.wrk.requests_per_sec,
        format_us(run.wrk.p99_us),
        describe_usage(&run.usage),
        run.wrk.errors
    )
}

fn run_wrk(tools: &Tools, s: &Settings, proxy: &Proxy, seconds: u64, ticks_per_sec: f64) -> Run {
    let mut cmd = pinned(&tools.taskset, s.client_cpu, &tools.wrk);
    cmd.args(testkit::wrk::args(s.connections, seconds, HOST, &format!("http://127.0.0.1:{}/", proxy.port)));
    let (wrk, usage) = onecore::measure(proxy.pid, (s.proxy_cpu, s.client_cpu), ticks_per_sec, || {
        testkit::wrk::run(&mut cmd).unwrap_or_else(|e| panic!("{}: {e}", proxy.name))
    });
    Run { wrk, usage }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// The markdown report: machine, settings, the results table and the per-round numbers.
fn report(machine: &Machine, s: &Settings, access: AccessLog, proxies: &[Proxy]) -> String {
    let medians: Vec<(f64, f64, f64)> = proxies
        .iter()
        .map(|p| {
            let med = |f: fn(&Run) -> f64| median(&p.runs.iter().map(f).collect::<Vec<_>>());
            (med(|r| r.wrk.requests_per_sec), med(|r| r.wrk.p99_us), med(|r| r.usage.proxy_cpu_pct))
        })
        .collect();
    let nginx = proxies.iter().position(|p| p.name == "nginx").map(|i| medians[i]);
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", x / b),
        _ => "n/a".to_string(),
    };

    let mut md = heading("Load benchmark", &machine.date);
    let _ = writeln!(md, "- CPU: {} × {}", machine.nproc, machine.cpu);
    let versions: Vec<_> = machine.versions.iter().map(|(_, v)| v.as_str()).collect();
    let _ = writeln!(md, "- versions: {}", versions.join("; "));
    let _ = writeln!(md, "- {}", describe(s));
    let _ = writeln!(md, "- backend: in-process hyper HTTP/1.1 server, 100-byte 200 response");
    let _ = writeln!(md, "- {}", access.describe());
    for p in proxies {
        if let Some(file) = &p.access_log {
            let _ = writeln!(md, "  - {}: {}", p.name, access_log_summary(p, file));
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| proxy | req/s (median) | p99 latency (median) | req/s vs nginx | p99 vs nginx | proxy CPU | errors (all rounds) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for (p, &(rps, p99, cpu)) in proxies.iter().zip(&medians) {
        let mut errors = WrkErrors::default();
        p.runs.iter().for_each(|r| errors.add(&r.wrk.errors));
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {:.0}% | {} |",
            p.name,
            rps,
            format_us(p99),
            ratio(rps, nginx.map(|n| n.0)),
            ratio(p99, nginx.map(|n| n.1)),
            cpu,
            errors
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Per round (req/s, p99):");
    let _ = writeln!(md);
    for p in proxies {
        let rounds: Vec<_> =
            p.runs.iter().map(|r| format!("{:.0} / {}", r.wrk.requests_per_sec, format_us(r.wrk.p99_us))).collect();
        let _ = writeln!(md, "- {}: {}", p.name, rounds.join(", "));
    }
    md
}

/// What an access log holds against the requests wrk completed (warm-up included; a request wrk cut at the end
/// of a run may be logged and not counted, or the other way round), and what reveille says it dropped.
fn access_log_summary(p: &Proxy, file: &Path) -> String {
    let requests: u64 = p.runs.iter().map(|r| r.wrk.requests).sum::<u64>() + p.warmup_requests;
    let lines = count_lines(file);
    let mut out = format!("{lines} access-log lines for {requests} requests (warm-up included)");
    if let Some(admin) = p.admin {
        let metrics = onecore::get(admin, "127.0.0.1", "/metrics").map(|(_, b)| b).unwrap_or_default();
        let metrics = String::from_utf8_lossy(&metrics);
        let dropped: Vec<_> = metrics.lines().filter(|l| l.starts_with("reveille_access_log_dropped_total")).collect();
        if !dropped.is_empty() {
            let _ = write!(out, "; {}", dropped.join(", "));
        }
    }
    out
}

/// Lines in a file (read in chunks: an access log may be large).
fn count_lines(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else { return 0 };
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    while let Ok(k) = f.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    n
}

/// Shows what each proxy logged (reveille at `warn`, nginx's error log at `warn`, haproxy's stderr).
fn print_proxy_logs(proxies: &[Proxy]) {
    for p in proxies {
        print_log(&format!("{} log", p.name), &read_log(&p.log));
    }
}
