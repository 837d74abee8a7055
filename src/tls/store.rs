//! The certificates in force: one immutable [`Snapshot`] behind an `ArcSwap`, rebuilt whenever a source (the
//! certificates directory, etcd) changes, and read by every handshake without a lock.
//!
//! Selection by SNI: the exact name first, then the most specific (longest) matching wildcard, the same rule
//! as routes; when several certificates serve the chosen name, the one that expires last. No SNI, or a name no
//! certificate serves: the default certificate if one is configured, else none (the handshake is refused with
//! an `unrecognized_name` alert).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::cert::{format_time, now, Certificate};
use crate::metrics::TlsMetrics;
use crate::routes::HostPattern;

/// Where certificates come from; each source's set is replaced or updated on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Dir,
    Etcd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dir => "dir",
            Source::Etcd => "etcd",
        }
    }
}

/// One consistent view of every certificate, indexed for SNI.
#[derive(Debug, Default)]
pub struct Snapshot {
    exact: HashMap<String, Arc<Certificate>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<Certificate>>,
    default: Option<Arc<Certificate>>,
    certs: Vec<Arc<Certificate>>,
}

impl Snapshot {
    fn build(sources: &BTreeMap<Source, BTreeMap<String, Arc<Certificate>>>, default_name: Option<&str>) -> Self {
        let mut snap = Snapshot::default();
        for cert in sources.values().flat_map(|s| s.values()) {
            snap.certs.push(cert.clone());
            for name in &cert.names {
                let (map, key) = match name {
                    HostPattern::Exact(h) => (&mut snap.exact, h),
                    HostPattern::Wildcard(s) => (&mut snap.wildcard, s),
                };
                match map.get(key) {
                    Some(current) if !preferred(cert, current) => {}
                    _ => {
                        map.insert(key.clone(), cert.clone());
                    }
                }
            }
            if default_name == Some(cert.name.as_str())
                && snap.default.as_ref().map_or(true, |current| preferred(cert, current))
            {
                snap.default = Some(cert.clone());
            }
        }
        snap
    }

    /// The certificate for a handshake that asked for `sni` (`None`: the client sent no name).
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<Certificate>> {
        if let Some(name) = sni {
            let name = normalize(name);
            if let Some(c) = self.exact.get(name.as_ref()) {
                return Some(c);
            }
            if !self.wildcard.is_empty() {
                let mut rest = name.as_ref();
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(c) = self.wildcard.get(rest) {
                        return Some(c);
                    }
                }
            }
        }
        self.default.as_ref()
    }

    /// Every certificate loaded, whatever names it serves.
    pub fn certificates(&self) -> &[Arc<Certificate>] {
        &self.certs
    }

    pub fn default_certificate(&self) -> Option<&Arc<Certificate>> {
        self.default.as_ref()
    }

    /// The soonest expiry among the loaded certificates, in seconds since the epoch.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.certs.iter().map(|c| c.not_after).min()
    }
}

/// Whether `a` should serve a name that `b` also serves: the one that expires last; on a tie, a stable order
/// (etcd over the directory, then by name) so the choice does not flip between rebuilds.
fn preferred(a: &Certificate, b: &Certificate) -> bool {
    (a.not_after, &a.origin, &a.name) > (b.not_after, &b.origin, &b.name)
}

/// SNI host names are case-insensitive and may carry a trailing dot.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The certificate sources and the snapshot built from them.
pub struct CertStore {
    sources: Mutex<BTreeMap<Source, BTreeMap<String, Arc<Certificate>>>>,
    current: ArcSwap<Snapshot>,
    default_name: Option<String>,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("default_name", &self.default_name).finish_non_exhaustive()
    }
}

impl CertStore {
    /// An empty store. `default_name` names the certificate served without SNI or for an unknown name.
    pub fn new(default_name: Option<String>, metrics: TlsMetrics) -> Arc<Self> {
        Arc::new(Self {
            sources: Mutex::new(BTreeMap::new()),
            current: ArcSwap::from_pointee(Snapshot::default()),
            default_name,
            metrics,
        })
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Borrows the snapshot in force for a short read (no reference count traffic).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The certificates `source` contributes now.
    pub fn source(&self, source: Source) -> BTreeMap<String, Arc<Certificate>> {
        self.sources.lock().get(&source).cloned().unwrap_or_default()
    }

    /// Replaces everything `source` contributes.
    pub fn replace(&self, source: Source, certs: BTreeMap<String, Arc<Certificate>>) {
        let mut sources = self.sources.lock();
        sources.insert(source, certs);
        self.publish(&sources);
    }

    /// Adds, replaces (`Some`) or removes (`None`) one certificate of `source`.
    pub fn update(&self, source: Source, name: &str, cert: Option<Arc<Certificate>>) {
        let mut sources = self.sources.lock();
        let set = sources.entry(source).or_default();
        match cert {
            Some(c) => {
                set.insert(name.to_string(), c);
            }
            None => {
                set.remove(name);
            }
        }
        self.publish(&sources);
    }

    fn publish(&self, sources: &BTreeMap<Source, BTreeMap<String, Arc<Certificate>>>) {
        let snap = Snapshot::build(sources, self.default_name.as_deref());
        if let Some(name) = &self.default_name {
            if snap.default.is_none() && !snap.certs.is_empty() {
                warn!(default_cert = %name, "the default certificate is not loaded: clients without SNI or with an unknown name are refused");
            }
        }
        self.metrics.certificates(snap.certs.len(), snap.earliest_expiry());
        let now = now();
        if let Some(c) = snap.certs.iter().min_by_key(|c| c.not_after) {
            if c.expired(now) {
                warn!(name = %c.name, origin = %c.origin, not_after = %format_time(c.not_after), "a certificate in force has expired");
            }
        }
        info!(certificates = snap.certs.len(), "certificates in force");
        self.current.store(Arc::new(snap));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello.server_name()).map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cert::Origin;

    fn cert(name: &str, names: &[&str], not_after: i64) -> Arc<Certificate> {
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let mut parsed = crate::tls::cert::parse(
            name,
            Origin::File(format!("{name}.pem")),
            c.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        parsed.not_after = not_after;
        Arc::new(parsed)
    }

    fn store(default: Option<&str>) -> Arc<CertStore> {
        CertStore::new(default.map(String::from), crate::metrics::Metrics::new().tls().clone())
    }

    fn pick(s: &CertStore, sni: Option<&str>) -> Option<String> {
        s.load().resolve(sni).map(|c| c.name.clone())
    }

    #[test]
    fn exact_then_most_specific_wildcard_then_default() {
        let s = store(Some("fallback"));
        let mut set = BTreeMap::new();
        for (n, names) in [
            ("exact", &["api.example.com"][..]),
            ("wild", &["*.example.com"][..]),
            ("deeper", &["*.eu.example.com"][..]),
            ("fallback", &["fallback.test"][..]),
        ] {
            set.insert(n.to_string(), cert(n, names, 2_000_000_000));
        }
        s.replace(Source::Dir, set);
        assert_eq!(pick(&s, Some("api.example.com")).as_deref(), Some("exact"));
        assert_eq!(pick(&s, Some("API.Example.com.")).as_deref(), Some("exact"));
        assert_eq!(pick(&s, Some("www.example.com")).as_deref(), Some("wild"));
        assert_eq!(pick(&s, Some("x.eu.example.com")).as_deref(), Some("deeper"));
        assert_eq!(pick(&s, Some("example.com")).as_deref(), Some("fallback"), "a wildcard does not cover its apex");
        assert_eq!(pick(&s, None).as_deref(), Some("fallback"));
        assert_eq!(pick(&s, Some("other.org")).as_deref(), Some("fallback"));
    }

    #[test]
    fn no_default_means_none() {
        let s = store(None);
        s.update(Source::Etcd, "a", Some(cert("a", &["a.test"], 2_000_000_000)));
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("a"));
        assert_eq!(pick(&s, Some("b.test")), None);
        assert_eq!(pick(&s, None), None);
    }

    #[test]
    fn latest_expiry_wins_and_removal_falls_back() {
        let s = store(None);
        s.update(Source::Dir, "old", Some(cert("old", &["a.test"], 1_900_000_000)));
        s.update(Source::Etcd, "new", Some(cert("new", &["a.test"], 2_000_000_000)));
        s.update(Source::Dir, "older", Some(cert("older", &["a.test"], 1_800_000_000)));
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("new"));
        s.update(Source::Etcd, "new", None);
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("old"));
        assert_eq!(s.load().certificates().len(), 2);
        assert_eq!(s.load().earliest_expiry(), Some(1_800_000_000));
        s.replace(Source::Dir, BTreeMap::new());
        assert_eq!(pick(&s, Some("a.test")), None);
    }
}
