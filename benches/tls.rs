//! TLS benchmark: reveille against nginx, each a one-core TLS-terminating reverse proxy in front of the same
//! backend, with the same certificate: new (full) TLS handshakes per second, and requests per second over TLS
//! keep-alive connections.
//!
//! Run with `cargo bench --bench tls`. Needs `wrk`, `nginx` and `taskset`; without them it says which is
//! missing and exits 0. Only 127.0.0.1 is used.
//!
//! Layout, as in `benches/load.rs`, on a machine with at least two CPUs:
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

// Not every shared helper is used here.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    clock_ticks_per_sec, cpu_model, cpu_ticks, env_or, first_line, format_us, free_ports, median, nproc, print_log,
    proc_status, read_log, start_backend, status_kib, utc_date, write_report, KillOnDrop,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

/// The name in the certificate, the SNI of the handshake client and the `Host` of every request.
const HOST: &str = "bench.test";

/// The certificate's name in reveille's certificates directory (`bench.crt`, `bench.key`).
const CERT_NAME: &str = "bench";

/// The backend's answer to every request: exactly 100 bytes (the array type checks the length).
const BODY: &[u8; 100] =
    b"reveille TLS bench: a fixed response body from the upstream backend, one hundred bytes in all......\n";

const PROXY_NAMES: [&str; 2] = ["reveille", "nginx"];

/// Time allowed for one exchange (connect, handshake, request, response) of the handshake client.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: do not start a three-minute benchmark then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tls: skipped outside `cargo bench` (run `cargo bench --bench tls`)");
        return;
    }
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(missing) => {
            println!("tls: skipped, not found on PATH (or in /usr/sbin, /sbin): {}", missing.join(", "));
            return;
        }
    };
    let settings = Settings::from_env();
    // Before pinning ourselves: `nproc` follows the affinity of the process that runs it.
    let machine = Machine::describe(&tools);
    if let Err(e) = pin_all_threads(&tools, settings.client_cpu) {
        println!("tls: skipped, cannot pin to CPU {}: {e}", settings.client_cpu);
        return;
    }
    // The runtime of the handshake client: this (pinned) thread, nothing else.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    let backend = start_backend(BODY);
    let mut lab = Lab::new();
    let cert = BenchCert::generate();
    let certs_dir = lab.path("certs");
    std::fs::create_dir_all(&certs_dir).unwrap();
    let chain_path = certs_dir.join(format!("{CERT_NAME}.crt"));
    let key_path = certs_dir.join(format!("{CERT_NAME}.key"));
    std::fs::write(&chain_path, &cert.chain_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let clients = Clients::new(&cert, &settings);
    let bench = Bench { rt: &rt, clients: &clients, tools: &tools, s: &settings };

    let ports: [u16; 4] = free_ports();
    let mut proxies = Vec::new();
    for name in &settings.proxies {
        let proxy = match *name {
            "reveille" => bench.start_reveille(&mut lab, backend, ports),
            _ => bench.start_nginx(&mut lab, backend, ports[3], &chain_path, &key_path),
        };
        proxies.push(proxy);
    }
    println!(
        "backend 127.0.0.1:{backend}; {}",
        proxies.iter().map(|p| format!("{} https://127.0.0.1:{}", p.name, p.port)).collect::<Vec<_>>().join(", ")
    );
    for p in &mut proxies {
        let probe = rt.block_on(exchange(&clients.checked, p.port)).unwrap_or_else(|e| {
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
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: usize,
    concurrency: usize,
    /// TLS 1.3 for the handshake client (else TLS 1.2).
    tls13: bool,
    /// Whether the handshake client checks the server's handshake signature under load.
    check_signatures: bool,
    measures: Vec<Measure>,
    proxy_cpu: usize,
    client_cpu: usize,
    proxies: Vec<&'static str>,
}

impl Settings {
    fn from_env() -> Self {
        let wanted = std::env::var("TLS_PROXIES").unwrap_or_else(|_| PROXY_NAMES.join(","));
        let proxies: Vec<_> = list(&wanted)
            .map(|w| {
                PROXY_NAMES.into_iter().find(|n| *n == w).unwrap_or_else(|| panic!("TLS_PROXIES: unknown proxy {w:?}"))
            })
            .collect();
        assert!(!proxies.is_empty(), "TLS_PROXIES names no proxy");
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
            rounds: env_or("TLS_ROUNDS", 5),
            seconds: env_or("TLS_SECONDS", 8),
            warmup: env_or("TLS_WARMUP", 2),
            connections: env_or("TLS_CONNECTIONS", 50),
            concurrency: env_or("TLS_HANDSHAKE_CONCURRENCY", 50),
            tls13,
            check_signatures,
            measures,
            proxy_cpu: env_or("TLS_PROXY_CPU", 0),
            client_cpu: env_or("TLS_CLIENT_CPU", 1),
            proxies,
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

/// The non-empty, trimmed items of a comma-separated list.
fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|w| !w.is_empty())
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    taskset: PathBuf,
    /// nginx's version as (major, minor, patch), to choose its HTTP/2 syntax.
    nginx_version: (u32, u32, u32),
}

impl Tools {
    /// Finds every tool, or returns the names of the missing ones.
    fn find() -> Result<Self, Vec<&'static str>> {
        let names = ["wrk", "nginx", "taskset"];
        let found: Vec<_> = names.iter().map(|n| find_tool(n)).collect();
        let missing: Vec<_> = names.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut found = found.into_iter().flatten();
        let mut next = || found.next().unwrap();
        let (wrk, nginx, taskset) = (next(), next(), next());
        let nginx_version = parse_nginx_version(&version(Command::new(&nginx).arg("-v")));
        Ok(Self { wrk, nginx, taskset, nginx_version })
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
                version(Command::new(env!("CARGO_BIN_EXE_reveille")).arg("--version")),
                locked_version("rustls")
            ),
            format!("{nginx} ({openssl})"),
            version(Command::new(&tools.wrk).arg("-v")),
        ];
        Self { date: utc_date(), nproc: nproc(), cpu: cpu_model(), versions }
    }
}

/// The first line a command prints (see [`first_line`]), without URLs and copyright notices.
fn version(cmd: &mut Command) -> String {
    let line = first_line(cmd);
    // "nginx version: nginx/1.22.1", "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    let line = line.split_once("version: ").map_or(line.as_str(), |(_, v)| v);
    let line = line.split(" - http").next().unwrap_or(line);
    let line = line.split(" Copyright").next().unwrap_or(line);
    line.replace(" version ", " ").trim().to_string()
}

/// The first line of a command's output (stdout and stderr) that contains `needle`, trimmed; "" if none.
fn first_line_matching(cmd: &mut Command, needle: &str) -> String {
    let Ok(out) = cmd.stdin(Stdio::null()).output() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().find(|l| l.contains(needle)).unwrap_or_default().trim().to_string()
}

/// "nginx/1.22.1" → (1, 22, 1); (0, 0, 0) if it cannot be read.
fn parse_nginx_version(v: &str) -> (u32, u32, u32) {
    let v = v.rsplit('/').next().unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.trim().parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A package's version in `Cargo.lock`, "?" if it is not there once.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{package}\"\nversion = \"");
    let mut found = lock.match_indices(&needle).map(|(i, _)| &lock[i + needle.len()..]);
    match (found.next(), found.next()) {
        (Some(rest), None) => rest.split('"').next().unwrap_or("?").to_string(),
        _ => "?".into(),
    }
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
// The certificate and the handshake client

/// The certificate both proxies serve.
struct BenchCert {
    /// Leaf then CA, PEM.
    chain_pem: String,
    /// The leaf's key, PKCS#8 PEM.
    key_pem: String,
    /// The leaf, DER: the handshake client accepts this certificate and no other.
    leaf_der: Vec<u8>,
}

impl BenchCert {
    /// A CA and an ECDSA P-256 leaf it signs, for `bench.test` and 127.0.0.1.
    fn generate() -> Self {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, "reveille TLS bench CA");
        let ca_key = KeyPair::generate_for(alg).unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::new(vec![HOST.to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, HOST);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(alg).unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        Self { chain_pem: leaf.pem() + &ca.pem(), key_pem: key.serialize_pem(), leaf_der: leaf.der().to_vec() }
    }
}

/// Accepts exactly one server certificate (no path building), and checks the handshake signature made with its
/// key if `check_signatures`.
#[derive(Debug)]
struct PinnedCert {
    leaf_der: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
    check_signatures: bool,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf_der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server presented another certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The handshake client's configurations.
struct Clients {
    /// Checks everything it can (the pinned certificate and the handshake signature), resumption disabled: for
    /// readiness and the probe.
    checked: TlsConnector,
    /// Resumption disabled: every handshake is a full one.
    full: TlsConnector,
    provider: Arc<CryptoProvider>,
    verifier: Arc<PinnedCert>,
    tls13: bool,
}

impl Clients {
    fn new(cert: &BenchCert, s: &Settings) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |check_signatures| {
            Arc::new(PinnedCert {
                leaf_der: cert.leaf_der.clone(),
                algorithms: provider.signature_verification_algorithms,
                check_signatures,
            })
        };
        let checked = connector(&provider, &verifier(true), s.tls13, Resumption::disabled());
        let verifier = verifier(s.check_signatures);
        let full = connector(&provider, &verifier, s.tls13, Resumption::disabled());
        Self { checked, full, provider, verifier, tls13: s.tls13 }
    }

    /// A client with its own session store, as a browser has: rustls keeps at most 8 TLS 1.3 tickets per
    /// server name, so tasks sharing one store would run out of tickets when many reconnect at once.
    fn resuming(&self) -> TlsConnector {
        connector(&self.provider, &self.verifier, self.tls13, Resumption::in_memory_sessions(32))
    }
}

/// A client configuration: TLS 1.3 or 1.2 only, ALPN `http/1.1`, the pinned certificate.
fn connector(
    provider: &Arc<CryptoProvider>,
    verifier: &Arc<PinnedCert>,
    tls13: bool,
    resumption: Resumption,
) -> TlsConnector {
    let version = if tls13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = resumption;
    TlsConnector::from(Arc::new(c))
}

/// What one exchange negotiated.
struct Negotiated {
    kind: Option<HandshakeKind>,
    version: String,
    suite: String,
    group: String,
    alpn: String,
}

impl Negotiated {
    fn describe(&self) -> String {
        format!(
            "{}, {}, {}, ALPN {}, {} handshake",
            self.version,
            self.suite,
            self.group,
            self.alpn,
            self.kind.map_or("?".into(), |k| format!("{k:?}").to_lowercase())
        )
    }
}

/// Why an exchange failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Connect,
    Handshake,
    Io,
    /// Not `200` with the backend's body.
    Response,
    Timeout,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Handshake => "handshake",
            Failure::Io => "io",
            Failure::Response => "response",
            Failure::Timeout => "timeout",
        }
    }
}

/// One exchange: a new TCP connection to 127.0.0.1:port, a TLS handshake with SNI `bench.test`, `GET /` with
/// `Connection: close`, the response read until the proxy closes.
async fn exchange(connector: &TlsConnector, port: u16) -> Result<Negotiated, Failure> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|_| Failure::Connect)?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let name = ServerName::try_from(HOST).unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|_| Failure::Handshake)?;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|_| Failure::Io)?;
    let mut response = Vec::with_capacity(1024);
    // Ends with an error if the proxy closes without close_notify: the response is checked either way.
    let _ = tls.read_to_end(&mut response).await;
    if !response.starts_with(b"HTTP/1.1 200") || !response.ends_with(BODY) {
        return Err(Failure::Response);
    }
    let conn = tls.get_ref().1;
    Ok(Negotiated {
        kind: conn.handshake_kind(),
        version: conn.protocol_version().map_or("?".into(), |v| format!("{v:?}")),
        suite: conn.negotiated_cipher_suite().map_or("?".into(), |s| format!("{:?}", s.suite())),
        group: conn.negotiated_key_exchange_group().map_or("?".into(), |g| format!("{:?}", g.name())),
        alpn: conn.alpn_protocol().map_or("none".into(), |a| String::from_utf8_lossy(a).into_owned()),
    })
}

/// What the handshake client counted in one run.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Completed exchanges whose handshake was not of the kind wanted (full, or resumed).
    wrong_kind: u64,
    latencies_us: Vec<u32>,
    errors: Errors,
}

/// One task per connector, each doing [`exchange`]s back to back for `duration`.
async fn handshake_load(
    connectors: &[TlsConnector],
    port: u16,
    duration: Duration,
    want: HandshakeKind,
) -> (Tally, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for connector in connectors {
        let connector = connector.clone();
        tasks.spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&connector, port)).await {
                    Ok(Ok(n)) => {
                        t.ok += 1;
                        t.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if n.kind != Some(want) {
                            t.wrong_kind += 1;
                        }
                    }
                    Ok(Err(f)) => {
                        t.errors.count(f);
                        // Do not spin on a refused or exhausted port.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => t.errors.count(Failure::Timeout),
                }
            }
            t
        });
    }
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        let t = t.expect("a handshake task panicked");
        total.ok += t.ok;
        total.wrong_kind += t.wrong_kind;
        total.latencies_us.extend(t.latencies_us);
        total.errors.add(&t.errors);
    }
    (total, started.elapsed())
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
    fn runs(&self, m: Measure) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |(k, _)| *k == m).map(|(_, r)| r)
    }
}

impl Lab {
    fn new() -> Self {
        Self {
            children: Vec::new(),
            dir: tempfile::Builder::new().prefix("reveille-tls-").tempdir().expect("create a temp dir"),
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

    /// Spawns `cmd` with stdout and stderr going to `<name>.log`, then waits until `ready` (checked every
    /// 50 ms, for up to 20 s) returns true.
    fn start(&mut self, name: &'static str, mut cmd: Command, mut ready: impl FnMut() -> bool) -> (u32, PathBuf) {
        let log = self.path(&format!("{name}.log"));
        let file = File::create(&log).expect("create a log file");
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        self.children.push(KillOnDrop(child));
        let child = &mut self.children.last_mut().unwrap().0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited ({status}) before it was ready:\n{}", read_log(&log));
            }
            if Instant::now() > deadline {
                panic!("{name} not ready after 20s:\n{}", read_log(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (pid, log)
    }
}

/// `taskset -c <cpu> <program>`.
fn pinned(tools: &Tools, cpu: usize, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(&tools.taskset);
    cmd.arg("-c").arg(cpu.to_string()).arg(program);
    cmd
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
        let exchange = exchange(&self.clients.checked, port);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), exchange).await })
            .is_ok_and(|r| r.is_ok())
    }

    fn start_reveille(&self, lab: &mut Lab, backend: u16, ports: [u16; 4]) -> Proxy {
        let (tools, s) = (self.tools, self.s);
        let [http, https, admin, _] = ports;
        let routes = lab.write(
            "routes.toml",
            &format!("[services.bench]\nbackends = [\"127.0.0.1:{backend}\"]\n[routes]\n\"{HOST}\" = \"bench\"\n"),
        );
        let mut cmd = pinned(tools, s.proxy_cpu, env!("CARGO_BIN_EXE_reveille"));
        cmd.arg("serve")
            .arg("--routes")
            .arg(&routes)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--https", &format!("127.0.0.1:{https}")])
            .arg("--certs")
            .arg(lab.path("certs"))
            .args(["--default-cert", CERT_NAME])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--threads", "1", "--access-log", "false", "--log-level", "warn"]);
        let (pid, log) = lab.start("reveille", cmd, || {
            http_get(admin, "/readyz").is_some_and(|(status, _)| status == 200) && self.tls_ready(https)
        });
        Proxy {
            name: "reveille",
            port: https,
            admin: Some(admin),
            pid,
            log,
            negotiated: String::new(),
            resuming: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn start_nginx(&self, lab: &mut Lab, backend: u16, port: u16, chain: &Path, key: &Path) -> Proxy {
        let (tools, s) = (self.tools, self.s);
        let prefix = lab.path("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        let p = prefix.display();
        // `http2 on;` exists since nginx 1.25.1, which deprecates `listen ... http2`.
        let (listen_http2, http2_on) =
            if tools.nginx_version >= (1, 25, 1) { ("", "\n        http2 on;") } else { (" http2", "") };
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
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    upstream bench {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl{listen_http2} default_server;{http2_on}
        server_name {HOST};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
            chain = chain.display(),
            key = key.display(),
        );
        let conf_path = lab.write("nginx/nginx.conf", &conf);
        let mut cmd = pinned(tools, s.proxy_cpu, &tools.nginx);
        cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf_path).arg("-e").arg(prefix.join("error.log"));
        let (pid, _) = lab.start("nginx", cmd, || self.tls_ready(port));
        let log = prefix.join("error.log");
        Proxy {
            name: "nginx",
            port,
            admin: None,
            pid,
            log,
            negotiated: String::new(),
            resuming: Vec::new(),
            runs: Vec::new(),
        }
    }
}

/// `GET path` on 127.0.0.1:port over plain HTTP/1.1 with `Connection: close`: the status and the body (with
/// the head), or `None` if there is no answer.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
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
        let (_, text) = http_get(admin, "/metrics")?;
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
    /// CPU time the proxy used, as a share of one CPU over the run.
    proxy_cpu_pct: f64,
    /// How busy the proxy's CPU and the client's CPU were over the run, all processes included.
    cpu_busy_pct: (f64, f64),
    /// The proxy's resident memory after the run, in KiB.
    proxy_rss_kib: Option<u64>,
    errors: Errors,
}

/// Errors of a run: wrk's, or the handshake client's.
#[derive(Default, Clone, Copy)]
struct Errors {
    /// wrk's "Non-2xx or 3xx responses", or the handshake client's unexpected responses.
    response: u64,
    connect: u64,
    /// Handshake client only.
    handshake: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

impl Errors {
    fn count(&mut self, f: Failure) {
        match f {
            Failure::Connect => self.connect += 1,
            Failure::Handshake => self.handshake += 1,
            Failure::Io => self.write += 1,
            Failure::Response => self.response += 1,
            Failure::Timeout => self.timeout += 1,
        }
    }

    fn total(&self) -> u64 {
        self.response + self.connect + self.handshake + self.read + self.write + self.timeout
    }

    fn add(&mut self, o: &Errors) {
        self.response += o.response;
        self.connect += o.connect;
        self.handshake += o.handshake;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.total())?;
        let parts: Vec<_> = [
            ("response", self.response),
            ("connect", self.connect),
            ("handshake", self.handshake),
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
        let ticks_before = cpu_ticks(proxy.pid);
        let cpus_before = (cpu_times(s.proxy_cpu), cpu_times(s.client_cpu));
        let started = Instant::now();
        let mut run = match m {
            Measure::KeepAlive => run_wrk(self.tools, s, proxy, seconds),
            Measure::Full | Measure::Resumed => {
                let (connectors, want) = match m {
                    Measure::Full => (vec![clients.full.clone(); s.concurrency], HandshakeKind::Full),
                    _ => (proxy.resuming.clone(), HandshakeKind::Resumed),
                };
                let duration = Duration::from_secs(seconds);
                let (tally, elapsed) = self.rt.block_on(handshake_load(&connectors, proxy.port, duration, want));
                let mut latencies = tally.latencies_us;
                latencies.sort_unstable();
                Run {
                    per_sec: tally.ok as f64 / elapsed.as_secs_f64(),
                    p99_us: percentile(&latencies, 0.99),
                    count: tally.ok,
                    wrong_kind: tally.wrong_kind,
                    errors: tally.errors,
                    ..Run::default()
                }
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let ticks_after = cpu_ticks(proxy.pid);
        let cpus_after = (cpu_times(s.proxy_cpu), cpu_times(s.client_cpu));
        if let (Some(a), Some(b)) = (ticks_before, ticks_after) {
            run.proxy_cpu_pct = (b - a) as f64 / ticks_per_sec / wall * 100.0;
        }
        run.proxy_rss_kib = status_kib(&proc_status(proxy.pid), "VmRSS:");
        run.cpu_busy_pct = (busy_pct(cpus_before.0, cpus_after.0), busy_pct(cpus_before.1, cpus_after.1));
        if let (Some(a), Some(b)) = (handshakes_before, proxy.admin.and_then(ServerHandshakes::read)) {
            run.server_handshakes = Some(b.since(&a));
        }
        run
    }
}

fn summary(m: Measure, run: &Run) -> String {
    let unit = if m == Measure::KeepAlive { "req/s " } else { "conn/s" };
    let mut line = format!(
        "{:>8.0} {unit} p99 {:>9}  proxy {:>3.0}% CPU, {:>6} MiB  CPUs busy {:>3.0}% / {:>3.0}%  errors {}",
        run.per_sec,
        format_us(run.p99_us),
        run.proxy_cpu_pct,
        run.proxy_rss_kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        run.cpu_busy_pct.0,
        run.cpu_busy_pct.1,
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

/// The `q` quantile of sorted values (nearest rank); NaN for none.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

fn run_wrk(tools: &Tools, s: &Settings, proxy: &Proxy, seconds: u64) -> Run {
    let mut cmd = pinned(tools, s.client_cpu, &tools.wrk);
    cmd.args([
        "-t1",
        &format!("-c{}", s.connections),
        &format!("-d{seconds}s"),
        "--latency",
        "-H",
        &format!("Host: {HOST}"),
        &format!("https://127.0.0.1:{}/", proxy.port),
    ]);
    let out = cmd.output().expect("run wrk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&stdout).unwrap_or_else(|| {
        panic!(
            "cannot read wrk's output for {} ({}):\n{stdout}\n{}",
            proxy.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Reads "Requests/sec:", the "99%" line of `--latency`, "N requests in", "Socket errors:" and
/// "Non-2xx or 3xx responses:".
fn parse_wrk(out: &str) -> Option<Run> {
    let mut run = Run::default();
    let (mut rps, mut p99) = (None, None);
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_us(v.trim());
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            run.count = n.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors.response = v.trim().parse().ok()?;
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
    run.per_sec = rps?;
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
        per_cpu_sec: med(|r| r.per_sec / (r.proxy_cpu_pct / 100.0)),
        p99_us: med(|r| r.p99_us),
        proxy_cpu_pct: med(|r| r.proxy_cpu_pct),
        busy: (med(|r| r.cpu_busy_pct.0), med(|r| r.cpu_busy_pct.1)),
    }
}

/// The markdown report: machine, settings, one table per measurement and the per-round numbers.
fn report(machine: &Machine, s: &Settings, cert: &BenchCert, proxies: &[Proxy]) -> String {
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 && !x.is_nan() => format!("{:.2}", x / b),
        _ => "n/a".to_string(),
    };
    let mut md = String::new();
    let _ = writeln!(md, "### TLS benchmark, {}", machine.date);
    let _ = writeln!(md);
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
            let rss = p.runs(m).last().and_then(|r| r.proxy_rss_kib);
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
