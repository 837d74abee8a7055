//! ACME Renewal Information (ARI, RFC 9773): the CA may suggest a renewal window for a certificate — earlier
//! than usual when it must revoke it, say. reveille asks for each certificate ACME manages, follows the CA's
//! `Retry-After` for the next question, and renews at a time inside the window when that is earlier than its
//! own rule. A CA without ARI (its directory has no `renewalInfo`) is asked once per process: the lifetime rule
//! then applies alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use instant_acme::{Account, CertificateIdentifier};
use parking_lot::Mutex;
use tracing::{debug, info};

use crate::tls::cert::Certificate;

/// How long to wait before asking again after an error, and the bounds on the CA's `Retry-After`.
const RETRY_ON_ERROR: Duration = Duration::from_secs(3600);
const RETRY_MIN: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(86_400);

const UNKNOWN: u8 = 0;
const SUPPORTED: u8 = 1;
const UNSUPPORTED: u8 = 2;

/// What the CA said about one certificate.
#[derive(Debug, Clone, Copy)]
struct Suggestion {
    /// The certificate it is about (a renewed one starts afresh).
    fingerprint: u64,
    /// Renew at this time (seconds since the epoch); `None` until the CA has answered.
    renew_at: Option<i64>,
    /// Ask again after this.
    next: Instant,
}

/// The CA's suggestions, by certificate name.
#[derive(Debug)]
pub(crate) struct Ari {
    suggestions: Mutex<HashMap<String, Suggestion>>,
    /// Whether the CA has ARI: not known yet, yes, no.
    support: AtomicU8,
}

impl Default for Ari {
    fn default() -> Self {
        Self { suggestions: Mutex::new(HashMap::new()), support: AtomicU8::new(UNKNOWN) }
    }
}

/// A time inside `[start, end]`, spread by the certificate's fingerprint so that a fleet's renewals do not all
/// fall at the window's start (RFC 9773 §4.2 asks for a random time in the window).
pub(crate) fn pick(start: i64, end: i64, fingerprint: u64) -> i64 {
    if end <= start {
        return start;
    }
    start + (fingerprint % (end - start + 1) as u64) as i64
}

impl Ari {
    /// The CA's renewal time for `cert`, if it has suggested one for this very certificate.
    pub(crate) fn renew_at(&self, cert: &Certificate) -> Option<i64> {
        let s = self.suggestions.lock();
        s.get(&cert.name).filter(|s| s.fingerprint == cert.fingerprint).and_then(|s| s.renew_at)
    }

    /// Whether to ask about `cert` now; if so, marks the question asked (no second one meanwhile).
    pub(crate) fn due(&self, cert: &Certificate) -> bool {
        if self.support.load(Ordering::Relaxed) == UNSUPPORTED {
            return false;
        }
        let mut s = self.suggestions.lock();
        let now = Instant::now();
        match s.get(&cert.name) {
            Some(x) if x.fingerprint == cert.fingerprint && x.next > now => false,
            previous => {
                let renew_at = previous.filter(|x| x.fingerprint == cert.fingerprint).and_then(|x| x.renew_at);
                let next = now + RETRY_ON_ERROR;
                s.insert(cert.name.clone(), Suggestion { fingerprint: cert.fingerprint, renew_at, next });
                true
            }
        }
    }

    /// Asks the CA about `cert` and records the answer.
    pub(crate) async fn ask(&self, account: &Account, cert: &Certificate) {
        let id = match CertificateIdentifier::try_from(&cert.key.cert[0]) {
            Ok(id) => id,
            Err(e) => {
                debug!(name = %cert.name, error = %e, "no ARI for this certificate");
                return;
            }
        };
        match account.renewal_info(&id).await {
            Ok((info, retry)) => {
                self.support.store(SUPPORTED, Ordering::Relaxed);
                let window = &info.suggested_window;
                let at = pick(window.start.unix_timestamp(), window.end.unix_timestamp(), cert.fingerprint);
                debug!(name = %cert.name, renew_at = at, "the CA's suggested renewal time");
                let next = Instant::now() + retry.clamp(RETRY_MIN, RETRY_MAX);
                let s = Suggestion { fingerprint: cert.fingerprint, renew_at: Some(at), next };
                self.suggestions.lock().insert(cert.name.clone(), s);
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                if self.support.swap(UNSUPPORTED, Ordering::Relaxed) != UNSUPPORTED {
                    info!("the CA offers no renewal information (ARI): renewals follow the certificates' lifetimes");
                }
            }
            Err(e) => debug!(name = %cert.name, error = %e, "ARI question failed; asking again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_inside_the_window_spread_by_certificate() {
        assert_eq!(pick(100, 100, 7), 100);
        assert_eq!(pick(100, 90, 7), 100, "a window that ends before it starts: its start");
        let picks: Vec<i64> = (0..50u64).map(|f| pick(1_000, 1_010, f.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
        assert!(picks.iter().all(|p| (1_000..=1_010).contains(p)));
        assert!(picks.iter().collect::<std::collections::HashSet<_>>().len() > 3, "spread: {picks:?}");
    }

    fn cert(name: &str) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let origin = crate::tls::cert::Origin::File(name.into());
        crate::tls::cert::parse(name, origin, c.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    #[test]
    fn one_question_per_certificate_until_its_time_and_none_once_unsupported() {
        let ari = Ari::default();
        let (first, renewed) = (cert("acme-a.test"), cert("acme-a.test"));
        assert!(ari.due(&first), "never asked");
        assert!(!ari.due(&first), "asked: not again before the retry time");
        assert_eq!(ari.renew_at(&first), None, "no answer yet");
        assert!(ari.due(&renewed), "a renewed certificate is another question");
        ari.suggestions.lock().get_mut("acme-a.test").unwrap().renew_at = Some(42);
        assert_eq!(ari.renew_at(&renewed), Some(42));
        assert_eq!(ari.renew_at(&first), None, "an answer is for its own certificate only");
        ari.support.store(UNSUPPORTED, Ordering::Relaxed);
        assert!(!ari.due(&cert("acme-b.test")), "a CA without ARI is not asked again");
    }
}
