//! One certificate: a PEM chain with its private key, checked (the key matches the leaf) and described (the
//! names it serves, read from its subject alternative names, and its validity period).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use tracing::{info, warn};

use super::provider;
use crate::pki::pem_error;
use crate::routes::HostPattern;

/// Why a certificate/key pair was not loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("no certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate,
    #[error("the certificate PEM is malformed: {0}")]
    CertPem(String),
    #[error("no private key (-----BEGIN PRIVATE KEY-----, RSA or EC) found")]
    NoKey,
    #[error("the private key PEM is malformed: {0}")]
    KeyPem(String),
    #[error("the private key is not usable: {0}")]
    Key(rustls::Error),
    #[error("the private key does not match the certificate")]
    Mismatch,
    #[error("the certificate cannot be parsed: {0}")]
    X509(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Layout(String),
}

/// Where a certificate came from, for logs and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A file (or pair of files) in the certificates directory.
    File(String),
    /// An etcd key.
    Etcd(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "file {p}"),
            Origin::Etcd(k) => write!(f, "etcd key {k}"),
        }
    }
}

/// A checked certificate, ready to be served.
pub struct Certificate {
    /// The name it was stored under (file stem, or the last part of its etcd key).
    pub name: String,
    pub origin: Origin,
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subject alternative names, normalised like route hosts (`*.a.com` is a wildcard).
    pub names: Vec<HostPattern>,
    /// Validity period, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// A hash of the PEM input, to tell a changed source from an unchanged one.
    pub fingerprint: u64,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// A copy, for tests that adjust validity dates.
    #[cfg(test)]
    pub(crate) fn clone_for_test(&self) -> Certificate {
        Certificate {
            name: self.name.clone(),
            origin: self.origin.clone(),
            key: self.key.clone(),
            names: self.names.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            fingerprint: self.fingerprint,
        }
    }

    /// Whether it has expired at `now` (seconds since the epoch).
    pub fn expired(&self, now: i64) -> bool {
        self.not_after < now
    }

    /// The names as written in the certificate (`*.a.com`, `a.com`), for logs and listings.
    pub fn names_display(&self) -> String {
        if self.names.is_empty() {
            return "(no DNS names)".into();
        }
        self.names
            .iter()
            .map(|n| match n {
                HostPattern::Exact(h) => h.clone(),
                HostPattern::Wildcard(s) => format!("*.{s}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Formats seconds since the epoch as RFC 3339 (`2027-01-31T12:00:00Z`).
pub(crate) fn format_time(secs: i64) -> String {
    let t = match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + std::time::Duration::from_secs(s),
        Err(_) => return secs.to_string(),
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses and checks a certificate chain (leaf first) and its private key, both PEM. `key_pem` may be the same
/// text as `cert_pem` (one file holding both).
pub(crate) fn parse(name: &str, origin: Origin, cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::CertPem(pem_error(&e)))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(k) => k,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => return Err(CertError::NoKey),
        Err(e) => return Err(CertError::KeyPem(pem_error(&e))),
    };
    let (names, not_before, not_after) = describe(&chain[0])?;
    let signing = provider().key_provider.load_private_key(key).map_err(CertError::Key)?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => return Err(CertError::Mismatch),
        // The provider cannot tell the key's public half: nothing to compare (ring always can).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(CertError::X509(e.to_string())),
    }
    Ok(Certificate {
        name: name.to_string(),
        origin,
        key: Arc::new(key),
        names,
        not_before,
        not_after,
        fingerprint: fingerprint(cert_pem, key_pem),
    })
}

/// An X.509 parser's error as a person reads it (its own `Display` is the DER parser's debug output).
fn x509_error(e: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    use x509_parser::error::X509Error;
    match e {
        x509_parser::nom::Err::Incomplete(_) => "it is not an X.509 certificate (truncated)".to_string(),
        x509_parser::nom::Err::Error(X509Error::Der(_)) | x509_parser::nom::Err::Failure(X509Error::Der(_)) => {
            "it is not an X.509 certificate (its DER encoding is invalid)".to_string()
        }
        x509_parser::nom::Err::Error(x) | x509_parser::nom::Err::Failure(x) => x.to_string(),
    }
}

/// A hash of a PEM pair.
pub(crate) fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cert_pem.hash(&mut h);
    key_pem.hash(&mut h);
    h.finish()
}

/// The leaf's DNS names and validity.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<HostPattern>, i64, i64), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| CertError::X509(x509_error(&e)))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| CertError::X509(format!("bad subjectAltName: {e}")))?;
    if let Some(san) = san {
        for general in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = general {
                // A name that is not a valid host pattern (e.g. `*` alone, or `a.*.com`) cannot be matched by
                // SNI anyway: skip it rather than reject the certificate.
                if let Ok(p) = HostPattern::parse(dns) {
                    if !names.contains(&p) {
                        names.push(p);
                    }
                }
            }
        }
    }
    Ok((names, validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// Logs a newly loaded certificate, with a warning when it is outside its validity period.
pub(crate) fn log_loaded(c: &Certificate, replaced: bool) {
    let what = if replaced { "certificate reloaded" } else { "certificate loaded" };
    info!(name = %c.name, origin = %c.origin, names = %c.names_display(), not_after = %format_time(c.not_after), "{what}");
    let now = now();
    if c.expired(now) {
        warn!(name = %c.name, origin = %c.origin, not_after = %format_time(c.not_after), "certificate has expired; it is served until replaced");
    } else if c.not_before > now {
        warn!(name = %c.name, origin = %c.origin, not_before = %format_time(c.not_before), "certificate is not valid yet");
    }
    if c.names.is_empty() {
        warn!(name = %c.name, origin = %c.origin, "certificate has no DNS name in its subject alternative names; it can only serve as the default");
    }
}
