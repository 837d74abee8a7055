//! Groups benchmark (`depends_on`, issue 28): what waking a tenant whose container depends on another costs
//! through reveille over starting both directly, and many tenants sharing one dependency woken at once.
//!
//! Run with `cargo run --release -p reveille-lab -- groups`. Needs Docker (`docker version` must reach a daemon)
//! and `/bin/busybox` (Debian's busybox-static); without them it says so and exits 0. Only 127.0.0.1 and the
//! containers' addresses on the Docker bridge are contacted. Nothing is pinned: reveille, Docker, the containers
//! and this process share the machine's CPUs.
//!
//! Setup: the passivation lab's image (`FROM scratch` with `/bin/busybox` and `/www/index.html`, `hello from
//! <tag>`, built by testkit) and containers created from it, never started by the setup, each running `sh -c
//! 'trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait'` (ready at its start; the trap makes `docker stop`
//! fast): `group-dep` and `group-app` for 1., `shared-dep` and `GROUPS_TENANTS` tenants `tenant-<i>` for 2. One
//! reveille serves the whole run, started as the passivation lab starts it (`serve --routes FILE --access-log
//! false --log-level warn --max-connections 30000`, default threads and `[passivation]` settings), with services
//! `app` (`group-app`, `depends_on = [{ container = "<group-dep>", port = 8080 }]`) and `t<i>` (`tenant-<i>`,
//! each `depends_on` the same `shared-dep`, port 8080), routed from `app.groups.test` and `t<i>.groups.test`; all
//! with `idle_timeout = "0"` and `wake_timeout = "120s"`. With no dependant that idles, reveille never stops a
//! dependency itself (its idle timeout is the shortest of its dependants' that are not 0), so the lab stops it
//! through Docker, once its dependants are stopped. Image, containers, reveille and the temp dir are removed at
//! the end, also on a panic.
//!
//! Before each measurement the group is stopped for Docker and for reveille: each dependant stopped (`POST
//! /api/services/<name>/sleep` when reveille says it runs) until `/api/services` says `"state": "stopped"`,
//! then the dependency stopped through Docker until the dependants' `/api/services` view says
//! `depends_on[0].state` is `"stopped"` (its tenant, `dep:<container>`, has no service of its own); then 300 ms
//! pass.
//!
//! 1. One tenant, one dependency: `GROUPS_ROUNDS` (12) rounds, each measuring both ways once, the order
//!    alternating between rounds (direct first in even rounds, reveille first in odd ones).
//!    - direct: `t0`; Docker's start call for the dependency (through reveille's own runtime client), inspect
//!      for its IP, TCP connects to `ip:8080` every 1 ms until one succeeds; then the same for the app: `t1`
//!      (the passivation lab's direct path, twice in sequence). Then both are stopped through Docker.
//!    - through reveille: `t0`; a new TCP connection to reveille and `GET /` with `Host: app.groups.test` and
//!      `Connection: close`; `t1` when the response head has arrived. The status must be 200 and the body
//!      `hello from ...`. Then the app is put to sleep through the admin API, the dependency stopped through
//!      Docker.
//!
//!    Overhead = median(through reveille) − median(direct). reveille's path also includes its readiness probes
//!    (of the dependency, then of the app) and the forwarded request itself.
//!
//! 2. `GROUPS_TENANTS` (20) tenants sharing one dependency, woken at once: `GROUPS_SHARED_ROUNDS` (3) rounds,
//!    both ways each, the order alternating as in 1.
//!    - direct: `t0`; the dependency started and waited for as above, then the tenants' containers started at
//!      once (one task each, the same start → inspect → connect), `t1` when every one has accepted a connection.
//!    - through reveille: `t0`; one `GET /` per tenant (its own host, a new connection each), all sent at once;
//!      `t1` when all are answered, each 200 with the page.
//!
//!    For each round through reveille, the dependency's `start` events in Docker's event stream from `t0` to
//!    the end of the round (`docker events --since --until --filter container=.. --filter event=start`) are
//!    counted: the shared dependency must be started exactly once, or the lab fails.
//!
//! Timings are reported, never asserted. Correctness is: a failed measurement, a response that is not 200 with
//! the page, or a dependency started other than once is reported and the process then exits 1.
//!
//! The report goes to stdout and to `target/groups-bench.md`, with the machine, the Docker version and the
//! reveille binary's build profile (a debug build is said to be one). Environment: `GROUPS_ROUNDS` (12),
//! `GROUPS_TENANTS` (20), `GROUPS_SHARED_ROUNDS` (3).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reveille::{ContainerState, DockerRuntime};
use testkit::admin::wait_field;
use testkit::docker::{event_count, web_script, CONTAINER_PORT, SETTLE};
use testkit::env::env_at_least;
use testkit::machine::{load_average, Machine};
use testkit::report::{print_log, timing_row, write_report, Table, TIMING_ALIGN, TIMING_COLUMNS};
use testkit::stats::{format_us, median};
use tokio::runtime::Runtime;

use crate::passivation::{
    direct_start, docker_client, ensure_stopped, get_hello, launch_reveille, report_head, rounds_in_order,
    sleep_service, Lab, Reveille,
};

const APP: &str = "app";
const HOSTS: &str = "groups.test";
/// Where `/api/services` shows the state of a dependant's (only) dependency.
const DEP_STATE: &str = "/depends_on/0/state";

/// Runs the lab; false if a measurement failed. Returns only after reveille is killed and the containers,
/// image and temp dir are removed.
pub(crate) fn main() -> bool {
    crate::passivation::unless_unusable("groups", run)
}

struct Settings {
    rounds: usize,
    tenants: usize,
    shared_rounds: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_at_least("GROUPS_ROUNDS", 12, 1),
            tenants: env_at_least("GROUPS_TENANTS", 20, 1),
            shared_rounds: env_at_least("GROUPS_SHARED_ROUNDS", 3, 1),
        }
    }
}

/// A group: dependants `(service, container)` and the one dependency they share.
struct Group {
    apps: Vec<(String, String)>,
    dep: String,
}

impl Group {
    fn containers(&self) -> Vec<String> {
        self.apps.iter().map(|(_, c)| c.clone()).collect()
    }

    fn hosts(&self) -> Vec<String> {
        self.apps.iter().map(|(s, _)| format!("{s}.{HOSTS}")).collect()
    }

    /// The services' part of the routes file, and their routes.
    fn routes(&self) -> (String, String) {
        let (mut services, mut routes) = (String::new(), String::new());
        for (service, container) in &self.apps {
            let _ = writeln!(
                services,
                "[services.{service}]\ncontainer = \"{container}\"\nport = {CONTAINER_PORT}\nidle_timeout = \"0\"\n\
                 wake_timeout = \"120s\"\ndepends_on = [{{ container = \"{}\", port = {CONTAINER_PORT} }}]\n",
                self.dep
            );
            let _ = writeln!(routes, "\"{service}.{HOSTS}\" = \"{service}\"");
        }
        (services, routes)
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Stops the group for Docker and for reveille: the dependants first (through reveille when it says one runs,
/// see [`ensure_stopped`]), then the dependency through Docker (reveille never stops it: no dependant idles),
/// until reveille reports it stopped.
fn stop_group(rt: &Runtime, dock: &DockerRuntime, admin: u16, group: &Group) -> Result<(), String> {
    for (service, container) in &group.apps {
        ensure_stopped(rt, dock, admin, service, container)?;
    }
    let info = rt.block_on(dock.inspect(&group.dep, None)).map_err(|e| format!("inspect {}: {e}", group.dep))?;
    if info.state != ContainerState::Stopped {
        rt.block_on(dock.stop(&group.dep, Some(Duration::from_secs(5))))
            .map_err(|e| format!("stop {}: {e}", group.dep))?;
    }
    wait_field(admin, &group.apps[0].0, DEP_STATE, "stopped")
}

/// Runs `op` on each of the group's dependants' containers at once (a task each): the first error, if any.
async fn on_each<F, Fut, T>(dock: &DockerRuntime, group: &Group, op: F) -> Result<(), String>
where
    F: Fn(DockerRuntime, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = group.containers().into_iter().map(|c| tokio::spawn(op(dock.clone(), c))).collect();
    for task in tasks {
        task.await.map_err(|e| format!("task: {e}"))??;
    }
    Ok(())
}

/// One direct wake of the group: the dependency started and accepting, then every dependant started at once
/// and accepting. The time to the dependency's first accepted connection, and to the last dependant's.
async fn direct_wake(dock: &DockerRuntime, group: &Group) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    direct_start(dock, &group.dep).await.map_err(|e| format!("{}: {e}", group.dep))?;
    let dep = t0.elapsed();
    on_each(dock, group, |dock, c| async move { direct_start(&dock, &c).await.map_err(|e| format!("{c}: {e}")) })
        .await?;
    Ok((dep, t0.elapsed()))
}

/// Direct wake, then the dependants stopped through Docker (at once) and reveille told so by Docker's events.
fn measure_direct(
    rt: &Runtime,
    dock: &DockerRuntime,
    admin: u16,
    group: &Group,
) -> Result<(Duration, Duration), String> {
    stop_group(rt, dock, admin, group)?;
    std::thread::sleep(SETTLE);
    let measured = rt.block_on(direct_wake(dock, group));
    let stopped = rt.block_on(on_each(dock, group, |dock, c| async move {
        dock.stop(&c, Some(Duration::from_secs(5))).await.map_err(|e| format!("stop {c}: {e}"))
    }));
    let measured = measured?;
    stopped?;
    for (service, _) in &group.apps {
        testkit::admin::wait_state(admin, service, "stopped")?;
    }
    Ok(measured)
}

/// One request per dependant through reveille, all at once: the time until every one is answered 200 with the
/// page (for one dependant, its time to the response head), and the dependency's `start` events meanwhile.
fn measure_reveille(
    rt: &Runtime,
    dock: &DockerRuntime,
    rev: &Reveille,
    group: &Group,
) -> Result<(Duration, usize), String> {
    stop_group(rt, dock, rev.admin, group)?;
    std::thread::sleep(SETTLE);
    let since = unix_now();
    let hosts = group.hosts();
    let woken = rt.block_on(async {
        if let [host] = hosts.as_slice() {
            return get_hello(rev.http, host).await;
        }
        let t0 = Instant::now();
        let gets: Vec<_> = hosts
            .into_iter()
            .map(|h| {
                let http = rev.http;
                tokio::spawn(async move { get_hello(http, &h).await })
            })
            .collect();
        let mut errors = Vec::new();
        for get in gets {
            if let Err(e) = get.await.map_err(|e| format!("task: {e}")).and_then(|r| r) {
                errors.push(e);
            }
        }
        match errors.as_slice() {
            [] => Ok(t0.elapsed()),
            [first, ..] => Err(format!("{} of {} requests failed, first: {first}", errors.len(), group.apps.len())),
        }
    });
    let starts = event_count(&group.dep, "start", since, unix_now());
    for (service, _) in &group.apps {
        sleep_service(rev.admin, service)?;
    }
    Ok((woken?, starts?))
}

#[derive(Default)]
struct Measured {
    /// µs.
    direct_us: Vec<f64>,
    /// The direct path's share until the dependency accepted, µs.
    direct_dep_us: Vec<f64>,
    reveille_us: Vec<f64>,
    /// Per round: (direct µs, reveille µs, direct first).
    rounds: Vec<(Option<f64>, Option<f64>, bool)>,
    /// Per round, the dependency's `start` events through reveille.
    starts: Vec<Option<usize>>,
    errors: Vec<String>,
}

/// `rounds` rounds of both ways on `group`, the order alternating.
fn measure(rt: &Runtime, dock: &DockerRuntime, rev: &Reveille, group: &Group, rounds: usize) -> Measured {
    let mut m = Measured::default();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for i in 0..rounds {
        let direct_first = i % 2 == 0;
        let (mut direct, mut through, mut starts) = (None, None, None);
        for direct_now in [direct_first, !direct_first] {
            let error = if direct_now {
                measure_direct(rt, dock, rev.admin, group).map(|(dep, all)| {
                    m.direct_dep_us.push(us(dep));
                    direct = Some(us(all));
                })
            } else {
                measure_reveille(rt, dock, rev, group).map(|(all, n)| {
                    through = Some(us(all));
                    starts = Some(n);
                })
            };
            if let Err(e) = error {
                let way = if direct_now { "direct" } else { "through reveille" };
                println!("  round {}, {way}: FAILED: {e}", i + 1);
                m.errors.push(format!("round {}, {way}: {e}", i + 1));
            }
        }
        if let Some(n) = starts.filter(|n| *n != 1) {
            m.errors.push(format!("round {}: the dependency was started {n} times through reveille, not once", i + 1));
        }
        let show = |v: Option<f64>| v.map_or("failed".to_string(), format_us);
        println!(
            "  round {}/{rounds}  direct {:>9}  through reveille {:>9}  ({} first; dependency started {} time(s))",
            i + 1,
            show(direct),
            show(through),
            if direct_first { "direct" } else { "reveille" },
            starts.map_or("?".into(), |n| n.to_string())
        );
        m.direct_us.extend(direct);
        m.reveille_us.extend(through);
        m.rounds.push((direct, through, direct_first));
        m.starts.push(starts);
    }
    m
}

fn run() -> bool {
    let s = Settings::from_env();
    let machine = Machine::describe(crate::reveille_bin());
    let load = load_average();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut lab = Lab::new("reveille-groups-bench-");

    let started = (|| -> Result<(Group, Group, DockerRuntime), String> {
        let image = lab.docker.build_image(lab.dir.path(), None)?;
        let one = Group {
            dep: lab.docker.create(&image, "group-dep", &web_script())?,
            apps: vec![(APP.to_string(), lab.docker.create(&image, "group-app", &web_script())?)],
        };
        let mut shared = Group { dep: lab.docker.create(&image, "shared-dep", &web_script())?, apps: Vec::new() };
        for i in 0..s.tenants {
            shared.apps.push((format!("t{i}"), lab.docker.create(&image, &format!("tenant-{i}"), &web_script())?));
        }
        let ((s1, r1), (s2, r2)) = (one.routes(), shared.routes());
        let services: Vec<&str> = one.apps.iter().chain(&shared.apps).map(|(s, _)| s.as_str()).collect();
        launch_reveille(&mut lab, &format!("{s1}{s2}[routes]\n{r1}{r2}"), &services)?;
        let dock = docker_client(&rt)?;
        let rev = lab.reveille.as_ref().ok_or("reveille not started")?;
        let image = lab.docker.image.as_deref().unwrap_or("?");
        let profile = crate::reveille_profile();
        println!(
            "image {image}; reveille pid {} on 127.0.0.1:{} (admin :{}), {profile} build",
            rev.pid(),
            rev.http,
            rev.admin
        );
        Ok((one, shared, dock))
    })();
    let Ok((one, shared, dock)) = started.map_err(|e| println!("groups: {e}")) else {
        return false;
    };
    let rev = lab.reveille.as_ref().unwrap();

    println!("1. one tenant, one dependency, {} rounds", s.rounds);
    let single = measure(&rt, &dock, rev, &one, s.rounds);
    println!("2. {} tenants sharing one dependency, woken at once, {} rounds", s.tenants, s.shared_rounds);
    let many = measure(&rt, &dock, rev, &shared, s.shared_rounds);
    // Leave nothing running for the removal.
    let mut failures: Vec<String> = single.errors.iter().map(|e| format!("one dependency: {e}")).collect();
    failures.extend(many.errors.iter().map(|e| format!("shared dependency: {e}")));
    for group in [&one, &shared] {
        if let Err(e) = stop_group(&rt, &dock, rev.admin, group) {
            failures.push(format!("final stop: {e}"));
        }
    }

    let report = report(&machine, &load, &s, &single, &many, &failures);
    println!("\n{report}");
    print_log("reveille log", &testkit::process::read_log(&rev.log));
    write_report("groups-bench.md", &report);
    drop(rt);
    drop(lab);
    failures.is_empty()
}

fn report(machine: &Machine, load: &str, s: &Settings, one: &Measured, many: &Measured, failures: &[String]) -> String {
    let more = format!("; load average at the start {load}");
    let mut md = report_head("Groups benchmark (`depends_on`)", machine, &more);
    let profile = crate::reveille_profile();
    let build = if profile == "debug" { "a debug".to_string() } else { format!("`{profile}`") };
    md += &format!(
        "- reveille: **{build} build**; `serve --routes .. --access-log false --log-level warn --max-connections \
         30000`, default threads and `[passivation]` settings\n\n\
         One tenant, one dependency (`busybox httpd` both, ready at their start; both stopped before each \
         measurement), {} rounds, order alternating:\n\n",
        s.rounds
    );
    let mut table = Table::new(&format!("path | {TIMING_COLUMNS}"), &format!("l{TIMING_ALIGN}"));
    table.row(timing_row(
        "direct: start dependency → first accepted connection → start app → first accepted connection",
        &one.direct_us,
    ));
    table.row(timing_row("through reveille: `GET /` on a new connection → response head", &one.reveille_us));
    md += &table.to_string();
    md += &format!(
        "\nOverhead (median through reveille − median direct): **{}**. Of the direct path, the dependency until it \
         accepted: median {}.\n\n{}\n\n\
         {} tenants sharing one dependency, all stopped, woken at once, {} rounds, order alternating:\n\n",
        format_us(median(&one.reveille_us) - median(&one.direct_us)),
        format_us(median(&one.direct_dep_us)),
        rounds_in_order(&one.rounds),
        s.tenants,
        s.shared_rounds
    );
    let mut table = Table::new(
        "round | direct: dependency, then the tenants at once → all accept | through reveille: one request each, at \
         once → all 200 | the dependency's `start` events (through reveille)",
        "lrrr",
    );
    let secs = |us: f64| if us.is_nan() { "failed".to_string() } else { format!("{:.3} s", us / 1e6) };
    for (i, ((d, r, direct_first), starts)) in many.rounds.iter().zip(&many.starts).enumerate() {
        table.row([
            format!("{} ({} first)", i + 1, if *direct_first { "direct" } else { "reveille" }),
            secs(d.unwrap_or(f64::NAN)),
            secs(r.unwrap_or(f64::NAN)),
            starts.map_or("?".into(), |n| n.to_string()),
        ]);
    }
    table.row(["median".to_string(), secs(median(&many.direct_us)), secs(median(&many.reveille_us)), String::new()]);
    md += &table.to_string();
    let once = many.starts.iter().all(|n| *n == Some(1));
    md += &format!(
        "\nOverhead (median through reveille − median direct): **{}**. The shared dependency was started once in \
         every round through reveille: **{}**. Of the direct path, the dependency until it accepted: median {}.\n\n",
        format_us(median(&many.reveille_us) - median(&many.direct_us)),
        if once { "yes" } else { "NO" },
        format_us(median(&many.direct_dep_us))
    );
    for f in failures {
        md += &format!("- FAILURE: {}\n", f.lines().next().unwrap_or(""));
    }
    md
}
