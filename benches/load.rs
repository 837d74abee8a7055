//! Load benchmark: reveille against nginx and haproxy, each a one-core reverse proxy in front of the same
//! backend, driven by `wrk`.
//!
//! Run with `cargo bench --bench load`. Needs `wrk`, `nginx`, `haproxy` and `taskset`; without them it says
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
//! `LOAD_CLIENT_CPU` (1).

mod common;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    clock_ticks_per_sec, cpu_model, cpu_ticks, env_or, first_line, format_us, free_ports, median, nproc, print_log,
    proc_status, read_log, start_backend, status_kib, utc_date, write_report, KillOnDrop,
};

/// The `Host` every request carries; every proxy routes it to the backend.
const HOST: &str = "bench.local";

/// The backend's answer to every request: exactly 100 bytes (the array type checks the length).
const BODY: &[u8; 100] =
    b"reveille load bench: a fixed response body from the upstream backend, one hundred bytes in all.....\n";

const PROXY_NAMES: [&str; 3] = ["reveille", "nginx", "haproxy"];

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: do not start a three-minute load test then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: skipped outside `cargo bench` (run `cargo bench --bench load`)");
        return;
    }
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(missing) => {
            println!("load: skipped, not found on PATH (or in /usr/sbin, /sbin): {}", missing.join(", "));
            return;
        }
    };
    let settings = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let machine = Machine::describe(&tools);
    if let Err(e) = pin_all_threads(&tools, settings.client_cpu) {
        println!("load: skipped, cannot pin to CPU {}: {e}", settings.client_cpu);
        return;
    }
    let backend = start_backend(BODY);
    let mut lab = Lab::new();
    let ports: [u16; 4] = free_ports();
    let mut proxies = Vec::new();
    for name in &settings.proxies {
        let proxy = match *name {
            "reveille" => start_reveille(&mut lab, &tools, &settings, backend, ports[0], ports[1]),
            "nginx" => start_nginx(&mut lab, &tools, &settings, backend, ports[2]),
            _ => start_haproxy(&mut lab, &tools, &settings, backend, ports[3]),
        };
        proxies.push(proxy);
    }
    println!(
        "backend 127.0.0.1:{backend}; {}",
        proxies.iter().map(|p| format!("{} 127.0.0.1:{}", p.name, p.port)).collect::<Vec<_>>().join(", ")
    );
    measure(&tools, &settings, &mut proxies);
    let report = report(&machine, &settings, &proxies);
    println!("\n{report}");
    print_proxy_logs(&proxies);
    write_report("load-bench.md", &report);
}

// ---------------------------------------------------------------------------------------------------------
// Settings, tools, machine

struct Settings {
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: usize,
    proxy_cpu: usize,
    client_cpu: usize,
    proxies: Vec<&'static str>,
}

impl Settings {
    fn from_env() -> Self {
        let wanted = std::env::var("LOAD_PROXIES").unwrap_or_else(|_| PROXY_NAMES.join(","));
        let proxies: Vec<_> = wanted
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                PROXY_NAMES.into_iter().find(|n| *n == w).unwrap_or_else(|| panic!("LOAD_PROXIES: unknown proxy {w:?}"))
            })
            .collect();
        assert!(!proxies.is_empty(), "LOAD_PROXIES names no proxy");
        Self {
            rounds: env_or("LOAD_ROUNDS", 5),
            seconds: env_or("LOAD_SECONDS", 10),
            warmup: env_or("LOAD_WARMUP", 3),
            connections: env_or("LOAD_CONNECTIONS", 50),
            proxy_cpu: env_or("LOAD_PROXY_CPU", 0),
            client_cpu: env_or("LOAD_CLIENT_CPU", 1),
            proxies,
        }
    }

    fn describe(&self) -> String {
        format!(
            "wrk -t1 -c{c} -d{s}s --latency, {r} round(s) after a {w}s warm-up per proxy; \
             proxy on CPU {pc}, wrk + backend on CPU {cc}",
            c = self.connections,
            s = self.seconds,
            r = self.rounds,
            w = self.warmup,
            pc = self.proxy_cpu,
            cc = self.client_cpu,
        )
    }
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    taskset: PathBuf,
}

impl Tools {
    /// Finds every tool, or returns the names of the missing ones.
    fn find() -> Result<Self, Vec<&'static str>> {
        let names = ["wrk", "nginx", "haproxy", "taskset"];
        let found: Vec<_> = names.iter().map(|n| find_tool(n)).collect();
        let missing: Vec<_> = names.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut found = found.into_iter().flatten();
        let mut next = || found.next().unwrap();
        Ok(Self { wrk: next(), nginx: next(), haproxy: next(), taskset: next() })
    }
}

/// Looks for an executable on `PATH`, then in the sbin directories a non-root `PATH` often lacks.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
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
            ("reveille", version(Command::new(env!("CARGO_BIN_EXE_reveille")).arg("--version"))),
            ("nginx", version(Command::new(&tools.nginx).arg("-v"))),
            ("haproxy", version(Command::new(&tools.haproxy).arg("-v"))),
            ("wrk", version(Command::new(&tools.wrk).arg("-v"))),
        ];
        Self { date: utc_date(), nproc: nproc(), cpu: cpu_model(), versions }
    }
}

/// The first line a command prints (see [`first_line`]), without URLs and copyright notices.
fn version(cmd: &mut Command) -> String {
    let line = first_line(cmd);
    // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12 2023/03/20 - https://haproxy.org/"
    let line = line.split_once("version: ").map_or(line.as_str(), |(_, v)| v);
    let line = line.split(" - http").next().unwrap_or(line);
    let line = line.split(" Copyright").next().unwrap_or(line);
    line.replace(" version ", " ").trim().to_string()
}

/// Pins every thread of this process (and so every thread it starts later) to `cpu`.
fn pin_all_threads(tools: &Tools, cpu: usize) -> Result<(), String> {
    let out = Command::new(&tools.taskset)
        .args(["-a", "-cp", &cpu.to_string(), &std::process::id().to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

// ---------------------------------------------------------------------------------------------------------
// The proxies

/// The child processes and their temporary directory. Dropping it (also while unwinding from a panic) kills
/// and reaps every child, then removes the directory.
struct Lab {
    // Field order is drop order: children before the directory they write into.
    children: Vec<KillOnDrop>,
    dir: tempfile::TempDir,
}

/// A running proxy and what was measured through it.
struct Proxy {
    name: &'static str,
    port: u16,
    pid: u32,
    log: PathBuf,
    runs: Vec<Run>,
}

impl Lab {
    fn new() -> Self {
        Self {
            children: Vec::new(),
            dir: tempfile::Builder::new().prefix("reveille-load-").tempdir().expect("create a temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a temp file");
        path
    }

    /// Spawns `cmd` with stdout and stderr going to `<name>.log`, then waits until every `(port, path)` in
    /// `ready` answers 200 (each request has `Host: bench.local`).
    fn start(&mut self, name: &'static str, mut cmd: Command, ready: &[(u16, &str)]) -> Proxy {
        let log = self.path(&format!("{name}.log"));
        let file = File::create(&log).expect("create a log file");
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        self.children.push(KillOnDrop(child));
        let child = &mut self.children.last_mut().unwrap().0;
        for &(port, path) in ready {
            let deadline = Instant::now() + Duration::from_secs(20);
            while http_status(port, path) != Some(200) {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status}) before it was ready:\n{}", read_log(&log));
                }
                if Instant::now() > deadline {
                    panic!("{name} not ready on port {port} {path} after 20s:\n{}", read_log(&log));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Proxy { name, port: ready.last().map_or(0, |r| r.0), pid, log, runs: Vec::new() }
    }
}

/// `taskset -c <cpu> <program>`.
fn pinned(tools: &Tools, cpu: usize, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(&tools.taskset);
    cmd.arg("-c").arg(cpu.to_string()).arg(program);
    cmd
}

fn start_reveille(lab: &mut Lab, tools: &Tools, s: &Settings, backend: u16, port: u16, admin: u16) -> Proxy {
    let routes = lab.write(
        "routes.toml",
        &format!("[services.bench]\nbackends = [\"127.0.0.1:{backend}\"]\n[routes]\n\"{HOST}\" = \"bench\"\n"),
    );
    let mut cmd = pinned(tools, s.proxy_cpu, env!("CARGO_BIN_EXE_reveille"));
    cmd.arg("serve")
        .arg("--routes")
        .arg(&routes)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--threads", "1", "--access-log", "false", "--log-level", "warn"]);
    lab.start("reveille", cmd, &[(admin, "/readyz"), (port, "/")])
}

fn start_nginx(lab: &mut Lab, tools: &Tools, s: &Settings, backend: u16, port: u16) -> Proxy {
    let prefix = lab.path("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let p = prefix.display();
    // keepalive_requests: nginx closes a keep-alive connection after 1000 requests by default; reveille and
    // haproxy do not, so lift the limit on both sides to compare like with like.
    let conf = format!(
        "worker_processes 1;
daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    upstream bench {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let conf_path = lab.write("nginx/nginx.conf", &conf);
    let mut cmd = pinned(tools, s.proxy_cpu, &tools.nginx);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf_path).arg("-e").arg(prefix.join("error.log"));
    let mut proxy = lab.start("nginx", cmd, &[(port, "/")]);
    proxy.log = prefix.join("error.log");
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
    let mut cmd = pinned(tools, s.proxy_cpu, &tools.haproxy);
    cmd.arg("-db").arg("-f").arg(&conf_path);
    lab.start("haproxy", cmd, &[(port, "/")])
}

/// The status code of `GET path` on 127.0.0.1:port, or `None` if there is no answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12]; // "HTTP/1.1 200"
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------
// Measuring

/// One wrk run through one proxy.
#[derive(Default)]
struct Run {
    requests_per_sec: f64,
    p99_us: f64,
    /// CPU time the proxy used, as a share of one CPU over the run.
    proxy_cpu_pct: f64,
    /// How busy the proxy's CPU and the client's CPU were over the run, all processes included (this shows
    /// when something else on the machine competed for them).
    cpu_busy_pct: (f64, f64),
    /// The proxy's resident memory after the run, in KiB.
    proxy_rss_kib: Option<u64>,
    errors: Errors,
}

/// What wrk counts as errors.
#[derive(Default, Clone, Copy)]
struct Errors {
    /// "Non-2xx or 3xx responses".
    non_2xx_3xx: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.non_2xx_3xx + self.connect + self.read + self.write + self.timeout
    }

    fn add(&mut self, o: &Errors) {
        self.non_2xx_3xx += o.non_2xx_3xx;
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.total())?;
        let parts: Vec<_> = [
            ("non-2xx/3xx", self.non_2xx_3xx),
            ("connect", self.connect),
            ("read", self.read),
            ("write", self.write),
            ("timeout", self.timeout),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Warm-up for each proxy, then `rounds` interleaved measured runs.
fn measure(tools: &Tools, s: &Settings, proxies: &mut [Proxy]) {
    let ticks_per_sec = clock_ticks_per_sec();
    println!("{}", s.describe());
    for p in proxies.iter() {
        let run = run_wrk(tools, s, p, s.warmup, ticks_per_sec);
        println!("warm-up   {:<9} {}", p.name, summary(&run));
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
        "{:>9.0} req/s  p99 {:>9}  proxy process {:>3.0}% CPU, {:>6} MiB  CPUs busy {:>3.0}% / {:>3.0}%  errors {}",
        run.requests_per_sec,
        format_us(run.p99_us),
        run.proxy_cpu_pct,
        run.proxy_rss_kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        run.cpu_busy_pct.0,
        run.cpu_busy_pct.1,
        run.errors
    )
}

fn run_wrk(tools: &Tools, s: &Settings, proxy: &Proxy, seconds: u64, ticks_per_sec: f64) -> Run {
    let mut cmd = pinned(tools, s.client_cpu, &tools.wrk);
    cmd.args([
        "-t1",
        &format!("-c{}", s.connections),
        &format!("-d{seconds}s"),
        "--latency",
        "-H",
        &format!("Host: {HOST}"),
        &format!("http://127.0.0.1:{}/", proxy.port),
    ]);
    let ticks_before = cpu_ticks(proxy.pid);
    let cpus_before = (cpu_times(s.proxy_cpu), cpu_times(s.client_cpu));
    let started = Instant::now();
    let out = cmd.output().expect("run wrk");
    let wall = started.elapsed().as_secs_f64();
    let ticks_after = cpu_ticks(proxy.pid);
    let cpus_after = (cpu_times(s.proxy_cpu), cpu_times(s.client_cpu));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut run = parse_wrk(&stdout).unwrap_or_else(|| {
        panic!(
            "cannot read wrk's output for {} ({}):\n{stdout}\n{}",
            proxy.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let (Some(a), Some(b)) = (ticks_before, ticks_after) {
        run.proxy_cpu_pct = (b - a) as f64 / ticks_per_sec / wall * 100.0;
    }
    run.proxy_rss_kib = status_kib(&proc_status(proxy.pid), "VmRSS:");
    run.cpu_busy_pct = (busy_pct(cpus_before.0, cpus_after.0), busy_pct(cpus_before.1, cpus_after.1));
    run
}

/// Reads "Requests/sec:", the "99%" line of `--latency`, "Socket errors:" and "Non-2xx or 3xx responses:".
fn parse_wrk(out: &str) -> Option<Run> {
    let mut run = Run::default();
    let (mut rps, mut p99) = (None, None);
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors.non_2xx_3xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().ok()?;
                match kind {
                    "connect" => run.errors.connect = n,
                    "read" => run.errors.read = n,
                    "write" => run.errors.write = n,
                    "timeout" => run.errors.timeout = n,
                    _ => {}
                }
            }
        }
    }
    run.requests_per_sec = rps?;
    run.p99_us = p99?;
    Some(run)
}

/// wrk's durations: "635.00us", "2.51ms", "1.02s", "1.50m", "1.00h".
fn parse_duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = s[..split].parse().ok()?;
    let scale = match &s[split..] {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(value * scale)
}

/// `(busy, total)` clock ticks of one CPU since boot, from `/proc/stat` (idle and iowait count as not busy).
fn cpu_times(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0)).collect();
    let total: u64 = ticks.iter().take(8).sum(); // user nice system idle iowait irq softirq steal
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => f64::NAN,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// The markdown report: machine, settings, the results table and the per-round numbers.
fn report(machine: &Machine, s: &Settings, proxies: &[Proxy]) -> String {
    let medians: Vec<(f64, f64, f64)> = proxies
        .iter()
        .map(|p| {
            let med = |f: fn(&Run) -> f64| median(&p.runs.iter().map(f).collect::<Vec<_>>());
            (med(|r| r.requests_per_sec), med(|r| r.p99_us), med(|r| r.proxy_cpu_pct))
        })
        .collect();
    let nginx = proxies.iter().position(|p| p.name == "nginx").map(|i| medians[i]);
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", x / b),
        _ => "n/a".to_string(),
    };

    let mut md = String::new();
    let _ = writeln!(md, "### Load benchmark, {}", machine.date);
    let _ = writeln!(md);
    let _ = writeln!(md, "- CPU: {} × {}", machine.nproc, machine.cpu);
    let versions: Vec<_> = machine.versions.iter().map(|(_, v)| v.as_str()).collect();
    let _ = writeln!(md, "- versions: {}", versions.join("; "));
    let _ = writeln!(md, "- {}", s.describe());
    let _ = writeln!(md, "- backend: in-process hyper HTTP/1.1 server, 100-byte 200 response");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| proxy | req/s (median) | p99 latency (median) | req/s vs nginx | p99 vs nginx | proxy CPU | errors (all rounds) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for (p, &(rps, p99, cpu)) in proxies.iter().zip(&medians) {
        let mut errors = Errors::default();
        p.runs.iter().for_each(|r| errors.add(&r.errors));
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
            p.runs.iter().map(|r| format!("{:.0} / {}", r.requests_per_sec, format_us(r.p99_us))).collect();
        let _ = writeln!(md, "- {}: {}", p.name, rounds.join(", "));
    }
    md
}

/// Shows what each proxy logged (reveille at `warn`, nginx's error log at `warn`, haproxy's stderr).
fn print_proxy_logs(proxies: &[Proxy]) {
    for p in proxies {
        print_log(&format!("{} log", p.name), &read_log(&p.log));
    }
}
