//! Configuration: the `reveille.toml` file, command-line flags, and how they combine (flags win).
//!
//! `file` holds the settings as written, in the file and on the command line alike (one type per section);
//! this module merges the two and turns the result into a [`Config`], the plain values the rest of the program
//! takes, built from each concern's own settings (`proxy`, `tls`, `passivation`, `etcd`), with defaults filled
//! in and every value checked. The command line's definitions are `cli`'s; it flattens [`ConfigFile`] into
//! `serve` and [`EtcdSection`] into the etcd commands.

mod error;
mod file;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::etcd::EtcdConfig;
use crate::proxy::Settings;
use crate::runtime::{check_host_name, ClientTls, DockerEndpoint, RuntimeConfig, RuntimeKind, DEFAULT_HOST};

pub(crate) use error::ConfigError;
pub(crate) use file::{
    AcmeSection, AdminSection, DockerSection, EtcdSection, LimitsSection, LogFormat, Merge, PassivationSection,
    RuntimeSection, TlsSection, UpstreamSection,
};
pub use file::{ConfigFile, Scheduler};

/// The configuration in force, after file and flags are combined.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain-HTTP listener of the proxy.
    pub http: SocketAddr,
    /// HTTPS listener of the proxy, if any.
    pub https: Option<SocketAddr>,
    /// Certificates and redirects.
    pub tls: crate::tls::Settings,
    /// Admin listener (health, metrics, API).
    pub admin: SocketAddr,
    /// Routes file, watched for changes.
    pub routes: Option<PathBuf>,
    /// How long a changed routes file must stay unchanged (size, modification time, inode, content) before it
    /// is applied, so a file written in place is not applied half-written.
    pub routes_settle: Duration,
    /// The largest file reveille reads (routes, certificates and keys, templates, token and TLS files);
    /// larger ones are refused like invalid ones.
    pub max_file_size: u64,
    /// etcd route source, if configured.
    pub etcd: Option<EtcdConfig>,
    /// Runtime worker threads; 0 = one per core.
    pub threads: usize,
    /// How worker threads share the work (when there is more than one).
    pub scheduler: Scheduler,
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `info,reveille::access=off`.
    pub log_level: String,
    /// Where and how the access log is written (its format follows `log_format`); whether it is written at
    /// all is `proxy.access_log`.
    pub access_log: crate::access_log::Settings,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Data-path limits and timeouts.
    pub proxy: Settings,
    /// Passivation defaults and the Docker endpoint.
    pub passivation: crate::passivation::Settings,
    /// How often each replica writes its use of the tenants that changed to etcd.
    pub activity_interval: Duration,
    /// Coordination of several replicas through etcd (used whenever etcd is configured).
    pub cluster: crate::cluster::Settings,
    /// Certificates by ACME, when configured.
    pub acme: Option<crate::acme::Settings>,
    /// The bearer token the admin API's commands require, if any.
    pub admin_token: Option<String>,
    /// The admin listener's limits and the host names it answers to.
    pub admin_settings: crate::admin::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: ([0, 0, 0, 0], 8080).into(),
            https: None,
            tls: crate::tls::Settings::default(),
            admin: ([127, 0, 0, 1], 9090).into(),
            routes: None,
            routes_settle: Duration::from_millis(100),
            max_file_size: crate::fsread::DEFAULT_MAX_SIZE,
            etcd: None,
            threads: 0,
            scheduler: Scheduler::PerCore,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            access_log: crate::access_log::Settings::default(),
            shutdown_grace: Duration::from_secs(30),
            proxy: Settings::default(),
            passivation: crate::passivation::Settings::default(),
            activity_interval: Duration::from_secs(5),
            cluster: crate::cluster::Settings::default(),
            acme: None,
            admin_token: None,
            admin_settings: crate::admin::Settings::default(),
        }
    }
}

impl Config {
    /// The number of worker threads `threads` asks for: itself, or one per core for 0.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Combines defaults, an optional config file and flags (in rising precedence).
    pub fn resolve(file: Option<&Path>, flags: &ConfigFile) -> Result<Self, ConfigError> {
        // The config file itself is read before its own `max_file_size` is known: the flag's, or the default.
        let mut merged = match file {
            Some(p) => ConfigFile::load(p, flags.server.max_file_size.unwrap_or(crate::fsread::DEFAULT_MAX_SIZE))?,
            None => ConfigFile::default(),
        };
        merged.merge(flags.clone());
        Self::from_settings(merged)
    }

    /// The settings written (file and flags merged) over the defaults, checked.
    fn from_settings(f: ConfigFile) -> Result<Self, ConfigError> {
        let d = Config::default();
        let max_file_size = f.server.max_file_size.unwrap_or(d.max_file_size);
        let log_format = f.log.format.unwrap_or(d.log_format);
        let cfg = Config {
            http: f.server.http.unwrap_or(d.http),
            https: f.server.https,
            tls: resolve_tls(f.tls),
            admin: f.server.admin.unwrap_or(d.admin),
            routes: f.server.routes,
            routes_settle: f.server.routes_settle.unwrap_or(d.routes_settle),
            max_file_size,
            etcd: f.etcd.resolve().map(|mut e| {
                e.max_file_size = max_file_size;
                e
            }),
            threads: f.server.threads.unwrap_or(d.threads),
            scheduler: f.server.scheduler.unwrap_or(d.scheduler),
            log_format,
            log_level: f.log.level.unwrap_or(d.log_level),
            access_log: crate::access_log::Settings {
                format: match log_format {
                    LogFormat::Text => crate::access_log::Format::Text,
                    LogFormat::Json => crate::access_log::Format::Json,
                },
                file: f.log.access_log_file,
                buffer: f.log.access_log_buffer.unwrap_or(d.access_log.buffer),
            },
            shutdown_grace: f.server.shutdown_grace.unwrap_or(d.shutdown_grace),
            proxy: resolve_proxy(
                f.limits,
                f.upstream,
                f.log.access_log,
                f.server.trusted_proxies,
                f.server.http1,
                f.server.http2,
            ),
            passivation: resolve_passivation(f.passivation, &f.docker, &f.runtimes, f.cluster.node, max_file_size)?,
            activity_interval: f.cluster.activity_interval.unwrap_or(d.activity_interval),
            cluster: crate::cluster::Settings {
                lease_ttl: f.cluster.lease_ttl.unwrap_or(d.cluster.lease_ttl),
                stop_veto: f.cluster.stop_veto.unwrap_or(d.cluster.stop_veto),
            },
            acme: f.acme.map(resolve_acme),
            admin_token: resolve_admin_token(&f.admin, max_file_size)?,
            admin_settings: resolve_admin(f.admin)?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// What the settings require of each other, and the ranges the proxy's own settings must be in.
    fn check(&self) -> Result<(), ConfigError> {
        if self.activity_interval.is_zero() {
            return Err(ConfigError::Invalid("activity_interval must be greater than zero".into()));
        }
        if self.cluster.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "cluster lease_ttl must be at least 2s (etcd grants no shorter lease)".into(),
            ));
        }
        if self.routes.is_none() && self.etcd.is_none() {
            return Err(ConfigError::NoRouteSource);
        }
        if self.https.is_some() && self.tls.certs_dir.is_none() && !(self.etcd.is_some() && self.tls.etcd) {
            return Err(ConfigError::Invalid(
                "the HTTPS listener needs certificates: give --certs DIR (`certs` in [tls]) or etcd".into(),
            ));
        }
        if self.routes_settle.is_zero() || self.max_file_size == 0 {
            return Err(ConfigError::Invalid("routes_settle and max_file_size must be greater than zero".into()));
        }
        if self.tls.handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid("handshake_timeout must be greater than zero".into()));
        }
        let p = &self.proxy;
        for (name, d) in [
            ("header_read_timeout", p.header_read_timeout),
            ("idle_timeout", p.idle_timeout),
            ("connect_timeout", p.connect_timeout),
            ("response_timeout", p.response_timeout),
            ("tunnel_idle_timeout", p.tunnel_idle_timeout),
            ("body_timeout", p.body_timeout),
            ("upstream_read_timeout", p.upstream_read_timeout),
            ("send_timeout", p.send_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be greater than zero")));
            }
        }
        if p.max_connections == 0 || p.max_header_size < 1024 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1 and max_header_size at least 1024".into(),
            ));
        }
        if p.max_header_count < 8 || p.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_header_count must be at least 8 and h2_max_concurrent_streams at least 1".into(),
            ));
        }
        if self.access_log.buffer < 1024 {
            return Err(ConfigError::Invalid("access_log_buffer must be at least 1024 (bytes)".into()));
        }
        if let Some(a) = &self.acme {
            check_acme(a, self)?;
        }
        Ok(())
    }
}

impl EtcdSection {
    /// The etcd client's settings over their defaults; `None` when no endpoint is given.
    pub(crate) fn resolve(self) -> Option<EtcdConfig> {
        let mut c = EtcdConfig::new(self.endpoints?);
        if let Some(p) = self.prefix {
            c.prefix = crate::etcd::Keys::new(&p).prefix().to_string();
        }
        c.user = self.user;
        c.password = self.password;
        c.ca = self.ca;
        c.cert = self.cert;
        c.key = self.key;
        if let Some(t) = self.timeout {
            c.timeout = t;
        }
        Some(c)
    }
}

/// `[tls]` over the defaults.
fn resolve_tls(t: TlsSection) -> crate::tls::Settings {
    let d = crate::tls::Settings::default();
    crate::tls::Settings {
        certs_dir: t.certs,
        etcd: t.etcd.unwrap_or(d.etcd),
        default_cert: t.default_cert,
        redirect: t.redirect.unwrap_or(d.redirect),
        redirect_port: t.redirect_port,
        handshake_timeout: t.handshake_timeout.unwrap_or(d.handshake_timeout),
    }
}

/// The data path's settings: `[limits]`, `[upstream]`, and the keys of `[log]` and `[server]` it reads.
fn resolve_proxy(
    l: LimitsSection,
    u: UpstreamSection,
    access_log: Option<bool>,
    trusted_proxies: Option<Vec<ipnet::IpNet>>,
    http1: Option<file::Http1>,
    http2: Option<crate::proxy::Http2Server>,
) -> Settings {
    let d = Settings::default();
    Settings {
        header_read_timeout: l.header_read_timeout.unwrap_or(d.header_read_timeout),
        max_header_size: l.max_header_size.unwrap_or(d.max_header_size),
        idle_timeout: l.idle_timeout.unwrap_or(d.idle_timeout),
        max_header_count: l.max_header_count.unwrap_or(d.max_header_count),
        h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(d.h2_max_concurrent_streams),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_connections_per_address: l.max_connections_per_address.unwrap_or(d.max_connections_per_address),
        connect_timeout: u.connect_timeout.unwrap_or(d.connect_timeout),
        response_timeout: u.response_timeout.unwrap_or(d.response_timeout),
        pool_idle_timeout: u.pool_idle_timeout.unwrap_or(d.pool_idle_timeout),
        pool_max_idle_per_backend: u.pool_max_idle_per_backend.unwrap_or(d.pool_max_idle_per_backend),
        tunnel_idle_timeout: l.tunnel_idle_timeout.unwrap_or(d.tunnel_idle_timeout),
        body_timeout: l.body_timeout.unwrap_or(d.body_timeout),
        min_body_rate: l.min_body_rate.unwrap_or(d.min_body_rate),
        min_body_rate_grace: l.min_body_rate_grace.unwrap_or(d.min_body_rate_grace),
        request_buffer_size: l.request_buffer_size.unwrap_or(d.request_buffer_size),
        upstream_read_timeout: u.read_timeout.unwrap_or(d.upstream_read_timeout),
        upstream_quickack: u.quickack.unwrap_or(d.upstream_quickack),
        upstream_h2_keep_alive_interval: d.upstream_h2_keep_alive_interval,
        upstream_h2_keep_alive_timeout: d.upstream_h2_keep_alive_timeout,
        h2_keep_alive_interval: d.h2_keep_alive_interval,
        h2_keep_alive_timeout: d.h2_keep_alive_timeout,
        send_timeout: l.send_timeout.unwrap_or(d.send_timeout),
        // "0" is written for "no limit".
        request_timeout: l.request_timeout.or(d.request_timeout).filter(|t| !t.is_zero()),
        overload_timeout: l.overload_timeout.unwrap_or(d.overload_timeout),
        access_log: access_log.unwrap_or(d.access_log),
        http1_server: match http1 {
            None => d.http1_server,
            Some(file::Http1::Reveille) => crate::proxy::Http1Server::Reveille,
            Some(file::Http1::Hyper) => crate::proxy::Http1Server::Hyper,
        },
        http2: http2.unwrap_or(d.http2),
        trusted_proxies: trusted_proxies.unwrap_or(d.trusted_proxies),
    }
}

/// The admin token: from `token_file` (`--admin-token-file`), else `token`.
fn resolve_admin_token(section: &AdminSection, max_size: u64) -> Result<Option<String>, ConfigError> {
    let token = match section.token_file.as_deref() {
        Some(path) => {
            let text = crate::fsread::read_to_string(path, max_size)
                .map_err(|e| ConfigError::Invalid(format!("admin token file {}: {e}", path.display())))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => section.token.clone(),
    };
    match token {
        Some(t) if t.is_empty() => Err(ConfigError::Invalid("the admin token is empty".into())),
        Some(t) if t.len() < 16 => {
            Err(ConfigError::Invalid("the admin token is shorter than 16 characters: too easy to guess".into()))
        }
        t => Ok(t),
    }
}

/// `[admin]`'s limits and names over the defaults; checked.
fn resolve_admin(a: AdminSection) -> Result<crate::admin::Settings, ConfigError> {
    let d = crate::admin::Settings::default();
    let s = crate::admin::Settings {
        header_read_timeout: a.header_read_timeout.unwrap_or(d.header_read_timeout),
        idle_timeout: a.idle_timeout.unwrap_or(d.idle_timeout),
        max_connections: a.max_connections.unwrap_or(d.max_connections),
        max_event_subscribers: a.max_event_subscribers.unwrap_or(d.max_event_subscribers),
        send_timeout: a.send_timeout.unwrap_or(d.send_timeout),
        allowed_hosts: a.allowed_hosts.unwrap_or(d.allowed_hosts),
    };
    for (name, v) in [
        ("header_read_timeout", s.header_read_timeout),
        ("idle_timeout", s.idle_timeout),
        ("send_timeout", s.send_timeout),
    ] {
        if v.is_zero() {
            return Err(ConfigError::Invalid(format!("[admin] {name} must be greater than zero")));
        }
    }
    if s.max_connections == 0 || s.max_event_subscribers == 0 {
        return Err(ConfigError::Invalid(
            "[admin] max_connections and max_event_subscribers must be at least 1".into(),
        ));
    }
    Ok(s)
}

/// What ACME needs of the rest of the configuration.
fn check_acme(a: &crate::acme::Settings, cfg: &Config) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(format!("[acme] {m}")));
    if !a.directory.starts_with("https://") {
        return invalid(&format!("directory {:?} is not an https:// URL (ACME is spoken over HTTPS)", a.directory));
    }
    if cfg.https.is_none() {
        return invalid("needs an HTTPS listener (--https) to serve the certificates it obtains");
    }
    if cfg.etcd.is_none() && cfg.tls.certs_dir.is_none() {
        return invalid("needs somewhere to keep certificates: etcd, or a certificates directory ([tls] certs)");
    }
    if cfg.etcd.is_some() && !cfg.tls.etcd {
        return invalid("stores certificates in etcd, which [tls] etcd = false does not load");
    }
    for (name, d) in
        [("check_interval", a.check_interval), ("retry_after", a.retry_after), ("order_timeout", a.order_timeout)]
    {
        if d.is_zero() {
            return invalid(&format!("{name} must be greater than zero"));
        }
    }
    let b = &a.budget;
    if !(0.0..=1.0).contains(&b.on_demand_share) {
        return invalid(&format!("on_demand_share {} is not between 0 and 1", b.on_demand_share));
    }
    if a.on_demand && b.on_demand_share > 0.0 {
        for (name, max) in [("max_per_domain", b.per_domain), ("max_orders", b.per_account)] {
            if b.on_demand_part(max) == 0 {
                return invalid(&format!(
                    "on_demand_share {} of {name} {max} leaves on-demand orders none: raise {name}, or set \
                     on_demand_share = 0 (no on-demand orders) or 1 (no reserve for eager orders and renewals)",
                    b.on_demand_share
                ));
            }
        }
    }
    if let Some(roots) = &a.ca_roots {
        if !roots.is_file() {
            return invalid(&format!("ca_roots {} is not a readable file", roots.display()));
        }
    }
    if let Some(e) = &a.eab {
        if e.kid.is_empty() || e.hmac_key.is_empty() {
            return invalid("eab needs kid and hmac_key");
        }
    }
    Ok(())
}

/// `[acme]` over the defaults.
fn resolve_acme(a: AcmeSection) -> crate::acme::Settings {
    let d = crate::acme::Settings::default();
    crate::acme::Settings {
        directory: a.directory.unwrap_or(d.directory),
        email: a.email,
        eab: a.eab.map(|e| crate::acme::Eab { kid: e.kid, hmac_key: e.hmac_key }),
        ca_roots: a.ca_roots,
        hosts: a.hosts.unwrap_or(d.hosts),
        challenge: a.challenge.unwrap_or(d.challenge),
        eager: a.eager.unwrap_or(d.eager),
        on_demand: a.on_demand.unwrap_or(d.on_demand),
        on_demand_wait: a.on_demand_wait.unwrap_or(d.on_demand_wait),
        on_demand_per_client: a.on_demand_per_client.unwrap_or(d.on_demand_per_client),
        on_demand_per_minute: a.on_demand_per_minute.unwrap_or(d.on_demand_per_minute),
        renew_before: a.renew_before,
        check_interval: a.check_interval.unwrap_or(d.check_interval),
        retry_after: a.retry_after.unwrap_or(d.retry_after),
        order_timeout: a.order_timeout.unwrap_or(d.order_timeout),
        budget: crate::acme::Budget {
            per_domain: a.max_per_domain.unwrap_or(d.budget.per_domain),
            domain_window: a.domain_window.unwrap_or(d.budget.domain_window),
            per_account: a.max_orders.unwrap_or(d.budget.per_account),
            account_window: a.account_window.unwrap_or(d.budget.account_window),
            on_demand_share: a.on_demand_share.unwrap_or(d.budget.on_demand_share),
        },
    }
}

/// `[passivation]` over the defaults, with the Docker hosts and this replica's name it carries; checked.
fn resolve_passivation(
    p: PassivationSection,
    docker: &DockerSection,
    runtimes: &BTreeMap<String, RuntimeSection>,
    node: Option<String>,
    max_file_size: u64,
) -> Result<crate::passivation::Settings, ConfigError> {
    let d = crate::passivation::Settings::default();
    let page = match &p.page_template {
        Some(path) => crate::passivation::Page::load(path, max_file_size).map_err(ConfigError::Invalid)?,
        None => d.page,
    };
    let s = crate::passivation::Settings {
        idle_timeout: p.idle_timeout.unwrap_or(d.idle_timeout),
        wake_timeout: p.wake_timeout.unwrap_or(d.wake_timeout),
        max_held: p.max_held.unwrap_or(d.max_held),
        page_after: p.page_after.unwrap_or(d.page_after),
        stop_timeout: p.stop_timeout.or(d.stop_timeout),
        probe_interval: p.probe_interval.unwrap_or(d.probe_interval),
        status_path: p.status_path.unwrap_or(d.status_path),
        page,
        docker: docker.endpoint.clone(),
        docker_hosts: docker_hosts(docker)?,
        runtimes: named_runtimes(runtimes, docker)?,
        docker_timeout: docker.timeout.unwrap_or(d.docker_timeout),
        node: node.unwrap_or(d.node),
    };
    for (name, v) in [("wake_timeout", s.wake_timeout), ("probe_interval", s.probe_interval)] {
        if v.is_zero() {
            return Err(ConfigError::Invalid(format!("[passivation] {name} must be greater than zero")));
        }
    }
    if s.docker_timeout.is_zero() {
        return Err(ConfigError::Invalid("[docker] timeout must be greater than zero".into()));
    }
    if s.node.is_empty() || s.node.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::Invalid(format!(
            "node name {:?} must be non-empty, without '/', spaces or control characters (it is part of etcd keys)",
            s.node
        )));
    }
    if s.max_held == 0 {
        return Err(ConfigError::Invalid("[passivation] max_held must be at least 1".into()));
    }
    if !s.status_path.starts_with('/') || s.status_path.len() < 2 {
        return Err(ConfigError::Invalid(format!(
            "[passivation] status_path {:?} must be a path starting with '/'",
            s.status_path
        )));
    }
    if s.docker.as_deref().is_some_and(|d| d.starts_with("https://")) {
        return Err(ConfigError::Invalid(format!(
            "the default docker endpoint {:?} is https, which needs client certificates: define it as a named \
             host in [docker.hosts.<name>] with `ca`, `cert` and `key`",
            s.docker.as_deref().unwrap_or_default()
        )));
    }
    DockerEndpoint::plain(s.docker.clone()).check().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Ok(s)
}

/// `[docker.hosts.<name>]`, checked: names, endpoints, and TLS files (readable, and only with https).
pub(crate) fn docker_hosts(docker: &DockerSection) -> Result<BTreeMap<String, DockerEndpoint>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, h) in &docker.hosts {
        let endpoint = named_endpoint(&format!("[docker.hosts.{name}]"), name, &h.endpoint, [&h.ca, &h.cert, &h.key])?;
        out.insert(name.clone(), endpoint);
    }
    Ok(out)
}

/// `[runtimes.<name>]`, checked as Docker hosts are, and against them: a name is defined in one table only.
pub(crate) fn named_runtimes(
    runtimes: &BTreeMap<String, RuntimeSection>,
    docker: &DockerSection,
) -> Result<BTreeMap<String, RuntimeConfig>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, r) in runtimes {
        let table = format!("[runtimes.{name}]");
        if docker.hosts.contains_key(name) {
            return Err(ConfigError::Invalid(format!(
                "{table} and [docker.hosts.{name}] both define runtime {name:?}: keep one"
            )));
        }
        let endpoint = named_endpoint(&table, name, &r.endpoint, [&r.ca, &r.cert, &r.key])?;
        out.insert(name.clone(), RuntimeConfig { kind: r.kind, endpoint });
    }
    Ok(out)
}

/// The names services may give as `runtime` (or `docker_host`), with their kinds: `[docker.hosts]` and
/// `[runtimes]`.
pub(crate) fn runtime_kinds(file: &ConfigFile) -> impl Iterator<Item = (&str, RuntimeKind)> {
    let hosts = file.docker.hosts.keys().map(|n| (n.as_str(), RuntimeKind::Docker));
    hosts.chain(file.runtimes.iter().map(|(n, r)| (n.as_str(), r.kind)))
}

/// One named endpoint of `table`, checked: its name, its URI, and its TLS files (`ca`, `cert`, `key`: all or
/// none, readable, and only with https).
fn named_endpoint(
    table: &str,
    name: &str,
    uri: &str,
    [ca, cert, key]: [&Option<PathBuf>; 3],
) -> Result<DockerEndpoint, ConfigError> {
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(format!("{table} {e}"));
    check_host_name(name).map_err(|e| invalid(&e))?;
    if name == DEFAULT_HOST {
        return Err(invalid(&"`default` is the host of --docker / [docker] endpoint: pick another name"));
    }
    let tls = match (ca, cert, key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls { ca: ca.clone(), cert: cert.clone(), key: key.clone() }),
        _ => return Err(invalid(&"`ca`, `cert` and `key` go together (all three, for an https:// endpoint)")),
    };
    let endpoint = DockerEndpoint { uri: Some(uri.to_string()), tls };
    endpoint.check().map_err(|e| invalid(&e))?;
    Ok(endpoint)
}
