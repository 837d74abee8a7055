//! Attack lab: what hostile clients and a stalling backend do to a bystander's requests through reveille, with
//! the slow-client and stalled-backend protections off (reveille's old behaviour) and on.
//!
//! Run with `cargo run --release -p reveille-lab -- attack`. Needs `taskset`; without it, it says so and exits
//! 0. Only 127.0.0.1 is used.
//!
//! # Method
//!
//! reveille runs on CPU `ATTACK_PROXY_CPU` (0, `taskset`, `--threads 1`), with `--max-connections
//! ATTACK_MAX_CONNECTIONS` (500), no access log, its soft `RLIMIT_NOFILE` raised to 65536 (or the hard limit).
//! Everything else is this process, pinned to CPU `ATTACK_CLIENT_CPU` (1): the attackers (one tokio task
//! each), the bystanders, and the backends. Three tenants: `app.attack.test`, a fast backend (testkit's
//! hyper server on its own thread, `TCP_NODELAY`, 200 with a 3-byte body); `stall.attack.test`, a backend that
//! answers with `Content-Length: 100000`, sends 10 bytes of the body and then holds the connection without a
//! word; `workers.attack.test`, a backend with exactly 2 workers that each serve one connection at a time, one
//! request each, `Connection: close` (like sync gunicorn), reading the whole body before answering. The last
//! two listen with a backlog of 2048 (gunicorn's default). The fast backend reads a request's body before it
//! answers, as an application does (one that answered a `POST` at once would end the stalled uploads of
//! attack 1 itself).
//!
//! Each attack runs twice, each time against a new reveille (and new stalling and two-worker backends):
//! - **OFF**: `--body-timeout 1000h --min-body-rate 0 --request-buffer-size 0 --upstream-read-timeout 1000h
//!   --send-timeout 1000h --overload-timeout 0`, i.e. reveille before these protections;
//! - **ON**: the defaults, except `--body-timeout` and `--upstream-read-timeout`, whose 60 s defaults would not
//!   fire within the run: both are `ATTACK_TIMEOUT` (5 s). `--min-body-rate` (240 B/s after 5 s),
//!   `--request-buffer-size` (65536) and `--overload-timeout` (2 s, once fewer than a tenth of the slots are
//!   free) keep their defaults, as does `--send-timeout` (60 s, which no attack here exercises).
//!
//! A run: reveille is started and ready (`/readyz` and a `GET /` on the healthy tenant answer 200). **Baseline**:
//! the bystander alone for `ATTACK_BASELINE` (5) seconds. Then the attackers start, all at once; they are in
//! place when reveille's `reveille_open_connections` reaches min(attackers, max connections) (at most 10 s;
//! the time it took is reported). **Attack**: the bystander again, with the attackers, for `ATTACK_SECONDS` (12)
//! seconds. Then the attackers are dropped (their connections closed) and reveille is killed.
//!
//! The bystander: `ATTACK_BYSTANDERS` (4) clients, each starting a `GET /` with `Connection: close` on a NEW
//! connection (testkit's hyper client) every `ATTACK_INTERVAL_MS` (50) ms, whether or not its previous requests
//! have ended (open loop: the requests sample the phase evenly in time, and a stuck request does not slow the
//! sampling down). A new connection each time because a kept-alive connection already holds its slot and is
//! not blocked by `--max-connections`. Each request has 2 s, connecting included. A phase counts the requests
//! started in it, and waits for them to end (at most 2 s more).
//!
//! The attacks (every attacker reconnects as soon as its connection is closed, so the attack is steady):
//! 1. **Stalled uploads**: `ATTACK_STALLED_UPLOADS` (600) attackers each send `POST /` to the healthy tenant
//!    with `Content-Length: 100000` and one body byte, then nothing. The bystander uses the healthy tenant.
//! 2. **Backend stalling mid-body**: `ATTACK_STALLED_DOWNLOADS` (600) attackers each send `GET /` to the
//!    stalling tenant and read what comes. The bystander uses the healthy tenant.
//! 3. **Slow uploads against a 2-worker backend**: `ATTACK_SLOW_UPLOADS` (1000) attackers each send `POST /` to
//!    the two-worker tenant with `Content-Length: 1000` and one body byte, then one more byte every
//!    `ATTACK_TRICKLE` (2) seconds. The bystander uses the SAME tenant.
//!
//! # What the numbers mean
//!
//! Per attack, a table with a row per phase and protection:
//! - *bystander requests*: requests the bystander started in the phase;
//! - *success*: the share of them that got a 200 within 2 s;
//! - *p50*, *p99*: latency (request sent on a new connection → whole response read) of the successful
//!   requests only (nearest rank), "n/a" when none succeeded;
//! - *failures*: the others, as `timeout` (no whole answer in 2 s), `error` (connection refused, reset or
//!   closed early) or their status;
//! - *reveille conns*: the median of reveille's `reveille_open_connections` gauge, read every 500 ms during
//!   the phase (the attackers' connections and the bystander's being served; those waiting in the listen
//!   backlog are not counted).
//!
//! Under each table, per protection, what the attackers saw: the connections they opened, and how those that
//! ended ended (the status of the answer, or "no answer"; for the stalling backend, a 200 that ended means a
//! response cut mid-body, since that backend never finishes one), and how long they took to be in place; and
//! reveille's `reveille_upstream_errors_total` by kind over the run.
//!
//! Memory per held connection (attacks 1 and 3): reveille's `VmRSS` (testkit procfs), median of the samples
//! taken with the gauge, with the bystander alone (baseline) and with the attackers (attack); connections held
//! = median gauge during the attack − median gauge during the baseline; KiB per held connection = the RSS
//! difference ÷ connections held. RSS includes what the allocator keeps, so this is an estimate, not an exact
//! per-connection size.
//!
//! The report goes to stdout and to `target/attack-bench.md`. Environment: `ATTACK_BASELINE` (5),
//! `ATTACK_SECONDS` (12), `ATTACK_TIMEOUT` (5, seconds), `ATTACK_MAX_CONNECTIONS` (500), `ATTACK_BYSTANDERS`
//! (4), `ATTACK_INTERVAL_MS` (50), `ATTACK_STALLED_UPLOADS` (600), `ATTACK_STALLED_DOWNLOADS` (600),
//! `ATTACK_SLOW_UPLOADS` (1000), `ATTACK_TRICKLE` (2, seconds), `ATTACK_ATTACKS`
//! (`stalled-uploads,stalling-backend,slow-uploads`), `ATTACK_PROXY_CPU` (0), `ATTACK_CLIENT_CPU` (1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::backend::{serve_few_workers, serve_stalling, start_backend};
use testkit::env::{choose, env_at_least, env_or};
use testkit::machine::{cpu_model, git_revision, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::process::read_log;
use testkit::procfs::{nofile_limit, proc_status, status_kib};
use testkit::prometheus::sample;
use testkit::report::{heading, print_log, write_report};
use testkit::stats::{counts, format_us, median, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::onecore::{self, pin_all_threads, Lab};

const HEALTHY: &str = "app.attack.test";
const STALL: &str = "stall.attack.test";
const WORKERS: &str = "workers.attack.test";
/// The healthy backend's answer.
const BODY: &[u8] = b"ok\n";
/// Time a bystander request has, connecting included.
const BYSTANDER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often reveille's gauge and RSS are read during a phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for the attackers to be in place.
const PLACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers of the two-worker backend.
const WORKER_COUNT: usize = 2;
/// The listen backlog of the stalling and two-worker backends: gunicorn's default, room for every connection
/// reveille may open to them (std's and tokio's 128 would make reveille's connects time out).
const BACKEND_BACKLOG: u32 = 2048;
/// Bytes the stalling backend sends of its 100,000-byte body.
const STALL_SENT: usize = 10;
/// reveille before the protections.
const OFF_FLAGS: [&str; 12] = [
    "--body-timeout",
    "1000h",
    "--min-body-rate",
    "0",
    "--request-buffer-size",
    "0",
    "--upstream-read-timeout",
    "1000h",
    "--send-timeout",
    "1000h",
    "--overload-timeout",
    "0",
];
/// The `kind` labels of `reveille_upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: [&str; 6] =
    ["connect_refused", "connect_timeout", "connect_other", "response_timeout", "protocol", "body_timeout"];
const ATTACK_NAMES: [&str; 3] = ["stalled-uploads", "stalling-backend", "slow-uploads"];

/// Runs the lab; false if a measurement failed.
pub(crate) fn main() -> bool {
    let Some([taskset]) = onecore::find_tools("attack", ["taskset"]) else {
        return true;
    };
    let s = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let reveille = version(Command::new(crate::reveille_bin()).arg("--version"));
    let machine = format!("{} × {}; {reveille} ({})", nproc(), cpu_model(), git_revision());
    let date = utc_date();
    if !pin_all_threads("attack", &taskset, s.client_cpu) {
        return true;
    }
    let healthy = start_backend(BODY);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("{}", describe(&s));
    let mut runs = Vec::new();
    for &attack in &s.attacks {
        for protection in [Protection::Off, Protection::On] {
            let run = run(&rt, &taskset, &s, healthy, attack, protection);
            println!("{}", run.summary());
            runs.push(run);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let report = report(&date, &machine, &s, &runs);
    println!("\n{report}");
    for r in &runs {
        print_log(&format!("reveille log ({}, {})", r.attack.name(), r.protection.name()), &r.log);
    }
    write_report("attack-bench.md", &report);
    true
}

// ---------------------------------------------------------------------------------------------------------
// Settings, machine, attacks

struct Settings {
    baseline: Duration,
    attack: Duration,
    /// `--body-timeout` and `--upstream-read-timeout` of the ON runs.
    timeout: Duration,
    max_connections: usize,
    bystanders: usize,
    interval: Duration,
    stalled_uploads: usize,
    stalled_downloads: usize,
    slow_uploads: usize,
    trickle: Duration,
    attacks: Vec<Attack>,
    proxy_cpu: usize,
    client_cpu: usize,
}

impl Settings {
    fn from_env() -> Self {
        let secs = |name: &str, default: u64| Duration::from_secs(env_at_least(name, default, 1));
        Self {
            baseline: secs("ATTACK_BASELINE", 5),
            attack: secs("ATTACK_SECONDS", 12),
            timeout: secs("ATTACK_TIMEOUT", 5),
            max_connections: env_at_least("ATTACK_MAX_CONNECTIONS", 500, 1),
            bystanders: env_at_least("ATTACK_BYSTANDERS", 4, 1),
            interval: Duration::from_millis(env_or("ATTACK_INTERVAL_MS", 50)),
            stalled_uploads: env_or("ATTACK_STALLED_UPLOADS", 600),
            stalled_downloads: env_or("ATTACK_STALLED_DOWNLOADS", 600),
            slow_uploads: env_or("ATTACK_SLOW_UPLOADS", 1000),
            trickle: secs("ATTACK_TRICKLE", 2),
            attacks: choose("ATTACK_ATTACKS", &ATTACK_NAMES).into_iter().map(Attack::named).collect(),
            proxy_cpu: env_or("ATTACK_PROXY_CPU", 0),
            client_cpu: env_or("ATTACK_CLIENT_CPU", 1),
        }
    }

    /// Descriptors this process may need at once: every attacker's connection, the backend's side of as many
    /// (the stalling backend holds one per attacker reveille forwards), the bystanders', and some spare.
    fn fds_needed(&self) -> u64 {
        let attackers = self.stalled_uploads.max(self.stalled_downloads).max(self.slow_uploads);
        (attackers + self.max_connections + self.bystanders + 200) as u64
    }
}

fn describe(s: &Settings) -> String {
    format!(
        "reveille `--max-connections {} --threads 1` on CPU {}; attackers, bystanders and backends on CPU {}; \
         baseline {} s, attack {} s",
        s.max_connections,
        s.proxy_cpu,
        s.client_cpu,
        s.baseline.as_secs(),
        s.attack.as_secs()
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    StalledUploads,
    StallingBackend,
    SlowUploads,
}

impl Attack {
    fn named(name: &str) -> Self {
        match name {
            "stalled-uploads" => Self::StalledUploads,
            "stalling-backend" => Self::StallingBackend,
            _ => Self::SlowUploads,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::StalledUploads => ATTACK_NAMES[0],
            Self::StallingBackend => ATTACK_NAMES[1],
            Self::SlowUploads => ATTACK_NAMES[2],
        }
    }

    fn attackers(self, s: &Settings) -> usize {
        match self {
            Self::StalledUploads => s.stalled_uploads,
            Self::StallingBackend => s.stalled_downloads,
            Self::SlowUploads => s.slow_uploads,
        }
    }

    /// The report's heading for this attack.
    fn title(self, s: &Settings) -> String {
        let n = self.attackers(s);
        match self {
            Self::StalledUploads => format!(
                "1. Stalled uploads: {n} attackers, each `POST` to the healthy tenant with `Content-Length: \
                 100000`, one body byte, then nothing; bystander on the healthy tenant"
            ),
            Self::StallingBackend => format!(
                "2. Backend stalling mid-body: {n} attackers, each `GET` from a backend that sends a head with \
                 `Content-Length: 100000`, {STALL_SENT} bytes, then nothing; bystander on the healthy tenant"
            ),
            Self::SlowUploads => format!(
                "3. Slow uploads against a {WORKER_COUNT}-worker backend: {n} attackers, each `POST` with \
                 `Content-Length: 1000`, one body byte every {} s; bystander on the same tenant",
                s.trickle.as_secs()
            ),
        }
    }

    /// The tenant the bystander uses.
    fn bystander_host(self) -> &'static str {
        match self {
            Self::SlowUploads => WORKERS,
            _ => HEALTHY,
        }
    }

    /// What each attacker sends.
    fn plan(self, s: &Settings) -> Plan {
        let (request, trickle) = match self {
            Self::StalledUploads => {
                (format!("POST / HTTP/1.1\r\nHost: {HEALTHY}\r\nContent-Length: 100000\r\n\r\nx"), None)
            }
            Self::StallingBackend => (format!("GET / HTTP/1.1\r\nHost: {STALL}\r\n\r\n"), None),
            Self::SlowUploads => {
                (format!("POST / HTTP/1.1\r\nHost: {WORKERS}\r\nContent-Length: 1000\r\n\r\nx"), Some((s.trickle, 999)))
            }
        };
        Plan { request: request.into_bytes(), trickle }
    }

    /// Memory per held connection is reported for these.
    fn memory(self) -> bool {
        self != Self::StallingBackend
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    Off,
    On,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::On => "ON",
        }
    }

    fn flags(self, s: &Settings) -> Vec<String> {
        match self {
            Self::Off => OFF_FLAGS.iter().map(|f| f.to_string()).collect(),
            Self::On => {
                let t = format!("{}s", s.timeout.as_secs());
                vec!["--body-timeout".into(), t.clone(), "--upstream-read-timeout".into(), t]
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// One run: an attack against one reveille

/// What one run measured.
struct Run {
    attack: Attack,
    protection: Protection,
    measured: Measured,
    nofile: Option<u64>,
    log: String,
}

impl Run {
    fn summary(&self) -> String {
        let m = &self.measured;
        format!(
            "{:<17} {:<3}  baseline {}  attack {}  attackers in place {}",
            self.attack.name(),
            self.protection.name(),
            m.baseline.summary(),
            m.attack_phase.summary(),
            describe_in_place(m.in_place)
        )
    }
}

fn describe_in_place(d: Option<Duration>) -> String {
    d.map_or_else(|| format!("not within {} s", PLACE_TIMEOUT.as_secs()), |d| format!("after {:.1} s", d.as_secs_f64()))
}

/// Starts the attack's backend (if it has its own), reveille, and measures.
fn run(rt: &Runtime, taskset: &Path, s: &Settings, healthy: u16, attack: Attack, protection: Protection) -> Run {
    let mut routes = vec![(HEALTHY, healthy)];
    let backend = start_attack_backend(rt, attack);
    if let Some((host, port, _)) = &backend {
        routes.push((*host, *port));
    }
    let mut lab = Lab::new("reveille-attack-");
    let [http, admin] = free_ports();
    let mut cmd = onecore::reveille(&lab, taskset, s.proxy_cpu, &routes, http, admin);
    cmd.args(["--max-connections", &s.max_connections.to_string()]).args(protection.flags(s));
    let (pid, log) = lab.start("reveille", cmd, || {
        onecore::get(admin, "127.0.0.1", "/readyz").is_some_and(|(status, _)| status == 200)
            && onecore::get(http, HEALTHY, "/").is_some_and(|(status, _)| status == 200)
    });
    let reveille = Reveille { pid, http: SocketAddr::from(([127, 0, 0, 1], http)), admin };
    let measured = rt.block_on(measure(s, &reveille, attack));
    let nofile = nofile_limit(&pid.to_string());
    let log = read_log(&log);
    drop(lab);
    if let Some((_, _, task)) = backend {
        task.abort();
    }
    Run { attack, protection, measured, nofile, log }
}

/// The stalling or two-worker backend, on this lab's runtime: its host, port and task (abort it to stop it).
fn start_attack_backend(rt: &Runtime, attack: Attack) -> Option<(&'static str, u16, JoinHandle<()>)> {
    if attack == Attack::StalledUploads {
        return None;
    }
    let listener = rt
        .block_on(async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(BACKEND_BACKLOG)
        })
        .expect("listen for a backend");
    let port = listener.local_addr().unwrap().port();
    Some(match attack {
        Attack::StallingBackend => (STALL, port, rt.spawn(serve_stalling(listener, STALL_SENT, None))),
        _ => (WORKERS, port, rt.spawn(serve_few_workers(listener, WORKER_COUNT))),
    })
}

struct Reveille {
    pid: u32,
    http: SocketAddr,
    admin: u16,
}

impl Reveille {
    /// reveille's `/metrics`; empty if it does not answer within 2 s.
    async fn metrics(&self) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin));
        let metrics = testkit::http::send_close(addr, "GET", "127.0.0.1", "/metrics");
        match tokio::time::timeout(BYSTANDER_TIMEOUT, metrics).await {
            Ok(Ok(resp)) => String::from_utf8_lossy(resp.body()).into_owned(),
            _ => String::new(),
        }
    }

    /// `reveille_open_connections` and `VmRSS` (KiB), now.
    async fn sample(&self) -> (Option<f64>, Option<u64>) {
        let open = sample(&self.metrics().await, "reveille_open_connections", &[]);
        (open, status_kib(&proc_status(self.pid), "VmRSS:"))
    }

    /// `reveille_upstream_errors_total` by kind so far, e.g. "3 (connect_refused 3)".
    async fn upstream_errors(&self) -> String {
        let text = self.metrics().await;
        let parts: Vec<_> = UPSTREAM_ERROR_KINDS
            .iter()
            .map(|&kind| {
                (kind, sample(&text, "reveille_upstream_errors_total", &[("kind", kind)]).unwrap_or(0.0) as u64)
            })
            .collect();
        counts(&parts)
    }
}

/// Baseline, attackers in place, attack phase; the attackers are dropped before it returns.
async fn measure(s: &Settings, reveille: &Reveille, attack: Attack) -> Measured {
    let host = attack.bystander_host();
    let baseline = phase(s, reveille, host, s.baseline).await;

    let n = attack.attackers(s);
    let plan = Arc::new(attack.plan(s));
    let tally = Arc::new(Tallies::default());
    let mut attackers = JoinSet::new();
    let started = Instant::now();
    for _ in 0..n {
        attackers.spawn(attacker(reveille.http, plan.clone(), tally.clone()));
    }
    let want = n.min(s.max_connections) as f64;
    let in_place = loop {
        if reveille.sample().await.0.is_some_and(|open| open >= want) {
            break Some(started.elapsed());
        }
        if started.elapsed() > PLACE_TIMEOUT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attack_phase = phase(s, reveille, host, s.attack).await;
    let upstream_errors = reveille.upstream_errors().await;
    attackers.shutdown().await;
    Measured { baseline, attack_phase, in_place, attackers: tally.snapshot(), upstream_errors }
}

/// What [`measure`] measured.
struct Measured {
    baseline: Phase,
    attack_phase: Phase,
    /// How long the attackers took to be in place; `None` if they were not within [`PLACE_TIMEOUT`].
    in_place: Option<Duration>,
    attackers: Tally,
    /// reveille's `reveille_upstream_errors_total` over the run, by kind.
    upstream_errors: String,
}

// ---------------------------------------------------------------------------------------------------------
// The bystander

/// What the bystander saw in one phase, and reveille's state meanwhile.
#[derive(Default)]
struct Phase {
    requests: usize,
    /// Latencies of the successful requests, µs.
    ok_us: Vec<f64>,
    /// The failed requests, by how they failed.
    failures: BTreeMap<String, u64>,
    /// `reveille_open_connections` samples.
    open: Vec<f64>,
    /// `VmRSS` samples, KiB.
    rss_kib: Vec<f64>,
}

impl Phase {
    fn success_pct(&self) -> f64 {
        self.ok_us.len() as f64 / self.requests.max(1) as f64 * 100.0
    }

    fn summary(&self) -> String {
        format!(
            "{:>4} req {:>5.1}% ok p99 {:>9}",
            self.requests,
            self.success_pct(),
            format_us(percentile(&self.ok_us, 99.0))
        )
    }

    fn failures(&self) -> String {
        let parts: Vec<(&str, u64)> = self.failures.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        counts(&parts)
    }
}

/// One request's outcome: its latency, or how it failed.
type Outcome = Result<Duration, String>;

/// Runs the bystander for `length` while sampling reveille.
async fn phase(s: &Settings, reveille: &Reveille, host: &'static str, length: Duration) -> Phase {
    let until = Instant::now() + length;
    let clients: Vec<_> =
        (0..s.bystanders).map(|_| tokio::spawn(bystander(reveille.http, host, s.interval, until))).collect();
    let mut p = Phase::default();
    while Instant::now() < until {
        let (open, rss) = reveille.sample().await;
        p.open.extend(open);
        p.rss_kib.extend(rss.map(|k| k as f64));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    for client in clients {
        for outcome in client.await.expect("bystander task") {
            p.requests += 1;
            match outcome {
                Ok(latency) => p.ok_us.push(latency.as_secs_f64() * 1e6),
                Err(why) => *p.failures.entry(why).or_default() += 1,
            }
        }
    }
    p
}

/// One bystander client: starts a request every `interval` until `until`, each on a new connection, whether
/// or not the previous ones have ended; returns when all have.
async fn bystander(addr: SocketAddr, host: &'static str, interval: Duration, until: Instant) -> Vec<Outcome> {
    let mut requests = JoinSet::new();
    let mut next = Instant::now();
    while next < until {
        requests.spawn(async move {
            let sent = Instant::now();
            let response = testkit::http::send_close(addr, "GET", host, "/");
            match tokio::time::timeout(BYSTANDER_TIMEOUT, response).await {
                Ok(Ok(r)) if r.status() == 200 => Ok(sent.elapsed()),
                Ok(Ok(r)) => Err(r.status().as_u16().to_string()),
                Ok(Err(_)) => Err("error".into()),
                Err(_) => Err("timeout".into()),
            }
        });
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    requests.join_all().await
}

// ---------------------------------------------------------------------------------------------------------
// The attackers

/// What an attacker sends on each connection.
struct Plan {
    /// The request head and the first body bytes.
    request: Vec<u8>,
    /// Then one more body byte every so often, this many times.
    trickle: Option<(Duration, usize)>,
}

/// What the attackers saw, counted as it happens.
#[derive(Default)]
struct Tallies {
    opened: AtomicU64,
    connect_errors: AtomicU64,
    /// Ended connections by the status of their answer (0: none came).
    ended: Mutex<BTreeMap<u16, u64>>,
}

impl Tallies {
    fn snapshot(&self) -> Tally {
        Tally {
            opened: self.opened.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            ended: self.ended.lock().unwrap().clone(),
        }
    }
}

/// What the attackers saw in a run.
struct Tally {
    opened: u64,
    connect_errors: u64,
    ended: BTreeMap<u16, u64>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.ended.values().sum();
        let ended: Vec<_> = self
            .ended
            .iter()
            .map(|(status, n)| match status {
                0 => format!("no answer ×{n}"),
                s => format!("{s} ×{n}"),
            })
            .collect();
        write!(f, "{} connections opened, {total} ended", self.opened)?;
        if !ended.is_empty() {
            write!(f, " ({})", ended.join(", "))?;
        }
        if self.connect_errors > 0 {
            write!(f, ", {} failed connects", self.connect_errors)?;
        }
        Ok(())
    }
}

/// One attacker: connects, sends its plan, holds the connection until the server closes it, and starts over,
/// until its task is dropped.
async fn attacker(addr: SocketAddr, plan: Arc<Plan>, tally: Arc<Tallies>) {
    loop {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let status = hold(&mut stream, &plan).await;
        *tally.ended.lock().unwrap().entry(status).or_default() += 1;
    }
}

/// Sends `plan` on `stream` and reads until the server closes it: the status of the answer, 0 if none came.
async fn hold(stream: &mut TcpStream, plan: &Plan) -> u16 {
    let mut head = Vec::new();
    if stream.write_all(&plan.request).await.is_err() {
        return 0;
    }
    let (every, mut left) = plan.trickle.unwrap_or((Duration::from_secs(1), 0));
    let mut next = Instant::now() + every;
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return status_of(&head),
                Ok(n) => head.extend_from_slice(&buf[..n.min(16usize.saturating_sub(head.len()))]),
            },
            _ = tokio::time::sleep_until(next), if left > 0 => {
                if stream.write_all(b"x").await.is_err() {
                    return status_of(&head);
                }
                left -= 1;
                next += every;
            }
        }
    }
}

/// The status of a response that starts with `head` (`HTTP/1.1 408 ...`); 0 if it is not one.
fn status_of(head: &[u8]) -> u16 {
    head.strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// The markdown report; `machine` is the CPUs, reveille's version and commit.
fn report(date: &str, machine: &str, s: &Settings, runs: &[Run]) -> String {
    let mut md = heading("Attack lab", date);
    let _ = writeln!(md, "- CPU: {machine}");
    let _ = writeln!(md, "- {}", describe(s));
    let _ = writeln!(md, "- OFF (reveille before the protections): `{}`", OFF_FLAGS.join(" "));
    let _ = writeln!(
        md,
        "- ON: defaults, except `{}`: the 60 s defaults would not fire within a {} s attack, so both are \
         shortened to {} s (`--min-body-rate 240` after 5 s, `--request-buffer-size 65536`, `--overload-timeout 2s` \
         and `--send-timeout 60s` are the defaults)",
        Protection::On.flags(s).join(" "),
        s.attack.as_secs(),
        s.timeout.as_secs()
    );
    let _ = writeln!(
        md,
        "- bystander: {} clients, each starting a `GET` with `Connection: close` on a new connection every {} ms \
         (open loop), {} s per request; success = 200 within that; p50/p99 of the successful requests",
        s.bystanders,
        s.interval.as_millis(),
        BYSTANDER_TIMEOUT.as_secs()
    );
    let nofile_reveille = runs.iter().find_map(|r| r.nofile).map_or("?".into(), |n| n.to_string());
    let nofile_self = nofile_limit("self");
    let _ = write!(
        md,
        "- RLIMIT_NOFILE (soft): reveille {nofile_reveille}, this process {}",
        nofile_self.map_or("?".into(), |n| n.to_string())
    );
    if nofile_self.is_some_and(|n| n < s.fds_needed()) {
        let _ = write!(md, " (**below the {} it may need**: raise it with `ulimit -n`)", s.fds_needed());
    }
    let _ = writeln!(md);

    for &attack in &s.attacks {
        let _ = writeln!(md, "\n#### {}\n", attack.title(s));
        let _ = writeln!(
            md,
            "| phase | protection | bystander requests | success | p50 | p99 | failures | reveille conns |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|");
        let of_attack: Vec<_> = runs.iter().filter(|r| r.attack == attack).collect();
        for r in &of_attack {
            for (name, p) in [("baseline", &r.measured.baseline), ("attack", &r.measured.attack_phase)] {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {:.1}% | {} | {} | {} | {:.0} |",
                    r.protection.name(),
                    p.requests,
                    p.success_pct(),
                    format_us(percentile(&p.ok_us, 50.0)),
                    format_us(percentile(&p.ok_us, 99.0)),
                    p.failures(),
                    median(&p.open)
                );
            }
        }
        let _ = writeln!(md);
        for r in &of_attack {
            let m = &r.measured;
            let _ = writeln!(
                md,
                "- {}: attackers: {}; in place {}. reveille's upstream errors: {}",
                r.protection.name(),
                m.attackers,
                describe_in_place(m.in_place),
                m.upstream_errors
            );
        }
    }

    let memory: Vec<_> = runs.iter().filter(|r| r.attack.memory() && r.protection == Protection::On).collect();
    if !memory.is_empty() {
        let _ = writeln!(md, "\n#### Memory per held connection (ON)\n");
        let _ = writeln!(
            md,
            "| attack | RSS, bystander alone | RSS, attack | connections held | KiB per held connection |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for r in memory {
            let m = &r.measured;
            let (alone, under) = (median(&m.baseline.rss_kib), median(&m.attack_phase.rss_kib));
            let held = median(&m.attack_phase.open) - median(&m.baseline.open);
            let _ = writeln!(
                md,
                "| {} | {:.1} MiB | {:.1} MiB | {held:.0} | {:.1} |",
                r.attack.name(),
                alone / 1024.0,
                under / 1024.0,
                (under - alone) / held
            );
        }
    }
    md
}
