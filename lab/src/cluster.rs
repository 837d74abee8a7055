//! Cluster lab: what several reveille replicas sharing one etcd cost and how fast they coordinate — etcd writes
//! with 1,000 active tenants, failover of the replica that decides idle stops, a cold start through a replica
//! that is not the one starting the container, and a wake from pause against a wake from stop.
//!
//! Run with `cargo run --release -p reveille-lab -- cluster`. Needs Docker (`docker version` must reach a
//! daemon), `/bin/busybox` (Debian's busybox-static), `/usr/bin/etcd` (Debian's etcd-server) and `/usr/bin/wrk`;
//! without one of them it says so and exits 0. Only 127.0.0.1 and the containers' addresses on the Docker
//! bridge are contacted. Nothing is pinned: the replicas, etcd, Docker, the containers, wrk and this process
//! share the machine's CPUs.
//!
//! Setup: one etcd (testkit's throwaway launcher: free loopback ports, temp data dir) for the whole run; each
//! run of replicas below has its own key prefix (`--etcd-prefix`: `/lab-writes-<interval>/`,
//! `/lab-failover-<ttl>/`, `/lab-cold/`, `/lab-wake/`), so none sees another's keys. The image
//! is built `FROM scratch` with `/bin/busybox` and `/www/index.html` (`hello from <tag>`), by testkit's builder
//! as in the passivation lab; every container runs `sh -c 'trap "exit 0" TERM; httpd -f -p 8080 -h /www &
//! wait'` (the trap makes `docker stop` fast). A replica is the reveille binary started as `reveille serve
//! --etcd URL --etcd-prefix P --node nK --http 127.0.0.1:0 --admin 127.0.0.1:0 --log-format json --access-log
//! false --log-level info` plus the part's flags below; its addresses are read from its `listening` log line,
//! then `/readyz` must answer 200. Its stdout and stderr go to a log file in the temp dir. Services and routes
//! are written to etcd before the replicas start (`<prefix>services/<name>` → `{"container": .., "port": 8080,
//! ..}`, `<prefix>routes/<name>.bench.test` → `{"service": "<name>"}`). Docker's events for each container are
//! read from a `docker events --filter container=<name>` child process (action and the daemon's `timeNano`).
//! Replicas, `docker events` and wrk children, containers, image, etcd and the temp dir are removed at the end,
//! also on a panic.
//!
//! 1. etcd writes with `CLUSTER_BENCH_TENANTS` (1,000) active tenants: services `t0`..`t999`, all on ONE
//!    running container (started by the lab before the replicas; each service is its own tenant to reveille and
//!    adopts the running container), `idle_timeout = "0"`. For each `--activity-interval` of
//!    `CLUSTER_BENCH_INTERVALS` (`5s,1s`; 5s is the default): three replicas n1..n3 (default lease TTL, 10 s)
//!    are started and every replica must report all tenants `running` in `GET /api/services`; then 2 activity
//!    intervals + 1 s pass (the startup writes settle), and two windows are measured:
//!    - full rate: on each replica at once, `wrk -t1 -c<CLUSTER_BENCH_CONNECTIONS> (10) -d<CLUSTER_BENCH_SECONDS>
//!      (20)s --latency -s rotate.lua`, the script rotating `Host: t<i>.bench.test` over all tenants in order,
//!      one request each (each wrk starts at a different tenant);
//!    - low rate: the same with a `delay()` in the script of `connections × 1000 ÷ (that replica's full-rate
//!      req/s ÷ 10)` ms per request on each connection: about a tenth of the full rate.
//!
//!    The counters are read just before the wrk processes start and again 1 activity interval + 0.5 s after
//!    they all end, so that the publication of the load's last interval is counted; every rate is that count ÷
//!    the load's seconds (wrk start → all ended). 1 s passes between the two windows. Reported per replica:
//!    req/s (wrk's), activity write transactions/s (delta of
//!    `reveille_cluster_writes_total{kind="activity",result="ok"}`), activity keys written/s and
//!    transactions/s as etcd saw them (a watch on `<prefix>cluster/activity/` opened by the lab: put events whose
//!    key ends in `/<node>`, and their distinct revisions — one revision per transaction), and the other
//!    `reveille_cluster_writes_total` kinds and `reveille_cluster_cas_conflicts_total` deltas. For the cluster:
//!    etcd's own `etcd_mvcc_put_total` and `etcd_mvcc_txn_total` deltas (its `/metrics` on the client port),
//!    every writer included. The bound the issue states: a replica writes at most one key per tenant it used
//!    per interval, never one per request. Over a load of D seconds, which overlaps at most ⌈D ÷ interval⌉ + 1
//!    intervals, a replica writes at most min(tenants × (⌈D ÷ interval⌉ + 1), its requests + connections ×
//!    (⌈D ÷ interval⌉ + 1)) keys (a request in flight at a publication is written busy, then again once
//!    done): the reported bound, checked (more keys is a failure). With the hosts rotated in order, a replica changes
//!    min(tenants, req/s × interval) tenants per interval, so the long-run rate is that ÷ interval keys/s, in
//!    transactions of ≤ 100 keys. wrk timeouts are reported, not failures: the shared `busybox httpd` listens
//!    with a backlog of 9, so the report gives the container's `TcpExtListenOverflows` (read from
//!    `/proc/<its pid>/net/netstat`) over each load; other wrk errors are failures. The startup writes (from spawn until the first window) are reported too:
//!    `kind="status"` counts every compare-and-swap transaction etcd answered, those refused by a conflict
//!    included (`reveille_cluster_cas_conflicts_total`).
//!
//! 2. Failover of the decider: for each lease TTL of `CLUSTER_BENCH_FAILOVER_TTLS` (`2s,10s`), three replicas
//!    with `--lease-ttl <TTL>` (default activity interval), one service `fo` with `idle_timeout = "1s"` on its
//!    own container, stopped at first. `CLUSTER_BENCH_FAILOVER_ROUNDS` (5) rounds, each: wait until three
//!    replica keys and a decider key are in etcd and every replica reports `fo` stopped; read the decider
//!    (`<prefix>cluster/decider`); `GET /` for `fo` through the first replica that is not the decider (this
//!    wakes the container: a cold start) until the response is read (`t_resp`); then at once SIGKILL the
//!    decider (`t_kill`, taken just before the signal). Measured: `t_kill` → the container's Docker `die` event
//!    (the daemon's timestamp), nothing subtracted. Also: `t_kill` → a new decider key naming another replica
//!    (etcd polled every 10 ms), and which replica stopped it (the `node` of `<prefix>status/fo`). The killed
//!    replica is then started again under the same node name. What the interval contains: the dead decider's
//!    lease running out (≤ TTL after its last keep-alive), the watch telling the others, one of them taking
//!    the decider key, its idle check (the tenant idle 1 s after the last request ended), the stop claim
//!    (status → `stopping`), the stop veto wait (250 ms, `stop_veto`), and `docker stop` until the process dies.
//!    Goal per round: ≤ TTL + 1 s + the idle time the tenant still had to wait at the kill (1 s − (`t_kill` −
//!    `t_resp`), at least 0).
//!
//! 3. Cold start through a replica that does not start the container: two replicas A (n1) and B (n2), one
//!    service `cold` (`idle_timeout = "0"`) on its own container. `CLUSTER_BENCH_COLD_WARMUP` (1) uncounted then
//!    `CLUSTER_BENCH_COLD_ROUNDS` (15) counted rounds, each measuring both ways once, the order alternating
//!    (direct first in even rounds). Before each measurement both replicas must report `cold` stopped (if not,
//!    `POST /api/services/cold/sleep` on A, retried while 409) and Docker must say stopped; then 300 ms pass.
//!    - through the cluster: a `GET /` with `Connection: close` on a new connection to A (a tokio task), and
//!      1 ms (a tokio sleep) after that task was spawned, the same to B. Each time to first byte is from its
//!      own request's connect to
//!      its response head. Both must be 200 with `hello from ...`. Who started the container is read from the
//!      replicas' logs (`start claimed for the cluster`, one line per claim), and Docker's `start` events since
//!      the measurement began must be exactly one. Then `POST .../sleep` on A, and both replicas must report it
//!      stopped.
//!    - direct: as in the passivation lab — Docker's start API call (reveille's own runtime client), inspect for
//!      the IP, TCP connects to `ip:8080` 1 ms apart until one succeeds; then `docker stop` through the API and
//!      both replicas must report it stopped.
//!
//!    Overhead = median(B) − median(direct), over the rounds where A claimed the start (B the non-starter);
//!    the same for A (the starter). Goal for B: ≤ 15 ms. Also `reveille_wake_phase_seconds` means (differences
//!    over the counted rounds) on A and on B.
//!
//! 4. Wake from pause against wake from stop, through one replica (etcd, default settings): services `pz`
//!    (`idle_action = "pause"`) and `st` (stop), `idle_timeout = "0"`, each on its own container.
//!    `CLUSTER_BENCH_WAKE_ROUNDS` (15) rounds, each measuring `pz` then `st` in even rounds and the reverse in
//!    odd ones: make it running (a `GET /` if it is not), `POST /api/services/<name>/sleep`, poll `GET
//!    /api/services` every 10 ms until `paused` / `stopped`, 300 ms pause, then the time to first byte of `GET /`
//!    on a new connection (200 with the page). Also the `reveille_wake_phase_seconds` means over each kind's
//!    wakes (sum and count differences around each measurement), and the Docker `unpause` / `start` events.
//!
//! Timings are reported, never asserted; the goals are stated with the numbers. A failed measurement (wrong
//! status, a count of Docker starts other than one, a timeout) is reported and the process then exits 1.
//!
//! The report goes to stdout and to `target/cluster-bench.md`. Environment: `CLUSTER_BENCH_PARTS`
//! (`writes,failover,cold,wake`), `CLUSTER_BENCH_TENANTS` (1000), `CLUSTER_BENCH_INTERVALS` (`5s,1s`),
//! `CLUSTER_BENCH_SECONDS` (20), `CLUSTER_BENCH_CONNECTIONS` (10), `CLUSTER_BENCH_FAILOVER_TTLS` (`2s,10s`),
//! `CLUSTER_BENCH_FAILOVER_ROUNDS` (5), `CLUSTER_BENCH_COLD_WARMUP` (1), `CLUSTER_BENCH_COLD_ROUNDS` (15),
//! `CLUSTER_BENCH_WAKE_ROUNDS` (15), `REVEILLE_BIN`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use reveille::{ContainerState, DockerRuntime};
use testkit::admin::{
    http_request, metrics_text, phase_means, phase_totals, service_state, wait_state, PHASES, STATE_TIMEOUT,
};
use testkit::docker::{docker, is_hello, unusable, web_script, DockerThings, BUSYBOX, CONTAINER_PORT, SETTLE};
use testkit::env::{choose, env_at_least, env_or, list};
use testkit::etcd::{Etcd, ETCD};
use testkit::machine::{first_line, load_average, Machine};
use testkit::process::{read_log, tail, KillOnDrop};
use testkit::prometheus::sample;
use testkit::report::{heading, timing_row, write_report, Table, TIMING_ALIGN, TIMING_COLUMNS};
use testkit::stats::{format_us, median, percentile};
use testkit::wire::{read_reply, send_get};
use testkit::wrk::{WrkReport, WRK};
use tokio::runtime::Runtime;

use crate::passivation::direct_start;

const PARTS: [&str; 4] = ["writes", "failover", "cold", "wake"];
/// Puts per transaction when the lab fills etcd.
const FILL_TXN: usize = 100;
/// reveille's activity transactions hold at most this many puts.
const ACTIVITY_TXN: usize = 100;
/// How long a replica may take to log `listening` and answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CLAIM_LINE: &str = "start claimed for the cluster";

/// Runs the lab; false if a measurement failed. Returns only after every child is killed and the containers,
/// image, etcd and temp dir are removed.
pub(crate) fn main() -> bool {
    let needs = [
        (BUSYBOX, "install Debian's busybox-static"),
        (ETCD, "install Debian's etcd-server"),
        (WRK, "install Debian's wrk"),
    ];
    if let Some(why) = unusable(&needs) {
        println!("cluster: skipped, {why}");
        return true;
    }
    run()
}

// ---------------------------------------------------------------------------------------------------------
// Settings

struct Settings {
    parts: Vec<&'static str>,
    tenants: usize,
    intervals: Vec<String>,
    seconds: u64,
    connections: usize,
    ttls: Vec<String>,
    failover_rounds: usize,
    cold_warmup: usize,
    cold_rounds: usize,
    wake_rounds: usize,
}

impl Settings {
    fn from_env() -> Self {
        let strings = |name: &str, default: &str| -> Vec<String> {
            let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
            let items: Vec<String> = list(&v).map(str::to_string).collect();
            for i in &items {
                assert!(parse_duration(i).is_some(), "{name}: {i:?} is not a duration (like 500ms, 5s, 1m)");
            }
            assert!(!items.is_empty(), "{name} names nothing");
            items
        };
        Self {
            parts: choose("CLUSTER_BENCH_PARTS", &PARTS),
            tenants: env_at_least("CLUSTER_BENCH_TENANTS", 1000, 1),
            intervals: strings("CLUSTER_BENCH_INTERVALS", "5s,1s"),
            seconds: env_at_least("CLUSTER_BENCH_SECONDS", 20, 1),
            connections: env_at_least("CLUSTER_BENCH_CONNECTIONS", 10, 1),
            ttls: strings("CLUSTER_BENCH_FAILOVER_TTLS", "2s,10s"),
            failover_rounds: env_at_least("CLUSTER_BENCH_FAILOVER_ROUNDS", 5, 1),
            cold_warmup: env_or("CLUSTER_BENCH_COLD_WARMUP", 1),
            cold_rounds: env_at_least("CLUSTER_BENCH_COLD_ROUNDS", 15, 1),
            wake_rounds: env_at_least("CLUSTER_BENCH_WAKE_ROUNDS", 15, 1),
        }
    }
}

/// `500ms`, `5s`, `1m`: a whole number and a unit.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    match &s[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

fn dur(s: &str) -> Duration {
    parse_duration(s).expect("checked in Settings::from_env")
}

// ---------------------------------------------------------------------------------------------------------
// Replicas

/// A `reveille serve` replica, killed and reaped on drop. Its log file collects every start's output.
struct Replica {
    node: String,
    args: Vec<String>,
    child: Option<KillOnDrop>,
    http: u16,
    admin: u16,
    log: PathBuf,
}

impl Replica {
    /// Starts `reveille serve` for `node` against etcd under `prefix`, with `extra` flags.
    fn start(dir: &Path, etcd: &str, prefix: &str, node: &str, extra: &[&str]) -> Result<Replica, String> {
        let mut args: Vec<String> = [
            "serve",
            "--etcd",
            etcd,
            "--etcd-prefix",
            prefix,
            "--node",
            node,
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--access-log",
            "false",
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let tag = prefix.trim_matches('/').replace('/', "-");
        let log = dir.join(format!("{tag}-{node}.log"));
        let mut r = Replica { node: node.to_string(), args, child: None, http: 0, admin: 0, log };
        r.spawn()?;
        Ok(r)
    }

    /// (Re)starts the process; returns once it listens and `/readyz` answers 200.
    fn spawn(&mut self) -> Result<(), String> {
        let offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0) as usize;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let child = Command::new(crate::reveille_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start reveille: {e}"))?;
        let child = self.child.insert(KillOnDrop(child));
        let deadline = Instant::now() + START_TIMEOUT;
        let (http, admin) = loop {
            let text = read_log(&self.log);
            let found = text.get(offset..).unwrap_or("").lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                if v["message"] != "listening" {
                    return None;
                }
                let port = |k: &str| v[k].as_str()?.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
                Some((port("http")?, port("admin")?))
            });
            if let Some(ports) = found {
                break ports;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("replica {} exited ({status}):\n{}", self.node, tail(&text, 20)));
            }
            if Instant::now() > deadline {
                return Err(format!("replica {} not listening after {START_TIMEOUT:?}", self.node));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.http = http;
        self.admin = admin;
        while !matches!(http_request(admin, "GET", "/readyz"), Some((200, _))) {
            if Instant::now() > deadline {
                return Err(format!("replica {}: /readyz not 200 after {START_TIMEOUT:?}", self.node));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL: a crash, no lease revoked. Returns the time just before the signal was sent.
    fn kill(&mut self) -> SystemTime {
        let at = SystemTime::now();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        at
    }

    fn metrics(&self) -> String {
        metrics_text(self.admin).unwrap_or_default()
    }

    /// Lines of this replica's log (every start's) containing `needle`.
    fn log_count(&self, needle: &str) -> usize {
        read_log(&self.log).lines().filter(|l| l.contains(needle)).count()
    }
}

/// `reveille_cluster_writes_total{kind,result}`, 0 if absent.
fn writes(metrics: &str, kind: &str, result: &str) -> f64 {
    sample(metrics, "reveille_cluster_writes_total", &[("kind", kind), ("result", result)]).unwrap_or(0.0)
}

fn conflicts(metrics: &str) -> f64 {
    sample(metrics, "reveille_cluster_cas_conflicts_total", &[]).unwrap_or(0.0)
}

/// The cluster counters of one replica at one moment.
#[derive(Clone, Copy, Default)]
struct Counters {
    activity_ok: f64,
    activity_err: f64,
    status_ok: f64,
    status_err: f64,
    lease_ok: f64,
    decider_ok: f64,
    conflicts: f64,
}

impl Counters {
    fn read(r: &Replica) -> Self {
        let m = r.metrics();
        Self {
            activity_ok: writes(&m, "activity", "ok"),
            activity_err: writes(&m, "activity", "error"),
            status_ok: writes(&m, "status", "ok"),
            status_err: writes(&m, "status", "error"),
            lease_ok: writes(&m, "lease", "ok"),
            decider_ok: writes(&m, "decider", "ok"),
            conflicts: conflicts(&m),
        }
    }

    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            activity_ok: self.activity_ok - o.activity_ok,
            activity_err: self.activity_err - o.activity_err,
            status_ok: self.status_ok - o.status_ok,
            status_err: self.status_err - o.status_err,
            lease_ok: self.lease_ok - o.lease_ok,
            decider_ok: self.decider_ok - o.decider_ok,
            conflicts: self.conflicts - o.conflicts,
        }
    }
}

/// How many of `names` a replica reports in `state` (`GET /api/services`).
fn count_in_state(admin: u16, names: &[String], state: &str) -> usize {
    let Some((200, body)) = http_request(admin, "GET", "/api/services") else { return 0 };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else { return 0 };
    names.iter().filter(|n| json["services"][n.as_str()]["state"] == state).count()
}

/// Waits until every replica reports `service` in `state`.
fn wait_all(replicas: &[Replica], service: &str, state: &str) -> Result<(), String> {
    for r in replicas {
        wait_state(r.admin, service, state).map_err(|e| format!("{}: {e}", r.node))?;
    }
    Ok(())
}

/// `POST /api/services/<name>/sleep` on `admin`, retried while it answers 409.
fn post_sleep(admin: u16, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        match http_request(admin, "POST", &format!("/api/services/{name}/sleep")) {
            Some((202, _)) => return Ok(()),
            Some((409, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Some((status, body)) => {
                return Err(format!("sleep {name}: {status} {}", String::from_utf8_lossy(&body).trim()))
            }
            None => return Err(format!("sleep {name}: no answer from the admin API")),
        }
    }
}

/// `GET /` for `host` on a new connection to reveille's `port`: time to the response head. The response must be
/// 200 with the page.
async fn ttfb(port: u16, host: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let stream = send_get(port, host).await.map_err(|e| format!("GET {host}: {e}"))?;
    let reply = tokio::time::timeout(Duration::from_secs(90), read_reply(stream))
        .await
        .map_err(|_| format!("GET {host}: no response within 90 s"))?
        .map_err(|e| format!("GET {host}: {e}"))?;
    if reply.status != 200 || !is_hello(&reply.body) {
        return Err(format!("GET {host}: {} {:?}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    Ok(reply.head_at - t0)
}

// ---------------------------------------------------------------------------------------------------------
// Docker events

/// `docker events` for one container, read by a thread: (action, the daemon's time).
struct DockerEvents {
    _child: KillOnDrop,
    seen: Arc<Mutex<Vec<(String, SystemTime)>>>,
}

impl DockerEvents {
    fn watch(container: &str) -> Result<Self, String> {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().to_string();
        let filter = format!("container={container}");
        let mut child = Command::new("docker")
            .args(["events", "--since", &since, "--filter", &filter, "--format", "{{.Action}} {{.TimeNano}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run docker events: {e}"))?;
        let out = child.stdout.take().ok_or("docker events: no stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut words = line.split_whitespace();
                let (Some(action), Some(nanos)) = (words.next(), words.next()) else { continue };
                let Ok(nanos) = nanos.parse::<u64>() else { continue };
                sink.lock().unwrap().push((action.to_string(), UNIX_EPOCH + Duration::from_nanos(nanos)));
            }
        });
        Ok(Self { _child: KillOnDrop(child), seen })
    }

    fn count(&self, action: &str, since: SystemTime) -> usize {
        self.seen.lock().unwrap().iter().filter(|(a, t)| a == action && *t >= since).count()
    }

    /// The first `action` at or after `since`, waiting up to `timeout` for it.
    fn wait(&self, action: &str, since: SystemTime, timeout: Duration) -> Option<SystemTime> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.seen.lock().unwrap().iter().find(|(a, t)| a == action && *t >= since).map(|(_, t)| *t);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn docker_state(container: &str) -> String {
    docker(&["inspect", "--format", "{{.State.Status}}", container]).unwrap_or_else(|e| e)
}

// ---------------------------------------------------------------------------------------------------------
// etcd

async fn fill(client: &mut Client, kvs: &[(String, String)]) -> Result<(), String> {
    for batch in kvs.chunks(FILL_TXN) {
        let ops: Vec<TxnOp> = batch.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect();
        client.txn(Txn::new().and_then(ops)).await.map_err(|e| format!("etcd txn: {e}"))?;
    }
    Ok(())
}

async fn get_value(client: &mut Client, key: &str) -> Option<String> {
    let r = client.get(key, None).await.ok()?;
    r.kvs().first().and_then(|kv| kv.value_str().ok()).map(str::to_string)
}

async fn count_keys(client: &mut Client, prefix: &str) -> usize {
    let r = client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await;
    r.map(|r| r.count() as usize).unwrap_or(0)
}

/// The service's JSON value in etcd.
fn service_json(container: &str, extra: &str) -> String {
    format!("{{\"container\": \"{container}\", \"port\": {CONTAINER_PORT}{extra}}}")
}

fn route_json(service: &str) -> String {
    format!("{{\"service\": \"{service}\"}}")
}

/// Per node: activity keys put and the distinct revisions (transactions) they were put at, with when the
/// watch delivered each, as a watch on `<prefix>cluster/activity/` saw them.
#[derive(Default, Clone)]
struct ActivitySeen {
    keys: HashMap<String, u64>,
    /// Revision → when the watch delivered it, keys put at it.
    revisions: HashMap<String, BTreeMap<i64, (Instant, u64)>>,
}

impl ActivitySeen {
    fn keys(&self, node: &str) -> u64 {
        self.keys.get(node).copied().unwrap_or(0)
    }

    fn txns(&self, node: &str) -> usize {
        self.revisions.get(node).map_or(0, BTreeMap::len)
    }

    /// Keys per publication: runs of transactions less than `gap` apart.
    fn publications(&self, node: &str, gap: Duration) -> Vec<u64> {
        let Some(revs) = self.revisions.get(node) else { return Vec::new() };
        let mut txns: Vec<(Instant, u64)> = revs.values().copied().collect();
        txns.sort();
        let mut out: Vec<u64> = Vec::new();
        let mut last: Option<Instant> = None;
        for (t, keys) in txns {
            match (last, out.last_mut()) {
                (Some(l), Some(n)) if t - l <= gap => *n += keys,
                _ => out.push(keys),
            }
            last = Some(t);
        }
        out
    }
}

/// Starts a watch counting activity puts under `prefix`; the task ends with the runtime.
async fn watch_activity(client: &mut Client, prefix: &str) -> Result<Arc<Mutex<ActivitySeen>>, String> {
    let key = format!("{prefix}cluster/activity/");
    let (watcher, mut stream) = client
        .watch(key.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("etcd watch: {e}"))?;
    let seen = Arc::new(Mutex::new(ActivitySeen::default()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Ok(Some(resp)) = stream.message().await {
            let mut s = sink.lock().unwrap();
            for ev in resp.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                let Ok(k) = kv.key_str() else { continue };
                let node = k.rsplit('/').next().unwrap_or("").to_string();
                *s.keys.entry(node.clone()).or_default() += 1;
                s.revisions
                    .entry(node)
                    .or_default()
                    .entry(kv.mod_revision())
                    .or_insert_with(|| (Instant::now(), 0))
                    .1 += 1;
            }
        }
    });
    Ok(seen)
}

/// `etcd_mvcc_put_total` and `etcd_mvcc_txn_total` from etcd's `/metrics`.
fn etcd_mvcc(port: u16) -> (f64, f64) {
    let text = match http_request(port, "GET", "/metrics") {
        Some((200, body)) => String::from_utf8_lossy(&body).into_owned(),
        _ => String::new(),
    };
    let get = |name: &str| sample(&text, name, &[]).unwrap_or(f64::NAN);
    (get("etcd_mvcc_put_total"), get("etcd_mvcc_txn_total"))
}

// ---------------------------------------------------------------------------------------------------------
// The run

/// Everything the run made. Field order is drop order: the `docker events` children, then the containers and
/// image, then etcd, then the temp dir (replica logs). Replicas live in the parts and are killed when a part
/// returns or unwinds.
struct Lab {
    events: Vec<DockerEvents>,
    docker: DockerThings,
    etcd: Option<Etcd>,
    dir: tempfile::TempDir,
}

struct Ctx<'a> {
    rt: &'a Runtime,
    s: &'a Settings,
    dir: PathBuf,
    etcd_url: String,
    etcd_port: u16,
    image: String,
}

impl Ctx<'_> {
    fn client(&self) -> Result<Client, String> {
        self.rt.block_on(Client::connect([&self.etcd_url], None)).map_err(|e| format!("etcd connect: {e}"))
    }

    fn replicas(&self, prefix: &str, nodes: &[&str], extra: &[&str]) -> Result<Vec<Replica>, String> {
        nodes.iter().map(|n| Replica::start(&self.dir, &self.etcd_url, prefix, n, extra)).collect()
    }
}

fn run() -> bool {
    let settings = Settings::from_env();
    let machine = Machine::describe(crate::reveille_bin());
    let etcd_version = first_line(Command::new(ETCD).arg("--version")).replace("Version: ", "");
    let load_start = load_average();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::Builder::new().prefix("reveille-cluster-bench-").tempdir().expect("create a temp dir");
    let mut lab = Lab { events: Vec::new(), docker: DockerThings::default(), etcd: None, dir };
    let etcd = rt.block_on(Etcd::start());
    let (etcd_url, etcd_port) = (etcd.url.clone(), etcd.port());
    lab.etcd = Some(etcd);
    let image = match lab.docker.build_image(lab.dir.path(), None) {
        Ok(tag) => tag,
        Err(e) => {
            println!("cluster: setup failed: {e}");
            return false;
        }
    };
    let ctx = Ctx { rt: &rt, s: &settings, dir: lab.dir.path().to_path_buf(), etcd_url, etcd_port, image };
    println!("image {}; etcd {}; temp dir {}", ctx.image, ctx.etcd_url, ctx.dir.display());

    let mut failures = Vec::new();
    let mut sections = Vec::new();
    for part in &settings.parts {
        println!("part {part}");
        let result = match *part {
            "writes" => writes_part(&ctx, &mut lab),
            "failover" => failover_part(&ctx, &mut lab),
            "cold" => cold_part(&ctx, &mut lab),
            _ => wake_part(&ctx, &mut lab),
        };
        match result {
            Ok((md, errors)) => {
                failures.extend(errors.into_iter().map(|e| format!("{part}: {e}")));
                sections.push(md);
            }
            Err(e) => {
                println!("part {part} failed: {e}");
                failures.push(format!("{part}: {e}"));
            }
        }
    }

    let mut md = heading("Cluster benchmark", &machine.date);
    let _ = writeln!(
        md,
        "- CPU: {} × {} (VM, nothing pinned, the machine not reserved: 1-min load average {load_start} at the \
         start, {} at the end, this run's processes included); kernel {}",
        machine.nproc,
        machine.cpu,
        load_average(),
        machine.kernel
    );
    let _ = writeln!(md, "- {}; {etcd_version}", machine.versions());
    let _ = writeln!(
        md,
        "- Replicas: `reveille serve --etcd .. --etcd-prefix /lab-<run>/ --node nK --log-format json --access-log \
         false --log-level info` plus the flags given per part; all processes on loopback, one etcd member"
    );
    let _ = writeln!(
        md,
        "- Settings: tenants {}, activity intervals {}, load {} s × {} connections per replica, lease TTLs {} × {} \
         rounds, cold start {} + {} rounds, wake {} rounds (`CLUSTER_BENCH_*`)",
        settings.tenants,
        settings.intervals.join(", "),
        settings.seconds,
        settings.connections,
        settings.ttls.join(", "),
        settings.failover_rounds,
        settings.cold_warmup,
        settings.cold_rounds,
        settings.wake_rounds
    );
    let _ = writeln!(md);
    for s in &sections {
        md.push_str(s);
        let _ = writeln!(md);
    }
    for f in &failures {
        let _ = writeln!(md, "- FAILURE: {}", f.lines().next().unwrap_or(""));
    }
    println!("\n{md}");
    write_report("cluster-bench.md", &md);
    drop(rt);
    drop(lab);
    failures.is_empty()
}

type Part = Result<(String, Vec<String>), String>;

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------------------
// 1. etcd writes

struct Window {
    label: &'static str,
    seconds: f64,
    /// `TcpExtListenOverflows` in the shared container's network namespace over the load.
    overflows: Option<u64>,
    wrk: Vec<Result<WrkReport, String>>,
    counters: Vec<Counters>,
    seen: ActivitySeen,
    mvcc: (f64, f64),
}

fn rotate_script(dir: &Path, tenants: usize, start: usize, delay_ms: Option<f64>) -> Result<PathBuf, String> {
    let path = dir.join(format!("rotate-{start}-{}.lua", delay_ms.map_or(0, |d| d as u64)));
    let mut lua = format!(
        "local n = {tenants}\nlocal i = {start}\nrequest = function()\n  i = (i + 1) % n\n  \
         return wrk.format(\"GET\", \"/\", {{ [\"Host\"] = \"t\" .. i .. \".bench.test\" }})\nend\n"
    );
    if let Some(d) = delay_ms {
        let _ = write!(lua, "delay = function()\n  return {}\nend\n", d.round().max(1.0) as u64);
    }
    std::fs::write(&path, lua).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn measure_window(
    ctx: &Ctx,
    replicas: &[Replica],
    seen: &Arc<Mutex<ActivitySeen>>,
    label: &'static str,
    delays: Option<Vec<f64>>,
    interval: Duration,
    container: &str,
) -> Result<Window, String> {
    let s = ctx.s;
    let mut scripts = Vec::new();
    for (k, _) in replicas.iter().enumerate() {
        let delay = delays.as_ref().map(|d| d[k]);
        scripts.push(rotate_script(&ctx.dir, s.tenants, k * s.tenants / replicas.len(), delay)?);
    }
    let before: Vec<Counters> = replicas.iter().map(Counters::read).collect();
    let seen_before = seen.lock().unwrap().clone();
    let mvcc_before = etcd_mvcc(ctx.etcd_port);
    let overflows_before = container_listen_overflows(container);
    let t0 = Instant::now();
    let handles: Vec<_> = replicas
        .iter()
        .zip(&scripts)
        .map(|(r, script)| {
            let mut cmd = Command::new(WRK);
            cmd.args([
                "-t1".to_string(),
                format!("-c{}", s.connections),
                format!("-d{}s", s.seconds),
                "--latency".into(),
                "-s".into(),
                script.display().to_string(),
                format!("http://127.0.0.1:{}/", r.http),
            ]);
            std::thread::spawn(move || testkit::wrk::run(&mut cmd))
        })
        .collect();
    let wrk: Vec<_> = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("wrk thread".into()))).collect();
    let seconds = t0.elapsed().as_secs_f64();
    let overflows = match (overflows_before, container_listen_overflows(container)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // The load's last interval is published at the next tick.
    std::thread::sleep(interval + Duration::from_millis(500));
    let after: Vec<Counters> = replicas.iter().map(Counters::read).collect();
    let mvcc_after = etcd_mvcc(ctx.etcd_port);
    let seen_after = seen.lock().unwrap().clone();
    let mut diff = ActivitySeen::default();
    for r in replicas {
        let keys = seen_after.keys(&r.node) - seen_before.keys(&r.node);
        let old = seen_before.revisions.get(&r.node);
        let revs: BTreeMap<i64, (Instant, u64)> = seen_after
            .revisions
            .get(&r.node)
            .map(|a| a.iter().filter(|(k, _)| !old.is_some_and(|o| o.contains_key(k))).map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        diff.keys.insert(r.node.clone(), keys);
        diff.revisions.insert(r.node.clone(), revs);
    }
    Ok(Window {
        label,
        seconds,
        overflows,
        wrk,
        counters: after.iter().zip(&before).map(|(a, b)| a.minus(b)).collect(),
        seen: diff,
        mvcc: (mvcc_after.0 - mvcc_before.0, mvcc_after.1 - mvcc_before.1),
    })
}

/// `TcpExtListenOverflows` of a running container's network namespace (`/proc/<its pid>/net/netstat`).
fn container_listen_overflows(container: &str) -> Option<u64> {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", container]).ok()?;
    let netstat = std::fs::read_to_string(format!("/proc/{}/net/netstat", pid.trim())).ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn writes_part(ctx: &Ctx, lab: &mut Lab) -> Part {
    let s = ctx.s;
    let shared = lab.docker.create(&ctx.image, "shared", &web_script())?;
    docker(&["start", &shared])?;
    let mut client = ctx.client()?;
    let names: Vec<String> = (0..s.tenants).map(|i| format!("t{i}")).collect();
    let mut errors = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "#### 1. etcd writes, {} tenants all active on one shared running container, 3 replicas",
        s.tenants
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Load per replica: `wrk -t1 -c{} -d{}s`, Host rotated over all tenants in order; low rate: a `delay()` per \
         request aiming at a tenth of that replica's full rate. Counted from the load's start to 1 interval + \
         0.5 s after its end (its last publication included), rates ÷ the load's seconds D. Bound: keys ≤ \
         min(tenants × T, requests + connections × T), T = ⌈D ÷ interval⌉ + 1 intervals overlapped — one key \
         per tenant used per interval (two if a request was in flight at a publication), never one per request. Long-run bound: min(tenants, req/s × interval) ÷ interval keys/s, in transactions of ≤ \
         {ACTIVITY_TXN} keys.",
        s.connections, s.seconds
    );
    let _ = writeln!(md);
    for interval in &s.intervals {
        let iv = dur(interval);
        // A prefix per run: no status or activity key of another run.
        let prefix = format!("/lab-writes-{interval}/");
        let mut kvs = Vec::new();
        for n in &names {
            kvs.push((format!("{prefix}services/{n}"), service_json(&shared, ", \"idle_timeout\": \"0\"")));
            kvs.push((format!("{prefix}routes/{n}.bench.test"), route_json(n)));
        }
        ctx.rt.block_on(fill(&mut client, &kvs))?;
        let seen = ctx.rt.block_on(watch_activity(&mut client, &prefix))?;
        println!("  --activity-interval {interval}: starting 3 replicas");
        let spawned = Instant::now();
        let replicas = ctx.replicas(&prefix, &["n1", "n2", "n3"], &["--activity-interval", interval])?;
        let deadline = Instant::now() + Duration::from_secs(180);
        for r in &replicas {
            while count_in_state(r.admin, &names, "running") < names.len() {
                if Instant::now() > deadline {
                    let n = count_in_state(r.admin, &names, "running");
                    return Err(format!("{}: {n} of {} tenants running after 180 s", r.node, names.len()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let adopted = spawned.elapsed();
        std::thread::sleep(iv * 2 + Duration::from_secs(1));
        let startup: Vec<Counters> = replicas.iter().map(Counters::read).collect();
        let status_keys = ctx.rt.block_on(count_keys(&mut client, &format!("{prefix}status/")));
        println!("  full rate, {} s", s.seconds);
        let full = measure_window(ctx, &replicas, &seen, "full rate", None, iv, &shared)?;
        std::thread::sleep(Duration::from_secs(1));
        let delays: Vec<f64> = full
            .wrk
            .iter()
            .map(|w| {
                let rps = w.as_ref().map(|w| w.requests_per_sec).unwrap_or(100.0).max(1.0);
                s.connections as f64 * 1000.0 / (rps / 10.0)
            })
            .collect();
        println!("  low rate, {} s (delays {delays:.0?} ms)", s.seconds);
        let low = measure_window(ctx, &replicas, &seen, "low rate", Some(delays), iv, &shared)?;
        drop(replicas);

        let _ = writeln!(
            md,
            "`--activity-interval {interval}` (lease TTL 10 s): all {} tenants `running` on all 3 replicas {:.1} s \
             after spawn; status keys in etcd: {status_keys}. Startup writes per replica (spawn → first window, \
             {:.0} s): {}.",
            s.tenants,
            adopted.as_secs_f64(),
            (adopted + iv * 2 + Duration::from_secs(1)).as_secs_f64(),
            startup
                .iter()
                .enumerate()
                .map(|(k, c)| format!(
                    "n{} status txns {:.0} ({:.0} refused by a CAS conflict, {:.0} errors), activity txns {:.0}",
                    k + 1,
                    c.status_ok,
                    c.conflicts,
                    c.status_err,
                    c.activity_ok
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let _ = writeln!(md);
        let mut table = Table::new(
            "window | replica | req/s | wrk errors | activity txn/s (metric) | txn/s (etcd watch) | \
             keys/s (etcd watch) | keys (etcd watch) | bound: keys | publications | \
             keys per publication, mean / max | long-run bound keys/s | \
             status txns / activity errors / CAS conflicts",
            "llrrrrrrrrrrr",
        );
        let mut exceeded = false;
        // The largest publication of any replica, per window.
        let mut largest_of: [u64; 2] = [0, 0];
        for (wi, w) in [&full, &low].into_iter().enumerate() {
            for (k, r) in ["n1", "n2", "n3"].iter().enumerate() {
                let (rps, errs) = match &w.wrk[k] {
                    Ok(x) => (x.requests_per_sec, x.errors.to_string()),
                    Err(e) => {
                        errors.push(format!("wrk on {r} ({}): {}", w.label, e.lines().next().unwrap_or("")));
                        (f64::NAN, "wrk failed".into())
                    }
                };
                if let Ok(x) = &w.wrk[k] {
                    // Timeouts are reported with the container's listen overflows, not counted as failures.
                    if x.errors.total() > x.errors.timeout {
                        errors.push(format!("wrk on {r} ({}): {} errors", w.label, x.errors));
                    }
                }
                let c = &w.counters[k];
                let requests = w.wrk[k].as_ref().map_or(f64::NAN, |x| x.requests as f64);
                let intervals = (w.seconds / iv.as_secs_f64()).ceil() + 1.0;
                // A request in flight at a publication is written busy, then again once done.
                let bound = (s.tenants as f64 * intervals).min(requests + (s.connections as f64) * intervals);
                let long_run = (s.tenants as f64).min(rps * iv.as_secs_f64()) / iv.as_secs_f64();
                let keys = w.seen.keys(r);
                if keys as f64 > bound {
                    exceeded = true;
                    errors.push(format!("{r} ({}): {keys} activity keys written, bound {bound:.0}", w.label));
                }
                let sizes = w.seen.publications(r, iv / 2);
                let publications = sizes.len();
                let kpp = keys as f64 / publications.max(1) as f64;
                let largest = sizes.iter().copied().max().unwrap_or(0);
                largest_of[wi] = largest_of[wi].max(largest);
                table.row([
                    w.label.to_string(),
                    r.to_string(),
                    format!("{rps:.0}"),
                    errs,
                    format!("{:.2}", c.activity_ok / w.seconds),
                    format!("{:.2}", w.seen.txns(r) as f64 / w.seconds),
                    format!("{:.0}", keys as f64 / w.seconds),
                    keys.to_string(),
                    format!("{bound:.0}"),
                    publications.to_string(),
                    format!("{kpp:.0} / {largest}"),
                    format!("{long_run:.0}"),
                    format!("{:.0} / {:.0} / {:.0}", c.status_ok + c.status_err, c.activity_err, c.conflicts),
                ]);
            }
        }
        md.push_str(&table.to_string());
        let _ = writeln!(md);
        for w in [&full, &low] {
            let total_rps: f64 = w.wrk.iter().filter_map(|x| x.as_ref().ok()).map(|x| x.requests_per_sec).sum();
            let _ = writeln!(
                md,
                "- {}: load {:.1} s, {total_rps:.0} req/s in all; the shared container's `TcpExtListenOverflows` \
                 +{}; etcd's own counters (load + 1 interval + 0.5 s): `etcd_mvcc_put_total` +{:.0} ({:.0}/s of \
                 load), `etcd_mvcc_txn_total` +{:.0} ({:.1}/s) — every writer (lease keep-alives are not puts).",
                w.label,
                w.seconds,
                w.overflows.map_or("?".into(), |n| n.to_string()),
                w.mvcc.0,
                w.mvcc.0 / w.seconds,
                w.mvcc.1,
                w.mvcc.1 / w.seconds
            );
        }
        let keys = |w: &Window| ["n1", "n2", "n3"].iter().map(|n| w.seen.keys(n) as f64 / w.seconds).sum::<f64>();
        let reqs = |w: &Window| w.wrk.iter().filter_map(|x| x.as_ref().ok()).map(|x| x.requests_per_sec).sum::<f64>();
        let _ = writeln!(
            md,
            "- keys/s ÷ req/s: full {:.3}, low {:.3}; requests fell {:.1}×, keys written {:.1}×.\n- Goal (writes \
             bounded by the tenants changed per interval, not by requests): **{}** — {}; the largest \
             publication of any replica: {} keys at full rate, {} at low rate, for {} tenants.",
            keys(&full) / reqs(&full),
            keys(&low) / reqs(&low),
            reqs(&full) / reqs(&low),
            keys(&full) / keys(&low),
            if exceeded { "not met" } else { "met" },
            if exceeded {
                "a replica wrote more keys than the bound (see the failures)"
            } else {
                "no replica wrote more keys than the bound in either window"
            },
            largest_of[0],
            largest_of[1],
            s.tenants
        );
        let _ = writeln!(md);
    }
    Ok((md, errors))
}

// ---------------------------------------------------------------------------------------------------------
// 2. Failover

struct FailoverRound {
    killed: String,
    via: String,
    kill_to_die: Option<Duration>,
    kill_to_decider: Option<Duration>,
    resp_to_kill: Duration,
    next: String,
    stopped_by: String,
}

fn failover_part(ctx: &Ctx, lab: &mut Lab) -> Part {
    let s = ctx.s;
    let container = lab.docker.create(&ctx.image, "failover", &web_script())?;
    lab.events.push(DockerEvents::watch(&container)?);
    let events = lab.events.last().unwrap();
    let mut client = ctx.client()?;
    let mut errors = Vec::new();
    let mut md = String::new();
    let idle = Duration::from_secs(1);
    let _ = writeln!(md, "#### 2. Failover of the decider, 3 replicas, tenant `idle_timeout = \"1s\"`");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Each round: `GET /` (a cold start) through a replica that does not decide, then at once SIGKILL the \
         decider. kill→die = from just before the SIGKILL to the container's Docker `die` event; it holds the dead \
         lease running out, the decider key taken by another replica, its idle check, the stop claim, the 250 ms \
         stop veto and `docker stop`. Goal per round: ≤ TTL + 1 s + the idle time left at the kill (1 s − \
         response→kill)."
    );
    let _ = writeln!(md);
    let mut table = Table::new(
        "lease TTL | rounds | kill→die median | max | kill→new decider median | max | goal met (rounds)",
        "lrrrrrr",
    );
    let mut detail = String::new();
    for ttl_text in &s.ttls {
        let ttl = dur(ttl_text);
        let prefix = format!("/lab-failover-{}/", ttl_text.replace(' ', ""));
        ctx.rt.block_on(fill(
            &mut client,
            &[
                (format!("{prefix}services/fo"), service_json(&container, ", \"idle_timeout\": \"1s\"")),
                (format!("{prefix}routes/fo.bench.test"), route_json("fo")),
            ],
        ))?;
        println!("  --lease-ttl {ttl_text}");
        let mut replicas = ctx.replicas(&prefix, &["n1", "n2", "n3"], &["--lease-ttl", ttl_text])?;
        let mut rounds = Vec::new();
        for round in 0..s.failover_rounds {
            // Three live replicas, a decider, the tenant stopped everywhere.
            let deadline = Instant::now() + Duration::from_secs(60) + ttl * 3;
            let boss = loop {
                let members = ctx.rt.block_on(count_keys(&mut client, &format!("{prefix}cluster/replicas/")));
                let boss = ctx.rt.block_on(get_value(&mut client, &format!("{prefix}cluster/decider")));
                if let (3, Some(b)) = (members, boss) {
                    break b;
                }
                if Instant::now() > deadline {
                    return Err(format!("round {round}: {members} replica keys, no decider"));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if docker_state(&container) == "running" {
                return Err(format!("round {round}: the container is still running"));
            }
            wait_all(&replicas, "fo", "stopped")?;
            let b = replicas.iter().position(|r| r.node == boss).ok_or(format!("decider {boss:?} unknown"))?;
            let v = replicas.iter().position(|r| r.node != boss).unwrap();
            let t_before = SystemTime::now();
            ctx.rt.block_on(ttfb(replicas[v].http, "fo.bench.test"))?;
            let t_resp = SystemTime::now();
            let t_kill = replicas[b].kill();
            let decider_key = format!("{prefix}cluster/decider");
            let (next, kill_to_decider) = ctx.rt.block_on(async {
                let limit = Instant::now() + ttl * 3 + Duration::from_secs(30);
                loop {
                    if let Some(n) = get_value(&mut client, &decider_key).await.filter(|n| *n != boss) {
                        return (n, t_kill.elapsed().ok());
                    }
                    if Instant::now() > limit {
                        return (String::new(), None);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let die = events.wait("die", t_kill, ttl * 3 + Duration::from_secs(30));
            let kill_to_die = die.and_then(|d| d.duration_since(t_kill).ok());
            if die.is_none() {
                errors.push(format!("TTL {ttl_text} round {round}: no die event"));
            }
            if events.count("die", t_before) > 1 || events.count("start", t_before) != 1 {
                errors.push(format!(
                    "TTL {ttl_text} round {round}: {} start and {} die events",
                    events.count("start", t_before),
                    events.count("die", t_before)
                ));
            }
            let status_key = format!("{prefix}status/fo");
            let mut stopped_by = String::new();
            let limit = Instant::now() + Duration::from_secs(10);
            while Instant::now() < limit {
                let v = ctx.rt.block_on(get_value(&mut client, &status_key)).unwrap_or_default();
                let j: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
                if j["state"] == "stopped" {
                    stopped_by = j["node"].as_str().unwrap_or("").to_string();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            println!(
                "    round {round}: killed {boss} after a request via {}; kill→die {:?}, kill→decider {next} {:?}",
                replicas[v].node, kill_to_die, kill_to_decider
            );
            rounds.push(FailoverRound {
                killed: boss.clone(),
                via: replicas[v].node.clone(),
                kill_to_die,
                kill_to_decider,
                resp_to_kill: t_kill.duration_since(t_resp).unwrap_or_default(),
                next,
                stopped_by,
            });
            replicas[b].spawn()?;
        }
        drop(replicas);
        let die: Vec<f64> = rounds.iter().filter_map(|r| r.kill_to_die).map(us).collect();
        let dec: Vec<f64> = rounds.iter().filter_map(|r| r.kill_to_decider).map(us).collect();
        let met = rounds
            .iter()
            .filter(|r| {
                let goal = ttl + Duration::from_secs(1) + idle.saturating_sub(r.resp_to_kill);
                r.kill_to_die.is_some_and(|d| d <= goal)
            })
            .count();
        table.row([
            ttl_text.to_string(),
            rounds.len().to_string(),
            format_us(median(&die)),
            format_us(percentile(&die, 100.0)),
            format_us(median(&dec)),
            format_us(percentile(&dec, 100.0)),
            format!("{met} of {}", rounds.len()),
        ]);
        let per: Vec<String> = rounds
            .iter()
            .map(|r| {
                format!(
                    "killed {} (request via {}, response→kill {}): new decider {} after {}, die after {}, stopped by {}",
                    r.killed,
                    r.via,
                    ms(r.resp_to_kill),
                    r.next,
                    r.kill_to_decider.map_or("—".into(), ms),
                    r.kill_to_die.map_or("—".into(), ms),
                    r.stopped_by
                )
            })
            .collect();
        let _ = writeln!(detail, "- TTL {ttl_text}: {}", per.join("; "));
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    md.push_str(&detail);
    Ok((md, errors))
}

// ---------------------------------------------------------------------------------------------------------
// 3. Cold start through the replica that does not start it

#[derive(Default)]
struct ColdRound {
    a: Option<Duration>,
    b: Option<Duration>,
    direct: Option<Duration>,
    /// Who claimed the start: "A", "B", "both", "none".
    claimed: String,
    starts: usize,
}

fn cold_part(ctx: &Ctx, lab: &mut Lab) -> Part {
    let s = ctx.s;
    let prefix = "/lab-cold/";
    let container = lab.docker.create(&ctx.image, "cold", &web_script())?;
    lab.events.push(DockerEvents::watch(&container)?);
    let events = lab.events.last().unwrap();
    let mut client = ctx.client()?;
    ctx.rt.block_on(fill(
        &mut client,
        &[
            (format!("{prefix}services/cold"), service_json(&container, ", \"idle_timeout\": \"0\"")),
            (format!("{prefix}routes/cold.bench.test"), route_json("cold")),
        ],
    ))?;
    let dock = ctx
        .rt
        .block_on(DockerRuntime::connect(None, Duration::from_secs(10)))
        .map_err(|e| format!("cannot connect to Docker: {e}"))?;
    let replicas = ctx.replicas(prefix, &["n1", "n2"], &[])?;
    let (a, b) = (&replicas[0], &replicas[1]);
    wait_all(&replicas, "cold", "stopped")?;
    let mut errors = Vec::new();
    let mut rounds: Vec<ColdRound> = Vec::new();
    let ensure_stopped = || -> Result<(), String> {
        if replicas.iter().any(|r| service_state(r.admin, "cold").as_deref() != Some("stopped")) {
            post_sleep(a.admin, "cold")?;
        }
        wait_all(&replicas, "cold", "stopped")?;
        let info = ctx.rt.block_on(dock.inspect(&container, None)).map_err(|e| format!("inspect: {e}"))?;
        if info.state != ContainerState::Stopped {
            return Err(format!("reveille says stopped, Docker says {:?}", info.state));
        }
        std::thread::sleep(SETTLE);
        Ok(())
    };
    let mut phases_before = (phase_totals(a.admin), phase_totals(b.admin));
    for round in 0..s.cold_warmup + s.cold_rounds {
        if round == s.cold_warmup {
            phases_before = (phase_totals(a.admin), phase_totals(b.admin));
        }
        let mut r = ColdRound::default();
        let direct_first = round % 2 == 0;
        for step in 0..2 {
            ensure_stopped()?;
            if (step == 0) == direct_first {
                let measured = ctx.rt.block_on(direct_start(&dock, &container));
                let stopped = ctx.rt.block_on(dock.stop(&container, Some(Duration::from_secs(5))));
                match measured {
                    Ok(d) => r.direct = Some(d.total),
                    Err(e) => errors.push(format!("round {round} direct: {e}")),
                }
                stopped.map_err(|e| format!("stop: {e}"))?;
                wait_all(&replicas, "cold", "stopped")?;
            } else {
                let claims = (a.log_count(CLAIM_LINE), b.log_count(CLAIM_LINE));
                let since = SystemTime::now();
                let (ra, rb) = ctx.rt.block_on(async {
                    let first = tokio::spawn(ttfb(a.http, "cold.bench.test"));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let second = ttfb(b.http, "cold.bench.test").await;
                    (first.await.unwrap_or_else(|e| Err(format!("task: {e}"))), second)
                });
                match ra {
                    Ok(d) => r.a = Some(d),
                    Err(e) => errors.push(format!("round {round} A: {e}")),
                }
                match rb {
                    Ok(d) => r.b = Some(d),
                    Err(e) => errors.push(format!("round {round} B: {e}")),
                }
                // The start event precedes the responses; give the events reader a moment.
                std::thread::sleep(Duration::from_millis(200));
                r.starts = events.count("start", since);
                if r.starts != 1 {
                    errors.push(format!("round {round}: {} Docker start events", r.starts));
                }
                let now = (a.log_count(CLAIM_LINE), b.log_count(CLAIM_LINE));
                r.claimed = match (now.0 - claims.0, now.1 - claims.1) {
                    (1, 0) => "A".into(),
                    (0, 1) => "B".into(),
                    (0, 0) => "none".into(),
                    (x, y) => format!("A {x}, B {y}"),
                };
            }
        }
        println!("    round {round}: direct {:?}, A {:?}, B {:?}, claimed by {}", r.direct, r.a, r.b, r.claimed);
        if round >= s.cold_warmup {
            rounds.push(r);
        }
    }
    let phases =
        (phase_means(&phases_before.0, &phase_totals(a.admin)), phase_means(&phases_before.1, &phase_totals(b.admin)));
    let wakes_b = sample(&b.metrics(), "reveille_wakes_total", &[("service", "cold"), ("result", "ok")]);
    drop(replicas);

    let direct: Vec<f64> = rounds.iter().filter_map(|r| r.direct).map(us).collect();
    let a_started: Vec<&ColdRound> = rounds.iter().filter(|r| r.claimed == "A").collect();
    let b_non: Vec<f64> = a_started.iter().filter_map(|r| r.b).map(us).collect();
    let a_starter: Vec<f64> = a_started.iter().filter_map(|r| r.a).map(us).collect();
    let b_all: Vec<f64> = rounds.iter().filter_map(|r| r.b).map(us).collect();
    let overhead_b = median(&b_non) - median(&direct);
    let overhead_a = median(&a_starter) - median(&direct);
    let mut md = String::new();
    let _ = writeln!(md, "#### 3. Cold start through a replica that does not start the container (A, B)");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "{} rounds after {} warm-up, order alternating; through the cluster: `GET /` to A, 1 ms later to B, each \
         timed from its own connect to its response head. Claims (`{CLAIM_LINE}` in the logs): {}. Docker `start` \
         events per round: {}.",
        s.cold_rounds,
        s.cold_warmup,
        count_claims(&rounds),
        rounds.iter().map(|r| r.starts.to_string()).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(md);
    let mut table = Table::new(&format!("path | {TIMING_COLUMNS}"), &format!("l{TIMING_ALIGN}"));
    for (path, v) in [
        ("direct: Docker start → inspect → first TCP connect", &direct),
        ("B, not the starter (rounds A claimed)", &b_non),
        ("A, the starter (rounds A claimed)", &a_starter),
        ("B, every round", &b_all),
    ] {
        table.row(timing_row(path, v));
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    let verdict = |o: f64| {
        if o.is_nan() {
            "not measured"
        } else if o <= 15_000.0 {
            "met"
        } else {
            "not met"
        }
    };
    let _ = writeln!(
        md,
        "Overhead of B (median B − median direct): **{}**; goal ≤ 15 ms: **{}**. Overhead of A, the starter: {}.",
        format_us(overhead_b),
        verdict(overhead_b),
        format_us(overhead_a)
    );
    let _ = writeln!(md);
    let fmt_phases = |p: &[(&'static str, f64, f64)]| {
        p.iter()
            .filter(|(_, _, n)| *n > 0.0)
            .map(|(name, mean, n)| format!("{name} {} ({n:.0})", format_us(mean * 1e6)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md,
        "`reveille_wake_phase_seconds` means over the counted rounds (count): A: {}; B: {}. B's \
         `reveille_wakes_total{{service=\"cold\",result=\"ok\"}}` at the end: {}.",
        or_none(fmt_phases(&phases.0)),
        or_none(fmt_phases(&phases.1)),
        wakes_b.map_or("absent".into(), |v| format!("{v:.0}"))
    );
    let _ = writeln!(md);
    let per: Vec<String> = rounds
        .iter()
        .map(|r| {
            let f = |d: Option<Duration>| d.map_or("failed".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
            format!("{}/{}/{}({})", f(r.direct), f(r.a), f(r.b), r.claimed)
        })
        .collect();
    let _ = writeln!(md, "Per round, ms, direct/A/B(claimed by): {}", per.join(" "));
    Ok((md, errors))
}

fn count_claims(rounds: &[ColdRound]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in rounds {
        match counts.iter_mut().find(|(k, _)| *k == r.claimed) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.claimed.clone(), 1)),
        }
    }
    counts.iter().map(|(k, n)| format!("{k} in {n} round(s)")).collect::<Vec<_>>().join(", ")
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------------------
// 4. Wake from pause against wake from stop

fn wake_part(ctx: &Ctx, lab: &mut Lab) -> Part {
    let s = ctx.s;
    let prefix = "/lab-wake/";
    let pz = lab.docker.create(&ctx.image, "pause", &web_script())?;
    let st = lab.docker.create(&ctx.image, "stop", &web_script())?;
    lab.events.push(DockerEvents::watch(&pz)?);
    lab.events.push(DockerEvents::watch(&st)?);
    let n = lab.events.len();
    let (ev_pz, ev_st) = (&lab.events[n - 2], &lab.events[n - 1]);
    let mut client = ctx.client()?;
    ctx.rt.block_on(fill(
        &mut client,
        &[
            (
                format!("{prefix}services/pz"),
                service_json(&pz, ", \"idle_timeout\": \"0\", \"idle_action\": \"pause\""),
            ),
            (format!("{prefix}services/st"), service_json(&st, ", \"idle_timeout\": \"0\"")),
            (format!("{prefix}routes/pz.bench.test"), route_json("pz")),
            (format!("{prefix}routes/st.bench.test"), route_json("st")),
        ],
    ))?;
    let replicas = ctx.replicas(prefix, &["n1"], &[])?;
    let r = &replicas[0];
    let since = SystemTime::now();
    let mut errors = Vec::new();
    // Per kind: TTFB µs, phase (sum, count) deltas.
    let kinds = [("pz", "paused"), ("st", "stopped")];
    let mut times: [Vec<f64>; 2] = Default::default();
    let mut phase_sums: [Vec<(f64, f64)>; 2] = [vec![(0.0, 0.0); 4], vec![(0.0, 0.0); 4]];
    for round in 0..s.wake_rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let (name, asleep) = kinds[k];
            let host = format!("{name}.bench.test");
            if service_state(r.admin, name).as_deref() != Some("running") {
                ctx.rt.block_on(ttfb(r.http, &host))?;
                wait_state(r.admin, name, "running")?;
            }
            post_sleep(r.admin, name)?;
            wait_state(r.admin, name, asleep)?;
            std::thread::sleep(SETTLE);
            let before = phase_totals(r.admin);
            match ctx.rt.block_on(ttfb(r.http, &host)) {
                Ok(d) => times[k].push(us(d)),
                Err(e) => errors.push(format!("round {round} {name}: {e}")),
            }
            let after = phase_totals(r.admin);
            for (i, ((s0, c0), (s1, c1))) in before.iter().zip(&after).enumerate() {
                phase_sums[k][i].0 += s1 - s0;
                phase_sums[k][i].1 += c1 - c0;
            }
        }
    }
    let unpauses = ev_pz.count("unpause", since);
    let pz_starts = ev_pz.count("start", since);
    let st_starts = ev_st.count("start", since);
    drop(replicas);
    let mut md = String::new();
    let _ = writeln!(md, "#### 4. Wake from pause against wake from stop, one replica (etcd)");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "{} rounds; each: running → `POST /api/services/<name>/sleep` → `paused` / `stopped` in `GET \
         /api/services` → 300 ms → `GET /` on a new connection, timed to the response head.",
        s.wake_rounds
    );
    let _ = writeln!(md);
    let header = format!("wake from | {TIMING_COLUMNS} | phases (mean)");
    let mut table = Table::new(&header, &format!("l{TIMING_ALIGN}l"));
    for (k, label) in ["pause (`idle_action = \"pause\"`)", "stop"].iter().enumerate() {
        let phases: Vec<String> = PHASES
            .iter()
            .zip(&phase_sums[k])
            .filter(|(_, (_, c))| *c > 0.0)
            .map(|(p, (sum, c))| format!("{p} {}", format_us(sum / c * 1e6)))
            .collect();
        let mut row = timing_row(label, &times[k]).to_vec();
        row.push(or_none(phases.join(", ")));
        table.row(row);
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Docker events during the rounds (first wakes included): `pz` unpause {unpauses}, start {pz_starts}; `st` \
         start {st_starts}. Median stop ÷ pause: {:.1}×.",
        median(&times[1]) / median(&times[0])
    );
    Ok((md, errors))
}
