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

/// The longest [`Probe::answers`] waits for a response head.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

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

    /// Whether `target` answers an HTTP `GET /` at all, whatever the status, within [`ANSWER_TIMEOUT`]: the
    /// readiness of what is reached through a port Docker publishes (a Swarm service's), where Docker's userland
    /// proxy accepts connections before the application listens and closes them when it cannot reach it, so a
    /// TCP connect proves nothing.
    fn answers<'a>(&'a self, target: &'a Backend) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let attempt = async {
                let stream = TcpStream::connect(target.authority().as_str()).await.ok()?;
                let _ = stream.set_nodelay(true);
                let h2 = target.protocol() == Protocol::H2c;
                get_status(stream, h2, target.authority().as_str(), "/", "reveille-probe").await.ok()
            };
            matches!(tokio::time::timeout(ANSWER_TIMEOUT, attempt).await, Ok(Some(_)))
        })
    }

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

    /// A listener that accepts every connection, reads the request, then answers `reply` (or closes at once
    /// when it is empty, as Docker's userland proxy does when nothing listens behind it).
    async fn listener(reply: &'static [u8]) -> Backend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    if !reply.is_empty() {
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        Backend::parse(&addr.to_string()).unwrap()
    }

    /// What a published port's probe must tell apart: a connection accepted and closed (the application not
    /// listening yet behind Docker's proxy) is not ready, though a TCP connect succeeds; any HTTP answer is.
    #[tokio::test]
    async fn answers_needs_an_http_answer_not_a_connect() {
        let closing = listener(b"").await;
        assert!(NetProbe::default().ready(&closing, None).await, "a connect alone passes the TCP probe");
        assert!(!NetProbe::default().answers(&closing).await, "accepted and closed is no answer");

        let failing = listener(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
        assert!(NetProbe::default().answers(&failing).await, "a 500 is an answer: the application listens");

        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let dead = Backend::parse(&gone.to_string()).unwrap();
        assert!(!NetProbe::default().answers(&dead).await, "nothing listening");
    }
}
