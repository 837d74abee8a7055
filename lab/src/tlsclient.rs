//! The peers lab's TLS client side (scenarios 5a and 5c): a certificate made for the run (an ECDSA P-256 leaf
//! signed by a CA of its own, for `bench.test` and 127.0.0.1; the proxies serve the chain leaf + CA, so the
//! Certificate message has the size of a usual leaf + intermediate chain), a rustls client that opens new
//! connections back to back, each with a TLS handshake and one `GET` (`Connection: close`), counting completed
//! exchanges, their latency and each kind of failure, and reveille's own handshake counters.
//!
//! Why not wrk: wrk (4.1, OpenSSL) with `Connection: close` reconnects for every request, but it resumes the TLS
//! session on every reconnection (checked with nginx's `$ssl_session_reused`: all but the first connection of
//! each wrk connection slot were resumed), and reveille has no switch to turn resumption off on the server side.
//! So the client here is a single-threaded tokio runtime with one task per connection slot, each opening a TCP
//! connection, doing a handshake with rustls (ring; with resumption disabled every handshake is a full one, and
//! each is checked with `handshake_kind()`), with SNI `bench.test` and ALPN `http/1.1`, sending `GET /` and
//! reading the response to the end (the proxy closes), then starting over.
//!
//! The client must not be the limit, and on two cores it easily is: with all checks, its half of a handshake
//! (X25519, the key schedule, and the ECDSA P-256 verification of the server's CertificateVerify, about a third
//! of its CPU) costs about as much as the proxy's half, and the backend shares its core. So under load it pins
//! the leaf certificate (the proxy must present exactly it; no path building) and may skip checking the
//! CertificateVerify signature. The proxy's work is the same either way: it signs every handshake. Readiness
//! checks and probes do check the signature.
//!
//! wrk over TLS (5b) offers no ALPN, so it is HTTP/1.1; its SNI "127.0.0.1" is ignored by rustls (an IP address
//! is not a valid SNI name), so reveille answers with its `--default-cert`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use testkit::stats::counts;
use testkit::tls::ServerCheck;
use testkit::wrk::WrkErrors;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Time allowed for one exchange (connect, handshake, request, response) of the handshake client.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an exchange goes and what it must get back.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    /// On 127.0.0.1.
    pub(crate) port: u16,
    /// The SNI and the `Host`.
    pub(crate) host: &'static str,
    /// The response's body must end with this.
    pub(crate) body: &'static [u8],
}

/// The certificate the proxies serve.
pub(crate) struct BenchCert {
    /// Leaf then CA, PEM.
    pub(crate) chain_pem: String,
    /// The leaf's key, PKCS#8 PEM.
    pub(crate) key_pem: String,
    /// The leaf, DER: the handshake client accepts this certificate and no other.
    pub(crate) leaf_der: Vec<u8>,
}

impl BenchCert {
    /// A CA and an ECDSA P-256 leaf it signs, for `host` and 127.0.0.1.
    pub(crate) fn generate(host: &str) -> Self {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, "reveille TLS bench CA");
        let ca_key = KeyPair::generate_for(alg).unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::new(vec![host.to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, host);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(alg).unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        Self { chain_pem: leaf.pem() + &ca.pem(), key_pem: key.serialize_pem(), leaf_der: leaf.der().to_vec() }
    }
}

impl BenchCert {
    /// The chain then the key, in one PEM file (HAProxy's `crt`).
    pub(crate) fn combined_pem(&self) -> String {
        format!("{}{}", self.chain_pem, self.key_pem)
    }
}

/// The handshake client's configurations.
pub(crate) struct Clients {
    /// Checks everything it can (the pinned certificate and the handshake signature), resumption disabled: for
    /// readiness and the probe.
    pub(crate) checked: TlsConnector,
    /// Resumption disabled: every handshake is a full one.
    pub(crate) full: TlsConnector,
    provider: Arc<CryptoProvider>,
    /// The pinned leaf, with the signature checked or not (`check_signatures`).
    verifier: Arc<ServerCheck>,
    tls13: bool,
}

impl Clients {
    /// TLS 1.3 (else 1.2) clients accepting `cert`'s leaf only; under load (`full`, [`Self::resuming`]) they
    /// check the server's handshake signature if `check_signatures`.
    pub(crate) fn new(cert: &BenchCert, tls13: bool, check_signatures: bool) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |check| ServerCheck::pinned(&provider, cert.leaf_der.clone(), check);
        let checked = connector(&provider, &verifier(true), tls13, Resumption::disabled());
        let verifier = verifier(check_signatures);
        let full = connector(&provider, &verifier, tls13, Resumption::disabled());
        Self { checked, full, provider, verifier, tls13 }
    }

    /// A client with its own session store, as a browser has: rustls keeps at most 8 TLS 1.3 tickets per
    /// server name, so tasks sharing one store would run out of tickets when many reconnect at once.
    pub(crate) fn resuming(&self) -> TlsConnector {
        connector(&self.provider, &self.verifier, self.tls13, Resumption::in_memory_sessions(32))
    }
}

/// A client configuration: TLS 1.3 or 1.2 only, ALPN `http/1.1`, the pinned certificate.
fn connector(
    provider: &Arc<CryptoProvider>,
    verifier: &Arc<ServerCheck>,
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
pub(crate) struct Negotiated {
    pub(crate) kind: Option<HandshakeKind>,
    pub(crate) version: String,
    pub(crate) suite: String,
    pub(crate) group: String,
    pub(crate) alpn: String,
}

impl Negotiated {
    pub(crate) fn describe(&self) -> String {
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
pub(crate) enum Failure {
    Connect,
    Handshake,
    Io,
    /// Not `200` with the backend's body.
    Response,
    Timeout,
}

impl Failure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Handshake => "handshake",
            Failure::Io => "io",
            Failure::Response => "response",
            Failure::Timeout => "timeout",
        }
    }
}

/// One exchange: a new TCP connection to 127.0.0.1:port, a TLS handshake with the target's host as SNI,
/// `GET /` with `Connection: close`, the response read until the proxy closes.
pub(crate) async fn exchange(connector: &TlsConnector, target: Target) -> Result<Negotiated, Failure> {
    let Target { port, host, body } = target;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|_| Failure::Connect)?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let name = ServerName::try_from(host).map_err(|_| Failure::Handshake)?;
    let mut tls = connector.connect(name, tcp).await.map_err(|_| Failure::Handshake)?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|_| Failure::Io)?;
    let mut response = Vec::with_capacity(1024);
    // Ends with an error if the proxy closes without close_notify: the response is checked either way.
    let _ = tls.read_to_end(&mut response).await;
    if !response.starts_with(b"HTTP/1.1 200") || !response.ends_with(body) {
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
pub(crate) struct Tally {
    pub(crate) ok: u64,
    /// Completed exchanges whose handshake was not of the kind wanted (full, or resumed).
    pub(crate) wrong_kind: u64,
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) errors: Errors,
}

/// One task per connector, each doing [`exchange`]s back to back for `duration`.
pub(crate) async fn handshake_load(
    connectors: &[TlsConnector],
    target: Target,
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
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&connector, target)).await {
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

/// Errors of a run: wrk's, or the handshake client's.
#[derive(Default, Clone, Copy)]
pub(crate) struct Errors {
    /// wrk's own; for the handshake client, `non_2xx_3xx` counts its unexpected responses and `write` its I/O
    /// errors.
    pub(crate) wrk: WrkErrors,
    /// Handshake client only.
    pub(crate) handshake: u64,
}

impl Errors {
    pub(crate) fn count(&mut self, f: Failure) {
        match f {
            Failure::Connect => self.wrk.connect += 1,
            Failure::Handshake => self.handshake += 1,
            Failure::Io => self.wrk.write += 1,
            Failure::Response => self.wrk.non_2xx_3xx += 1,
            Failure::Timeout => self.wrk.timeout += 1,
        }
    }

    pub(crate) fn add(&mut self, o: &Errors) {
        self.wrk.add(&o.wrk);
        self.handshake += o.handshake;
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = &self.wrk;
        f.write_str(&counts(&[
            ("response", w.non_2xx_3xx),
            ("connect", w.connect),
            ("handshake", self.handshake),
            ("read", w.read),
            ("write", w.write),
            ("timeout", w.timeout),
        ]))
    }
}

/// reveille's handshake counters, from its metrics.
#[derive(Default, Clone)]
pub(crate) struct ServerHandshakes {
    done: f64,
    /// Failed handshakes by reason.
    failed: BTreeMap<String, f64>,
}

impl ServerHandshakes {
    pub(crate) fn read(admin: u16) -> Option<Self> {
        let (_, body) = testkit::http::fetch(admin, "GET", "127.0.0.1", "/metrics", Duration::from_secs(2))?;
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
    pub(crate) fn since(&self, before: &Self) -> Self {
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
