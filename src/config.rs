//! Configuration: the `reveille.toml` file, command-line flags, and how they combine (flags win).
//!
//! Owns parsing and defaults; produces a [`Config`] the rest of the program takes as plain values, built from
//! each concern's own settings (`proxy`, `tls`, `passivation`, `etcd`). The command line's definitions are
//! `cli`'s; this module supplies the flags `serve` and the etcd commands share.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::etcd::EtcdConfig;
use crate::proxy::Settings;
use crate::runtime::{check_host_name, ClientTls, DockerEndpoint, DEFAULT_HOST};

/// A problem with the configuration; reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("no route source: give --routes FILE and/or --etcd URL (or `routes` in [server], `endpoints` in [etcd])")]
    NoRouteSource,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the proxy's worker threads share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// One single-threaded runtime per worker thread, each accepting and serving its own connections with its
    /// own backend pool: no work stealing, no cross-thread wake-ups on the data path.
    #[default]
    PerCore,
    /// tokio's work-stealing multi-thread runtime: a busy connection's work can move to an idle thread.
    Shared,
}

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

/// `reveille.toml`. Every key is optional; see `config/reveille.toml` for the documented example.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub etcd: EtcdSection,
    #[serde(default)]
    pub passivation: PassivationSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub docker: DockerSection,
    /// Present: certificates by ACME.
    pub acme: Option<AcmeSection>,
    #[serde(default)]
    pub admin: AdminSection,
}

/// `[admin]`: who may change things through the admin listener, the names it answers to, and its limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    /// Bearer token required by the admin API's commands (wake, sleep).
    pub token: Option<String>,
    /// A file holding that token (its first line); relative to the config file's directory.
    pub token_file: Option<PathBuf>,
    /// Host names accepted in `Host` besides IP literals and `localhost`.
    #[serde(default, deserialize_with = "de_allowed_hosts")]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_event_subscribers: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
}

/// `allowed_hosts` in the file; a bad entry is an error that names it.
fn de_allowed_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter().map(|s| parse_allowed_host(s)).collect::<Result<_, _>>().map(Some).map_err(serde::de::Error::custom)
}

/// A host name the admin listener answers to: a DNS name without scheme, port or path, kept in lowercase.
fn parse_allowed_host(s: &str) -> Result<String, String> {
    let name = s.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "admin allowed host {s:?} is not a host name (like admin.example.com: no scheme, port or path; IP \
             addresses and localhost are always accepted)"
        ))
    }
}

/// `[acme]`: certificates by ACME for routed hosts. Its presence turns ACME on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeSection {
    /// The CA's directory URL [default: Let's Encrypt's production directory].
    pub directory: Option<String>,
    pub email: Option<String>,
    /// External account binding: `{ kid = "...", hmac_key = "base64url" }`.
    pub eab: Option<AcmeEabSection>,
    /// PEM roots to trust for the CA's HTTPS (a test CA); relative to the config file's directory.
    pub ca_roots: Option<PathBuf>,
    /// `"flagged"` (services with `acme = true`) or `"all"` [default: flagged].
    pub hosts: Option<crate::acme::Hosts>,
    /// `"http-01"` or `"tls-alpn-01"` [default: http-01].
    pub challenge: Option<crate::acme::Challenge>,
    /// Order as soon as an allowed host's route appears; false: only at its first handshake [default: true].
    pub eager: Option<bool>,
    /// Order at the first handshake for an allowed name without a certificate [default: true].
    pub on_demand: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub on_demand_wait: Option<Duration>,
    /// On-demand orders one client address (IPv6: its /64) may start per minute, per replica; 0: no limit
    /// [default: 5].
    pub on_demand_per_client: Option<u32>,
    /// On-demand orders per minute, per replica; 0: no limit [default: 30].
    pub on_demand_per_minute: Option<u32>,
    /// The part of each budget (0 to 1) on-demand orders may use; the rest is kept for eager orders and
    /// renewals [default: 0.5].
    pub on_demand_share: Option<f64>,
    /// Renew this long before expiry [default: once two thirds of the lifetime have passed].
    #[serde(default, with = "humantime_serde")]
    pub renew_before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub order_timeout: Option<Duration>,
    /// New certificates per registered domain per `domain_window` [default: 40 per 7d].
    pub max_per_domain: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub domain_window: Option<Duration>,
    /// Orders per account per `account_window` [default: 250 per 3h].
    pub max_orders: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub account_window: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeEabSection {
    pub kid: String,
    pub hmac_key: String,
}

/// `[cluster]`: how replicas that share an etcd coordinate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterSection {
    /// The replica's etcd lease: a dead replica's activity stops counting, and a dead decider is replaced,
    /// after this long [default: 10s].
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// How long a stop waits for a replica that uses the tenant to veto it [default: 250ms].
    #[serde(default, with = "humantime_serde")]
    pub stop_veto: Option<Duration>,
}

/// `[docker]`: the Docker hosts besides the default one (`--docker`, `[passivation] docker`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DockerSection {
    /// `[docker.hosts.<name>]`: a service runs on one with `docker_host = "<name>"`.
    #[serde(default)]
    pub hosts: BTreeMap<String, DockerHostSection>,
}

/// `[docker.hosts.<name>]`: where that Docker Engine is. TLS files are relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DockerHostSection {
    /// `unix:///path`, `tcp://host:port`, `http://host:port` or `https://host:port` (with `ca`, `cert`, `key`).
    pub endpoint: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[tls]`: certificates and HTTPS redirects (the listener itself is `https` in `[server]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// Certificates directory; relative to the config file's directory.
    pub certs: Option<PathBuf>,
    /// Load certificates from etcd's `<prefix>certs/` too [default: true when etcd is configured].
    pub etcd: Option<bool>,
    /// Certificate (by name) for clients without SNI or asking for an unknown name.
    pub default_cert: Option<String>,
    /// Redirect plain-HTTP requests of every service to HTTPS.
    pub redirect: Option<bool>,
    /// Port written in redirect locations [default: the HTTPS listener's].
    pub redirect_port: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
}

/// `[passivation]`: defaults for passivated services (each can override the first five) and the Docker
/// endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassivationSection {
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub wake_timeout: Option<Duration>,
    pub max_held: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub page_after: Option<Duration>,
    /// `docker stop`'s grace for services without their own [default: the container's own `StopTimeout`].
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub probe_interval: Option<Duration>,
    pub status_path: Option<String>,
    /// Replaces the built-in "starting" page; relative to the config file's directory.
    pub page_template: Option<PathBuf>,
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`...
    pub docker: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub docker_timeout: Option<Duration>,
    /// This instance's name in etcd status keys [default: the host name].
    pub node: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub activity_interval: Option<Duration>,
}

/// `[etcd]`: the etcd route source. Relative paths are relative to the config file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Relative paths are relative to the config file's directory.
    pub routes: Option<PathBuf>,
    /// A changed routes file is applied once it has not changed for this long [default: 100ms].
    #[serde(default, with = "humantime_serde")]
    pub routes_settle: Option<Duration>,
    /// Bytes; a larger routes file, certificate, key or other file reveille reads is refused [default: 64 MiB].
    pub max_file_size: Option<u64>,
    pub threads: Option<usize>,
    pub scheduler: Option<Scheduler>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// CIDRs or addresses of the proxies in front of reveille.
    #[serde(default, deserialize_with = "de_trusted_proxies")]
    pub trusted_proxies: Option<Vec<IpNet>>,
}

/// `trusted_proxies` in the file; a bad entry is an error that names it (and, through toml, its line).
fn de_trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter().map(|s| parse_trusted_proxy(s)).collect::<Result<_, _>>().map(Some).map_err(serde::de::Error::custom)
}

/// A trusted proxy: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address, which is a network of one.
fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("trusted proxy {s:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32) or an IP address"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSection {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
    /// Relative to the config file's directory.
    pub access_log_file: Option<PathBuf>,
    pub access_log_buffer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    pub max_header_size: Option<usize>,
    pub max_header_count: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    /// 0 = no limit.
    pub max_connections_per_address: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub tunnel_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub body_timeout: Option<Duration>,
    /// Bytes per second; 0 = none.
    pub min_body_rate: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub min_body_rate_grace: Option<Duration>,
    pub request_buffer_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// "0" = no limit.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// "0" = never cut.
    #[serde(default, with = "humantime_serde")]
    pub overload_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub pool_idle_timeout: Option<Duration>,
    pub pool_max_idle_per_backend: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Acknowledge backend data at once (`TCP_QUICKACK`) [default: true].
    pub quickack: Option<bool>,
}

impl ConfigFile {
    /// Reads a config file (a regular file of at most `max_size` bytes); relative paths in it are made relative
    /// to its directory.
    pub(crate) fn load(path: &Path, max_size: u64) -> Result<Self, ConfigError> {
        let text = crate::fsread::read_to_string(path, max_size)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut file: ConfigFile =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        if let Some(dir) = path.parent() {
            let e = &mut file.etcd;
            let page = &mut file.passivation.page_template;
            let certs = &mut file.tls.certs;
            let hosts = file.docker.hosts.values_mut().flat_map(|h| [&mut h.ca, &mut h.cert, &mut h.key]);
            let access = &mut file.log.access_log_file;
            if let Some(t) = file.admin.token_file.as_mut() {
                if t.is_relative() {
                    *t = dir.join(&*t);
                }
            }
            if let Some(roots) = file.acme.as_mut().and_then(|a| a.ca_roots.as_mut()) {
                if roots.is_relative() {
                    *roots = dir.join(&*roots);
                }
            }
            let paths = [&mut file.server.routes, &mut e.ca, &mut e.cert, &mut e.key, page, certs, access].into_iter();
            for p in paths.chain(hosts).flatten() {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(file)
    }
}

/// How to reach etcd, on the command line (`serve` and the operator commands share these).
#[derive(Debug, Default, Clone, clap::Args)]
#[command(next_help_heading = "etcd")]
pub struct EtcdFlags {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379)
    #[arg(long = "etcd", global = true, value_name = "URL[,URL...]", value_delimiter = ',', env = "REVEILLE_ETCD")]
    pub endpoints: Option<Vec<String>>,
    /// Key prefix of reveille's keys in etcd [default: /reveille/]
    #[arg(long = "etcd-prefix", global = true, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// etcd user (with --etcd-password)
    #[arg(long = "etcd-user", global = true, value_name = "USER")]
    pub user: Option<String>,
    /// etcd password
    #[arg(
        long = "etcd-password",
        global = true,
        value_name = "PASSWORD",
        env = "REVEILLE_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM) for TLS to etcd
    #[arg(long = "etcd-ca", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to etcd
    #[arg(long = "etcd-cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS to etcd
    #[arg(long = "etcd-key", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl EtcdFlags {
    /// Combines flags (winning) with a config file's `[etcd]`; `None` when no endpoint is given anywhere.
    pub fn resolve(&self, file: &EtcdSection) -> Option<EtcdConfig> {
        let endpoints = self.endpoints.clone().or(file.endpoints.clone())?;
        let mut c = EtcdConfig::new(endpoints);
        if let Some(p) = self.prefix.clone().or(file.prefix.clone()) {
            c.prefix = crate::etcd::Keys::new(&p).prefix().to_string();
        }
        c.user = self.user.clone().or(file.user.clone());
        c.password = self.password.clone().or(file.password.clone());
        c.ca = self.ca.clone().or(file.ca.clone());
        c.cert = self.cert.clone().or(file.cert.clone());
        c.key = self.key.clone().or(file.key.clone());
        if let Some(t) = file.timeout {
            c.timeout = t;
        }
        Some(c)
    }
}

/// Command-line overrides; `None` keeps the file's value (or the default).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    #[command(flatten)]
    pub etcd: EtcdFlags,
    /// Address of the plain-HTTP proxy listener [default: 0.0.0.0:8080]
    #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Address of the HTTPS proxy listener (needs certificates: --certs or etcd) [default: none]
    #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// Directory of certificates (NAME.crt + NAME.key, or NAME.pem holding both), watched
    #[arg(long, help_heading = "TLS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Certificate (by name) for TLS clients without SNI or asking for an unknown name [default: none, such
    /// handshakes fail with unrecognized_name]
    #[arg(long, help_heading = "TLS", value_name = "NAME")]
    pub default_cert: Option<String>,
    /// Redirect plain-HTTP requests of every service to HTTPS (308) [default: false]
    #[arg(long, help_heading = "TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub https_redirect: Option<bool>,
    /// Port written in HTTPS redirects, when clients reach HTTPS on another port than the listener's (e.g. 443
    /// mapped to 8443); 443 writes none [default: the HTTPS listener's port]
    #[arg(long, help_heading = "TLS", value_name = "PORT")]
    pub https_redirect_port: Option<u16>,
    /// Address of the admin listener (health, metrics, API) [default: 127.0.0.1:9090]
    #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// File holding the bearer token the admin API's commands (wake, sleep) require [default: none: anyone who
    /// reaches the admin listener may use them, with the header X-Reveille: 1]
    #[arg(long, help_heading = "Listeners", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Host names the admin listener answers to besides IP addresses and localhost (other Host headers get
    /// 421, except on /healthz, /readyz and /metrics) [default: none]
    #[arg(long, help_heading = "Admin listener", value_name = "NAME[,NAME...]", value_delimiter = ',', value_parser = parse_allowed_host)]
    pub admin_allowed_hosts: Option<Vec<String>>,
    /// Time to receive a request head on the admin listener [default: 10s]
    #[arg(long, help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub admin_header_read_timeout: Option<Duration>,
    /// Close admin connections without a request for this long [default: 60s]
    #[arg(long, help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub admin_idle_timeout: Option<Duration>,
    /// Admin connections served at once; more are closed at once [default: 256]
    #[arg(long, help_heading = "Admin listener", value_name = "N")]
    pub admin_max_connections: Option<usize>,
    /// Clients following /api/events at once; more get 503 [default: 64]
    #[arg(long, help_heading = "Admin listener", value_name = "N")]
    pub admin_max_event_subscribers: Option<usize>,
    /// Drop an admin client that reads nothing of its answer (an events stream too) for this long [default: 30s]
    #[arg(long, help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub admin_send_timeout: Option<Duration>,
    /// Routes file to load and watch
    #[arg(long, help_heading = "Routes", value_name = "FILE")]
    pub routes: Option<PathBuf>,
    /// Apply a changed routes file once it has stayed unchanged this long (a file written in place is not
    /// applied half-written) [default: 100ms]
    #[arg(long, help_heading = "Routes", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub routes_settle: Option<Duration>,
    /// Largest file reveille reads: the routes file, certificates and keys, the config file, the page template,
    /// token and TLS files; larger ones are refused like invalid ones [default: 67108864]
    #[arg(long, help_heading = "Routes", value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// Proxies in front of reveille (CIDRs or addresses), whose X-Forwarded-*, Forwarded and X-Real-IP are kept
    /// and extended; anyone else's are replaced [default: none]
    #[arg(long, help_heading = "Listeners", value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// Worker threads; 0 = one per core, 1 = a single-threaded runtime [default: 0]
    #[arg(long, help_heading = "Workers", value_name = "N")]
    pub threads: Option<usize>,
    /// How worker threads share the work: per-core (a single-threaded runtime per thread, each with its own
    /// connections and backend pool) or shared (tokio's work-stealing scheduler) [default: per-core]
    #[arg(long, help_heading = "Workers", value_enum, value_name = "MODEL")]
    pub scheduler: Option<Scheduler>,
    /// Log format [default: text]
    #[arg(long, help_heading = "Logging", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `debug,hyper=info` (RUST_LOG also works) [default: info]
    #[arg(long, help_heading = "Logging", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Write an access-log line per request [default: true]
    #[arg(long, help_heading = "Logging", value_name = "BOOL")]
    pub access_log: Option<bool>,
    /// Append the access log to this file (reopened on SIGHUP, or when moved away) [default: stdout]
    #[arg(long, help_heading = "Logging", value_name = "PATH")]
    pub access_log_file: Option<PathBuf>,
    /// Bytes of access-log lines that may wait for the writer, per core; past it, lines are dropped and
    /// counted in reveille_access_log_dropped_total [default: 4194304]
    #[arg(long, help_heading = "Logging", value_name = "BYTES")]
    pub access_log_buffer: Option<usize>,
    /// Time allowed to receive a request head (slowloris protection) [default: 10s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Largest request head accepted, in bytes; larger gets 431 [default: 65536]
    #[arg(long, help_heading = "Client limits", value_name = "BYTES")]
    pub max_header_size: Option<usize>,
    /// Most header fields in one request, HTTP/1.1 and HTTP/2 alike; more gets 431 [default: 100]
    #[arg(long, help_heading = "Client limits", value_name = "N")]
    pub max_header_count: Option<usize>,
    /// HTTP/2 streams one client connection may have open at once; each holds at most one backend
    /// connection [default: 128]
    #[arg(long, help_heading = "Client limits", value_name = "N")]
    pub h2_max_concurrent_streams: Option<u32>,
    /// Close client connections idle this long [default: 60s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Client connections served at once [default: 10000]
    #[arg(long, help_heading = "Client limits", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Client connections one client address may have open at once; more are closed as they arrive;
    /// 0 = no limit [default: 0]
    #[arg(long, help_heading = "Client limits", value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// Close a WebSocket (or other upgraded connection) idle this long [default: 1h]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Answer 408 when a client sends no byte of its request body for this long [default: 60s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Answer 408 when a request body streams to a backend slower than this many bytes/s on average, after
    /// --min-body-rate-grace; 0 = no minimum [default: 240]
    #[arg(long, help_heading = "Client limits", value_name = "BYTES_PER_SEC")]
    pub min_body_rate: Option<u64>,
    /// Time a streaming request body gets before --min-body-rate applies [default: 5s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_body_rate_grace: Option<Duration>,
    /// Read request bodies up to this size whole before taking a backend connection; larger ones have this
    /// much read first, then stream; 0 = stream at once [default: 65536]
    #[arg(long, help_heading = "Client limits", value_name = "BYTES")]
    pub request_buffer_size: Option<usize>,
    /// Disconnect a client that reads nothing of its response for this long [default: 60s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub send_timeout: Option<Duration>,
    /// While fewer than a tenth of --max-connections are free, cut idle, request-head, request-body and send
    /// waits to this; 0 = never [default: 2s]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub overload_timeout: Option<Duration>,
    /// Limit on one request's total time, head to last response byte; 0 = none [default: 0]
    #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Cut a response when its backend sends no byte of the body for this long [default: 60s]
    #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_read_timeout: Option<Duration>,
    /// Acknowledge backend data at once (TCP_QUICKACK), so a backend with Nagle on is not delayed 40 ms per
    /// response on a reused connection [default: true]
    #[arg(long, help_heading = "Backends", value_name = "BOOL")]
    pub upstream_quickack: Option<bool>,
    /// Time allowed to connect to a backend before trying the next [default: 5s]
    #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time allowed for a backend's response headers; past it, 504 [default: 60s]
    #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub response_timeout: Option<Duration>,
    /// Keep unused pooled backend connections this long [default: 90s]
    #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub pool_idle_timeout: Option<Duration>,
    /// Idle pooled connections kept per backend [default: 1024]
    #[arg(long, help_heading = "Backends", value_name = "N")]
    pub pool_max_idle_per_backend: Option<usize>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT [default: 30s]
    #[arg(long, help_heading = "Listeners", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Docker Engine endpoint for passivated services (unix:///path or tcp://host:port) [default: DOCKER_HOST,
    /// else unix:///var/run/docker.sock]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "URI")]
    pub docker: Option<String>,
    /// Default idle time before a passivated tenant is stopped; 0 = never [default: 15m]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub passivation_idle_timeout: Option<Duration>,
    /// This replica's name, in etcd status keys, logs and metrics [default: the host name]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "NAME")]
    pub node: Option<String>,
    /// The replica's etcd lease: after its death, its activity stops counting and another replica decides
    /// idle stops, within this [default: 10s]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How often each replica writes its use of tenants to etcd [default: 5s]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub activity_interval: Option<Duration>,
    /// Default time a request waits for its tenant to wake; past it, 504 [default: 60s]
    #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wake_timeout: Option<Duration>,
}

/// The admin token: from `--admin-token-file`, else `[admin] token_file`, else `[admin] token`.
fn resolve_admin_token(
    flag: Option<&Path>,
    section: &AdminSection,
    max_size: u64,
) -> Result<Option<String>, ConfigError> {
    let token = match flag.or(section.token_file.as_deref()) {
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

/// `[admin]`'s limits and names over the defaults, flags winning; checked.
fn resolve_admin(a: &AdminSection, flags: &Overrides) -> Result<crate::admin::Settings, ConfigError> {
    let d = crate::admin::Settings::default();
    let s = crate::admin::Settings {
        header_read_timeout: flags.admin_header_read_timeout.or(a.header_read_timeout).unwrap_or(d.header_read_timeout),
        idle_timeout: flags.admin_idle_timeout.or(a.idle_timeout).unwrap_or(d.idle_timeout),
        max_connections: flags.admin_max_connections.or(a.max_connections).unwrap_or(d.max_connections),
        max_event_subscribers: flags
            .admin_max_event_subscribers
            .or(a.max_event_subscribers)
            .unwrap_or(d.max_event_subscribers),
        send_timeout: flags.admin_send_timeout.or(a.send_timeout).unwrap_or(d.send_timeout),
        allowed_hosts: flags.admin_allowed_hosts.clone().or(a.allowed_hosts.clone()).unwrap_or(d.allowed_hosts),
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

impl Config {
    /// The number of worker threads `threads` asks for: itself, or one per core for 0.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Combines defaults, an optional config file and flags (in rising precedence).
    pub fn resolve(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        // The config file itself is read before its own `max_file_size` is known: the flag's, or the default.
        let file = match file {
            Some(p) => ConfigFile::load(p, flags.max_file_size.unwrap_or(crate::fsread::DEFAULT_MAX_SIZE))?,
            None => ConfigFile::default(),
        };
        let d = Config::default();
        let max_file_size = flags.max_file_size.or(file.server.max_file_size).unwrap_or(d.max_file_size);
        let s = Settings::default();
        let t = crate::tls::Settings::default();
        let cfg = Config {
            http: flags.http.or(file.server.http).unwrap_or(d.http),
            https: flags.https.or(file.server.https),
            tls: crate::tls::Settings {
                certs_dir: flags.certs.clone().or(file.tls.certs),
                etcd: file.tls.etcd.unwrap_or(t.etcd),
                default_cert: flags.default_cert.clone().or(file.tls.default_cert),
                redirect: flags.https_redirect.or(file.tls.redirect).unwrap_or(t.redirect),
                redirect_port: flags.https_redirect_port.or(file.tls.redirect_port),
                handshake_timeout: file.tls.handshake_timeout.unwrap_or(t.handshake_timeout),
            },
            admin: flags.admin.or(file.server.admin).unwrap_or(d.admin),
            routes: flags.routes.clone().or(file.server.routes),
            routes_settle: flags.routes_settle.or(file.server.routes_settle).unwrap_or(d.routes_settle),
            max_file_size,
            etcd: flags.etcd.resolve(&file.etcd).map(|mut e| {
                e.max_file_size = max_file_size;
                e
            }),
            threads: flags.threads.or(file.server.threads).unwrap_or(d.threads),
            scheduler: flags.scheduler.or(file.server.scheduler).unwrap_or(d.scheduler),
            log_format: flags.log_format.or(file.log.format).unwrap_or(d.log_format),
            log_level: flags.log_level.clone().or(file.log.level).unwrap_or(d.log_level),
            access_log: crate::access_log::Settings {
                format: match flags.log_format.or(file.log.format).unwrap_or(d.log_format) {
                    LogFormat::Text => crate::access_log::Format::Text,
                    LogFormat::Json => crate::access_log::Format::Json,
                },
                file: flags.access_log_file.clone().or(file.log.access_log_file),
                buffer: flags.access_log_buffer.or(file.log.access_log_buffer).unwrap_or(d.access_log.buffer),
            },
            shutdown_grace: flags.shutdown_grace.or(file.server.shutdown_grace).unwrap_or(d.shutdown_grace),
            proxy: Settings {
                header_read_timeout: flags
                    .header_read_timeout
                    .or(file.limits.header_read_timeout)
                    .unwrap_or(s.header_read_timeout),
                max_header_size: flags.max_header_size.or(file.limits.max_header_size).unwrap_or(s.max_header_size),
                idle_timeout: flags.idle_timeout.or(file.limits.idle_timeout).unwrap_or(s.idle_timeout),
                max_header_count: flags.max_header_count.or(file.limits.max_header_count).unwrap_or(s.max_header_count),
                h2_max_concurrent_streams: flags
                    .h2_max_concurrent_streams
                    .or(file.limits.h2_max_concurrent_streams)
                    .unwrap_or(s.h2_max_concurrent_streams),
                max_connections: flags.max_connections.or(file.limits.max_connections).unwrap_or(s.max_connections),
                max_connections_per_address: flags
                    .max_connections_per_address
                    .or(file.limits.max_connections_per_address)
                    .unwrap_or(s.max_connections_per_address),
                connect_timeout: flags.connect_timeout.or(file.upstream.connect_timeout).unwrap_or(s.connect_timeout),
                response_timeout: flags
                    .response_timeout
                    .or(file.upstream.response_timeout)
                    .unwrap_or(s.response_timeout),
                pool_idle_timeout: flags
                    .pool_idle_timeout
                    .or(file.upstream.pool_idle_timeout)
                    .unwrap_or(s.pool_idle_timeout),
                pool_max_idle_per_backend: flags
                    .pool_max_idle_per_backend
                    .or(file.upstream.pool_max_idle_per_backend)
                    .unwrap_or(s.pool_max_idle_per_backend),
                tunnel_idle_timeout: flags
                    .tunnel_idle_timeout
                    .or(file.limits.tunnel_idle_timeout)
                    .unwrap_or(s.tunnel_idle_timeout),
                body_timeout: flags.body_timeout.or(file.limits.body_timeout).unwrap_or(s.body_timeout),
                min_body_rate: flags.min_body_rate.or(file.limits.min_body_rate).unwrap_or(s.min_body_rate),
                min_body_rate_grace: flags
                    .min_body_rate_grace
                    .or(file.limits.min_body_rate_grace)
                    .unwrap_or(s.min_body_rate_grace),
                request_buffer_size: flags
                    .request_buffer_size
                    .or(file.limits.request_buffer_size)
                    .unwrap_or(s.request_buffer_size),
                upstream_read_timeout: flags
                    .upstream_read_timeout
                    .or(file.upstream.read_timeout)
                    .unwrap_or(s.upstream_read_timeout),
                upstream_quickack: flags.upstream_quickack.or(file.upstream.quickack).unwrap_or(s.upstream_quickack),
                send_timeout: flags.send_timeout.or(file.limits.send_timeout).unwrap_or(s.send_timeout),
                request_timeout: flags
                    .request_timeout
                    .or(file.limits.request_timeout)
                    .or(s.request_timeout)
                    .filter(|d| !d.is_zero()),
                overload_timeout: flags.overload_timeout.or(file.limits.overload_timeout).unwrap_or(s.overload_timeout),
                access_log: flags.access_log.or(file.log.access_log).unwrap_or(s.access_log),
                trusted_proxies: flags
                    .trusted_proxies
                    .clone()
                    .or(file.server.trusted_proxies)
                    .unwrap_or(s.trusted_proxies),
            },
            passivation: resolve_passivation(&file.passivation, &file.docker, flags, max_file_size)?,
            activity_interval: flags
                .activity_interval
                .or(file.passivation.activity_interval)
                .unwrap_or(d.activity_interval),
            cluster: crate::cluster::Settings {
                lease_ttl: flags.lease_ttl.or(file.cluster.lease_ttl).unwrap_or(d.cluster.lease_ttl),
                stop_veto: file.cluster.stop_veto.unwrap_or(d.cluster.stop_veto),
            },
            acme: file.acme.map(resolve_acme),
            admin_token: resolve_admin_token(flags.admin_token_file.as_deref(), &file.admin, max_file_size)?,
            admin_settings: resolve_admin(&file.admin, flags)?,
        };
        if cfg.activity_interval.is_zero() {
            return Err(ConfigError::Invalid("activity_interval must be greater than zero".into()));
        }
        if cfg.cluster.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "cluster lease_ttl must be at least 2s (etcd grants no shorter lease)".into(),
            ));
        }
        if cfg.routes.is_none() && cfg.etcd.is_none() {
            return Err(ConfigError::NoRouteSource);
        }
        if cfg.https.is_some() && cfg.tls.certs_dir.is_none() && !(cfg.etcd.is_some() && cfg.tls.etcd) {
            return Err(ConfigError::Invalid(
                "the HTTPS listener needs certificates: give --certs DIR (`certs` in [tls]) or etcd".into(),
            ));
        }
        if cfg.routes_settle.is_zero() || cfg.max_file_size == 0 {
            return Err(ConfigError::Invalid("routes_settle and max_file_size must be greater than zero".into()));
        }
        if cfg.tls.handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid("handshake_timeout must be greater than zero".into()));
        }
        let p = &cfg.proxy;
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
        if cfg.access_log.buffer < 1024 {
            return Err(ConfigError::Invalid("access_log_buffer must be at least 1024 (bytes)".into()));
        }
        if let Some(a) = &cfg.acme {
            check_acme(a, &cfg)?;
        }
        Ok(cfg)
    }
}

fn resolve_passivation(
    file: &PassivationSection,
    docker: &DockerSection,
    flags: &Overrides,
    max_file_size: u64,
) -> Result<crate::passivation::Settings, ConfigError> {
    let d = crate::passivation::Settings::default();
    let page = match &file.page_template {
        Some(path) => crate::passivation::Page::load(path, max_file_size).map_err(ConfigError::Invalid)?,
        None => d.page,
    };
    let s = crate::passivation::Settings {
        idle_timeout: flags.passivation_idle_timeout.or(file.idle_timeout).unwrap_or(d.idle_timeout),
        wake_timeout: flags.wake_timeout.or(file.wake_timeout).unwrap_or(d.wake_timeout),
        max_held: file.max_held.unwrap_or(d.max_held),
        page_after: file.page_after.unwrap_or(d.page_after),
        stop_timeout: file.stop_timeout.or(d.stop_timeout),
        probe_interval: file.probe_interval.unwrap_or(d.probe_interval),
        status_path: file.status_path.clone().unwrap_or(d.status_path),
        page,
        docker: flags.docker.clone().or(file.docker.clone()),
        docker_hosts: docker_hosts(docker)?,
        docker_timeout: file.docker_timeout.unwrap_or(d.docker_timeout),
        node: flags.node.clone().or(file.node.clone()).unwrap_or(d.node),
    };
    for (name, v) in
        [("wake_timeout", s.wake_timeout), ("probe_interval", s.probe_interval), ("docker_timeout", s.docker_timeout)]
    {
        if v.is_zero() {
            return Err(ConfigError::Invalid(format!("[passivation] {name} must be greater than zero")));
        }
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
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(format!("[docker.hosts.{name}] {e}"));
        check_host_name(name).map_err(|e| invalid(&e))?;
        if name == DEFAULT_HOST {
            return Err(invalid(&"`default` is the host of --docker / [passivation] docker: pick another name"));
        }
        let tls = match (&h.ca, &h.cert, &h.key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => {
                Some(ClientTls { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
            }
            _ => return Err(invalid(&"`ca`, `cert` and `key` go together (all three, for an https:// endpoint)")),
        };
        let endpoint = DockerEndpoint { uri: Some(h.endpoint.clone()), tls };
        endpoint.check().map_err(|e| invalid(&e))?;
        out.insert(name.clone(), endpoint);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nhttp = \"127.0.0.1:1000\"\nroutes = \"r.toml\"\n[limits]\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        let flags = Overrides { http: Some("127.0.0.1:2000".parse().unwrap()), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!(cfg.http.port(), 2000);
        assert_eq!(cfg.routes.unwrap(), dir.path().join("r.toml"));
        assert_eq!(cfg.proxy.idle_timeout, Duration::from_secs(5));
        assert_eq!(cfg.proxy.connect_timeout, Settings::default().connect_timeout);
    }

    #[test]
    fn access_log_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\n[log]\nformat = \"json\"\naccess_log_file = \"logs/access.log\"\n\
             access_log_buffer = 65536\n",
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let a = &cfg.access_log;
        assert_eq!(a.file.as_deref(), Some(dir.path().join("logs/access.log").as_path()));
        assert_eq!((a.format, a.buffer), (crate::access_log::Format::Json, 65536));
        let flags = Overrides {
            log_format: Some(LogFormat::Text),
            access_log_file: Some("/var/log/a.log".into()),
            ..Default::default()
        };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!(cfg.access_log.file.as_deref(), Some(Path::new("/var/log/a.log")));
        assert_eq!(cfg.access_log.format, crate::access_log::Format::Text);
        let flags = Overrides { access_log_buffer: Some(100), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("access_log_buffer"), "{e}");
        let cfg = Config::resolve(None, &Overrides { routes: Some("r.toml".into()), ..Default::default() }).unwrap();
        assert_eq!((cfg.access_log.file, cfg.access_log.buffer), (None, 4 * 1024 * 1024));
    }

    #[test]
    fn body_and_stall_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\n[limits]\nbody_timeout = \"7s\"\nmin_body_rate = 0\n\
             request_buffer_size = 0\nrequest_timeout = \"0\"\nsend_timeout = \"9s\"\n\
             [upstream]\nread_timeout = \"11s\"\n",
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let p = &cfg.proxy;
        assert_eq!((p.body_timeout, p.send_timeout, p.upstream_read_timeout), (secs(7), secs(9), secs(11)));
        assert_eq!((p.min_body_rate, p.request_buffer_size, p.request_timeout), (0, 0, None));
        assert_eq!(p.min_body_rate_grace, Settings::default().min_body_rate_grace);
        let flags = Overrides { request_timeout: Some(secs(30)), body_timeout: Some(secs(1)), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!((cfg.proxy.request_timeout, cfg.proxy.body_timeout), (Some(secs(30)), secs(1)));
        let flags = Overrides { upstream_read_timeout: Some(Duration::ZERO), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("upstream_read_timeout"), "{e}");
    }

    #[test]
    fn acme_section_and_what_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let base = "[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:8443\"\n[tls]\ncerts = \"certs\"\n";
        std::fs::write(
            &path,
            format!(
                "{base}[acme]\ndirectory = \"https://ca.test/dir\"\nca_roots = \"ca.pem\"\nhosts = \"all\"\n\
                 challenge = \"tls-alpn-01\"\neager = false\nrenew_before = \"30d\"\n\
                 on_demand_per_client = 3\non_demand_per_minute = 10\non_demand_share = 0.25\n\
                 eab = {{ kid = \"k1\", hmac_key = \"c2VjcmV0\" }}\n"
            ),
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let a = cfg.acme.unwrap();
        assert_eq!(a.directory, "https://ca.test/dir");
        assert_eq!(a.ca_roots.as_deref(), Some(dir.path().join("ca.pem").as_path()), "relative to the file");
        assert_eq!(a.hosts, crate::acme::Hosts::All);
        assert_eq!(a.challenge, crate::acme::Challenge::TlsAlpn01);
        assert!(!a.eager && a.on_demand);
        assert_eq!(a.renew_before, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(a.eab.unwrap().kid, "k1");
        assert_eq!((a.on_demand_per_client, a.on_demand_per_minute, a.budget.on_demand_share), (3, 10, 0.25));

        std::fs::write(&path, format!("{base}[acme]\n")).unwrap();
        let a = Config::resolve(Some(&path), &Overrides::default()).unwrap().acme.unwrap();
        assert_eq!(a.directory, crate::acme::LETS_ENCRYPT, "an empty section is Let's Encrypt, flagged services");
        assert_eq!(a.hosts, crate::acme::Hosts::Flagged);
        assert_eq!((a.on_demand_per_client, a.on_demand_per_minute, a.budget.on_demand_share), (5, 30, 0.5));

        for (text, says) in [
            ("[server]\nroutes = \"r.toml\"\n[tls]\ncerts = \"c\"\n[acme]\n", "HTTPS listener"),
            ("[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:1\"\n[etcd]\nendpoints = [\"http://e:1\"]\n[tls]\ncerts = \"c\"\netcd = false\n[acme]\n", "[tls] etcd = false"),
            (&format!("{base}[acme]\ndirectory = \"ftp://x\"\n"), "not an https:// URL"),
            (&format!("{base}[acme]\nca_roots = \"missing.pem\"\n"), "not a readable file"),
            (&format!("{base}[acme]\nchallenge = \"dns-01\"\n"), "unknown variant"),
            (&format!("{base}[acme]\non_demand_share = 1.5\n"), "on_demand_share 1.5 is not between 0 and 1"),
            (&format!("{base}[acme]\nmax_per_domain = 1\n"), "of max_per_domain 1 leaves on-demand orders none"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn admin_token_from_the_file_flag_or_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(dir.path().join("token"), "from-the-token-file-0123\nignored\n").unwrap();
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken_file = \"token\"\n").unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.admin_token.as_deref(), Some("from-the-token-file-0123"), "relative to the file");
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken = \"inline-token-0123456\"\n").unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.admin_token.as_deref(), Some("inline-token-0123456"));
        let flags = Overrides { admin_token_file: Some(dir.path().join("token")), ..Default::default() };
        assert_eq!(
            Config::resolve(Some(&path), &flags).unwrap().admin_token.as_deref(),
            Some("from-the-token-file-0123")
        );
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[admin]\ntoken = \"short\"\n").unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("shorter than 16"), "{e}");
        let flags = Overrides { admin_token_file: Some(dir.path().join("missing")), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("admin token file"), "{e}");
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n").unwrap();
        assert_eq!(Config::resolve(Some(&path), &Overrides::default()).unwrap().admin_token, None);
    }

    #[test]
    fn admin_limits_and_names_from_the_section_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        let cfg = Config::resolve(None, &Overrides { routes: Some("r.toml".into()), ..Default::default() }).unwrap();
        let a = &cfg.admin_settings;
        assert_eq!((a.header_read_timeout, a.idle_timeout, a.send_timeout), (secs(10), secs(60), secs(30)));
        assert_eq!((a.max_connections, a.max_event_subscribers), (256, 64));
        assert!(a.allowed_hosts.is_empty());
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\n[admin]\nheader_read_timeout = \"3s\"\nidle_timeout = \"20s\"\n\
             max_connections = 32\nmax_event_subscribers = 4\nsend_timeout = \"5s\"\n\
             allowed_hosts = [\"Admin.Example.com\", \"reveille-admin\"]\n",
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let a = &cfg.admin_settings;
        assert_eq!((a.header_read_timeout, a.idle_timeout, a.send_timeout), (secs(3), secs(20), secs(5)));
        assert_eq!((a.max_connections, a.max_event_subscribers), (32, 4));
        assert_eq!(a.allowed_hosts, ["admin.example.com", "reveille-admin"]);
        let flags = Overrides {
            admin_max_connections: Some(8),
            admin_allowed_hosts: Some(vec!["other".into()]),
            ..Default::default()
        };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!((cfg.admin_settings.max_connections, cfg.admin_settings.max_event_subscribers), (8, 4));
        assert_eq!(cfg.admin_settings.allowed_hosts, ["other"]);

        for (text, says) in [
            ("max_connections = 0", "at least 1"),
            ("send_timeout = \"0s\"", "send_timeout must be greater than zero"),
            ("allowed_hosts = [\"http://admin.example.com\"]", "admin allowed host \"http://admin.example.com\""),
            ("allowed_hosts = [\"admin.example.com:9090\"]", "no scheme, port or path"),
        ] {
            std::fs::write(&path, format!("[server]\nroutes = \"r.toml\"\n[admin]\n{text}\n")).unwrap();
            let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn node_flag_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[passivation]\nnode = \"edge-1\"\n").unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.passivation.node, "edge-1");
        let flags = Overrides { node: Some("edge-2".into()), ..Default::default() };
        assert_eq!(Config::resolve(Some(&path), &flags).unwrap().passivation.node, "edge-2");
        let flags = Overrides { node: Some("a/b".into()), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("node name"), "{e}");
    }

    #[test]
    fn upstream_quickack_from_file_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        assert!(
            Config::resolve(None, &Overrides { routes: Some("r.toml".into()), ..Default::default() })
                .unwrap()
                .proxy
                .upstream_quickack
        );
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[upstream]\nquickack = false\n").unwrap();
        assert!(!Config::resolve(Some(&path), &Overrides::default()).unwrap().proxy.upstream_quickack);
        let flags = Overrides { upstream_quickack: Some(true), ..Default::default() };
        assert!(Config::resolve(Some(&path), &flags).unwrap().proxy.upstream_quickack);
    }

    #[test]
    fn cluster_section_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        let text = "[server]\nroutes = \"r.toml\"\n[cluster]\nlease_ttl = \"4s\"\nstop_veto = \"100ms\"\n\
                    [passivation]\nactivity_interval = \"1s\"\n";
        std::fs::write(&path, text).unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.cluster.lease_ttl, secs(4));
        assert_eq!(cfg.cluster.stop_veto, Duration::from_millis(100));
        assert_eq!(cfg.activity_interval, secs(1));
        let flags = Overrides { lease_ttl: Some(secs(3)), activity_interval: Some(secs(2)), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!((cfg.cluster.lease_ttl, cfg.activity_interval), (secs(3), secs(2)));
        let flags = Overrides { lease_ttl: Some(secs(1)), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("lease_ttl"), "{e}");
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[cluster]\nleases = 1\n").unwrap();
        assert!(Config::resolve(Some(&path), &Overrides::default()).is_err(), "unknown key refused");
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn unknown_keys_and_missing_routes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(&path, "[server]\nhtp = \"127.0.0.1:1000\"\n").unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("unknown field") && e.contains("htp"), "{e}");
        let e = Config::resolve(None, &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::NoRouteSource));
    }

    #[test]
    fn passivation_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(dir.path().join("page.html"), "<p>{{host}} wakes</p><script>{{status_path}}</script>").unwrap();
        std::fs::write(dir.path().join("bad.html"), "<p>no way to know when ready</p>").unwrap();
        let text = |page: &str| {
            format!(
                "[server]\nroutes = \"r.toml\"\n[passivation]\nidle_timeout = \"0\"\nmax_held = 5\n\
                 page_template = \"{page}\"\ndocker = \"unix:///run/d.sock\"\n"
            )
        };
        std::fs::write(&path, text("page.html")).unwrap();
        let flags = Overrides { wake_timeout: Some(Duration::from_secs(7)), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        let p = &cfg.passivation;
        assert_eq!((p.idle_timeout, p.wake_timeout, p.max_held), (Duration::ZERO, Duration::from_secs(7), 5));
        assert_eq!(p.docker.as_deref(), Some("unix:///run/d.sock"));
        assert_eq!(p.stop_timeout, None, "unset: each container's own");
        let html = p.page.render(&crate::passivation::PageValues {
            service: "s",
            host: "h.test",
            state: "starting",
            status_path: "/st",
            retry_after: 1,
        });
        assert_eq!(html, "<p>h.test wakes</p><script>/st</script>");

        std::fs::write(&path, format!("{}stop_timeout = \"3s\"\n", text("page.html"))).unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.passivation.stop_timeout, Some(Duration::from_secs(3)));

        std::fs::write(&path, text("bad.html")).unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("status_path"), "{e}");
        std::fs::write(&path, text("missing.html")).unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        let flags = Overrides { docker: Some("ftp://x".into()), routes: Some("r.toml".into()), ..Default::default() };
        let e = Config::resolve(None, &flags).unwrap_err().to_string();
        assert!(e.contains("docker endpoint"), "{e}");
    }

    #[test]
    fn docker_hosts_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "pem").unwrap();
        }
        let write = |hosts: &str| {
            std::fs::write(
                &path,
                format!("[server]\nroutes = \"r.toml\"\n[passivation]\ndocker = \"unix:///run/d.sock\"\n{hosts}"),
            )
            .unwrap()
        };
        write(
            "[docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n\
             [docker.hosts.dc2]\nendpoint = \"https://docker-2.lan:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\n\
             key = \"key.pem\"\n",
        );
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let p = &cfg.passivation;
        assert_eq!(p.docker.as_deref(), Some("unix:///run/d.sock"), "the default host stays");
        assert_eq!(p.docker_hosts.keys().collect::<Vec<_>>(), ["dc2", "second"]);
        assert_eq!(p.docker_hosts["second"], DockerEndpoint::plain(Some("tcp://127.0.0.1:2375".into())));
        let tls = p.docker_hosts["dc2"].tls.as_ref().unwrap();
        assert_eq!(tls.ca, dir.path().join("ca.pem"), "relative to the config file");
        assert_eq!(tls.key, dir.path().join("key.pem"));
        // The flag still picks the default host.
        let flags = Overrides { docker: Some("tcp://10.0.0.9:2375".into()), ..Default::default() };
        assert_eq!(
            Config::resolve(Some(&path), &flags).unwrap().passivation.docker.as_deref(),
            Some("tcp://10.0.0.9:2375")
        );

        let refused = |hosts: &str| {
            write(hosts);
            Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string()
        };
        let cases = [
            ("[docker.hosts.default]\nendpoint = \"tcp://h:1\"\n", "`default` is the host of --docker"),
            ("[docker.hosts.\"a b\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"a b\""),
            ("[docker.hosts.\"a/b\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"a/b\""),
            ("[docker.hosts.\"\"]\nendpoint = \"tcp://h:1\"\n", "docker host name \"\""),
            ("[docker.hosts.x]\nendpoint = \"ftp://h:1\"\n", "[docker.hosts.x] docker endpoint \"ftp://h:1\": use"),
            ("[docker.hosts.x]\nendpoint = \"tcp://h\"\n", "needs host:port"),
            ("[docker.hosts.x]\nendpoint = \"https://h:2376\"\n", "needs `ca`, `cert` and `key`"),
            ("[docker.hosts.x]\nendpoint = \"https://h:2376\"\nca = \"ca.pem\"\n", "go together"),
            (
                "[docker.hosts.x]\nendpoint = \"tcp://h:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                "only for https://",
            ),
            (
                "[docker.hosts.x]\nendpoint = \"https://h:2376\"\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"no.pem\"\n",
                "cannot read key",
            ),
            ("[docker.hosts.x]\nendpoint = \"tcp://h:1\"\nport = 2\n", "unknown field `port`"),
            ("[docker.hosts.x]\nca = \"ca.pem\"\n", "missing field `endpoint`"),
        ];
        for (hosts, want) in cases {
            let e = refused(hosts);
            assert!(e.contains(want), "{hosts}: {e}");
        }
        let flags =
            Overrides { docker: Some("https://h:2376".into()), routes: Some("r.toml".into()), ..Default::default() };
        let e = Config::resolve(None, &flags).unwrap_err().to_string();
        assert!(e.contains("define it as a named host"), "{e}");
    }

    #[test]
    fn tls_section_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\nhttps = \"127.0.0.1:8443\"\n[tls]\ncerts = \"certs\"\n\
             default_cert = \"main\"\nredirect_port = 443\nhandshake_timeout = \"3s\"\n",
        )
        .unwrap();
        let flags = Overrides { https_redirect: Some(true), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!(cfg.https, Some("127.0.0.1:8443".parse().unwrap()));
        let t = &cfg.tls;
        assert_eq!(t.certs_dir.as_deref(), Some(dir.path().join("certs").as_path()));
        assert_eq!(t.default_cert.as_deref(), Some("main"));
        assert!(t.redirect);
        assert_eq!((t.redirect_port, t.handshake_timeout), (Some(443), Duration::from_secs(3)));

        // An HTTPS listener with no certificate source at all is refused.
        let flags = Overrides {
            https: Some("127.0.0.1:0".parse().unwrap()),
            routes: Some("r.toml".into()),
            ..Default::default()
        };
        let e = Config::resolve(None, &flags).unwrap_err().to_string();
        assert!(e.contains("needs certificates"), "{e}");
        // etcd alone is a source.
        let mut flags = flags;
        flags.etcd.endpoints = Some(vec!["http://127.0.0.1:2379".into()]);
        assert!(Config::resolve(None, &flags).is_ok());
    }

    #[test]
    fn file_reading_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\nroutes_settle = \"250ms\"\nmax_file_size = 4096\n\
             [etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        assert_eq!((cfg.routes_settle, cfg.max_file_size), (Duration::from_millis(250), 4096));
        assert_eq!(cfg.etcd.unwrap().max_file_size, 4096, "etcd's TLS files are read within it too");
        let flags = Overrides { routes_settle: Some(Duration::from_millis(50)), ..Default::default() };
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        assert_eq!((cfg.routes_settle, cfg.max_file_size), (Duration::from_millis(50), 4096));
        let d = Config::resolve(None, &Overrides { routes: Some("r.toml".into()), ..Default::default() }).unwrap();
        assert_eq!((d.routes_settle, d.max_file_size), (Duration::from_millis(100), 64 * 1024 * 1024));

        // The config file itself is read within the flag's limit; zero is refused.
        let flags = Overrides { max_file_size: Some(16), ..Default::default() };
        let e = Config::resolve(Some(&path), &flags).unwrap_err().to_string();
        assert!(e.contains("cannot read config file") && e.contains("larger than 16 bytes"), "{e}");
        let flags = Overrides { max_file_size: Some(0), routes: Some("r.toml".into()), ..Default::default() };
        let e = Config::resolve(None, &flags).unwrap_err().to_string();
        assert!(e.contains("max_file_size must be greater than zero"), "{e}");
        // So are the files it names: a FIFO as the page template fails at once instead of hanging.
        let fifo = dir.path().join("page.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\n[passivation]\npage_template = \"page.fifo\"\n").unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("page.fifo") && e.contains("not a regular file but a FIFO"), "{e}");
    }

    #[test]
    fn trusted_proxies_key_and_flag() {
        /// `serve`'s flags on a command line of their own.
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            flags: Overrides,
        }
        let parse = |args: &[&str]| <Serve as clap::Parser>::try_parse_from(["serve"].iter().chain(args));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reveille.toml");
        std::fs::write(
            &path,
            "[server]\nroutes = \"r.toml\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n",
        )
        .unwrap();
        let cfg = Config::resolve(Some(&path), &Overrides::default()).unwrap();
        let list: Vec<String> = cfg.proxy.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(list, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
        assert!(Config::resolve(None, &Overrides { routes: Some("r.toml".into()), ..Default::default() })
            .unwrap()
            .proxy
            .trusted_proxies
            .is_empty());

        // The flag wins over the file.
        let flags = parse(&["--trusted-proxies", "172.16.0.0/12,2001:db8::/32"]).unwrap().flags;
        let cfg = Config::resolve(Some(&path), &flags).unwrap();
        let list: Vec<String> = cfg.proxy.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(list, ["172.16.0.0/12", "2001:db8::/32"]);

        // A bad entry is refused, by name, in the file and on the command line.
        std::fs::write(&path, "[server]\nroutes = \"r.toml\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n")
            .unwrap();
        let e = Config::resolve(Some(&path), &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        assert!(e.to_string().contains("trusted proxy \"10.0.0.300/8\""), "{e}");
        let e = parse(&["--trusted-proxies", "10.0.0.0/8,lan"]).err().unwrap();
        assert!(e.to_string().contains("trusted proxy \"lan\""), "{e}");
    }
}
