//! reveille's load labs: programs, not benchmarks. Each drives real processes (reveille, nginx, HAProxy, wrk,
//! etcd, Docker) on loopback and prints a markdown report, also written under `target/`.
//!
//! `cargo run --release -p reveille-lab -- etcd|passivation|groups|attack|cluster|peers|backends|chaos`. Each lab's
//! method and tunables are in its module's header. The reveille binary measured is the workspace's, built with the same profile as
//! this one (see [`reveille_bin`]).
//!
//! # Layout
//! - [`etcd`]: how fast a change in etcd reaches the proxy, and what loading 100,000 routes costs.
//! - [`passivation`]: waking a stopped container through reveille against starting it directly; 10,000 held
//!   requests.
//! - [`groups`]: waking a tenant with a dependency (`depends_on`) through reveille against starting both
//!   directly; 20 tenants sharing one dependency woken at once, the dependency started once.
//! - [`attack`]: a bystander's requests while hostile clients or a stalling backend hold reveille's
//!   connections, with the slow-client protections off and on.
//! - [`cluster`]: three replicas sharing one etcd: etcd writes with 1,000 active tenants, failover of the
//!   replica deciding idle stops, a cold start through the replica that does not start it, pause against stop.
//! - [`peers`]: reveille against nginx, HAProxy, Traefik and Caddy in every scenario of issue 13 (keep-alive,
//!   access log, 500 connections, a connection per request, 64 KiB, TLS handshakes and keep-alive, HTTP/2, two
//!   cores, resumed handshakes, reveille serving an ACME certificate), with the backend reached directly beside
//!   them.
//! - [`backends`]: reveille against nginx and HAProxy with backends that are not plain HTTP/1.1 (issue 27):
//!   gRPC unary over h2c end to end, HTTPS backends with keep-alive.
//! - [`chaos`]: the chaos suite's long run (issue 29): faults on a seeded schedule against three replicas and a
//!   three-member etcd in containers, the history checked, the table fault by invariant; the partition scenario.
//! - [`onecore`]: what `peers` and `attack` share: the proxy on one pinned CPU, the clients on another, nginx.
//! - [`tlsclient`]: the peers lab's certificate and handshake client.
//!
//! Helpers shared with the integration tests (wrk, percentiles, the HTTP client, etcd, the busybox image, ...)
//! are in the `testkit` crate.
#![forbid(unsafe_code)]

mod attack;
mod backends;
mod chaos;
mod cluster;
mod etcd;
mod groups;
mod onecore;
mod passivation;
mod peers;
mod tlsclient;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const USAGE: &str = "usage: reveille-lab etcd|passivation|groups|attack|cluster|peers|backends|chaos";

/// Names of labs whose measurements are scenarios of `peers`: the command that runs them, for the error.
const MOVED: [(&str, &str); 2] = [
    (
        "load",
        "PEERS_SCENARIOS=1 PEERS_PROXIES=reveille,nginx,haproxy reveille-lab peers (scenario 1a; 1b and 1c with \
         the access log, which LOAD_ACCESS_LOG chose; LOAD_ROUNDS, LOAD_SECONDS, ... are PEERS_ROUNDS, \
         PEERS_SECONDS, ...)",
    ),
    (
        "tls",
        "PEERS_SCENARIOS=5a,5b,5c PEERS_PROXIES=reveille,nginx,reveille-acme reveille-lab peers (5a full \
         handshakes, 5b keep-alive, 5c resumed, which TLS_MEASURE chose; TLS_VERSION and TLS_CLIENT_VERIFY are \
         PEERS_TLS_VERSION and PEERS_CLIENT_VERIFY; TLS_ROUNDS, TLS_SECONDS, ... are PEERS_ROUNDS, PEERS_SECONDS, \
         ...)",
    ),
];

fn main() {
    let lab = std::env::args().nth(1).unwrap_or_default();
    let ok = match lab.as_str() {
        // Inside the passivation lab's `slow` container: be its HTTP server.
        passivation::CONTAINER_BACKEND_ARG => {
            passivation::container_backend();
            true
        }
        "etcd" => etcd::main(),
        "passivation" => passivation::main(),
        "groups" => groups::main(),
        "attack" => attack::main(),
        "cluster" => cluster::main(),
        "peers" => peers::main(),
        "backends" => backends::main(),
        "chaos" => chaos::main(),
        other => {
            match MOVED.iter().find(|(name, _)| *name == other) {
                Some((name, how)) => eprintln!("reveille-lab {name}: this lab is part of the peers lab now: {how}"),
                None => eprintln!("{USAGE}"),
            }
            std::process::exit(2);
        }
    };
    // A lab returns after its children, containers and temp files are gone: exiting now leaks nothing.
    if !ok {
        std::process::exit(1);
    }
}

/// `sh -c RAISE_NOFILE <program> <args>...` raises the soft `RLIMIT_NOFILE` to 65536 (to the hard limit if that
/// is lower), then becomes `<program>` (`exec "$0" "$@"`), so the child's pid is the program's.
pub(crate) const RAISE_NOFILE: &str = "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"";

/// Adds `-c RAISE_NOFILE <reveille> serve --routes <routes> --http 127.0.0.1:<http> --admin 127.0.0.1:<admin>`
/// to `cmd`, a `sh` (or a `taskset ... sh`): how the labs start reveille with a raised fd limit
/// ([`RAISE_NOFILE`]). The caller adds its own flags.
pub(crate) fn serve<'a>(cmd: &'a mut Command, routes: &Path, http: u16, admin: u16) -> &'a mut Command {
    cmd.arg("-c")
        .arg(RAISE_NOFILE)
        .arg(reveille_bin())
        .arg("serve")
        .arg("--routes")
        .arg(routes)
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
}

/// The reveille binary the labs start: `REVEILLE_BIN` if set, else `reveille` next to this executable. Run by
/// `cargo run`, this first has cargo build it with this executable's profile, so it is never stale (building a
/// package's library, as this crate does, does not build its binary).
pub(crate) fn reveille_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("REVEILLE_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("the executable's directory").to_path_buf();
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "dev",
                Some(other) => other,
                None => "release",
            };
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--package", "reveille", "--bin", "reveille", "--profile", profile])
                .current_dir(testkit::machine::workspace_root())
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("could not build the reveille binary ({status:?})");
                std::process::exit(1);
            }
        }
        let bin = dir.join("reveille");
        if !bin.is_file() {
            eprintln!("{} not found: build it with `cargo build --release -p reveille`", bin.display());
            std::process::exit(1);
        }
        bin
    })
}

/// The cargo profile [`reveille_bin`] was built with, from its directory's name: `debug`, `release`, another
/// profile's name, or `unknown` (a `REVEILLE_BIN` elsewhere).
pub(crate) fn reveille_profile() -> String {
    let dir = reveille_bin().parent().and_then(|d| d.file_name()).and_then(|n| n.to_str());
    match dir {
        Some(name) if std::env::var_os("REVEILLE_BIN").is_none() || ["debug", "release"].contains(&name) => {
            name.to_string()
        }
        _ => "unknown".to_string(),
    }
}
