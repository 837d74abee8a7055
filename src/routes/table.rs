//! The immutable route table snapshot, the validated route sets it is made from, and the builder that checks a
//! set.
//!
//! A host's entry is its service's name, or, once the host has path routes, its [`PathRoutes`] (which hold the
//! host route beside them): a host without path routes keeps its single hash lookup, and only a host with them
//! pays one more per path segment.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::path::{PathMatch, PathRoutes};
use super::service::Service;
use super::shard::ShardMap;
use super::{validate_service_name, Backend, HostPattern, RouteError, RouteKey, Target};

/// What a hostname resolves to.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Arc<Service>),
    /// A route exists but names a service that is not defined (possible with etcd, where keys change one by
    /// one): the host is known, so the answer is 503, not 404.
    MissingService(&'a Arc<str>),
    NoRoute,
    /// The host has path routes and the request path a `.` or `..` segment: refused (400), see `path.rs`.
    DotSegment,
}

/// A host's routes: its service, or its path routes beside its (optional) host route.
#[derive(Debug, Clone)]
enum HostRoutes {
    Host(Arc<str>),
    Paths(Arc<PathRoutes>),
}

impl HostRoutes {
    /// The service of the host route, or for a host with only path routes the route of its shortest prefix:
    /// the one whose policy speaks for the host as a whole (its ACME certificate).
    fn representative(&self) -> Option<&Arc<str>> {
        match self {
            Self::Host(s) => Some(s),
            Self::Paths(p) => p.host.as_ref().or_else(|| p.first().map(|t| &t.service)),
        }
    }
}

/// One consistent view of all routes and services. Never mutated once published: a change clones it (cheaply,
/// see `ShardMap`) and publishes the clone.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Host → its routes.
    exact: ShardMap<HostRoutes>,
    /// Suffix after `*.` → its routes.
    wildcard: ShardMap<HostRoutes>,
    services: ShardMap<Arc<Service>>,
    /// Host routes (the entries with one), counted as they are set.
    hosts: usize,
    /// Path routes, counted as they are set.
    paths: usize,
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
            hosts: 0,
            paths: 0,
        }
    }

    pub fn builder() -> RouteSetBuilder {
        RouteSetBuilder::default()
    }

    /// Finds the service for a normalised request host (see [`super::normalize_request_host`]): the exact route
    /// if there is one, else the longest matching wildcard. `O(labels)` hash lookups, whatever the table size.
    /// Path routes are not consulted: this is the host's own route (the `/` path).
    #[inline]
    pub fn lookup(&self, host: &str) -> Lookup<'_> {
        self.lookup_request(host, || "/").0
    }

    /// Finds the service for a request: its normalised host, then, for a host pattern that has path routes,
    /// the longest prefix `path` continues on a segment boundary (see `path.rs`), falling back to the host
    /// route, then to the next host pattern (the longest wildcard). Also returns how many bytes of the path to
    /// strip before forwarding (0: none). `path` is only called for host patterns that have path routes: a host
    /// without path routes costs what [`Self::lookup`] always did.
    #[inline]
    pub fn lookup_request<'p>(&self, host: &str, path: impl Fn() -> &'p str) -> (Lookup<'_>, usize) {
        let (name, strip) = match self.exact.get(host) {
            Some(HostRoutes::Host(name)) => (name, 0),
            entry => match self.route_target(entry, host, path) {
                Ok(Some(hit)) => hit,
                Ok(None) => return (Lookup::NoRoute, 0),
                Err(()) => return (Lookup::DotSegment, 0),
            },
        };
        match self.services.get(name) {
            Some(s) => (Lookup::Found(s), strip),
            None => (Lookup::MissingService(name), 0),
        }
    }

    /// Shorthand for tests and tools: the service a host reaches, if any.
    pub fn find(&self, host: &str) -> Option<&Arc<Service>> {
        match self.lookup(host) {
            Lookup::Found(s) => Some(s),
            _ => None,
        }
    }

    /// Shorthand for tests and tools: the service a request for `host` and `path` reaches, if any, and how many
    /// bytes of the path its route strips.
    pub fn find_request(&self, host: &str, path: &str) -> Option<(&Arc<Service>, usize)> {
        match self.lookup_request(host, || path) {
            (Lookup::Found(s), strip) => Some((s, strip)),
            _ => None,
        }
    }

    /// The service of an exact route for `host` (no wildcard match), if it exists. For a host with only path
    /// routes, the service of its shortest prefix: certificates are per host, and that route speaks for it.
    pub fn exact_service(&self, host: &str) -> Option<&Arc<Service>> {
        self.exact.get(host).and_then(HostRoutes::representative).and_then(|name| self.services.get(name))
    }

    /// Every exact host with its service (see [`Self::exact_service`]: once per host, whatever its path
    /// routes), for routes whose service exists; in no particular order.
    pub fn exact_routes(&self) -> impl Iterator<Item = (&str, &Arc<Service>)> {
        self.exact
            .iter()
            .filter_map(|(h, r)| r.representative().and_then(|name| self.services.get(name)).map(|s| (&**h, s)))
    }

    /// Every wildcard host pattern (`*.example.com`) with its service name (see [`Self::exact_service`]), in no
    /// particular order.
    pub fn wildcard_routes(&self) -> impl Iterator<Item = (String, &str)> {
        self.wildcard.iter().filter_map(|(h, r)| r.representative().map(|s| (format!("*.{h}"), &**s)))
    }

    /// The rest of [`Self::lookup_request`] once the exact lookup gave no bare service: that entry's path
    /// routes, then the wildcards from the longest. `Err` for a dot segment in a path that path routes see.
    #[inline]
    fn route_target<'a, 'p>(
        &'a self,
        exact: Option<&'a HostRoutes>,
        host: &str,
        path: impl Fn() -> &'p str,
    ) -> Result<Option<(&'a Arc<str>, usize)>, ()> {
        if let Some(HostRoutes::Paths(p)) = exact {
            if let Some(hit) = in_paths(p, path())? {
                return Ok(Some(hit));
            }
        }
        if self.wildcard.len() == 0 {
            return Ok(None);
        }
        let mut rest = host;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            match self.wildcard.get(rest) {
                Some(HostRoutes::Host(s)) => return Ok(Some((s, 0))),
                Some(HostRoutes::Paths(p)) => {
                    if let Some(hit) = in_paths(p, path())? {
                        return Ok(Some(hit));
                    }
                }
                None => {}
            }
        }
        Ok(None)
    }

    /// Sets (`Some`) or removes (`None`) one route: a host route, or a path route (which changes only its
    /// host's path routes, copied; other hosts' entries are shared with the previous snapshot).
    pub fn set_route(&mut self, key: &RouteKey, target: Option<Target>) {
        let (map, host) = match &key.host {
            HostPattern::Exact(h) => (&mut self.exact, h),
            HostPattern::Wildcard(h) => (&mut self.wildcard, h),
        };
        let old = map.get(host).cloned();
        let before = counts(old.as_ref());
        let new = match (&key.path, old) {
            (None, None | Some(HostRoutes::Host(_))) => target.map(|t| HostRoutes::Host(t.service)),
            (None, Some(HostRoutes::Paths(mut p))) => {
                Arc::make_mut(&mut p).host = target.map(|t| t.service);
                Some(HostRoutes::Paths(p))
            }
            (Some(prefix), old) => {
                let mut p = match old {
                    None => Arc::new(PathRoutes::default()),
                    Some(HostRoutes::Host(s)) => Arc::new(PathRoutes::with_host(Some(s))),
                    Some(HostRoutes::Paths(p)) => p,
                };
                Arc::make_mut(&mut p).set(prefix, target);
                Some(HostRoutes::Paths(p))
            }
        };
        // A host whose last path route went is a bare host route again (or nothing).
        let new = match new {
            Some(HostRoutes::Paths(p)) if p.len() == 0 => p.host.clone().map(HostRoutes::Host),
            other => other,
        };
        let after = counts(new.as_ref());
        self.hosts = self.hosts + after.0 - before.0;
        self.paths = self.paths + after.1 - before.1;
        match new {
            Some(entry) => {
                map.insert(Arc::from(host.as_str()), entry);
            }
            None => {
                map.remove(host);
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

    /// Host routes and path routes.
    pub fn route_count(&self) -> usize {
        self.hosts + self.paths
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

    /// All routes as `(key, target)`, sorted by key (`shop.test`, then `shop.test/api/`).
    pub fn route_targets(&self) -> BTreeMap<String, Target> {
        let exact = self.exact.iter().map(|(h, r)| (h.to_string(), r));
        let wild = self.wildcard.iter().map(|(h, r)| (format!("*.{h}"), r));
        let mut out = BTreeMap::new();
        for (host, routes) in exact.chain(wild) {
            match routes {
                HostRoutes::Host(s) => {
                    out.insert(host, Target::service(s.clone()));
                }
                HostRoutes::Paths(p) => {
                    if let Some(s) = &p.host {
                        out.insert(host.clone(), Target::service(s.clone()));
                    }
                    for (prefix, t) in p.iter() {
                        out.insert(format!("{host}{prefix}"), t.clone());
                    }
                }
            }
        }
        out
    }

    /// All routes as `(key, service name)`, sorted by key.
    pub fn routes(&self) -> BTreeMap<String, Arc<str>> {
        self.route_targets().into_iter().map(|(k, t)| (k, t.service)).collect()
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
            routes: BTreeMap<String, String>,
            /// The path routes that strip their prefix.
            strip_prefix: Vec<String>,
            services: BTreeMap<&'a str, ServiceView<'a>>,
            missing_services: BTreeMap<String, String>,
        }
        let targets = self.route_targets();
        let strip_prefix = targets.iter().filter(|(_, t)| t.strip_prefix).map(|(k, _)| k.clone()).collect();
        let routes: BTreeMap<String, String> = targets.into_iter().map(|(k, t)| (k, t.service.to_string())).collect();
        let missing_services = routes
            .iter()
            .filter(|(_, s)| self.services.get(s).is_none())
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect();
        let view = View {
            routes,
            strip_prefix,
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

/// A path route's lookup in one host's routes: `Ok(None)` when it found neither a prefix nor a host route.
#[inline]
fn in_paths<'a>(p: &'a PathRoutes, path: &str) -> Result<Option<(&'a Arc<str>, usize)>, ()> {
    match p.find(path) {
        PathMatch::Hit(s, strip) => Ok(Some((s, strip))),
        PathMatch::Miss => Ok(None),
        PathMatch::DotSegment => Err(()),
    }
}

/// The host routes (0 or 1) and path routes of one host's entry.
fn counts(entry: Option<&HostRoutes>) -> (usize, usize) {
    match entry {
        None => (0, 0),
        Some(HostRoutes::Host(_)) => (1, 0),
        Some(HostRoutes::Paths(p)) => (usize::from(p.host.is_some()), p.len()),
    }
}

/// `strip_prefix` on a route without a path prefix.
pub(crate) fn strip_without_prefix(host: String) -> RouteError {
    RouteError::BadRoute { host, reason: "`strip_prefix` needs a path prefix in the key (as in shop.test/api/)".into() }
}

/// A complete, validated set of routes and services from one source (the routes file, or etcd).
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    pub routes: BTreeMap<RouteKey, Target>,
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
    routes: Vec<(RouteKey, String, bool)>,
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
    pub fn route(&mut self, key: impl Into<RouteKey>, service: &str) -> &mut Self {
        self.routes.push((key.into(), service.to_string(), false));
        self
    }

    /// Adds a route that may strip its path prefix (checked in [`Self::build`]: a host route has none to strip).
    pub fn route_with(&mut self, key: RouteKey, service: &str, strip_prefix: bool) -> &mut Self {
        self.routes.push((key, service.to_string(), strip_prefix));
        self
    }

    /// Checks the whole set. Returns every problem found, not just the first, so an operator fixes a file in
    /// one pass.
    pub fn build(self) -> Result<RouteSet, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut set = RouteSet { services: self.services, routes: BTreeMap::new() };
        // Hosts seen so far, whatever their service: a duplicate is reported even when the service is wrong too.
        let mut seen = std::collections::BTreeSet::new();
        for (pattern, service, strip_prefix) in self.routes {
            let host = pattern.to_string();
            if !seen.insert(pattern.clone()) {
                errors.push(RouteError::DuplicateRoute { host });
                continue;
            }
            if strip_prefix && pattern.path.is_none() {
                errors.push(strip_without_prefix(host));
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
            set.routes.insert(pattern, Target { service: name.clone(), strip_prefix });
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

    fn routed<'t>(t: &'t RouteTable, host: &str, path: &str) -> Option<(&'t str, usize)> {
        match t.lookup_request(host, || path) {
            (Lookup::Found(s), strip) => Some((s.name(), strip)),
            (Lookup::DotSegment, _) => Some(("400", 0)),
            _ => None,
        }
    }

    fn path_table(routes: &[(&str, &str, bool)]) -> RouteTable {
        let mut b = RouteTable::builder();
        for name in ["a", "b", "c", "d"] {
            b.service(name, vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
        }
        for (k, s, strip) in routes {
            b.route_with(RouteKey::parse(k).unwrap(), s, *strip);
        }
        b.build_table().unwrap()
    }

    #[test]
    fn path_routes_by_host_then_longest_prefix() {
        let t = path_table(&[
            ("shop.test", "a", false),
            ("shop.test/api/", "b", false),
            ("shop.test/api/v2", "c", true),
            ("only.test/api/", "b", false),
            ("*.shop.test", "d", false),
            ("*.shop.test/api/", "b", true),
            ("x.shop.test/docs/", "c", false),
        ]);
        assert_eq!(t.route_count(), 7);
        let cases = [
            ("shop.test", "/", Some(("a", 0))),
            ("shop.test", "/api/x", Some(("b", 0))),
            ("shop.test", "/apix", Some(("a", 0))),
            ("shop.test", "/api/v2/x?q", Some(("c", 7))),
            ("shop.test", "/api/../admin", Some(("400", 0))),
            ("only.test", "/api", Some(("b", 0))),
            ("only.test", "/other", None),
            ("y.shop.test", "/api/x", Some(("b", 4))),
            ("y.shop.test", "/web", Some(("d", 0))),
            // An exact host with only path routes falls back to the wildcard for its other paths.
            ("x.shop.test", "/docs/1", Some(("c", 0))),
            ("x.shop.test", "/api/1", Some(("b", 4))),
            ("x.shop.test", "/", Some(("d", 0))),
        ];
        for (host, path, want) in cases {
            assert_eq!(routed(&t, host, path), want, "{host}{path}");
        }
        // Hosts without path routes see no path check at all.
        let plain = table(&[("x.com", "a")]);
        assert_eq!(routed(&plain, "x.com", "/a/../b"), Some(("a", 0)));
        assert_eq!(t.exact_service("only.test").unwrap().name(), "b", "a path-only host, for ACME");
        assert_eq!(
            t.exact_routes().count(),
            3,
            "one per host: {:?}",
            t.exact_routes().map(|r| r.0).collect::<Vec<_>>()
        );
        let json = t.to_json();
        assert_eq!(json["routes"]["shop.test/api/v2/"], "c", "{json}");
        assert_eq!(json["strip_prefix"], serde_json::json!(["*.shop.test/api/", "shop.test/api/v2/"]));
    }

    #[test]
    fn a_host_entry_is_as_small_as_a_service_name() {
        // The bare host route keeps the entry at the size of the name it replaced: no memory, no cache lines
        // for tables without path routes.
        assert_eq!(std::mem::size_of::<HostRoutes>(), std::mem::size_of::<Arc<str>>());
    }

    #[test]
    fn path_routes_come_and_go_one_by_one() {
        let mut t = path_table(&[("shop.test", "a", false)]);
        let before = t.clone();
        let api = RouteKey::parse("shop.test/api/").unwrap();
        t.set_route(&api, Some(Target { service: Arc::from("b"), strip_prefix: true }));
        assert_eq!((routed(&t, "shop.test", "/api/x"), t.route_count()), (Some(("b", 4)), 2));
        assert_eq!(routed(&before, "shop.test", "/api/x"), Some(("a", 0)), "the old snapshot is untouched");
        t.set_route(&RouteKey::parse("shop.test").unwrap(), None);
        assert_eq!((routed(&t, "shop.test", "/"), t.route_count()), (None, 1));
        t.set_route(&api, None);
        assert_eq!((routed(&t, "shop.test", "/api/x"), t.route_count()), (None, 0));
        assert!(t.routes().is_empty());
        t.set_route(&api, Some(Target::service(Arc::from("b"))));
        t.set_route(&RouteKey::parse("shop.test").unwrap(), Some(Target::service(Arc::from("a"))));
        t.set_route(&api, None);
        assert_eq!((routed(&t, "shop.test", "/api/x"), t.route_count()), (Some(("a", 0)), 1));
    }

    #[test]
    fn strip_prefix_needs_a_prefix_and_duplicates_are_canonical() {
        let mut b = RouteTable::builder();
        b.service("a", vec![Backend::parse("127.0.0.1:1").unwrap()]).unwrap();
        b.route_with(RouteKey::parse("x.com").unwrap(), "a", true);
        b.route_with(RouteKey::parse("x.com/api").unwrap(), "a", false);
        b.route_with(RouteKey::parse("X.com/api/").unwrap(), "a", false);
        let errs = b.build().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].to_string().contains("`strip_prefix` needs a path prefix"), "{errs:?}");
        assert!(matches!(&errs[1], RouteError::DuplicateRoute { host } if host == "x.com/api/"), "{errs:?}");
    }

    #[test]
    fn missing_service_is_distinguished_from_no_route() {
        let mut t = table(&[("x.com", "a")]);
        t.set_route(&RouteKey::parse("y.com").unwrap(), Some(Target::service(Arc::from("ghost"))));
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
