//! The certificates in force: one immutable [`Snapshot`] behind an `ArcSwap`, rebuilt whenever a source (the
//! certificates directory, etcd) changes, and read by every handshake without a lock.
//!
//! Selection by SNI: the exact name first, then the wildcard that covers it. Unlike routes, a certificate
//! wildcard covers exactly one label (RFC 6125 §6.4.3, and what every client checks): `*.example.com` serves
//! `a.example.com`, never `a.b.example.com`, so the most specific wildcard that can serve a name is the one for
//! its parent. When several certificates serve the chosen name, one valid now is preferred, then the one that
//! expires last. No SNI, or a name no certificate serves: the default certificate if one is configured, else
//! none (the handshake is refused with an `unrecognized_name` alert).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{debug, warn};

use super::cert::{format_time, now, Certificate};
use crate::events::Events;
use crate::metrics::TlsMetrics;
use crate::readiness::Gate;
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
    fn build(
        sources: &BTreeMap<Source, BTreeMap<String, Arc<Certificate>>>,
        default_name: Option<&str>,
        now: i64,
    ) -> Self {
        let mut snap = Snapshot::default();
        let preferred = |a: &Certificate, b: &Certificate| preferred(a, b, now);
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
                && snap.default.as_ref().is_none_or(|current| preferred(cert, current))
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
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return Some(c);
                }
            }
        }
        self.default.as_ref()
    }

    /// The certificate that serves `name` itself (exact, then wildcard), never the default.
    pub fn for_name(&self, name: &str) -> Option<&Arc<Certificate>> {
        let name = normalize(name);
        if let Some(c) = self.exact.get(name.as_ref()) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// Every certificate loaded, whatever names it serves.
    pub fn certificates(&self) -> &[Arc<Certificate>] {
        &self.certs
    }

    pub fn default_certificate(&self) -> Option<&Arc<Certificate>> {
        self.default.as_ref()
    }

    /// Every certificate as the admin API shows it: name, the names it serves, validity, days left, where it
    /// comes from, whether ACME manages it, whether it is the default. Sorted by name.
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        let mut certs: Vec<&Arc<Certificate>> = self.certs.iter().collect();
        certs.sort_by(|a, b| (&a.name, &a.origin).cmp(&(&b.name, &b.origin)));
        let list: Vec<serde_json::Value> = certs
            .into_iter()
            .map(|c| {
                let source = match &c.origin {
                    super::cert::Origin::File(p) => serde_json::json!({ "dir": p }),
                    super::cert::Origin::Etcd(k) => serde_json::json!({ "etcd": k }),
                };
                serde_json::json!({
                    "name": c.name,
                    "names": c.names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "not_before": format_time(c.not_before),
                    "not_after": format_time(c.not_after),
                    "days_left": (c.not_after - now).div_euclid(86_400),
                    "expired": c.expired(now),
                    "source": source,
                    "acme": c.name.starts_with("acme-"),
                    "default": self.default.as_ref().is_some_and(|d| Arc::ptr_eq(d, c)),
                })
            })
            .collect();
        serde_json::json!({ "certificates": list })
    }

    /// The soonest expiry among the loaded certificates, in seconds since the epoch.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.certs.iter().map(|c| c.not_after).min()
    }
}

/// Whether `a` should serve a name that `b` also serves: one valid at `now` (a renewal staged before its
/// `not_before` waits; an expired one yields to a valid one), then the one that expires last; on a tie, a stable
/// order (etcd over the directory, then by name) so the choice does not flip between rebuilds.
fn preferred(a: &Certificate, b: &Certificate, now: i64) -> bool {
    let valid = |c: &Certificate| c.not_before <= now && now <= c.not_after;
    (valid(a), a.not_after, &a.origin, &a.name) > (valid(b), b.not_after, &b.origin, &b.name)
}

/// The next time (after `now`) a certificate becomes valid or expires: the choice may change then.
fn next_boundary(certs: &[Arc<Certificate>], now: i64) -> i64 {
    certs.iter().flat_map(|c| [c.not_before, c.not_after + 1]).filter(|t| *t > now).min().unwrap_or(i64::MAX)
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
    /// The events feed: each change of the certificates in force is a `certificates` event.
    events: Events,
    /// When the snapshot must be rebuilt because a certificate becomes valid or expires (epoch seconds).
    boundary: std::sync::atomic::AtomicI64,
    /// Sources whose first load is still awaited.
    pending: Mutex<Vec<Source>>,
    /// Opened once every awaited source has loaded (readiness).
    loaded: Gate,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("default_name", &self.default_name).finish_non_exhaustive()
    }
}

impl CertStore {
    /// An empty store. `default_name` names the certificate served without SNI or for an unknown name;
    /// `awaited` are the sources that must have loaded once before the store counts as ready: `loaded` is
    /// opened then.
    pub fn new(
        default_name: Option<String>,
        metrics: TlsMetrics,
        events: Events,
        awaited: &[Source],
        loaded: Gate,
    ) -> Arc<Self> {
        if awaited.is_empty() {
            loaded.open();
        }
        Arc::new(Self {
            sources: Mutex::new(BTreeMap::new()),
            current: ArcSwap::from_pointee(Snapshot::default()),
            default_name,
            metrics,
            events,
            boundary: std::sync::atomic::AtomicI64::new(i64::MAX),
            pending: Mutex::new(awaited.to_vec()),
            loaded,
        })
    }

    /// Whether `source` has contributed a set (even an empty one) since the start.
    pub fn is_loaded(&self, source: Source) -> bool {
        self.sources.lock().contains_key(&source)
    }

    /// Every awaited source has loaded once.
    pub fn is_ready(&self) -> bool {
        self.loaded.is_open()
    }

    /// Rebuilds the snapshot if a certificate became valid or expired since it was built. Cheap otherwise.
    pub fn refresh(&self) {
        if now() >= self.boundary.load(std::sync::atomic::Ordering::Relaxed) {
            let sources = self.sources.lock();
            self.publish(&sources);
        }
    }

    /// Calls [`CertStore::refresh`] every `every` until `shutdown`.
    pub async fn run_refresh(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh(),
                _ = shutdown.cancelled() => return,
            }
        }
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
        let mut pending = self.pending.lock();
        pending.retain(|s| *s != source);
        if pending.is_empty() {
            self.loaded.open();
        }
    }

    /// Adds or replaces (`Some`) and removes (`None`) certificates of `source`, in one snapshot.
    pub fn update(&self, source: Source, changes: Vec<(String, Option<Arc<Certificate>>)>) {
        let mut sources = self.sources.lock();
        let set = sources.entry(source).or_default();
        for (name, cert) in changes {
            match cert {
                Some(c) => {
                    set.insert(name, c);
                }
                None => {
                    set.remove(&name);
                }
            }
        }
        self.publish(&sources);
    }

    fn publish(&self, sources: &BTreeMap<Source, BTreeMap<String, Arc<Certificate>>>) {
        let now = now();
        let snap = Snapshot::build(sources, self.default_name.as_deref(), now);
        self.boundary.store(next_boundary(&snap.certs, now), std::sync::atomic::Ordering::Relaxed);
        if let Some(name) = &self.default_name {
            if snap.default.is_none() && !snap.certs.is_empty() {
                warn!(default_cert = %name, "the default certificate is not loaded: clients without SNI or with an unknown name are refused");
            }
        }
        let (count, earliest) = (snap.certs.len(), snap.earliest_expiry());
        self.metrics.certificates(count, earliest);
        self.events.publish("certificates", serde_json::json!({ "certificates": count, "earliest_expiry": earliest }));
        if let Some(c) = snap.certs.iter().min_by_key(|c| c.not_after) {
            if c.expired(now) {
                warn!(name = %c.name, origin = %c.origin, not_after = %format_time(c.not_after), "a certificate in force has expired");
            }
        }
        debug!(certificates = snap.certs.len(), "certificates in force");
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
    use crate::metrics::Metrics;
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
        CertStore::new(default.map(String::from), Metrics::new().tls().clone(), Events::new(), &[], Gate::detached())
    }

    fn one(name: &str, cert: Arc<Certificate>) -> Vec<(String, Option<Arc<Certificate>>)> {
        vec![(name.to_string(), Some(cert))]
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
        assert_eq!(pick(&s, Some("a.b.example.com")).as_deref(), Some("fallback"), "a wildcard covers one label");
        assert_eq!(pick(&s, Some("y.x.eu.example.com")).as_deref(), Some("fallback"));
        assert_eq!(pick(&s, Some("example.com")).as_deref(), Some("fallback"), "a wildcard does not cover its apex");
        assert_eq!(pick(&s, None).as_deref(), Some("fallback"));
        assert_eq!(pick(&s, Some("other.org")).as_deref(), Some("fallback"));
    }

    #[test]
    fn valid_now_beats_a_staged_renewal_until_its_time_comes() {
        let s = store(None);
        let current = cert("current", &["a.test"], 2_000_000_000);
        let mut staged = (*cert("staged", &["a.test"], 2_100_000_000)).clone_for_test();
        staged.not_before = now() + 1;
        s.update(Source::Dir, vec![("current".into(), Some(current)), ("staged".into(), Some(Arc::new(staged)))]);
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("current"), "not valid yet: waits");
        s.refresh();
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("current"), "nothing changed yet");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        s.refresh();
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("staged"), "valid now, expires later");
    }

    #[test]
    fn ready_once_every_awaited_source_loaded() {
        let s = CertStore::new(None, Metrics::new().tls().clone(), Events::new(), &[Source::Etcd], Gate::detached());
        assert!(!s.is_ready());
        s.replace(Source::Dir, BTreeMap::new());
        assert!(!s.is_ready(), "the directory is not what is awaited");
        s.replace(Source::Etcd, BTreeMap::new());
        assert!(s.is_ready(), "an empty etcd listing counts as loaded");
        assert!(store(None).is_ready(), "nothing awaited");
    }

    #[test]
    fn no_default_means_none() {
        let s = store(None);
        s.update(Source::Etcd, one("a", cert("a", &["a.test"], 2_000_000_000)));
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("a"));
        assert_eq!(pick(&s, Some("b.test")), None);
        assert_eq!(pick(&s, None), None);
    }

    #[test]
    fn latest_expiry_wins_and_removal_falls_back() {
        let s = store(None);
        s.update(Source::Dir, one("old", cert("old", &["a.test"], 1_900_000_000)));
        s.update(Source::Etcd, one("new", cert("new", &["a.test"], 2_000_000_000)));
        s.update(Source::Dir, one("older", cert("older", &["a.test"], 1_800_000_000)));
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("new"));
        s.update(Source::Etcd, vec![("new".into(), None)]);
        assert_eq!(pick(&s, Some("a.test")).as_deref(), Some("old"));
        assert_eq!(s.load().certificates().len(), 2);
        assert_eq!(s.load().earliest_expiry(), Some(1_800_000_000));
        s.replace(Source::Dir, BTreeMap::new());
        assert_eq!(pick(&s, Some("a.test")), None);
    }
}
