//! Certificates from etcd: `<prefix>certs/<name>` → `{"cert": "PEM chain", "key": "PEM key"}`.
//!
//! Owns what a certificate value is ([`CertValue`], [`parse_value`]) and the [`CertWatcher`], a [`Sink`] of the
//! shared session loop (`crate::etcd`, which lists, watches, reconnects and resyncs, as for routes). Values are
//! parsed on the blocking pool, off the threads that serve requests. A value that does not load is reported
//! with its key and reason, once per revision, counted, and the previous certificate of that key (if any) stays
//! in force. Deleting the key removes the certificate. The operator commands that write these keys are `cli`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{Event, EventType, KeyValue};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, Instrument};

use super::cert::{self, log_loaded, CertError, Certificate, Origin};
use super::store::{CertStore, Source};
use crate::etcd::{Etcd, EtcdError, Keys, Sink};
use crate::metrics::TlsMetrics;

/// The JSON value of a certificate key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CertValue {
    /// The chain, leaf first, PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
    /// Set when ACME obtained it (and renews it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeOrigin>,
}

/// Where an ACME certificate came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AcmeOrigin {
    /// The ACME directory URL.
    pub directory: String,
    /// When it was obtained (RFC 3339).
    pub obtained: String,
    /// The replica that obtained it.
    pub node: String,
}

/// Why an etcd certificate value was not loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertValueError {
    #[error("invalid certificate name {0:?} (letters, digits, '-', '_' and '.')")]
    Name(String),
    /// The reason only, never the value: it holds a private key.
    #[error("value is not {{\"cert\": \"PEM\", \"key\": \"PEM\"}}: {0}")]
    Json(String),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Checks a certificate name (the last part of its key).
pub(crate) fn validate_name(name: &str) -> Result<(), CertValueError> {
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

/// Why a value is not a certificate object, without quoting it: serde's messages can include the value (a
/// double-encoded JSON string would put the private key in the logs).
fn json_reason(value: &[u8], e: &serde_json::Error) -> String {
    let kind = match serde_json::from_slice::<serde_json::Value>(value) {
        Err(_) => return format!("not JSON (line {}, column {})", e.line(), e.column()),
        Ok(serde_json::Value::Object(m)) => {
            return match (m.get("cert"), m.get("key")) {
                (Some(serde_json::Value::String(_)), Some(serde_json::Value::String(_))) => "unexpected content".into(),
                (None, _) => "no \"cert\" field".into(),
                (_, None) => "no \"key\" field".into(),
                _ => "\"cert\" and \"key\" must be strings".into(),
            };
        }
        Ok(serde_json::Value::String(_)) => "a JSON string (encoded twice?)",
        Ok(serde_json::Value::Array(_)) => "a JSON array",
        Ok(_) => "a JSON scalar",
    };
    format!("{kind}, not an object")
}

/// Parses the value of `key` (certificate `name`), reusing `previous` when the value has not changed.
pub(crate) fn parse_value(
    name: &str,
    key: &str,
    value: &[u8],
    previous: Option<&Arc<Certificate>>,
) -> Result<Arc<Certificate>, CertValueError> {
    validate_name(name)?;
    let v: CertValue = serde_json::from_slice(value).map_err(|e| CertValueError::Json(json_reason(value, &e)))?;
    if let Some(p) = previous {
        if p.fingerprint == cert::fingerprint(v.cert.as_bytes(), v.key.as_bytes()) {
            return Ok(p.clone());
        }
    }
    Ok(Arc::new(cert::parse(name, Origin::Etcd(key.to_string()), v.cert.as_bytes(), v.key.as_bytes())?))
}

/// Keeps the etcd part of the certificate store in step with etcd, until shutdown.
pub(crate) struct CertWatcher {
    etcd: Etcd,
    keys: Keys,
    store: Arc<CertStore>,
    metrics: TlsMetrics,
    /// The revision of each key's last rejected value, so a resync does not report (and count) it again.
    reported: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
}

impl CertWatcher {
    pub(crate) fn new(etcd: Etcd, store: Arc<CertStore>, metrics: TlsMetrics) -> Self {
        let keys = etcd.keys().clone();
        Self { etcd, keys, store, metrics, reported: Default::default() }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let config = self.etcd.config();
        let span =
            tracing::info_span!("etcd_certs", endpoints = %config.endpoints.join(","), prefix = %self.keys.prefix());
        crate::etcd::watch(&self.etcd, "certificates", self.keys.certs_range(), &self, shutdown).instrument(span).await
    }

    fn reject(&self, key: &str, e: &CertValueError, kept: Option<&Arc<Certificate>>, revision: i64) {
        if self.reported.lock().insert(key.to_string(), revision) == Some(revision) {
            return;
        }
        self.metrics.rejected(Source::Etcd.as_str());
        match kept {
            Some(_) => error!(key, error = %e, "certificate rejected; the previous one stays in force"),
            None => error!(key, error = %e, "certificate rejected"),
        }
    }
}

impl Sink for CertWatcher {
    async fn replace(&self, revision: i64, kvs: Vec<KeyValue>, first: bool) -> Result<(), EtcdError> {
        let previous = self.store.source(Source::Etcd);
        // Parsing thousands of certificates takes a while: keep it off the threads that serve requests.
        let (keys, prior) = (self.keys.clone(), previous.clone());
        let parsed = tokio::task::spawn_blocking(move || {
            kvs.iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let name = keys.cert_name(&key)?.to_string();
                    let result = parse_value(&name, &key, kv.value(), prior.get(&name));
                    Some((name, key, kv.mod_revision(), result))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| EtcdError::WatchEnded(format!("certificate parsing failed: {e}")))?;
        let mut set = BTreeMap::new();
        for (name, key, revision, result) in parsed {
            let before = previous.get(&name);
            match result {
                Ok(c) => {
                    if !before.is_some_and(|b| Arc::ptr_eq(b, &c)) {
                        log_loaded(&c, before.is_some());
                    }
                    set.insert(name, c);
                }
                Err(e) => {
                    self.reject(&key, &e, before, revision);
                    if let Some(b) = before {
                        set.insert(name, b.clone());
                    }
                }
            }
        }
        let count = set.len();
        self.store.replace(Source::Etcd, set);
        if first {
            info!(revision, certificates = count, "etcd certificates loaded");
        } else {
            info!(revision, certificates = count, "etcd certificates resynced after reconnecting");
        }
        Ok(())
    }

    /// One response is one revision (a transaction may hold many keys): its values are parsed off the request
    /// threads, then applied in one snapshot.
    async fn update(&self, revision: i64, events: &[Event]) -> Result<(), EtcdError> {
        let mut batch = Vec::new();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(name) = self.keys.cert_name(&key).map(str::to_string) else { continue };
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            batch.push((name, key, kv.mod_revision(), value));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let current = self.store.source(Source::Etcd);
        let parsed = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(name, key, revision, value)| {
                    let result = value.map(|v| parse_value(&name, &key, &v, current.get(&name)));
                    (name, key, revision, result)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| EtcdError::WatchEnded(format!("certificate parsing failed: {e}")))?;
        let current = self.store.source(Source::Etcd);
        let mut changes = Vec::new();
        for (name, key, revision, result) in parsed {
            let before = current.get(&name);
            match result {
                None => {
                    info!(key = %key, "certificate removed");
                    changes.push((name, None));
                }
                Some(Ok(c)) => {
                    if !before.is_some_and(|b| Arc::ptr_eq(b, &c)) {
                        log_loaded(&c, before.is_some());
                        changes.push((name, Some(c)));
                    }
                }
                Some(Err(e)) => self.reject(&key, &e, before, revision),
            }
        }
        if !changes.is_empty() {
            self.store.update(Source::Etcd, changes);
        }
        debug!(revision, "etcd certificate changes applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_the_value() {
        let secret = "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----";
        let inner = serde_json::json!({"cert": "x", "key": secret}).to_string();
        let twice = serde_json::to_vec(&inner).unwrap();
        for (value, expect) in [
            (twice, "encoded twice"),
            (serde_json::json!({"cert": "x", "key": 3, "k": secret}).to_string().into_bytes(), "must be strings"),
            (serde_json::json!({"cert": secret}).to_string().into_bytes(), "no \"key\""),
            (format!("{{\"cert\": \"{}", secret.replace('\n', "\\n")).into_bytes(), "not JSON"),
        ] {
            let e = parse_value("a", "/r/certs/a", &value, None).unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }
}
