//! The immutable route table snapshot and its builder.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::{validate_service_name, Backend, HostPattern, RouteError};
use crate::metrics::ServiceStats;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A named set of backends. Shared (`Arc`) by every route that points to it.
#[derive(Debug)]
pub struct Service {
    name: Arc<str>,
    backends: Box<[Backend]>,
    /// Round-robin cursor. Lives in the snapshot, so a reload restarts the rotation; that is harmless.
    cursor: AtomicUsize,
    /// Per-service metric handles, resolved on the first request so idle services cost no series and the
    /// request path only touches atomics.
    stats: OnceLock<ServiceStats>,
}

impl Service {
    /// Builds a service; `name` must already be validated.
    pub fn new(name: &str, backends: Vec<Backend>) -> Self {
        Self { name: Arc::from(name), backends: backends.into(), cursor: AtomicUsize::new(0), stats: OnceLock::new() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backends in the order this request should try them: round-robin start, then the others in turn, so
    /// a refused connection moves on to the next backend.
    pub fn rotation(&self) -> impl Iterator<Item = &Backend> + '_ {
        let n = self.backends.len();
        let start = if n > 1 { self.cursor.fetch_add(1, Ordering::Relaxed) % n } else { 0 };
        (0..n).map(move |i| &self.backends[(start + i) % n])
    }

    /// This service's metric handles, created on first use.
    pub fn stats(&self, init: impl FnOnce(&str) -> ServiceStats) -> &ServiceStats {
        self.stats.get_or_init(|| init(&self.name))
    }
}

/// One consistent view of all routes and services. Never mutated once built.
#[derive(Debug)]
pub struct RouteTable {
    exact: FastMap<Box<str>, Arc<Service>>,
    /// Keyed by the suffix after `*.`.
    wildcard: FastMap<Box<str>, Arc<Service>>,
    services: BTreeMap<Arc<str>, Arc<Service>>,
}

impl RouteTable {
    pub fn empty() -> Self {
        Self { exact: FastMap::default(), wildcard: FastMap::default(), services: BTreeMap::new() }
    }

    pub fn builder() -> RouteTableBuilder {
        RouteTableBuilder::default()
    }

    /// Finds the service for a normalised request host (see [`super::normalize_request_host`]): the exact route
    /// if there is one, else the longest matching wildcard. `O(labels)` hash lookups, whatever the table size.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&Arc<Service>> {
        if let Some(s) = self.exact.get(host) {
            return Some(s);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(s) = self.wildcard.get(rest) {
                return Some(s);
            }
        }
        None
    }

    pub fn route_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// All routes as `(pattern, service name)`, sorted by pattern.
    pub fn routes(&self) -> BTreeMap<String, &str> {
        let exact = self.exact.iter().map(|(h, s)| (h.to_string(), s.name()));
        let wild = self.wildcard.iter().map(|(h, s)| (format!("*.{h}"), s.name()));
        exact.chain(wild).collect()
    }

    /// The table as the admin API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct ServiceView<'a> {
            backends: Vec<&'a str>,
        }
        #[derive(Serialize)]
        struct View<'a> {
            routes: BTreeMap<String, &'a str>,
            services: BTreeMap<&'a str, ServiceView<'a>>,
        }
        let view = View {
            routes: self.routes(),
            services: self
                .services
                .iter()
                .map(|(n, s)| (&**n, ServiceView { backends: s.backends.iter().map(Backend::as_str).collect() }))
                .collect(),
        };
        serde_json::to_value(view).unwrap_or_default()
    }
}

/// Collects services and routes, checking each as it comes, then produces a [`RouteTable`].
#[derive(Default)]
pub struct RouteTableBuilder {
    services: BTreeMap<Arc<str>, Arc<Service>>,
    routes: Vec<(HostPattern, String)>,
}

impl RouteTableBuilder {
    /// Adds a service. Fails on a bad name, a duplicate or an empty backend list.
    pub fn service(&mut self, name: &str, backends: Vec<Backend>) -> Result<&mut Self, RouteError> {
        validate_service_name(name)?;
        if backends.is_empty() {
            return Err(RouteError::NoBackends { service: name.to_string() });
        }
        if self.services.contains_key(name) {
            return Err(RouteError::DuplicateService { service: name.to_string() });
        }
        self.services.insert(Arc::from(name), Arc::new(Service::new(name, backends)));
        Ok(self)
    }

    /// Adds a route; its service is resolved in [`Self::build`], so services and routes can come in any order.
    pub fn route(&mut self, pattern: HostPattern, service: &str) -> &mut Self {
        self.routes.push((pattern, service.to_string()));
        self
    }

    /// Resolves routes to services. Returns every problem found, not just the first, so an operator fixes a
    /// file in one pass.
    pub fn build(self) -> Result<RouteTable, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut table = RouteTable { services: self.services, ..RouteTable::empty() };
        for (pattern, service) in self.routes {
            let Some(svc) = table.services.get(service.as_str()) else {
                errors.push(RouteError::UnknownService { host: pattern.to_string(), service });
                continue;
            };
            let (map, key) = match &pattern {
                HostPattern::Exact(h) => (&mut table.exact, h),
                HostPattern::Wildcard(h) => (&mut table.wildcard, h),
            };
            if map.insert(key.as_str().into(), svc.clone()).is_some() {
                errors.push(RouteError::DuplicateRoute { host: pattern.to_string() });
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let mut b = RouteTable::builder();
        for name in ["a", "b", "c", "d"] {
            b.service(name, vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
        }
        for (h, s) in routes {
            b.route(HostPattern::parse(h).unwrap(), s);
        }
        b.build().unwrap()
    }

    fn name<'t>(t: &'t RouteTable, host: &str) -> Option<&'t str> {
        t.lookup(host).map(|s| s.name())
    }

    #[test]
    fn precedence() {
        let t =
            table(&[("x.example.com", "a"), ("*.example.com", "b"), ("*.deep.example.com", "c"), ("example.com", "d")]);
        assert_eq!(name(&t, "x.example.com"), Some("a"));
        assert_eq!(name(&t, "y.example.com"), Some("b"));
        assert_eq!(name(&t, "a.b.example.com"), Some("b"));
        assert_eq!(name(&t, "q.deep.example.com"), Some("c"));
        assert_eq!(name(&t, "r.q.deep.example.com"), Some("c"));
        assert_eq!(name(&t, "deep.example.com"), Some("b"));
        assert_eq!(name(&t, "example.com"), Some("d"));
        assert_eq!(name(&t, "other.com"), None);
        assert_eq!(name(&t, "xexample.com"), None);
    }

    #[test]
    fn build_errors_are_all_reported() {
        let mut b = RouteTable::builder();
        b.service("a", vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
        b.route(HostPattern::parse("x.com").unwrap(), "a");
        b.route(HostPattern::parse("X.com").unwrap(), "a");
        b.route(HostPattern::parse("y.com").unwrap(), "nope");
        let errs = b.build().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(matches!(errs[0], RouteError::DuplicateRoute { .. }));
        assert!(matches!(errs[1], RouteError::UnknownService { .. }));
    }

    #[test]
    fn round_robin_rotates_and_covers_all() {
        let mut b = RouteTable::builder();
        let backends = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].map(|a| Backend::parse(a).unwrap());
        b.service("a", backends.to_vec()).unwrap();
        let t = b.build().unwrap();
        let svc = t.service("a").unwrap();
        let firsts: Vec<_> = (0..3).map(|_| svc.rotation().next().unwrap().as_str().to_string()).collect();
        assert_eq!(firsts, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let all: Vec<_> = svc.rotation().map(|b| b.as_str()).collect();
        assert_eq!(all, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }
}
