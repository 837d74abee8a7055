//! A real etcd (`/usr/bin/etcd`, Debian's etcd-server) on free loopback ports with a temp data dir, killed on
//! drop; and a TCP forwarder whose link can be cut, to disconnect reveille from etcd while etcd keeps running.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ETCD: &str = "/usr/bin/etcd";

pub struct Etcd {
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    pub async fn start() -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} not found: install Debian's etcd-server (scripts/test does)"
        );
        let (client_port, peer_port) = (free_port(), free_port());
        let mut etcd = Etcd {
            url: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        etcd.spawn().await;
        etcd
    }

    async fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(1), Client::connect([&self.url], None)).await
            {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.get("probe", None)).await {
                    return;
                }
            }
            let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "etcd did not start; its log:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        self.spawn().await;
    }

    pub async fn client(&self) -> Client {
        Client::connect([&self.url], None).await.unwrap()
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

/// Forwards a loopback port to a target; `cut` closes the listener and every forwarded connection, `restore`
/// listens again on the same port.
pub struct Forwarder {
    pub addr: SocketAddr,
    target: SocketAddr,
    link: CancellationToken,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = CancellationToken::new();
        tokio::spawn(forward(listener, target, link.clone()));
        Forwarder { addr, target, link }
    }

    pub fn cut(&mut self) {
        self.link.cancel();
    }

    pub async fn restore(&mut self) {
        self.link = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        tokio::spawn(forward(listener, self.target, self.link.clone()));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.link.cancel();
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, link: CancellationToken) {
    loop {
        let mut inbound = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => return },
            _ = link.cancelled() => return,
        };
        let link = link.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = link.cancelled() => {}
            }
        });
    }
}
