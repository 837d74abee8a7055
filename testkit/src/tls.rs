//! A rustls server-certificate check for test clients: accept any certificate, or exactly one, with the
//! handshake signature checked or not. Test clients use it to see which certificate a server presents; the TLS
//! lab's handshake client to keep its own share of a handshake small.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What a client accepts from a server.
#[derive(Debug)]
pub struct ServerCheck {
    /// The only leaf accepted (DER, no path building); any certificate if `None`.
    leaf_der: Option<Vec<u8>>,
    /// Whether the handshake signature made with the certificate's key is verified.
    check_signatures: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCheck {
    /// Any certificate; the handshake signature is checked.
    pub fn any(provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self {
            leaf_der: None,
            check_signatures: true,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// Exactly this leaf; the handshake signature is checked if `check_signatures`.
    pub fn pinned(provider: &CryptoProvider, leaf_der: Vec<u8>, check_signatures: bool) -> Arc<Self> {
        Arc::new(Self {
            leaf_der: Some(leaf_der),
            check_signatures,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.leaf_der {
            Some(leaf) if end_entity.as_ref() != leaf.as_slice() => {
                Err(rustls::Error::General("the server presented another certificate".into()))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
