//! The `reveille` binary: command line, logging, runtime, exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reveille::app::{self, Listeners};
use reveille::config::{Config, ConfigFile, EtcdFlags, Overrides};
use reveille::control::etcd::EtcdConfig;
use reveille::control::file;
use reveille::control::ops::{Ops, OpsError};

#[derive(Parser)]
#[command(name = "reveille", version, about = "Edge reverse proxy for multi-tenant container platforms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML); flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Box<Overrides>,
    },
    /// Manage routes in etcd (hostname -> service).
    Route {
        #[command(subcommand)]
        command: RouteCommand,
        #[command(flatten)]
        etcd: EtcdFlags,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Manage services in etcd (name -> backends).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
        #[command(flatten)]
        etcd: EtcdFlags,
        /// Config file whose [etcd] section to use (flags override it).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Manage TLS certificates in etcd.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
        #[command(flatten)]
        etcd: EtcdFlags,
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
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Point HOST (e.g. acme.example.com or *.acme.example.com) at SERVICE.
    Set {
        host: String,
        service: String,
        /// Write even if SERVICE is not defined (the route answers 503 until it is).
        #[arg(long)]
        force: bool,
    },
    /// Remove the route for HOST.
    Rm { host: String },
    /// List routes.
    Ls,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Define or change service NAME: its backends (host:port or http://host:port) and/or the container that
    /// serves it. Fields not given keep their current value.
    Set {
        name: String,
        #[command(flatten)]
        fields: Box<ServiceFields>,
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
enum CertCommand {
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
struct ServiceFields {
    /// A backend address (repeat for several)
    #[arg(long = "backend", value_name = "ADDR")]
    backends: Vec<String>,
    /// Docker container (name or id) that reveille starts on demand and stops when idle
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Container port (the backend is the container's address and this port)
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Container network to take the address from [default: the first]
    #[arg(long, value_name = "NETWORK")]
    network: Option<String>,
    /// Stop the container after this long without requests; 0 = never
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// How long a request waits for the container to be ready
    #[arg(long, value_name = "DURATION")]
    wake_timeout: Option<String>,
    /// Readiness probe path (GET answering below 500) instead of a TCP connect
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// What to do when idle
    #[arg(long, value_name = "ACTION", value_parser = ["stop", "pause"])]
    idle_action: Option<String>,
    /// Requests held while it starts
    #[arg(long, value_name = "N")]
    max_held: Option<usize>,
    /// How long browsers wait before the "starting" page
    #[arg(long, value_name = "DURATION")]
    page_after: Option<String>,
    /// Redirect plain-HTTP requests to HTTPS (true/false; unset follows the global setting)
    #[arg(long, value_name = "BOOL")]
    https_redirect: Option<bool>,
    /// Strict-Transport-Security value for responses over HTTPS, e.g. "max-age=31536000"
    #[arg(long, value_name = "VALUE")]
    hsts: Option<String>,
}

impl ServiceFields {
    fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        if !self.backends.is_empty() {
            m.insert("backends".into(), Value::from(self.backends.clone()));
        }
        let strings = [
            ("container", &self.container),
            ("network", &self.network),
            ("idle_timeout", &self.idle_timeout),
            ("wake_timeout", &self.wake_timeout),
            ("health_path", &self.health_path),
            ("idle_action", &self.idle_action),
            ("page_after", &self.page_after),
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
        if let Some(n) = self.max_held {
            m.insert("max_held".into(), Value::from(n));
        }
        if let Some(b) = self.https_redirect {
            m.insert("https_redirect".into(), Value::from(b));
        }
        m
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, flags } => serve(config, flags),
        Command::Check { config, routes, certs } => check(config, routes, certs),
        Command::Route { command, etcd, config } => operate(config, etcd, Op::Route(command)),
        Command::Service { command, etcd, config } => operate(config, etcd, Op::Service(command)),
        Command::Cert { command, etcd, config } => operate(config, etcd, Op::Cert(command)),
    }
}

fn serve(config_path: Option<PathBuf>, flags: Box<Overrides>) -> ExitCode {
    let config = match Config::resolve(config_path.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reveille: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = reveille::telemetry::init(config.log_format, &config.log_level);
    let runtime = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reveille: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let started = async {
            let listeners = Listeners::bind(&config).await?;
            app::start(&config, listeners, app::docker(&config)).await
        };
        let running = match started.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("reveille: {e}");
                return ExitCode::FAILURE;
            }
        };
        let token = running.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            token.cancel();
        });
        running.wait(config.shutdown_grace).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

enum Op {
    Route(RouteCommand),
    Service(ServiceCommand),
    Cert(CertCommand),
}

/// Runs one operator command against etcd; prints what it did, or why not (exit 1).
fn operate(config_path: Option<PathBuf>, flags: EtcdFlags, op: Op) -> ExitCode {
    let section = match config_path.as_deref().map(ConfigFile::load).transpose() {
        Ok(file) => file.map(|f| f.etcd).unwrap_or_default(),
        Err(e) => {
            eprintln!("reveille: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd = flags.resolve(&section).unwrap_or_else(|| EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        let mut ops = Ops::connect(&etcd).await?;
        match op {
            Op::Route(RouteCommand::Set { host, service, force }) => ops.route_set(&host, &service, force).await,
            Op::Route(RouteCommand::Rm { host }) => ops.route_rm(&host).await,
            Op::Route(RouteCommand::Ls) => ops.route_ls().await,
            Op::Service(ServiceCommand::Set { name, fields }) => ops.service_set(&name, fields.to_json()).await,
            Op::Service(ServiceCommand::Rm { name, force }) => ops.service_rm(&name, force).await,
            Op::Service(ServiceCommand::Ls) => ops.service_ls().await,
            Op::Cert(CertCommand::Put { name, cert, key }) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
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

fn check(config_path: Option<PathBuf>, routes: Option<PathBuf>, certs: Option<PathBuf>) -> ExitCode {
    let mut routes_path = routes;
    let mut certs_path = certs;
    if let Some(path) = &config_path {
        match ConfigFile::load(path) {
            Ok(file) => {
                println!("{}: ok", path.display());
                if routes_path.is_none() {
                    routes_path = file.server.routes;
                }
                if certs_path.is_none() {
                    certs_path = file.tls.certs;
                }
            }
            Err(e) => {
                println!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let certs_ok = match &certs_path {
        Some(dir) => check_certs(dir),
        None => true,
    };
    let Some(routes_path) = routes_path else {
        if config_path.is_some() || certs_path.is_some() {
            return if certs_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        println!("nothing to check: give --config FILE, --routes FILE and/or --certs DIR");
        return ExitCode::FAILURE;
    };
    if !certs_ok {
        // Still report the routes file's problems below, but fail.
        let _ = check_routes(&routes_path);
        return ExitCode::FAILURE;
    }
    check_routes(&routes_path)
}

/// Prints every certificate of `dir` (names, expiry) or why it does not load. True when all load.
fn check_certs(dir: &std::path::Path) -> bool {
    let now = reveille::tls::cert::now();
    match reveille::tls::dir::check(dir) {
        Ok(results) => {
            let mut ok = true;
            for (name, result) in results {
                match result {
                    Ok(c) => {
                        let expired = if c.expired(now) { " EXPIRED" } else { "" };
                        let until = reveille::tls::cert::format_time(c.not_after);
                        println!("certificate {name}: ok, {} until {until}{expired}", c.names_display());
                    }
                    Err(e) => {
                        ok = false;
                        println!("certificate {name}: {e}");
                    }
                }
            }
            ok
        }
        Err(e) => {
            println!("{e}");
            false
        }
    }
}

fn check_routes(routes_path: &std::path::Path) -> ExitCode {
    match file::load(routes_path) {
        Ok(set) => {
            println!("{}: ok ({} routes, {} services)", routes_path.display(), set.routes.len(), set.services.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}
