//! What TLS termination (`tls`) and TLS to backends (`upstream`) share, at the bottom of the module layers so
//! both can reach it: the one crypto provider of the process, and a PEM parser's error in words.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider of every TLS connection reveille makes or accepts (ring).
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A PEM parser's error as a person reads it (its own `Display` shows the markers as byte arrays).
pub(crate) fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!("no -----END {}----- line", String::from_utf8_lossy(end_marker).trim())
        }
        Error::IllegalSectionStart { line } => format!("bad BEGIN line {:?}", String::from_utf8_lossy(line).trim()),
        Error::Base64Decode(_) => "the text between its BEGIN and END lines is not valid base64".to_string(),
        Error::NoItemsFound => "nothing found".to_string(),
        other => other.to_string(),
    }
}
