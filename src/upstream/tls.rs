//! TLS to backends (`https://` addresses): a service's settings made ready once per table change
//! ([`BackendTls`]: the rustls `ClientConfig`, the name to verify, and the pool of the service's TLS
//! connections), and the handshake that opens one (`Connector::connect_tls`, which hands back the stream and
//! what the backend picked by ALPN).
//!
//! Verification is on unless an operator wrote `verify = false`: against the service's own CA when it gives one
//! (then only that CA), else against the system's roots (`rustls-native-certs`, read once per process), with
//! the service's `server_name` or else the backend's host (an IP address host verifies against the
//! certificate's IP SAN). ALPN offers `h2` then `http/1.1`. The `ClientConfig` is built here, once, and shared
//! by every connection of the service, so its session cache (rustls' `Resumption`, on by default) makes
//! reconnects cheap.
//!
//! Why each service keeps its own pool rather than one pool keyed by authority: two services may reach the same
//! `https://a:1` with different client certificates or CAs, and a connection made under one service's settings
//! must never serve the other; a redefined `tls` block gets a new `BackendTls`, so connections verified under
//! the old one are not reused either. A plain `http://a:1` connection lives in the `Connector`'s own pool, so
//! the two never meet.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::uri::Authority;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::h2::H2Pool;
use super::pool::Pool;
use super::wire::Wire;
use crate::pki::{pem_error, provider};

/// The ALPN protocols offered to a backend, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A service's TLS settings as written, with the PEM text already read (the routes file's paths are read by
/// the route source, relative to the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsOptions {
    /// Trust only these CA certificates (PEM, one or more); `None`: the system's roots.
    pub ca_pem: Option<String>,
    /// The name the backend's certificate must carry; `None`: the backend's host.
    pub server_name: Option<String>,
    /// The client certificate chain presented to backends that ask for one (mTLS), PEM.
    pub client_cert_pem: Option<String>,
    /// Its private key, PEM.
    pub client_key_pem: Option<String>,
    /// `false` only when written out: backends' certificates are not verified.
    pub verify: bool,
}

/// Why a service's TLS settings cannot be used. Each message names the field, so the route source only adds
/// the service.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("`tls.ca`: {0}")]
    Ca(String),
    #[error("`tls.server_name` {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("backend {0:?}: its host is not a name TLS can verify (give `tls.server_name`)")]
    BackendName(String),
    #[error("`tls.client_cert`: {0}")]
    ClientCert(String),
    #[error("`tls.client_key`: {0}")]
    ClientKey(String),
    #[error("`tls.client_cert` and `tls.client_key` go together; `{0}` is missing")]
    HalfIdentity(&'static str),
    #[error("`tls.client_key` does not match `tls.client_cert`")]
    KeyMismatch,
    #[error("`tls.ca` is unused with `tls.verify = false`: remove one of them")]
    CaWithoutVerify,
    #[error(
        "no system root certificates to verify backends with ({0}): give the service's own `tls.ca`, or install \
         the system's CA bundle"
    )]
    NoSystemRoots(String),
    #[error("TLS settings: {0}")]
    Rustls(rustls::Error),
}

/// What the backend picked by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `http/1.1`, or nothing (a backend without ALPN speaks HTTP/1.1).
    Http1,
    /// `h2`.
    H2,
}

impl Alpn {
    /// From the protocol the handshake negotiated, if any.
    pub(crate) fn from_negotiated(proto: Option<&[u8]>) -> Self {
        match proto {
            Some(b"h2") => Alpn::H2,
            _ => Alpn::Http1,
        }
    }
}

/// A service's TLS to its backends, ready: built once per table change, shared by all its requests.
pub(crate) struct BackendTls {
    /// Shared by every connection of the service: one session cache.
    pub(super) config: Arc<ClientConfig>,
    /// The name verified instead of the backend's host.
    server_name: Option<ServerName<'static>>,
    /// What it was built from: a table change with the same settings keeps the service (and this), another
    /// one replaces it.
    options: TlsOptions,
    /// The service's idle TLS connections, made on first use with the `Connector`'s settings.
    pub(super) pool: OnceLock<Pool<Authority, Wire>>,
    /// The service's HTTP/2 connections, to backends that picked `h2` by ALPN; made on first use.
    pub(super) h2: OnceLock<H2Pool>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.options.verify)
            .field("ca", &self.options.ca_pem.is_some())
            .field("client_cert", &self.options.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Checks `options` (PEM parses, the key matches the certificate, the server name is one) and builds the
    /// client configuration.
    pub(crate) fn new(options: TlsOptions) -> Result<Self, TlsSetupError> {
        let provider = provider();
        let server_name = match &options.server_name {
            Some(n) => Some(server_name(n).ok_or_else(|| TlsSetupError::ServerName(n.clone()))?),
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Rustls)?;
        let builder = match (&options.ca_pem, options.verify) {
            (Some(_), false) => return Err(TlsSetupError::CaWithoutVerify),
            (_, false) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider.signature_verification_algorithms))),
            (Some(pem), true) => {
                let roots = Arc::new(ca_roots(pem)?);
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Ca(e.to_string()))?;
                builder.with_webpki_verifier(verifier)
            }
            (None, true) => {
                let roots = system_roots().map_err(|e| TlsSetupError::NoSystemRoots(e.clone()))?;
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::NoSystemRoots(e.to_string()))?;
                builder.with_webpki_verifier(verifier)
            }
        };
        let mut config = match (&options.client_cert_pem, &options.client_key_pem) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(TlsSetupError::HalfIdentity("client_key")),
            (None, Some(_)) => return Err(TlsSetupError::HalfIdentity("client_cert")),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsSetupError::ClientCert(pem_error(&e)))?;
                if chain.is_empty() {
                    return Err(TlsSetupError::ClientCert("no certificate found in it".into()));
                }
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| match e {
                    rustls_pki_types::pem::Error::NoItemsFound => {
                        TlsSetupError::ClientKey("no private key found in it".into())
                    }
                    e => TlsSetupError::ClientKey(pem_error(&e)),
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        TlsSetupError::KeyMismatch
                    }
                    e => TlsSetupError::ClientKey(e.to_string()),
                })?
            }
        };
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self { config: Arc::new(config), server_name, options, pool: OnceLock::new(), h2: OnceLock::new() })
    }

    /// Whether both were built from the same settings (a table change that leaves them alone).
    pub(crate) fn same_settings(&self, other: &BackendTls) -> bool {
        self.options == other.options
    }

    /// A connector with these settings that offers HTTP/1.1 alone by ALPN: for a client other than the proxy's
    /// (the active health checks), which speaks HTTP/1.1 whatever the backend prefers. A copy of the client
    /// configuration, made once per caller.
    pub(crate) fn http1_connector(&self) -> tokio_rustls::TlsConnector {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Whether backends' certificates are verified.
    pub(crate) fn verifies(&self) -> bool {
        self.options.verify
    }

    /// The name `backend`'s certificate is verified against: the service's `server_name`, else the backend's
    /// host. Checked for every `https://` backend when the table is built, so it fails only for an address
    /// added without that check.
    pub(crate) fn server_name_for(&self, backend: &Authority) -> Result<ServerName<'static>, TlsSetupError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = backend.host();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        server_name(host).ok_or_else(|| TlsSetupError::BackendName(backend.to_string()))
    }
}

/// `name` as a TLS server name: a DNS name, or an IP address.
fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// A service's own CA certificates as trust anchors.
fn ca_roots(pem: &str) -> Result<RootCertStore, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Ca(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Ca("no certificate found in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| TlsSetupError::Ca(format!("certificate {} is not usable as a trust anchor: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// The system's root certificates, read once per process (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured);
/// an error when none could be read.
fn system_roots() -> Result<Arc<RootCertStore>, &'static String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or_else(|| "none found".to_string(), ToString::to_string);
                return Err(why);
            }
            Ok(Arc::new(roots))
        })
        .as_ref()
        .map(Arc::clone)
}

/// `verify = false`: any certificate is accepted, but the handshake's signatures are still checked (the peer
/// holds the key of the certificate it sent), as curl's `--insecure` does.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_leaf(names: &[&str]) -> (String, String, String) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(p, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    #[test]
    fn settings_are_checked() {
        let (ca, cert, key) = ca_and_leaf(&["client.test"]);
        let ok = |o: TlsOptions| BackendTls::new(o).map(|_| ()).map_err(|e| e.to_string());
        let base = TlsOptions { verify: true, ca_pem: Some(ca.clone()), ..TlsOptions::default() };
        assert!(ok(base.clone()).is_ok());
        let with_identity =
            TlsOptions { client_cert_pem: Some(cert.clone()), client_key_pem: Some(key.clone()), ..base.clone() };
        assert!(ok(with_identity).is_ok());
        let (_, _, other_key) = ca_and_leaf(&["x.test"]);
        let e = ok(TlsOptions { client_cert_pem: Some(cert.clone()), client_key_pem: Some(other_key), ..base.clone() });
        assert_eq!(e.unwrap_err(), "`tls.client_key` does not match `tls.client_cert`");
        let e = ok(TlsOptions { client_cert_pem: Some(cert), ..base.clone() }).unwrap_err();
        assert!(e.contains("`client_key` is missing"), "{e}");
        let e = ok(TlsOptions { ca_pem: Some("not pem".into()), ..base.clone() }).unwrap_err();
        assert!(e.starts_with("`tls.ca`: no certificate"), "{e}");
        let e = ok(TlsOptions { ca_pem: Some(key), ..base.clone() }).unwrap_err();
        assert!(e.starts_with("`tls.ca`: no certificate"), "a key is no CA: {e}");
        let e = ok(TlsOptions { server_name: Some("a b".into()), ..base.clone() }).unwrap_err();
        assert!(e.contains("`tls.server_name` \"a b\""), "{e}");
        let e = ok(TlsOptions { verify: false, ..base.clone() }).unwrap_err();
        assert!(e.contains("unused with `tls.verify = false`"), "{e}");
        assert!(ok(TlsOptions { verify: false, ..TlsOptions::default() }).is_ok());
    }

    #[test]
    fn server_name_defaults_to_the_backend_host() {
        let (ca, _, _) = ca_and_leaf(&["x.test"]);
        let tls =
            BackendTls::new(TlsOptions { verify: true, ca_pem: Some(ca.clone()), ..TlsOptions::default() }).unwrap();
        let name = |a: &str| tls.server_name_for(&a.parse().unwrap()).map(|n| n.to_str().into_owned());
        assert_eq!(name("api.internal:443").unwrap(), "api.internal");
        assert_eq!(name("10.0.0.7:8443").unwrap(), "10.0.0.7");
        assert_eq!(name("[::1]:8443").unwrap(), "::1");
        let named = BackendTls::new(TlsOptions {
            verify: true,
            ca_pem: Some(ca),
            server_name: Some("api.test".into()),
            ..TlsOptions::default()
        })
        .unwrap();
        assert_eq!(named.server_name_for(&"10.0.0.7:1".parse().unwrap()).unwrap().to_str(), "api.test");
        assert_eq!(named.config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
