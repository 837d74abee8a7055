//! A throwaway etcd (`/usr/bin/etcd`, Debian's etcd-server) on free loopback ports with a temp data dir, killed
//! on drop: optionally with TLS and client certificates, or with authentication. The integration tests and the
//! etcd lab both start theirs here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::ports::free_ports;
use crate::process::read_log;

/// Where Debian's etcd-server installs etcd.
pub const ETCD: &str = "/usr/bin/etcd";

/// A running single-member etcd, killed on drop; its data dir and log live in a temp dir.
pub struct Etcd {
    /// The client URL (`http://` or, with TLS, `https://127.0.0.1:<port>`).
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// With TLS: where the CA, and the client certificate and key for mutual TLS, are.
    pub tls: Option<TlsFiles>,
    /// With auth enabled: root's password, needed by the test's own client.
    auth: Option<String>,
}

/// The PEM files a client of a TLS etcd needs.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_with(false, &[]).await
    }

    /// `tls`: serve HTTPS with a fresh CA and require client certificates. `extra`: more etcd flags.
    pub async fn start_with(tls: bool, extra: &[&str]) -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} not found: install Debian's etcd-server (scripts/test does)"
        );
        let [client_port, peer_port] = free_ports();
        let dir = tempfile::tempdir().unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let tls = tls.then(|| {
            let files = make_certs(dir.path());
            extra.extend([
                "--cert-file".into(),
                dir.path().join("server.pem").display().to_string(),
                "--key-file".into(),
                dir.path().join("server-key.pem").display().to_string(),
                "--trusted-ca-file".into(),
                files.ca.display().to_string(),
                "--client-cert-auth".into(),
            ]);
            files
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            url: format!("{scheme}://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir,
            child: None,
            extra,
            tls,
            auth: None,
        };
        // The ports were free when picked, but another process (a parallel test) can take one before etcd binds
        // it: then etcd exits at once, and it is started again on new ports.
        for attempt in 1.. {
            match etcd.spawn().await {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("address already in use") => {
                    // Whatever it wrote before it failed was for the old ports.
                    let _ = std::fs::remove_dir_all(etcd.dir.path().join("data"));
                    let [client_port, peer_port] = free_ports();
                    etcd.client_port = client_port;
                    etcd.peer_port = peer_port;
                    etcd.url = format!("{scheme}://127.0.0.1:{client_port}");
                }
                Err(log) => panic!("{log}"),
            }
        }
        etcd
    }

    fn options(&self) -> Option<etcd_client::ConnectOptions> {
        let mut o = etcd_client::ConnectOptions::new();
        if let Some(t) = &self.tls {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&t.ca).unwrap()))
                .identity(etcd_client::Identity::from_pem(
                    std::fs::read(&t.client_cert).unwrap(),
                    std::fs::read(&t.client_key).unwrap(),
                ));
            o = o.with_tls(tls);
        }
        if let Some(p) = &self.auth {
            o = o.with_user("root", p.clone());
        }
        Some(o)
    }

    /// Creates `root` (with `password`) and turns authentication on.
    pub async fn enable_auth(&mut self, password: &str) {
        let mut c = self.client().await;
        c.role_add("root").await.unwrap();
        c.user_add("root", password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
        self.auth = Some(password.to_string());
    }

    /// Starts etcd and waits until it answers; `Err` (with its log) when it exits first.
    async fn spawn(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(1), Client::connect([&self.url], self.options())).await
            {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.get("probe", None)).await {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("etcd exited ({status}) before it answered; its log:\n{}", self.log()));
            }
            assert!(Instant::now() < deadline, "etcd did not start; its log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// What etcd has logged so far (every start's, appended).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn().await {
            panic!("{log}");
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect([&self.url], self.options()).await.unwrap()
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self.client().await.put(key, value, None).await.unwrap();
        resp.header().unwrap().revision()
    }

    pub async fn delete(&self, key: &str) {
        self.client().await.delete(key, None).await.unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files in `dir`.
fn make_certs(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "reveille test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<rcgen::SanType>, usages: Vec<ExtendedKeyUsagePurpose>, stem: &str| {
        let mut p = CertificateParams::default();
        p.subject_alt_names = names;
        p.distinguished_name.push(rcgen::DnType::CommonName, stem);
        p.extended_key_usages = usages;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
    };
    // etcd also uses its server certificate as a client (its gRPC gateway dials itself): both usages.
    leaf(
        vec![
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
        ],
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        "server",
    );
    leaf(
        vec![rcgen::SanType::DnsName("reveille".try_into().unwrap())],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        "client",
    );
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    TlsFiles { ca: dir.join("ca.pem"), client_cert: dir.join("client.pem"), client_key: dir.join("client-key.pem") }
}
