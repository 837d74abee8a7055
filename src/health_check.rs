//! Active health checks of backends: for each service with a `health_check`, one task per backend that asks
//! `GET path` every `interval` over HTTP/1.1 (a connection per check, closed after the answer's head; over TLS
//! for `https://` backends, with the service's `tls` settings and only `http/1.1` offered by ALPN; over HTTP/2
//! with prior knowledge for `h2c://` backends, which speak nothing else); a failed
//! check takes the backend out of its service's rotation until a check passes. Each replica checks for
//! itself, as nginx and HAProxy do.
//!
//! Tasks follow the route table: spawned for a backend that appears, stopped for one that goes (a redefined
//! service's backends are new ones, checked afresh). Services with a `container` are never checked: whether
//! their tenant runs is passivation's business, and a check must not wake it or count as its activity.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::routes::{Backend, HealthCheck, Protocol, RouteHandle, RouteTable};
use crate::upstream::{get_status, GetError};

/// Why one check failed.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("{0}")]
    Get(#[from] GetError),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    #[error("answered {0}")]
    Status(u16),
}

/// One running check: its backend (kept alive, so its identity is not reused) and what stops it.
struct Running {
    _backend: Backend,
    stop: CancellationToken,
}

/// Checks the backends of the table in force until `cancel`, following its changes.
pub(crate) async fn run(routes: RouteHandle, cancel: CancellationToken) {
    let mut versions = routes.subscribe();
    let mut running: HashMap<usize, Running> = HashMap::new();
    loop {
        reconcile(&routes.load(), &mut running, &cancel);
        tokio::select! {
            r = versions.changed() => if r.is_err() { break },
            () = cancel.cancelled() => break,
        }
    }
    for r in running.into_values() {
        r.stop.cancel();
    }
}

/// Starts the checks the table wants and stops the others.
fn reconcile(table: &RouteTable, running: &mut HashMap<usize, Running>, cancel: &CancellationToken) {
    let mut wanted: HashMap<usize, (Arc<str>, Backend, HealthCheck, Option<Tls>)> = HashMap::new();
    for (name, service) in table.services() {
        let Some(check) = &service.balance().health_check else { continue };
        if service.container().is_some() {
            continue;
        }
        for b in service.backends() {
            let tls = match (b.protocol(), service.backend_tls()) {
                (Protocol::Http1 | Protocol::H2c, _) => None,
                (Protocol::Https, Some(tls)) => match tls.server_name_for(b.authority()) {
                    Ok(name) => Some(Tls { connector: tls.http1_connector(), name }),
                    Err(_) => continue,
                },
                _ => {
                    debug!(service = &**name, backend = b.as_str(), "health checks speak HTTP/1.1: not checked");
                    continue;
                }
            };
            wanted.insert(b.id(), (name.clone(), b.clone(), check.clone(), tls));
        }
    }
    running.retain(|id, r| {
        let keep = wanted.contains_key(id);
        if !keep {
            r.stop.cancel();
        }
        keep
    });
    for (id, (service, backend, check, tls)) in wanted {
        if running.contains_key(&id) {
            continue;
        }
        let stop = cancel.child_token();
        let span = tracing::info_span!("health_check", service = &*service, backend = backend.as_str());
        tokio::spawn(check_loop(backend.clone(), check, tls, stop.clone()).instrument(span));
        running.insert(id, Running { _backend: backend, stop });
    }
}

/// How an `https://` backend's checks reach it.
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// Checks `backend` every `check.interval` (the first at once) until `stop`.
async fn check_loop(backend: Backend, check: HealthCheck, tls: Option<Tls>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let outcome = tokio::select! {
            r = tokio::time::timeout(check.timeout, probe(&backend, tls.as_ref(), &check.path)) => {
                r.unwrap_or(Err(CheckError::Timeout(check.timeout)))
            }
            () = stop.cancelled() => return,
        };
        match outcome {
            Ok(()) => {
                if backend.check_passed() {
                    info!("health check passes again: backend back in the rotation");
                }
            }
            Err(e) => {
                if backend.check_failed() {
                    warn!(path = check.path, "health check failed ({e}): backend out of the rotation until one passes");
                } else {
                    debug!(path = check.path, "health check still failing: {e}");
                }
            }
        }
    }
}

/// One check: `GET path` on a new connection (TLS when `tls` is given); passes on 200 to 399.
async fn probe(backend: &Backend, tls: Option<&Tls>, path: &str) -> Result<(), CheckError> {
    let authority = backend.authority().as_str();
    let stream = TcpStream::connect(authority).await.map_err(CheckError::Connect)?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => exchange(stream, backend.protocol() == Protocol::H2c, authority, path).await,
        Some(t) => {
            let stream = t.connector.connect(t.name.clone(), stream).await.map_err(CheckError::Tls)?;
            exchange(stream, false, authority, path).await
        }
    }
}

/// `GET path` over `io` (HTTP/2 with prior knowledge when `h2`), to the answer's head; passes on 200 to 399.
async fn exchange<I>(io: I, h2: bool, authority: &str, path: &str) -> Result<(), CheckError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let status = get_status(io, h2, authority, path, "reveille-health-check").await?.as_u16();
    if HealthCheck::passes(status) {
        Ok(())
    } else {
        Err(CheckError::Status(status))
    }
}
