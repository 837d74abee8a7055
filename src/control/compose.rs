//! Combines the route sources (the routes file and etcd) into the one table in force.
//!
//! Each source hands over either its complete set ([`Composer::replace`]: the file on every reload, etcd on its
//! first load and on every resync) or a batch of changes ([`Composer::update`]: one etcd watch response). The
//! composer works out which keys changed, resolves each against the sources in precedence order (**etcd wins
//! over the file** when both define the same route key — a hostname, or a hostname and path prefix — or service
//! name) and publishes a new table in one swap, so a batch is never seen half-applied. Only the changed keys are
//! touched: the table's shards are shared with the previous snapshot (a path route copies its host's path
//! routes, not the others').
//!
//! The composer applies whatever a source hands over, an empty set included. Guarding against a set emptied by
//! accident is the source's own business, about its own contribution: the routes file refuses a version without
//! routes (see `file`), while etcd's deletions are explicit and applied as they come.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::readiness::Gate;
use crate::routes::{DockerHostNames, RouteHandle, RouteKey, RouteSet, RouteTable, Service, Target};

/// Where a definition comes from. Later in this list wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    File = 0,
    Etcd = 1,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Etcd => "etcd",
        }
    }
}

/// One key of a source set, changed: `None` deletes it.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Route(RouteKey, Option<Target>),
    Service(Arc<str>, Option<Arc<Service>>),
}

/// The single writer of the route table.
pub(crate) struct Composer {
    state: Mutex<State>,
    routes: RouteHandle,
    metrics: Arc<Metrics>,
    /// The events feed: each table installed is a `routes` event.
    events: Events,
    /// Opened once every configured source has loaded.
    loaded: Gate,
    /// The Docker hosts services may name: each source validates its definitions against them.
    docker_hosts: DockerHostNames,
}

struct State {
    /// The latest set of each source; `None` until that source has loaded.
    sets: [Option<RouteSet>; 2],
    /// The sources that must load before reveille is ready.
    expected: [bool; 2],
}

/// Highest precedence first.
const PRECEDENCE: [Source; 2] = [Source::Etcd, Source::File];

impl Composer {
    /// `sources`: the configured sources; `loaded` is opened once all of them have loaded. `docker_hosts`: the
    /// names a service's `docker_host` may take (a definition naming another is invalid, like any bad value).
    pub(crate) fn new(
        routes: RouteHandle,
        metrics: Arc<Metrics>,
        events: Events,
        sources: &[Source],
        loaded: Gate,
        docker_hosts: DockerHostNames,
    ) -> Arc<Self> {
        let mut expected = [false; 2];
        for s in sources {
            expected[*s as usize] = true;
        }
        let state = Mutex::new(State { sets: [None, None], expected });
        routes.set_complete(!expected.iter().any(|e| *e));
        Arc::new(Self { state, routes, metrics, events, loaded, docker_hosts })
    }

    /// The Docker host names the sources validate `docker_host` against.
    pub(crate) fn docker_hosts(&self) -> &DockerHostNames {
        &self.docker_hosts
    }

    /// Replaces everything `source` defines with `set`. Returns the number of keys that changed.
    pub(crate) fn replace(&self, source: Source, mut set: RouteSet) -> usize {
        let mut state = self.state.lock();
        let old = state.sets[source as usize].take().unwrap_or_default();
        let mut routes = BTreeSet::new();
        for k in old.routes.keys().chain(set.routes.keys()) {
            if old.routes.get(k) != set.routes.get(k) {
                routes.insert(k.clone());
            }
        }
        let mut services = BTreeSet::new();
        for (name, new) in set.services.iter_mut() {
            match old.services.get(name) {
                // Keep the live instance: its round-robin position and metric handles carry on.
                Some(o) if o.same_definition(new) => *new = o.clone(),
                _ => {
                    services.insert(name.clone());
                }
            }
        }
        services.extend(old.services.keys().filter(|k| !set.services.contains_key(*k)).cloned());
        state.sets[source as usize] = Some(set);

        let changed = routes.len() + services.len();
        let current = self.routes.snapshot();
        let table = if current.route_count() == 0 && current.service_count() == 0 {
            // First load: lay the table out for its real size.
            state.merged()
        } else {
            let mut t = (*current).clone();
            for k in &routes {
                t.set_route(k, state.effective_route(k));
            }
            for k in &services {
                t.set_service(k, state.effective_service(k));
            }
            t
        };
        self.publish(&state, table);
        changed
    }

    /// Applies a batch of changes to `source`'s set (which must have been loaded by [`Self::replace`]) and
    /// publishes them together. Returns the number of changes.
    pub(crate) fn update(&self, source: Source, changes: Vec<Change>) -> usize {
        let mut state = self.state.lock();
        let set = state.sets[source as usize].get_or_insert_with(RouteSet::default);
        for c in &changes {
            match c {
                Change::Route(k, Some(v)) => {
                    set.routes.insert(k.clone(), v.clone());
                }
                Change::Route(k, None) => {
                    set.routes.remove(k);
                }
                Change::Service(k, Some(v)) => {
                    set.services.insert(k.clone(), v.clone());
                }
                Change::Service(k, None) => {
                    set.services.remove(k);
                }
            }
        }
        let mut table = (*self.routes.snapshot()).clone();
        for c in &changes {
            match c {
                Change::Route(k, _) => table.set_route(k, state.effective_route(k)),
                Change::Service(k, _) => table.set_service(k, state.effective_service(k)),
            }
        }
        self.publish(&state, table);
        changes.len()
    }

    /// Where each route and service in force comes from, for the admin API: `{"routes": {host: "file"|"etcd"},
    /// "services": {name: ...}}`. Read when asked (under the composer's lock, off the request path).
    pub(crate) fn sources(&self) -> serde_json::Value {
        let state = self.state.lock();
        let mut routes = serde_json::Map::new();
        let mut services = serde_json::Map::new();
        // Lowest precedence first, so the source that wins is the one left in the map.
        for source in PRECEDENCE.iter().rev() {
            let Some(set) = state.sets[*source as usize].as_ref() else { continue };
            for host in set.routes.keys() {
                routes.insert(host.to_string(), source.as_str().into());
            }
            for name in set.services.keys() {
                services.insert(name.to_string(), source.as_str().into());
            }
        }
        serde_json::json!({ "routes": routes, "services": services })
    }

    /// The set `source` last handed over, if it has loaded.
    pub(crate) fn source_set(&self, source: Source) -> Option<RouteSet> {
        self.state.lock().sets[source as usize].clone()
    }

    fn publish(&self, state: &State, table: RouteTable) {
        let (routes, services) = (table.route_count(), table.service_count());
        self.metrics.table_installed(routes, services);
        self.events.publish("routes", serde_json::json!({ "routes": routes, "services": services }));
        self.routes.store(table);
        let ready = state.expected.iter().zip(&state.sets).all(|(expected, set)| !expected || set.is_some());
        if ready {
            self.routes.set_complete(true);
            self.loaded.open();
        }
    }
}

impl State {
    fn effective_route(&self, k: &RouteKey) -> Option<Target> {
        PRECEDENCE.iter().find_map(|s| self.sets[*s as usize].as_ref()?.routes.get(k).cloned())
    }

    fn effective_service(&self, k: &str) -> Option<Arc<Service>> {
        PRECEDENCE.iter().find_map(|s| self.sets[*s as usize].as_ref()?.services.get(k).cloned())
    }

    /// A fresh table of all sources, lowest precedence first so higher ones overwrite.
    fn merged(&self) -> RouteTable {
        let sets: Vec<&RouteSet> = PRECEDENCE.iter().rev().filter_map(|s| self.sets[*s as usize].as_ref()).collect();
        let routes = sets.iter().map(|s| s.routes.len()).sum();
        let services = sets.iter().map(|s| s.services.len()).sum();
        let mut t = RouteTable::with_expected(routes, services);
        for set in sets {
            for (k, v) in &set.routes {
                t.set_route(k, Some(v.clone()));
            }
            for (k, v) in &set.services {
                t.set_service(k, Some(v.clone()));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Backend;

    fn svc(name: &str, port: u16) -> Arc<Service> {
        Arc::new(Service::new(name, vec![Backend::parse(&format!("127.0.0.1:{port}")).unwrap()]))
    }

    fn set(routes: &[(&str, &str)], services: &[(&str, u16)]) -> RouteSet {
        RouteSet {
            routes: routes.iter().map(|(h, s)| (RouteKey::parse(h).unwrap(), Target::service(Arc::from(*s)))).collect(),
            services: services.iter().map(|(n, p)| (Arc::from(*n), svc(n, *p))).collect(),
        }
    }

    /// A composer of `sources`, with a table of its own.
    fn composer(sources: &[Source]) -> Arc<Composer> {
        let metrics = Arc::new(Metrics::new());
        Composer::new(RouteHandle::new(), metrics, Events::new(), sources, Gate::detached(), DockerHostNames::Any)
    }

    fn port_of(c: &Composer, host: &str) -> Option<String> {
        c.routes.snapshot().find(host).map(|s| s.backends()[0].as_str().to_string())
    }

    #[test]
    fn etcd_wins_over_file_and_falls_back_when_removed() {
        let c = composer(&[Source::File, Source::Etcd]);
        c.replace(Source::File, set(&[("a.test", "a"), ("b.test", "b")], &[("a", 1), ("b", 2)]));
        assert!(!c.loaded.is_open(), "not ready before etcd loaded");
        c.replace(Source::Etcd, set(&[("a.test", "b")], &[("b", 3)]));
        assert!(c.loaded.is_open());
        assert_eq!(port_of(&c, "a.test").as_deref(), Some("127.0.0.1:3"), "etcd route and etcd service");
        assert_eq!(port_of(&c, "b.test").as_deref(), Some("127.0.0.1:3"), "file route, etcd service");
        let sources = c.sources();
        assert_eq!(sources["routes"]["a.test"], "etcd", "{sources}");
        assert_eq!(sources["routes"]["b.test"], "file", "{sources}");
        assert_eq!(sources["services"]["a"], "file", "{sources}");
        assert_eq!(sources["services"]["b"], "etcd", "{sources}");

        c.update(Source::Etcd, vec![Change::Route(RouteKey::parse("a.test").unwrap(), None)]);
        assert_eq!(port_of(&c, "a.test").as_deref(), Some("127.0.0.1:1"), "back to the file's route");
        assert_eq!(c.sources()["routes"]["a.test"], "file");
        c.update(Source::Etcd, vec![Change::Service(Arc::from("b"), None)]);
        assert_eq!(port_of(&c, "b.test").as_deref(), Some("127.0.0.1:2"), "back to the file's service");
    }

    #[test]
    fn a_path_route_and_the_host_route_may_come_from_different_sources() {
        let c = composer(&[Source::File, Source::Etcd]);
        c.replace(Source::File, set(&[("a.test/api/", "a")], &[("a", 1), ("b", 2)]));
        c.replace(Source::Etcd, set(&[("a.test", "b")], &[]));
        let backend = |path: &str| {
            c.routes.snapshot().find_request("a.test", path).map(|(s, _)| s.backends()[0].as_str().to_string())
        };
        assert_eq!(backend("/api/x").as_deref(), Some("127.0.0.1:1"), "the file's path route");
        assert_eq!(backend("/x").as_deref(), Some("127.0.0.1:2"), "etcd's host route");
        assert_eq!(c.routes.snapshot().route_count(), 2);
        // etcd takes the path route over; deleting it there gives it back to the file.
        let api = RouteKey::parse("a.test/api").unwrap();
        c.update(Source::Etcd, vec![Change::Route(api.clone(), Some(Target::service(Arc::from("b"))))]);
        assert_eq!(backend("/api/x").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(c.sources()["routes"]["a.test/api/"], "etcd");
        c.update(Source::Etcd, vec![Change::Route(api, None)]);
        assert_eq!(backend("/api/x").as_deref(), Some("127.0.0.1:1"));
        // The file drops its path route: the host route takes its paths.
        c.replace(Source::File, set(&[], &[("a", 1), ("b", 2)]));
        assert_eq!(backend("/api/x").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(c.routes.snapshot().route_count(), 1);
    }

    #[test]
    fn replace_keeps_unchanged_service_instances() {
        let c = composer(&[Source::Etcd]);
        c.replace(Source::Etcd, set(&[("a.test", "a")], &[("a", 1)]));
        let before = c.routes.snapshot().service("a").unwrap().clone();
        let n = c.replace(Source::Etcd, set(&[("a.test", "a"), ("x.test", "a")], &[("a", 1)]));
        assert_eq!(n, 1);
        assert!(Arc::ptr_eq(&before, c.routes.snapshot().service("a").unwrap()));
        let n = c.replace(Source::Etcd, set(&[], &[]));
        assert_eq!(n, 3);
        assert_eq!(c.routes.snapshot().route_count(), 0, "the very last route can be removed");
    }
}
