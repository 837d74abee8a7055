//! Readiness probes: is the woken application really accepting requests? And the stop check: may an idle one
//! be stopped now?
//!
//! Owns the [`Probe`] trait the wake loop calls and [`NetProbe`], the real one (a TCP connect, or an HTTP `GET`
//! of the service's `health_path`: HTTP/2 to an `h2c://` backend, HTTP/1.1 otherwise), and the `GET` of a
//! service's `stop_check` ([`Probe::stop_check`]). It does not decide when to probe nor what a failure means:
//! the tenant's driver does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::routes::{Backend, Protocol};
use crate::upstream::get_status;

/// The longest a tenant's `stop_check` may take to answer: past it, the tenant may be stopped.
pub(crate) const STOP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a tenant's `stop_check` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCheck {
    /// 2xx: it may be stopped.
    Idle,
    /// 409 or 423: busy, ask again later.
    Busy(u16),
    /// Another status: it is stopped anyway.
    Unexpected(u16),
    /// No answer within [`STOP_CHECK_TIMEOUT`] (refused, reset, timed out): it is stopped anyway.
    NoAnswer,
}

impl StopCheck {
    /// The `result` label of `reveille_stop_checks_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StopCheck::Idle => "idle",
            StopCheck::Busy(_) => "busy",
            StopCheck::Unexpected(_) => "unexpected",
            StopCheck::NoAnswer => "no_answer",
        }
    }

    fn of(status: u16) -> Self {
        match status {
            200..=299 => StopCheck::Idle,
            409 | 423 => StopCheck::Busy(status),
            other => StopCheck::Unexpected(other),
        }
    }
}

/// Answers "is this backend ready?" once; and "may it stop?" once.
pub(crate) trait Probe: Send + Sync + 'static {
    fn ready<'a>(
        &'a self,
        target: &'a Backend,
        health_path: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

    /// `GET path` of `target`, within [`STOP_CHECK_TIMEOUT`]: straight to the backend, not through the proxy,
    /// so it is no activity of the tenant.
    fn stop_check<'a>(
        &'a self,
        target: &'a Backend,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = StopCheck> + Send + 'a>> {
        Box::pin(async move {
            let attempt = async {
                let stream = TcpStream::connect(target.authority().as_str()).await.ok()?;
                let _ = stream.set_nodelay(true);
                let h2 = target.protocol() == Protocol::H2c;
                get_status(stream, h2, target.authority().as_str(), path, "reveille-stop-check").await.ok()
            };
            match tokio::time::timeout(STOP_CHECK_TIMEOUT, attempt).await {
                Ok(Some(status)) => StopCheck::of(status.as_u16()),
                _ => StopCheck::NoAnswer,
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_check_answers() {
        assert_eq!(StopCheck::of(200), StopCheck::Idle);
        assert_eq!(StopCheck::of(204), StopCheck::Idle);
        assert_eq!(StopCheck::of(409), StopCheck::Busy(409));
        assert_eq!(StopCheck::of(423), StopCheck::Busy(423));
        assert_eq!(StopCheck::of(404), StopCheck::Unexpected(404));
        assert_eq!(StopCheck::of(503), StopCheck::Unexpected(503));
    }
}
