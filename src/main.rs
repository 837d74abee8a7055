//! The `reveille` binary: command line, logging, runtime, exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reveille::app::{self, Listeners};
use reveille::config::{Config, ConfigFile, Overrides};
use reveille::control::file;

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
    /// Validate a config file and/or a routes file, print what is wrong, exit 0 (valid) or 1.
    Check {
        /// Config file to check (and the routes file it names).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Routes file to check.
        #[arg(long, value_name = "FILE")]
        routes: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, flags } => serve(config, flags),
        Command::Check { config, routes } => check(config, routes),
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
            app::start(&config, listeners).await
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

fn check(config_path: Option<PathBuf>, routes: Option<PathBuf>) -> ExitCode {
    let mut routes_path = routes;
    if let Some(path) = &config_path {
        match ConfigFile::load(path) {
            Ok(file) => {
                println!("{}: ok", path.display());
                if routes_path.is_none() {
                    routes_path = file.server.routes;
                }
            }
            Err(e) => {
                println!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(routes_path) = routes_path else {
        if config_path.is_some() {
            return ExitCode::SUCCESS;
        }
        println!("nothing to check: give --config FILE and/or --routes FILE");
        return ExitCode::FAILURE;
    };
    match file::load(&routes_path) {
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
