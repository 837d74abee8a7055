//! The command line: clap's definitions of every subcommand and flag, and the commands that are not `serve`:
//! the operator commands against etcd (`route`, `service`, `cert`, `status`, in `ops`), `check` (in `check`) and
//! `manpage` (in `manpage`).
//!
//! `main.rs` parses, dispatches and runs `serve`; the route sources (`control`) and certificates (`tls`) know
//! nothing of the command line: the commands here call their parsing and validation.

mod check;
mod manpage;
mod ops;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};

use crate::config::{ConfigFile, EtcdSection, Merge};
use crate::etcd::EtcdConfig;
use crate::routes::{DockerHostNames, SERVICE_FIELDS};
use ops::{Ops, OpsError};

use check::check;
use manpage::manpage;

#[derive(Parser)]
#[command(
    name = "reveille",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("REVEILLE_GIT_REVISION"), ")"),
    about = "Edge reverse proxy for multi-tenant container platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML); flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Box<ConfigFile>,
    },
    #[command(flatten)]
    Tool(Box<Tool>),
}

/// The commands other than `serve`, which [`run`] carries out.
#[derive(Subcommand)]
pub enum Tool {
    /// Manage routes in etcd (hostname, or hostname and path prefix -> service).
    Route {
        #[command(subcommand)]
        command: RouteCommand,
        #[command(flatten)]
        etcd: EtcdSection,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Manage services in etcd (name -> backends).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
        #[command(flatten)]
        etcd: EtcdSection,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Manage TLS certificates in etcd.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
        #[command(flatten)]
        etcd: EtcdSection,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Show the cluster as etcd holds it: replicas (node, lease, who decides idle stops) and, per tenant, its
    /// state and which replicas use it. Needs no replica to be reachable.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdSection,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and/or a routes file, print what is wrong, exit 0 (valid) or 1.
    Check {
        /// Config file to check (and the routes file it names).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Routes file to check.
        #[arg(long, value_name = "FILE")]
        routes: Option<PathBuf>,
        /// Certificates directory to check (each pair parses, keys match; names and expiry are listed).
        #[arg(long, value_name = "DIR")]
        certs: Option<PathBuf>,
        /// Largest file read; larger ones are refused, as `serve` refuses them [default: the config file's
        /// `max_file_size`, else 67108864]
        #[arg(long, value_name = "BYTES")]
        max_file_size: Option<u64>,
    },
    /// Print a shell completion script (e.g. `reveille completions bash > /etc/bash_completion.d/reveille`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the main man page (roff), e.g. `reveille manpage > /usr/local/share/man/man1/reveille.1`, or write
    /// one page per command and subcommand into a directory (`reveille manpage --dir /usr/local/share/man/man1`).
    Manpage {
        /// Write every page (reveille.1, reveille-serve.1, reveille-route-set.1, ...) into DIR, created if
        /// missing, and list the files written.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Point HOST (e.g. acme.example.com or *.acme.example.com), optionally followed by a path prefix
    /// (acme.example.com/api/), at SERVICE.
    Set {
        host: String,
        service: String,
        /// Write even if SERVICE is not defined (the route answers 503 until it is).
        #[arg(long)]
        force: bool,
        /// Send the path without the route's prefix (/api/x as /x); a path route only. Without it, the path is
        /// sent as the client sent it.
        #[arg(long)]
        strip_prefix: bool,
    },
    /// Remove the route for HOST (with its path prefix, for a path route).
    Rm { host: String },
    /// List routes.
    Ls,
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Define or change service NAME: its backends (host:port or http://host:port) and/or the container that
    /// serves it. Fields not given keep their current value.
    Set {
        name: String,
        #[command(flatten)]
        fields: Box<ServiceFields>,
    },
    /// Keep service NAME awake (not stopped or paused for idleness) for DURATION, on every replica; 0s ends
    /// it. Does not wake it.
    KeepAwake {
        name: String,
        /// How long from now, e.g. 30m or 2h; 0s ends the keep-awake
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
        time: String,
        /// Write even if etcd does not hold service NAME (one of a routes file)
        #[arg(long)]
        force: bool,
    },
    /// Remove service NAME.
    Rm {
        name: String,
        /// Remove even if routes point to it (they answer 503 until it is defined again).
        #[arg(long)]
        force: bool,
    },
    /// List services.
    Ls,
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Store certificate NAME (checked first: the chain parses and the key matches). The names it serves come
    /// from its subject alternative names.
    Put {
        name: String,
        /// Certificate chain, PEM, leaf first
        // Own ids: the global etcd flags already use `cert` and `key` (for --etcd-cert, --etcd-key).
        #[arg(long = "cert", id = "cert_file", value_name = "FILE")]
        cert: PathBuf,
        /// Private key, PEM [default: the --cert file, if it holds the key too]
        #[arg(long = "key", id = "key_file", value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// List certificates: names served and expiry.
    Ls,
    /// Remove certificate NAME.
    Rm { name: String },
}

/// The fields of `service set`.
#[derive(clap::Args)]
pub struct ServiceFields {
    /// A backend address (repeat for several); the list given replaces the service's list
    #[arg(long = "backend", value_name = "ADDR")]
    pub backends: Vec<String>,
    /// Remove a field from the service (repeat for several), e.g. `--unset backends` to serve only from the
    /// container, `--unset container` to stop passivating it
    // Any field of a service: the list `check` suggests from, so the two cannot drift apart.
    #[arg(long, value_name = "FIELD", value_parser = PossibleValuesParser::new(SERVICE_FIELDS.iter().copied()))]
    pub unset: Vec<String>,
    /// Docker container (name or id) that reveille starts on demand and stops when idle
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Container port (the backend is the container's address and this port)
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Container network to take the address from [default: the first]
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    /// Docker host the container runs on, a `[docker.hosts.<name>]` of the config (checked when --config is
    /// given) [default: default]
    #[arg(long, value_name = "NAME")]
    pub docker_host: Option<String>,
    /// Runtime the container runs on, a `[runtimes.<name>]` or `[docker.hosts.<name>]` of the config (checked
    /// when --config is given); replaces `docker_host`, its older name [default: default]
    #[arg(long, value_name = "NAME", conflicts_with = "docker_host")]
    pub runtime: Option<String>,
    /// Docker Swarm service that reveille scales up on demand and to 0 when idle, instead of a container (its
    /// runtime is of kind swarm)
    #[arg(long, value_name = "NAME", conflicts_with = "container")]
    pub swarm_service: Option<String>,
    /// With --swarm-service: the replicas a wake scales it to [default: 1]
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// With --swarm-service: where its published port is reached [default: 127.0.0.1 for a unix endpoint, else
    /// the endpoint's host]
    #[arg(long, value_name = "HOST")]
    pub backend_host: Option<String>,
    /// With --swarm-service and --port, instead of --backend-host: the overlay network (name or id) reveille runs
    /// on; the backend is a running task's address on it at --port
    #[arg(long, value_name = "NETWORK", conflicts_with = "backend_host")]
    pub swarm_network: Option<String>,
    /// Stop the container after this long without requests; 0 = never
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// How long a request waits for the container to be ready
    #[arg(long, value_name = "DURATION")]
    pub wake_timeout: Option<String>,
    /// How long `docker stop` waits before killing the container [default: the container's own]
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<String>,
    /// Readiness probe path (GET answering below 500) instead of a TCP connect
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// What to do when idle
    #[arg(long, value_name = "ACTION", value_parser = ["stop", "pause"])]
    pub idle_action: Option<String>,
    /// With --idle-action pause: stop the paused container after this much more idleness
    #[arg(long, value_name = "DURATION")]
    pub stop_after: Option<String>,
    /// Requests held while it starts
    #[arg(long, value_name = "N")]
    pub max_held: Option<usize>,
    /// How long browsers wait before the "starting" page
    #[arg(long, value_name = "DURATION")]
    pub page_after: Option<String>,
    /// Path asked (GET) before an idle stop: 409 or 423 means busy, ask again after the idle timeout
    #[arg(long, value_name = "PATH")]
    pub stop_check: Option<String>,
    /// With a cluster, read the container's traffic counters before an idle stop (true/false; default true)
    #[arg(long, value_name = "BOOL")]
    pub traffic_witness: Option<bool>,
    /// Redirect plain-HTTP requests to HTTPS (true/false; unset follows the global setting)
    #[arg(long, value_name = "BOOL")]
    pub https_redirect: Option<bool>,
    /// Strict-Transport-Security value for responses over HTTPS, e.g. "max-age=31536000"
    #[arg(long, value_name = "VALUE")]
    pub hsts: Option<String>,
    /// Certificates by ACME for the service's host names (true/false; unset follows `[acme] hosts`)
    #[arg(long, value_name = "BOOL")]
    pub acme: Option<bool>,
    /// A container started (and waited for: its healthcheck, else PORT or the only port it exposes) before the
    /// service's own; repeat for several, in order; the list given replaces the service's list
    #[arg(long = "depends-on", value_name = "NAME[:PORT]", value_parser = parse_dependency)]
    pub depends_on: Vec<(String, Option<u16>)>,
}

/// `--depends-on NAME[:PORT]`.
fn parse_dependency(s: &str) -> Result<(String, Option<u16>), String> {
    let (name, port) = match s.split_once(':') {
        Some((name, port)) => {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0);
            (name, Some(port.ok_or_else(|| format!("{s:?}: the port after ':' must be 1-65535"))?))
        }
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("{s:?}: no container name before ':'"));
    }
    Ok((name.to_string(), port))
}

impl ServiceFields {
    /// The fields given, as the JSON object merged into the service's value (a removed field is `null`).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        if !self.backends.is_empty() {
            m.insert("backends".into(), Value::from(self.backends.clone()));
        }
        let strings = [
            ("container", &self.container),
            ("network", &self.network),
            ("docker_host", &self.docker_host),
            ("runtime", &self.runtime),
            ("swarm_service", &self.swarm_service),
            ("backend_host", &self.backend_host),
            ("swarm_network", &self.swarm_network),
            ("idle_timeout", &self.idle_timeout),
            ("wake_timeout", &self.wake_timeout),
            ("stop_timeout", &self.stop_timeout),
            ("health_path", &self.health_path),
            ("idle_action", &self.idle_action),
            ("stop_after", &self.stop_after),
            ("page_after", &self.page_after),
            ("stop_check", &self.stop_check),
            ("hsts", &self.hsts),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v.clone()));
            }
        }
        if let Some(p) = self.port {
            m.insert("port".into(), Value::from(p));
        }
        if let Some(n) = self.replicas {
            m.insert("replicas".into(), Value::from(n));
        }
        if let Some(n) = self.max_held {
            m.insert("max_held".into(), Value::from(n));
        }
        if let Some(b) = self.https_redirect {
            m.insert("https_redirect".into(), Value::from(b));
        }
        if let Some(b) = self.traffic_witness {
            m.insert("traffic_witness".into(), Value::from(b));
        }
        if let Some(b) = self.acme {
            m.insert("acme".into(), Value::from(b));
        }
        if !self.depends_on.is_empty() {
            let deps = self.depends_on.iter().map(|(name, port)| match port {
                Some(p) => serde_json::json!({ "container": name, "port": p }),
                None => Value::from(name.clone()),
            });
            m.insert("depends_on".into(), Value::Array(deps.collect()));
        }
        // `runtime` and its older name `docker_host` are one setting: giving one removes the other.
        if self.runtime.is_some() {
            m.insert("docker_host".into(), Value::Null);
        } else if self.docker_host.is_some() {
            m.insert("runtime".into(), Value::Null);
        }
        // A field both given and removed is given.
        for field in &self.unset {
            m.entry(field.clone()).or_insert(Value::Null);
        }
        m
    }
}

/// Runs a command other than `serve`: prints what it did or what is wrong; the exit code says which.
pub fn run(tool: Tool) -> ExitCode {
    match tool {
        Tool::Check { config, routes, certs, max_file_size } => check(config, routes, certs, max_file_size),
        Tool::Route { command, etcd, config } => operate(config, etcd, Op::Route(command)),
        Tool::Service { command, etcd, config } => operate(config, etcd, Op::Service(command)),
        Tool::Cert { command, etcd, config } => operate(config, etcd, Op::Cert(command)),
        Tool::Status { json, etcd, config } => operate(config, etcd, Op::Status { json }),
        Tool::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "reveille", &mut script);
            print_out(&script)
        }
        Tool::Manpage { dir } => manpage(dir),
    }
}

/// Writes generated text to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An operator command and its arguments.
enum Op {
    Route(RouteCommand),
    Service(ServiceCommand),
    Cert(CertCommand),
    Status { json: bool },
}

/// Runs one operator command against etcd; prints what it did, or why not (exit 1).
fn operate(config_path: Option<PathBuf>, flags: EtcdSection, op: Op) -> ExitCode {
    let load = |path: &std::path::Path| ConfigFile::load(path, crate::fsread::DEFAULT_MAX_SIZE);
    let (mut section, hosts) = match config_path.as_deref().map(load).transpose() {
        Ok(Some(f)) => {
            let hosts = DockerHostNames::with_kinds(crate::config::runtime_kinds(&f));
            (f.etcd, hosts)
        }
        Ok(None) => Default::default(),
        Err(e) => {
            eprintln!("reveille: {e}");
            return ExitCode::FAILURE;
        }
    };
    section.merge(flags);
    let etcd = section.resolve().unwrap_or_else(|| EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        let mut ops = Ops::connect(&etcd).await?;
        match op {
            Op::Route(RouteCommand::Set { host, service, force, strip_prefix }) => {
                ops.route_set(&host, &service, force, strip_prefix).await
            }
            Op::Route(RouteCommand::Rm { host }) => ops.route_rm(&host).await,
            Op::Route(RouteCommand::Ls) => ops.route_ls().await,
            Op::Service(ServiceCommand::Set { name, fields }) => ops.service_set(&name, fields.to_json(), &hosts).await,
            Op::Service(ServiceCommand::KeepAwake { name, time, force }) => {
                ops.service_keep_awake(&name, &time, force).await
            }
            Op::Service(ServiceCommand::Rm { name, force }) => ops.service_rm(&name, force).await,
            Op::Service(ServiceCommand::Ls) => ops.service_ls().await,
            Op::Cert(CertCommand::Put { name, cert, key }) => {
                let read = |p: &PathBuf| {
                    crate::fsread::read_to_string(p, crate::fsread::DEFAULT_MAX_SIZE)
                        .map_err(|e| OpsError::Refused(format!("cannot read {}: {e}", p.display())))
                };
                let cert_pem = read(&cert)?;
                let key_pem = match &key {
                    Some(k) => read(k)?,
                    None => cert_pem.clone(),
                };
                ops.cert_put(&name, &cert_pem, &key_pem).await
            }
            Op::Cert(CertCommand::Ls) => ops.cert_ls().await,
            Op::Cert(CertCommand::Rm { name }) => ops.cert_rm(&name).await,
            Op::Status { json } => ops.status(json).await,
        }
    });
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reveille: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_set(args: &[&str]) -> Result<serde_json::Map<String, serde_json::Value>, clap::Error> {
        let cli = <Cli as clap::Parser>::try_parse_from(["reveille", "service", "set", "web"].iter().chain(args))?;
        let Command::Tool(tool) = cli.command else { panic!("not a tool") };
        let Tool::Service { command: ServiceCommand::Set { fields, .. }, .. } = *tool else { panic!("not set") };
        Ok(fields.to_json())
    }

    #[test]
    fn swarm_fields() {
        let json = service_set(&["--swarm-service", "shop", "--replicas", "2", "--backend-host", "node-1"]).unwrap();
        let want = serde_json::json!({"swarm_service": "shop", "replicas": 2, "backend_host": "node-1"});
        assert_eq!(serde_json::Value::Object(json), want);
        let json = service_set(&["--swarm-service", "shop", "--port", "8080", "--swarm-network", "front"]).unwrap();
        let want = serde_json::json!({"swarm_service": "shop", "port": 8080, "swarm_network": "front"});
        assert_eq!(serde_json::Value::Object(json), want);
        let e = service_set(&["--swarm-network", "front", "--backend-host", "h"]).err().unwrap().to_string();
        assert!(e.contains("--swarm-network") && e.contains("--backend-host"), "{e}");
        let e = service_set(&["--swarm-service", "shop", "--container", "c"]).err().unwrap().to_string();
        assert!(e.contains("--swarm-service") && e.contains("--container"), "{e}");
    }

    #[test]
    fn runtime_replaces_its_older_name() {
        let json = service_set(&["--container", "c", "--runtime", "pod"]).unwrap();
        assert_eq!(json["runtime"], "pod");
        assert_eq!(json["docker_host"], serde_json::Value::Null, "the older name is removed");
        let json = service_set(&["--docker-host", "second"]).unwrap();
        assert_eq!((&json["docker_host"], &json["runtime"]), (&"second".into(), &serde_json::Value::Null));
        let e = service_set(&["--runtime", "pod", "--docker-host", "second"]).err().unwrap().to_string();
        assert!(e.contains("--runtime") && e.contains("--docker-host"), "{e}");
        assert!(!service_set(&["--container", "c"]).unwrap().contains_key("runtime"), "untouched unless given");
    }
}
