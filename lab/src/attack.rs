//! Attack lab: what hostile clients and a stalling backend do to a bystander's requests through reveille, with
//! the slow-client and stalled-backend protections off (reveille's old behaviour) and on.
//!
//! Run with `cargo run --release -p reveille-lab -- attack`. Needs `taskset`; without it, it says so and exits
//! 0. Only 127.0.0.1 is used. `REVEILLE_BIN` selects the reveille binary (see [`crate::reveille_bin`]): to
//! compare two builds, run the lab once with each (`ATTACK_PROTECTIONS=ON`), e.g. a build from before a fix
//! against one after it; the report names the binary and its version.
//!
//! # Method
//!
//! reveille runs on CPU `ATTACK_PROXY_CPU` (0, `taskset`, `--threads 1`), with `--max-connections
//! ATTACK_MAX_CONNECTIONS` (500; the lingering attacks set their own), no access log, its soft `RLIMIT_NOFILE`
//! raised to 65536 (or the hard limit). Everything else is this process, pinned to CPU `ATTACK_CLIENT_CPU` (1):
//! the attackers (one tokio task each), the bystanders, and the backends. The tenants:
//! - `app.attack.test`, a fast backend (testkit's hyper server on its own thread, `TCP_NODELAY`, 200 with a
//!   3-byte body); it reads a request's body before it answers, as an application does (one that answered a
//!   `POST` at once would end the stalled uploads of attack 1 itself);
//! - `stall.attack.test`, a backend that answers with `Content-Length: 100000`, sends 10 bytes of the body and
//!   then holds the connection without a word;
//! - `workers.attack.test`, a backend with exactly 2 workers that each serve one connection at a time, one
//!   request each, `Connection: close` (like sync gunicorn), reading the whole body before answering;
//! - `big.attack.test`, a backend with `ATTACK_H2_WORKERS` workers (0 = a task per connection) that each serve
//!   one connection at a time, one request each, `Connection: close`: `GET /` gets 200 with a 3-byte body, any
//!   other path an endless body (`Content-Length: 1000000000`, written as fast as it is taken). By default it
//!   has as many workers as the h2 attackers may open streams: with fewer, some attacking streams wait in its
//!   backlog and a bystander on that tenant waits behind them whatever reveille does; with more, the spare
//!   workers serve the bystander whatever reveille does; with exactly as many, the attackers hold every
//!   worker for as long as reveille lets them, which is what the h2 attacks measure;
//! - `nobody.attack.test` has no route: reveille answers 404 without reading the request's body, and closes by
//!   lingering (it reads and drops what the client still sends, for a while, before it closes the socket).
//!
//! The backends with their own tenant (stall, workers, big) listen with a backlog of 2048 (gunicorn's default).
//!
//! Each attack runs once per protection in `ATTACK_PROTECTIONS` (`OFF,ON`), each time against a new reveille
//! (and new backends, but the fast one):
//! - **OFF**: `--body-timeout 1000h --min-body-rate 0 --request-buffer-size 0 --upstream-read-timeout 1000h
//!   --send-timeout 1000h --overload-timeout 0`, i.e. reveille before these protections;
//! - **ON**: the defaults, except `--body-timeout` and `--upstream-read-timeout`, whose 60 s defaults would not
//!   fire within the run: both are `ATTACK_TIMEOUT` (5 s); for the h2 attacks, `--send-timeout` too.
//!   `--min-body-rate` (240 B/s after 5 s), `--request-buffer-size` (65536) and `--overload-timeout` (2 s,
//!   once fewer than a tenth of the slots are free) keep their defaults, as does `--send-timeout` elsewhere
//!   (60 s). No flag is passed that an older reveille lacks, so `REVEILLE_BIN` may name one.
//!
//! A run: reveille is started and ready (`/readyz` and a `GET /` on the healthy tenant answer 200). **Baseline**:
//! the bystander alone for `ATTACK_BASELINE` (5) seconds. Then the attackers start, all at once; they are in
//! place when reveille's `reveille_open_connections` reaches min(attackers, max connections) (for the h2
//! attacks: when the big tenant's backend has a connection for every stream the attackers may open), at most
//! 10 s; the time it took is reported. **Attack**: the bystander again, with the attackers, for
//! `ATTACK_SECONDS` (12) seconds. Then the attackers are dropped (their connections closed) and reveille is
//! killed.
//!
//! The bystander: per tenant it uses, `ATTACK_BYSTANDERS` (4) clients, each starting a `GET /` with
//! `Connection: close` on a NEW connection (testkit's hyper client) every `ATTACK_INTERVAL_MS` (50) ms, whether
//! or not its previous requests have ended (open loop: the requests sample the phase evenly in time, and a
//! stuck request does not slow the sampling down). A new connection each time because a kept-alive connection
//! already holds its slot and is not blocked by `--max-connections`. Each request has
//! `ATTACK_BYSTANDER_TIMEOUT` (2) seconds, connecting included. A phase counts the requests started in it, and
//! waits for them to end (at most that long more).
//!
//! The attacks (every attacker reconnects as soon as its connection is closed, so the attack is steady):
//! 1. **Stalled uploads** (`stalled-uploads`): `ATTACK_STALLED_UPLOADS` (600) attackers each send `POST /` to
//!    the healthy tenant with `Content-Length: 100000` and one body byte, then nothing. The bystander uses the
//!    healthy tenant.
//! 2. **Backend stalling mid-body** (`stalling-backend`): `ATTACK_STALLED_DOWNLOADS` (600) attackers each send
//!    `GET /` to the stalling tenant and read what comes. The bystander uses the healthy tenant.
//! 3. **Slow uploads against a 2-worker backend** (`slow-uploads`): `ATTACK_SLOW_UPLOADS` (1000) attackers each
//!    send `POST /` to the two-worker tenant with `Content-Length: 1000` and one body byte, then one more byte
//!    every `ATTACK_TRICKLE` (2) seconds. The bystander uses the SAME tenant.
//! 4. **Lingering uploads, a burst** (`lingering-burst`): `ATTACK_LINGERING_BURST` (60) attackers against
//!    `--max-connections ATTACK_LINGERING_BURST_SLOTS` (20). Each sends `POST /upload` to the unrouted host
//!    with `Content-Length: 100000000` and one body byte, then one byte every `ATTACK_LINGERING_TRICKLE` (3)
//!    seconds (within the 5 s a linger waits for the client's next bytes), and goes on after reveille's 404 and
//!    FIN, until a write fails (reveille closed the socket for good); then it connects again. The bystander
//!    uses the healthy tenant.
//! 5. **Lingering uploads, sustained** (`lingering-sustained`): the same with `ATTACK_LINGERING_SUSTAINED`
//!    (300) attackers against `ATTACK_LINGERING_SUSTAINED_SLOTS` (200) slots.
//! 6. **h2 client that opens no window** (`h2-zero-window`): `ATTACK_H2_CONNECTIONS` (2) HTTP/2 connections
//!    (prior knowledge, cleartext; the `h2` crate's client, which releases flow-control capacity only when told
//!    to, and is never told), each opening `ATTACK_H2_STREAMS` (128) streams `GET /big` to the big tenant. What
//!    comes is read from the socket (so the socket stays writable) but no window is ever opened: past the first
//!    65,535 bytes of the connection, reveille may send nothing more. A stream that ends is not replaced; the
//!    connection is kept until reveille closes it, then the attacker connects again and opens its streams
//!    again. Bystanders on the healthy tenant AND on the big tenant (`GET /`, which needs one of its workers).
//! 7. **The same, renewing its streams** (`h2-zero-window-renew`): as 6, but each stream that ends (reset by
//!    reveille, say) is replaced at once by a new one, as a hostile client would: the per-stream send timeout
//!    bounds how long one stream holds a backend connection, not how many a client keeps.
//!
//! # What the numbers mean
//!
//! Per attack, a table with a row per phase, protection and bystander tenant:
//! - *bystander requests*: requests the bystander started in the phase;
//! - *success*: the share of them that got a 200 within the bystander timeout;
//! - *p50*, *p99*, *max*: latency (request sent on a new connection → whole response read) of the successful
//!   requests only (nearest rank), "n/a" when none succeeded;
//! - *failures*: the others, as `timeout` (no whole answer in time), `error` (connection refused, reset or
//!   closed early) or their status;
//! - *reveille conns*: the median of reveille's `reveille_open_connections` gauge, read every 500 ms during
//!   the phase (the attackers' connections and the bystander's being served; those waiting in the listen
//!   backlog are not counted);
//! - *backend conns*: for an attack with a backend of its own, the median (and maximum) of the established
//!   TCP connections to it, read from `/proc/net/tcp` with the gauge: those its workers serve and those waiting
//!   in its listen backlog alike (reveille has opened both, and holds both), the bystander's included;
//! - *endless bodies*: for the h2 attacks, the median (and maximum) of the big tenant's connections being sent
//!   the endless body: the backend connections (and workers) the attackers hold. Under the table, how that
//!   figure changed over the attack phase (when each stream is released shows there, not in a median).
//!
//! Under each table, per protection, what the attackers saw: the connections they opened, and how those that
//! ended ended (the status of the answer, or "no answer"; for the stalling backend, a 200 that ended means a
//! response cut mid-body, since that backend never finishes one; for h2, the streams opened and how they
//! ended), and how long they took to be in place; reveille's `reveille_upstream_errors_total` by kind over the
//! run; and its shed, evicted, and send-timeout counters ("absent": that reveille has no such counter).
//!
//! Memory per held connection (attacks 1 and 3): reveille's `VmRSS` (testkit procfs), median of the samples
//! taken with the gauge, with the bystander alone (baseline) and with the attackers (attack); connections held
//! = median gauge during the attack − median gauge during the baseline; KiB per held connection = the RSS
//! difference ÷ connections held. RSS includes what the allocator keeps, so this is an estimate, not an exact
//! per-connection size.
//!
//! The report goes to stdout and to `target/attack-bench.md`. Environment: `ATTACK_BASELINE` (5),
//! `ATTACK_SECONDS` (12), `ATTACK_TIMEOUT` (5, seconds), `ATTACK_MAX_CONNECTIONS` (500), `ATTACK_BYSTANDERS`
//! (4), `ATTACK_INTERVAL_MS` (50), `ATTACK_BYSTANDER_TIMEOUT` (2, seconds), `ATTACK_STALLED_UPLOADS` (600),
//! `ATTACK_STALLED_DOWNLOADS` (600), `ATTACK_SLOW_UPLOADS` (1000), `ATTACK_TRICKLE` (2, seconds),
//! `ATTACK_LINGERING_BURST` (60), `ATTACK_LINGERING_BURST_SLOTS` (20), `ATTACK_LINGERING_SUSTAINED` (300),
//! `ATTACK_LINGERING_SUSTAINED_SLOTS` (200), `ATTACK_LINGERING_TRICKLE` (3, seconds), `ATTACK_H2_CONNECTIONS`
//! (2), `ATTACK_H2_STREAMS` (128), `ATTACK_H2_WORKERS` (connections × min(streams, 128)), `ATTACK_ATTACKS` (all:
//! `stalled-uploads,stalling-backend,slow-uploads,lingering-burst,lingering-sustained,h2-zero-window,
//! h2-zero-window-renew`), `ATTACK_PROTECTIONS` (`OFF,ON`), `ATTACK_PROXY_CPU` (0), `ATTACK_CLIENT_CPU` (1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use testkit::backend::{accept, serve_few_workers, serve_stalling, start_backend};
use testkit::env::{choose, env_at_least, env_or};
use testkit::machine::{cpu_model, git_revision, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::process::read_log;
use testkit::procfs::{established_to, nofile_limit, proc_status, status_kib};
use testkit::prometheus::sample;
use testkit::report::{heading, print_log, write_report, Table};
use testkit::stats::{counts, format_us, median, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::onecore::{self, pin_all_threads, Lab};

const HEALTHY: &str = "app.attack.test";
const STALL: &str = "stall.attack.test";
const WORKERS: &str = "workers.attack.test";
/// The tenant whose backend answers [`ENDLESS_PATH`] with an endless body.
const BIG: &str = "big.attack.test";
/// A host with no route: reveille answers 404 without reading the request's body.
const UNROUTED: &str = "nobody.attack.test";
/// The path the big tenant's backend answers with an endless body.
const ENDLESS_PATH: &str = "/big";
/// The `Content-Length` of that body.
const ENDLESS_LENGTH: u64 = 1_000_000_000;
/// The healthy backend's answer.
const BODY: &[u8] = b"ok\n";
/// Time a read of reveille's `/metrics` has.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often reveille's gauge and RSS are read during a phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for the attackers to be in place.
const PLACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers of the two-worker backend.
const WORKER_COUNT: usize = 2;
/// The listen backlog of the backends with their own tenant: gunicorn's default, room for every connection
/// reveille may open to them (std's and tokio's 128 would make reveille's connects time out).
const BACKEND_BACKLOG: u32 = 2048;
/// Bytes the stalling backend sends of its 100,000-byte body.
const STALL_SENT: usize = 10;
/// The streams reveille lets one h2 connection open (its `--h2-max-concurrent-streams` default, and the fixed
/// figure of reveille before that flag).
const REVEILLE_H2_STREAMS: usize = 128;
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
/// A sample's labels: (name, value) pairs.
type Labels = &'static [(&'static str, &'static str)];
/// Counters reported per run: a label, the metric, its labels. A reveille without one reports it "absent".
const COUNTERS: [(&str, &str, Labels); 4] = [
    ("shed", "reveille_connections_shed_total", &[]),
    ("evicted", "reveille_connections_evicted_total", &[]),
    ("stream send timeouts", "reveille_send_timeouts_total", &[("kind", "stream")]),
    ("connection send timeouts", "reveille_send_timeouts_total", &[("kind", "connection")]),
];
const ATTACK_NAMES: [&str; 7] = [
    "stalled-uploads",
    "stalling-backend",
    "slow-uploads",
    "lingering-burst",
    "lingering-sustained",
    "h2-zero-window",
    "h2-zero-window-renew",
];
const PROTECTION_NAMES: [&str; 2] = ["OFF", "ON"];

/// Runs the lab; false if a measurement failed.
pub(crate) fn main() -> bool {
    let Some([taskset]) = onecore::find_tools("attack", ["taskset"]) else {
        return true;
    };
    let s = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let bin = crate::reveille_bin();
    let reveille = version(Command::new(bin).arg("--version"));
    let machine =
        format!("{} × {}; {reveille} (`{}`; the lab at {})", nproc(), cpu_model(), bin.display(), git_revision());
    let date = utc_date();
    if !pin_all_threads("attack", &taskset, s.client_cpu) {
        return true;
    }
    let healthy = start_backend(BODY);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("{}", describe(&s));
    let mut runs = Vec::new();
    for &attack in &s.attacks {
        for &protection in &s.protections {
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
    /// `--body-timeout` and `--upstream-read-timeout` of the ON runs (and `--send-timeout` for h2).
    timeout: Duration,
    max_connections: usize,
    bystanders: usize,
    interval: Duration,
    bystander_timeout: Duration,
    stalled_uploads: usize,
    stalled_downloads: usize,
    slow_uploads: usize,
    trickle: Duration,
    lingering_burst: usize,
    lingering_burst_slots: usize,
    lingering_sustained: usize,
    lingering_sustained_slots: usize,
    lingering_trickle: Duration,
    h2_connections: usize,
    h2_streams: usize,
    h2_workers: usize,
    attacks: Vec<Attack>,
    protections: Vec<Protection>,
    proxy_cpu: usize,
    client_cpu: usize,
}

impl Settings {
    fn from_env() -> Self {
        let secs = |name: &str, default: u64| Duration::from_secs(env_at_least(name, default, 1));
        let h2_connections = env_or("ATTACK_H2_CONNECTIONS", 2);
        let h2_streams = env_at_least("ATTACK_H2_STREAMS", 128, 1);
        Self {
            baseline: secs("ATTACK_BASELINE", 5),
            attack: secs("ATTACK_SECONDS", 12),
            timeout: secs("ATTACK_TIMEOUT", 5),
            max_connections: env_at_least("ATTACK_MAX_CONNECTIONS", 500, 1),
            bystanders: env_at_least("ATTACK_BYSTANDERS", 4, 1),
            interval: Duration::from_millis(env_or("ATTACK_INTERVAL_MS", 50)),
            bystander_timeout: secs("ATTACK_BYSTANDER_TIMEOUT", 2),
            stalled_uploads: env_or("ATTACK_STALLED_UPLOADS", 600),
            stalled_downloads: env_or("ATTACK_STALLED_DOWNLOADS", 600),
            slow_uploads: env_or("ATTACK_SLOW_UPLOADS", 1000),
            trickle: secs("ATTACK_TRICKLE", 2),
            lingering_burst: env_or("ATTACK_LINGERING_BURST", 60),
            lingering_burst_slots: env_at_least("ATTACK_LINGERING_BURST_SLOTS", 20, 1),
            lingering_sustained: env_or("ATTACK_LINGERING_SUSTAINED", 300),
            lingering_sustained_slots: env_at_least("ATTACK_LINGERING_SUSTAINED_SLOTS", 200, 1),
            lingering_trickle: secs("ATTACK_LINGERING_TRICKLE", 3),
            h2_connections,
            h2_streams,
            h2_workers: env_or("ATTACK_H2_WORKERS", h2_connections * h2_streams.min(REVEILLE_H2_STREAMS)),
            attacks: choose("ATTACK_ATTACKS", &ATTACK_NAMES).into_iter().map(Attack::named).collect(),
            protections: choose("ATTACK_PROTECTIONS", &PROTECTION_NAMES).into_iter().map(Protection::named).collect(),
            proxy_cpu: env_or("ATTACK_PROXY_CPU", 0),
            client_cpu: env_or("ATTACK_CLIENT_CPU", 1),
        }
    }

    /// Descriptors this process may need at once: every attacker's connection, the backend's side of as many
    /// (the stalling backend holds one per attacker reveille forwards; the big tenant's, one per h2 stream),
    /// the bystanders', and some spare.
    fn fds_needed(&self) -> u64 {
        let attackers = [
            self.stalled_uploads,
            self.stalled_downloads,
            self.slow_uploads,
            self.lingering_burst,
            self.lingering_sustained,
            self.h2_connections * (self.h2_streams.min(REVEILLE_H2_STREAMS) + 1),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        (attackers + self.max_connections.max(self.lingering_sustained_slots) + 2 * self.bystanders + 200) as u64
    }
}

fn describe(s: &Settings) -> String {
    format!(
        "reveille `--max-connections {} --threads 1` (the lingering attacks: {} and {}) on CPU {}; attackers, \
         bystanders and backends on CPU {}; baseline {} s, attack {} s",
        s.max_connections,
        s.lingering_burst_slots,
        s.lingering_sustained_slots,
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
    LingeringBurst,
    LingeringSustained,
    H2ZeroWindow,
    H2ZeroWindowRenew,
}

impl Attack {
    const ALL: [Self; 7] = [
        Self::StalledUploads,
        Self::StallingBackend,
        Self::SlowUploads,
        Self::LingeringBurst,
        Self::LingeringSustained,
        Self::H2ZeroWindow,
        Self::H2ZeroWindowRenew,
    ];

    fn named(name: &str) -> Self {
        let i = ATTACK_NAMES.iter().position(|n| *n == name).expect("a known attack");
        Self::ALL[i]
    }

    fn name(self) -> &'static str {
        ATTACK_NAMES[Self::ALL.iter().position(|a| *a == self).expect("listed")]
    }

    /// Attacking tasks: HTTP/1.1 connections, or h2 connections for the h2 attacks.
    fn attackers(self, s: &Settings) -> usize {
        match self {
            Self::StalledUploads => s.stalled_uploads,
            Self::StallingBackend => s.stalled_downloads,
            Self::SlowUploads => s.slow_uploads,
            Self::LingeringBurst => s.lingering_burst,
            Self::LingeringSustained => s.lingering_sustained,
            Self::H2ZeroWindow | Self::H2ZeroWindowRenew => s.h2_connections,
        }
    }

    fn h2(self) -> bool {
        matches!(self, Self::H2ZeroWindow | Self::H2ZeroWindowRenew)
    }

    /// reveille's `--max-connections` for this attack.
    fn max_connections(self, s: &Settings) -> usize {
        match self {
            Self::LingeringBurst => s.lingering_burst_slots,
            Self::LingeringSustained => s.lingering_sustained_slots,
            _ => s.max_connections,
        }
    }

    /// The report's heading for this attack.
    fn title(self, s: &Settings) -> String {
        let n = self.attackers(s);
        let slots = self.max_connections(s);
        let lingering = |what: &str| {
            format!(
                "{what}: {n} attackers against `--max-connections {slots}`, each `POST` to an unrouted host (404 \
                 unread, lingering close) with `Content-Length: 100000000`, one body byte, then one every {} s, \
                 going on after the 404 and FIN until a write fails, then reconnecting; bystander on the healthy \
                 tenant",
                s.lingering_trickle.as_secs()
            )
        };
        let zero_window = |what: &str, streams: &str| {
            format!(
                "{what}: {n} h2 connections (prior knowledge), each with {} streams `GET {ENDLESS_PATH}` of an \
                 endless body, never opening a window; {streams}; the backend has {} workers; bystanders on the \
                 healthy tenant and on the same tenant (`GET /`)",
                s.h2_streams,
                match s.h2_workers {
                    0 => "unbounded".to_string(),
                    w => w.to_string(),
                }
            )
        };
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
            Self::LingeringBurst => lingering("4. Lingering uploads, a burst"),
            Self::LingeringSustained => lingering("5. Lingering uploads, sustained"),
            Self::H2ZeroWindow => zero_window(
                "6. h2 client that opens no window",
                "a stream that ends is not replaced, the connection is kept until reveille closes it",
            ),
            Self::H2ZeroWindowRenew => zero_window(
                "7. h2 client that opens no window, renewing its streams",
                "a stream that ends is replaced at once",
            ),
        }
    }

    /// The tenants the bystander uses.
    fn bystander_hosts(self) -> &'static [&'static str] {
        match self {
            Self::SlowUploads => &[WORKERS],
            Self::H2ZeroWindow | Self::H2ZeroWindowRenew => &[HEALTHY, BIG],
            _ => &[HEALTHY],
        }
    }

    /// What each HTTP/1.1 attacker sends (the h2 attackers have their own code: [`h2_attacker`]).
    fn plan(self, s: &Settings) -> Plan {
        let (request, trickle, after_close) = match self {
            Self::StalledUploads => {
                (format!("POST / HTTP/1.1\r\nHost: {HEALTHY}\r\nContent-Length: 100000\r\n\r\nx"), None, false)
            }
            Self::StallingBackend => (format!("GET / HTTP/1.1\r\nHost: {STALL}\r\n\r\n"), None, false),
            Self::SlowUploads => (
                format!("POST / HTTP/1.1\r\nHost: {WORKERS}\r\nContent-Length: 1000\r\n\r\nx"),
                Some((s.trickle, 999)),
                false,
            ),
            _ => (
                format!("POST /upload HTTP/1.1\r\nHost: {UNROUTED}\r\nContent-Length: 100000000\r\n\r\nx"),
                Some((s.lingering_trickle, usize::MAX)),
                true,
            ),
        };
        Plan { request: request.into_bytes(), trickle, after_close }
    }

    /// Memory per held connection is reported for these.
    fn memory(self) -> bool {
        matches!(self, Self::StalledUploads | Self::SlowUploads)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    Off,
    On,
}

impl Protection {
    fn named(name: &str) -> Self {
        if name == PROTECTION_NAMES[0] {
            Self::Off
        } else {
            Self::On
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Off => PROTECTION_NAMES[0],
            Self::On => PROTECTION_NAMES[1],
        }
    }

    fn flags(self, s: &Settings, attack: Attack) -> Vec<String> {
        match self {
            Self::Off => OFF_FLAGS.iter().map(|f| f.to_string()).collect(),
            Self::On => {
                let t = format!("{}s", s.timeout.as_secs());
                let mut flags = vec!["--body-timeout".into(), t.clone(), "--upstream-read-timeout".into(), t.clone()];
                if attack.h2() {
                    flags.extend(["--send-timeout".into(), t]);
                }
                flags
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
            "{:<20} {:<3}  baseline {}  attack {}  attackers in place {}",
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
    let backend = start_attack_backend(rt, s, attack);
    if let Some(b) = &backend {
        routes.push((b.host, b.port));
    }
    let mut lab = Lab::new("reveille-attack-");
    let [http, admin] = free_ports();
    let mut cmd = onecore::reveille(&lab, taskset, s.proxy_cpu, &routes, http, admin);
    cmd.args(["--max-connections", &attack.max_connections(s).to_string()]).args(protection.flags(s, attack));
    let (pid, log) = lab.start("reveille", cmd, || {
        onecore::get(admin, "127.0.0.1", "/readyz").is_some_and(|(status, _)| status == 200)
            && onecore::get(http, HEALTHY, "/").is_some_and(|(status, _)| status == 200)
    });
    let reveille = Reveille { pid, http: SocketAddr::from(([127, 0, 0, 1], http)), admin };
    let measured = rt.block_on(measure(s, &reveille, attack, backend.as_ref()));
    let nofile = nofile_limit(&pid.to_string());
    let log = read_log(&log);
    drop(lab);
    if let Some(b) = backend {
        b.task.abort();
    }
    Run { attack, protection, measured, nofile, log }
}

/// An attack's own backend, running on this lab's runtime.
struct AttackBackend {
    host: &'static str,
    port: u16,
    /// Abort it to stop the backend, which also ends its connections.
    task: JoinHandle<()>,
    /// The big tenant's: connections being sent the endless body.
    endless: Option<Arc<AtomicUsize>>,
}

/// The attack's own backend (stalling, two-worker or big), if it has one.
fn start_attack_backend(rt: &Runtime, s: &Settings, attack: Attack) -> Option<AttackBackend> {
    let host = match attack {
        Attack::StallingBackend => STALL,
        Attack::SlowUploads => WORKERS,
        Attack::H2ZeroWindow | Attack::H2ZeroWindowRenew => BIG,
        Attack::StalledUploads | Attack::LingeringBurst | Attack::LingeringSustained => return None,
    };
    let listener = rt
        .block_on(async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(BACKEND_BACKLOG)
        })
        .expect("listen for a backend");
    let port = listener.local_addr().unwrap().port();
    let (task, endless) = match host {
        STALL => (rt.spawn(serve_stalling(listener, STALL_SENT, None)), None),
        WORKERS => (rt.spawn(serve_few_workers(listener, WORKER_COUNT)), None),
        _ => {
            let endless = Arc::new(AtomicUsize::new(0));
            (rt.spawn(serve_endless(listener, s.h2_workers, endless.clone())), Some(endless))
        }
    };
    Some(AttackBackend { host, port, task, endless })
}

/// The big tenant's backend: `workers` workers (0: a task per connection), each serving one connection at a
/// time, one request each, `Connection: close`. `GET /` gets 200 with a 3-byte body; any other path an endless
/// body, written as fast as it is taken until the connection fails; `endless` counts the connections being sent
/// one. Runs until the future is dropped, which also ends the connections.
async fn serve_endless(listener: TcpListener, workers: usize, endless: Arc<AtomicUsize>) {
    let listener = Arc::new(listener);
    let mut set = JoinSet::new();
    if workers == 0 {
        loop {
            while set.try_join_next().is_some() {}
            let stream = accept(&listener).await;
            set.spawn(serve_endless_one(stream, endless.clone()));
        }
    } else {
        for _ in 0..workers {
            let (listener, endless) = (listener.clone(), endless.clone());
            set.spawn(async move {
                loop {
                    serve_endless_one(accept(&listener).await, endless.clone()).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// One connection of [`serve_endless`].
async fn serve_endless_one(mut stream: TcpStream, endless: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if head.len() + n > 64 * 1024 => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // "GET /big HTTP/1.1"
    let path = head.split(|b| *b == b' ').nth(1).unwrap_or_default();
    if path == b"/" {
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", BODY.len());
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.write_all(BODY).await;
        return;
    }
    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {ENDLESS_LENGTH}\r\nConnection: close\r\n\r\n");
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b'z'; 64 * 1024];
    endless.fetch_add(1, Ordering::Relaxed);
    while stream.write_all(&chunk).await.is_ok() {}
    endless.fetch_sub(1, Ordering::Relaxed);
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
        match tokio::time::timeout(METRICS_TIMEOUT, metrics).await {
            Ok(Ok(resp)) => String::from_utf8_lossy(resp.body()).into_owned(),
            _ => String::new(),
        }
    }

    /// `reveille_open_connections` and `VmRSS` (KiB), now.
    async fn sample(&self) -> (Option<f64>, Option<u64>) {
        let open = sample(&self.metrics().await, "reveille_open_connections", &[]);
        (open, status_kib(&proc_status(self.pid), "VmRSS:"))
    }

    /// `reveille_upstream_errors_total` by kind so far, e.g. "3 (connect_refused 3)", and [`COUNTERS`], e.g.
    /// "shed 12, evicted 10, stream send timeouts absent, ...".
    async fn counters(&self) -> (String, String) {
        let text = self.metrics().await;
        let parts: Vec<_> = UPSTREAM_ERROR_KINDS
            .iter()
            .map(|&kind| {
                (kind, sample(&text, "reveille_upstream_errors_total", &[("kind", kind)]).unwrap_or(0.0) as u64)
            })
            .collect();
        let others: Vec<_> = COUNTERS
            .iter()
            .map(|(label, name, labels)| match sample(&text, name, labels) {
                Some(v) => format!("{label} {v:.0}"),
                None => format!("{label} absent"),
            })
            .collect();
        (counts(&parts), others.join(", "))
    }
}

/// Baseline, attackers in place, attack phase; the attackers are dropped before it returns. The connections of
/// the attack's own backend, if any, are counted.
async fn measure(s: &Settings, reveille: &Reveille, attack: Attack, backend: Option<&AttackBackend>) -> Measured {
    let hosts = attack.bystander_hosts();
    let baseline = phase(s, reveille, hosts, s.baseline, backend).await;

    let n = attack.attackers(s);
    let tally = Arc::new(Tallies::default());
    let mut attackers = JoinSet::new();
    let started = Instant::now();
    if attack.h2() {
        let renew = attack == Attack::H2ZeroWindowRenew;
        for _ in 0..n {
            attackers.spawn(h2_attacker(reveille.http, s.h2_streams, renew, tally.clone()));
        }
    } else {
        let plan = Arc::new(attack.plan(s));
        for _ in 0..n {
            attackers.spawn(attacker(reveille.http, plan.clone(), tally.clone()));
        }
    }
    let in_place = loop {
        let placed = match backend.filter(|_| attack.h2()) {
            Some(b) => {
                let want = n * s.h2_streams.min(REVEILLE_H2_STREAMS);
                established_to(b.port).is_some_and(|open| open >= want)
            }
            None => {
                let want = n.min(attack.max_connections(s)) as f64;
                reveille.sample().await.0.is_some_and(|open| open >= want)
            }
        };
        if placed {
            break Some(started.elapsed());
        }
        if started.elapsed() > PLACE_TIMEOUT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attack_phase = phase(s, reveille, hosts, s.attack, backend).await;
    let (upstream_errors, counters) = reveille.counters().await;
    attackers.shutdown().await;
    Measured { baseline, attack_phase, in_place, attackers: tally.snapshot(), upstream_errors, counters }
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
    /// [`COUNTERS`] at the end of the attack phase.
    counters: String,
}

// ---------------------------------------------------------------------------------------------------------
// The bystander

/// What the bystander saw on one tenant in one phase.
#[derive(Default)]
struct Seen {
    requests: usize,
    /// Latencies of the successful requests, µs.
    ok_us: Vec<f64>,
    /// The failed requests, by how they failed.
    failures: BTreeMap<String, u64>,
}

impl Seen {
    fn success_pct(&self) -> f64 {
        self.ok_us.len() as f64 / self.requests.max(1) as f64 * 100.0
    }

    fn failures(&self) -> String {
        let parts: Vec<(&str, u64)> = self.failures.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        counts(&parts)
    }
}

/// What the bystander saw in one phase, per tenant, and reveille's state meanwhile.
#[derive(Default)]
struct Phase {
    seen: Vec<(&'static str, Seen)>,
    /// `reveille_open_connections` samples.
    open: Vec<f64>,
    /// `VmRSS` samples, KiB.
    rss_kib: Vec<f64>,
    /// Established connections to the attack's own backend.
    backend: Vec<f64>,
    /// The big tenant's backend: connections being sent the endless body.
    endless: Vec<f64>,
    /// The same, with the time of each sample (seconds into the phase).
    endless_at: Vec<(f64, f64)>,
}

impl Phase {
    fn summary(&self) -> String {
        let per_host: Vec<_> = self
            .seen
            .iter()
            .map(|(host, seen)| {
                format!(
                    "{}: {:>4} req {:>5.1}% ok p99 {:>9}",
                    host.split('.').next().unwrap_or(host),
                    seen.requests,
                    seen.success_pct(),
                    format_us(percentile(&seen.ok_us, 99.0))
                )
            })
            .collect();
        per_host.join("; ")
    }

    /// "median (max)" of the backend connections, and of those being sent the endless body; "–" if not
    /// counted.
    fn backend(&self) -> (String, String) {
        let show = |v: &[f64]| {
            if v.is_empty() {
                "–".to_string()
            } else {
                format!("{:.0} (max {:.0})", median(v), percentile(v, 100.0))
            }
        };
        (show(&self.backend), show(&self.endless))
    }

    /// How the endless bodies went over the phase: "256 from 0.0 s, 16 from 10.2 s, 0 from 15.5 s".
    fn endless_changes(&self) -> String {
        let mut changes = Vec::new();
        let mut last = None;
        for &(at, n) in &self.endless_at {
            if last != Some(n) {
                changes.push(format!("{n:.0} from {at:.1} s"));
                last = Some(n);
            }
        }
        changes.join(", ")
    }
}

/// One request's outcome: its latency, or how it failed.
type Outcome = Result<Duration, String>;

/// Runs the bystander on each of `hosts` for `length` while sampling reveille (and `backend`, if any).
async fn phase(
    s: &Settings,
    reveille: &Reveille,
    hosts: &[&'static str],
    length: Duration,
    backend: Option<&AttackBackend>,
) -> Phase {
    let start = Instant::now();
    let until = start + length;
    let clients: Vec<(&'static str, Vec<_>)> = hosts
        .iter()
        .map(|&host| {
            let clients = (0..s.bystanders)
                .map(|_| tokio::spawn(bystander(reveille.http, host, s.interval, s.bystander_timeout, until)))
                .collect();
            (host, clients)
        })
        .collect();
    let mut p = Phase::default();
    while Instant::now() < until {
        let (open, rss) = reveille.sample().await;
        p.open.extend(open);
        p.rss_kib.extend(rss.map(|k| k as f64));
        p.backend.extend(backend.and_then(|b| established_to(b.port)).map(|n| n as f64));
        if let Some(n) = backend.and_then(|b| b.endless.as_ref()) {
            let n = n.load(Ordering::Relaxed) as f64;
            p.endless.push(n);
            p.endless_at.push((start.elapsed().as_secs_f64(), n));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    for (host, clients) in clients {
        let mut seen = Seen::default();
        for client in clients {
            for outcome in client.await.expect("bystander task") {
                seen.requests += 1;
                match outcome {
                    Ok(latency) => seen.ok_us.push(latency.as_secs_f64() * 1e6),
                    Err(why) => *seen.failures.entry(why).or_default() += 1,
                }
            }
        }
        p.seen.push((host, seen));
    }
    p
}

/// One bystander client: starts a request every `interval` until `until`, each on a new connection, whether
/// or not the previous ones have ended, each with `timeout`; returns when all have ended.
async fn bystander(
    addr: SocketAddr,
    host: &'static str,
    interval: Duration,
    timeout: Duration,
    until: Instant,
) -> Vec<Outcome> {
    let mut requests = JoinSet::new();
    let mut next = Instant::now();
    while next < until {
        requests.spawn(async move {
            let sent = Instant::now();
            let response = testkit::http::send_close(addr, "GET", host, "/");
            match tokio::time::timeout(timeout, response).await {
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

/// What an HTTP/1.1 attacker sends on each connection.
struct Plan {
    /// The request head and the first body bytes.
    request: Vec<u8>,
    /// Then one more body byte every so often, this many times.
    trickle: Option<(Duration, usize)>,
    /// The trickle goes on after the server's FIN, until a write fails (else the attacker stops when the
    /// server closes).
    after_close: bool,
}

/// What the attackers saw, counted as it happens.
#[derive(Default)]
struct Tallies {
    opened: AtomicU64,
    connect_errors: AtomicU64,
    /// h2 streams opened.
    streams: AtomicU64,
    /// Ended HTTP/1.1 connections by the status of their answer ("no answer": none came); ended h2 streams by
    /// how they ended, and "connection closed".
    ended: Mutex<BTreeMap<String, u64>>,
}

impl Tallies {
    fn snapshot(&self) -> Tally {
        Tally {
            opened: self.opened.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            ended: self.ended.lock().unwrap().clone(),
        }
    }

    fn ended(&self, how: impl Into<String>) {
        *self.ended.lock().unwrap().entry(how.into()).or_default() += 1;
    }
}

/// What the attackers saw in a run.
struct Tally {
    opened: u64,
    connect_errors: u64,
    streams: u64,
    ended: BTreeMap<String, u64>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.ended.values().sum();
        let ended: Vec<_> = self.ended.iter().map(|(how, n)| format!("{how} ×{n}")).collect();
        write!(f, "{} connections opened", self.opened)?;
        if self.streams > 0 {
            write!(f, ", {} streams opened", self.streams)?;
        }
        write!(f, ", {total} ended")?;
        if !ended.is_empty() {
            write!(f, " ({})", ended.join(", "))?;
        }
        if self.connect_errors > 0 {
            write!(f, ", {} failed connects", self.connect_errors)?;
        }
        Ok(())
    }
}

/// One HTTP/1.1 attacker: connects, sends its plan, holds the connection until the server closes it, and starts
/// over, until its task is dropped.
async fn attacker(addr: SocketAddr, plan: Arc<Plan>, tally: Arc<Tallies>) {
    loop {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let status = hold(&mut stream, &plan).await;
        tally.ended(match status {
            0 => "no answer".to_string(),
            s => s.to_string(),
        });
    }
}

/// Sends `plan` on `stream` and reads until the server closes it (and, with `after_close`, trickles on until a
/// write fails): the status of the answer, 0 if none came.
async fn hold(stream: &mut TcpStream, plan: &Plan) -> u16 {
    let mut head = Vec::new();
    if stream.write_all(&plan.request).await.is_err() {
        return 0;
    }
    let (every, mut left) = plan.trickle.unwrap_or((Duration::from_secs(1), 0));
    let mut next = Instant::now() + every;
    let mut buf = [0u8; 4096];
    let mut closed = false;
    loop {
        tokio::select! {
            read = stream.read(&mut buf), if !closed => match read {
                Ok(0) | Err(_) if plan.after_close && left > 0 => closed = true,
                Ok(0) | Err(_) => return status_of(&head),
                Ok(n) => head.extend_from_slice(&buf[..n.min(16usize.saturating_sub(head.len()))]),
            },
            _ = tokio::time::sleep_until(next), if left > 0 => {
                if stream.write_all(b"x").await.is_err() {
                    return status_of(&head);
                }
                left -= 1;
                if closed && left == 0 {
                    return status_of(&head);
                }
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

/// One h2 attacker: a prior-knowledge h2 connection with `streams` streams `GET /big` on the big tenant, whose
/// bodies it takes from the socket without ever releasing flow-control capacity (the `h2` crate opens no
/// window unless told to). With `renew`, a stream that ends is replaced at once; without, the connection is
/// kept, with what streams remain, until reveille closes it. Then it connects again, until its task is
/// dropped.
async fn h2_attacker(addr: SocketAddr, streams: usize, renew: bool, tally: Arc<Tallies>) {
    loop {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let Ok((sender, connection)) = h2::client::handshake(tcp).await else {
            tally.ended("connection closed in the handshake");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut open = JoinSet::new();
        for _ in 0..streams {
            open.spawn(h2_stream(sender.clone(), renew, tally.clone()));
        }
        // `sender` is kept: with no stream left and no sender, the client would close the connection itself.
        let _ = connection.await;
        drop(sender);
        open.shutdown().await;
        tally.ended("connection closed");
    }
}

/// One stream of [`h2_attacker`], and its replacements with `renew`.
async fn h2_stream(mut sender: h2::client::SendRequest<Bytes>, renew: bool, tally: Arc<Tallies>) {
    loop {
        sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(_) => return,
        };
        let request = hyper::Request::get(format!("http://{BIG}{ENDLESS_PATH}")).body(()).expect("a request");
        let Ok((response, _)) = sender.send_request(request, true) else { return };
        tally.streams.fetch_add(1, Ordering::Relaxed);
        let how = match response.await {
            Ok(response) => {
                let status = response.status().as_u16();
                let mut body = response.into_body();
                // Data frames are taken from the connection, their capacity never released: no window opens.
                loop {
                    match body.data().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) if e.is_reset() => break format!("{status}, then reset"),
                        Some(Err(_)) => break format!("{status}, then an error"),
                        None => break format!("{status}, ended"),
                    }
                }
            }
            Err(e) if e.is_reset() => "reset before the head".to_string(),
            Err(_) => "error before the head".to_string(),
        };
        tally.ended(how);
        if !renew {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// The markdown report; `machine` is the CPUs, reveille's version, binary and the lab's commit.
fn report(date: &str, machine: &str, s: &Settings, runs: &[Run]) -> String {
    let mut md = heading("Attack lab", date);
    let _ = writeln!(md, "- CPU: {machine}");
    let _ = writeln!(md, "- {}", describe(s));
    let _ = writeln!(md, "- OFF (reveille before the protections): `{}`", OFF_FLAGS.join(" "));
    let _ = writeln!(
        md,
        "- ON: defaults, except `{}` (and `--send-timeout {}s` for the h2 attacks): the 60 s defaults would not \
         fire within a {} s attack, so they are shortened to {} s (`--min-body-rate 240` after 5 s, \
         `--request-buffer-size 65536`, `--overload-timeout 2s` and, but for h2, `--send-timeout 60s` are the \
         defaults)",
        Protection::On.flags(s, Attack::StalledUploads).join(" "),
        s.timeout.as_secs(),
        s.attack.as_secs(),
        s.timeout.as_secs()
    );
    let _ = writeln!(
        md,
        "- bystander: {} clients per tenant, each starting a `GET` with `Connection: close` on a new connection \
         every {} ms (open loop), {} s per request; success = 200 within that; p50/p99/max of the successful \
         requests",
        s.bystanders,
        s.interval.as_millis(),
        s.bystander_timeout.as_secs()
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
        let mut table = Table::new(
            "phase | protection | bystander tenant | bystander requests | success | p50 | p99 | max | \
             failures | reveille conns | backend conns | endless bodies",
            "lllrrrrrlrrr",
        );
        let of_attack: Vec<_> = runs.iter().filter(|r| r.attack == attack).collect();
        for r in &of_attack {
            for (name, p) in [("baseline", &r.measured.baseline), ("attack", &r.measured.attack_phase)] {
                let (backend, endless) = p.backend();
                for (host, seen) in &p.seen {
                    table.row([
                        name.to_string(),
                        r.protection.name().to_string(),
                        host.to_string(),
                        seen.requests.to_string(),
                        format!("{:.1}%", seen.success_pct()),
                        format_us(percentile(&seen.ok_us, 50.0)),
                        format_us(percentile(&seen.ok_us, 99.0)),
                        format_us(percentile(&seen.ok_us, 100.0)),
                        seen.failures().to_string(),
                        format!("{:.0}", median(&p.open)),
                        backend.to_string(),
                        endless.to_string(),
                    ]);
                }
            }
        }
        md.push_str(&table.to_string());
        let _ = writeln!(md);
        for r in &of_attack {
            let m = &r.measured;
            let _ = writeln!(
                md,
                "- {}: attackers: {}; in place {}. reveille's upstream errors: {}; {}",
                r.protection.name(),
                m.attackers,
                describe_in_place(m.in_place),
                m.upstream_errors,
                m.counters
            );
            if !m.attack_phase.endless_at.is_empty() {
                let _ = writeln!(
                    md,
                    "  - endless bodies over the attack phase (sampled every {} ms or so): {}",
                    SAMPLE_EVERY.as_millis(),
                    m.attack_phase.endless_changes()
                );
            }
        }
    }

    let memory: Vec<_> = runs.iter().filter(|r| r.attack.memory() && r.protection == Protection::On).collect();
    if !memory.is_empty() {
        let _ = writeln!(md, "\n#### Memory per held connection (ON)\n");
        let mut table = Table::new(
            "attack | RSS, bystander alone | RSS, attack | connections held | KiB per held connection",
            "lrrrr",
        );
        for r in memory {
            let m = &r.measured;
            let (alone, under) = (median(&m.baseline.rss_kib), median(&m.attack_phase.rss_kib));
            let held = median(&m.attack_phase.open) - median(&m.baseline.open);
            table.row([
                r.attack.name().to_string(),
                format!("{:.1} MiB", alone / 1024.0),
                format!("{:.1} MiB", under / 1024.0),
                format!("{held:.0}"),
                format!("{:.1}", (under - alone) / held),
            ]);
        }
        md.push_str(&table.to_string());
    }
    md
}
