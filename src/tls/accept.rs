//! The server side of a TLS handshake: reads the ClientHello, refuses names no certificate serves with an
//! `unrecognized_name` alert (rustls itself would answer `access_denied`), then completes the handshake with
//! the shared [`ServerConfig`], whose resolver picks the certificate from the store's snapshot.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::store::CertStore;
use super::{provider, TlsError};
use crate::metrics::TlsMetrics;

/// A fatal `unrecognized_name` (112) alert in a plaintext TLS record. It goes out before any ServerHello, so it
/// is unencrypted whatever the version the client offered.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Resumption sessions kept in memory (TLS 1.2 session ids and TLS 1.3 stateful tickets).
const SESSION_CACHE: usize = 20_000;

/// Why a handshake did not complete; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("no certificate for server name {0:?}")]
    UnrecognizedName(Option<String>),
    #[error("handshake not completed within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(io::Error),
}

impl HandshakeError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            HandshakeError::UnrecognizedName(_) => "unrecognized_name",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Failed(e) => classify(e),
        }
    }
}

fn classify(e: &io::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible};
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        return match tls {
            Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::Tls13RequiredForQuic
                | PeerIncompatible::SupportedVersionsExtensionRequired
                // Only clients older than TLS 1.2 omit signature_algorithms; rustls checks it before the version.
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
            ) => "protocol_version",
            Error::PeerIncompatible(_) => "incompatible",
            Error::AlertReceived(_) => "client_alert",
            // The client offered ALPN protocols, none of them HTTP (RFC 7301: refuse).
            Error::NoApplicationProtocol => "no_application_protocol",
            Error::InvalidMessage(_) | Error::PeerMisbehaved(_) | Error::InappropriateHandshakeMessage { .. } => {
                "invalid"
            }
            _ => "other",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "closed",
        io::ErrorKind::InvalidData => "invalid",
        _ => "other",
    }
}

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const ACME_TLS: &[u8] = b"acme-tls/1";

/// What the handshake asks of certificate automation (ACME), when it is configured.
pub(crate) trait CertHook: Send + Sync + 'static {
    /// The certificate that answers a pending TLS-ALPN-01 challenge for `host`, if there is one.
    fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>>;
    /// A handshake for `host` from `client` found no certificate for it: obtain one if `host` may have one (and
    /// the client's limits allow), waiting a bounded time (that time does not count against the client's
    /// handshake timeout).
    fn on_demand<'a>(&'a self, host: &'a str, client: IpAddr) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Serves one certificate whatever the client asks: the TLS-ALPN-01 answer.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Accepts TLS connections for one HTTPS listener.
pub(crate) struct TlsAcceptor {
    store: Arc<CertStore>,
    config: Arc<ServerConfig>,
    metrics: TlsMetrics,
    timeout: Duration,
    hook: Option<Arc<dyn CertHook>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// TLS 1.3 and 1.2 only, rustls's default (safe) cipher suites and groups, ALPN `h2`, then `http/1.1` (or
    /// `http/1.0`).
    /// A client gets `timeout` to complete the handshake.
    /// With a `hook`, handshakes also answer TLS-ALPN-01 challenges and may wait for a certificate on demand.
    pub(crate) fn new(
        store: Arc<CertStore>,
        metrics: TlsMetrics,
        timeout: Duration,
        hook: Option<Arc<dyn CertHook>>,
    ) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
        // No 0-RTT: early data can be replayed, and reveille cannot know which requests are safe to replay.
        config.max_early_data_size = 0;
        Ok(Self { store, config: Arc::new(config), metrics, timeout, hook })
    }

    /// The configuration of a TLS-ALPN-01 answer: that certificate, `acme-tls/1`, no resumption.
    fn acme_tls_config(key: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(key)));
        config.alpn_protocols = vec![ACME_TLS.to_vec()];
        Ok(Arc::new(config))
    }

    /// Runs the handshake on `io`, from `client`, within the handshake timeout. Counts the result.
    pub(crate) async fn accept<IO>(&self, io: IO, client: IpAddr) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.handshake(io, client).await;
        match &result {
            Ok(_) => self.metrics.handshake(),
            Err(e) => self.metrics.handshake_failed(e.reason()),
        }
        result
    }

    async fn handshake<IO>(&self, io: IO, client: IpAddr) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        // The client has `timeout` for its part of the handshake; an on-demand certificate's wait is reveille's
        // and moves the deadline by what it took.
        let mut deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = |_| HandshakeError::Timeout(self.timeout);
        let hello = LazyConfigAcceptor::new(Acceptor::default(), io);
        let mut start =
            tokio::time::timeout_at(deadline, hello).await.map_err(timed_out)?.map_err(HandshakeError::Failed)?;
        if let Some(hook) = &self.hook {
            let hello = start.client_hello();
            let sni = hello.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            let acme_tls = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS));
            if let (true, Some(host)) = (acme_tls, &sni) {
                if let Some(key) = hook.tls_alpn01(host) {
                    let config = Self::acme_tls_config(key).map_err(|e| HandshakeError::Failed(io::Error::other(e)))?;
                    let done = tokio::time::timeout_at(deadline, start.into_stream(config));
                    return done.await.map_err(timed_out)?.map_err(HandshakeError::Failed);
                }
            } else if let Some(host) = &sni {
                if self.store.load().for_name(host).is_none() {
                    let began = tokio::time::Instant::now();
                    hook.on_demand(host, client).await;
                    deadline += began.elapsed();
                }
            }
        }
        let hello = start.client_hello();
        if self.store.load().resolve(hello.server_name()).is_none() {
            let name = hello.server_name().map(str::to_string);
            // Best effort: the client may already be gone.
            let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = start.io.shutdown().await;
            return Err(HandshakeError::UnrecognizedName(name));
        }
        let done = tokio::time::timeout_at(deadline, start.into_stream(self.config.clone()));
        done.await.map_err(timed_out)?.map_err(HandshakeError::Failed)
    }
}
