//! The time as a connection's task sees it: read once each time the task is polled, as nginx reads it once per
//! turn of its event loop. A request read the clock at its start, for its response's due time, when it took and
//! gave back a backend connection, when it was no longer in flight and in the connection's watchdog: seven or
//! eight reads (`clock_gettime` and `Instant`'s arithmetic) where its connection's task is polled twice. Within
//! one poll the work done takes microseconds, and the limits these times are for count whole milliseconds.
//!
//! [`now`] is the time the current poll of a [`Clocked`] task began, or the clock itself in any other task (a
//! tunnel, an h2 backend connection, a timer's task): never later than the real time, and older by at most
//! the poll's own work. So what waits on a timer must not take `now` for proof that the timer's time has come
//! (the watchdog keeps the deadline that fired as the least the time can be), and what measures a duration
//! reads the clock at its end (a request's exit does). It is tokio's clock (`tokio::time::Instant::now`), so
//! tests with paused time see the time their timers see.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// The time the poll of the `Clocked` task running on this thread began; `None` outside one.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time: that of the current poll of a [`Clocked`] task, else read now.
#[inline]
pub(crate) fn now() -> Instant {
    NOW.with(Cell::get).unwrap_or_else(read)
}

/// The clock itself: tokio's, which is the system's monotonic clock outside tests with paused time.
fn read() -> Instant {
    tokio::time::Instant::now().into_std()
}

pin_project_lite::pin_project! {
    /// A task whose polls each read the clock once, for [`now`] to give during the poll.
    pub(crate) struct Clocked<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Clocked<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Put back as it was even if the poll unwinds (a `Clocked` task polled inside another keeps its own
        // time while it runs).
        struct Restore(Option<Instant>);
        impl Drop for Restore {
            fn drop(&mut self) {
                NOW.with(|n| n.set(self.0));
            }
        }
        let _restore = Restore(NOW.with(|n| n.replace(Some(read()))));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn within_a_poll_the_time_is_the_polls_and_outside_it_is_the_clocks() {
        let outside = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside, "outside a Clocked task, every call reads the clock");
        let mut task = std::pin::pin!(Clocked::new(async {
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(now(), first, "one time for the whole poll");
            // Yields once: the next poll reads the clock again.
            let mut yielded = false;
            std::future::poll_fn(|cx| {
                if yielded {
                    Poll::Ready(())
                } else {
                    yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
            assert!(now() > first, "the next poll has its own time");
            first
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(task.as_mut().poll(&mut cx).is_pending());
        std::thread::sleep(Duration::from_millis(2));
        let Poll::Ready(first) = task.as_mut().poll(&mut cx) else { panic!("ends on its second poll") };
        assert!(first > outside);
        assert!(NOW.with(Cell::get).is_none(), "nothing is left set after a poll");
    }
}
