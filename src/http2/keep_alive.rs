//! PING keep-alive (RFC 9113 §6.7) for either side of a connection: the one part of `http2` with a timer (tokio's),
//! kept here so that the server (`proxy::conn::h2`) and the client (`upstream::h2`) share it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A connection that sends PINGs and hears their answers.
pub(crate) trait Pings {
    /// Sends a PING with `payload`.
    fn ping(&mut self, payload: [u8; 8]);
    /// Whether the last PING's answer came since last asked.
    fn take_pong(&mut self) -> bool;
}

/// A PING every `interval`; ready when one went unanswered for `timeout`: the peer vanished. An interval of zero
/// sends none.
pub(crate) struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A PING is out, unanswered.
    waiting: bool,
    sent: u64,
}

impl KeepAlive {
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Self {
        let timer = (!interval.is_zero()).then(|| Box::pin(tokio::time::sleep(interval)));
        Self { interval, timeout, timer, waiting: false, sent: 0 }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, conn: &mut impl Pings) -> Poll<()> {
        let Some(timer) = &mut self.timer else { return Poll::Pending };
        loop {
            if self.waiting && conn.take_pong() {
                self.waiting = false;
                timer.as_mut().reset(Instant::now() + self.interval);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(());
            }
            self.sent += 1;
            conn.ping(self.sent.to_be_bytes());
            self.waiting = true;
            timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}
