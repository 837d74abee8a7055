//! `reveille check`: validates a config file, a routes file and/or a certificates directory without starting
//! anything, prints what is wrong, and says so in the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::ConfigFile;
use crate::control::file;
use crate::routes::DockerHostNames;

/// Validates a config file and/or a routes file and/or a certificates directory: 0 when all are valid, else 1.
/// Files are read as `serve` reads them: regular files of at most `max_file_size` bytes (the flag's, else the
/// config file's, else the default).
pub(super) fn check(
    config_path: Option<PathBuf>,
    routes: Option<PathBuf>,
    certs: Option<PathBuf>,
    max_file_size: Option<u64>,
) -> ExitCode {
    let mut routes_path = routes;
    let mut certs_path = certs;
    let mut limit = max_file_size.unwrap_or(crate::fsread::DEFAULT_MAX_SIZE);
    // With a config file, a service's `runtime` (`docker_host`) must be one of its runtimes; without, any name.
    let mut hosts = DockerHostNames::Any;
    if let Some(path) = &config_path {
        match ConfigFile::load(path, limit) {
            Ok(file) => {
                if max_file_size.is_none() {
                    limit = file.server.max_file_size.unwrap_or(limit);
                }
                let runtimes = crate::config::docker_hosts(&file.docker)
                    .and_then(|_| crate::config::named_runtimes(&file.runtimes, &file.docker));
                if let Err(e) = runtimes {
                    println!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("{}: ok", path.display());
                hosts = DockerHostNames::known(crate::config::runtime_names(&file));
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
        Some(dir) => check_certs(dir, limit),
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
        let _ = check_routes(&routes_path, &hosts, limit);
        return ExitCode::FAILURE;
    }
    check_routes(&routes_path, &hosts, limit)
}

/// Prints every certificate of `dir` (names, expiry) or why it does not load. True when all load.
fn check_certs(dir: &std::path::Path, max_file_size: u64) -> bool {
    let now = crate::tls::cert::now();
    match crate::tls::dir::check(dir, max_file_size) {
        Ok(results) => {
            let mut ok = true;
            for (name, result) in results {
                match result {
                    Ok(c) => {
                        let expired = if c.expired(now) { " EXPIRED" } else { "" };
                        let until = crate::tls::cert::format_time(c.not_after);
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

/// Prints whether the routes file is valid, every problem with its line, then the warnings (also when there are
/// errors). An unknown key fails the check: serving ignores it, and a misspelt key is a setting silently off.
fn check_routes(routes_path: &std::path::Path, hosts: &DockerHostNames, max_file_size: u64) -> ExitCode {
    let warnings = match file::load(routes_path, hosts, max_file_size) {
        Ok(loaded) if loaded.unknown_keys.is_empty() => {
            let counts = loaded.counts();
            println!("{}: ok ({} routes, {} services)", routes_path.display(), counts.routes, counts.services);
            if let Some(warning) = loaded.warning() {
                println!("warning: {warning}");
            }
            return ExitCode::SUCCESS;
        }
        Ok(loaded) => {
            let warnings = loaded.warning().into_iter().collect();
            let path = routes_path.to_owned();
            println!("{}", file::FileError::Invalid { path, errors: loaded.unknown_keys, warnings: Vec::new() });
            warnings
        }
        Err(e) => {
            println!("{e}");
            match e {
                file::FileError::Invalid { warnings, .. } => warnings,
                _ => Vec::new(),
            }
        }
    };
    for warning in warnings {
        println!("warning: {warning}");
    }
    ExitCode::FAILURE
}
