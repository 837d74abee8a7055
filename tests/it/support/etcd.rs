//! A real etcd (testkit's throwaway etcd, re-exported) and a TCP forwarder whose link can be cut, to disconnect
//! reveille from etcd while etcd keeps running.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use testkit::etcd::Etcd;

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
