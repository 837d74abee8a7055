//! The immutable route table snapshot, the validated route sets it is made from, and the builder that checks a
//! set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::service::Service;
use super::shard::ShardMap;
use super::{validate_service_name, Backend, HostPattern, RouteError};

/// What a hostname resolves to.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Arc<Service>),
    /// A route exists but names a service that is not defined (possible with etcd, where keys change one by
    /// one): the host is known, so the answer is 503, not 404.
    MissingService(&'a Arc<str>),
    NoRoute,
}

/// One consistent view of all routes and services. Never mutated once published: a change clones it (cheaply,
/// see `ShardMap`) and publishes the clone.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Host → service name.
    exact: ShardMap<Arc<str>>,
    /// Suffix after `*.` → service name.
    wildcard: ShardMap<Arc<str>>,
    services: ShardMap<Arc<Service>>,
}

impl RouteTable {
    pub fn empty() -> Self {
        Self::with_expected(0, 0)
    }

    /// An empty table laid out for about this many routes and services.
    pub fn with_expected(routes: usize, services: usize) -> Self {
        Self {
            exact: ShardMap::with_expected(routes),
            wildcard: ShardMap::with_expected(routes / 4),
            services: ShardMap::with_expected(services),
        }
    }

    pub fn builder() -> RouteSetBuilder {
        RouteSetBuilder::default()
    }

    /// Finds the service for a normalised request host (see [`super::normalize_request_host`]): the exact route
    /// if there is one, else the longest matching wildcard. `O(labels)` hash lookups, whatever the table size.
    #[inline]
    pub fn lookup(&self, host: &str) -> Lookup<'_> {
        match self.route_target(host) {
            Some(name) => match self.services.get(name) {
                Some(s) => Lookup::Found(s),
                None => Lookup::MissingService(name),
            },
            None => Lookup::NoRoute,
        }
    }

    /// Shorthand for tests and tools: the service a host reaches, if any.
    pub fn find(&self, host: &str) -> Option<&Arc<Service>> {
        match self.lookup(host) {
            Lookup::Found(s) => Some(s),
            _ => None,
        }
    }

    /// The service of an exact route for `host` (no wildcard match), if it exists.
    pub fn exact_service(&self, host: &str) -> Option<&Arc<Service>> {
        self.exact.get(host).and_then(|name| self.services.get(name))
    }

    /// Every exact route's host with its service, for routes whose service exists; in no particular order.
    pub fn exact_routes(&self) -> impl Iterator<Item = (&str, &Arc<Service>)> {
        self.exact.iter().filter_map(|(h, name)| self.services.get(name).map(|s| (&**h, s)))
    }

    /// Every wildcard route's pattern (`*.example.com`) with its service name, in no particular order.
    pub fn wildcard_routes(&self) -> impl Iterator<Item = (String, &str)> {
        self.wildcard.iter().map(|(h, s)| (format!("*.{h}"), &**s))
    }

    #[inline]
    fn route_target(&self, host: &str) -> Option<&Arc<str>> {
        if let Some(s) = self.exact.get(host) {
            return Some(s);
        }
        if self.wildcard.len() == 0 {
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

    /// Sets (`Some`) or removes (`None`) one route.
    pub fn set_route(&mut self, pattern: &HostPattern, service: Option<Arc<str>>) {
        let (map, key) = match pattern {
            HostPattern::Exact(h) => (&mut self.exact, h),
            HostPattern::Wildcard(h) => (&mut self.wildcard, h),
        };
        match service {
            Some(s) => {
                map.insert(Arc::from(key.as_str()), s);
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) one service.
    pub fn set_service(&mut self, name: &str, service: Option<Arc<Service>>) {
        match service {
            Some(s) => {
                self.services.insert(Arc::from(name), s);
            }
            None => {
                self.services.remove(name);
            }
        }
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

    /// Every service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Service>)> {
        self.services.iter()
    }

    /// All routes as `(pattern, service name)`, sorted by pattern.
    pub fn routes(&self) -> BTreeMap<String, &str> {
        let exact = self.exact.iter().map(|(h, s)| (h.to_string(), &**s));
        let wild = self.wildcard.iter().map(|(h, s)| (format!("*.{h}"), &**s));
        exact.chain(wild).collect()
    }

    /// The table as the admin API shows it. Routes whose service does not exist are also listed under
    /// `missing_services`.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct ServiceView<'a> {
            backends: Vec<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            container: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct View<'a> {
            routes: BTreeMap<String, &'a str>,
            services: BTreeMap<&'a str, ServiceView<'a>>,
            missing_services: BTreeMap<String, &'a str>,
        }
        let routes = self.routes();
        let missing_services =
            routes.iter().filter(|(_, s)| self.services.get(s).is_none()).map(|(h, s)| (h.clone(), *s)).collect();
        let view = View {
            routes,
            services: self
                .services
                .iter()
                .map(|(n, s)| {
                    let backends = s.backends().iter().map(Backend::as_str).collect();
                    (&**n, ServiceView { backends, container: s.container().map(|c| c.container.as_str()) })
                })
                .collect(),
            missing_services,
        };
        serde_json::to_value(view).unwrap_or_default()
    }
}

/// A complete, validated set of routes and services from one source (the routes file, or etcd).
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    pub routes: BTreeMap<HostPattern, Arc<str>>,
    pub services: BTreeMap<Arc<str>, Arc<Service>>,
}

impl RouteSet {
    /// A table holding exactly this set.
    pub fn to_table(&self) -> RouteTable {
        let mut t = RouteTable::with_expected(self.routes.len(), self.services.len());
        for (p, s) in &self.routes {
            t.set_route(p, Some(s.clone()));
        }
        for (n, s) in &self.services {
            t.set_service(n, Some(s.clone()));
        }
        t
    }
}

/// Collects services and routes, checking each as it comes, then checks the whole (every route's service is
/// defined, no duplicates) and produces a [`RouteSet`].
#[derive(Default)]
pub struct RouteSetBuilder {
    services: BTreeMap<Arc<str>, Arc<Service>>,
    /// Services defined but refused (their own errors say why): a route to one is not "undefined".
    invalid: std::collections::BTreeSet<String>,
    routes: Vec<(HostPattern, String)>,
}

impl RouteSetBuilder {
    /// Adds a service. Fails on a bad name, a duplicate or an empty backend list.
    pub fn service(&mut self, name: &str, backends: Vec<Backend>) -> Result<&mut Self, RouteError> {
        validate_service_name(name)?;
        if backends.is_empty() {
            return Err(RouteError::NoBackends { service: name.to_string() });
        }
        self.insert_service(Service::new(name, backends))
    }

    /// Adds an already validated service (see [`super::ServiceSpec::to_service`]). Fails on a duplicate.
    pub fn insert_service(&mut self, service: Service) -> Result<&mut Self, RouteError> {
        if self.services.contains_key(service.name()) {
            return Err(RouteError::DuplicateService { service: service.name().to_string() });
        }
        self.services.insert(Arc::from(service.name()), Arc::new(service));
        Ok(self)
    }

    /// Notes a service that is defined but invalid, whose error the caller reports: a route to it is then
    /// [`RouteError::InvalidService`], not [`RouteError::UnknownService`], and the set is still refused.
    pub fn invalid_service(&mut self, name: &str) -> &mut Self {
        self.invalid.insert(name.to_string());
        self
    }

    /// Adds a route; its service is resolved in [`Self::build`], so services and routes can come in any order.
    pub fn route(&mut self, pattern: HostPattern, service: &str) -> &mut Self {
        self.routes.push((pattern, service.to_string()));
        self
    }

    /// Checks the whole set. Returns every problem found, not just the first, so an operator fixes a file in
    /// one pass.
    pub fn build(self) -> Result<RouteSet, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut set = RouteSet { services: self.services, routes: BTreeMap::new() };
        // Hosts seen so far, whatever their service: a duplicate is reported even when the service is wrong too.
        let mut seen = std::collections::BTreeSet::new();
        for (pattern, service) in self.routes {
            let host = pattern.to_string();
            if !seen.insert(pattern.clone()) {
                errors.push(RouteError::DuplicateRoute { host });
                continue;
            }
            let Some((name, _)) = set.services.get_key_value(service.as_str()) else {
                errors.push(if self.invalid.contains(&service) {
                    RouteError::InvalidService { host, service }
                } else {
                    RouteError::UnknownService { host, service }
                });
                continue;
            };
            set.routes.insert(pattern, name.clone());
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// [`Self::build`], then a table of the set.
    pub fn build_table(self) -> Result<RouteTable, Vec<RouteError>> {
        self.build().map(|s| s.to_table())
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
        b.build_table().unwrap()
    }

    fn name<'t>(t: &'t RouteTable, host: &str) -> Option<&'t str> {
        t.find(host).map(|s| s.name())
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
    fn missing_service_is_distinguished_from_no_route() {
        let mut t = table(&[("x.com", "a")]);
        t.set_route(&HostPattern::parse("y.com").unwrap(), Some(Arc::from("ghost")));
        assert!(matches!(t.lookup("y.com"), Lookup::MissingService(n) if &**n == "ghost"));
        assert!(matches!(t.lookup("z.com"), Lookup::NoRoute));
        t.set_service("a", None);
        assert!(matches!(t.lookup("x.com"), Lookup::MissingService(_)));
        assert_eq!(t.to_json()["missing_services"]["x.com"], "a");
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
    fn a_route_to_an_invalid_service_says_so_and_its_duplicate_is_still_found() {
        let mut b = RouteTable::builder();
        b.invalid_service("web");
        b.route(HostPattern::parse("x.com").unwrap(), "web");
        b.route(HostPattern::parse("X.com").unwrap(), "web");
        let errs = b.build().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(matches!(&errs[0], RouteError::InvalidService { service, .. } if service == "web"), "{errs:?}");
        assert!(matches!(errs[1], RouteError::DuplicateRoute { .. }), "{errs:?}");
    }

    #[test]
    fn round_robin_rotates_and_covers_all() {
        let mut b = RouteTable::builder();
        let backends = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].map(|a| Backend::parse(a).unwrap());
        b.service("a", backends.to_vec()).unwrap();
        let t = b.build_table().unwrap();
        let svc = t.service("a").unwrap();
        let firsts: Vec<_> =
            (0..3).map(|_| svc.rotation(std::time::Instant::now()).next().unwrap().as_str().to_string()).collect();
        assert_eq!(firsts, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let all: Vec<_> = svc.rotation(std::time::Instant::now()).map(|b| b.as_str()).collect();
        assert_eq!(all, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }
}
