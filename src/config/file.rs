//! The settings as an operator writes them: `reveille.toml`'s sections and `serve`'s flags are the same types.
//!
//! Each section is one struct of optional keys that serde reads from the file and clap fills from the command
//! line (a key without a flag is `#[arg(skip)]`). [`Merge`] lays the flags over the file, key by key; what is
//! still `None` afterwards takes its default when `Config::resolve` turns the one merged [`ConfigFile`] into a
//! `Config`. Keys that moved to another section are still recognised in their old place, and refused there
//! with the name of the new one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::error::{explain, ConfigError};

/// Lays one layer of settings over another: each key `over` gives replaces `self`'s.
pub(crate) trait Merge {
    fn merge(&mut self, over: Self);
}

impl<T> Merge for Option<T> {
    fn merge(&mut self, over: Self) {
        if over.is_some() {
            *self = over;
        }
    }
}

impl<V> Merge for BTreeMap<String, V> {
    fn merge(&mut self, over: Self) {
        self.extend(over);
    }
}

/// Defines a section as written and its [`Merge`], field by field, so a new key is written once.
macro_rules! section {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$field_attr:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        impl Merge for $name {
            fn merge(&mut self, over: Self) {
                $(Merge::merge(&mut self.$field, over.$field);)*
            }
        }
    };
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

/// Which HTTP/1.1 server side serves clients (`http2` chooses h2's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Http1 {
    /// reveille's own codec, the one under its HTTP/1.1 client too, in the connection's own task.
    #[default]
    Reveille,
    /// hyper's `http1` server.
    Hyper,
}

section! {
    /// `reveille.toml`, or `serve`'s flags. Every key is optional; see `config/reveille.toml` for the documented
    /// example.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct ConfigFile {
        #[serde(default)]
        #[command(flatten)]
        pub etcd: EtcdSection,
        #[serde(default)]
        #[command(flatten)]
        pub server: ServerSection,
        #[serde(default)]
        #[command(flatten)]
        pub tls: TlsSection,
        #[serde(default)]
        #[command(flatten)]
        pub admin: AdminSection,
        #[serde(default)]
        #[command(flatten)]
        pub log: LogSection,
        #[serde(default)]
        #[command(flatten)]
        pub limits: LimitsSection,
        #[serde(default)]
        #[command(flatten)]
        pub upstream: UpstreamSection,
        #[serde(default)]
        #[command(flatten)]
        pub docker: DockerSection,
        /// `[runtimes.<name>]`: container runtimes by name (Docker, Podman, Swarm); a service runs on one with
        /// `runtime = "<name>"`.
        #[arg(skip)]
        #[serde(default)]
        pub runtimes: BTreeMap<String, RuntimeSection>,
        #[serde(default)]
        #[command(flatten)]
        pub passivation: PassivationSection,
        #[serde(default)]
        #[command(flatten)]
        pub cluster: ClusterSection,
        /// Present: certificates by ACME.
        #[arg(skip)]
        pub acme: Option<AcmeSection>,
    }
}

impl ConfigFile {
    /// Reads a config file (a regular file of at most `max_size` bytes); relative paths in it are made relative
    /// to its directory.
    pub(crate) fn load(path: &Path, max_size: u64) -> Result<Self, ConfigError> {
        let text = crate::fsread::read_to_string(path, max_size)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut file: ConfigFile = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: explain(&e.to_string()) })?;
        if let Some(dir) = path.parent() {
            let e = &mut file.etcd;
            let page = &mut file.passivation.page_template;
            let certs = &mut file.tls.certs;
            let hosts = file.docker.hosts.values_mut().flat_map(|h| [&mut h.ca, &mut h.cert, &mut h.key]);
            let runtimes = file.runtimes.values_mut().flat_map(|r| [&mut r.ca, &mut r.cert, &mut r.key]);
            let access = &mut file.log.access_log_file;
            let token = &mut file.admin.token_file;
            let roots = file.acme.as_mut().map(|a| &mut a.ca_roots);
            let paths = [&mut file.server.routes, &mut e.ca, &mut e.cert, &mut e.key, page, certs, access, token];
            for p in paths.into_iter().chain(roots).chain(hosts).chain(runtimes).flatten() {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(file)
    }
}

section! {
    /// `[etcd]`: the etcd route source; its flags are shared by `serve` and the operator commands. Relative paths
    /// in the file are relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    #[command(next_help_heading = "etcd")]
    pub struct EtcdSection {
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
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub timeout: Option<Duration>,
    }
}

section! {
    /// `[server]`: listeners, the routes file, workers. `routes` in the file is relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct ServerSection {
        /// Address of the plain-HTTP proxy listener [default: 0.0.0.0:8080]
        #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
        pub http: Option<SocketAddr>,
        /// Address of the HTTPS proxy listener (needs certificates: --certs or etcd) [default: none]
        #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
        pub https: Option<SocketAddr>,
        /// Address of the admin listener (health, metrics, API) [default: 127.0.0.1:9090]
        #[arg(long, help_heading = "Listeners", value_name = "ADDR")]
        pub admin: Option<SocketAddr>,
        /// Proxies in front of reveille (CIDRs or addresses), whose X-Forwarded-*, Forwarded and X-Real-IP are
        /// kept and extended; anyone else's are replaced [default: none]
        #[arg(long, help_heading = "Listeners", value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = parse_trusted_proxy)]
        #[serde(default, deserialize_with = "de_trusted_proxies")]
        pub trusted_proxies: Option<Vec<IpNet>>,
        /// Time in-flight requests get to finish on SIGTERM/SIGINT [default: 30s]
        #[arg(long, help_heading = "Listeners", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub shutdown_grace: Option<Duration>,
        /// Routes file to load and watch
        #[arg(long, help_heading = "Routes", value_name = "FILE")]
        pub routes: Option<PathBuf>,
        /// Apply a changed routes file once it has stayed unchanged this long (a file written in place is not
        /// applied half-written) [default: 100ms]
        #[arg(long, help_heading = "Routes", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub routes_settle: Option<Duration>,
        /// Largest file reveille reads: the routes file, certificates and keys, the config file, the page
        /// template, token and TLS files; larger ones are refused like invalid ones [default: 67108864]
        #[arg(long, help_heading = "Routes", value_name = "BYTES")]
        pub max_file_size: Option<u64>,
        /// Worker threads; 0 = one per core, 1 = a single-threaded runtime [default: 0]
        #[arg(long, help_heading = "Workers", value_name = "N")]
        pub threads: Option<usize>,
        /// How worker threads share the work: per-core (a single-threaded runtime per thread, each with its own
        /// connections and backend pool) or shared (tokio's work-stealing scheduler) [default: per-core]
        #[arg(long, help_heading = "Workers", value_enum, value_name = "MODEL")]
        pub scheduler: Option<Scheduler>,
        /// Which HTTP/1.1 server side serves clients: reveille (its own codec, shared with its HTTP/1.1 client)
        /// or hyper [default: reveille]
        #[arg(long, help_heading = "Listeners", value_enum, value_name = "SIDE")]
        pub http1: Option<Http1>,
        /// Which HTTP/2 server speaks to h2 clients: reveille (its own, on its own HTTP/2 codec, every stream
        /// served in its connection's task) or hyper (hyper's, a task per stream) [default: reveille]
        #[arg(long, help_heading = "Listeners", value_enum, value_name = "SERVER")]
        pub http2: Option<crate::proxy::Http2Server>,
    }
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

section! {
    /// `[tls]`: certificates and HTTPS redirects (the listener itself is `https` in `[server]`). `certs` in the
    /// file is relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct TlsSection {
        /// Directory of certificates (NAME.crt + NAME.key, or NAME.pem holding both), watched
        #[arg(long, help_heading = "TLS", value_name = "DIR")]
        pub certs: Option<PathBuf>,
        /// Certificate (by name) for TLS clients without SNI or asking for an unknown name [default: none, such
        /// handshakes fail with unrecognized_name]
        #[arg(long, help_heading = "TLS", value_name = "NAME")]
        pub default_cert: Option<String>,
        /// Redirect plain-HTTP requests of every service to HTTPS (308) [default: false]
        #[arg(long = "https-redirect", help_heading = "TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub redirect: Option<bool>,
        /// Port written in HTTPS redirects, when clients reach HTTPS on another port than the listener's (e.g.
        /// 443 mapped to 8443); 443 writes none [default: the HTTPS listener's port]
        #[arg(long = "https-redirect-port", help_heading = "TLS", value_name = "PORT")]
        pub redirect_port: Option<u16>,
        /// Load certificates from etcd's `<prefix>certs/` too [default: true when etcd is configured].
        #[arg(skip)]
        pub etcd: Option<bool>,
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub handshake_timeout: Option<Duration>,
    }
}

section! {
    /// `[admin]`: who may change things through the admin listener, the names it answers to, and its limits.
    /// `token_file` in the file is relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct AdminSection {
        /// File holding the bearer token the admin API's commands (wake, sleep) require [default: none: anyone
        /// who reaches the admin listener may use them, with the header X-Reveille: 1]
        #[arg(long = "admin-token-file", help_heading = "Listeners", value_name = "FILE")]
        pub token_file: Option<PathBuf>,
        /// Host names the admin listener answers to besides IP addresses and localhost (other Host headers get
        /// 421, except on /healthz, /readyz and /metrics) [default: none]
        #[arg(long = "admin-allowed-hosts", help_heading = "Admin listener", value_name = "NAME[,NAME...]", value_delimiter = ',', value_parser = parse_allowed_host)]
        #[serde(default, deserialize_with = "de_allowed_hosts")]
        pub allowed_hosts: Option<Vec<String>>,
        /// Time to receive a request head on the admin listener [default: 10s]
        #[arg(id = "admin_header_read_timeout", long = "admin-header-read-timeout", help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub header_read_timeout: Option<Duration>,
        /// Close admin connections without a request for this long [default: 60s]
        #[arg(id = "admin_idle_timeout", long = "admin-idle-timeout", help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub idle_timeout: Option<Duration>,
        /// Admin connections served at once; more are closed at once [default: 256]
        #[arg(id = "admin_max_connections", long = "admin-max-connections", help_heading = "Admin listener", value_name = "N")]
        pub max_connections: Option<usize>,
        /// Clients following /api/events at once; more get 503 [default: 64]
        #[arg(long = "admin-max-event-subscribers", help_heading = "Admin listener", value_name = "N")]
        pub max_event_subscribers: Option<usize>,
        /// Drop an admin client that reads nothing of its answer (an events stream too) for this long [default:
        /// 30s]
        #[arg(id = "admin_send_timeout", long = "admin-send-timeout", help_heading = "Admin listener", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub send_timeout: Option<Duration>,
        /// The bearer token itself, when not in `token_file`.
        #[arg(skip)]
        pub token: Option<String>,
    }
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

section! {
    /// `[log]`: the process's log and the access log. `access_log_file` in the file is relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct LogSection {
        /// Log format [default: text]
        #[arg(long = "log-format", help_heading = "Logging", value_enum, value_name = "FORMAT")]
        pub format: Option<LogFormat>,
        /// Log filter, e.g. `info` or `debug,hyper=info` (RUST_LOG also works) [default: info]
        #[arg(long = "log-level", help_heading = "Logging", value_name = "FILTER")]
        pub level: Option<String>,
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
    }
}

section! {
    /// `[limits]`: what a client may ask of the proxy, and for how long.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct LimitsSection {
        /// Time allowed to receive a request head (slowloris protection) [default: 10s]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
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
        #[serde(default, with = "humantime_serde")]
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
        #[serde(default, with = "humantime_serde")]
        pub tunnel_idle_timeout: Option<Duration>,
        /// Answer 408 when a client sends no byte of its request body for this long [default: 60s]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub body_timeout: Option<Duration>,
        /// Answer 408 when a request body streams to a backend slower than this many bytes/s on average, after
        /// --min-body-rate-grace; 0 = no minimum [default: 240]
        #[arg(long, help_heading = "Client limits", value_name = "BYTES_PER_SEC")]
        pub min_body_rate: Option<u64>,
        /// Time a streaming request body gets before --min-body-rate applies [default: 5s]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub min_body_rate_grace: Option<Duration>,
        /// Read request bodies up to this size whole before taking a backend connection; larger ones have this
        /// much read first, then stream; 0 = stream at once [default: 65536]
        #[arg(long, help_heading = "Client limits", value_name = "BYTES")]
        pub request_buffer_size: Option<usize>,
        /// Disconnect a client that reads nothing of its response for this long [default: 60s]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub send_timeout: Option<Duration>,
        /// While fewer than a tenth of --max-connections are free, cut idle, request-head, request-body and send
        /// waits to this; 0 = never [default: 2s]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub overload_timeout: Option<Duration>,
        /// Limit on one request's total time, head to last response byte; 0 = none [default: 0]
        #[arg(long, help_heading = "Client limits", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub request_timeout: Option<Duration>,
    }
}

section! {
    /// `[upstream]`: the proxy's connections to backends.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct UpstreamSection {
        /// Cut a response when its backend sends no byte of the body for this long [default: 60s]
        #[arg(long = "upstream-read-timeout", help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub read_timeout: Option<Duration>,
        /// Acknowledge backend data at once (TCP_QUICKACK), so a backend with Nagle on is not delayed 40 ms per
        /// response on a reused connection [default: true]
        #[arg(long = "upstream-quickack", help_heading = "Backends", value_name = "BOOL")]
        pub quickack: Option<bool>,
        /// Time allowed to connect to a backend before trying the next [default: 5s]
        #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub connect_timeout: Option<Duration>,
        /// Time allowed for a backend's response headers; past it, 504 [default: 60s]
        #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub response_timeout: Option<Duration>,
        /// Keep unused pooled backend connections this long [default: 90s]
        #[arg(long, help_heading = "Backends", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub pool_idle_timeout: Option<Duration>,
        /// Idle pooled connections kept per backend [default: 1024]
        #[arg(long, help_heading = "Backends", value_name = "N")]
        pub pool_max_idle_per_backend: Option<usize>,
    }
}

section! {
    /// `[docker]`: the Docker Engines passivated services run on: the default one and named others.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct DockerSection {
        /// Docker Engine endpoint for passivated services (unix:///path or tcp://host:port) [default:
        /// DOCKER_HOST, else unix:///var/run/docker.sock]
        #[arg(id = "docker", long = "docker", help_heading = "Passivation and cluster", value_name = "URI")]
        pub endpoint: Option<String>,
        /// Time allowed for one Docker API call, on every host [default: 10s].
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub timeout: Option<Duration>,
        /// `[docker.hosts.<name>]`: a service runs on one with `docker_host = "<name>"`.
        #[arg(skip)]
        #[serde(default)]
        pub hosts: BTreeMap<String, DockerHostSection>,
    }
}

/// `[docker.hosts.<name>]`: where that Docker Engine is. TLS files are relative to the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerHostSection {
    /// `unix:///path`, `tcp://host:port`, `http://host:port` or `https://host:port` (with `ca`, `cert`, `key`).
    pub endpoint: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[runtimes.<name>]`: what that runtime is and where. TLS files are relative to the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// `docker`, `podman` (its Docker-compatible API, `podman system service`) or `swarm`.
    pub kind: crate::runtime::RuntimeKind,
    /// As `[docker.hosts.<name>] endpoint`: `unix:///path`, `tcp://host:port`, `http://host:port` or
    /// `https://host:port` (with `ca`, `cert`, `key`).
    pub endpoint: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

section! {
    /// `[passivation]`: defaults for passivated services (each can override the first five). `page_template` in
    /// the file is relative to its directory.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct PassivationSection {
        /// Default idle time before a passivated tenant is stopped; 0 = never [default: 15m]
        #[arg(id = "passivation_idle_timeout", long = "passivation-idle-timeout", help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub idle_timeout: Option<Duration>,
        /// Default time a request waits for its tenant to wake; past it, 504 [default: 60s]
        #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub wake_timeout: Option<Duration>,
        #[arg(skip)]
        pub max_held: Option<usize>,
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub page_after: Option<Duration>,
        /// `docker stop`'s grace for services without their own [default: the container's own `StopTimeout`].
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub stop_timeout: Option<Duration>,
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub probe_interval: Option<Duration>,
        #[arg(skip)]
        pub status_path: Option<String>,
        /// Replaces the built-in "starting" page.
        #[arg(skip)]
        pub page_template: Option<PathBuf>,
        #[arg(skip)]
        #[serde(default, rename = "docker", deserialize_with = "moved_docker")]
        pub moved_docker: Option<Moved>,
        #[arg(skip)]
        #[serde(default, rename = "docker_timeout", deserialize_with = "moved_docker_timeout")]
        pub moved_docker_timeout: Option<Moved>,
        #[arg(skip)]
        #[serde(default, rename = "node", deserialize_with = "moved_node")]
        pub moved_node: Option<Moved>,
        #[arg(skip)]
        #[serde(default, rename = "activity_interval", deserialize_with = "moved_activity_interval")]
        pub moved_activity_interval: Option<Moved>,
    }
}

section! {
    /// `[cluster]`: this replica, and how the replicas that share an etcd coordinate.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct ClusterSection {
        /// This replica's name, in etcd status keys, logs and metrics [default: the host name]
        #[arg(long, help_heading = "Passivation and cluster", value_name = "NAME")]
        pub node: Option<String>,
        /// The replica's etcd lease: after its death, its activity stops counting and another replica decides
        /// idle stops, within this [default: 10s]
        #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub lease_ttl: Option<Duration>,
        /// How often each replica writes its use of tenants to etcd [default: 5s]
        #[arg(long, help_heading = "Passivation and cluster", value_name = "DURATION", value_parser = humantime::parse_duration)]
        #[serde(default, with = "humantime_serde")]
        pub activity_interval: Option<Duration>,
        /// How long a stop waits for a replica that uses the tenant to veto it [default: 250ms].
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        pub stop_veto: Option<Duration>,
    }
}

/// A key read in the place it moved from: never holds a value, since reading one is an error.
#[derive(Debug, Clone)]
pub enum Moved {}

/// Refuses a key in its old place, naming the new one (toml adds the line).
fn moved<'de, D: Deserializer<'de>>(d: D, old: &str, new: &str) -> Result<Option<Moved>, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Err(serde::de::Error::custom(format!("{old} moved: write it as {new}")))
}

fn moved_docker<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Moved>, D::Error> {
    moved(d, "[passivation] docker", "`endpoint` in [docker]")
}

fn moved_docker_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Moved>, D::Error> {
    moved(d, "[passivation] docker_timeout", "`timeout` in [docker]")
}

fn moved_node<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Moved>, D::Error> {
    moved(d, "[passivation] node", "`node` in [cluster]")
}

fn moved_activity_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Moved>, D::Error> {
    moved(d, "[passivation] activity_interval", "`activity_interval` in [cluster]")
}

/// `[acme]`: certificates by ACME for routed hosts. Its presence turns ACME on; it has no flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeEabSection {
    pub kid: String,
    pub hmac_key: String,
}
