//! Where an exchange gets its backend connection, as pingora's `TransportConnector`: an idle one from the pool
//! when there is one ([`Connector::checkout`]), else a new one ([`Connector::connect`]: hyper-util's
//! `HttpConnector`, with `TCP_NODELAY` and the connect timeout, its socket wrapped in a [`Socket`]). The
//! connection goes back to the pool from the proxy's side, once its response has been read to the end
//! (`Pooled::release`), never from here.
//!
//! HTTP/2 backends (`h2c://`) have their own connections, multiplexed ([`H2Pool`], in `h2`):
//! [`Connector::send_h2c`] sends a request on a stream of one, opened over TCP by the same `HttpConnector`.
//! Connections are kept apart by protocol (one pool per protocol) and, within it, by the backend's authority.

use std::future::Future;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;

use super::error::ConnectError;
use super::h2::{self as h2c, H2Body, H2Failure, H2Pool, H2RequestBody, H2Settings};
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
    /// HTTP/2 connections to one backend per worker, at most.
    pub h2_connections_per_backend: usize,
    /// HTTP/2 PING keep-alive: a PING every `h2_keep_alive_interval`; no answer within
    /// `h2_keep_alive_timeout` closes the connection (its streams fail, new requests go on another).
    pub h2_keep_alive_interval: Duration,
    pub h2_keep_alive_timeout: Duration,
}

/// Opens backend connections and keeps the idle ones.
#[derive(Debug)]
pub(crate) struct Connector {
    http: HttpConnector,
    quickack: bool,
    pool: Pool<Authority, Wire>,
    /// Connections to `h2c://` backends.
    h2c: H2Pool,
}

impl Connector {
    /// Starts the pool's idle sweep when called on a runtime.
    pub(crate) fn new(settings: ConnectSettings) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.enforce_http(true);
        let pool = Pool::new(settings.workers, settings.max_idle_per_backend, settings.idle_timeout);
        let h2c = H2Pool::new(H2Settings {
            workers: settings.workers,
            connections: settings.h2_connections_per_backend,
            keep_alive_interval: settings.h2_keep_alive_interval,
            keep_alive_timeout: settings.h2_keep_alive_timeout,
            idle_timeout: settings.idle_timeout,
        });
        Self { http, quickack: settings.quickack, pool, h2c }
    }

    /// Sends `req` (its URI absolute, `http://` and the backend's authority) to the `h2c://` backend
    /// `backend` on a stream of one of its connections, and waits for the response head.
    pub(crate) async fn send_h2c(
        &self,
        backend: &Authority,
        req: Request<H2RequestBody>,
    ) -> Result<Response<H2Body>, H2Failure> {
        h2c::send(&self.h2c, backend.as_str(), || self.tcp(backend), req).await
    }

    /// A TCP connection to `backend` (within the connect timeout), opened by a future that owns what it needs.
    fn tcp(&self, backend: &Authority) -> impl Future<Output = Result<TcpStream, ConnectError>> + Send + 'static {
        let uri = Uri::builder().scheme(Scheme::HTTP).authority(backend.clone()).path_and_query("/").build();
        let mut http = self.http.clone();
        async move {
            let uri = uri.map_err(|e| ConnectError::other(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let io = tower::Service::<Uri>::call(&mut http, uri).await.map_err(ConnectError::other)?;
            Ok(io.into_inner())
        }
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
