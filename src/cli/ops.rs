//! Operator commands against etcd (`reveille route ...`, `reveille service ...`, `reveille cert ...`): each
//! validates before it writes (with the same rules as the proxy: `routes` for routes and services, `tls` for
//! certificates), writes one JSON value per key, and says what it did. Keys are `crate::etcd::Keys`'.
//!
//! Existing values are merged, not overwritten: fields this version does not know (written by a newer
//! reveille or by hand) survive a `set`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use serde_json::{Map, Value};

use crate::cluster::{keep_awake_lease_ttl, rfc3339, KeepAwakeValue};
use crate::etcd::{connect, list_range, within, EtcdConfig, EtcdError, KeyKind, Keys};
use crate::routes::{
    strip_without_prefix, validate_service_name, ContainerSpec, DockerHostNames, RouteError, RouteKey, ServiceSpec,
};
use crate::tls::etcd::CertValue;

/// Why an operator command did nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpsError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Invalid(#[from] RouteError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Cert(#[from] crate::tls::etcd::CertValueError),
}

impl From<etcd_client::Error> for OpsError {
    fn from(e: etcd_client::Error) -> Self {
        OpsError::Etcd(EtcdError::from(e))
    }
}

/// A connection to etcd for operator commands.
pub(super) struct Ops {
    client: Client,
    keys: Keys,
    timeout: Duration,
}

impl Ops {
    pub(super) async fn connect(config: &EtcdConfig) -> Result<Self, OpsError> {
        let client = connect(config).await?;
        Ok(Self { client, keys: config.keys(), timeout: config.timeout })
    }

    /// The value at `key` as a JSON object (empty if absent or not an object).
    async fn object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, OpsError> {
        let resp = within(self.timeout, self.client.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| match serde_json::from_slice::<Value>(kv.value()) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }))
    }

    /// `route set HOST[/PREFIX/] SERVICE [--strip-prefix]`: refuses a service that does not exist unless `force`.
    /// The check and the write are one transaction, so the service cannot disappear in between. The key is
    /// written in its canonical form (`shop.test/api/`), the one `route ls` and `/api/routes` show.
    pub(super) async fn route_set(
        &mut self,
        host: &str,
        service: &str,
        force: bool,
        strip_prefix: bool,
    ) -> Result<String, OpsError> {
        let pattern = RouteKey::parse(host)?;
        validate_service_name(service)?;
        if strip_prefix && pattern.path.is_none() {
            return Err(strip_without_prefix(pattern.to_string()).into());
        }
        let key = self.keys.route(&pattern.to_string());
        let previous = self.object(&key).await?;
        let old_service = previous.as_ref().and_then(|m| m.get("service")).and_then(Value::as_str).map(str::to_string);
        let old_strip = previous.as_ref().and_then(|m| m.get("strip_prefix")).and_then(Value::as_bool) == Some(true);
        let mut value = previous.unwrap_or_default();
        value.insert("service".into(), Value::String(service.into()));
        if strip_prefix {
            value.insert("strip_prefix".into(), Value::Bool(true));
        } else {
            value.remove("strip_prefix");
        }
        let put = TxnOp::put(key.clone(), Value::Object(value).to_string(), None);
        if force {
            within(self.timeout, self.client.txn(Txn::new().and_then(vec![put]))).await?;
        } else {
            let exists = Compare::version(self.keys.service(service), CompareOp::Greater, 0);
            let resp = within(self.timeout, self.client.txn(Txn::new().when(vec![exists]).and_then(vec![put]))).await?;
            if !resp.succeeded() {
                return Err(OpsError::Refused(format!(
                    "service {service:?} does not exist: define it first with `reveille service set {service} --backend ADDR`, or use --force"
                )));
            }
        }
        let strips = if strip_prefix { ", strips the prefix" } else { "" };
        Ok(match old_service {
            Some(old) if old == service && old_strip == strip_prefix => {
                format!("route {pattern} -> {service} (unchanged{strips})")
            }
            Some(old) if old == service => format!("route {pattern} -> {service} (changed{strips})"),
            Some(old) => format!("route {pattern} -> {service} (was {old}{strips})"),
            None => format!("route {pattern} -> {service} (new{strips})"),
        })
    }

    /// `route rm HOST[/PREFIX/]`: removes the route's key, in its canonical form and, for a path route, as
    /// written by hand without the trailing slash (both mean the same route).
    pub(super) async fn route_rm(&mut self, host: &str) -> Result<String, OpsError> {
        let pattern = RouteKey::parse(host)?;
        let canonical = pattern.to_string();
        let mut deleted = within(self.timeout, self.client.delete(self.keys.route(&canonical), None)).await?.deleted();
        if let Some(bare) = canonical.strip_suffix('/').filter(|_| pattern.path.is_some()) {
            deleted += within(self.timeout, self.client.delete(self.keys.route(bare), None)).await?.deleted();
        }
        if deleted == 0 {
            return Err(OpsError::NotFound(format!("no route for {pattern}")));
        }
        Ok(format!("route {pattern} removed"))
    }

    pub(super) async fn route_ls(&mut self) -> Result<String, OpsError> {
        let (routes, services) = list(&mut self.client, &self.keys, self.timeout).await?;
        let width = routes.keys().map(String::len).max().unwrap_or(4).max(4);
        let mut out = format!("{:width$}  SERVICE\n", "HOST");
        for (host, value) in &routes {
            let service = value.get("service").and_then(Value::as_str).unwrap_or("?");
            let strips =
                if value.get("strip_prefix") == Some(&Value::Bool(true)) { "  (strips the prefix)" } else { "" };
            let note = if services.contains_key(service) { "" } else { "  (service not defined: answers 503)" };
            let _ = writeln!(out, "{host:width$}  {service}{strips}{note}");
        }
        Ok(out)
    }

    /// `service set NAME [--backend ADDR...] [--container C --port N ...]`: the given fields are merged into the
    /// existing value (other fields are kept), and the result is validated like the routes file before it is
    /// written (its `runtime` or `docker_host` against `hosts`, the config's runtimes when `--config` is given).
    pub(super) async fn service_set(
        &mut self,
        name: &str,
        fields: Map<String, Value>,
        hosts: &DockerHostNames,
    ) -> Result<String, OpsError> {
        validate_service_name(name)?;
        if fields.is_empty() {
            return Err(OpsError::Refused(
                "nothing to set: give --backend and/or --container with --port, or --unset FIELD".into(),
            ));
        }
        let key = self.keys.service(name);
        let previous = self.object(&key).await?;
        let existed = previous.is_some();
        let mut value = previous.unwrap_or_default();
        for (k, v) in fields {
            if v.is_null() {
                value.remove(&k);
            } else {
                value.insert(k, v);
            }
        }
        let merged = Value::Object(value);
        let spec: ServiceSpec = serde_json::from_value(merged.clone())
            .map_err(|e| OpsError::Refused(format!("service {name}: invalid value: {e}")))?;
        let service = spec.to_service(name, hosts).map_err(|(_, e)| e)?;
        within(self.timeout, self.client.put(key, merged.to_string(), None)).await?;
        let kind = |c: &ContainerSpec| if c.swarm.is_some() { "swarm service" } else { "container" };
        let what = match (service.backends(), service.container()) {
            ([], Some(c)) => format!("{} {}{}{}", kind(c), c.container, on_host(c), after(c)),
            (b, Some(c)) => format!("{} ({} {}{}{})", join(b), kind(c), c.container, on_host(c), after(c)),
            (b, None) => join(b),
        };
        Ok(format!("service {name}: {what} ({})", if existed { "updated" } else { "new" }))
    }

    /// `service rm NAME`: refused while routes point to it, unless `force` (those routes then answer 503).
    pub(super) async fn service_rm(&mut self, name: &str, force: bool) -> Result<String, OpsError> {
        validate_service_name(name)?;
        let (routes, _) = list(&mut self.client, &self.keys, self.timeout).await?;
        let users: Vec<&str> = routes
            .iter()
            .filter(|(_, v)| v.get("service").and_then(Value::as_str) == Some(name))
            .map(|(h, _)| h.as_str())
            .collect();
        if !users.is_empty() && !force {
            return Err(OpsError::Refused(format!(
                "service {name:?} is used by {} route(s): {}; remove them first, or use --force (they will answer 503)",
                users.len(),
                users.join(", ")
            )));
        }
        let resp = within(self.timeout, self.client.delete(self.keys.service(name), None::<DeleteOptions>)).await?;
        if resp.deleted() == 0 {
            return Err(OpsError::NotFound(format!("no service {name:?}")));
        }
        Ok(format!("service {name} removed"))
    }

    pub(super) async fn service_ls(&mut self) -> Result<String, OpsError> {
        let (routes, services) = list(&mut self.client, &self.keys, self.timeout).await?;
        let width = services.keys().map(String::len).max().unwrap_or(7).max(7);
        let mut out = format!("{:width$}  ROUTES  BACKENDS\n", "SERVICE");
        for (name, value) in &services {
            // A backend is an address, or `{"address", "weight"}`.
            let backends: Vec<String> = value
                .get("backends")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|b| match (b.as_str(), b.get("address").and_then(Value::as_str)) {
                            (Some(addr), _) => Some(addr.to_string()),
                            (None, Some(addr)) => Some(match b.get("weight").and_then(Value::as_u64) {
                                Some(w) => format!("{addr} (weight {w})"),
                                None => addr.to_string(),
                            }),
                            (None, None) => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let n = routes.values().filter(|v| v.get("service").and_then(Value::as_str) == Some(name)).count();
            // A container, or a Swarm service (`swarm_service`), named the same way.
            let kind = if value.get("swarm_service").is_some() { "swarm service" } else { "container" };
            let container = value.get("container").or_else(|| value.get("swarm_service")).and_then(Value::as_str);
            let mut shown = backends.join(", ");
            if let Some(c) = container {
                let port = value.get("port").and_then(Value::as_u64).map(|p| format!(":{p}")).unwrap_or_default();
                if !shown.is_empty() {
                    shown.push(' ');
                }
                let host = value
                    .get("runtime")
                    .or_else(|| value.get("docker_host"))
                    .and_then(Value::as_str)
                    .filter(|h| *h != crate::runtime::DEFAULT_HOST)
                    .map(|h| format!(" on {h}"))
                    .unwrap_or_default();
                // `depends_on`, as written: names, or tables with a container.
                let deps: Vec<&str> = value
                    .get("depends_on")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|d| d.as_str().or_else(|| d["container"].as_str())).collect())
                    .unwrap_or_default();
                let after = if deps.is_empty() { String::new() } else { format!(" after {}", deps.join(", ")) };
                shown.push_str(&format!("[{kind} {c}{port}{host}{after}]"));
            }
            let _ = writeln!(out, "{name:width$}  {n:>6}  {shown}");
        }
        Ok(out)
    }
}

impl Ops {
    /// `service keep-awake NAME --for DURATION`: writes the service's keep-awake key (`crate::cluster`'s) under a
    /// lease that ends with it; `0s` removes it. Refused for a service etcd holds without a container, and, unless
    /// `force`, for one etcd does not hold (a service of a routes file: the admin API's `keep-awake` also works
    /// without etcd).
    pub(super) async fn service_keep_awake(&mut self, name: &str, time: &str, force: bool) -> Result<String, OpsError> {
        validate_service_name(name)?;
        let bad = |why: String| OpsError::Refused(format!("--for {time:?} {why}"));
        if time.trim_start().starts_with('-') {
            return Err(bad("is negative: use 0s to end the keep-awake".into()));
        }
        let time = humantime::parse_duration(time.trim())
            .map_err(|e| bad(format!("is not a duration ({e}): for example 30m or 2h")))?;
        match self.object(&self.keys.service(name)).await? {
            Some(service) if !service.contains_key("container") && !service.contains_key("swarm_service") => {
                return Err(OpsError::Refused(format!(
                    "service {name:?} has no container: it is never stopped, nothing to keep awake"
                )));
            }
            Some(_) => {}
            None if force => {}
            None => {
                return Err(OpsError::NotFound(format!(
                    "no service {name:?} in etcd (one of a routes file? use --force, or the admin API's keep-awake)"
                )));
            }
        }
        let key = self.keys.keep_awake(name);
        // Each keep-awake has a lease of its own, ending with it: the one it replaces (or ends) is revoked, and
        // so is a new one whose put failed, so leases do not pile up over renewals.
        if time.is_zero() {
            let resp =
                within(self.timeout, self.client.delete(key, Some(DeleteOptions::new().with_prev_key()))).await?;
            for kv in resp.prev_kvs() {
                if kv.lease() != 0 {
                    let _ = within(self.timeout, self.client.lease_revoke(kv.lease())).await;
                }
            }
            return Ok(if resp.deleted() == 0 {
                format!("service {name}: was not kept awake")
            } else {
                format!("service {name}: no longer kept awake")
            });
        }
        let until = std::time::SystemTime::now().checked_add(time).ok_or_else(|| bad("is too long".into()))?;
        let lease = within(self.timeout, self.client.lease_grant(keep_awake_lease_ttl(until), None)).await?.id();
        let value = KeepAwakeValue::new(until, "cli").to_json();
        let options = PutOptions::new().with_lease(lease).with_prev_key();
        let put = match within(self.timeout, self.client.put(key, value, Some(options))).await {
            Ok(put) => put,
            Err(e) => {
                let _ = within(self.timeout, self.client.lease_revoke(lease)).await;
                return Err(e.into());
            }
        };
        if let Some(old) = put.prev_key().map(|kv| kv.lease()).filter(|&l| l != 0) {
            let _ = within(self.timeout, self.client.lease_revoke(old)).await;
        }
        Ok(format!("service {name}: kept awake until {}", rfc3339(until)))
    }

    /// `cert put NAME --cert FILE --key FILE`: the pair is checked (parses, key matches the certificate) before
    /// it is written as `{"cert": ..., "key": ...}`.
    pub(super) async fn cert_put(&mut self, name: &str, cert_pem: &str, key_pem: &str) -> Result<String, OpsError> {
        let key = self.keys.cert(name);
        let value = serde_json::to_vec(&CertValue { cert: cert_pem.into(), key: key_pem.into(), acme: None })
            .map_err(|e| OpsError::Refused(e.to_string()))?;
        let cert = crate::tls::etcd::parse_value(name, &key, &value, None)?;
        let now = crate::tls::cert::now();
        let existed = !within(self.timeout, self.client.get(key.as_str(), None)).await?.kvs().is_empty();
        within(self.timeout, self.client.put(key, value, None)).await?;
        let mut out = format!(
            "certificate {name}: {} until {} ({})",
            cert.names_display(),
            crate::tls::cert::format_time(cert.not_after),
            if existed { "replaced" } else { "new" }
        );
        if cert.expired(now) {
            out.push_str("\nwarning: this certificate has already expired");
        }
        Ok(out)
    }

    /// `cert ls`: every certificate in etcd with its names and expiry; values that do not load are shown with
    /// the reason.
    pub(super) async fn cert_ls(&mut self) -> Result<String, OpsError> {
        let (start, end) = self.keys.certs_range();
        let (_, kvs) = list_range(&self.client, &start, &end, self.timeout).await?;
        // ACME's recorded failures per name (a failing renewal shows with its certificate).
        let failures_prefix = self.keys.acme_failure("");
        let failures_end = format!("{}0", failures_prefix.trim_end_matches('/'));
        let (_, failure_kvs) = list_range(&self.client, &failures_prefix, &failures_end, self.timeout).await?;
        let failures: BTreeMap<String, Value> = failure_kvs
            .iter()
            .filter_map(|kv| {
                let host = String::from_utf8_lossy(kv.key()).strip_prefix(failures_prefix.as_str())?.to_string();
                Some((host, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect();
        let now = crate::tls::cert::now();
        let mut rows = Vec::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let Some(name) = self.keys.cert_name(&key) else { continue };
            // Certificates ACME obtained say so; reveille renews them once two thirds of their lifetime have
            // passed (or `[acme] renew_before` ahead of expiry, which this command does not read).
            let acme = serde_json::from_slice::<Value>(kv.value()).ok().is_some_and(|v| v.get("acme").is_some());
            let row = match crate::tls::etcd::parse_value(name, &key, kv.value(), None) {
                Ok(c) => {
                    let days = (c.not_after - now).div_euclid(86_400);
                    let left = if c.expired(now) { "EXPIRED".to_string() } else { format!("{days}d") };
                    let by = if acme {
                        let renew = c.not_before + (c.not_after - c.not_before) * 2 / 3;
                        let due = if now >= renew { " DUE" } else { "" };
                        let failing = crate::acme::cert_host(name)
                            .and_then(|host| failures.get(host))
                            .map(|f| {
                                let reason = f.get("reason").and_then(Value::as_str).unwrap_or("?");
                                let times = f.get("failures").and_then(Value::as_u64).unwrap_or(1);
                                format!(", failing: {reason} ({times}x)")
                            })
                            .unwrap_or_default();
                        format!("acme, renews {}{due}{failing}", crate::tls::cert::format_time(renew))
                    } else {
                        "operator".to_string()
                    };
                    (name.to_string(), crate::tls::cert::format_time(c.not_after), left, by, c.names_display())
                }
                Err(e) => (name.to_string(), "-".into(), "INVALID".into(), "-".into(), e.to_string()),
            };
            rows.push(row);
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
        let by_width = rows.iter().map(|r| r.3.len()).max().unwrap_or(2).max(2);
        let mut out = format!("{:width$}  {:20}  {:>7}  {:by_width$}  NAMES\n", "NAME", "EXPIRES", "LEFT", "BY");
        for (name, expires, left, by, names) in rows {
            let _ = writeln!(out, "{name:width$}  {expires:20}  {left:>7}  {by:by_width$}  {names}");
        }
        Ok(out)
    }

    /// `cert rm NAME`.
    pub(super) async fn cert_rm(&mut self, name: &str) -> Result<String, OpsError> {
        crate::tls::etcd::validate_name(name)?;
        let resp = within(self.timeout, self.client.delete(self.keys.cert(name), None)).await?;
        if resp.deleted() == 0 {
            return Err(OpsError::NotFound(format!("no certificate {name:?}")));
        }
        Ok(format!("certificate {name} removed"))
    }
}

/// Reads every route and service under the prefix: `(routes, services)` as raw JSON values.
async fn list(
    client: &mut Client,
    keys: &Keys,
    timeout: Duration,
) -> Result<(BTreeMap<String, Value>, BTreeMap<String, Value>), EtcdError> {
    let (start, end) = keys.watched_range();
    let (_, kvs) = list_range(client, &start, &end, timeout).await?;
    let mut routes = BTreeMap::new();
    let mut services = BTreeMap::new();
    for kv in &kvs {
        let key = kv.key_str().unwrap_or_default();
        let value = serde_json::from_slice(kv.value())
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(kv.value()).into()));
        match keys.kind(key) {
            KeyKind::Route(h) => {
                routes.insert(h.to_string(), value);
            }
            KeyKind::Service(n) => {
                services.insert(n.to_string(), value);
            }
            KeyKind::Other => {}
        }
    }
    Ok((routes, services))
}

impl Ops {
    /// `status`: the cluster as etcd holds it (replicas, decider, tenants' state and activity).
    pub(super) async fn status(&mut self, json: bool) -> Result<String, OpsError> {
        let status = crate::cluster::read_status(&self.client, &self.keys, self.timeout).await?;
        if json {
            return serde_json::to_string_pretty(&status).map_err(|e| OpsError::Refused(e.to_string()));
        }
        Ok(status.render())
    }
}

fn join(backends: &[crate::routes::Backend]) -> String {
    backends.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", ")
}

/// " after A, B" for a container with `depends_on`.
fn after(c: &ContainerSpec) -> String {
    if c.depends_on.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = c.depends_on.iter().map(|d| d.container.as_str()).collect();
    format!(" after {}", names.join(", "))
}

/// " on runtime X" for a container off the default runtime (a Docker host, Podman or a swarm: `runtime` or its
/// older name `docker_host`).
fn on_host(c: &ContainerSpec) -> String {
    match &c.docker_host {
        Some(h) if h != crate::runtime::DEFAULT_HOST => format!(" on runtime {h}"),
        _ => String::new(),
    }
}
