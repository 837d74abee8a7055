//! etcd route source benchmark: how fast a change written to etcd reaches the proxy, and what loading 100,000
//! routes from etcd costs.
//!
//! Run with `cargo run --release -p reveille-lab -- etcd`. Needs `/usr/bin/etcd` (Debian's etcd-server); without it, it says so and
//! exits 0. Only 127.0.0.1 is used. Nothing is pinned: the proxy, etcd and this process share the machine's CPUs.
//!
//! Setup: one etcd on free loopback ports with a temporary data dir, for the whole run; two in-process backends
//! (hyper HTTP/1.1, each on its own thread), services `bench` (answers `bench backend 1`) and `bench2` (answers
//! `bench backend 2`); routes `r<j>.bench.test` → `bench`. reveille is started as
//! `reveille serve --etcd URL --http .. --admin .. --access-log false --log-level warn` (default threads).
//!
//! The phases, in this order, on the same etcd (routes are only added between phases, so the 100k preload is
//! done once):
//!
//! 1. Initial load with no route in etcd (the two services only), `ETCD_BENCH_LOADS` times: spawn → `/readyz`
//!    200 (polled every 5 ms), then `VmRSS` / `VmHWM` from `/proc/<pid>/status`. This is the memory baseline.
//! 2. 10 routes: a fresh reveille, then the propagation measurements (below).
//! 3. Preload up to `ETCD_BENCH_ROUTES` (100,000) routes: txns of 128 puts, 8 in flight.
//! 4. Initial load of 100,000 routes, `ETCD_BENCH_LOADS` times, as in 1. The last instance stays up for 5.
//! 5. 100,000 routes: the propagation measurements.
//!
//! Propagation: `ETCD_BENCH_CHANGES` (300) changes, after 5 uncounted warm-up changes, one at a time
//! (`ETCD_BENCH_INTERVAL_MS`, 20 ms, apart):
//!
//! - new route: `put /reveille/routes/p<i>.bench.test {"service":"bench"}`. `t0` is taken right after the put's
//!   future returns (etcd has committed it). Then `GET /` with `Host: p<i>.bench.test` is sent in a tight loop
//!   (`ETCD_BENCH_POLL_GAP_US` to pause between polls, 0) on one kept-alive HTTP/1.1 connection until a response
//!   is 200 from backend 1 (before, it is 404); `t1` is when that response has been read. Propagation = t1 - t0.
//!   Before each put one request checks that the route still answers 404.
//! - update: `r0.bench.test` flips between `bench` and `bench2`; the switch is seen by the response body.
//!
//! The poll loop's own round trip bounds the resolution, so the report also gives the round trip of a 404 poll
//! (unknown host) and of a proxied 200, measured on the same connection before the changes. The routes added by
//! a phase are deleted after it.
//!
//! The report goes to stdout and to `target/etcd-bench.md`. Environment: `ETCD_BENCH_CHANGES` (300),
//! `ETCD_BENCH_ROUTES` (100000), `ETCD_BENCH_LOADS` (3), `ETCD_BENCH_READY_TIMEOUT` (60, seconds),
//! `ETCD_BENCH_INTERVAL_MS` (20), `ETCD_BENCH_POLL_GAP_US` (0).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use testkit::backend::start_backend;
use testkit::env::{env_at_least, env_or};
use testkit::etcd::{Etcd, ETCD};
use testkit::http::{block_on, fetch, KeepAlive};
use testkit::machine::{cpu_model, first_line, git_revision, load_average, nproc, utc_date};
use testkit::ports::free_ports;
use testkit::process::{read_log, tail, KillOnDrop};
use testkit::procfs::{cpu_secs, proc_status, status_kib};
use testkit::report::{heading, print_log, write_report, Table};
use testkit::stats::{format_us, median, percentile};
use tokio::runtime::Runtime;

const PREFIX: &str = "/reveille/";
const BODY_1: &[u8] = b"bench backend 1\n";
const BODY_2: &[u8] = b"bench backend 2\n";
/// etcd 3.4's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// Preload txns in flight at once.
const PRELOAD_CONCURRENCY: usize = 8;
/// Changes made before the measured ones, not counted.
const WARMUP_CHANGES: usize = 5;
/// Round trips measured for the 404 and 200 baselines.
const RTT_SAMPLES: usize = 1000;
/// How long one change may take to show up before it counts as a timeout.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
const SMALL: usize = 10;

/// Runs the lab; false if a measurement failed. Returns only after every child is killed and the temp dir
/// removed.
pub(crate) fn main() -> bool {
    if !Path::new(ETCD).exists() {
        println!("etcd: skipped, {ETCD} not found (install Debian's etcd-server)");
        return true;
    }
    run()
}

// ---------------------------------------------------------------------------------------------------------
// Settings and machine

struct Settings {
    changes: usize,
    routes: usize,
    loads: usize,
    ready_timeout: Duration,
    interval: Duration,
    poll_gap: Duration,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            changes: env_at_least("ETCD_BENCH_CHANGES", 300, 1),
            ready_timeout: Duration::from_secs(env_or("ETCD_BENCH_READY_TIMEOUT", 60)),
            // More than the small table's routes.
            routes: env_at_least("ETCD_BENCH_ROUTES", 100_000, SMALL + 1),
            interval: Duration::from_millis(env_or("ETCD_BENCH_INTERVAL_MS", 20)),
            loads: env_at_least("ETCD_BENCH_LOADS", 3, 1),
            poll_gap: Duration::from_micros(env_or("ETCD_BENCH_POLL_GAP_US", 0)),
        }
    }
}

struct Machine {
    date: String,
    nproc: String,
    cpu: String,
    etcd: String,
    reveille: String,
    /// The commit benchmarked, with `(modified)` when `src/` differs from it.
    revision: String,
    load_start: String,
}

impl Machine {
    fn describe() -> Self {
        Self {
            date: utc_date(),
            nproc: nproc(),
            cpu: cpu_model(),
            // "etcd Version: 3.4.23"
            etcd: first_line(Command::new(ETCD).arg("--version")).replace("Version: ", ""),
            reveille: first_line(Command::new(crate::reveille_bin()).arg("--version")),
            revision: git_revision(),
            load_start: load_average(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Processes

/// A child process, killed and reaped when dropped (also while unwinding from a panic), and its log.
struct Proc {
    child: KillOnDrop,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The run's temp dir and etcd. Field order is drop order: etcd before the directory reveille logs into.
struct Lab {
    etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Starts etcd on free loopback ports with a data dir under a new temp dir, and waits until it answers.
    fn start(rt: &Runtime) -> Lab {
        let etcd = rt.block_on(Etcd::start());
        let dir = tempfile::Builder::new().prefix("reveille-etcd-bench-").tempdir().expect("create a temp dir");
        Lab { etcd, dir }
    }

    fn etcd_log(&self) -> String {
        self.etcd.log()
    }
}

/// A running reveille and its ports.
struct Reveille {
    proc: Proc,
    http: u16,
}

/// One start of reveille, from spawn to ready.
#[derive(Clone)]
struct Load {
    ready: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    /// User + system CPU time used up to ready.
    cpu_secs: f64,
    /// `reveille_routes` right after ready.
    routes: Option<f64>,
}

/// Spawns reveille on etcd and waits for `/readyz` 200, polling every 5 ms. Memory and CPU time are read right
/// after. On failure, the process is killed and the error carries its log.
fn start_reveille(lab: &Lab, tag: &str, timeout: Duration) -> Result<(Reveille, Load), String> {
    let [http, admin] = free_ports();
    let log = lab.dir.path().join(format!("reveille-{tag}.log"));
    let file = File::create(&log).expect("create a log file");
    let mut cmd = Command::new(crate::reveille_bin());
    cmd.arg("serve")
        .args(["--etcd", &lab.etcd.url])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--access-log", "false", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let spawned = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start reveille: {e}"))?;
    let mut proc = Proc { child: KillOnDrop(child), log };
    let deadline = spawned + timeout;
    loop {
        if matches!(http_once(admin, "/readyz"), Some((200, _))) {
            break;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("reveille exited ({status}) before it was ready; its log:\n{}", read_log(&proc.log)));
        }
        // etcd errors are retried forever with backoff: an etcd that was never reached (said once, the retries at
        // debug), or five interruptions before the first load, will not go away.
        let log = read_log(&proc.log);
        if log.contains("cannot be reached") || log.matches("interrupted; keeping what is in force").count() >= 5 {
            return Err(format!(
                "reveille not ready after {:.1}s: the etcd load failed; {}\nits log:\n{}",
                spawned.elapsed().as_secs_f64(),
                log_error(&log),
                tail(&log, 20)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "reveille not ready after {}s; {}\nits log:\n{}",
                timeout.as_secs(),
                log_error(&log),
                tail(&log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = spawned.elapsed();
    let pid = proc.pid();
    let status = proc_status(pid);
    let load = Load {
        ready,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        cpu_secs: cpu_secs(pid).unwrap_or(f64::NAN),
        routes: metric(admin, "reveille_routes"),
    };
    Ok((Reveille { proc, http }, load))
}

/// The `error=` field of the last warning or error in a log, cut to its message.
fn log_error(log: &str) -> String {
    let Some(line) = log.lines().rev().find(|l| l.contains(" WARN ") || l.contains(" ERROR ")) else {
        return "no warning logged".into();
    };
    let error = line.split_once("error=").map_or(line, |(_, e)| e);
    let error = error.split(", details:").next().unwrap_or(error);
    let error = error.split(" retry_in=").next().unwrap_or(error);
    format!("last error: {}", error.trim())
}

/// A gauge from reveille's `/metrics`.
fn metric(admin: u16, name: &str) -> Option<f64> {
    let (status, body) = http_once(admin, "/metrics")?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(name)).then(|| words.next()?.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------------------------------------
// HTTP from this (blocking) thread

/// One request on a new connection (`Connection: close`); `None` if there is no answer (not listening yet).
fn http_once(port: u16, path: &str) -> Option<(u16, Bytes)> {
    fetch(port, "GET", "127.0.0.1", path, Duration::from_secs(5))
}

/// The poll connection: one kept-alive HTTP/1.1 connection, one request at a time, from this thread.
struct HttpConn(KeepAlive);

impl HttpConn {
    fn new(port: u16) -> Self {
        Self(KeepAlive::new(port, Duration::from_secs(5)))
    }

    /// `GET path` with this `Host`: `(status, body)`. If the kept-alive connection turns out closed, connects
    /// again once and retries.
    fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), String> {
        block_on(self.0.get(host, path)).map_err(|e| e.to_string())
    }

    fn reconnects(&self) -> usize {
        self.0.reconnects
    }
}

// ---------------------------------------------------------------------------------------------------------
// etcd writes

fn route_key(host: &str) -> String {
    format!("{PREFIX}routes/{host}")
}

fn route_value(service: &str) -> String {
    format!("{{\"service\":\"{service}\"}}")
}

fn preloaded_host(j: usize) -> String {
    format!("r{j}.bench.test")
}

/// Puts routes `r<from>..r<to>` → `bench`, in txns of up to 128 puts, 8 txns in flight.
async fn preload(client: &Client, from: usize, to: usize) -> Result<(), etcd_client::Error> {
    let mut batches = (from..to).step_by(TXN_OPS).map(|s| s..(s + TXN_OPS).min(to));
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<_>, batch: std::ops::Range<usize>| {
        let mut client = client.clone();
        tasks.spawn(async move {
            let ops: Vec<TxnOp> =
                batch.map(|j| TxnOp::put(route_key(&preloaded_host(j)), route_value("bench"), None)).collect();
            client.txn(Txn::new().and_then(ops)).await.map(|_| ())
        });
    };
    for batch in batches.by_ref().take(PRELOAD_CONCURRENCY) {
        spawn(&mut tasks, batch);
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("preload task panicked")?;
        if let Some(batch) = batches.next() {
            spawn(&mut tasks, batch);
        }
    }
    Ok(())
}

/// How many routes etcd holds.
async fn count_routes(client: &mut Client) -> Result<i64, etcd_client::Error> {
    let resp = client.get(format!("{PREFIX}routes/"), Some(GetOptions::new().with_prefix().with_count_only())).await?;
    Ok(resp.count())
}

// ---------------------------------------------------------------------------------------------------------
// Propagation

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    /// A new route `p<i>.bench.test` → `bench`: 404 before, backend 1's 200 after.
    NewRoute,
    /// `r0.bench.test` flips between `bench` and `bench2`: the body tells which.
    Update,
}

impl ChangeKind {
    fn describe(self) -> &'static str {
        match self {
            ChangeKind::NewRoute => "new route (404 → 200)",
            ChangeKind::Update => "update route (bench ⇄ bench2)",
        }
    }
}

/// What one series of changes measured (warm-up excluded).
#[derive(Default, Clone)]
struct Propagation {
    /// Put returned → switched response read, µs.
    samples_us: Vec<f64>,
    /// Requests sent per change until the switch was seen (the last one included).
    polls: Vec<f64>,
    /// Duration of the put itself, µs.
    put_us: Vec<f64>,
    /// Put started → switched response read, µs (the put's own commit included).
    end_to_end_us: Vec<f64>,
    timeouts: usize,
    /// Responses that were neither the old answer nor the new one.
    unexpected: usize,
    /// Changes whose pre-check did not see the old answer.
    precheck_failed: usize,
    errors: Vec<String>,
}

/// Round trips of one request, µs.
#[derive(Default, Clone)]
struct Rtt {
    not_found_us: Vec<f64>,
    routed_us: Vec<f64>,
}

/// Everything measured with one table size.
struct Phase {
    routes: usize,
    rtt: Rtt,
    changes: Vec<(ChangeKind, Propagation)>,
    reconnects: usize,
    /// etcd's "took too long" warnings during the changes.
    etcd_slow: usize,
}

struct Bench<'a> {
    rt: &'a Runtime,
    client: Client,
    settings: &'a Settings,
}

impl Bench<'_> {
    fn put(&mut self, key: String, value: String) -> Result<(), String> {
        self.rt.block_on(self.client.put(key, value, None)).map(|_| ()).map_err(|e| e.to_string())
    }

    fn round_trips(&self, conn: &mut HttpConn) -> Result<Rtt, String> {
        let mut rtt = Rtt::default();
        for (host, expected, out) in
            [("nohost.bench.test", 404, &mut rtt.not_found_us), ("r1.bench.test", 200, &mut rtt.routed_us)]
        {
            for _ in 0..RTT_SAMPLES {
                let started = Instant::now();
                let (status, _) = conn.get(host, "/").map_err(|e| format!("GET {host}: {e}"))?;
                out.push(started.elapsed().as_secs_f64() * 1e6);
                if status != expected {
                    return Err(format!("GET {host}: {status}, expected {expected}"));
                }
            }
        }
        Ok(rtt)
    }

    fn measure_changes(&mut self, conn: &mut HttpConn, kind: ChangeKind) -> Propagation {
        let mut result = Propagation::default();
        let (changes, gap, interval) = (self.settings.changes, self.settings.poll_gap, self.settings.interval);
        for i in 0..WARMUP_CHANGES + changes {
            let counted = i >= WARMUP_CHANGES;
            let (host, service) = match kind {
                ChangeKind::NewRoute => (format!("p{i}.bench.test"), "bench"),
                ChangeKind::Update => (preloaded_host(0), if i % 2 == 0 { "bench2" } else { "bench" }),
            };
            let new_body = if service == "bench" { BODY_1 } else { BODY_2 };
            let is_new = |status: u16, body: &[u8]| status == 200 && body == new_body;
            let is_old = |status: u16, body: &[u8]| match kind {
                ChangeKind::NewRoute => status == 404,
                ChangeKind::Update => status == 200 && body != new_body && (body == BODY_1 || body == BODY_2),
            };
            std::thread::sleep(interval);
            // The route must still give the old answer; this also makes sure the connection is up.
            match conn.get(&host, "/") {
                Ok((s, b)) if is_old(s, &b) => {}
                Ok((s, _)) => {
                    result.precheck_failed += counted as usize;
                    if result.errors.len() < 5 {
                        result.errors.push(format!("{host}: before the put: {s}"));
                    }
                }
                Err(e) => result.errors.push(format!("{host}: before the put: {e}")),
            }
            let put_started = Instant::now();
            if let Err(e) = self.put(route_key(&host), route_value(service)) {
                result.errors.push(format!("put {host}: {e}"));
                continue;
            }
            let t0 = Instant::now();
            let put_us = (t0 - put_started).as_secs_f64() * 1e6;
            let mut polls = 0usize;
            let seen = loop {
                let response = conn.get(&host, "/");
                polls += 1;
                match response {
                    Ok((s, b)) if is_new(s, &b) => break Some(t0.elapsed()),
                    Ok((s, b)) if is_old(s, &b) => {}
                    Ok(_) => result.unexpected += counted as usize,
                    Err(e) => {
                        result.errors.push(format!("{host}: polling: {e}"));
                        break None;
                    }
                }
                if t0.elapsed() > CHANGE_TIMEOUT {
                    break None;
                }
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
            };
            if !counted {
                continue;
            }
            match seen {
                Some(d) => {
                    result.samples_us.push(d.as_secs_f64() * 1e6);
                    result.polls.push(polls as f64);
                    result.put_us.push(put_us);
                    result.end_to_end_us.push(put_us + d.as_secs_f64() * 1e6);
                }
                None => result.timeouts += 1,
            }
        }
        result
    }

    /// Puts the p-routes' and r0's state back to the preload's: deletes `p*` routes, sets r0 → bench.
    fn reset(&mut self) -> Result<(), String> {
        let prefix = Some(DeleteOptions::new().with_prefix());
        self.rt.block_on(self.client.delete(format!("{PREFIX}routes/p"), prefix)).map_err(|e| e.to_string())?;
        self.put(route_key(&preloaded_host(0)), route_value("bench"))
    }

    /// The propagation measurements on a running reveille with `routes` routes.
    fn phase(&mut self, reveille: &Reveille, routes: usize) -> Result<Phase, String> {
        let mut conn = HttpConn::new(reveille.http);
        match conn.get(&preloaded_host(0), "/") {
            Ok((200, b)) if b == BODY_1 => {}
            Ok((s, _)) => return Err(format!("GET {}: {s}, expected 200 from backend 1", preloaded_host(0))),
            Err(e) => return Err(format!("GET {}: {e}", preloaded_host(0))),
        }
        let rtt = self.round_trips(&mut conn)?;
        println!(
            "  {routes} routes: round trip 404 p50 {}, proxied 200 p50 {}",
            format_us(percentile(&rtt.not_found_us, 50.0)),
            format_us(percentile(&rtt.routed_us, 50.0))
        );
        let mut changes = Vec::new();
        for kind in [ChangeKind::NewRoute, ChangeKind::Update] {
            let p = self.measure_changes(&mut conn, kind);
            println!(
                "  {routes} routes, {}: n {} p50 {} p99 {} max {} timeouts {} errors {}",
                kind.describe(),
                p.samples_us.len(),
                format_us(percentile(&p.samples_us, 50.0)),
                format_us(percentile(&p.samples_us, 99.0)),
                format_us(percentile(&p.samples_us, 100.0)),
                p.timeouts,
                p.errors.len()
            );
            changes.push((kind, p));
        }
        self.reset().map_err(|e| format!("resetting the routes: {e}"))?;
        Ok(Phase { routes, rtt, changes, reconnects: conn.reconnects(), etcd_slow: 0 })
    }
}

// ---------------------------------------------------------------------------------------------------------
// The run

/// Initial loads measured with one table size.
struct Loads {
    routes: usize,
    runs: Vec<Load>,
    error: Option<String>,
}

fn run() -> bool {
    let settings = Settings::from_env();
    let machine = Machine::describe();
    // Only the etcd client runs on this runtime; the poll loop is blocking, on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let backends = (start_backend(BODY_1), start_backend(BODY_2));
    let lab = Lab::start(&rt);
    println!("etcd {} at {}; backends 127.0.0.1:{} and :{}", machine.etcd, lab.etcd.url, backends.0, backends.1);
    let client = rt.block_on(Client::connect([&lab.etcd.url], None)).expect("connect to etcd");
    let mut bench = Bench { rt: &rt, client, settings: &settings };
    let mut failures: Vec<String> = Vec::new();
    let mut phases: Vec<Phase> = Vec::new();
    let mut loads: Vec<Loads> = Vec::new();
    let mut logs: Vec<(String, String)> = Vec::new();

    for (name, port) in [("bench", backends.0), ("bench2", backends.1)] {
        let value = format!("{{\"backends\":[\"127.0.0.1:{port}\"]}}");
        bench.put(format!("{PREFIX}services/{name}"), value).expect("put a service");
    }

    // 1. Baseline: no routes.
    println!("initial load, 0 routes, {} run(s)", settings.loads);
    loads.push(initial_loads(&lab, 0, &settings, &mut logs, false).0);
    if let Some(e) = &loads[0].error {
        failures.push(format!("initial load of 0 routes: {e}"));
    }

    // 2. 10 routes.
    rt.block_on(preload(&bench.client, 0, SMALL)).expect("preload 10 routes");
    println!("propagation, {SMALL} routes, {} change(s) of each kind", settings.changes);
    match start_reveille(&lab, "10", settings.ready_timeout) {
        Ok((reveille, _)) => {
            match measure_phase(&mut bench, &lab, &reveille, SMALL) {
                Ok(p) => phases.push(p),
                Err(e) => failures.push(format!("{SMALL} routes: {e}")),
            }
            logs.push(("10 routes".into(), read_log(&reveille.proc.log)));
        }
        Err(e) => failures.push(format!("{SMALL} routes: {e}")),
    }

    // 3. Preload the big table.
    let n = settings.routes;
    let started = Instant::now();
    rt.block_on(preload(&bench.client, SMALL, n)).expect("preload routes");
    let preload_secs = started.elapsed().as_secs_f64();
    let in_etcd = rt.block_on(count_routes(&mut bench.client)).expect("count routes");
    println!("preloaded {} routes in {preload_secs:.1}s ({in_etcd} in etcd)", n - SMALL);
    assert_eq!(in_etcd as usize, n, "etcd should hold exactly {n} routes");

    // 4. Initial load of the big table; the last instance stays up.
    println!("initial load, {n} routes, {} run(s)", settings.loads);
    let (big, last) = initial_loads(&lab, n, &settings, &mut logs, true);
    if let Some(e) = &big.error {
        failures.push(format!("initial load of {n} routes: {e}"));
    }

    // 5. Propagation with the big table.
    if let Some(reveille) = last {
        println!("propagation, {n} routes, {} change(s) of each kind", settings.changes);
        match measure_phase(&mut bench, &lab, &reveille, n) {
            Ok(p) => phases.push(p),
            Err(e) => failures.push(format!("{n} routes: {e}")),
        }
        logs.push((format!("{n} routes"), read_log(&reveille.proc.log)));
    } else {
        failures.push(format!("{n} routes: propagation not measured, reveille never got ready"));
    }
    loads.push(big);

    let etcd_log = lab.etcd_log();
    let report = report(&machine, &settings, preload_secs, &loads, &phases, &failures, &etcd_log);
    println!("\n{report}");
    print_logs(&logs);
    write_report("etcd-bench.md", &report);
    drop(bench);
    drop(lab);
    failures.is_empty()
}

/// [`Bench::phase`], counting etcd's slow-request warnings meanwhile.
fn measure_phase(bench: &mut Bench, lab: &Lab, reveille: &Reveille, routes: usize) -> Result<Phase, String> {
    let slow = |lab: &Lab| lab.etcd_log().matches("took too long").count();
    let before = slow(lab);
    let mut phase = bench.phase(reveille, routes)?;
    phase.etcd_slow = slow(lab) - before;
    Ok(phase)
}

/// `settings.loads` starts of reveille on the current etcd contents. Stops at the first failure. With `keep`,
/// the last instance is returned running.
fn initial_loads(
    lab: &Lab,
    routes: usize,
    settings: &Settings,
    logs: &mut Vec<(String, String)>,
    keep: bool,
) -> (Loads, Option<Reveille>) {
    let mut result = Loads { routes, runs: Vec::new(), error: None };
    let mut last = None;
    for run in 1..=settings.loads {
        // Let the previous instance's exit and the page cache settle.
        std::thread::sleep(Duration::from_millis(500));
        match start_reveille(lab, &format!("load-{routes}-{run}"), settings.ready_timeout) {
            Ok((reveille, load)) => {
                println!(
                    "  run {run}: ready after {:.3}s, VmRSS {:.1} MiB, VmHWM {:.1} MiB, CPU {:.2}s, reveille_routes {}",
                    load.ready.as_secs_f64(),
                    load.rss_kib as f64 / 1024.0,
                    load.hwm_kib as f64 / 1024.0,
                    load.cpu_secs,
                    load.routes.map_or("?".into(), |r| r.to_string())
                );
                if load.routes != Some(routes as f64) {
                    result.error = Some(format!("run {run}: reveille_routes is {:?}, expected {routes}", load.routes));
                }
                result.runs.push(load.clone());
                if keep && run == settings.loads {
                    last = Some(reveille);
                } else {
                    logs.push((format!("initial load, {routes} routes, run {run}"), read_log(&reveille.proc.log)));
                }
            }
            Err(e) => {
                println!("  run {run}: FAILED: {e}");
                result.error = Some(format!("run {run}: {}", e.lines().next().unwrap_or("")));
                // The full message went to stdout above; the log is printed at the end.
                logs.push((format!("initial load, {routes} routes, run {run} (failed)"), e));
                break;
            }
        }
    }
    (result, last)
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// Share of changes already visible to the first request sent after the put returned.
fn first_poll_pct(polls: &[f64]) -> f64 {
    if polls.is_empty() {
        return f64::NAN;
    }
    polls.iter().filter(|&&p| p <= 1.0).count() as f64 * 100.0 / polls.len() as f64
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn report(
    machine: &Machine,
    s: &Settings,
    preload_secs: f64,
    loads: &[Loads],
    phases: &[Phase],
    failures: &[String],
    etcd_log: &str,
) -> String {
    let mut md = heading("etcd route source benchmark", &machine.date);
    let _ = writeln!(
        md,
        "- CPU: {} × {} (shared VM, nothing pinned); load average (1 min) at start {}, at end {}",
        machine.nproc,
        machine.cpu,
        machine.load_start,
        load_average()
    );
    let _ = writeln!(md, "- {} at commit {}; {}", machine.reveille, machine.revision, machine.etcd);
    let _ = writeln!(
        md,
        "- one etcd (single member, temp data dir) for the whole run; routes preloaded with txns of {TXN_OPS} puts, \
         {PRELOAD_CONCURRENCY} in flight: {} routes in {preload_secs:.1} s",
        s.routes - SMALL
    );
    let _ = writeln!(
        md,
        "- reveille: `serve --etcd .. --access-log false --log-level warn`, default threads; backends: in-process \
         hyper HTTP/1.1"
    );
    let gap =
        if s.poll_gap.is_zero() { "no pause".to_string() } else { format!("{} µs pause", s.poll_gap.as_micros()) };
    let _ = writeln!(
        md,
        "- propagation: {} changes per row (after {WARMUP_CHANGES} uncounted), {} ms apart; t0 = etcd put returned, \
         t1 = first switched response read; polling on one keep-alive HTTP/1.1 connection, {gap} between polls",
        s.changes,
        s.interval.as_millis()
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "Propagation (etcd put returned → first request served by the new route):");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "\"routes loaded\" is the table at the start; the new routes of a row stay until the end of the phase \
         (+{} at most). When a change is seen on the first poll, the number is one proxied round trip: an upper \
         bound, not a resolved latency.",
        WARMUP_CHANGES + s.changes
    );
    let _ = writeln!(md);
    let mut table = Table::new(
        "routes loaded | change | n | p50 | p90 | p99 | max | timeouts | poll RTT 404 p50 / p99 | \
         proxied 200 RTT p50 | polls per change p50 | seen on 1st poll | put p50 | \
         put start → served p50 / p99",
        "rlrrrrrrrrrrrr",
    );
    for phase in phases {
        for (kind, p) in &phase.changes {
            table.row([
                phase.routes.to_string(),
                kind.describe().to_string(),
                p.samples_us.len().to_string(),
                format_us(percentile(&p.samples_us, 50.0)),
                format_us(percentile(&p.samples_us, 90.0)),
                format_us(percentile(&p.samples_us, 99.0)),
                format_us(percentile(&p.samples_us, 100.0)),
                p.timeouts.to_string(),
                format!(
                    "{} / {}",
                    format_us(percentile(&phase.rtt.not_found_us, 50.0)),
                    format_us(percentile(&phase.rtt.not_found_us, 99.0))
                ),
                format_us(percentile(&phase.rtt.routed_us, 50.0)),
                format!("{:.0}", percentile(&p.polls, 50.0)),
                format!("{:.0}%", first_poll_pct(&p.polls)),
                format_us(percentile(&p.put_us, 50.0)),
                format!(
                    "{} / {}",
                    format_us(percentile(&p.end_to_end_us, 50.0)),
                    format_us(percentile(&p.end_to_end_us, 99.0))
                ),
            ]);
        }
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    let _ = writeln!(md, "Initial load (spawn → `/readyz` 200, polled every 5 ms; memory right after ready):");
    let _ = writeln!(md);
    let mut table = Table::new(
        "routes in etcd | runs | ready after (median) | all runs | VmRSS (median) | VmHWM (median) | \
         CPU to ready (median) | reveille_routes",
        "rrrlrrrr",
    );
    for l in loads {
        let ready: Vec<f64> = l.runs.iter().map(|r| r.ready.as_secs_f64()).collect();
        let rss: Vec<f64> = l.runs.iter().map(|r| r.rss_kib as f64).collect();
        let hwm: Vec<f64> = l.runs.iter().map(|r| r.hwm_kib as f64).collect();
        let cpu: Vec<f64> = l.runs.iter().map(|r| r.cpu_secs).collect();
        let mut all = ready.iter().map(|r| format!("{r:.3} s")).collect::<Vec<_>>().join(", ");
        if let Some(e) = &l.error {
            let _ = write!(all, "{}FAILED: {e}", if all.is_empty() { "" } else { "; " });
        }
        let routes = l.runs.last().and_then(|r| r.routes).map_or("—".into(), |r| r.to_string());
        if l.runs.is_empty() {
            table.row([l.routes.to_string(), "0".into(), "—".into(), all, "—".into(), "—".into(), "—".into(), routes]);
            continue;
        }
        table.row([
            l.routes.to_string(),
            l.runs.len().to_string(),
            format!("{:.3} s", median(&ready)),
            all,
            mib(median(&rss)),
            mib(median(&hwm)),
            format!("{:.2} s", median(&cpu)),
            routes,
        ]);
    }
    md.push_str(&table.to_string());
    if let [base, big] = loads {
        if !base.runs.is_empty() && !big.runs.is_empty() {
            let per_route = |f: fn(&Load) -> u64| {
                let b = median(&base.runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>());
                let g = median(&big.runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>());
                (g - b) * 1024.0 / big.routes as f64
            };
            let _ = writeln!(md);
            let _ = writeln!(
                md,
                "Per route (medians, {} routes minus 0): {:.0} bytes of VmRSS, {:.0} bytes of VmHWM.",
                big.routes,
                per_route(|r| r.rss_kib),
                per_route(|r| r.hwm_kib)
            );
        }
    }
    let _ = writeln!(md);
    for phase in phases {
        let p99 = phase
            .changes
            .iter()
            .map(|(k, p)| format!("{} p99 {}", k.describe(), format_us(percentile(&p.samples_us, 99.0))))
            .collect::<Vec<_>>()
            .join(", ");
        let met = phase
            .changes
            .iter()
            .all(|(_, p)| p.timeouts == 0 && !p.samples_us.is_empty() && percentile(&p.samples_us, 99.0) <= 10_000.0);
        let _ = writeln!(
            md,
            "- goal p99 ≤ 10 ms with {} routes: **{}** ({p99})",
            phase.routes,
            if met { "met" } else { "not met" }
        );
    }
    for phase in phases {
        for (kind, p) in &phase.changes {
            if p.unexpected + p.precheck_failed + p.errors.len() > 0 {
                let _ = writeln!(
                    md,
                    "- {} routes, {}: {} unexpected responses, {} failed pre-checks, errors: {}",
                    phase.routes,
                    kind.describe(),
                    p.unexpected,
                    p.precheck_failed,
                    p.errors.join("; ")
                );
            }
        }
        if phase.etcd_slow > 0 {
            let _ = writeln!(
                md,
                "- {} routes: etcd logged {} \"took too long\" warning(s) during the changes",
                phase.routes, phase.etcd_slow
            );
        }
        if phase.reconnects > 0 {
            let _ = writeln!(
                md,
                "- {} routes: the poll connection was re-opened {} time(s)",
                phase.routes, phase.reconnects
            );
        }
    }
    let slow = etcd_log.lines().filter(|l| l.contains("took too long")).count();
    for line in etcd_log.lines().filter(|l| l.contains("took too long")).take(3) {
        println!("etcd: {line}");
    }
    let _ = writeln!(md, "- etcd log, whole run: {slow} \"took too long\" warning(s)");
    for f in failures {
        let _ = writeln!(md, "- FAILURE: {}", f.lines().next().unwrap_or(""));
    }
    md
}

/// What reveille logged (at `warn`), per instance.
fn print_logs(logs: &[(String, String)]) {
    for (name, log) in logs {
        print_log(&format!("reveille log ({name})"), log);
    }
}
