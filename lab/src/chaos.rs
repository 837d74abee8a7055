//! The chaos suite's long run (issue 29): `reveille-lab chaos [--seed N] [--duration 30m] [--runs K]` runs the
//! suite of `testkit::chaos` K times (seeds N, N+1, ...), each dealing decks of every fault kind for the
//! duration, against the release build; checks each history, prints every violation (seed, schedule, slice of
//! history) and the merged table (markdown, for docs/benchmarks.md, also written to `target/chaos-bench.md`).
//! Each history is kept as JSON lines in the temp dir (its path printed), and so are the replicas' logs
//! (`<run id>-<replica>.log`, paths printed); `CHAOS_LOG` sets their filter (default `info,reveille::access=off`;
//! chasing a violation, add `reveille::cluster=debug,reveille::passivation=debug`).
//!
//! `reveille-lab chaos --partition` runs the partition scenario alone (one replica's etcd link
//! black-holed, a tenant used through it every 0.5 s for 20 s) and prints its stops and failed requests.
//! `reveille-lab chaos --election [--samples N]` times a wake and a new route's propagation to every replica on
//! a quiet cluster and right after the etcd leader is killed (N of each, interleaved; default 10) and prints
//! the table (also written to `target/chaos-election.md`).
//! `reveille-lab chaos --check FILE...` checks saved histories again (after a change to the checker).

use std::path::PathBuf;
use std::time::Duration;

use testkit::chaos::check::{check, Report};
use testkit::chaos::election::{election_latency, markdown};
use testkit::chaos::history::History;
use testkit::chaos::{partition_scenario, run, ChaosConfig};
use testkit::docker::{unusable, BUSYBOX};
use testkit::etcd::ETCD;
use testkit::report::{heading, write_report};

const USAGE: &str = "usage: reveille-lab chaos [--seed N] [--duration 30m] [--runs K] | --partition | --election [--samples N] | --check FILE...";

/// What the command line asked for.
enum Mode {
    Runs { seed: u64, duration: Duration, runs: usize },
    Partition,
    Election(usize),
    Check(Vec<PathBuf>),
}

fn parse(args: &[String]) -> Result<Mode, String> {
    let mut seed = None;
    let mut duration = Duration::from_secs(30 * 60);
    let mut runs = 1;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--duration" => duration = parse_duration(value()?).ok_or("--duration: like 90s, 30m or 1h")?,
            "--runs" => runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--partition" => return Ok(Mode::Partition),
            "--election" => {
                let samples = match (it.next().map(String::as_str), it.next()) {
                    (None, _) => 10,
                    (Some("--samples"), Some(n)) => n.parse().map_err(|e| format!("--samples: {e}"))?,
                    _ => return Err("--election takes only --samples N".into()),
                };
                return Ok(Mode::Election(samples));
            }
            "--check" => return Ok(Mode::Check(it.map(PathBuf::from).collect())),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // No seed given: a new one each time, printed so that the run can be replayed.
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    Ok(Mode::Runs { seed, duration, runs })
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}

/// Runs the lab; false if a run failed or broke an invariant.
pub(crate) fn main() -> bool {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mode = match parse(&args) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return false;
        }
    };
    if let Mode::Check(files) = mode {
        return recheck(&files);
    }
    let needs = [(BUSYBOX, "install Debian's busybox-static"), (ETCD, "install Debian's etcd-server")];
    if let Some(why) = unusable(&needs) {
        println!("chaos: skipped, {why}");
        return true;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let bin = crate::reveille_bin().to_path_buf();
    match mode {
        Mode::Partition => rt.block_on(partition(bin)),
        Mode::Election(samples) => rt.block_on(election(bin, samples)),
        Mode::Runs { seed, duration, runs } => rt.block_on(long(bin, seed, duration, runs)),
        Mode::Check(_) => unreachable!("handled above"),
    }
}

async fn partition(bin: PathBuf) -> bool {
    match partition_scenario(bin).await {
        Ok(o) => {
            let path = save("partition", &o.history);
            println!(
                "partition scenario (history in {}): {} requests through the cut-off replica in 20 s, {} failed, \
                 {} stops, {} starts",
                path.display(),
                o.requests,
                o.failed,
                o.stops,
                o.starts
            );
            true
        }
        Err(e) => {
            eprintln!("partition scenario: {e}");
            false
        }
    }
}

async fn election(bin: PathBuf, samples: usize) -> bool {
    match election_latency(ChaosConfig::short(0, bin), samples).await {
        Ok(s) => {
            let mut out = heading("Latency during an etcd leader election (issue 29)", &testkit::machine::utc_date());
            out.push_str(&format!(
                "Three etcd members, three replicas (lease TTL 2 s), one tenant (idle timeout 3 s), reveille {} \
                 build. {samples} samples of each kind, interleaved. A sample waits for the tenant's idle stop, \
                 then (election: kills the etcd leader and) at once sends one request for the sleeping tenant \
                 through a replica (the wake) and puts a new route through a follower (propagation: from the put \
                 being sent until the slowest replica routes it, polled every 5 ms).\n\n",
                crate::reveille_profile()
            ));
            out.push_str(&markdown(&s));
            println!("{out}");
            write_report("chaos-election.md", &out);
            s.iter().all(|s| s.wake_status == 200 && s.route_ms.iter().all(Option::is_some))
        }
        Err(e) => {
            eprintln!("election latency: {e}");
            false
        }
    }
}

async fn long(bin: PathBuf, seed: u64, duration: Duration, runs: usize) -> bool {
    let mut reports = Vec::new();
    let mut ok = true;
    for i in 0..runs {
        let mut config = ChaosConfig::short(seed.wrapping_add(i as u64), bin.clone());
        config.duration = Some(duration);
        config.keep_logs = true;
        println!("chaos: run {} of {runs}, seed {}, {duration:?}, reveille {}", i + 1, config.seed, bin.display());
        match run(&config).await {
            Ok(history) => {
                save("chaos", &history);
                let report = check(&history);
                if !report.passed() {
                    println!("{}", report.violations_text());
                    ok = false;
                }
                reports.push(report);
            }
            Err(e) => {
                eprintln!("chaos: run with seed {} failed: {e}", config.seed);
                ok = false;
            }
        }
    }
    print_table(Report::merge(reports), duration, runs);
    ok
}

fn print_table(report: Report, duration: Duration, runs: usize) {
    let mut out = heading("Chaos suite (issue 29)", &testkit::machine::utc_date());
    out.push_str(&format!(
        "{runs} run(s) of {} min each, reveille {} build; three etcd members, three replicas (lease TTL 2 s), three \
         tenants (idle timeout 3 s).\n\n",
        duration.as_secs() / 60,
        crate::reveille_profile()
    ));
    out.push_str(&report.markdown());
    println!("{out}");
    write_report("chaos-bench.md", &out);
}

fn recheck(files: &[PathBuf]) -> bool {
    let mut reports = Vec::new();
    for f in files {
        match History::load(f) {
            Ok(h) => reports.push(check(&h)),
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return false;
            }
        }
    }
    let report = Report::merge(reports);
    if !report.passed() {
        println!("{}", report.violations_text());
    }
    println!("{}", report.markdown());
    report.passed()
}

/// Writes the history as JSON lines into the temp dir; its path.
fn save(name: &str, history: &History) -> PathBuf {
    let path = std::env::temp_dir().join(format!("reveille-{name}-{}-seed{}.jsonl", std::process::id(), history.seed));
    match history.save(&path) {
        Ok(()) => println!("chaos: the history is in {}", path.display()),
        Err(e) => eprintln!("chaos: writing {}: {e}", path.display()),
    }
    path
}
