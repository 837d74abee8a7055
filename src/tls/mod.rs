//! TLS termination: certificates from a directory and from etcd, selected by SNI, hot-reloaded.
//!
//! - `cert`: one certificate chain and key, checked and described (SAN names, validity).
//! - `store`: the certificates in force as an immutable snapshot behind `ArcSwap`, and SNI selection.
//! - `dir`: the certificates directory (`name.crt` + `name.key`, or `name.pem` holding both), watched.
//! - `etcd`: `<prefix>certs/<name>` keys, watched.
//! - `accept`: the handshake, with its `unrecognized_name` refusal and its metrics.
//!
//! One crypto provider (ring) serves the whole process: rustls here, and tonic's TLS to etcd.

mod accept;
pub(crate) mod cert;
pub(crate) mod dir;
pub(crate) mod etcd;
mod store;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use crate::pki::provider;
pub(crate) use accept::{CertHook, TlsAcceptor};
pub(crate) use store::{CertStore, Source};

/// Errors setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("certificates directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// TLS settings of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of certificates, watched.
    pub certs_dir: Option<PathBuf>,
    /// Also load and watch certificates from etcd's `<prefix>certs/` (when etcd is configured).
    pub etcd: bool,
    /// Name of the certificate for clients that send no SNI, or a name no certificate serves.
    pub default_cert: Option<String>,
    /// Redirect plain-HTTP requests to HTTPS for every service (a service's `https_redirect` overrides it).
    pub redirect: bool,
    /// Port written in redirects [default: the HTTPS listener's port; omitted when 443].
    pub redirect_port: Option<u16>,
    /// Time allowed for a client to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            certs_dir: None,
            etcd: true,
            default_cert: None,
            redirect: false,
            redirect_port: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}
