//! A connection's output, as its task writes it, the same for both sides: the frames the connection and its
//! streams queued, taken in batches and written to the socket (anything `AsyncWrite`), the streams told when
//! there is room again, and whether to read the peer's frames meanwhile.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

use super::core::Shared;

/// A connection's output: [`Output::poll_write`] writes what was queued.
pub(crate) struct Output {
    shared: Shared,
}

impl Output {
    pub(super) fn new(shared: Shared) -> Output {
        Output { shared }
    }

    /// Writes what the connection and its streams queued to `io`, `pending` holding what was taken and is not
    /// written yet: ready once all of it is written (not flushed), pending while the socket is full.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut W,
        pending: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        loop {
            if pending.is_empty() {
                match self.take_output() {
                    Some(out) => *pending = out,
                    None => break,
                }
            }
            match Pin::new(&mut *io).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero))),
                Poll::Ready(Ok(n)) => pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        self.unflushed(pending.len());
        if pending.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// The bytes to write next, if any: the caller writes them before it asks again, and says how many are
    /// left unwritten with [`Self::unflushed`].
    pub(crate) fn take_output(&self) -> Option<Bytes> {
        self.shared.lock().take_output()
    }

    /// Of the bytes taken, `n` are still to write. Streams waiting for room are woken when there is some.
    pub(crate) fn unflushed(&self, n: usize) {
        self.shared.lock().set_unflushed(n);
    }

    /// Whether to read the peer's frames now: not while the frames to write pile up.
    pub(crate) fn wants_read(&self) -> bool {
        self.shared.lock().wants_read()
    }

    /// The connection's task, to wake when streams queue frames (while it is not polling them, on a server).
    pub(crate) fn set_waker(&self, waker: &Waker) {
        self.shared.lock().set_waker(waker);
    }
}
