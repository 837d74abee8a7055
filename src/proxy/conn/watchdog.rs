//! The connection's timer: fires when the connection has been idle too long, has spent too long reading one
//! request head, or has waited too long for its client (or, over HTTP/1.1 or under pressure, its backend) while a
//! request is in flight; every limit cut to the overload timeout under pressure.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::pressure::Pressure;
use super::ConnState;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Idle,
    HeaderTimeout,
    /// The client read nothing of a response for the send timeout.
    SendTimeout,
    /// Under pressure: a request body waited on its client, or a response body on its backend, for the
    /// overload timeout.
    Shed,
    /// HTTP/1.1: the response body waited on its backend for the upstream read timeout.
    UpstreamIdle,
    /// HTTP/1.1: the response head of the request in flight is late (`response_timeout`); the request is
    /// answered, the connection stays.
    ResponseDue,
}

pin_project! {
    /// Fires when the connection has been idle for `idle`, has spent `header` reading one request head, or has
    /// waited `send` for a client to read its response. Its timer is inline (the connection's future pins it):
    /// not a heap block of every connection.
    pub(super) struct Watchdog<'a> {
        pub(super) state: Arc<ConnState>,
        pressure: &'a Pressure,
        idle_ms: u64,
        header_ms: u64,
        send_ms: u64,
        read_ms: u64,
        #[pin]
        sleep: Sleep,
        // Deadline the sleep is set to, in ms since the connection's epoch.
        armed_ms: u64,
        // The sleep was polled since it was last set and is waiting with the task's waker: until it fires, a
        // poll that finds its deadline still good need not read the clock or poll the sleep again.
        registered: bool,
    }
}

impl<'a> Watchdog<'a> {
    pub(super) fn new(state: Arc<ConnState>, pressure: &'a Pressure, settings: &crate::proxy::Settings) -> Self {
        let (idle, header, send) = (settings.idle_timeout, settings.header_read_timeout, settings.send_timeout);
        let epoch = state.epoch;
        Self {
            state,
            pressure,
            idle_ms: idle.as_millis() as u64,
            header_ms: header.as_millis() as u64,
            send_ms: send.as_millis() as u64,
            read_ms: settings.upstream_read_timeout.as_millis() as u64,
            sleep: tokio::time::sleep_until(epoch),
            armed_ms: 0,
            registered: false,
        }
    }

    /// Sets the timer for `deadline_ms`, unless it is already set to fire before it (and after `now_ms`):
    /// then it is kept, and on firing the state is looked at again. Deadlines move with every request;
    /// an occasional early wake-up costs less than resetting a timer each time.
    fn arm(self: Pin<&mut Self>, deadline_ms: u64, now_ms: u64) {
        let this = self.project();
        if *this.armed_ms > now_ms && *this.armed_ms <= deadline_ms {
            return;
        }
        if deadline_ms != *this.armed_ms {
            *this.armed_ms = deadline_ms;
            *this.registered = false;
            this.sleep.reset(this.state.epoch + Duration::from_millis(deadline_ms));
        }
    }
}

impl Future for Watchdog<'_> {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        if self.still_armed() {
            return Poll::Pending;
        }
        // The least the time can be: the deadline of a sleep that fired in this poll. The poll's time (`clock`)
        // was read when it began, and may be earlier: taken alone, it would find the deadline not yet come,
        // set the timer for it again, and the timer would fire again at once.
        let mut fired_ms = 0;
        loop {
            let s = &self.state;
            let now = s.now_ms().max(fired_ms);
            let p = self.pressure;
            let (deadline, expiry) = if s.in_flight.load(Ordering::Relaxed) > 0 {
                // The earliest of: a client not reading; a response body waiting on its backend (HTTP/1.1, whose
                // bodies keep no timer of their own, or anyone under pressure); a request body waiting on its
                // client, under pressure.
                let mut next: Option<(u64, Expiry)> = None;
                let mut consider = |at: u64, e: Expiry| {
                    if next.as_ref().is_none_or(|(n, _)| at < *n) {
                        next = Some((at, e));
                    }
                };
                let blocked = s.write_blocked.load(Ordering::Relaxed);
                if blocked != 0 {
                    consider(blocked - 1 + p.cap(self.send_ms), Expiry::SendTimeout);
                }
                let upstream = s.upstream_wait.load(Ordering::Relaxed);
                if upstream != 0 && p.is_high() {
                    consider(upstream - 1 + p.cap_ms.min(self.read_ms), Expiry::Shed);
                } else if upstream != 0 && s.is_h1() {
                    consider(upstream - 1 + self.read_ms, Expiry::UpstreamIdle);
                }
                let body = s.body_wait.load(Ordering::Relaxed);
                if body != 0 && p.is_high() {
                    consider(body - 1 + p.cap_ms, Expiry::Shed);
                }
                let due = s.response_due.load(Ordering::Relaxed);
                if due != 0 {
                    consider(due - 1, Expiry::ResponseDue);
                }
                match next {
                    Some((at, e)) => (at, Some(e)),
                    // Busy: the body and upstream timeouts apply, not ours. Look again later (nothing wakes the
                    // watchdog when a write or a body starts to wait on another task, so it looks at least
                    // every `send`, and every overload timeout under pressure).
                    None => {
                        let every = p.cap(self.idle_ms.min(self.send_ms)).max(100);
                        (now + every, None)
                    }
                }
            } else if s.closing.load(Ordering::Relaxed) {
                // Asked to close, nothing in flight: no limit of the watchdog's applies any more (no idle or
                // header timeout; the close has its own).
                return Poll::Pending;
            } else {
                match s.head_started.load(Ordering::Relaxed) {
                    0 => (s.idle_since.load(Ordering::Relaxed) + p.cap(self.idle_ms), Some(Expiry::Idle)),
                    started => (started - 1 + p.cap(self.header_ms), Some(Expiry::HeaderTimeout)),
                }
            };
            if let Some(e) = expiry {
                if now >= deadline {
                    return Poll::Ready(e);
                }
            }
            self.as_mut().arm(deadline, now);
            let this = self.as_mut().project();
            if this.sleep.poll(cx).is_pending() {
                *this.registered = true;
                return Poll::Pending;
            }
            // The sleep fired: re-evaluate with fresh state (the deadline may have moved on).
            fired_ms = fired_ms.max(*this.armed_ms);
            *this.armed_ms = 0;
            *this.registered = false;
        }
    }
}

impl Watchdog<'_> {
    /// HTTP/1.1, the usual poll: the timer is set, waiting, and no later than any limit the connection's state
    /// now calls for, so nothing can be due before it fires. Then the poll ends here, without reading the clock
    /// or polling the sleep (the two were about 360 instructions of every request, polled twice each). Only for
    /// HTTP/1.1, whose state changes all happen in the connection's own task, just before the watchdog is
    /// polled: h2 streams change it from their own tasks, and the full poll's look at least every send timeout
    /// is what catches them.
    fn still_armed(&self) -> bool {
        let s = &self.state;
        if !self.registered || !s.is_h1() || self.sleep.is_elapsed() {
            return false;
        }
        let p = self.pressure;
        if p.is_high() {
            return false;
        }
        let armed = self.armed_ms;
        if s.in_flight.load(Ordering::Relaxed) > 0 {
            // The limits that may apply to a request in flight when not under pressure (see `poll`); with none
            // waiting, the timer set is as good as any.
            let blocked = s.write_blocked.load(Ordering::Relaxed);
            if blocked != 0 && blocked - 1 + self.send_ms < armed {
                return false;
            }
            let upstream = s.upstream_wait.load(Ordering::Relaxed);
            if upstream != 0 && upstream - 1 + self.read_ms < armed {
                return false;
            }
            let due = s.response_due.load(Ordering::Relaxed);
            if due != 0 && due - 1 < armed {
                return false;
            }
            return true;
        }
        let deadline = match s.head_started.load(Ordering::Relaxed) {
            0 => s.idle_since.load(Ordering::Relaxed) + self.idle_ms,
            started => started - 1 + self.header_ms,
        };
        armed <= deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poll's time (`clock`) is read as the poll begins. When the timer fires during the poll (another
    /// worker's driver ran it), the deadline it fired for is the least the time can be: the watchdog expires,
    /// where taking the poll's older time alone it set the timer again for a deadline already past, which
    /// fired again at once, round and round until the task's budget ran out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timer_that_fires_during_a_poll_expires_though_the_polls_time_is_older() {
        let pressure = Arc::new(Pressure::new(1, Duration::ZERO));
        let state = ConnState::for_test(&pressure);
        state.track_heads.store(true, Ordering::Relaxed);
        // A head began at the connection's start: the header timeout is due 20 ms after it.
        state.head_started.store(1, Ordering::Relaxed);
        let settings = crate::proxy::Settings { header_read_timeout: Duration::from_millis(20), ..Default::default() };
        let task = crate::clock::Clocked::new(async move {
            let mut dog = std::pin::pin!(Watchdog::new(state, &pressure, &settings));
            let mut polls = 0;
            std::future::poll_fn(|cx| {
                polls += 1;
                match polls {
                    // Sets the timer, and asks for the next poll at once.
                    1 => {
                        assert!(dog.as_mut().poll(cx).is_pending(), "not due yet");
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    // Begins well before the deadline, and looks at the watchdog well after it: the timer has
                    // fired meanwhile, on the other worker.
                    _ => {
                        std::thread::sleep(Duration::from_millis(300));
                        Poll::Ready(dog.as_mut().poll(cx))
                    }
                }
            })
            .await
        });
        let seen = tokio::time::timeout(Duration::from_secs(10), tokio::spawn(task)).await.unwrap().unwrap();
        assert_eq!(seen, Poll::Ready(Expiry::HeaderTimeout));
    }
}
