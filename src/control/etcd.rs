//! Routes from etcd: what the route and service keys mean, and the [`EtcdWatcher`] that keeps the etcd part of
//! the route table in step with them.
//!
//! `<prefix>routes/<hostname>` → `{"service": "acme"}` (`<hostname>` may be `*.example.com`, and may be followed
//! by a path prefix: `<prefix>routes/shop.test/api/` → `{"service": "api", "strip_prefix": true}`) and
//! `<prefix>services/<name>` → `{"backends": ["10.0.0.5:8080", "http://10.0.0.6:8080"]}`: one JSON value per key,
//! so a single `put` is never half-applied. Unknown JSON fields are ignored and logged at error, with the
//! nearest known field; wrong types are errors, and a value that does not parse keeps the key's previous value
//! (if any) in force.
//!
//! The watcher is a [`Sink`] of the shared session loop (`crate::etcd`): the listing at one revision becomes the
//! [`Composer`]'s etcd set, each watch response one batch of [`Change`]s, so a transaction that writes a route
//! and its service is applied at once. Connecting, watching, reconnecting and resyncing after a broken watch
//! are `crate::etcd`'s; the key schema is `crate::etcd::Keys`.

use std::sync::Arc;

use etcd_client::{Event, EventType, KeyValue};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::compose::{Change, Composer, Source};
use crate::etcd::{Etcd, EtcdError, KeyKind, Keys, Sink};
use crate::metrics::Metrics;
use crate::routes::{
    check_field, DockerHostNames, RouteError, RouteKey, RouteSet, RouteSpec, Service, ServiceSpec, Target,
    ROUTE_FIELDS, SERVICE_FIELDS,
};

/// Why an etcd value was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ValueError {
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("value is not valid JSON for this key: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// A parsed `put`.
#[derive(Debug)]
pub(crate) enum Parsed {
    Route(RouteKey, Target),
    Service(Arc<str>, Arc<Service>),
}

/// Parses one key/value pair; a service's `docker_host` must be one of `hosts`. `Ok(None)`: a key of another
/// part of reveille, not ours.
pub(crate) fn parse_kv(
    keys: &Keys,
    key: &[u8],
    value: &[u8],
    hosts: &DockerHostNames,
) -> Result<Option<Parsed>, ValueError> {
    let key = std::str::from_utf8(key).map_err(|_| ValueError::KeyNotUtf8)?;
    match keys.kind(key) {
        KeyKind::Route(host) => {
            let pattern = RouteKey::parse(host)?;
            let spec: RouteSpec = serde_json::from_slice(value)?;
            for field in spec.unknown.keys() {
                let hint = crate::suggest::did_you_mean(field, ROUTE_FIELDS.iter().copied());
                let e = RouteError::UnknownKey { place: "field of the route value", key: field.clone(), hint };
                error!(key, "etcd: {e}; ignored");
            }
            crate::routes::validate_service_name(&spec.service)?;
            if spec.strip_prefix && pattern.path.is_none() {
                return Err(crate::routes::strip_without_prefix(pattern.to_string()).into());
            }
            let target = Target { service: Arc::from(spec.service), strip_prefix: spec.strip_prefix };
            Ok(Some(Parsed::Route(pattern, target)))
        }
        KeyKind::Service(name) => {
            let spec: ServiceSpec =
                serde_json::from_slice(value).map_err(|e| field_error(name, value).unwrap_or(e.into()))?;
            for field in spec.unknown.keys() {
                let hint = crate::suggest::did_you_mean(field, SERVICE_FIELDS.iter().copied());
                let e = RouteError::UnknownField { service: name.to_string(), field: field.clone(), hint };
                error!(key, "etcd: {e}; ignored");
            }
            let service = spec.to_service(name, hosts).map_err(|(_, e)| e)?;
            Ok(Some(Parsed::Service(Arc::from(name), Arc::new(service))))
        }
        KeyKind::Other => Ok(None),
    }
}

/// Why a service value that serde refused is wrong, said of the field (`port`: invalid type, a duration without
/// a unit) rather than at a JSON column; `None` when no single field is at fault (not an object, say).
fn field_error(name: &str, value: &[u8]) -> Option<ValueError> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value).ok()?;
    object.iter().find_map(|(field, v)| {
        let read = || {
            let alone = serde_json::Value::Object(serde_json::Map::from_iter([(field.clone(), v.clone())]));
            serde_json::from_value::<ServiceSpec>(alone).map(|_| ()).map_err(|e| e.to_string())
        };
        match check_field(name, field, v.as_str(), read) {
            Err(e @ RouteError::BadField { .. }) => Some(ValueError::Route(e)),
            _ => None,
        }
    })
}

/// Parses a deleted key into the change that removes it.
fn deletion(keys: &Keys, key: &[u8]) -> Option<Change> {
    let key = std::str::from_utf8(key).ok()?;
    match keys.kind(key) {
        KeyKind::Route(host) => RouteKey::parse(host).ok().map(|p| Change::Route(p, None)),
        KeyKind::Service(name) => Some(Change::Service(Arc::from(name), None)),
        KeyKind::Other => None,
    }
}

/// Keeps the etcd part of the route table in step with etcd, until shutdown.
pub(crate) struct EtcdWatcher {
    etcd: Etcd,
    keys: Keys,
    composer: Arc<Composer>,
    metrics: Arc<Metrics>,
}

impl EtcdWatcher {
    pub(crate) fn new(etcd: Etcd, composer: Arc<Composer>, metrics: Arc<Metrics>) -> Self {
        let keys = etcd.keys().clone();
        Self { etcd, keys, composer, metrics }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let config = self.etcd.config();
        let span = tracing::info_span!("etcd", endpoints = %config.endpoints.join(","), prefix = %self.keys.prefix());
        crate::etcd::watch(&self.etcd, "routes", self.keys.watched_range(), &self, shutdown).instrument(span).await
    }

    /// Builds the etcd set from a listing. A value that does not parse keeps whatever that key had before (if
    /// anything), so one bad write never removes a working route.
    fn list_to_set(&self, kvs: &[KeyValue]) -> RouteSet {
        let previous = self.composer.source_set(Source::Etcd).unwrap_or_default();
        let mut set = RouteSet::default();
        for kv in kvs {
            match parse_kv(&self.keys, kv.key(), kv.value(), self.composer.docker_hosts()) {
                Ok(Some(Parsed::Route(p, s))) => {
                    set.routes.insert(p, s);
                }
                Ok(Some(Parsed::Service(n, s))) => {
                    set.services.insert(n, s);
                }
                Ok(None) => {}
                Err(e) => {
                    self.reject(kv, &e);
                    let key = kv.key_str().unwrap_or_default();
                    match self.keys.kind(key) {
                        KeyKind::Route(h) => {
                            if let Some((p, s)) =
                                RouteKey::parse(h).ok().and_then(|p| previous.routes.get_key_value(&p))
                            {
                                set.routes.insert(p.clone(), s.clone());
                            }
                        }
                        KeyKind::Service(n) => {
                            if let Some((k, s)) = previous.services.get_key_value(n) {
                                set.services.insert(k.clone(), s.clone());
                            }
                        }
                        KeyKind::Other => {}
                    }
                }
            }
        }
        set
    }

    fn reject(&self, kv: &KeyValue, error: &ValueError) {
        self.metrics.etcd_rejected();
        warn!(key = %String::from_utf8_lossy(kv.key()), error = %error, "etcd value rejected; the previous value (if any) stays in force");
    }
}

impl Sink for EtcdWatcher {
    async fn replace(&self, revision: i64, kvs: Vec<KeyValue>, first: bool) -> Result<(), EtcdError> {
        let set = self.list_to_set(&kvs);
        let (routes, services) = (set.routes.len(), set.services.len());
        let changed = self.composer.replace(Source::Etcd, set);
        self.metrics.etcd_connected(true);
        self.metrics.etcd_revision(revision);
        if first {
            info!(revision, routes, services, "etcd routes loaded");
        } else {
            self.metrics.etcd_resync();
            info!(revision, routes, services, changed, "etcd routes resynced after reconnecting");
        }
        Ok(())
    }

    async fn update(&self, revision: i64, events: &[Event]) -> Result<(), EtcdError> {
        let mut changes = Vec::with_capacity(events.len());
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => match parse_kv(&self.keys, kv.key(), kv.value(), self.composer.docker_hosts()) {
                    Ok(Some(Parsed::Route(p, s))) => changes.push(Change::Route(p, Some(s))),
                    Ok(Some(Parsed::Service(n, s))) => changes.push(Change::Service(n, Some(s))),
                    Ok(None) => {}
                    Err(e) => self.reject(kv, &e),
                },
                EventType::Delete => changes.extend(deletion(&self.keys, kv.key())),
            }
        }
        let n = changes.len();
        if n > 0 {
            // One line per watch response, naming what changed (the first few), so an operator's `etcdctl put`
            // shows up in the log.
            let named: Vec<String> = changes.iter().take(5).map(describe).collect();
            let more = if n > named.len() { format!(" and {} more", n - named.len()) } else { String::new() };
            info!(revision, changes = n, "etcd: {}{more}", named.join(", "));
            self.composer.update(Source::Etcd, changes);
            self.metrics.etcd_events(n as u64);
        }
        self.metrics.etcd_revision(revision);
        debug!(revision, changes = n, "etcd changes applied");
        Ok(())
    }

    fn progress(&self, revision: i64) {
        self.metrics.etcd_revision(revision);
    }

    fn ended(&self) {
        self.metrics.etcd_connected(false);
    }
}

/// A change as the log names it: `route a.example.com -> shop`, `service shop removed`.
fn describe(change: &Change) -> String {
    match change {
        Change::Route(host, Some(target)) if target.strip_prefix => {
            format!("route {host} -> {} (strip_prefix)", target.service)
        }
        Change::Route(host, Some(target)) => format!("route {host} -> {}", target.service),
        Change::Route(host, None) => format!("route {host} removed"),
        Change::Service(name, Some(_)) => format!("service {name} set"),
        Change::Service(name, None) => format!("service {name} removed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let k = Keys::new("/r/");
        let any = DockerHostNames::Any;
        assert!(
            matches!(parse_kv(&k, b"/r/routes/A.com", br#"{"service":"s"}"#, &any), Ok(Some(Parsed::Route(RouteKey { host: crate::routes::HostPattern::Exact(h), path: None }, _))) if h == "a.com")
        );
        let path = parse_kv(&k, b"/r/routes/a.com/api/", br#"{"service":"s","strip_prefix":true}"#, &any);
        assert!(
            matches!(&path, Ok(Some(Parsed::Route(key, t))) if key.to_string() == "a.com/api/" && t.strip_prefix),
            "{path:?}"
        );
        let e = parse_kv(&k, b"/r/routes/a.com", br#"{"service":"s","strip_prefix":true}"#, &any).unwrap_err();
        assert!(e.to_string().contains("`strip_prefix` needs a path prefix"), "{e}");
        let e = parse_kv(&k, b"/r/routes/a.com/../x", br#"{"service":"s"}"#, &any).unwrap_err();
        assert!(e.to_string().contains("route \"a.com/../x\": invalid path prefix"), "{e}");
        assert!(parse_kv(&k, b"/r/routes/a.com/api", br#"{"service":"s","strip_prefix":"yes"}"#, &any).is_err());
        assert!(matches!(parse_kv(&k, b"/r/routes/a.com", br#"{"service":"s","extra":1}"#, &any), Ok(Some(_))));
        assert!(parse_kv(&k, b"/r/routes/a.com", br#"{"service":1}"#, &any).is_err());
        assert!(parse_kv(&k, b"/r/routes/a.com", b"not json", &any).is_err());
        assert!(parse_kv(&k, b"/r/routes/a b", br#"{"service":"s"}"#, &any).is_err());
        assert!(parse_kv(&k, b"/r/services/s", br#"{"backends":["127.0.0.1:1"]}"#, &any).unwrap().is_some());
        assert!(parse_kv(&k, b"/r/services/s", br#"{"backends":["nope"]}"#, &any).is_err());
        assert!(parse_kv(&k, b"/r/status/s", b"whatever", &any).unwrap().is_none());
        // A Docker host the config does not define is a bad value.
        let known = DockerHostNames::known(["second"]);
        let svc = |host: &str| format!(r#"{{"container":"c","port":80,"docker_host":"{host}"}}"#);
        assert!(parse_kv(&k, b"/r/services/s", svc("second").as_bytes(), &known).unwrap().is_some());
        let e = parse_kv(&k, b"/r/services/s", svc("third").as_bytes(), &known).unwrap_err();
        assert!(e.to_string().contains("unknown `docker_host` \"third\""), "{e}");
        // A wrong field is named, and a duration without a unit says what one looks like.
        let e = parse_kv(&k, b"/r/services/s", br#"{"container":"c","port":80,"idle_timeout":"5"}"#, &any).unwrap_err();
        assert!(
            e.to_string().contains("`idle_timeout` \"5\" has no unit") && e.to_string().contains("5s or 5m"),
            "{e}"
        );
        let e = parse_kv(&k, b"/r/services/s", br#"{"backends":["127.0.0.1:1"],"port":"x"}"#, &any).unwrap_err();
        assert!(e.to_string().starts_with("service \"s\": `port`: invalid type"), "{e}");
    }
}
