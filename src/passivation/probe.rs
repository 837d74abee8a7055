//! Readiness probes: is the woken application really accepting requests?
//!
//! Owns the [`Probe`] trait the wake loop calls and [`NetProbe`], the real one (a TCP connect, or an HTTP `GET`
//! of the service's `health_path`: HTTP/2 to an `h2c://` backend, HTTP/1.1 otherwise). It does not decide when to probe nor what a failure means: the tenant's
//! driver does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::routes::{Backend, Protocol};
use crate::upstream::get_status;

/// Answers "is this backend ready?" once.
pub(crate) trait Probe: Send + Sync + 'static {
    fn ready<'a>(
        &'a self,
        target: &'a Backend,
        health_path: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// The real probe: a TCP connect, or with a health path an HTTP `GET` that must answer below 500.
#[derive(Debug, Clone)]
pub(crate) struct NetProbe {
    /// Time allowed for one probe.
    pub timeout: Duration,
}

impl Default for NetProbe {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(1) }
    }
}

impl Probe for NetProbe {
    fn ready<'a>(
        &'a self,
        target: &'a Backend,
        health_path: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let attempt = async {
                let stream = TcpStream::connect(target.authority().as_str()).await.ok()?;
                let Some(path) = health_path else { return Some(true) };
                let _ = stream.set_nodelay(true);
                let h2 = target.protocol() == Protocol::H2c;
                let status = get_status(stream, h2, target.authority().as_str(), path, "reveille-probe").await.ok()?;
                Some(status.as_u16() < 500)
            };
            matches!(tokio::time::timeout(self.timeout, attempt).await, Ok(Some(true)))
        })
    }
}
