//! [`OnWake`]: a future polled only once it asked to be woken, so that a `select!` branch waiting for something
//! rare costs an atomic swap each time the task runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls a future only once it asked to be woken (and the first time). `select!` polls every branch each time
/// its task runs; wrapped like this, a branch that waits for something rare costs an atomic swap instead.
pub(super) struct OnWake<F> {
    fut: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

/// Set by the wrapped future's waker, which then wakes the task.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    pub(super) fn new(fut: F) -> Self {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(flag.clone());
        Self { fut, flag, waker }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        Pin::new(&mut this.fut).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A future that counts its polls and is ready once `notify` has been notified.
    fn counted(notify: Arc<tokio::sync::Notify>, polls: Arc<AtomicUsize>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut notified = Box::pin(async move { notify.notified().await });
        Box::pin(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            notified.as_mut().poll(cx)
        }))
    }

    #[tokio::test]
    async fn on_wake_polls_its_future_only_once_it_was_woken() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let polls = Arc::new(AtomicUsize::new(0));
        let mut rare = OnWake::new(counted(notify.clone(), polls.clone()));
        let mut other = Box::pin(tokio::time::sleep(Duration::from_millis(1)));
        // The task runs many times for other reasons: the wrapped future is polled once, to register.
        for _ in 0..20 {
            let pending = std::future::poll_fn(|cx| {
                let _ = other.as_mut().poll(cx);
                Poll::Ready(Pin::new(&mut rare).poll(cx).is_pending())
            })
            .await;
            assert!(pending);
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own wake-up wakes the task and gets it polled, and it completes.
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), &mut rare).await.expect("woken and completed");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
