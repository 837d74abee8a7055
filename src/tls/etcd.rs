//! Certificates from etcd: `<prefix>certs/<name>` → `{"cert": "PEM chain", "key": "PEM key"}`.
//!
//! Listed at one revision, then watched from the next, like routes (and with the same reconnect and resync on a
//! broken watch). A value that does not load is reported with its key and reason, counted, and the previous
//! certificate of that key (if any) stays in force. Deleting the key removes the certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::EventType;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, Instrument};

use super::cert::{self, log_loaded, CertError, Certificate, Origin};
use super::store::{CertStore, Source};
use crate::control::etcd::{self as etcd, EtcdConfig, EtcdError, Keys, SessionEnd};
use crate::metrics::TlsMetrics;

/// The JSON value of a certificate key.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertValue {
    /// The chain, leaf first, PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
}

/// Why an etcd certificate value was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertValueError {
    #[error("invalid certificate name {0:?} (letters, digits, '-', '_' and '.')")]
    Name(String),
    #[error("value is not {{\"cert\": \"PEM\", \"key\": \"PEM\"}}: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Checks a certificate name (the last part of its key).
pub fn validate_name(name: &str) -> Result<(), CertValueError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CertValueError::Name(name.to_string()))
    }
}

/// Parses the value of `key` (certificate `name`), reusing `previous` when the value has not changed.
pub fn parse_value(
    name: &str,
    key: &str,
    value: &[u8],
    previous: Option<&Arc<Certificate>>,
) -> Result<Arc<Certificate>, CertValueError> {
    validate_name(name)?;
    let v: CertValue = serde_json::from_slice(value)?;
    if let Some(p) = previous {
        if p.fingerprint == cert::fingerprint(v.cert.as_bytes(), v.key.as_bytes()) {
            return Ok(p.clone());
        }
    }
    Ok(Arc::new(cert::parse(name, Origin::Etcd(key.to_string()), v.cert.as_bytes(), v.key.as_bytes())?))
}

/// Keeps the etcd part of the certificate store in step with etcd, until shutdown.
pub struct CertWatcher {
    config: EtcdConfig,
    keys: Keys,
    store: Arc<CertStore>,
    metrics: TlsMetrics,
}

impl CertWatcher {
    pub fn new(config: EtcdConfig, store: Arc<CertStore>, metrics: TlsMetrics) -> Self {
        let keys = config.keys();
        Self { config, keys, store, metrics }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("etcd_certs", endpoints = %self.config.endpoints.join(","), prefix = %self.keys.prefix());
        let this = &self;
        etcd::supervise("certificates", |n| this.session(n), || {}, shutdown).instrument(span).await
    }

    async fn session(&self, n: u64) -> Result<(), SessionEnd> {
        let mut loaded = false;
        self.session_inner(n, &mut loaded).await.map_err(|error| SessionEnd { error, loaded })
    }

    async fn session_inner(&self, n: u64, loaded: &mut bool) -> Result<(), EtcdError> {
        let client = etcd::connect(&self.config).await?;
        let (start, end) = self.keys.certs_range();
        let (revision, kvs) = etcd::list_range(&client, &start, &end, self.config.timeout).await?;
        let previous = self.store.source(Source::Etcd);
        // Parsing thousands of certificates takes a while: keep it off the threads that serve requests.
        let (keys, prior) = (self.keys.clone(), previous.clone());
        let parsed = tokio::task::spawn_blocking(move || {
            kvs.iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let name = keys.cert_name(&key)?.to_string();
                    let result = parse_value(&name, &key, kv.value(), prior.get(&name));
                    Some((name, key, result))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| EtcdError::WatchEnded(format!("certificate parsing failed: {e}")))?;
        let mut set = BTreeMap::new();
        for (name, key, result) in parsed {
            let before = previous.get(&name);
            match result {
                Ok(c) => {
                    if !before.is_some_and(|b| Arc::ptr_eq(b, &c)) {
                        log_loaded(&c, before.is_some());
                    }
                    set.insert(name, c);
                }
                Err(e) => {
                    self.reject(&key, &e, before);
                    if let Some(b) = before {
                        set.insert(name, b.clone());
                    }
                }
            }
        }
        let count = set.len();
        self.store.replace(Source::Etcd, set);
        *loaded = true;
        if n == 0 {
            info!(revision, certificates = count, "etcd certificates loaded");
        } else {
            info!(revision, certificates = count, "etcd certificates resynced after reconnecting");
        }

        let (_watcher, mut stream) = etcd::watch_from(&client, start, end, revision).await?;
        loop {
            let resp = etcd::next_response(&mut stream, revision).await?;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Some(name) = self.keys.cert_name(&key) else { continue };
                match ev.event_type() {
                    EventType::Put => {
                        let before = self.store.source(Source::Etcd).get(name).cloned();
                        match parse_value(name, &key, kv.value(), before.as_ref()) {
                            Ok(c) => {
                                if !before.as_ref().is_some_and(|b| Arc::ptr_eq(b, &c)) {
                                    log_loaded(&c, before.is_some());
                                    self.store.update(Source::Etcd, name, Some(c));
                                }
                            }
                            Err(e) => self.reject(&key, &e, before.as_ref()),
                        }
                    }
                    EventType::Delete => {
                        info!(key = %key, "certificate removed");
                        self.store.update(Source::Etcd, name, None);
                    }
                }
            }
            debug!(revision = resp.header().map_or(0, |h| h.revision()), "etcd certificate changes applied");
        }
    }

    fn reject(&self, key: &str, e: &CertValueError, kept: Option<&Arc<Certificate>>) {
        self.metrics.rejected(Source::Etcd.as_str());
        match kept {
            Some(_) => error!(key, error = %e, "certificate rejected; the previous one stays in force"),
            None => error!(key, error = %e, "certificate rejected"),
        }
    }
}
