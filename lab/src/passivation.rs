//! Passivation benchmark: what waking a stopped container through reveille costs over starting it directly, and
//! what holding 10,000 requests for a waking container costs reveille.
//!
//! Run with `cargo run --release -p reveille-lab -- passivation`. Needs Docker (`docker version` must reach a daemon) and
//! `/bin/busybox` (Debian's busybox-static); without them it says so and exits 0. `wrk` (`/usr/bin/wrk`) is
//! needed for the latency part of the second benchmark only: without it that part is skipped and the report
//! says so. Only 127.0.0.1 and the containers' addresses on the Docker bridge are contacted. Nothing is
//! pinned: reveille, Docker, the containers, wrk and this process share the machine's CPUs.
//!
//! Setup: no image can be pulled, so the image is built `FROM scratch` with `/bin/busybox` and
//! `/www/index.html` (`hello from <tag>`), by testkit's builder as for the integration tests, plus (see 2.) this lab binary
//! at `/bin/bench-backend` with the shared libraries `ldd` lists for it. Two containers are created from it
//! (the setup never starts them): `web`, running `sh -c 'trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait'`
//! (the trap makes `docker stop` fast), and `slow`, running `sh -c 'trap "exit 0" TERM; sleep
//! <PASSIVATION_BENCH_READY_DELAY>; /bin/bench-backend --container-backend & wait'`, so it is not ready until
//! seconds after its start. A plain service `plain` has an in-process backend (hyper HTTP/1.1 on its own
//! thread, `200 ok`). One reveille serves the whole run, started as `sh -c 'ulimit -n 65536 || ulimit -n <hard
//! limit>; exec reveille serve --routes FILE --http .. --admin .. --access-log false --log-level warn
//! --max-connections 30000'` (default threads and `[passivation]` settings; `idle_timeout = "0"` for both
//! containers, so only the benchmark stops them; `slow` has `wake_timeout = "120s"` and `max_held = 20000`).
//! Image, containers, reveille and the temp dir are removed at the end, also on a panic.
//!
//! 1. Cold start: `PASSIVATION_BENCH_WARMUP` (1) uncounted then `PASSIVATION_BENCH_ROUNDS` (20) counted rounds,
//!    each measuring both ways once on the `web` container, the order alternating between rounds (direct
//!    first in even rounds, reveille first in odd ones). Before each measurement the container is stopped for
//!    Docker and for reveille (`GET /api/services` → `"state": "stopped"`), and 300 ms pass.
//!    - direct: `t0`; `DockerRuntime::start` (Docker's start API call, through reveille's own runtime client);
//!      `DockerRuntime::inspect` for the container's IP; TCP connects to `ip:8080` in a loop (1 ms pause after
//!      each refused attempt) until one succeeds: `t1`. Then `DockerRuntime::stop` (5 s grace) and wait until
//!      reveille, told by Docker's events, reports the container stopped.
//!    - through reveille: `t0`; a new TCP connection to reveille and `GET /` with `Host: web.bench.test` and
//!      `Connection: close`; `t1` when the response head has arrived (time to first byte). The status must be
//!      200 and the body `hello from ...`. Then `POST /api/services/web/sleep` (retried while it answers 409) and
//!      poll `/api/services` every 10 ms until `"stopped"`: reveille stops the container itself.
//!
//!    Overhead = median(through reveille) − median(direct). reveille's path also includes its readiness probe
//!    (a TCP connect every `probe_interval`) and the forwarded request itself (busybox forks per connection),
//!    which the direct path does not. The report also gives the direct path by step (start call, inspect,
//!    connect wait) and reveille's counted wakes by phase from `reveille_wake_phase_seconds` (sum / count,
//!    differences over the counted rounds): `start_call` is Docker's start API call, `running` until Docker
//!    reports the container running, `ready` until the first successful probe, `total` from the held request
//!    until ready.
//!
//! 2. Held requests: `slow` is stopped (reveille knows it). First, at rest: `wrk -t1 -c10 -d<WRK_SECONDS>s
//!    --latency -H 'Host: plain.bench.test'` against reveille, then reveille's `VmRSS` and open fds. Then
//!    `PASSIVATION_BENCH_HELD` (10,000) TCP connections each send `GET /` with `Host: slow.bench.test` and
//!    `Connection: close` (one tokio task each): the first alone (it triggers the wake), then the rest in
//!    batches of `PASSIVATION_BENCH_BATCH` (100), each batch sent (connected and written) before the next
//!    starts, 2 ms apart. Batches must stay below reveille's listen backlog (4096; it was std's 128 when this was written), or
//!    dropped SYNs are retried a second later and the ramp outlasts the hold. When reveille's
//!    `reveille_held_requests` gauge shows them all, the same wrk command runs against `plain` for
//!    `PASSIVATION_BENCH_WRK_HELD_SECONDS` (3) while they are held; the report says whether wrk ended before the
//!    first held request was answered. Meanwhile a thread samples `/metrics` (`reveille_held_requests`),
//!    `VmRSS` and the open fds of reveille every 50 ms. Reported: how many held requests got 200 with the right
//!    body (all must), the other outcomes, the ramp time and listen-queue overflows during it, first request
//!    sent → last response read, `VmRSS` at rest, the largest `VmRSS` sampled while every request was held
//!    (minus rest, ÷ held requests = bytes per held request), `VmHWM` (lifetime peak, the release included), and
//!    plain's p99 while held ÷ at rest.
//!
//!    Why `slow` is not `busybox httpd`: httpd listens with a backlog of 9, so when reveille releases thousands
//!    of held requests at once, most connects are dropped and retried with exponential backoff; in a trial run
//!    with 1,000 requests the release took 60 s and 12% got reveille's 504 (upstream response timeout). That
//!    measures busybox, not reveille. So `slow` runs this binary with `--container-backend`: a hyper HTTP/1.1
//!    server on port 8080 answering 200 with `/www/index.html`, listen backlog 16384 (capped by the
//!    container's `net.core.somaxconn`). `PASSIVATION_BENCH_SLOW_SERVER=busybox` runs httpd there instead.
//!
//!    File descriptors: a held request costs reveille one fd while held, and one more (its upstream
//!    connection) from its release until answered; it costs this process one. If reveille's `RLIMIT_NOFILE`
//!    (65536, or the hard limit when that cannot be raised) or this process's soft limit (`/proc/self/limits`)
//!    cannot hold the requested count, the count is lowered to fit and the report says so. If reveille's limit
//!    is below two per request, the report says so too, with the peak of open fds sampled.
//!
//! Timings are reported, never asserted. Correctness is: a failed measurement or a held request that did not
//! get its 200 is reported (with the statuses and errors) and the process then exits 1.
//!
//! The report goes to stdout and to `target/passivation-bench.md`. Environment: `PASSIVATION_BENCH_ROUNDS`
//! (20), `PASSIVATION_BENCH_WARMUP` (1), `PASSIVATION_BENCH_HELD` (10000), `PASSIVATION_BENCH_BATCH` (100),
//! `PASSIVATION_BENCH_READY_DELAY` (6, seconds `slow` sleeps before serving: long enough for the ramp and the
//! wrk run during the hold), `PASSIVATION_BENCH_WRK_SECONDS` (5), `PASSIVATION_BENCH_WRK_HELD_SECONDS` (3),
//! `PASSIVATION_BENCH_SLOW_SERVER` (`bench` or `busybox`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reveille::{ContainerState, DockerRuntime};
use testkit::admin::{http_request, metrics_text, phase_means, phase_totals, service_state, wait_state, STATE_TIMEOUT};
use testkit::backend::{serve_fixed, start_backend};
use testkit::docker::{
    container_script, is_hello, unusable, web_script, DockerThings, BUSYBOX, CONTAINER_PORT, SETTLE,
};
use testkit::env::{env_at_least, env_or};
use testkit::machine::Machine;
use testkit::ports::free_ports;
use testkit::process::{read_log, KillOnDrop};
use testkit::procfs::{listen_backlog, listen_overflows, nofile_limit, open_fds, proc_status, status_kib};
use testkit::prometheus::sample;
use testkit::report::{heading, print_log, timing_row, write_report, Table, TIMING_ALIGN, TIMING_COLUMNS};
use testkit::stats::{format_us, median};
use testkit::wire::{read_reply, send_get, Reply};
use testkit::wrk::WRK;
use tokio::runtime::Runtime;

const WEB: &str = "web";
const SLOW: &str = "slow";
const WEB_HOST: &str = "web.bench.test";
const SLOW_HOST: &str = "slow.bench.test";
const PLAIN_HOST: &str = "plain.bench.test";
const PLAIN_BODY: &[u8] = b"ok\n";
/// The argument that makes this binary the `slow` container's HTTP server.
pub(crate) const CONTAINER_BACKEND_ARG: &str = "--container-backend";
/// Where the image holds this binary.
const CONTAINER_BACKEND_PATH: &str = "/bin/bench-backend";
/// The listen backlog of that server (the kernel caps it at the container's `net.core.somaxconn`).
const CONTAINER_BACKEND_BACKLOG: u32 = 16384;
const WRK_CONNECTIONS: usize = 10;
/// File descriptors left aside, beyond the held requests' own, in reveille and in this process.
const FD_RESERVE: u64 = 200;
/// Pause between two batches of held requests.
const BATCH_PAUSE: Duration = Duration::from_millis(2);
/// How often the sampler reads `/metrics` and `/proc` during the hold.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Runs the lab; false if a measurement failed. Returns only after reveille is killed and the containers,
/// image and temp dir are removed.
pub(crate) fn main() -> bool {
    unless_unusable("passivation", run)
}

/// Runs `run`, a Docker lab needing `/bin/busybox`, unless Docker or busybox cannot be used here: then says
/// `<lab>: skipped, <why>` and returns true.
pub(crate) fn unless_unusable(lab: &str, run: fn() -> bool) -> bool {
    if let Some(why) = unusable(&[(BUSYBOX, "install Debian's busybox-static")]) {
        println!("{lab}: skipped, {why}");
        return true;
    }
    run()
}

// ---------------------------------------------------------------------------------------------------------
// Settings and machine

struct Settings {
    rounds: usize,
    warmup: usize,
    held: usize,
    batch: usize,
    ready_delay: u64,
    wrk_seconds: u64,
    wrk_held_seconds: u64,
    slow_server: SlowServer,
}

/// What serves HTTP in the `slow` container.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlowServer {
    /// This binary with [`CONTAINER_BACKEND_ARG`]: hyper, listen backlog [`CONTAINER_BACKEND_BACKLOG`].
    Bench,
    /// `busybox httpd`, as `web`: listen backlog 9.
    Busybox,
}

impl SlowServer {
    fn describe(self) -> &'static str {
        match self {
            SlowServer::Bench => {
                "this lab binary as a hyper HTTP/1.1 server (listen backlog 16384, capped by somaxconn)"
            }
            SlowServer::Busybox => "`busybox httpd -f -p 8080 -h /www` (listen backlog 9)",
        }
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_at_least("PASSIVATION_BENCH_ROUNDS", 20, 1),
            warmup: env_or("PASSIVATION_BENCH_WARMUP", 1),
            held: env_at_least("PASSIVATION_BENCH_HELD", 10_000, 1),
            batch: env_at_least("PASSIVATION_BENCH_BATCH", 100, 1),
            ready_delay: env_or("PASSIVATION_BENCH_READY_DELAY", 6),
            wrk_seconds: env_at_least("PASSIVATION_BENCH_WRK_SECONDS", 5, 1),
            wrk_held_seconds: env_at_least("PASSIVATION_BENCH_WRK_HELD_SECONDS", 3, 1),
            slow_server: match std::env::var("PASSIVATION_BENCH_SLOW_SERVER").as_deref() {
                Err(_) | Ok("bench") => SlowServer::Bench,
                Ok("busybox") => SlowServer::Busybox,
                Ok(other) => panic!("PASSIVATION_BENCH_SLOW_SERVER={other:?}: use bench or busybox"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Docker: the image and containers, removed on drop

/// The container script: `server` serving /www on port 8080 after `delay` seconds; exit at once on SIGTERM.
fn server_script(server: SlowServer, delay: Option<u64>) -> String {
    match server {
        SlowServer::Busybox if delay.is_none() => web_script(),
        SlowServer::Busybox => container_script(&format!("httpd -f -p {CONTAINER_PORT} -h /www"), delay),
        SlowServer::Bench => container_script(&format!("{CONTAINER_BACKEND_PATH} {CONTAINER_BACKEND_ARG}"), delay),
    }
}

/// The `slow` container's HTTP server (this binary run with [`CONTAINER_BACKEND_ARG`] in the container):
/// answers every request 200 with `/www/index.html` on port 8080, with a listen backlog large enough for
/// thousands of connections at once.
pub(crate) fn container_backend() {
    let page: &'static [u8] = Vec::leak(std::fs::read("/www/index.html").expect("read /www/index.html"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(SocketAddr::from(([0, 0, 0, 0], CONTAINER_PORT))).expect("bind :8080");
        serve_fixed(socket.listen(CONTAINER_BACKEND_BACKLOG).expect("listen"), page, None).await
    });
}

// ---------------------------------------------------------------------------------------------------------
// reveille

/// A running reveille: killed and reaped on drop.
pub(crate) struct Reveille {
    child: KillOnDrop,
    pub(crate) http: u16,
    pub(crate) admin: u16,
    pub(crate) log: PathBuf,
}

impl Reveille {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status(&self) -> String {
        proc_status(self.pid())
    }
}

/// Everything the run made. Field order is drop order: reveille, then the containers and image, then the temp
/// dir reveille writes its log into.
pub(crate) struct Lab {
    pub(crate) reveille: Option<Reveille>,
    pub(crate) docker: DockerThings,
    pub(crate) dir: tempfile::TempDir,
}

impl Lab {
    /// A lab with nothing made yet but its temp dir, `<prefix>XXXXXX`.
    pub(crate) fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir");
        Lab { reveille: None, docker: DockerThings::default(), dir }
    }
}

/// Writes the routes file and starts reveille with a raised fd limit, then waits for `/readyz` 200 and for
/// both tenants to have a known state.
fn start_reveille(lab: &mut Lab, web: &str, slow: &str, plain: u16, s: &Settings) -> Result<(), String> {
    let text = format!(
        "[services.{WEB}]\ncontainer = \"{web}\"\nport = {CONTAINER_PORT}\nidle_timeout = \"0\"\n\
         wake_timeout = \"60s\"\n\n\
         [services.{SLOW}]\ncontainer = \"{slow}\"\nport = {CONTAINER_PORT}\nidle_timeout = \"0\"\n\
         wake_timeout = \"120s\"\nmax_held = {}\n\n\
         [services.plain]\nbackends = [\"127.0.0.1:{plain}\"]\n\n\
         [routes]\n\"{WEB_HOST}\" = \"{WEB}\"\n\"{SLOW_HOST}\" = \"{SLOW}\"\n\"{PLAIN_HOST}\" = \"plain\"\n",
        s.held.max(20_000)
    );
    launch_reveille(lab, &text, &[WEB, SLOW])
}

/// Writes `routes` to the temp dir and starts reveille on it, as `sh -c 'ulimit -n 65536 || ...; exec reveille
/// serve --routes FILE --http .. --admin .. --access-log false --log-level warn --max-connections 30000'`, its
/// output to `reveille.log` in the temp dir; then waits for `/readyz` 200 and for each of `services` to have a
/// known state.
pub(crate) fn launch_reveille(lab: &mut Lab, routes_text: &str, services: &[&str]) -> Result<(), String> {
    let routes = lab.dir.path().join("routes.toml");
    std::fs::write(&routes, routes_text).map_err(|e| format!("write {}: {e}", routes.display()))?;
    let [http, admin] = free_ports();
    let log = lab.dir.path().join("reveille.log");
    let file = File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sh");
    crate::serve(&mut cmd, &routes, http, admin)
        .args(["--access-log", "false", "--log-level", "warn", "--max-connections", "30000"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let child = cmd.spawn().map_err(|e| format!("cannot start reveille: {e}"))?;
    let reveille = lab.reveille.insert(Reveille { child: KillOnDrop(child), http, admin, log });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_request(admin, "GET", "/readyz"), Some((200, _))) {
        if let Ok(Some(status)) = reveille.child.try_wait() {
            return Err(format!("reveille exited ({status}) before it was ready:\n{}", read_log(&reveille.log)));
        }
        if Instant::now() > deadline {
            return Err(format!("reveille not ready after 30 s:\n{}", read_log(&reveille.log)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for &name in services {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            match service_state(admin, name) {
                Some(state) if state != "unknown" => break,
                state if Instant::now() > deadline => {
                    return Err(format!("service {name}: state still {state:?} after {STATE_TIMEOUT:?}"))
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    Ok(())
}

/// reveille's own Docker runtime client, for the labs' direct starts and stops.
pub(crate) fn docker_client(rt: &Runtime) -> Result<DockerRuntime, String> {
    rt.block_on(DockerRuntime::connect(None, Duration::from_secs(10)))
        .map_err(|e| format!("cannot connect to Docker: {e}"))
}

// ---------------------------------------------------------------------------------------------------------
// The admin API, from blocking code

/// Has reveille stop `name` (`POST /api/services/<name>/sleep`, retried while requests are in flight), then
/// waits until reveille reports it stopped.
pub(crate) fn sleep_service(admin: u16, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        match http_request(admin, "POST", &format!("/api/services/{name}/sleep")) {
            Some((202, _)) => break,
            Some((409, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Some((status, body)) => {
                return Err(format!("sleep {name}: {status} {}", String::from_utf8_lossy(&body).trim()))
            }
            None => return Err(format!("sleep {name}: no answer from the admin API")),
        }
    }
    wait_state(admin, name, "stopped")
}

// ---------------------------------------------------------------------------------------------------------
// A minimal async HTTP/1.1 client for the proxied requests

// ---------------------------------------------------------------------------------------------------------
// 1. Cold start

#[derive(Default)]
struct ColdStart {
    /// µs, counted rounds only.
    direct_us: Vec<f64>,
    /// The direct start call, inspect and connect wait (after the inspect), µs; connect attempts.
    direct_start_us: Vec<f64>,
    direct_inspect_us: Vec<f64>,
    direct_connect_us: Vec<f64>,
    direct_attempts: Vec<f64>,
    reveille_us: Vec<f64>,
    /// Per counted round: (direct µs, reveille µs, direct first).
    rounds: Vec<(Option<f64>, Option<f64>, bool)>,
    /// Mean seconds and count per wake phase, counted rounds only.
    phases: Vec<(&'static str, f64, f64)>,
    /// `reveille_wakes_total{service="web"}` by result, at the end.
    wakes: Vec<(&'static str, f64)>,
    errors: Vec<String>,
}

#[derive(Clone, Copy)]
enum Way {
    Direct,
    Reveille,
}

/// Waits until the container is stopped for Docker and for reveille (has reveille stop it if it runs).
pub(crate) fn ensure_stopped(
    rt: &Runtime,
    dock: &DockerRuntime,
    admin: u16,
    service: &str,
    container: &str,
) -> Result<(), String> {
    if service_state(admin, service).as_deref() == Some("running") {
        sleep_service(admin, service)?;
    }
    wait_state(admin, service, "stopped")?;
    let info = rt.block_on(dock.inspect(container, None)).map_err(|e| format!("inspect {container}: {e}"))?;
    if info.state != ContainerState::Stopped {
        return Err(format!("{container}: reveille says stopped, Docker says {:?}", info.state));
    }
    Ok(())
}

/// One direct cold start, by step.
pub(crate) struct Direct {
    pub(crate) total: Duration,
    /// The start API call.
    pub(crate) start: Duration,
    /// The inspect call(s) for the IP.
    pub(crate) inspect: Duration,
    /// Connect attempts, the successful one included.
    pub(crate) attempts: usize,
}

/// Docker start → inspect → first TCP connect to the container's port (1 ms pause after each refused attempt).
/// The container is left running.
pub(crate) async fn direct_start(dock: &DockerRuntime, container: &str) -> Result<Direct, String> {
    let t0 = Instant::now();
    dock.start(container).await.map_err(|e| format!("start: {e}"))?;
    let started = t0.elapsed();
    let ip: IpAddr = loop {
        let info = dock.inspect(container, None).await.map_err(|e| format!("inspect: {e}"))?;
        if let Some(ip) = info.ip {
            break ip;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("no IP after 10 s (state {:?})", info.state));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let inspected = t0.elapsed();
    let mut attempts = 0;
    loop {
        attempts += 1;
        if tokio::net::TcpStream::connect((ip, CONTAINER_PORT)).await.is_ok() {
            let total = t0.elapsed();
            return Ok(Direct { total, start: started, inspect: inspected - started, attempts });
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("{ip}:{CONTAINER_PORT} still refused after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Docker start → inspect → first TCP connect to the container's port, then a stop through Docker.
fn measure_direct(rt: &Runtime, dock: &DockerRuntime, admin: u16, container: &str) -> Result<Direct, String> {
    ensure_stopped(rt, dock, admin, WEB, container)?;
    std::thread::sleep(SETTLE);
    let measured = rt.block_on(direct_start(dock, container));
    let stopped = rt.block_on(dock.stop(container, Some(Duration::from_secs(5)))).map_err(|e| format!("stop: {e}"));
    let measured = measured?;
    stopped?;
    wait_state(admin, WEB, "stopped")?;
    Ok(measured)
}

/// `GET /` through reveille on a fresh connection → response head, then a stop through reveille.
fn measure_reveille(rt: &Runtime, dock: &DockerRuntime, rev: &Reveille, container: &str) -> Result<Duration, String> {
    ensure_stopped(rt, dock, rev.admin, WEB, container)?;
    std::thread::sleep(SETTLE);
    let checked = rt.block_on(get_hello(rev.http, WEB_HOST));
    sleep_service(rev.admin, WEB)?;
    checked
}

/// `GET /` for `host` through reveille on a fresh connection: the time to the response head, which must be 200
/// with the image's page (`hello from ...`); 90 s at most.
pub(crate) async fn get_hello(http: u16, host: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let reply = async {
        let stream = send_get(http, host).await?;
        tokio::time::timeout(Duration::from_secs(90), read_reply(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response within 90 s"))?
    };
    let reply = reply.await.map_err(|e| format!("GET {host}: {e}"))?;
    if reply.status != 200 || !is_hello(&reply.body) {
        return Err(format!("GET {host}: {} {:?}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    Ok(reply.head_at - t0)
}

fn cold_start(rt: &Runtime, dock: &DockerRuntime, rev: &Reveille, container: &str, s: &Settings) -> ColdStart {
    let mut result = ColdStart::default();
    let mut before = phase_totals(rev.admin);
    for i in 0..s.warmup + s.rounds {
        let counted = i >= s.warmup;
        if i == s.warmup {
            before = phase_totals(rev.admin);
        }
        let direct_first = i % 2 == 0;
        let order = if direct_first { [Way::Direct, Way::Reveille] } else { [Way::Reveille, Way::Direct] };
        let (mut direct, mut through) = (None, None);
        for way in order {
            let measured = match way {
                Way::Direct => measure_direct(rt, dock, rev.admin, container).map(|d| {
                    if counted {
                        let us = |d: Duration| d.as_secs_f64() * 1e6;
                        result.direct_start_us.push(us(d.start));
                        result.direct_inspect_us.push(us(d.inspect));
                        result.direct_connect_us.push(us(d.total - d.start - d.inspect));
                        result.direct_attempts.push(d.attempts as f64);
                    }
                    d.total
                }),
                Way::Reveille => measure_reveille(rt, dock, rev, container),
            };
            let name = match way {
                Way::Direct => "direct",
                Way::Reveille => "through reveille",
            };
            match measured {
                Ok(d) => {
                    let us = d.as_secs_f64() * 1e6;
                    match way {
                        Way::Direct => direct = Some(us),
                        Way::Reveille => through = Some(us),
                    }
                }
                Err(e) => {
                    println!("  round {i}, {name}: FAILED: {e}");
                    result.errors.push(format!("round {i}, {name}: {e}"));
                }
            }
        }
        let show = |v: Option<f64>| v.map_or("failed".to_string(), format_us);
        let label = if counted { format!("round {}/{}", i - s.warmup + 1, s.rounds) } else { "warm-up".into() };
        println!(
            "  {label:<12} direct {:>9}  through reveille {:>9}  ({} first)",
            show(direct),
            show(through),
            if direct_first { "direct" } else { "reveille" }
        );
        if counted {
            result.direct_us.extend(direct);
            result.reveille_us.extend(through);
            result.rounds.push((direct, through, direct_first));
        }
    }
    result.phases = phase_means(&before, &phase_totals(rev.admin));
    let text = metrics_text(rev.admin).unwrap_or_default();
    for r in ["ok", "failed", "timeout", "unavailable"] {
        if let Some(v) = sample(&text, "reveille_wakes_total", &[("service", WEB), ("result", r)]) {
            result.wakes.push((r, v));
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------------------
// 2. Held requests

/// One wrk run.
struct WrkRun {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Non-2xx/3xx responses and socket errors, as wrk counts them.
    errors: u64,
}

/// `wrk -t1 -c10 -d<seconds>s --latency -H 'Host: plain.bench.test'` against reveille.
fn run_wrk(port: u16, seconds: u64) -> Result<WrkRun, String> {
    let mut cmd = Command::new(WRK);
    cmd.args(testkit::wrk::args(WRK_CONNECTIONS, seconds, PLAIN_HOST, &format!("http://127.0.0.1:{port}/")));
    let wrk = testkit::wrk::run(&mut cmd)?;
    let p50_us = wrk.p50_us.ok_or("wrk printed no 50% latency")?;
    Ok(WrkRun { rps: wrk.requests_per_sec, p50_us, p99_us: wrk.p99_us, errors: wrk.errors.total() })
}

/// One reading of the sampler thread.
struct Sample {
    held: Option<f64>,
    rss_kib: Option<u64>,
    fds: Option<usize>,
}

/// Reads reveille's held-requests gauge, `VmRSS` and open fds every [`SAMPLE_EVERY`] until `stop` is set.
fn sampler(admin: u16, pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let held = metrics_text(admin).and_then(|t| sample(&t, "reveille_held_requests", &[]));
            samples.push(Sample {
                held,
                rss_kib: status_kib(&proc_status(pid), "VmRSS:"),
                fds: open_fds(&pid.to_string()),
            });
            std::thread::sleep(SAMPLE_EVERY);
        }
        samples
    })
}

/// What a held request got.
enum Outcome {
    Reply(Reply),
    Error(String),
}

#[derive(Default)]
struct Held {
    requested: usize,
    used: usize,
    /// Why `used` is below `requested`, and other caveats about the fd limits.
    notes: Vec<String>,
    nofile_reveille: Option<u64>,
    nofile_self: Option<u64>,
    /// reveille's listen backlog on its HTTP port.
    backlog: Option<u32>,
    /// First request sent → last request sent.
    ramp: Duration,
    /// Listen queue overflows on this host during the ramp.
    ramp_overflows: Option<u64>,
    /// Requests answered 200 with the page.
    ok: usize,
    /// Every other outcome, counted.
    other: BTreeMap<String, usize>,
    /// First request sent → first response head.
    first_response: Option<Duration>,
    /// First request sent → last response read.
    last_response: Option<Duration>,
    held_max: Option<f64>,
    /// How long after the first request was sent the gauge showed every request held.
    all_held_after: Option<Duration>,
    rss_rest_kib: Option<u64>,
    /// Largest `VmRSS` sampled while the gauge showed every request held.
    rss_held_kib: Option<u64>,
    rss_max_kib: Option<u64>,
    hwm_before_kib: Option<u64>,
    hwm_after_kib: Option<u64>,
    fds_rest: Option<usize>,
    fds_max: Option<usize>,
    wrk_rest: Option<Result<WrkRun, String>>,
    wrk_held: Option<Result<WrkRun, String>>,
    /// wrk ended before the first held request was answered.
    wrk_within_hold: Option<bool>,
    phases: Vec<(&'static str, f64, f64)>,
    errors: Vec<String>,
}

fn held_requests(rt: &Runtime, dock: &DockerRuntime, rev: &Reveille, container: &str, s: &Settings) -> Held {
    let pid = rev.pid();
    let mut h = Held { requested: s.held, ..Held::default() };
    if let Err(e) = ensure_stopped(rt, dock, rev.admin, SLOW, container) {
        h.errors.push(e);
        return h;
    }
    let wrk = Path::new(WRK).exists();
    if wrk {
        println!("  wrk at rest, {} s", s.wrk_seconds);
        h.wrk_rest = Some(run_wrk(rev.http, s.wrk_seconds));
    }
    // Idle connections to the in-process backend stay pooled: they are part of "at rest".
    std::thread::sleep(Duration::from_millis(500));
    let status = rev.status();
    h.rss_rest_kib = status_kib(&status, "VmRSS:");
    h.hwm_before_kib = status_kib(&status, "VmHWM:");
    h.fds_rest = open_fds(&pid.to_string());
    h.nofile_reveille = nofile_limit(&pid.to_string());
    h.nofile_self = nofile_limit("self");
    h.backlog = listen_backlog(rev.http);

    // Fit the count to the fd limits: while held, a request costs reveille one fd and this process one. Once
    // released it costs reveille a second one (its upstream connection) until answered: that is only warned
    // about, as the release is spread out enough for a fast backend (the report gives the peak sampled).
    let mut used = s.held as u64;
    let mut why = Vec::new();
    if let (Some(limit), Some(fds)) = (h.nofile_reveille, h.fds_rest) {
        let fit = limit.saturating_sub(fds as u64 + FD_RESERVE);
        if fit < used {
            used = fit;
            why.push(format!("reveille's RLIMIT_NOFILE is {limit}, {fds} open at rest, {FD_RESERVE} spare"));
        }
    }
    if let (Some(limit), Some(fds)) = (h.nofile_self, open_fds("self")) {
        let fit = limit.saturating_sub(fds as u64 + FD_RESERVE);
        if fit < used {
            used = fit;
            why.push(format!("this process's soft RLIMIT_NOFILE is {limit}, {fds} already open, {FD_RESERVE} spare"));
        }
    }
    h.used = used as usize;
    if h.used < s.held {
        let note = format!("held requests lowered from {} to {}: {}", s.held, h.used, why.join("; "));
        println!("  {note}");
        h.notes.push(note);
    }
    if let (Some(limit), Some(fds)) = (h.nofile_reveille, h.fds_rest) {
        if 2 * used + fds as u64 > limit {
            let note = format!(
                "reveille's RLIMIT_NOFILE is {limit} (`ulimit -n 65536` was refused: the hard limit is lower), less \
                 than 2 × {used} held + {fds}: had every released request's upstream connection been open at once, \
                 reveille would have run out of fds; see the peak of open fds below"
            );
            println!("  {note}");
            h.notes.push(note);
        }
    }
    if h.used == 0 {
        h.errors.push("no held request fits the fd limits".into());
        return h;
    }

    let phases_before = phase_totals(rev.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(rev.admin, pid, stop.clone());
    println!("  {} held requests, batches of {}", h.used, s.batch);

    // Send them: the first alone (it starts the wake), then batches, each sent before the next starts.
    let port = rev.http;
    let overflows_before = listen_overflows();
    let (first_sent, last_sent, tasks) = rt.block_on(async {
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let spawn_one = |sent_tx: tokio::sync::mpsc::UnboundedSender<Instant>| {
            tokio::spawn(async move {
                let sent = tokio::time::timeout(Duration::from_secs(10), send_get(port, SLOW_HOST)).await;
                let stream = match sent {
                    Ok(Ok(stream)) => {
                        let _ = sent_tx.send(Instant::now());
                        stream
                    }
                    Ok(Err(e)) => {
                        let _ = sent_tx.send(Instant::now());
                        return Outcome::Error(format!("connect/send: {}", e.kind()));
                    }
                    Err(_) => {
                        let _ = sent_tx.send(Instant::now());
                        return Outcome::Error("connect/send: timed out".into());
                    }
                };
                match tokio::time::timeout(Duration::from_secs(180), read_reply(stream)).await {
                    Ok(Ok(reply)) => Outcome::Reply(reply),
                    Ok(Err(e)) => Outcome::Error(format!("read: {}", e.kind())),
                    Err(_) => Outcome::Error("read: no response within 180 s".into()),
                }
            })
        };
        let mut tasks = Vec::with_capacity(h.used);
        tasks.push(spawn_one(sent_tx.clone()));
        let first_sent = sent_rx.recv().await.unwrap();
        let mut last_sent = first_sent;
        let mut left = h.used - 1;
        while left > 0 {
            let n = left.min(s.batch);
            for _ in 0..n {
                tasks.push(spawn_one(sent_tx.clone()));
            }
            for _ in 0..n {
                last_sent = sent_rx.recv().await.unwrap();
            }
            left -= n;
            tokio::time::sleep(BATCH_PAUSE).await;
        }
        (first_sent, last_sent, tasks)
    });
    h.ramp = last_sent - first_sent;
    h.ramp_overflows = overflows_before.zip(listen_overflows()).map(|(a, b)| b - a);
    println!("  ramp: {} requests sent in {:.3} s", h.used, h.ramp.as_secs_f64());

    // Wait for the gauge to show them all, then load `plain` while they are held.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = metrics_text(rev.admin).and_then(|t| sample(&t, "reveille_held_requests", &[]));
        if held == Some(h.used as f64) {
            h.all_held_after = Some(first_sent.elapsed());
            break;
        }
        if Instant::now() > deadline {
            h.errors.push(format!("reveille_held_requests is {held:?} 10 s after the ramp, expected {}", h.used));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut wrk_end = None;
    if wrk {
        println!("  wrk while held, {} s", s.wrk_held_seconds);
        h.wrk_held = Some(run_wrk(rev.http, s.wrk_held_seconds));
        wrk_end = Some(Instant::now());
    }

    let outcomes: Vec<Outcome> = rt.block_on(async {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|e| Outcome::Error(format!("task: {e}"))));
        }
        outcomes
    });
    stop.store(true, Ordering::Relaxed);
    let samples = sampling.join().unwrap_or_default();
    h.hwm_after_kib = status_kib(&rev.status(), "VmHWM:");
    h.phases = phase_means(&phases_before, &phase_totals(rev.admin));

    let (mut first_head, mut last_done): (Option<Instant>, Option<Instant>) = (None, None);
    for outcome in &outcomes {
        match outcome {
            Outcome::Reply(r) => {
                first_head = Some(first_head.map_or(r.head_at, |t| t.min(r.head_at)));
                last_done = Some(last_done.map_or(r.done_at, |t| t.max(r.done_at)));
                if r.status == 200 && is_hello(&r.body) {
                    h.ok += 1;
                } else if r.status == 200 {
                    *h.other.entry("200 with an unexpected body".into()).or_default() += 1;
                } else {
                    *h.other.entry(format!("status {}", r.status)).or_default() += 1;
                }
            }
            Outcome::Error(e) => *h.other.entry(e.clone()).or_default() += 1,
        }
    }
    h.first_response = first_head.map(|t| t - first_sent);
    h.last_response = last_done.map(|t| t - first_sent);
    h.wrk_within_hold = match (wrk_end, first_head) {
        (Some(w), Some(f)) => Some(w < f),
        _ => None,
    };
    h.held_max = samples.iter().filter_map(|s| s.held).reduce(f64::max);
    h.rss_held_kib = samples.iter().filter(|s| s.held == Some(h.used as f64)).filter_map(|s| s.rss_kib).max();
    h.rss_max_kib = samples.iter().filter_map(|s| s.rss_kib).max();
    h.fds_max = samples.iter().filter_map(|s| s.fds).max();
    if h.ok != h.used {
        h.errors.push(format!("{} of {} held requests did not get their 200: {:?}", h.used - h.ok, h.used, h.other));
    }
    h
}

// ---------------------------------------------------------------------------------------------------------
// The run

fn run() -> bool {
    let settings = Settings::from_env();
    let machine = Machine::describe(crate::reveille_bin());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut lab = Lab::new("reveille-passivation-bench-");
    let mut failures = Vec::new();

    let setup = (|| -> Result<(String, String), String> {
        let image = lab.docker.build_image(
            lab.dir.path(),
            (settings.slow_server == SlowServer::Bench).then_some(CONTAINER_BACKEND_PATH),
        )?;
        let web = lab.docker.create(&image, WEB, &web_script())?;
        let slow = lab.docker.create(&image, SLOW, &server_script(settings.slow_server, Some(settings.ready_delay)))?;
        Ok((web, slow))
    })();
    let (web, slow) = match setup {
        Ok(names) => names,
        Err(e) => {
            println!("passivation: setup failed: {e}");
            return false;
        }
    };
    let plain = start_backend(PLAIN_BODY);
    let dock = match start_reveille(&mut lab, &web, &slow, plain, &settings).and_then(|()| docker_client(&rt)) {
        Ok(d) => d,
        Err(e) => {
            println!("passivation: {e}");
            return false;
        }
    };
    let rev = lab.reveille.as_ref().unwrap();
    println!(
        "image {}; containers {web}, {slow}; plain backend 127.0.0.1:{plain}; reveille pid {} on 127.0.0.1:{} \
         (admin :{})",
        lab.docker.image.as_deref().unwrap_or("?"),
        rev.pid(),
        rev.http,
        rev.admin
    );

    println!("1. cold start, {} warm-up + {} rounds", settings.warmup, settings.rounds);
    let cold = cold_start(&rt, &dock, rev, &web, &settings);
    failures.extend(cold.errors.iter().map(|e| format!("cold start: {e}")));

    println!("2. held requests");
    let held = held_requests(&rt, &dock, rev, &slow, &settings);
    failures.extend(held.errors.iter().map(|e| format!("held requests: {e}")));
    for (name, run) in [("at rest", &held.wrk_rest), ("while held", &held.wrk_held)] {
        match run {
            Some(Ok(w)) if w.errors > 0 => failures.push(format!("wrk {name}: {} errors", w.errors)),
            Some(Err(e)) => failures.push(format!("wrk {name}: {e}")),
            _ => {}
        }
    }

    let report = report(&machine, &settings, &cold, &held, &failures);
    println!("\n{report}");
    print_log("reveille log", &read_log(&rev.log));
    write_report("passivation-bench.md", &report);
    drop(rt);
    drop(lab);
    failures.is_empty()
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// "Per round, ms, in the order measured ...: D247.1/255.3 R..." for rounds of (direct µs, reveille µs, direct
/// first).
pub(crate) fn rounds_in_order(rounds: &[(Option<f64>, Option<f64>, bool)]) -> String {
    let rounds: Vec<_> = rounds
        .iter()
        .map(|(d, r, direct_first)| {
            let f = |v: &Option<f64>| v.map_or("failed".into(), |v| format!("{:.1}", v / 1000.0));
            let (first, second) = if *direct_first { (f(d), f(r)) } else { (f(r), f(d)) };
            format!("{}{first}/{second}", if *direct_first { "D" } else { "R" })
        })
        .collect();
    format!(
        "Per round, ms, in the order measured (`D` = direct first, then reveille; `R` = the reverse): {}",
        rounds.join(" ")
    )
}

/// A Docker lab's report up to its settings: the heading, the machine (`more` after the kernel) and the versions.
pub(crate) fn report_head(title: &str, machine: &Machine, more: &str) -> String {
    let mut md = heading(title, &machine.date);
    let _ = writeln!(
        md,
        "- CPU: {} × {} (shared VM, nothing pinned); kernel {}{more}",
        machine.nproc, machine.cpu, machine.kernel
    );
    let _ = writeln!(md, "- {}", machine.versions());
    md
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.3} s", d.as_secs_f64()))
}

fn report(machine: &Machine, s: &Settings, cold: &ColdStart, held: &Held, failures: &[String]) -> String {
    let mut md = report_head("Passivation benchmark", machine, "");
    let _ = writeln!(
        md,
        "- reveille: `serve --routes .. --access-log false --log-level warn --max-connections 30000`, default threads \
         and `[passivation]` settings, RLIMIT_NOFILE {}",
        held.nofile_reveille.map_or("?".into(), |n| n.to_string())
    );
    let _ = writeln!(md);

    // 1.
    let _ = writeln!(
        md,
        "Cold start of a stopped container (`busybox httpd`), {} rounds after {} warm-up, order alternating:",
        s.rounds, s.warmup
    );
    let _ = writeln!(md);
    let mut table = Table::new(&format!("path | {TIMING_COLUMNS}"), &format!("l{TIMING_ALIGN}"));
    for (name, v) in [
        ("direct: Docker start → inspect → first TCP connect to :8080", &cold.direct_us),
        ("through reveille: `GET /` on a new connection → response head", &cold.reveille_us),
    ] {
        table.row(timing_row(name, v));
    }
    md.push_str(&table.to_string());
    let overhead = median(&cold.reveille_us) - median(&cold.direct_us);
    let _ = writeln!(md);
    let met = if overhead.is_nan() {
        "not measured"
    } else if overhead <= 15_000.0 {
        "met"
    } else {
        "not met"
    };
    let _ = writeln!(
        md,
        "Overhead (median through reveille − median direct): **{}**; goal ≤ 15 ms: **{met}**.",
        format_us(overhead)
    );
    let _ = writeln!(md);
    let _ =
        writeln!(md, "Where reveille's wake time goes (`reveille_wake_phase_seconds`, mean over the counted wakes):");
    let _ = writeln!(md);
    let mut table = Table::new("phase | wakes | mean", "lrr");
    for (phase, mean, count) in &cold.phases {
        let what = match *phase {
            "start_call" => "start_call (Docker's start API call)",
            "running" => "running (wake start → Docker reports it running)",
            "ready" => "ready (wake start → first successful probe)",
            _ => "total (held request → ready)",
        };
        table.row([what.to_string(), format!("{count:.0}"), format_us(mean * 1e6)]);
    }
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "The direct path by step (medians): start call {}, inspect {}, then {} until a connect succeeded \
         ({:.0} attempt(s), 1 ms apart).",
        format_us(median(&cold.direct_start_us)),
        format_us(median(&cold.direct_inspect_us)),
        format_us(median(&cold.direct_connect_us)),
        median(&cold.direct_attempts)
    );
    let wakes: Vec<_> = cold.wakes.iter().map(|(r, n)| format!("{r} {n:.0}")).collect();
    let _ = writeln!(md);
    let _ =
        writeln!(md, "`reveille_wakes_total{{service=\"web\"}}` at the end (warm-up included): {}", wakes.join(", "));
    let _ = writeln!(md);
    let _ = writeln!(md, "{}", rounds_in_order(&cold.rounds));
    let _ = writeln!(md);

    // 2.
    let _ = writeln!(
        md,
        "Held requests: `slow` stopped; it sleeps {} s after its start, then serves with {}. `GET /` with \
         `Connection: close` on one connection each, the first alone, then batches of {}:",
        s.ready_delay,
        s.slow_server.describe(),
        s.batch
    );
    let _ = writeln!(md);
    for note in &held.notes {
        let _ = writeln!(md, "- **{note}**");
    }
    let per_request = |kib: Option<u64>| match (kib, held.rss_rest_kib) {
        (Some(k), Some(r)) if held.used > 0 => {
            format!("{:.0} bytes", (k as f64 - r as f64) * 1024.0 / held.used as f64)
        }
        _ => "?".into(),
    };
    let _ = writeln!(md);
    let mut table = Table::new("measure | value", "lr");
    table.row(["held requests sent".to_string(), format!("{} (asked for {})", held.used, held.requested)]);
    table.row(["answered 200 with the page".to_string(), format!("**{} / {}**", held.ok, held.used)]);
    table.row(["ramp: first request sent → last sent".to_string(), secs(Some(held.ramp))]);
    table.row([
        String::from("reveille's listen backlog (`ss -ltn` Send-Q)"),
        held.backlog.map_or("?".into(), |n| n.to_string()),
    ]);
    table.row([
        "listen queue overflows during the ramp (`TcpExtListenOverflows`)".to_string(),
        held.ramp_overflows.map_or("?".into(), |n| n.to_string()),
    ]);
    table.row(["first sent → gauge shows all held".to_string(), secs(held.all_held_after)]);
    table.row(["first sent → first response head (the wake)".to_string(), secs(held.first_response)]);
    table.row(["first sent → last response read".to_string(), secs(held.last_response)]);
    let drain = match (held.first_response, held.last_response) {
        (Some(f), Some(l)) => Some(l.saturating_sub(f)),
        _ => None,
    };
    table.row(["first response → last response (release of all held)".to_string(), secs(drain)]);
    table.row([
        "`reveille_held_requests`, max sampled".to_string(),
        held.held_max.map_or("?".into(), |v| format!("{v:.0}")),
    ]);
    table.row(["VmRSS at rest".to_string(), mib(held.rss_rest_kib)]);
    table.row([
        "VmRSS while all held (max sampled)".to_string(),
        format!("{} ({} per held request over rest)", mib(held.rss_held_kib), per_request(held.rss_held_kib)),
    ]);
    table.row([
        "VmRSS max sampled, release included".to_string(),
        format!("{} ({} per request over rest)", mib(held.rss_max_kib), per_request(held.rss_max_kib)),
    ]);
    table.row([
        "VmHWM (lifetime peak) before → after".to_string(),
        format!(
            "{} → {} ({} per request over rest)",
            mib(held.hwm_before_kib),
            mib(held.hwm_after_kib),
            per_request(held.hwm_after_kib)
        ),
    ]);
    let fds = |v: Option<usize>| v.map_or("?".into(), |v| v.to_string());
    table.row([
        String::from("reveille's open fds at rest → max sampled (limit)"),
        format!(
            "{} → {} ({})",
            fds(held.fds_rest),
            fds(held.fds_max),
            held.nofile_reveille.map_or("?".into(), |n| n.to_string())
        ),
    ]);
    md.push_str(&table.to_string());
    let _ = writeln!(md);
    let wrk_line = |run: &Option<Result<WrkRun, String>>| match run {
        Some(Ok(w)) => {
            (format!("{:.0}", w.rps), format_us(w.p50_us), format_us(w.p99_us), w.errors.to_string(), w.p99_us)
        }
        Some(Err(_)) => ("failed".into(), "—".into(), "—".into(), "—".into(), f64::NAN),
        None => ("—".into(), "—".into(), "—".into(), "—".into(), f64::NAN),
    };
    if machine.wrk.is_none() {
        let _ = writeln!(md, "Latency of `plain` not measured: {WRK} not found.");
    } else {
        let _ = writeln!(
            md,
            "Latency of `plain` (`wrk -t1 -c{WRK_CONNECTIONS} --latency`, in-process backend), at rest ({} s) and \
             while the requests were held ({} s):",
            s.wrk_seconds, s.wrk_held_seconds
        );
        let _ = writeln!(md);
        let mut table = Table::new("plain | req/s | p50 | p99 | errors", "lrrrr");
        let rest = wrk_line(&held.wrk_rest);
        let during = wrk_line(&held.wrk_held);
        for (name, l) in [("at rest", &rest), ("while held", &during)] {
            table.row([name, &l.0, &l.1, &l.2, &l.3]);
        }
        md.push_str(&table.to_string());
        let _ = writeln!(md);
        let within = match held.wrk_within_hold {
            Some(true) => "yes",
            Some(false) => "**no**: some held requests were answered before wrk ended",
            None => "unknown",
        };
        let _ = writeln!(
            md,
            "p99 while held ÷ at rest: **{:.2}**; wrk ended before the first held request was answered: {within}.",
            during.4 / rest.4
        );
    }
    let _ = writeln!(md);
    let phases: Vec<_> = held
        .phases
        .iter()
        .filter(|(_, _, n)| *n > 0.0)
        .map(|(p, mean, _)| format!("{p} {}", format_us(mean * 1e6)))
        .collect();
    let _ =
        writeln!(md, "The `slow` wake by phase: {}.", if phases.is_empty() { "?".into() } else { phases.join(", ") });
    if !held.other.is_empty() {
        let other: Vec<_> = held.other.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(md);
        let _ = writeln!(md, "Held requests not answered 200: {}", other.join("; "));
    }
    let _ = writeln!(md);
    for f in failures {
        let _ = writeln!(md, "- FAILURE: {}", f.lines().next().unwrap_or(""));
    }
    md
}
