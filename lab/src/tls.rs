//! TLS benchmark: reveille against nginx, each a one-core TLS-terminating reverse proxy in front of the same
//! backend, with the same certificate: new (full) TLS handshakes per second, and requests per second over TLS
//! keep-alive connections. A third proxy, `reveille-acme`, is reveille with ACME on and the certificate stored
//! where ACME keeps it: its handshakes must cost what a directory certificate's do (`TLS_PROXIES` chooses).
//!
//! Run with `cargo run --release -p reveille-lab -- tls`. Needs `wrk`, `nginx` and `taskset`; without them it says which is
//! missing and exits 0. Only 127.0.0.1 is used.
//!
//! Layout, as in the `load` lab, on a machine with at least two CPUs:
//!
//! - CPU 0 (`TLS_PROXY_CPU`): the proxy under test, started with `taskset -c 0`, single-threaded
//!   (`--threads 1`; `worker_processes 1` with `master_process off`).
//! - CPU 1 (`TLS_CLIENT_CPU`): the clients (`wrk -t1` started with `taskset -c 1`, and this process's own
//!   handshake client) and the backend, a hyper HTTP/1.1 server on its own thread in this process answering
//!   every request 200 with a fixed 100-byte body. This process pins all of its threads to that CPU
//!   (`taskset -a -cp 1 <pid>`) before starting any.
//!
//! The certificate: at start, rcgen makes a CA and an ECDSA P-256 leaf it signs, for `bench.test` and the IP
//! address 127.0.0.1. Both proxies serve the same files: the chain (leaf + CA, so the Certificate message has
//! the size of a usual leaf + intermediate chain) and the key. reveille reads them from `--certs DIR` (as
//! `bench.crt` and `bench.key`) and is started with `--default-cert bench`, because wrk sends the URL's host as
//! SNI and cannot be sent to 127.0.0.1 with another name (it resolves the URL's host itself): its SNI is
//! "127.0.0.1", which rustls ignores (an IP address is not a valid SNI name), so reveille answers with its
//! default certificate; nginx's only server is its `default_server`. nginx: `ssl_protocols TLSv1.2 TLSv1.3`,
//! HTTP/2 on the same listener, `ssl_session_cache shared:SSL:10m` and session tickets on, like reveille's
//! in-memory session cache and ticketer; `keepalive_requests 1000000` (nginx closes a keep-alive connection
//! after 1000 requests by default, reveille does not); no access log on either.
//!
//! Two measurements per proxy per round:
//!
//! 1. Full handshakes per second (`full`): not wrk. wrk (4.1, OpenSSL) with `Connection: close` reconnects
//!    for every request, but it resumes the TLS session on every reconnection (checked with nginx's
//!    `$ssl_session_reused`: all but the first connection of each wrk connection slot were resumed), and
//!    reveille has no switch to turn resumption off on the server side. So this process has its own client: a
//!    single-threaded tokio runtime with `TLS_HANDSHAKE_CONCURRENCY` (50) tasks, each opening a TCP
//!    connection, doing a full handshake with rustls (ring provider; resumption disabled on the client, so every
//!    handshake is a full one: each is checked with `handshake_kind()`), with SNI `bench.test` and ALPN
//!    `http/1.1`, sending `GET /` with `Host: bench.test` and `Connection: close`, reading the response to the
//!    end (the proxy closes), then starting over. The rate is completed exchanges (each a new connection with a
//!    full handshake and one request) per second; "conn p99" is the 99th percentile of connect + handshake +
//!    request + response. For reveille the bench also reads `reveille_tls_handshakes_total` and
//!    `reveille_tls_handshake_failures_total` before and after each run, to check the server counted the same
//!    handshakes. The TLS version is `TLS_VERSION` (`1.3`; or `1.2`).
//!
//!    The client must not be the limit, and on two cores it easily is: with all checks, its half of a
//!    handshake (X25519, the key schedule, and the ECDSA P-256 verification of the server's CertificateVerify,
//!    about a third of its CPU) costs about as much as the proxy's half, and the backend shares its core. So
//!    under load it pins the leaf certificate (the proxy must present exactly it; no path building) and does
//!    not check the CertificateVerify signature (`TLS_CLIENT_VERIFY=1` checks it). The proxy's work is the same
//!    either way: it signs every handshake. The probe before the measurements, and the readiness checks, do
//!    check the signature.
//!
//!    With `resumed` in `TLS_MEASURE`, a third measurement does the same with resumption on (TLS 1.3 tickets,
//!    or TLS 1.2 tickets / session ids). Each task has its own session store, as each browser has: rustls keeps
//!    at most 8 TLS 1.3 tickets per server name in a store, and 50 tasks sharing one ran out of tickets when
//!    many reconnected at once. The stores live from the warm-up to the end, so only the warm-up's first
//!    connection of each task is a full handshake.
//! 2. Requests per second over TLS keep-alive connections (`keepalive`): `wrk -t1 -c50 -d<secs>s --latency
//!    -H 'Host: bench.test' https://127.0.0.1:<port>/`. wrk offers no ALPN, so it is HTTP/1.1 over TLS; its
//!    OpenSSL 3 negotiates TLS 1.3, TLS_AES_256_GCM_SHA384, X25519 with both proxies. Its SNI "127.0.0.1"
//!    is ignored by rustls (which only warns about it, and reveille keeps rustls's warnings out of its log).
//!
//! After a warm-up of each measurement per proxy, the proxies are measured in turn, interleaved (reveille,
//! nginx, reveille, ...), so slow drift on a shared machine hits both alike. The tables show medians over the
//! rounds; the report is printed and written to `target/tls-bench.md`. The proxy's CPU use and both CPUs' load
//! are recorded for every run, and the rate per second of the proxy's CPU time ("per proxy CPU-second", what
//! one fully busy core would do). If the client's CPU is saturated while the proxy's is not, the client is the
//! limit and the report says so.
//!
//! Environment: `TLS_ROUNDS` (5), `TLS_SECONDS` (8), `TLS_WARMUP` (2, seconds per proxy and measurement),
//! `TLS_CONNECTIONS` (50, wrk's connections), `TLS_HANDSHAKE_CONCURRENCY` (50), `TLS_VERSION` (`1.3`),
//! `TLS_CLIENT_VERIFY` (0), `TLS_MEASURE` (`full,keepalive`; `resumed` can be added), `TLS_PROXIES`
//! (`reveille,nginx`), `TLS_PROXY_CPU` (0), `TLS_CLIENT_CPU` (1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::HandshakeKind;
use testkit::backend::start_backend;
use testkit::env::{env_or, list};
use testkit::machine::{cpu_model, first_line_matching, locked_version, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::process::read_log;
use testkit::procfs::clock_ticks_per_sec;
use testkit::report::{heading, print_log, write_report};
use testkit::stats::{format_us, median, percentile};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

use crate::onecore::{self, describe_usage, pin_all_threads, pinned, Lab, NginxSite, Rounds, Usage};
use crate::tlsclient::{exchange, handshake_load, BenchCert, Clients, Errors, Target};

/// The name in the certificate, the SNI of the handshake client and the `Host` of every request.
const HOST: &str = "bench.test";

/// The certificate's name in reveille's certificates directory (`bench.crt`, `bench.key`).
const CERT_NAME: &str = "bench";

/// The backend's answer to every request: exactly 100 bytes (the array type checks the length).
const BODY: &[u8; 100] =
    b"reveille TLS bench: a fixed response body from the upstream backend, one hundred bytes in all......\n";

/// `reveille-acme`: reveille with ACME on (`[acme] hosts = "all"`, a CA that is never contacted) and the
/// certificate stored as ACME stores it (`acme-bench.test.pem`): a handshake for a name whose ACME certificate
/// is stored must cost what a directory certificate's costs.
const PROXY_NAMES: [&str; 3] = ["reveille", "nginx", "reveille-acme"];

/// Runs the lab; false if a measurement failed.
pub(crate) fn main() -> bool {
    let Some(tools) = Tools::find() else {
        return true;
    };
    let settings = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let machine = Machine::describe(&tools);
    if !pin_all_threads("tls", &tools.taskset, settings.client_cpu) {
        return true;
    }
    // The runtime of the handshake client: this (pinned) thread, nothing else.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    let backend = start_backend(BODY);
    let mut lab = Lab::new("reveille-tls-");
    let cert = BenchCert::generate(HOST);
    let certs_dir = lab.path("certs");
    std::fs::create_dir_all(&certs_dir).unwrap();
    let chain_path = certs_dir.join(format!("{CERT_NAME}.crt"));
    let key_path = certs_dir.join(format!("{CERT_NAME}.key"));
    std::fs::write(&chain_path, &cert.chain_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let clients = Clients::new(&cert, settings.tls13, settings.check_signatures);
    let bench = Bench { rt: &rt, clients: &clients, tools: &tools, s: &settings };

    let ports: [u16; 4] = free_ports();
    let acme_ports: [u16; 4] = free_ports();
    let mut proxies = Vec::new();
    for name in &settings.proxies {
        let proxy = match *name {
            "reveille" => bench.start_reveille(&mut lab, backend, ports),
            "reveille-acme" => bench.start_reveille_acme(&mut lab, backend, acme_ports, &cert),
            _ => bench.start_nginx(&mut lab, backend, ports[3], &chain_path, &key_path),
        };
        proxies.push(proxy);
    }
    println!(
        "backend 127.0.0.1:{backend}; {}",
        proxies.iter().map(|p| format!("{} https://127.0.0.1:{}", p.name, p.port)).collect::<Vec<_>>().join(", ")
    );
    for p in &mut proxies {
        let probe = rt.block_on(exchange(&clients.checked, target(p.port))).unwrap_or_else(|e| {
            panic!("{}: the probe exchange failed ({}):\n{}", p.name, e.as_str(), read_log(&p.log))
        });
        println!("{}: {}", p.name, probe.describe());
        p.negotiated = probe.describe();
        p.resuming = (0..settings.concurrency).map(|_| clients.resuming()).collect();
    }
    bench.measure(&mut proxies);
    let report = report(&machine, &settings, &cert, &proxies);
    println!("\n{report}");
    print_proxy_logs(&proxies);
    write_report("tls-bench.md", &report);
    true
}

// ---------------------------------------------------------------------------------------------------------
// Settings, tools, machine

/// What is measured for each proxy in a round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Measure {
    /// New connections with a full handshake each, one request per connection.
    Full,
    /// New connections resuming the session, one request per connection.
    Resumed,
    /// wrk over TLS keep-alive connections.
    KeepAlive,
}

impl Measure {
    const ALL: [Measure; 3] = [Measure::Full, Measure::Resumed, Measure::KeepAlive];

    fn name(self) -> &'static str {
        match self {
            Measure::Full => "full",
            Measure::Resumed => "resumed",
            Measure::KeepAlive => "keepalive",
        }
    }
}

struct Settings {
    /// Rounds, durations, wrk's connections, CPUs, the proxies.
    common: Rounds,
    concurrency: usize,
    /// TLS 1.3 for the handshake client (else TLS 1.2).
    tls13: bool,
    /// Whether the handshake client checks the server's handshake signature under load.
    check_signatures: bool,
    measures: Vec<Measure>,
}

impl std::ops::Deref for Settings {
    type Target = Rounds;

    fn deref(&self) -> &Rounds {
        &self.common
    }
}

impl Settings {
    fn from_env() -> Self {
        let wanted = std::env::var("TLS_MEASURE").unwrap_or_else(|_| "full,keepalive".into());
        let wanted: Vec<_> = list(&wanted).collect();
        for w in &wanted {
            assert!(Measure::ALL.iter().any(|m| m.name() == *w), "TLS_MEASURE: unknown measurement {w:?}");
        }
        let measures: Vec<_> = Measure::ALL.into_iter().filter(|m| wanted.contains(&m.name())).collect();
        assert!(!measures.is_empty(), "TLS_MEASURE names no measurement");
        let version: String = env_or("TLS_VERSION", "1.3".to_string());
        let tls13 = match version.as_str() {
            "1.3" => true,
            "1.2" => false,
            v => panic!("TLS_VERSION={v:?}: 1.3 or 1.2"),
        };
        let check: String = env_or("TLS_CLIENT_VERIFY", "0".to_string());
        let check_signatures = match check.as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            v => panic!("TLS_CLIENT_VERIFY={v:?}: 0 or 1"),
        };
        Self {
            common: Rounds::from_env("TLS", (5, 8, 2), &PROXY_NAMES),
            concurrency: env_or("TLS_HANDSHAKE_CONCURRENCY", 50),
            tls13,
            check_signatures,
            measures,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{r} round(s) of {s}s per measurement ({m}) after a {w}s warm-up of each; handshake client: rustls, \
             TLS {v}, {hc} concurrent connections, resumption {res}, server signature {sig}; keep-alive: wrk -t1 \
             -c{c} --latency; proxy on CPU {pc}, clients + backend on CPU {cc}",
            r = self.rounds,
            s = self.seconds,
            m = self.measures.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
            w = self.warmup,
            v = if self.tls13 { "1.3" } else { "1.2" },
            hc = self.concurrency,
            res = if self.measures.contains(&Measure::Resumed) { "off (full) / on (resumed)" } else { "off" },
            sig = if self.check_signatures { "checked" } else { "not checked" },
            c = self.connections,
            pc = self.proxy_cpu,
            cc = self.client_cpu,
        )
    }
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    taskset: PathBuf,
    /// nginx's version as (major, minor, patch), to choose its HTTP/2 syntax.
    nginx_version: (u32, u32, u32),
}

impl Tools {
    /// Finds every tool; `None` after saying which are missing.
    fn find() -> Option<Self> {
        let [wrk, nginx, taskset] = onecore::find_tools("tls", ["wrk", "nginx", "taskset"])?;
        let nginx_version = parse_nginx_version(&version(Command::new(&nginx).arg("-v")));
        Some(Self { wrk, nginx, taskset, nginx_version })
    }
}

struct Machine {
    date: String,
    nproc: String,
    cpu: String,
    versions: Vec<String>,
}

impl Machine {
    fn describe(tools: &Tools) -> Self {
        let nginx = version(Command::new(&tools.nginx).arg("-v"));
        // "built with OpenSSL 3.0.2 15 Mar 2022 (running with OpenSSL 3.0.13 30 Jan 2024)"
        let nginx_v = first_line_matching(Command::new(&tools.nginx).arg("-V"), "built with");
        let openssl = nginx_v.split_once("running with ").map_or_else(
            || nginx_v.trim_start_matches("built with ").to_string(),
            |(_, r)| r.trim_end_matches(')').to_string(),
        );
        let versions = vec![
            format!(
                "{} (rustls {}, ring)",
                version(Command::new(crate::reveille_bin()).arg("--version")),
                locked_version("rustls")
            ),
            format!("{nginx} ({openssl})"),
            version(Command::new(&tools.wrk).arg("-v")),
        ];
        Self { date: utc_date(), nproc: nproc(), cpu: cpu_model(), versions }
    }
}

/// What the handshake client connects to: the proxy on `port`.
fn target(port: u16) -> Target {
    Target { port, host: HOST, body: BODY }
}

/// "nginx/1.22.1" → (1, 22, 1); (0, 0, 0) if it cannot be read.
fn parse_nginx_version(v: &str) -> (u32, u32, u32) {
    let v = v.rsplit('/').next().unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.trim().parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------------------
// The proxies

/// A running proxy and what was measured through it.
struct Proxy {
    name: &'static str,
    /// The HTTPS port.
    port: u16,
    /// reveille's admin port (its metrics), none for nginx.
    admin: Option<u16>,
    pid: u32,
    log: PathBuf,
    negotiated: String,
    /// The resuming clients of the handshake client, one per task, kept from run to run (the warm-up gives
    /// each its first session).
    resuming: Vec<TlsConnector>,
    runs: Vec<(Measure, Run)>,
}

impl Proxy {
    fn new(name: &'static str, port: u16, admin: Option<u16>, pid: u32, log: PathBuf) -> Self {
        Self { name, port, admin, pid, log, negotiated: String::new(), resuming: Vec::new(), runs: Vec::new() }
    }

    fn runs(&self, m: Measure) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |(k, _)| *k == m).map(|(_, r)| r)
    }
}

/// What starting the proxies and measuring them needs.
struct Bench<'a> {
    /// The handshake client's runtime.
    rt: &'a Runtime,
    clients: &'a Clients,
    tools: &'a Tools,
    s: &'a Settings,
}

impl Bench<'_> {
    /// Whether a TLS exchange (signature checked) with the proxy on `port` succeeds.
    fn tls_ready(&self, port: u16) -> bool {
        let exchange = exchange(&self.clients.checked, target(port));
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), exchange).await })
            .is_ok_and(|r| r.is_ok())
    }

    fn start_reveille(&self, lab: &mut Lab, backend: u16, ports: [u16; 4]) -> Proxy {
        let (tools, s) = (self.tools, self.s);
        let [http, https, admin, _] = ports;
        let mut cmd = onecore::reveille(lab, &tools.taskset, s.proxy_cpu, &[(HOST, backend)], http, admin);
        cmd.args(["--https", &format!("127.0.0.1:{https}")])
            .arg("--certs")
            .arg(lab.path("certs"))
            .args(["--default-cert", CERT_NAME]);
        let (pid, log) = lab.start("reveille", cmd, || {
            onecore::get(admin, "127.0.0.1", "/readyz").is_some_and(|(status, _)| status == 200)
                && self.tls_ready(https)
        });
        Proxy::new("reveille", https, Some(admin), pid, log)
    }

    /// reveille with ACME on and the certificate where ACME keeps it without etcd.
    fn start_reveille_acme(&self, lab: &mut Lab, backend: u16, ports: [u16; 4], cert: &BenchCert) -> Proxy {
        let (tools, s) = (self.tools, self.s);
        let [http, https, admin, unused] = ports;
        let dir = lab.path("certs-acme");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("acme-{HOST}.pem")), format!("{}{}", cert.chain_pem, cert.key_pem)).unwrap();
        // Every routed host is ACME's; bench.test has its (valid) certificate, so nothing is ever ordered and the
        // CA (nothing listens there) is never contacted.
        let config = lab.write(
            "reveille-acme.toml",
            &format!(
                "[acme]\ndirectory = \"https://127.0.0.1:{unused}/dir\"\nhosts = \"all\"\ncheck_interval = \"1h\"\n"
            ),
        );
        let opts = onecore::ReveilleOpts { file: "routes-acme.toml", threads: 1, access_log: false };
        let cpu = s.proxy_cpu.to_string();
        let mut cmd = onecore::reveille_with(lab, &tools.taskset, &cpu, &[(HOST, backend)], (http, admin), &opts);
        cmd.arg("--config")
            .arg(&config)
            .args(["--https", &format!("127.0.0.1:{https}")])
            .arg("--certs")
            .arg(&dir)
            .args(["--default-cert", &format!("acme-{HOST}")]);
        let (pid, log) = lab.start("reveille-acme", cmd, || {
            onecore::get(admin, "127.0.0.1", "/readyz").is_some_and(|(status, _)| status == 200)
                && self.tls_ready(https)
        });
        Proxy::new("reveille-acme", https, Some(admin), pid, log)
    }

    fn start_nginx(&self, lab: &mut Lab, backend: u16, port: u16, chain: &Path, key: &Path) -> Proxy {
        let (tools, s) = (self.tools, self.s);
        // `http2 on;` exists since nginx 1.25.1, which deprecates `listen ... http2`.
        let (listen_http2, http2_on) =
            if tools.nginx_version >= (1, 25, 1) { ("", "        http2 on;\n") } else { (" http2", "") };
        let site = NginxSite {
            name: "nginx",
            workers: 1,
            keepalive: 64,
            host: HOST,
            backend,
            listen: format!("127.0.0.1:{port} ssl{listen_http2} default_server"),
            http: "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n    ssl_session_tickets on;\n",
            server: format!(
                "{http2_on}        ssl_certificate {};\n        ssl_certificate_key {};\n",
                chain.display(),
                key.display()
            ),
            location: "",
        };
        let (cmd, log) = onecore::nginx(lab, &tools.taskset, &tools.nginx, s.proxy_cpu, &site);
        let (pid, _) = lab.start("nginx", cmd, || self.tls_ready(port));
        Proxy::new("nginx", port, None, pid, log)
    }
}

/// reveille's handshake counters, from its metrics.
#[derive(Default, Clone)]
struct ServerHandshakes {
    done: f64,
    /// Failed handshakes by reason.
    failed: BTreeMap<String, f64>,
}

impl ServerHandshakes {
    fn read(admin: u16) -> Option<Self> {
        let (_, body) = onecore::get(admin, "127.0.0.1", "/metrics")?;
        let text = String::from_utf8_lossy(&body);
        let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.trim().parse::<f64>().ok());
        let done = text.lines().find(|l| l.starts_with("reveille_tls_handshakes_total ")).and_then(value)?;
        let mut failed = BTreeMap::new();
        // reveille_tls_handshake_failures_total{reason="closed"} 1
        for line in text.lines().filter(|l| l.starts_with("reveille_tls_handshake_failures_total{")) {
            let reason = line.split('"').nth(1).unwrap_or("?").to_string();
            *failed.entry(reason).or_default() += value(line).unwrap_or(0.0);
        }
        Some(Self { done, failed })
    }

    /// The counts from `before` to `self`.
    fn since(&self, before: &Self) -> Self {
        let mut failed = BTreeMap::new();
        for (reason, n) in &self.failed {
            let n = n - before.failed.get(reason).copied().unwrap_or(0.0);
            if n > 0.0 {
                failed.insert(reason.clone(), n);
            }
        }
        Self { done: self.done - before.done, failed }
    }
}

impl std::fmt::Display for ServerHandshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0}", self.done)?;
        if !self.failed.is_empty() {
            let failed: Vec<_> = self.failed.iter().map(|(r, n)| format!("{r} {n:.0}")).collect();
            write!(f, " (failed: {})", failed.join(", "))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Measuring

/// One measured run through one proxy.
#[derive(Default)]
struct Run {
    /// Exchanges (new connections) per second, or wrk's requests per second.
    per_sec: f64,
    /// p99 of an exchange (handshake client) or of a request (wrk).
    p99_us: f64,
    /// Exchanges completed (handshake client) or requests (wrk).
    count: u64,
    /// Exchanges whose handshake was not of the wanted kind (the handshake client).
    wrong_kind: u64,
    /// reveille's handshakes counted during the run.
    server_handshakes: Option<ServerHandshakes>,
    usage: Usage,
    errors: Errors,
}

impl Bench<'_> {
    /// A warm-up of each measurement for each proxy, then `rounds` interleaved measured runs.
    fn measure(&self, proxies: &mut [Proxy]) {
        let s = self.s;
        let ticks_per_sec = clock_ticks_per_sec();
        println!("{}", s.describe());
        for p in proxies.iter() {
            for &m in &s.measures {
                let run = self.run_one(p, m, s.warmup, ticks_per_sec);
                println!("warm-up   {:<8} {:<9} {}", p.name, m.name(), summary(m, &run));
            }
        }
        for round in 1..=s.rounds {
            for &m in &s.measures {
                for p in proxies.iter_mut() {
                    std::thread::sleep(Duration::from_millis(500));
                    let run = self.run_one(p, m, s.seconds, ticks_per_sec);
                    println!("round {round}/{} {:<8} {:<9} {}", s.rounds, p.name, m.name(), summary(m, &run));
                    p.runs.push((m, run));
                }
            }
        }
    }

    fn run_one(&self, proxy: &Proxy, m: Measure, seconds: u64, ticks_per_sec: f64) -> Run {
        let (s, clients) = (self.s, self.clients);
        let handshakes_before = proxy.admin.and_then(ServerHandshakes::read);
        let (mut run, usage) = onecore::measure(proxy.pid, (s.proxy_cpu, s.client_cpu), ticks_per_sec, || match m {
            Measure::KeepAlive => run_wrk(self.tools, s, proxy, seconds),
            Measure::Full | Measure::Resumed => {
                let (connectors, want) = match m {
                    Measure::Full => (vec![clients.full.clone(); s.concurrency], HandshakeKind::Full),
                    _ => (proxy.resuming.clone(), HandshakeKind::Resumed),
                };
                let duration = Duration::from_secs(seconds);
                let (tally, elapsed) =
                    self.rt.block_on(handshake_load(&connectors, target(proxy.port), duration, want));
                let latencies: Vec<f64> = tally.latencies_us.iter().map(|&us| f64::from(us)).collect();
                Run {
                    per_sec: tally.ok as f64 / elapsed.as_secs_f64(),
                    p99_us: percentile(&latencies, 99.0),
                    count: tally.ok,
                    wrong_kind: tally.wrong_kind,
                    errors: tally.errors,
                    ..Run::default()
                }
            }
        });
        run.usage = usage;
        if let (Some(a), Some(b)) = (handshakes_before, proxy.admin.and_then(ServerHandshakes::read)) {
            run.server_handshakes = Some(b.since(&a));
        }
        run
    }
}

fn summary(m: Measure, run: &Run) -> String {
    let unit = if m == Measure::KeepAlive { "req/s " } else { "conn/s" };
    let mut line = format!(
        "{:>8.0} {unit} p99 {:>9}  proxy {}  errors {}",
        run.per_sec,
        format_us(run.p99_us),
        describe_usage(&run.usage),
        run.errors
    );
    if m != Measure::KeepAlive && run.wrong_kind > 0 {
        let _ = write!(line, "  NOT {}: {}", m.name(), run.wrong_kind);
    }
    if let Some(h) = &run.server_handshakes {
        let _ = write!(line, "  server handshakes {h}");
    }
    line
}

fn run_wrk(tools: &Tools, s: &Settings, proxy: &Proxy, seconds: u64) -> Run {
    let mut cmd = pinned(&tools.taskset, s.client_cpu, &tools.wrk);
    cmd.args(testkit::wrk::args(s.connections, seconds, HOST, &format!("https://127.0.0.1:{}/", proxy.port)));
    let wrk = testkit::wrk::run(&mut cmd).unwrap_or_else(|e| panic!("{}: {e}", proxy.name));
    Run {
        per_sec: wrk.requests_per_sec,
        p99_us: wrk.p99_us,
        count: wrk.requests,
        errors: Errors { wrk: wrk.errors, handshake: 0 },
        ..Run::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// Medians of one measurement for one proxy.
struct Medians {
    per_sec: f64,
    /// The rate per second of the proxy's CPU time: what one fully busy core would do.
    per_cpu_sec: f64,
    p99_us: f64,
    proxy_cpu_pct: f64,
    busy: (f64, f64),
}

fn medians(p: &Proxy, m: Measure) -> Medians {
    let med = |f: fn(&Run) -> f64| median(&p.runs(m).map(f).collect::<Vec<_>>());
    Medians {
        per_sec: med(|r| r.per_sec),
        per_cpu_sec: med(|r| r.per_sec / (r.usage.proxy_cpu_pct / 100.0)),
        p99_us: med(|r| r.p99_us),
        proxy_cpu_pct: med(|r| r.usage.proxy_cpu_pct),
        busy: (med(|r| r.usage.cpu_busy_pct.0), med(|r| r.usage.cpu_busy_pct.1)),
    }
}

/// The markdown report: machine, settings, one table per measurement and the per-round numbers.
fn report(machine: &Machine, s: &Settings, cert: &BenchCert, proxies: &[Proxy]) -> String {
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 && !x.is_nan() => format!("{:.2}", x / b),
        _ => "n/a".to_string(),
    };
    let mut md = heading("TLS benchmark", &machine.date);
    let _ = writeln!(md, "- CPU: {} × {}", machine.nproc, machine.cpu);
    let _ = writeln!(md, "- versions: {}", machine.versions.join("; "));
    let _ = writeln!(md, "- {}", s.describe());
    let _ = writeln!(
        md,
        "- certificate: ECDSA P-256 leaf for {HOST} and 127.0.0.1, signed by an ECDSA P-256 CA; chain leaf + CA \
         ({} bytes of DER leaf); both proxies serve the same files",
        cert.leaf_der.len()
    );
    let _ = writeln!(md, "- backend: in-process hyper HTTP/1.1 server, 100-byte 200 response");
    for p in proxies {
        let _ = writeln!(md, "- negotiated by the handshake client with {}: {}", p.name, p.negotiated);
    }
    let _ = writeln!(
        md,
        "- wrk: no ALPN, so HTTP/1.1; its OpenSSL's defaults negotiate TLS 1.3, TLS_AES_256_GCM_SHA384, X25519 \
         (checked once with nginx's $ssl_protocol, $ssl_cipher, $ssl_curve)"
    );
    for &m in &s.measures {
        let nginx = proxies.iter().find(|p| p.name == "nginx").map(|p| medians(p, m));
        let (title, unit, p99) = match m {
            Measure::Full => ("New connections, full handshake, one request each", "handshakes/s", "conn p99"),
            Measure::Resumed => ("New connections, resumed handshake, one request each", "handshakes/s", "conn p99"),
            Measure::KeepAlive => ("Requests over TLS keep-alive connections (wrk)", "req/s", "p99 latency"),
        };
        let _ = writeln!(md);
        let _ = writeln!(md, "{title}:");
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| proxy | {unit} (median) | vs nginx | {p99} (median) | {p99} vs nginx | proxy CPU | per proxy \
             CPU-second | vs nginx | CPUs busy (proxy / client) | RSS after | errors (all rounds) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for p in proxies {
            let med = medians(p, m);
            let mut errors = Errors::default();
            p.runs(m).for_each(|r| errors.add(&r.errors));
            let wrong: u64 = p.runs(m).map(|r| r.wrong_kind).sum();
            let mut errors = errors.to_string();
            if wrong > 0 {
                let _ = write!(errors, "; {wrong} not {}", m.name());
            }
            let rss = p.runs(m).last().and_then(|r| r.usage.proxy_rss_kib);
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {:.0}% | {:.0} | {} | {:.0}% / {:.0}% | {} | {} |",
                p.name,
                med.per_sec,
                ratio(med.per_sec, nginx.as_ref().map(|n| n.per_sec)),
                format_us(med.p99_us),
                ratio(med.p99_us, nginx.as_ref().map(|n| n.p99_us)),
                med.proxy_cpu_pct,
                med.per_cpu_sec,
                ratio(med.per_cpu_sec, nginx.as_ref().map(|n| n.per_cpu_sec)),
                med.busy.0,
                med.busy.1,
                rss.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                errors
            );
        }
        // The client is the limit if its CPU was saturated while the proxy's process was not.
        for p in proxies {
            let med = medians(p, m);
            if med.busy.1 > 95.0 && med.proxy_cpu_pct < 90.0 {
                let _ = writeln!(
                    md,
                    "\nNote: with {}, the client's CPU was {:.0}% busy while the proxy used {:.0}% of its CPU: the \
                     client may be the limit.",
                    p.name, med.busy.1, med.proxy_cpu_pct
                );
            }
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Per round (rate, p99):");
    let _ = writeln!(md);
    for &m in &s.measures {
        for p in proxies {
            let rounds: Vec<_> = p.runs(m).map(|r| format!("{:.0} / {}", r.per_sec, format_us(r.p99_us))).collect();
            let _ = writeln!(md, "- {} {}: {}", p.name, m.name(), rounds.join(", "));
        }
    }
    if let Some(p) = proxies.iter().find(|p| p.admin.is_some()) {
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "{}'s own counts per run (reveille_tls_handshakes_total, reveille_tls_handshake_failures_total):",
            p.name
        );
        let _ = writeln!(md);
        for &m in &s.measures {
            let counts: Vec<_> = p
                .runs(m)
                .map(|r| match &r.server_handshakes {
                    Some(h) if m == Measure::KeepAlive => format!("{h} for {} requests", r.count),
                    Some(h) => format!("{h} for {} exchanges", r.count),
                    None => "?".into(),
                })
                .collect();
            let _ = writeln!(md, "- {}: {}", m.name(), counts.join("; "));
        }
        if s.measures.contains(&Measure::KeepAlive) {
            let _ = writeln!(
                md,
                "\n(Before its run, wrk opens a TCP connection to check the address and closes it without a \
                 handshake: that is the one `closed` failure of each keep-alive run.)"
            );
        }
    }
    md
}

/// Shows what each proxy logged (reveille at `warn`, nginx's error log at `warn`).
fn print_proxy_logs(proxies: &[Proxy]) {
    for p in proxies {
        print_log(&format!("{} log", p.name), &read_log(&p.log));
    }
}
