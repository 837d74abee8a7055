//! Route and service definitions as operators write them, before validation. The routes file (TOML) and etcd
//! (JSON) share these structs, so a field added later exists in both sources at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::balance::{EjectionSpec, HealthCheck, Retries, Strategy, MAX_WEIGHT};
use super::service::{Balance, ContainerSpec, Dependency, HttpsPolicy, IdleAction, Service, SwarmSpec};
use super::{validate_service_name, Backend, Protocol, RouteError};
use crate::runtime::{RuntimeKind, DEFAULT_HOST};
use crate::upstream::{BackendTls, TlsOptions};

/// A service definition: `{"backends": [...]}` in etcd, `[services.<name>] backends = [...]` in the file.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServiceSpec {
    /// Addresses, each a string or `{ address, weight }`.
    #[serde(default = "Vec::new")]
    pub backends: Vec<BackendSpec>,
    /// The Docker container (name or id) serving this service; reveille starts and stops it.
    #[serde(default)]
    pub container: Option<String>,
    /// The container port to reach (and to probe). Without `backends`, the backend is the container's address
    /// on its network and this port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Which of the container's networks to take its address from (default: the first).
    #[serde(default)]
    pub network: Option<String>,
    /// The Docker host the container runs on (a `[docker.hosts.<name>]` of the config); unset = `default`.
    /// The older name of `runtime`: a service gives one or the other.
    #[serde(default)]
    pub docker_host: Option<String>,
    /// The runtime the container runs on (a `[runtimes.<name>]` or `[docker.hosts.<name>]` of the config);
    /// unset = `default`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// The Swarm service serving this service (instead of `container`): woken by scaling it to `replicas`,
    /// stopped by scaling it to 0.
    #[serde(default)]
    pub swarm_service: Option<String>,
    /// With `swarm_service`: how many replicas a wake scales it to; unset: 1.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// With `swarm_service`: where its published port is reached; unset: 127.0.0.1 for a unix endpoint, else
    /// the endpoint's host.
    #[serde(default)]
    pub backend_host: Option<String>,
    /// With `swarm_service`, instead of `backend_host`: the overlay network (name or id) reveille runs on; the
    /// backend is a running task's address on it at `port`.
    #[serde(default)]
    pub swarm_network: Option<String>,
    /// Stop (or pause) the container after this long without activity; `"0"` = never.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// How long a request waits for the container to become ready.
    #[serde(default, with = "humantime_serde")]
    pub wake_timeout: Option<Duration>,
    /// How long `docker stop` waits for the container to exit before killing it; unset follows
    /// `[passivation] stop_timeout`, and without that the container's own `StopTimeout`.
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    /// Readiness is a `GET` of this path answering below 500; without it, a successful TCP connect.
    #[serde(default)]
    pub health_path: Option<String>,
    #[serde(default)]
    pub idle_action: Option<IdleAction>,
    /// With `idle_action = "pause"`: stop the paused container after this much more idleness, freeing its
    /// memory; unset = it stays paused.
    #[serde(default, with = "humantime_serde")]
    pub stop_after: Option<Duration>,
    /// Requests held per service while it wakes; past it, 503.
    #[serde(default)]
    pub max_held: Option<usize>,
    /// How long a browser page request is held before it gets the "starting" page.
    #[serde(default, with = "humantime_serde")]
    pub page_after: Option<Duration>,
    /// Asked before an idle stop: a `GET` of this path on the container's backend; 409 or 423 = busy, not now.
    #[serde(default)]
    pub stop_check: Option<String>,
    /// With a cluster, the container's traffic counters are a second witness of use before an idle stop;
    /// `false` leaves etcd's view alone (for a tenant whose own outbound traffic would keep it awake).
    #[serde(default)]
    pub traffic_witness: Option<bool>,
    /// Redirect plain-HTTP requests to HTTPS (308); unset follows the global `[tls] redirect`.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// `Strict-Transport-Security` value added to responses sent over HTTPS, e.g. `max-age=31536000`.
    #[serde(default)]
    pub hsts: Option<String>,
    /// Obtain and renew certificates for this service's exact host names by ACME (`true`), or never
    /// (`false`, which also opts out of `[acme] hosts = "all"`); unset follows `[acme] hosts`.
    #[serde(default)]
    pub acme: Option<bool>,
    /// Passive ejection: `false` turns it off, a table sets it (see `balance::EjectionTable`); unset: on, with
    /// its defaults.
    #[serde(default)]
    pub ejection: Option<EjectionSpec>,
    /// What is retried on another backend: statuses (`"503"`) and `"reset"`; unset: nothing.
    #[serde(default)]
    pub retry_on: Option<Vec<String>>,
    /// The retries allowed, as a percentage of the requests over 10 s (plus 3 a second); unset: 20.
    #[serde(default)]
    pub retry_budget: Option<u32>,
    /// `round_robin` (unset) or `least_request`.
    #[serde(default)]
    pub balance: Option<Strategy>,
    /// `{ path = "/healthz", interval = "5s", timeout = "2s" }`: each backend is checked (not with `container`).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// How `https://` backends are reached: CA, server name, client certificate, `verify = false`.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Containers started (in order, each waited for) before `container`: names, or `{ container, port }`.
    #[serde(default)]
    pub depends_on: Option<Vec<DependencySpec>>,
    /// Fields this version does not know: accepted (forward compatibility), reported as warnings.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// The fields of [`ServiceSpec`] as written: what a misspelt field is compared with ("did you mean"). A field
/// added to the struct is added here too (the `fields_are_listed` test checks that each one listed is read).
pub(crate) const SERVICE_FIELDS: &[&str] = &[
    "backends",
    "container",
    "port",
    "network",
    "docker_host",
    "runtime",
    "swarm_service",
    "replicas",
    "backend_host",
    "swarm_network",
    "idle_timeout",
    "wake_timeout",
    "stop_timeout",
    "health_path",
    "idle_action",
    "stop_after",
    "max_held",
    "page_after",
    "stop_check",
    "traffic_witness",
    "https_redirect",
    "hsts",
    "acme",
    "ejection",
    "retry_on",
    "retry_budget",
    "balance",
    "health_check",
    "tls",
    "depends_on",
];

/// The most replicas a wake scales a Swarm service to.
const MAX_REPLICAS: u32 = 1000;

/// One backend as written: `"host:port"`, or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSpec {
    pub address: String,
    /// 1 to [`MAX_WEIGHT`]; unset: 1.
    pub weight: Option<u32>,
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The table form, whose unknown keys are refused by name.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            address: String,
            #[serde(default)]
            weight: Option<u32>,
        }
        string_or_table(
            d,
            "an address (\"host:port\") or a table { address, weight }",
            |v| BackendSpec { address: v.to_string(), weight: None },
            |t: Table| BackendSpec { address: t.address, weight: t.weight },
        )
    }
}

/// A value written as a string or as a table (`Tbl`, whose unknown keys it refuses by name: serde's untagged
/// enums would say only "did not match any variant"); `expecting` names both forms.
fn string_or_table<'de, D, Tbl, T>(
    d: D,
    expecting: &'static str,
    from_str: fn(&str) -> T,
    from_table: fn(Tbl) -> T,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    Tbl: Deserialize<'de>,
{
    struct Visitor<Tbl, T> {
        expecting: &'static str,
        from_str: fn(&str) -> T,
        from_table: fn(Tbl) -> T,
    }
    impl<'de, Tbl: Deserialize<'de>, T> serde::de::Visitor<'de> for Visitor<Tbl, T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.from_str)(v))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            Tbl::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(self.from_table)
        }
    }
    d.deserialize_any(Visitor { expecting, from_str, from_table })
}

/// One `depends_on` entry as written: `"shop-db"`, or `{ container = "cache", port = 6379 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DependencySpec {
    pub container: String,
    pub port: Option<u16>,
}

impl<'de> Deserialize<'de> for DependencySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The table form, whose unknown keys are refused by name.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            container: String,
            #[serde(default)]
            port: Option<u16>,
        }
        string_or_table(
            d,
            "a container name or a table { container, port }",
            |v| DependencySpec { container: v.to_string(), port: None },
            |t: Table| DependencySpec { container: t.container, port: t.port },
        )
    }
}

/// True for a name Docker accepts for a container (and that reveille can put in its keys).
fn valid_container_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A service's `tls` block: how reveille reaches its `https://` backends. The routes file names files (`ca`,
/// `client_cert`, `client_key`, relative to the file) or gives the PEM text (`ca_pem`, ...); etcd gives the
/// PEM text only (a path in etcd would name a file on whichever replica reads it). An unknown field is an
/// error, not a warning: a misspelt `verfy = false` or `ca` must not quietly leave the defaults in force.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSpec {
    /// A file of CA certificates (PEM): backends are verified against these only.
    #[serde(default)]
    pub ca: Option<String>,
    /// The same, as PEM text.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The name backends' certificates must carry; default: each backend's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A file with the client certificate chain (PEM) for backends that ask for one.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// The same, as PEM text.
    #[serde(default)]
    pub client_cert_pem: Option<String>,
    /// A file with the client certificate's private key (PEM).
    #[serde(default)]
    pub client_key: Option<String>,
    /// The same, as PEM text.
    #[serde(default)]
    pub client_key_pem: Option<String>,
    /// `false`: backends' certificates are not verified (logged at warn at every load). Default `true`.
    #[serde(default)]
    pub verify: Option<bool>,
}

impl TlsSpec {
    /// Reads the files the block names (`ca`, `client_cert`, `client_key`; relative paths from `dir`, at most
    /// `limit` bytes each) into their `_pem` fields: what the routes file does before [`ServiceSpec::to_service`].
    pub(crate) fn read_files(&mut self, service: &str, dir: &Path, limit: u64) -> Result<(), RouteError> {
        let fields = [
            ("ca", &mut self.ca, &mut self.ca_pem),
            ("client_cert", &mut self.client_cert, &mut self.client_cert_pem),
            ("client_key", &mut self.client_key, &mut self.client_key_pem),
        ];
        for (field, path, pem) in fields {
            let Some(file) = path.take() else { continue };
            let bad = |reason: String| RouteError::BadField { service: service.to_string(), reason };
            if pem.is_some() {
                return Err(bad(format!("`tls.{field}` and `tls.{field}_pem` both given: write one")));
            }
            let full = dir.join(&file);
            let text = crate::fsread::read_to_string(&full, limit)
                .map_err(|e| bad(format!("`tls.{field}`: cannot read {}: {e}", full.display())))?;
            *pem = Some(text);
        }
        Ok(())
    }

    /// The settings, checked for what needs no parsing: files already read (a path left means a source that
    /// reads none), `verify` written out.
    fn options(&self, service: &str) -> Result<TlsOptions, RouteError> {
        let bad = |reason: String| RouteError::BadField { service: service.to_string(), reason };
        for (field, path) in [("ca", &self.ca), ("client_cert", &self.client_cert), ("client_key", &self.client_key)] {
            if path.is_some() {
                return Err(bad(format!(
                    "`tls.{field}` names a file, which only the routes file can do: give the PEM text as `tls.{field}_pem`"
                )));
            }
        }
        Ok(TlsOptions {
            ca_pem: self.ca_pem.clone(),
            server_name: self.server_name.clone(),
            client_cert_pem: self.client_cert_pem.clone(),
            client_key_pem: self.client_key_pem.clone(),
            verify: self.verify.unwrap_or(true),
        })
    }
}

/// The fields of [`RouteSpec`] as written.
pub(crate) const ROUTE_FIELDS: &[&str] = &["service", "strip_prefix"];

/// The fields of [`ServiceSpec`] that are durations (`"5m"`).
pub(crate) const DURATION_FIELDS: &[&str] =
    &["idle_timeout", "wake_timeout", "stop_timeout", "stop_after", "page_after"];

/// Checks one field of service `service` on its own, so that every wrong field of a definition is reported, not
/// the first: an unknown field is [`RouteError::UnknownField`] (with the nearest known name); a known one is
/// read by `read` (a definition of that field alone, giving serde's message on failure), and a failure is
/// [`RouteError::BadField`] naming the field. `text` is the value when it is a string.
pub(crate) fn check_field(
    service: &str,
    field: &str,
    text: Option<&str>,
    read: impl FnOnce() -> Result<(), String>,
) -> Result<(), RouteError> {
    if !SERVICE_FIELDS.contains(&field) {
        let hint = crate::suggest::did_you_mean(field, SERVICE_FIELDS.iter().copied());
        return Err(RouteError::UnknownField { service: service.to_string(), field: field.to_string(), hint });
    }
    read().map_err(|message| RouteError::BadField {
        service: service.to_string(),
        reason: field_reason(field, &message, text),
    })
}

/// Why a field's value is refused, as an operator reads it: serde's message without the deserializer's location
/// (`in `port``, `at line 1 column 9`), and for a duration, what one looks like.
fn field_reason(field: &str, message: &str, text: Option<&str>) -> String {
    let message = message.lines().next().unwrap_or(message);
    let message = message.split(" at line ").next().unwrap_or(message);
    if DURATION_FIELDS.contains(&field) {
        return match text.map(|t| (t, humantime::parse_duration(t))) {
            Some((t, Err(humantime::DurationError::UnknownUnit { unit, .. }))) if unit.is_empty() => {
                format!("`{field}` {t:?} has no unit: write a duration with one, for example 5s or 5m")
            }
            Some((t, Err(e))) => format!("`{field}` {t:?} is not a duration ({e}); for example 5s or 5m"),
            _ => format!("`{field}`: {message}: write a duration as a string, for example \"5s\" or \"5m\""),
        };
    }
    format!("`{field}`: {message}")
}

/// The Docker host names a service's `docker_host` may take: the configured hosts when serving, or any name
/// where the config is not known (`reveille check` of a lone routes file, `service set` without `--config`).
/// With their kinds, when known: a `swarm_service` needs a runtime of kind swarm, a `container` another.
#[derive(Debug, Clone, Default)]
pub(crate) enum DockerHostNames {
    #[default]
    Any,
    Known(Arc<BTreeMap<String, Option<RuntimeKind>>>),
}

impl DockerHostNames {
    /// The given names, of kinds not known; [`DEFAULT_HOST`] (Docker) is always one of them.
    #[cfg(test)]
    pub(crate) fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with_kinds_of(names.into_iter().map(|n| (n, None)))
    }

    /// The given names and their kinds; [`DEFAULT_HOST`] (Docker, unless given) is always one of them.
    pub(crate) fn with_kinds<'a>(names: impl IntoIterator<Item = (&'a str, RuntimeKind)>) -> Self {
        Self::with_kinds_of(names.into_iter().map(|(n, k)| (n, Some(k))))
    }

    fn with_kinds_of<'a>(names: impl Iterator<Item = (&'a str, Option<RuntimeKind>)>) -> Self {
        let mut map: BTreeMap<String, Option<RuntimeKind>> = names.map(|(n, k)| (n.to_string(), k)).collect();
        map.entry(DEFAULT_HOST.to_string()).or_insert(Some(RuntimeKind::Docker));
        Self::Known(Arc::new(map))
    }

    /// The kind of runtime `name`, when known.
    fn kind(&self, name: &str) -> Option<RuntimeKind> {
        match self {
            Self::Known(map) => map.get(name).copied().flatten(),
            Self::Any => None,
        }
    }

    /// Checks `host`, the value of `field` (`runtime` or `docker_host`).
    fn check(&self, field: &str, host: &str) -> Result<(), String> {
        crate::runtime::check_host_name(host).map_err(|e| format!("`{field}`: {e}"))?;
        match self {
            Self::Known(map) if !map.contains_key(host) => Err(format!(
                "unknown `{field}` {host:?} (configured: {})",
                map.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            )),
            _ => Ok(()),
        }
    }
}

/// A route value: `{"service": "acme"}` in etcd, `{ service = "acme", strip_prefix = true }` (or the service's
/// name alone) in the routes file.
#[derive(Debug, Deserialize)]
pub(crate) struct RouteSpec {
    pub service: String,
    /// Send the path without the route's prefix (path routes only).
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

impl ServiceSpec {
    /// Validates the definition of service `name`; its `docker_host` must be one of `hosts`. On error, also says
    /// which backend (by index) was wrong, so the file source can point at its line.
    pub(crate) fn to_service(
        &self,
        name: &str,
        hosts: &DockerHostNames,
    ) -> Result<Service, (Option<usize>, RouteError)> {
        validate_service_name(name).map_err(|e| (None, e))?;
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Backend::parse(&b.address).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let balance = self.balance(name, &backends)?;
        let container = self.container_spec(name, hosts).map_err(|e| (None, e))?;
        // A Swarm service publishing one port needs no `port`: that one is the backend.
        if backends.is_empty() && container.as_ref().is_none_or(|c| c.port.is_none() && c.swarm.is_none()) {
            return Err((None, RouteError::NoBackends { service: name.to_string() }));
        }
        let https = HttpsPolicy {
            redirect: self.https_redirect,
            hsts: self.hsts_value(name).map_err(|e| (None, e))?,
            acme: self.acme,
        };
        let tls = self.backend_tls(name, &backends).map_err(|e| (None, e))?;
        Ok(Service::with_container(name, backends, container).with_https(https).with_tls(tls).with_balance(balance))
    }

    /// The weights, ejection and retry policies, or the first one that is wrong (a weight: with its backend's
    /// index). Without `balance`, a service whose backends are all `h2c://` and carry no weights takes
    /// `least_request`, any other `round_robin` (why: docs/routing.md, Balancing).
    fn balance(&self, name: &str, backends: &[Backend]) -> Result<Balance, (Option<usize>, RouteError)> {
        let bad = |i: Option<usize>, reason: String| (i, RouteError::BadField { service: name.to_string(), reason });
        let mut weights = Vec::new();
        if self.backends.iter().any(|b| b.weight.is_some()) {
            for (i, b) in self.backends.iter().enumerate() {
                let w = b.weight.unwrap_or(1);
                if !(1..=MAX_WEIGHT).contains(&w) {
                    return Err(bad(
                        Some(i),
                        format!("backend {:?}: `weight` {w} is not 1 to {MAX_WEIGHT}", b.address),
                    ));
                }
                weights.push(w);
            }
        }
        let ejection = match &self.ejection {
            None => Balance::default().ejection,
            Some(spec) => spec.policy().map_err(|e| bad(None, e))?,
        };
        let on = self.retry_on.as_deref().unwrap_or_default();
        let retries = Retries::parse(on, self.retry_budget).map_err(|e| bad(None, e))?;
        let all_h2c = !backends.is_empty() && backends.iter().all(|b| b.protocol() == Protocol::H2c);
        let strategy = match self.balance {
            Some(s) => s,
            // Streams of very different lengths share each HTTP/2 backend (a unary call, a stream held open):
            // requests in flight say more of a backend's load than a turn does (benchmarks.md, `balance`).
            None if all_h2c && weights.is_empty() => Strategy::LeastRequest,
            None => Strategy::RoundRobin,
        };
        if strategy == Strategy::LeastRequest && !weights.is_empty() {
            return Err(bad(
                None,
                "`weight` is for `balance = \"round_robin\"`; `least_request` does not use it".into(),
            ));
        }
        if let Some(check) = &self.health_check {
            check.validate().map_err(|e| bad(None, e))?;
        }
        let health_check = self.health_check.clone();
        Ok(Balance { weights, ejection, retries, strategy, health_check })
    }

    /// TLS for the service's `https://` backends, built once here: from its `tls` block, or the defaults
    /// (system roots, each backend's host) when it has `https://` backends and no block. `None` when it has
    /// neither. `verify = false` is logged at warn each time (every load of the definition).
    fn backend_tls(&self, name: &str, backends: &[Backend]) -> Result<Option<BackendTls>, RouteError> {
        let https = || backends.iter().filter(|b| b.protocol() == Protocol::Https);
        let options = match &self.tls {
            Some(spec) => spec.options(name)?,
            None if https().next().is_some() => TlsOptions { verify: true, ..TlsOptions::default() },
            None => return Ok(None),
        };
        let bad = |e: crate::upstream::TlsSetupError| RouteError::BadField {
            service: name.to_string(),
            reason: e.to_string(),
        };
        let tls = BackendTls::new(options).map_err(bad)?;
        for backend in https() {
            tls.server_name_for(backend.authority()).map_err(bad)?;
        }
        if !tls.verifies() {
            tracing::warn!(
                service = name,
                "service {name}: backend certificates are not verified (`tls.verify = false`)"
            );
        }
        Ok(Some(tls))
    }

    fn hsts_value(&self, name: &str) -> Result<Option<http::HeaderValue>, RouteError> {
        let Some(v) = &self.hsts else { return Ok(None) };
        let bad = |why: &str| RouteError::BadField { service: name.to_string(), reason: format!("`hsts` {v:?} {why}") };
        let has_max_age = v.split(';').any(|d| {
            d.trim()
                .split_once('=')
                .is_some_and(|(k, n)| k.trim().eq_ignore_ascii_case("max-age") && n.trim().parse::<u64>().is_ok())
        });
        if !has_max_age {
            return Err(bad("needs a `max-age=<seconds>` directive"));
        }
        http::HeaderValue::from_str(v).map(Some).map_err(|_| bad("is not a valid header value"))
    }

    fn container_spec(&self, name: &str, hosts: &DockerHostNames) -> Result<Option<ContainerSpec>, RouteError> {
        let bad = |reason: String| RouteError::BadField { service: name.to_string(), reason };
        if self.container.is_some() && self.swarm_service.is_some() {
            return Err(bad("`container` and `swarm_service` exclude each other: name one".into()));
        }
        let swarm = self.swarm_spec().map_err(bad)?;
        let Some(container) = self.container.as_ref().or(self.swarm_service.as_ref()) else {
            let set = [
                ("port", self.port.is_some()),
                ("network", self.network.is_some()),
                ("docker_host", self.docker_host.is_some()),
                ("runtime", self.runtime.is_some()),
                ("idle_timeout", self.idle_timeout.is_some()),
                ("wake_timeout", self.wake_timeout.is_some()),
                ("stop_timeout", self.stop_timeout.is_some()),
                ("health_path", self.health_path.is_some()),
                ("idle_action", self.idle_action.is_some()),
                ("stop_after", self.stop_after.is_some()),
                ("max_held", self.max_held.is_some()),
                ("page_after", self.page_after.is_some()),
                ("depends_on", self.depends_on.is_some()),
                ("stop_check", self.stop_check.is_some()),
                ("traffic_witness", self.traffic_witness.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
                return Err(bad(format!("`{field}` needs `container`")));
            }
            return Ok(None);
        };
        if !valid_container_name(container) {
            let what = if swarm.is_some() { "swarm_service" } else { "container" };
            return Err(bad(format!("`{what}`: invalid name {container:?}")));
        }
        let depends_on = self.dependencies(container).map_err(bad)?;
        let runtime = match (&self.runtime, &self.docker_host) {
            (Some(_), Some(_)) => {
                return Err(bad("`runtime` and `docker_host` both name the runtime (`docker_host` is its older \
                                name): give one"
                    .into()))
            }
            (Some(name), None) => Some(("runtime", name)),
            (None, Some(name)) => Some(("docker_host", name)),
            (None, None) => None,
        };
        if let Some((field, name)) = runtime {
            hosts.check(field, name).map_err(bad)?;
        }
        let (field, name) = runtime.map_or(("runtime", DEFAULT_HOST), |(f, n)| (f, n.as_str()));
        match (hosts.kind(name), &swarm) {
            (Some(kind), Some(_)) if kind != RuntimeKind::Swarm => {
                return Err(bad(format!(
                    "`swarm_service` needs a runtime of kind \"swarm\": `{field}` {name:?} is {kind} (name one with \
                     `runtime`)"
                )))
            }
            (Some(RuntimeKind::Swarm), None) => {
                return Err(bad(format!("`{field}` {name:?} is a swarm: it runs a `swarm_service`, not a `container`")))
            }
            _ => {}
        }
        if self.port == Some(0) {
            return Err(bad("`port` must be 1-65535".into()));
        }
        if let Some(p) = &self.health_path {
            if !p.starts_with('/') || p.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
                return Err(bad(format!("`health_path` {p:?} must be a path starting with '/'")));
            }
        }
        if let Some(p) = &self.stop_check {
            if !p.starts_with('/') || p.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
                return Err(bad(format!("`stop_check` {p:?} must be a path starting with '/'")));
            }
        }
        if self.wake_timeout == Some(Duration::ZERO) {
            return Err(bad("`wake_timeout` must be more than 0".into()));
        }
        if self.max_held == Some(0) {
            return Err(bad("`max_held` must be at least 1".into()));
        }
        if let Some(after) = self.stop_after {
            if self.idle_action != Some(IdleAction::Pause) {
                return Err(bad("`stop_after` needs `idle_action = \"pause\"`".into()));
            }
            if after.is_zero() {
                return Err(bad("`stop_after` must be more than 0".into()));
            }
        }
        Ok(Some(ContainerSpec {
            container: container.clone(),
            port: self.port,
            // A swarm service's tasks are inspected for their address on `swarm_network`, as a container's on
            // `network`.
            network: self.network.clone().or_else(|| swarm.as_ref().and_then(|s| s.network.clone())),
            docker_host: runtime.map(|(_, name)| name.clone()),
            idle_timeout: self.idle_timeout,
            wake_timeout: self.wake_timeout,
            stop_timeout: self.stop_timeout,
            health_path: self.health_path.clone(),
            idle_action: self.idle_action.unwrap_or_default(),
            stop_after: self.stop_after,
            max_held: self.max_held,
            page_after: self.page_after,
            swarm,
            depends_on,
            stop_check: self.stop_check.clone(),
            no_traffic_witness: self.traffic_witness == Some(false),
        }))
    }

    /// The Swarm settings when the service names a `swarm_service`; `replicas`, `backend_host` and `swarm_network`
    /// need one, and a service can be neither paused nor given a `network` (its network is `swarm_network`).
    fn swarm_spec(&self) -> Result<Option<SwarmSpec>, String> {
        if self.swarm_service.is_none() {
            let set = [
                ("replicas", self.replicas.is_some()),
                ("backend_host", self.backend_host.is_some()),
                ("swarm_network", self.swarm_network.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!("`{field}` needs `swarm_service`"));
            }
            return Ok(None);
        }
        if self.network.is_some() {
            return Err("`network` is for `container`: a swarm service is reached at its published port, or at a \
                        task's address on `swarm_network`"
                .into());
        }
        if self.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(
                "`depends_on` is for `container`: a swarm service's dependencies are not started by reveille".into()
            );
        }
        if self.idle_action == Some(IdleAction::Pause) {
            return Err("`idle_action = \"pause\"`: a swarm service cannot be paused (it is scaled to 0)".into());
        }
        let replicas = self.replicas.unwrap_or(1);
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(format!("`replicas` {replicas} is not 1 to {MAX_REPLICAS}"));
        }
        if let Some(host) = &self.backend_host {
            let ok = host.parse::<std::net::IpAddr>().is_ok()
                || format!("{host}:1").parse::<http::uri::Authority>().is_ok_and(|a| a.host() == host);
            if !ok || host.is_empty() {
                return Err(format!("`backend_host` {host:?} is not a host name or an IP address"));
            }
        }
        if let Some(network) = &self.swarm_network {
            if self.backend_host.is_some() {
                return Err("`swarm_network` and `backend_host` exclude each other: the backend is a task's address \
                            on the network, or the published port on `backend_host`"
                    .into());
            }
            if network.is_empty() || network.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
                return Err(format!("`swarm_network` {network:?} is not a network name or id"));
            }
            if self.port.is_none() {
                return Err("`swarm_network` needs `port`: the port the service's tasks listen on".into());
            }
        }
        Ok(Some(SwarmSpec { replicas, backend_host: self.backend_host.clone(), network: self.swarm_network.clone() }))
    }

    /// `depends_on`, checked: well-formed names, a port of 1-65535, no container twice, not `own` itself.
    fn dependencies(&self, own: &str) -> Result<Vec<Dependency>, String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, d) in self.depends_on.iter().flatten().enumerate() {
            let at = format!("`depends_on[{i}]`");
            if !valid_container_name(&d.container) {
                return Err(format!("{at}: invalid container name {:?}", d.container));
            }
            if d.port == Some(0) {
                return Err(format!("{at} ({}): `port` must be 1-65535", d.container));
            }
            if d.container == own {
                return Err(format!("{at}: {own:?} is the service's own container"));
            }
            if !seen.insert(d.container.as_str()) {
                return Err(format!("{at}: {:?} is listed twice", d.container));
            }
            out.push(Dependency { container: d.container.clone(), port: d.port });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::balance::Ejection;
    use super::*;

    #[test]
    fn json_service_with_unknown_fields() {
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": ["127.0.0.1:1"], "colour": "x"}"#).unwrap();
        assert_eq!(spec.unknown.keys().collect::<Vec<_>>(), ["colour"]);
        assert_eq!(spec.to_service("a", &DockerHostNames::Any).unwrap().backends().len(), 1);
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"backends": "127.0.0.1:1"}"#).is_err(), "wrong type");
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": ["nope"]}"#).unwrap();
        assert!(matches!(spec.to_service("a", &DockerHostNames::Any), Err((Some(0), RouteError::BadBackend { .. }))));
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": []}"#).unwrap();
        assert!(matches!(spec.to_service("a", &DockerHostNames::Any), Err((None, RouteError::NoBackends { .. }))));
    }

    #[test]
    fn fields_are_listed() {
        // Each listed field is one the struct reads: a wrong type fails, where an unknown field would be
        // accepted among the unknown ones.
        for field in SERVICE_FIELDS {
            let spec = serde_json::from_str::<ServiceSpec>(&format!(r#"{{"{field}": [[1]]}}"#));
            assert!(spec.is_err(), "{field} is read by the struct");
        }
        for field in DURATION_FIELDS {
            assert!(SERVICE_FIELDS.contains(field), "{field}");
        }
    }

    #[test]
    fn field_errors_name_the_field_and_say_what_a_duration_is() {
        let check = |field: &str, json: &str| {
            let text = serde_json::from_str::<serde_json::Value>(json).unwrap().as_str().map(str::to_string);
            let read = || {
                serde_json::from_str::<ServiceSpec>(&format!(r#"{{"{field}": {json}}}"#))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            check_field("web", field, text.as_deref(), read).map_err(|e| e.to_string())
        };
        assert_eq!(
            check("contaner", r#""x""#).unwrap_err(),
            "service \"web\": unknown field `contaner` (did you mean `container`?)"
        );
        assert_eq!(check("colour", r#""x""#).unwrap_err(), "service \"web\": unknown field `colour`");
        let e = check("idle_timeout", r#""5""#).unwrap_err();
        assert!(e.contains("`idle_timeout` \"5\" has no unit") && e.contains("for example 5s or 5m"), "{e}");
        let e = check("idle_timeout", r#""5 parsecs""#).unwrap_err();
        assert!(e.contains("for example 5s or 5m"), "{e}");
        let e = check("idle_timeout", "5").unwrap_err();
        assert!(e.contains("for example \"5s\""), "{e}");
        let e = check("port", r#""x""#).unwrap_err();
        assert!(e.starts_with("service \"web\": `port`: invalid type") && !e.contains("line"), "{e}");
        assert!(check("idle_timeout", r#""0""#).is_ok());
        assert!(check("port", "8080").is_ok());
    }

    #[test]
    fn https_fields() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &DockerHostNames::Any);
        let svc =
            parse(r#"{"backends": ["127.0.0.1:1"], "https_redirect": true, "hsts": "max-age=600; preload"}"#).unwrap();
        assert_eq!(svc.https().redirect, Some(true));
        assert_eq!(svc.https().hsts.as_ref().unwrap(), "max-age=600; preload");
        assert_eq!(parse(r#"{"backends": ["127.0.0.1:1"]}"#).unwrap().https(), &HttpsPolicy::default());
        for bad in [r#""includeSubDomains""#, r#""max-age=soon""#, r#""max-age=1\n""#] {
            let e = parse(&format!(r#"{{"backends": ["127.0.0.1:1"], "hsts": {bad}}}"#)).unwrap_err().1;
            assert!(e.to_string().contains("hsts"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"https_redirect": "yes"}"#).is_err());
    }

    #[test]
    fn balance_fields() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &DockerHostNames::Any);
        let svc = parse(r#"{"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 3}]}"#).unwrap();
        assert_eq!((svc.weight(0), svc.weight(1)), (1, 3));
        assert_eq!(svc.balance().ejection, Some(Ejection::default()), "on by default");
        assert_eq!(svc.balance().retries, None, "off by default");
        let svc = parse(r#"{"backends": ["127.0.0.1:1"], "ejection": false, "retry_on": ["503"], "retry_budget": 10}"#)
            .unwrap();
        assert_eq!(svc.balance().ejection, None);
        assert!(svc.retries().is_some_and(|(r, _)| r.on_status(503) && r.budget_percent == 10));
        let e = parse(r#"{"backends": ["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 0}]}"#).unwrap_err();
        assert_eq!(e.0, Some(1));
        assert!(e.1.to_string().contains("`weight` 0 is not 1 to 100"), "{}", e.1);
        let e = parse(r#"{"backends": ["127.0.0.1:1"], "retry_on": ["418"]}"#).unwrap_err().1;
        assert!(e.to_string().contains("retry_on"), "{e}");
        for bad in [
            r#"{"backends": [{"addr": "127.0.0.1:1"}]}"#,
            r#"{"backends": [{"address": "127.0.0.1:1", "weight": "x"}]}"#,
            r#"{"backends": [1]}"#,
            r#"{"ejection": {"consecutive": 1}}"#,
        ] {
            let e = serde_json::from_str::<ServiceSpec>(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let svc = parse(r#"{"backends": ["127.0.0.1:1"], "health_check": {"path": "/healthz"}}"#).unwrap();
        let check = svc.balance().health_check.clone().unwrap();
        assert_eq!((check.interval, check.timeout), (Duration::from_secs(5), Duration::from_secs(2)));
        for bad in [r#"{"path": "healthz"}"#, r#"{"path": "/h", "interval": "0s"}"#] {
            let e = parse(&format!(r#"{{"backends": ["127.0.0.1:1"], "health_check": {bad}}}"#)).unwrap_err().1;
            assert!(e.to_string().contains("health_check"), "{e}");
        }
        let e = parse(r#"{"backends": [{"address": "127.0.0.1:1", "weight": 2}], "balance": "least_request"}"#);
        assert!(e.unwrap_err().1.to_string().contains("least_request"));
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"balance": "random"}"#).is_err());
        // HTTP/2 backends without weights default to least_request; anything else, or a choice written out, not.
        let strategy = |json: &str| parse(json).unwrap().balance().strategy;
        assert_eq!(strategy(r#"{"backends": ["h2c://a:1", "h2c://b:1"]}"#), Strategy::LeastRequest);
        assert_eq!(strategy(r#"{"backends": ["h2c://a:1", "http://b:1"]}"#), Strategy::RoundRobin);
        assert_eq!(
            strategy(r#"{"backends": ["h2c://a:1", "h2c://b:1"], "balance": "round_robin"}"#),
            Strategy::RoundRobin
        );
        let weighted = r#"{"backends": [{"address": "h2c://a:1", "weight": 2}, "h2c://b:1"]}"#;
        assert_eq!(strategy(weighted), Strategy::RoundRobin);
        assert_eq!(strategy(r#"{"backends": ["a:1", "b:1"]}"#), Strategy::RoundRobin);
        let e = serde_json::from_str::<ServiceSpec>(r#"{"backends": [{"addr": "x"}]}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `addr`"), "{e}");
    }

    #[test]
    fn tls_block() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &DockerHostNames::Any);
        // An https:// backend gets TLS with the defaults; a plain service none.
        assert!(parse(r#"{"backends": ["https://api.test"]}"#).unwrap().backend_tls().unwrap().verifies());
        assert!(parse(r#"{"backends": ["http://api.test"]}"#).unwrap().backend_tls().is_none());
        let insecure = r#"{"backends": ["https://api.test"], "tls": {"verify": false}}"#;
        assert!(!parse(insecure).unwrap().backend_tls().unwrap().verifies());
        // A path is the routes file's to read: elsewhere, the PEM text.
        let e = parse(r#"{"backends": ["https://api.test"], "tls": {"ca": "/etc/ca.pem"}}"#).unwrap_err().1;
        assert!(e.to_string().contains("give the PEM text as `tls.ca_pem`"), "{e}");
        let e = parse(r#"{"backends": ["https://api.test"], "tls": {"server_name": "a b"}}"#).unwrap_err().1;
        assert_eq!(e.to_string(), "service \"a\": `tls.server_name` \"a b\" is neither a DNS name nor an IP address");
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"tls": {"verfy": false}}"#).is_err(), "unknown tls field");
        // A changed block is another definition; the same one is not.
        let a = parse(insecure).unwrap();
        assert!(a.same_definition(&parse(insecure).unwrap()));
        let named = r#"{"backends": ["https://api.test"], "tls": {"verify": false, "server_name": "x.test"}}"#;
        assert!(!a.same_definition(&parse(named).unwrap()));
        assert!(!a.same_definition(&parse(r#"{"backends": ["https://api.test"]}"#).unwrap()));
    }

    #[test]
    fn swarm_fields() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &DockerHostNames::Any);
        // One published port needs no `port`; replicas default to 1.
        let svc = parse(r#"{"swarm_service": "shop"}"#).unwrap();
        let c = svc.container().unwrap();
        assert_eq!((c.container.as_str(), c.port, c.replicas()), ("shop", None, 1));
        assert_eq!(c.swarm, Some(SwarmSpec { replicas: 1, backend_host: None, network: None }));
        let svc = parse(r#"{"swarm_service": "shop", "port": 8080, "replicas": 3, "backend_host": "node-1.lan"}"#);
        let c = svc.unwrap().container().unwrap().clone();
        assert_eq!(c.port, Some(8080));
        assert_eq!(c.swarm, Some(SwarmSpec { replicas: 3, backend_host: Some("node-1.lan".into()), network: None }));
        assert!(parse(r#"{"swarm_service": "shop", "backend_host": "10.0.0.5"}"#).is_ok());
        assert_eq!(parse(r#"{"container": "c", "port": 1}"#).unwrap().container().unwrap().replicas(), 1);
        // On the swarm's overlay network: the tasks' address there, at `port`; the network is what inspect is given.
        let svc = parse(r#"{"swarm_service": "shop", "port": 8080, "swarm_network": "front"}"#).unwrap();
        let c = svc.container().unwrap();
        assert_eq!(c.swarm, Some(SwarmSpec { replicas: 1, backend_host: None, network: Some("front".into()) }));
        assert_eq!(c.network.as_deref(), Some("front"));
        for (bad, says) in [
            (r#"{"container": "c", "port": 1, "swarm_network": "n"}"#, "`swarm_network` needs `swarm_service`"),
            (
                r#"{"swarm_service": "s", "port": 1, "swarm_network": "n", "backend_host": "h"}"#,
                "`swarm_network` and `backend_host` exclude each other",
            ),
            (r#"{"swarm_service": "s", "swarm_network": "n"}"#, "`swarm_network` needs `port`"),
            (r#"{"swarm_service": "s", "port": 1, "swarm_network": ""}"#, "`swarm_network` \"\" is not a network"),
            (r#"{"swarm_service": "s", "port": 1, "swarm_network": "a b"}"#, "`swarm_network` \"a b\" is not"),
            (r#"{"container": "c", "swarm_service": "s"}"#, "`container` and `swarm_service` exclude each other"),
            (r#"{"container": "c", "port": 1, "replicas": 2}"#, "`replicas` needs `swarm_service`"),
            (r#"{"backends": ["127.0.0.1:1"], "backend_host": "h"}"#, "`backend_host` needs `swarm_service`"),
            (r#"{"swarm_service": "s", "replicas": 0}"#, "`replicas` 0 is not 1 to 1000"),
            (r#"{"swarm_service": "s", "network": "n"}"#, "`network` is for `container`"),
            (r#"{"swarm_service": "s", "depends_on": ["db"]}"#, "`depends_on` is for `container`"),
            (r#"{"swarm_service": "s", "idle_action": "pause"}"#, "a swarm service cannot be paused"),
            (r#"{"swarm_service": "s", "backend_host": "a b"}"#, "`backend_host` \"a b\" is not a host name"),
            (r#"{"swarm_service": "s", "backend_host": "h:80"}"#, "`backend_host` \"h:80\" is not a host name"),
            (r#"{"swarm_service": "a/b"}"#, "`swarm_service`: invalid name \"a/b\""),
        ] {
            let e = parse(bad).unwrap_err().1.to_string();
            assert!(e.starts_with("service \"a\": ") && e.contains(says), "{bad}: {e}");
        }
        // Where the kinds are known: a swarm service on a swarm runtime, a container on any other.
        let kinds = DockerHostNames::with_kinds([("sw", RuntimeKind::Swarm), ("pod", RuntimeKind::Podman)]);
        let on = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &kinds).map_err(|e| e.1);
        assert!(on(r#"{"swarm_service": "shop", "runtime": "sw"}"#).is_ok());
        assert!(on(r#"{"swarm_service": "shop", "docker_host": "sw"}"#).is_ok());
        assert!(on(r#"{"container": "c", "port": 1, "runtime": "pod"}"#).is_ok());
        for (bad, says) in [
            (
                r#"{"swarm_service": "shop"}"#,
                r#"`swarm_service` needs a runtime of kind "swarm": `runtime` "default" is docker"#,
            ),
            (r#"{"swarm_service": "shop", "runtime": "pod"}"#, r#"`runtime` "pod" is podman"#),
            (
                r#"{"container": "c", "port": 1, "runtime": "sw"}"#,
                r#"`runtime` "sw" is a swarm: it runs a `swarm_service`, not a `container`"#,
            ),
        ] {
            let e = on(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn container_fields() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", &DockerHostNames::Any);
        let svc =
            parse(r#"{"container": "acme-web", "port": 8080, "idle_timeout": "15m", "idle_action": "pause"}"#).unwrap();
        assert!(svc.backends().is_empty());
        let c = svc.container().unwrap();
        assert_eq!(c.container, "acme-web");
        assert_eq!(c.port, Some(8080));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(c.idle_action, IdleAction::Pause);
        assert_eq!(c.stop_timeout, None, "unset: the global default, else the container's own");
        let paused = parse(r#"{"container": "c", "port": 1, "idle_action": "pause", "stop_after": "30m"}"#).unwrap();
        assert_eq!(paused.container().unwrap().stop_after, Some(Duration::from_secs(1800)));
        for bad in [
            r#"{"container": "c", "port": 1, "stop_after": "30m"}"#,
            r#"{"container": "c", "port": 1, "idle_action": "pause", "stop_after": "0"}"#,
            r#"{"backends": ["127.0.0.1:1"], "stop_after": "30m"}"#,
        ] {
            assert!(matches!(parse(bad), Err((None, RouteError::BadField { .. }))), "{bad}");
        }
        let grace = parse(r#"{"container": "c", "port": 1, "stop_timeout": "2s"}"#).unwrap();
        assert_eq!(grace.container().unwrap().stop_timeout, Some(Duration::from_secs(2)));
        let check = parse(r#"{"container": "c", "port": 1, "stop_check": "/busy"}"#).unwrap();
        assert_eq!(check.container().unwrap().stop_check.as_deref(), Some("/busy"));
        assert!(!check.container().unwrap().no_traffic_witness, "the witness is on unless written off");
        let unwitnessed = parse(r#"{"container": "c", "port": 1, "traffic_witness": false}"#).unwrap();
        assert!(unwitnessed.container().unwrap().no_traffic_witness);
        let never = parse(r#"{"container": "c", "port": 1, "idle_timeout": "0"}"#).unwrap();
        assert_eq!(never.container().unwrap().idle_timeout, Some(Duration::ZERO));
        // A container with explicit backends needs no port.
        assert!(parse(r#"{"container": "c", "backends": ["127.0.0.1:9"]}"#).is_ok());
        for (bad, why) in [
            (r#"{"container": "c"}"#, "no port, no backends"),
            (r#"{"port": 80, "backends": ["127.0.0.1:9"]}"#, "port without container"),
            (r#"{"stop_timeout": "5s", "backends": ["127.0.0.1:9"]}"#, "stop_timeout without container"),
            (r#"{"container": "a b", "port": 80}"#, "bad container name"),
            (r#"{"container": "c", "port": 80, "health_path": "health"}"#, "relative health path"),
            (r#"{"container": "c", "port": 80, "stop_check": "busy"}"#, "relative stop_check"),
            (r#"{"backends": ["127.0.0.1:9"], "stop_check": "/busy"}"#, "stop_check without container"),
            (r#"{"backends": ["127.0.0.1:9"], "traffic_witness": false}"#, "traffic_witness without container"),
            (r#"{"container": "c", "port": 80, "max_held": 0}"#, "max_held 0"),
            (r#"{"container": "c", "port": 80, "wake_timeout": "0"}"#, "wake_timeout 0"),
        ] {
            assert!(parse(bad).is_err(), "{why}");
        }
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"container": "c", "idle_timeout": "soon"}"#).is_err());
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"container": "c", "idle_action": "freeze"}"#).is_err());
    }

    #[test]
    fn depends_on_field() {
        let parse = |j: &str| serde_json::from_str::<ServiceSpec>(j).map(|s| s.to_service("a", &DockerHostNames::Any));
        let svc = parse(
            r#"{"container": "web", "port": 80, "depends_on": ["shop-db", {"container": "cache", "port": 6379}]}"#,
        )
        .unwrap()
        .unwrap();
        let deps = &svc.container().unwrap().depends_on;
        assert_eq!(
            deps,
            &[
                Dependency { container: "shop-db".into(), port: None },
                Dependency { container: "cache".into(), port: Some(6379) }
            ]
        );
        let err = |j: &str| parse(j).unwrap().unwrap_err().1.to_string();
        assert_eq!(
            err(r#"{"container": "web", "port": 80, "depends_on": ["db", "a b"]}"#),
            "service \"a\": `depends_on[1]`: invalid container name \"a b\""
        );
        assert!(err(r#"{"container": "web", "port": 80, "depends_on": [{"container": "db", "port": 0}]}"#)
            .contains("`depends_on[0]` (db): `port` must be 1-65535"));
        assert!(err(r#"{"container": "web", "port": 80, "depends_on": ["db", "db"]}"#).contains("listed twice"));
        assert!(err(r#"{"container": "web", "port": 80, "depends_on": ["web"]}"#).contains("own container"));
        assert_eq!(
            err(r#"{"backends": ["127.0.0.1:1"], "depends_on": ["db"]}"#),
            "service \"a\": `depends_on` needs `container`"
        );
        for bad in [
            r#"{"container": "web", "port": 80, "depends_on": "db"}"#,
            r#"{"container": "web", "port": 80, "depends_on": [{"container": "db", "prot": 1}]}"#,
            r#"{"container": "web", "port": 80, "depends_on": [{"port": 1}]}"#,
            r#"{"container": "web", "port": 80, "depends_on": [{"container": "db", "port": 70000}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<ServiceSpec>(r#"{"depends_on": [{"container": "db", "prot": 1}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn runtime_field() {
        let known = DockerHostNames::known(["pod"]);
        let parse =
            |j: &str, hosts: &DockerHostNames| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", hosts);
        let svc = parse(r#"{"container": "c", "port": 1, "runtime": "pod"}"#, &known).unwrap();
        assert_eq!(svc.container().unwrap().runtime(), "pod");
        assert_eq!(svc.container().unwrap().docker_host(), "pod", "one setting, two names");
        let e = parse(r#"{"container": "c", "port": 1, "runtime": "nope"}"#, &known).unwrap_err().1;
        assert_eq!(e.to_string(), "service \"a\": unknown `runtime` \"nope\" (configured: default, pod)");
        let both = r#"{"container": "c", "port": 1, "runtime": "pod", "docker_host": "pod"}"#;
        let e = parse(both, &DockerHostNames::Any).unwrap_err().1;
        assert!(e.to_string().contains("`runtime` and `docker_host` both name the runtime"), "{e}");
        let e = parse(r#"{"container": "c", "port": 1, "runtime": "a/b"}"#, &DockerHostNames::Any).unwrap_err().1;
        assert!(e.to_string().contains("`runtime`: docker host name \"a/b\""), "{e}");
        let e = parse(r#"{"backends": ["127.0.0.1:1"], "runtime": "pod"}"#, &known).unwrap_err().1;
        assert!(e.to_string().contains("`runtime` needs `container`"), "{e}");
    }

    #[test]
    fn docker_host_field() {
        let known = DockerHostNames::known(["second"]);
        let parse =
            |j: &str, hosts: &DockerHostNames| serde_json::from_str::<ServiceSpec>(j).unwrap().to_service("a", hosts);
        let svc = parse(r#"{"container": "c", "port": 1, "docker_host": "second"}"#, &known).unwrap();
        assert_eq!(svc.container().unwrap().docker_host(), "second");
        let svc = parse(r#"{"container": "c", "port": 1}"#, &known).unwrap();
        assert_eq!(svc.container().unwrap().docker_host(), DEFAULT_HOST);
        assert!(parse(r#"{"container": "c", "port": 1, "docker_host": "default"}"#, &known).is_ok());
        let e = parse(r#"{"container": "c", "port": 1, "docker_host": "third"}"#, &known).unwrap_err().1;
        assert_eq!(e.to_string(), "service \"a\": unknown `docker_host` \"third\" (configured: default, second)",);
        // Without the config, any well-formed name.
        assert!(parse(r#"{"container": "c", "port": 1, "docker_host": "third"}"#, &DockerHostNames::Any).is_ok());
        for bad in [r#""a b""#, r#""""#, r#""x/y""#] {
            let j = format!(r#"{{"container": "c", "port": 1, "docker_host": {bad}}}"#);
            assert!(parse(&j, &DockerHostNames::Any).is_err(), "{bad}");
        }
        let e = parse(r#"{"backends": ["127.0.0.1:1"], "docker_host": "second"}"#, &known).unwrap_err().1;
        assert!(e.to_string().contains("`docker_host` needs `container`"), "{e}");
    }
}
