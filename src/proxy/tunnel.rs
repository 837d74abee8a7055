//! Upgraded connections (WebSocket): bytes copied both ways between client and backend until either side
//! closes, the tunnel has been idle too long, or the process stops.
//!
//! A tunnel keeps its client connection's slot (see `conn::Slot`), so open WebSockets count against
//! `max_connections` and in `reveille_open_connections`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::conn::{ConnState, H1Upgrade};
use crate::upstream::Upgraded;

/// The client's side of an upgrade, from whichever HTTP/1.1 server side served the request.
pub(crate) enum ClientUpgrade {
    Hyper(OnUpgrade),
    Own(H1Upgrade),
}

/// An upgraded client connection.
trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

impl ClientUpgrade {
    /// The upgrade of `req`: reveille's own server side puts its [`H1Upgrade`] in the request's extensions.
    pub(crate) fn of<B>(req: &mut http::Request<B>) -> Self {
        match req.extensions_mut().remove::<H1Upgrade>() {
            Some(own) => Self::Own(own),
            None => Self::Hyper(hyper::upgrade::on(req)),
        }
    }

    async fn upgraded(self) -> Result<Box<dyn ClientIo>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match self {
            Self::Hyper(on) => Box::new(TokioIo::new(on.await?)),
            Self::Own(own) => Box::new(own.upgraded().await?),
        })
    }
}

/// Runs one tunnel to its end, between the client's upgraded connection and the backend's (with the bytes it
/// sent past its `101`). `_conn` is held so the connection's slot stays taken while the tunnel lives, and
/// `_activity` so a passivated tenant is never stopped under an open WebSocket.
pub(crate) async fn run(
    client: ClientUpgrade,
    mut backend: Upgraded,
    idle: Duration,
    _conn: Arc<ConnState>,
    _activity: Option<crate::passivation::Activity>,
) {
    _conn.upgraded();
    let client = match client.upgraded().await {
        Ok(client) => client,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked { inner: client, last: last.clone(), epoch };
    let idle_ms = idle.as_millis() as u64;
    let watch = async {
        loop {
            let deadline = last.load(Ordering::Relaxed) + idle_ms;
            let now = epoch.elapsed().as_millis() as u64;
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => match r {
            Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
            Err(e) => debug!(error = %e, "tunnel ended with an error"),
        },
        _ = watch => debug!(idle = ?idle, "tunnel idle; closing"),
    }
}

/// The client side of a tunnel, noting when bytes last moved in either direction.
struct Tracked<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
