//! The server side of a TLS handshake: reads the ClientHello, refuses names no certificate serves with an
//! `unrecognized_name` alert (rustls itself would answer `access_denied`), then completes the handshake with
//! the shared [`ServerConfig`], whose resolver picks the certificate from the store's snapshot.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Acceptor, ServerConfig, ServerSessionMemoryCache};
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

/// Accepts TLS connections for one HTTPS listener.
pub(crate) struct TlsAcceptor {
    store: Arc<CertStore>,
    config: Arc<ServerConfig>,
    metrics: TlsMetrics,
    timeout: Duration,
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
    pub(crate) fn new(store: Arc<CertStore>, metrics: TlsMetrics, timeout: Duration) -> Result<Self, TlsError> {
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
        Ok(Self { store, config: Arc::new(config), metrics, timeout })
    }

    /// Runs the handshake on `io`, within the handshake timeout. Counts the result.
    pub(crate) async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(self.timeout, self.handshake(io)).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.metrics.handshake(),
            Err(e) => self.metrics.handshake_failed(e.reason()),
        }
        result
    }

    async fn handshake<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut start = LazyConfigAcceptor::new(Acceptor::default(), io).await.map_err(HandshakeError::Failed)?;
        let hello = start.client_hello();
        if self.store.load().resolve(hello.server_name()).is_none() {
            let name = hello.server_name().map(str::to_string);
            // Best effort: the client may already be gone.
            let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = start.io.shutdown().await;
            return Err(HandshakeError::UnrecognizedName(name));
        }
        start.into_stream(self.config.clone()).await.map_err(HandshakeError::Failed)
    }
}
