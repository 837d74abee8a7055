//! What the `peers` lab's one-core setting needs (`attack` uses part of it): each proxy under test runs
//! single-threaded on one pinned CPU while the clients and the backend run on another; the child processes live
//! in one temp dir; reveille and nginx are started from one template each; and every run records the proxy's CPU
//! use and both CPUs' load.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::env::{choose, env_or};
use testkit::process::{find_tool, read_log, KillOnDrop};
use testkit::procfs::{busy_pct, cpu_times, proc_status, status_kib, tree_cpu_ticks};

/// The settings of a lab that measures in rounds, from `<PREFIX>_ROUNDS`, `_SECONDS`, `_WARMUP`, `_PROXY_CPU`
/// (0), `_CLIENT_CPU` (1) and `_PROXIES` (all).
pub(crate) struct Rounds {
    /// Measured rounds, each running every proxy (and measurement) once, interleaved.
    pub(crate) rounds: usize,
    /// Seconds per measured run.
    pub(crate) seconds: u64,
    /// Seconds of the warm-up run per proxy (and measurement).
    pub(crate) warmup: u64,
    /// The CPU the proxy under test is pinned to.
    pub(crate) proxy_cpu: usize,
    /// The CPU of the clients, the backend and this process.
    pub(crate) client_cpu: usize,
    /// The proxies measured, in this order.
    pub(crate) proxies: Vec<&'static str>,
}

impl Rounds {
    /// Reads the settings; `defaults` are (rounds, seconds, warm-up seconds), `proxies` the known ones.
    pub(crate) fn from_env(prefix: &str, defaults: (usize, u64, u64), proxies: &[&'static str]) -> Self {
        let var = |name: &str| format!("{prefix}_{name}");
        Self {
            rounds: env_or(&var("ROUNDS"), defaults.0),
            seconds: env_or(&var("SECONDS"), defaults.1),
            warmup: env_or(&var("WARMUP"), defaults.2),
            proxy_cpu: env_or(&var("PROXY_CPU"), 0),
            client_cpu: env_or(&var("CLIENT_CPU"), 1),
            proxies: choose(&var("PROXIES"), proxies),
        }
    }
}

/// Finds every tool; `None` after saying which are missing (the lab is skipped).
pub(crate) fn find_tools<const N: usize>(lab: &str, names: [&'static str; N]) -> Option<[PathBuf; N]> {
    let found = names.map(find_tool);
    let missing: Vec<_> = names.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        println!("{lab}: skipped, not found on PATH (or in /usr/sbin, /sbin): {}", missing.join(", "));
        return None;
    }
    Some(found.map(Option::unwrap))
}

/// `taskset -c <cpus> <program>`: `cpus` is one CPU (`0`) or a list (`0-1`, `0,2`).
pub(crate) fn pinned(taskset: &Path, cpu: impl std::fmt::Display, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(taskset);
    cmd.arg("-c").arg(cpu.to_string()).arg(program);
    cmd
}

/// Pins every thread of this process (and so every thread it starts later) to `cpu`; false after saying why
/// it cannot (the lab is skipped).
pub(crate) fn pin_all_threads(lab: &str, taskset: &Path, cpu: usize) -> bool {
    let out = Command::new(taskset).args(["-a", "-cp", &cpu.to_string(), &std::process::id().to_string()]).output();
    let error = match out {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    println!("{lab}: skipped, cannot pin to CPU {cpu}: {error}");
    false
}

/// The child processes and their temporary directory. Dropping it (also while unwinding from a panic) kills
/// and reaps every child, then removes the directory.
pub(crate) struct Lab {
    // Field order is drop order: children before the directory they write into.
    children: Vec<KillOnDrop>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A new temp dir named `<prefix>XXXXXX`.
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            children: Vec::new(),
            dir: tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a temp file");
        path
    }

    /// Spawns `cmd` with stdout and stderr going to `<name>.log`, then waits until `ready` (checked every
    /// 50 ms, for up to 20 s) returns true. Returns the child's pid and its log. Panics if it cannot start.
    pub(crate) fn start(&mut self, name: &str, cmd: Command, ready: impl FnMut() -> bool) -> (u32, PathBuf) {
        self.try_start(name, cmd, ready).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], returning why the child could not be started or did not get ready (with its log);
    /// such a child is killed at once.
    pub(crate) fn try_start(
        &mut self,
        name: &str,
        mut cmd: Command,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(u32, PathBuf), String> {
        let log = self.path(&format!("{name}.log"));
        let file = File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let out = file.try_clone().map_err(|e| format!("cannot clone a file handle: {e}"))?;
        // Its own process group, killed whole when the lab ends (nginx's workers with their master).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null()).stdout(out).stderr(file);
        let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status}) before it was ready:\n{}", read_log(&log)));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not ready after 20s:\n{}", read_log(&log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.children.push(child);
        Ok((pid, log))
    }
}

/// `GET path` on 127.0.0.1:port with this `Host`: the status and body, `None` without an answer within 2 s.
pub(crate) fn get(port: u16, host: &str, path: &str) -> Option<(u16, bytes::Bytes)> {
    testkit::http::fetch(port, "GET", host, path, Duration::from_secs(2))
}

/// reveille on CPU `cpu`, single-threaded, without access log, routing each `(host, backend port)` of `routes`
/// to a service of its own (`routes.toml` in the lab's dir), its soft `RLIMIT_NOFILE` raised
/// ([`crate::RAISE_NOFILE`]): `serve --routes .. --http .. --admin .. --threads 1 --access-log false --log-level
/// warn`. The caller adds its own flags.
pub(crate) fn reveille(
    lab: &Lab,
    taskset: &Path,
    cpu: usize,
    routes: &[(&str, u16)],
    http: u16,
    admin: u16,
) -> Command {
    let opts = ReveilleOpts { file: "routes.toml", threads: 1, access_log: false };
    reveille_with(lab, taskset, &cpu.to_string(), routes, (http, admin), &opts)
}

/// What [`reveille_with`] may change from [`reveille`]'s defaults.
pub(crate) struct ReveilleOpts<'a> {
    /// The routes file's name in the lab's dir (one per reveille started).
    pub(crate) file: &'a str,
    /// `--threads`.
    pub(crate) threads: usize,
    /// `--access-log true --log-level info` (the default level: the access log is written at `info`), else
    /// `--access-log false --log-level warn`.
    pub(crate) access_log: bool,
}

/// [`reveille`] on the CPUs `cpus` (`0`, `0-1`), listening on `ports` (HTTP, admin), as `opts` says.
pub(crate) fn reveille_with(
    lab: &Lab,
    taskset: &Path,
    cpus: &str,
    routes: &[(&str, u16)],
    (http, admin): (u16, u16),
    opts: &ReveilleOpts<'_>,
) -> Command {
    let mut services = String::new();
    let mut table = String::from("[routes]\n");
    for (i, (host, backend)) in routes.iter().enumerate() {
        let _ = writeln!(services, "[services.s{i}]\nbackends = [\"127.0.0.1:{backend}\"]");
        let _ = writeln!(table, "\"{host}\" = \"s{i}\"");
    }
    let routes = lab.write(opts.file, &(services + &table));
    let mut cmd = pinned(taskset, cpus, "sh");
    let (access_log, level) = if opts.access_log { ("true", "info") } else { ("false", "warn") };
    crate::serve(&mut cmd, &routes, http, admin).args([
        "--threads",
        &opts.threads.to_string(),
        "--access-log",
        access_log,
        "--log-level",
        level,
    ]);
    cmd
}

/// How nginx is set up beyond the shared part.
pub(crate) struct NginxSite<'a> {
    /// Its directory (prefix) in the lab's dir, one per nginx started: `nginx`.
    pub(crate) name: &'a str,
    /// `worker_processes`: 1 runs without a master process (`master_process off`), more with one.
    pub(crate) workers: usize,
    /// The upstream's `keepalive`: idle connections to the backend each worker keeps (64).
    pub(crate) keepalive: usize,
    pub(crate) host: &'a str,
    pub(crate) backend: u16,
    /// What follows `listen` (`127.0.0.1:<port>`, then `ssl ...` for TLS).
    pub(crate) listen: String,
    /// Lines added to the `http` block (TLS settings).
    pub(crate) http: &'a str,
    /// Lines added to the `server` block (certificate, `http2 on`, `access_log`).
    pub(crate) server: String,
    /// Lines added to the `location` block (more `proxy_set_header`s).
    pub(crate) location: &'a str,
}

/// nginx on the CPUs `cpu` (`0`, `0-1`), under `<lab>/<site.name>`, with one worker and no master process (or
/// `site.workers` workers and a master process, `user root` so that they can reach the lab's dir): its command
/// and its error log. keepalive_requests: nginx closes a keep-alive connection after 1000 requests by default;
/// reveille and haproxy do not, so the limit is lifted on both sides to compare like with like. Its soft
/// `RLIMIT_NOFILE` is raised ([`crate::RAISE_NOFILE`]).
pub(crate) fn nginx(
    lab: &Lab,
    taskset: &Path,
    nginx: &Path,
    cpu: impl std::fmt::Display,
    site: &NginxSite<'_>,
) -> (Command, PathBuf) {
    let prefix = lab.path(site.name);
    std::fs::create_dir_all(&prefix).unwrap();
    let p = prefix.display();
    let NginxSite { name, workers, keepalive, host, backend, listen, http, server, location } = site;
    let master = if *workers > 1 { "on;\nuser root" } else { "off" };
    let conf = format!(
        "worker_processes {workers};
daemon off;
master_process {master};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
{http}    upstream bench {{
        server 127.0.0.1:{backend};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        server_name {host};
{server}        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
{location}        }}
    }}
}}
"
    );
    let conf_path = lab.write(&format!("{name}/nginx.conf"), &conf);
    let mut cmd = pinned(taskset, cpu, "sh");
    cmd.arg("-c").arg(crate::RAISE_NOFILE).arg(nginx);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf_path).arg("-e").arg(prefix.join("error.log"));
    (cmd, prefix.join("error.log"))
}

/// What a run cost the machine.
#[derive(Default, Clone, Copy)]
pub(crate) struct Usage {
    /// CPU time the proxy used, as a share of one CPU over the run.
    pub(crate) proxy_cpu_pct: f64,
    /// How busy the proxy's CPU and the client's CPU were over the run, all processes included (this shows
    /// when something else on the machine competed for them).
    pub(crate) cpu_busy_pct: (f64, f64),
    /// The proxy's resident memory after the run, in KiB.
    pub(crate) proxy_rss_kib: Option<u64>,
    /// CPU time the proxy used over the run, in seconds (NaN if unknown).
    pub(crate) proxy_cpu_secs: f64,
}

/// Runs `f` and measures what it cost the proxy `pid` (pinned to `cpus.0`), if there is one, and the two CPUs
/// `cpus`. The proxy's CPU time includes its child processes' (nginx's workers).
pub(crate) fn measure<T>(
    pid: Option<u32>,
    cpus: (usize, usize),
    ticks_per_sec: f64,
    f: impl FnOnce() -> T,
) -> (T, Usage) {
    let ticks_before = pid.and_then(tree_cpu_ticks);
    let cpus_before = (cpu_times(cpus.0), cpu_times(cpus.1));
    let started = Instant::now();
    let result = f();
    let wall = started.elapsed().as_secs_f64();
    let ticks_after = pid.and_then(tree_cpu_ticks);
    let cpus_after = (cpu_times(cpus.0), cpu_times(cpus.1));
    let mut usage = Usage { proxy_cpu_secs: f64::NAN, ..Usage::default() };
    if let (Some(a), Some(b)) = (ticks_before, ticks_after) {
        usage.proxy_cpu_secs = b.saturating_sub(a) as f64 / ticks_per_sec;
        usage.proxy_cpu_pct = usage.proxy_cpu_secs / wall * 100.0;
    }
    usage.proxy_rss_kib = pid.and_then(|pid| status_kib(&proc_status(pid), "VmRSS:"));
    usage.cpu_busy_pct = (busy_pct(cpus_before.0, cpus_after.0), busy_pct(cpus_before.1, cpus_after.1));
    (result, usage)
}

/// The part of a run's summary line about the proxy process and the CPUs.
pub(crate) fn describe_usage(u: &Usage) -> String {
    format!(
        "{:>3.0}% CPU, {:>6} MiB  CPUs busy {:>3.0}% / {:>3.0}%",
        u.proxy_cpu_pct,
        u.proxy_rss_kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        u.cpu_busy_pct.0,
        u.cpu_busy_pct.1
    )
}
