//! Where an exchange gets its backend connection, as pingora's `TransportConnector`: an idle one from the pool
//! when there is one ([`Connector::checkout`]), else a new one ([`Connector::connect`]: hyper-util's
//! `HttpConnector`, with `TCP_NODELAY` and the connect timeout, its socket wrapped in a [`Socket`]). The
//! connection goes back to the pool from the proxy's side, once its response has been read to the end
//! (`Pooled::release`), never from here.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;

use super::error::ConnectError;
use super::pool::{Pool, Pooled};
use super::wire::{Socket, Wire};

/// A backend connection checked out (or opened) for one exchange.
pub(crate) type Conn = Pooled<Authority, Wire>;

/// What [`Connector`] is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectSettings {
    pub connect_timeout: Duration,
    /// Immediate ACKs once a connection stalls (see `wire`).
    pub quickack: bool,
    /// Worker threads: the pool has a shard per worker.
    pub workers: usize,
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
}

/// Opens backend connections and keeps the idle ones.
#[derive(Debug)]
pub(crate) struct Connector {
    http: HttpConnector,
    quickack: bool,
    pool: Pool<Authority, Wire>,
}

impl Connector {
    /// Starts the pool's idle sweep when called on a runtime.
    pub(crate) fn new(settings: ConnectSettings) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.enforce_http(true);
        let pool = Pool::new(settings.workers, settings.max_idle_per_backend, settings.idle_timeout);
        Self { http, quickack: settings.quickack, pool }
    }

    /// The most recently released idle connection to `backend` that is still open, if there is one.
    pub(crate) fn checkout(&self, backend: &Authority) -> Option<Conn> {
        self.pool.checkout(backend)
    }

    /// Opens a new connection to `backend` (within the connect timeout).
    pub(crate) async fn connect(&self, backend: &Authority) -> Result<Conn, ConnectError> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(backend.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ConnectError::other(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let mut http = self.http.clone();
        let io = tower::Service::<Uri>::call(&mut http, uri).await.map_err(ConnectError::other)?;
        let wire = Wire::new(Socket::new(io.into_inner(), self.quickack));
        Ok(self.pool.adopt(backend, wire))
    }
}
