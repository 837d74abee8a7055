//! A real ACME CA for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS server answering every
//! name with 127.0.0.1, validating challenges against the ports a test gives it (reveille's listeners). Its
//! own HTTPS certificate is issued by a [`TestCa`] of the test's; the roots of the certificates it issues are
//! fetched from its management interface. Both processes are killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::TestCa;

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed Pebble's own HTTPS certificate: reveille's `[acme] ca_roots`.
    pub api_roots: PathBuf,
    /// PEM of the root that Pebble's issued certificates chain to.
    pub issuer_root: String,
    pebble: Option<Child>,
    dns: Option<Child>,
    config: PathBuf,
    dns_addr: String,
    env: Vec<(String, String)>,
    api: SocketAddr,
    /// Its management interface (the issuing roots).
    mgmt: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of 127.0.0.1.
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        Self::start_with(http_port, tls_port, &[], None).await
    }

    /// With extra environment variables for Pebble (`PEBBLE_*`), and external account binding required with
    /// `eab` (key id, base64url HMAC key) when given.
    pub async fn start_with(
        http_port: u16,
        tls_port: u16,
        extra_env: &[(&str, &str)],
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        // Pebble's own ports are picked free, then bound by Pebble: another process can take one in between.
        // Pebble then exits at once, and is started again on other ports.
        let mut attempt = 0;
        let (mut p, ca) = loop {
            let dir = tempfile::tempdir().unwrap();
            let [api_port, mgmt_port, dns_port, dns_mgmt_port] = testkit::ports::free_ports::<4>();
            let ca = TestCa::new();
            let leaf = ca.issue(&["127.0.0.1", "localhost"]);
            let cert = dir.path().join("pebble.crt");
            let key = dir.path().join("pebble.key");
            let api_roots = dir.path().join("pebble-api-ca.pem");
            std::fs::write(&cert, &leaf.cert_pem).unwrap();
            std::fs::write(&key, &leaf.key_pem).unwrap();
            std::fs::write(&api_roots, ca.cert_pem()).unwrap();
            let config = dir.path().join("pebble.json");
            let mut json = serde_json::json!({ "pebble": {
                "listenAddress": format!("127.0.0.1:{api_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }});
            if let Some((kid, key)) = eab {
                json["pebble"]["externalAccountBindingRequired"] = true.into();
                json["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
            }
            std::fs::write(&config, json.to_string()).unwrap();
            let dns = Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv (Debian's pebble package) must be installed");
            let mut env: Vec<(String, String)> = vec![
                // Validate at once, and never reject a good nonce: the tests time what reveille does, not Pebble.
                ("PEBBLE_VA_NOSLEEP".into(), "1".into()),
                ("PEBBLE_WFE_NONCEREJECT".into(), "0".into()),
                ("PEBBLE_AUTHZREUSE".into(), "0".into()),
            ];
            env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut p = Pebble {
                directory: format!("https://127.0.0.1:{api_port}/dir"),
                api_roots,
                issuer_root: String::new(),
                pebble: None,
                dns: Some(dns),
                config,
                dns_addr: format!("127.0.0.1:{dns_port}"),
                env,
                api: ([127, 0, 0, 1], api_port).into(),
                mgmt: ([127, 0, 0, 1], mgmt_port).into(),
                _dir: dir,
            };
            match p.try_up().await {
                Ok(()) => break (p, ca),
                Err(log) if attempt < 2 => {
                    eprintln!("Pebble exited at start ({log}); again on other ports");
                    attempt += 1;
                }
                Err(log) => panic!("Pebble exited at start, three times: {log}"),
            }
        };
        p.issuer_root = https_get(p.mgmt, "/roots/0", &ca).await;
        assert!(p.issuer_root.contains("BEGIN CERTIFICATE"), "Pebble's root: {}", p.issuer_root);
        p
    }

    /// Starts Pebble (again, after [`Pebble::stop`]), and waits until its API accepts connections.
    pub async fn up(&mut self) {
        if let Err(log) = self.try_up().await {
            panic!("Pebble exited at start: {log}");
        }
    }

    /// Starts Pebble and waits until its API accepts connections; `Err` with what it logged if it exits first.
    async fn try_up(&mut self) -> Result<(), String> {
        let log = self._dir.path().join("pebble.log");
        let child = Command::new("pebble")
            .args(["-config", self.config.to_str().unwrap(), "-dnsserver", &self.dns_addr])
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("pebble (Debian's pebble package) must be installed");
        self.pebble = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Both of its listeners: Pebble exits if it cannot bind either.
        while TcpStream::connect(self.api).await.is_err() || TcpStream::connect(self.mgmt).await.is_err() {
            if let Some(status) = self.pebble.as_mut().unwrap().try_wait().unwrap() {
                self.pebble = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = text.lines().rev().take(3).collect();
                return Err(format!("{status}: {}", last.into_iter().rev().collect::<Vec<_>>().join(" | ")));
            }
            assert!(Instant::now() < deadline, "Pebble did not start listening on {} and {}", self.api, self.mgmt);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops Pebble (the CA is unreachable until [`Pebble::up`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A TLS client that trusts Pebble's issuing root only.
    pub fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(self.issuer_root.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` over HTTPS from Pebble's management interface, trusting `ca`; the body.
async fn https_get(addr: SocketAddr, path: &str, ca: &TestCa) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut tls = super::tls::connect(&ca.client(&["http/1.1"]), addr, None).await?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            tls.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            let _ = tls.read_to_end(&mut buf).await;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        }
        .await;
        if let Ok(text) = attempt {
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if text.starts_with("HTTP/1.1 200") {
                    return body.to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "Pebble's management interface did not answer {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
