//! The per-core scheduler: extra worker threads, each with its own single-threaded tokio runtime, each
//! accepting on its own handle of the proxy's listeners and serving the connections it accepted from start to
//! end, with its own shard of the backend pool.
//!
//! Why: tokio's multi-thread scheduler steals work between threads and wakes tasks across them, which costs
//! on every request when each request is a few microseconds of work (see docs/design/performance.md, "The
//! runtime model", for both models measured). The caller's runtime is worker 0; this module starts workers 1 to n-1.
//!
//! Each worker accepts from a duplicate of the listening socket (the same kernel accept queue): whichever
//! worker is free first takes the next connection. Shutdown: a worker stops accepting when `shutdown` is
//! cancelled (as worker 0 does), keeps serving its open connections, and ends its runtime when `stop` is
//! cancelled (after the drain).

use std::os::fd::AsFd as _;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info_span, Instrument as _};

use super::Proxy;
use crate::tls::TlsAcceptor;
use crate::upstream;

/// A started worker thread.
pub(crate) struct Worker {
    /// Resolves when the worker no longer accepts.
    pub(crate) accepting: oneshot::Receiver<()>,
    /// Resolves when the worker's runtime has ended.
    pub(crate) ended: oneshot::Receiver<()>,
}

/// Starts workers `1..workers` serving `listeners` (each with its TLS acceptor, if any) for `proxy`.
pub(crate) fn spawn(
    proxy: &Arc<Proxy>,
    listeners: &[(&TcpListener, Option<Arc<TlsAcceptor>>)],
    workers: usize,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
) -> std::io::Result<Vec<Worker>> {
    let mut started = Vec::new();
    for index in 1..workers {
        let mut own = Vec::with_capacity(listeners.len());
        for (listener, tls) in listeners {
            let fd = listener.as_fd().try_clone_to_owned()?;
            own.push((std::net::TcpListener::from(fd), tls.clone()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (accepting_tx, accepting) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        let (proxy, shutdown, stop) = (proxy.clone(), shutdown.clone(), stop.clone());
        std::thread::Builder::new().name(format!("reveille-worker-{index}")).spawn(move || {
            upstream::set_worker(index);
            let span = info_span!("worker", index);
            runtime.block_on(
                async move {
                    let mut accept = Vec::with_capacity(own.len());
                    for (listener, tls) in own {
                        match TcpListener::from_std(listener) {
                            Ok(l) => accept.push(tokio::spawn(proxy.clone().serve(l, tls, shutdown.clone()))),
                            Err(e) => {
                                error!(error = %e, "worker cannot accept: its share of connections goes to the others")
                            }
                        }
                    }
                    for a in accept {
                        let _ = a.await;
                    }
                    let _ = accepting_tx.send(());
                    stop.cancelled().await;
                }
                .instrument(span),
            );
            drop(runtime);
            let _ = ended_tx.send(());
        })?;
        started.push(Worker { accepting, ended });
    }
    Ok(started)
}
