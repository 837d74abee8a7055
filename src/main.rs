//! The `reveille` binary: parses the command line, sets up logging and the runtime for `serve`, dispatches the
//! other commands to the library's `cli`, and maps the outcome to an exit code. Everything else lives in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reveille::{Cli, Command, Config, ConfigFile, Listeners, Scheduler};

mod allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, flags } => serve(config, flags),
        Command::Tool(tool) => reveille::run_tool(*tool),
    }
}

fn serve(config_path: Option<PathBuf>, flags: Box<ConfigFile>) -> ExitCode {
    let config = match Config::resolve(config_path.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reveille: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = reveille::init_logging(config.log_format, &config.log_level);
    // Per-core: this thread's single-threaded runtime is worker 0 and `start` adds the others. Shared: tokio's
    // multi-thread scheduler with every worker.
    let runtime = match (config.scheduler, config.worker_threads()) {
        (Scheduler::PerCore, _) | (_, 1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        (Scheduler::Shared, n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
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
            reveille::start(&config, listeners, reveille::docker(&config)).await
        };
        let running = match started.await {
            Ok(r) => r,
            Err(e) => {
                // Said once: in the log, where the rest of the startup is (a multi-line error kept on one line,
                // see `telemetry`), or on stderr when the log filter lets no error through.
                if tracing::enabled!(tracing::Level::ERROR) {
                    tracing::error!("cannot start: {e}");
                } else {
                    eprintln!("reveille: {e}");
                }
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

/// mimalloc: per-thread free lists without glibc's locking and trimming; measured in the peer benchmark
/// (docs/benchmarks.md). Through [`allocator::Allocator`], which asks it the cheap way for common layouts.
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;
