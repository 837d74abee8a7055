//! The answers to pending ACME challenges, for whichever replica the CA reaches.
//!
//! - HTTP-01: `GET /.well-known/acme-challenge/<token>` on the HTTP listener answers the key authorization.
//! - TLS-ALPN-01 (RFC 8737): a handshake that offers only the `acme-tls/1` protocol for a host gets a
//!   self-signed certificate for that host carrying the `acmeIdentifier` extension (the SHA-256 digest of the
//!   key authorization), and nothing else happens on that connection.
//!
//! The replica that orders publishes the answer here and in the store (etcd, under a lease); the others learn
//! it through their watch of `<prefix>acme/challenges/` ([`ChallengeWatcher`]). A request for a token nobody
//! published is answered from memory only — never by a lookup in etcd, so a flood of made-up tokens costs
//! nothing but a hash lookup.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Event, EventType, KeyValue};
use parking_lot::Mutex;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::etcd::{Etcd, EtcdError, Sink};
use crate::metrics::AcmeMetrics;

/// The challenge kinds, as they appear in keys and metrics.
pub(crate) const HTTP_01: &str = "http-01";
pub(crate) const TLS_ALPN_01: &str = "tls-alpn-01";

/// The pending challenges' answers: published by this replica, or learnt from etcd.
pub(crate) struct Challenges {
    /// `(kind, id)` → answer: for HTTP-01 the id is the token and the answer the key authorization; for
    /// TLS-ALPN-01 the id is the host and the answer the hex SHA-256 digest of the key authorization.
    local: Mutex<HashMap<(String, String), String>>,
    remote: Mutex<HashMap<(String, String), String>>,
    /// TLS-ALPN-01 certificates made so far, by host and digest.
    alpn_certs: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
    metrics: AcmeMetrics,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    pub(crate) fn new(metrics: AcmeMetrics) -> Arc<Self> {
        Arc::new(Self {
            local: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            alpn_certs: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn answer(&self, kind: &str, id: &str) -> Option<String> {
        let key = (kind.to_string(), id.to_string());
        if let Some(a) = self.local.lock().get(&key) {
            return Some(a.clone());
        }
        self.remote.lock().get(&key).cloned()
    }

    /// The key authorization for an HTTP-01 `token`, if a challenge with that token is pending.
    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        let answer = self.answer(HTTP_01, token);
        self.metrics.challenge(HTTP_01, if answer.is_some() { "answered" } else { "unknown" });
        answer
    }

    /// The TLS-ALPN-01 certificate for `host`, if a challenge for it is pending.
    pub(crate) fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let Some(digest) = self.answer(TLS_ALPN_01, host) else {
            self.metrics.challenge(TLS_ALPN_01, "unknown");
            return None;
        };
        if let Some((d, key)) = self.alpn_certs.lock().get(host) {
            if *d == digest {
                self.metrics.challenge(TLS_ALPN_01, "answered");
                return Some(key.clone());
            }
        }
        let key = match alpn_certificate(host, &digest) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot make the TLS-ALPN-01 certificate");
                self.metrics.challenge(TLS_ALPN_01, "error");
                return None;
            }
        };
        self.alpn_certs.lock().insert(host.to_string(), (digest, key.clone()));
        self.metrics.challenge(TLS_ALPN_01, "answered");
        Some(key)
    }

    /// Publishes an answer in this process.
    pub(crate) fn publish(&self, kind: &str, id: &str, answer: &str) {
        self.local.lock().insert((kind.to_string(), id.to_string()), answer.to_string());
    }

    /// Withdraws an answer published here.
    pub(crate) fn withdraw(&self, kind: &str, id: &str) {
        self.local.lock().remove(&(kind.to_string(), id.to_string()));
        if kind == TLS_ALPN_01 {
            self.alpn_certs.lock().remove(id);
        }
    }

    fn parse_key(prefix: &str, key: &[u8]) -> Option<(String, String)> {
        let key = std::str::from_utf8(key).ok()?;
        let (kind, id) = key.strip_prefix(prefix)?.split_once('/')?;
        Some((kind.to_string(), id.to_string()))
    }
}

/// The hex form of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The RFC 8737 certificate: self-signed, for `host` only, with the critical `acmeIdentifier` extension.
fn alpn_certificate(host: &str, digest_hex: &str) -> Result<CertifiedKey, String> {
    let digest = unhex(digest_hex).filter(|d| d.len() == 32).ok_or("the stored digest is not 32 bytes of hex")?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = crate::tls::provider().key_provider.load_private_key(der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// Mirrors `<prefix>acme/challenges/` into [`Challenges`], for answers published by other replicas.
pub(crate) struct ChallengeWatcher {
    etcd: Etcd,
    challenges: Arc<Challenges>,
    prefix: String,
}

impl ChallengeWatcher {
    pub(crate) fn new(etcd: Etcd, challenges: Arc<Challenges>) -> Self {
        let base = etcd.keys().acme_challenge("", "");
        let prefix = format!("{}/", base.trim_end_matches('/'));
        Self { etcd, challenges, prefix }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let start = self.prefix.clone();
        let end = format!("{}0", self.prefix.trim_end_matches('/'));
        debug_assert!(start < end);
        crate::etcd::watch(&self.etcd.clone(), "ACME challenges", (start, end), &self, shutdown).await
    }
}

impl Sink for ChallengeWatcher {
    async fn replace(&self, _revision: i64, kvs: Vec<KeyValue>, _first: bool) -> Result<(), EtcdError> {
        let mut map = HashMap::new();
        for kv in &kvs {
            if let Some(k) = Challenges::parse_key(&self.prefix, kv.key()) {
                map.insert(k, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        *self.challenges.remote.lock() = map;
        Ok(())
    }

    async fn update(&self, _revision: i64, events: &[Event]) -> Result<(), EtcdError> {
        let mut remote = self.challenges.remote.lock();
        for e in events {
            let Some(kv) = e.kv() else { continue };
            let Some(k) = Challenges::parse_key(&self.prefix, kv.key()) else { continue };
            match e.event_type() {
                EventType::Put => {
                    remote.insert(k, String::from_utf8_lossy(kv.value()).into_owned());
                }
                EventType::Delete => {
                    remote.remove(&k);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_was_published_and_nothing_else() {
        let c = Challenges::new(crate::metrics::Metrics::new().acme().clone());
        assert_eq!(c.http01("tok"), None);
        c.publish(HTTP_01, "tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        assert!(c.tls_alpn01("a.test").is_none());
        c.publish(TLS_ALPN_01, "a.test", &hex(&[7u8; 32]));
        let key = c.tls_alpn01("a.test").expect("a certificate");
        assert!(Arc::ptr_eq(&key, &c.tls_alpn01("a.test").unwrap()), "made once per digest");
        let (_, parsed) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
        c.withdraw(HTTP_01, "tok");
        assert_eq!(c.http01("tok"), None);
        c.publish(TLS_ALPN_01, "b.test", "not hex");
        assert!(c.tls_alpn01("b.test").is_none());
    }

    #[test]
    fn keys_of_the_watched_range() {
        let p = "/reveille/acme/challenges/";
        assert_eq!(
            Challenges::parse_key(p, b"/reveille/acme/challenges/http-01/abc"),
            Some(("http-01".into(), "abc".into()))
        );
        assert_eq!(Challenges::parse_key(p, b"/reveille/acme/account"), None);
    }
}
