//! Where an exchange gets its backend connection, as pingora's `TransportConnector`: an idle one from the pool
//! when there is one ([`Connector::checkout`]), else a new one ([`Connector::connect`]: hyper-util's
//! `HttpConnector`, with `TCP_NODELAY` and the connect timeout, its socket wrapped in a [`Socket`]). The
//! connection goes back to the pool from the proxy's side, once its response has been read to the end
//! (`Pooled::release`), never from here.
//!
//! TLS backends (`https://`) take the same steps with the service's [`BackendTls`]: its pool
//! ([`Connector::checkout_tls`]), else a TCP connection and a handshake ([`Connector::connect_tls`], within the
//! same connect timeout), which gives the TLS stream and what the backend picked by ALPN; an HTTP/1.1 stream
//! becomes a pooled connection with [`Connector::adopt_tls`].
//!
//! HTTP/2 backends (`h2c://`) have their own connections, multiplexed ([`H2Pool`], in `h2`):
//! [`Connector::send_h2c`] sends a request on a stream of one, opened over TCP by the same `HttpConnector`.
//! Connections are kept apart by protocol (one pool per protocol) and, within it, by the backend's authority.

use std::future::Future;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::ConnectError;
use super::h2::{self as h2c, H2Body, H2Failure, H2Head, H2Pool, H2RequestBody, H2Settings};
use super::pool::{Pool, Pooled};
use super::tls::{Alpn, BackendTls};
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

/// A TLS connection just opened: the stream, and what the backend picked by ALPN (the HTTP/2 client takes an
/// `h2` one, `adopt_tls` an HTTP/1.1 one).
#[derive(Debug)]
pub(crate) struct TlsConnected {
    pub stream: TlsStream<TcpStream>,
    pub alpn: Alpn,
}

/// Opens backend connections and keeps the idle ones.
#[derive(Debug)]
pub(crate) struct Connector {
    http: HttpConnector,
    settings: ConnectSettings,
    /// Plain TCP connections (`http://` backends); TLS ones are in each service's `BackendTls`.
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
        let h2c = H2Pool::new(h2_settings(&settings));
        Self { http, settings, pool, h2c }
    }

    /// Sends a request (`head`, its scheme `http`, and `body`) to the `h2c://` backend `backend` on a stream of
    /// one of its connections, and waits for the response head.
    pub(crate) async fn send_h2c(
        &self,
        backend: &Authority,
        head: &(impl H2Head + Sync + ?Sized),
        body: H2RequestBody,
    ) -> Result<Response<H2Body>, H2Failure> {
        h2c::send(&self.h2c, backend.as_str(), || self.tcp(backend), head, body).await
    }

    /// The most recently released idle connection to `backend` that is still open, if there is one.
    pub(crate) fn checkout(&self, backend: &Authority) -> Option<Conn> {
        self.pool.checkout(backend)
    }

    /// Opens a new connection to `backend` (within the connect timeout).
    pub(crate) async fn connect(&self, backend: &Authority) -> Result<Conn, ConnectError> {
        let io = self.tcp(backend).await?;
        let wire = Wire::new(Socket::new(io, self.settings.quickack));
        Ok(self.pool.adopt(backend, wire))
    }

    /// The most recently released idle TLS connection to `backend` under `tls` that is still open, if any.
    pub(crate) fn checkout_tls(&self, tls: &BackendTls, backend: &Authority) -> Option<Conn> {
        tls.pool.get()?.checkout(backend)
    }

    /// Opens a TCP connection to `backend` and makes a TLS handshake on it, both within the connect timeout.
    /// A handshake that fails (a certificate that does not verify: rustls' reason is in the error's source) is
    /// a [`ConnectError::is_tls`] error; nothing was sent.
    pub(crate) async fn connect_tls(
        &self,
        tls: &BackendTls,
        backend: &Authority,
    ) -> Result<TlsConnected, ConnectError> {
        self.tls_handshake(tls, backend).await
    }

    /// [`connect_tls`](Self::connect_tls) as a future that owns what it needs (an h2 connection is opened in a
    /// task of its own).
    fn tls_handshake(
        &self,
        tls: &BackendTls,
        backend: &Authority,
    ) -> impl Future<Output = Result<TlsConnected, ConnectError>> + Send + 'static {
        let name = tls.server_name_for(backend);
        let tcp = self.tcp(backend);
        let config = tls.config.clone();
        let connect_timeout = self.settings.connect_timeout;
        async move {
            let name = name.map_err(ConnectError::tls)?;
            let started = tokio::time::Instant::now();
            let tcp = tcp.await?;
            let left = connect_timeout.saturating_sub(started.elapsed());
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream = match tokio::time::timeout(left, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ConnectError::tls(e)),
                Err(_) => {
                    let timeout = humantime::format_duration(connect_timeout);
                    return Err(ConnectError::tls(format!("no TLS handshake within the connect timeout ({timeout})")));
                }
            };
            let alpn = Alpn::from_negotiated(stream.get_ref().1.alpn_protocol());
            Ok(TlsConnected { stream, alpn })
        }
    }

    /// Whether `backend` of `tls`'s service speaks HTTP/2 (it picked `h2` by ALPN, and its connection is still
    /// up): then its requests go by [`send_h2_tls`](Self::send_h2_tls). Free for a service none of whose
    /// backends ever picked h2.
    pub(crate) fn tls_speaks_h2(&self, tls: &BackendTls, backend: &Authority) -> bool {
        tls.h2.get().is_some_and(|pool| pool.has(backend.as_str()))
    }

    /// Sends a request (`head`, its scheme `https`, and `body`) to the `https://` backend `backend` over HTTP/2, on a stream
    /// of one of the service's connections to it: `first` (a connection just opened whose ALPN picked `h2`)
    /// becomes one when a new one is needed, and later ones are opened with a handshake that must pick `h2`
    /// again.
    pub(crate) async fn send_h2_tls(
        &self,
        tls: &BackendTls,
        backend: &Authority,
        first: Option<Box<TlsStream<TcpStream>>>,
        head: &(impl H2Head + Sync + ?Sized),
        body: H2RequestBody,
    ) -> Result<Response<H2Body>, H2Failure> {
        let pool = tls.h2.get_or_init(|| H2Pool::new(h2_settings(&self.settings)));
        let first = parking_lot::Mutex::new(first);
        let open = || {
            let first = first.lock().take();
            let fresh = self.tls_handshake(tls, backend);
            async move {
                if let Some(stream) = first {
                    return Ok(stream);
                }
                let connected = fresh.await?;
                match connected.alpn {
                    Alpn::H2 => Ok(Box::new(connected.stream)),
                    Alpn::Http1 => Err(ConnectError::other("the backend no longer picks h2 by ALPN")),
                }
            }
        };
        h2c::send(pool, backend.as_str(), open, head, body).await
    }

    /// A TLS connection that speaks HTTP/1.1, as a connection of `tls`'s pool.
    pub(crate) fn adopt_tls(&self, tls: &BackendTls, backend: &Authority, stream: TlsStream<TcpStream>) -> Conn {
        let s = &self.settings;
        let pool = tls.pool.get_or_init(|| Pool::new(s.workers, s.max_idle_per_backend, s.idle_timeout));
        pool.adopt(backend, Wire::new(Socket::tls(stream, s.quickack)))
    }

    /// A TCP connection to `backend` (within the connect timeout), opened by a future that owns what it needs
    /// (an h2 connection is opened in a task of its own).
    fn tcp(&self, backend: &Authority) -> impl Future<Output = Result<TcpStream, ConnectError>> + Send + 'static {
        let uri = Uri::builder().scheme(Scheme::HTTP).authority(backend.clone()).path_and_query("/").build();
        let mut http = self.http.clone();
        async move {
            let uri = uri.map_err(|e| ConnectError::other(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let io = tower::Service::<Uri>::call(&mut http, uri).await.map_err(ConnectError::other)?;
            Ok(io.into_inner())
        }
    }
}

/// What the HTTP/2 pools are built with.
fn h2_settings(s: &ConnectSettings) -> H2Settings {
    H2Settings {
        workers: s.workers,
        connections: s.h2_connections_per_backend,
        keep_alive_interval: s.h2_keep_alive_interval,
        keep_alive_timeout: s.h2_keep_alive_timeout,
        idle_timeout: s.idle_timeout,
    }
}
