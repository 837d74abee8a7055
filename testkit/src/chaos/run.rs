//! A whole chaos run: the topology up, the recorders and the workload started, the seeded schedule of faults
//! injected and healed one at a time, then everything stopped and removed; and the issue's partition scenario
//! as a fixed run of its own. It returns the [`History`]; the caller checks it (`check.rs`) and reports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cluster::{Topology, TopologyConfig};
use super::faults::{self, Rng};
use super::history::{Event, FaultKind, FaultWindow, History, RunConfig};
use super::record::{self, Addresses, Recorder};
use super::workload::{self, Workload};

/// A run's settings.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// The reveille binary the replicas run.
    pub reveille: PathBuf,
    pub replicas: usize,
    pub tenants: usize,
    pub idle_timeout: Duration,
    pub lease_ttl: Duration,
    /// Invariant 4's bound; also the pause after each heal before the next fault.
    pub converge_bound: Duration,
    pub tolerance: Duration,
    /// Decks of every fault kind (each kind once per deck, in a seeded order); with `duration`, as many as fit.
    pub rounds: usize,
    /// With `Some`, decks are dealt until this much time has passed (the long run).
    pub duration: Option<Duration>,
    /// Keep each replica's log in the temp dir (the long run; the tests leave nothing behind).
    pub keep_logs: bool,
}

impl ChaosConfig {
    /// The short run's settings: one deck (every kind once), about 2 minutes.
    pub fn short(seed: u64, reveille: PathBuf) -> ChaosConfig {
        ChaosConfig {
            seed,
            reveille,
            replicas: 3,
            tenants: 3,
            idle_timeout: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(2),
            converge_bound: Duration::from_secs(10),
            tolerance: Duration::from_millis(500),
            rounds: 1,
            duration: None,
            keep_logs: false,
        }
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn run_config(&self) -> RunConfig {
        RunConfig {
            replicas: Self::names("r", self.replicas),
            tenants: Self::names("t", self.tenants),
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            lease_ttl_ms: self.lease_ttl.as_millis() as u64,
            converge_bound_ms: self.converge_bound.as_millis() as u64,
            tolerance_ms: self.tolerance.as_millis() as u64,
        }
    }

    fn topology(&self) -> TopologyConfig {
        let rc = self.run_config();
        TopologyConfig {
            reveille: self.reveille.clone(),
            replicas: rc.replicas,
            tenants: rc.tenants,
            idle_timeout: self.idle_timeout,
            lease_ttl: self.lease_ttl,
        }
    }
}

/// How often the sampler samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The recorders of a run, stopped (and their last events flushed) by [`Recording::stop`].
struct Recording {
    topo: Arc<Topology>,
    rec: Recorder,
    addresses: Addresses,
    docker: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Recording {
    async fn start(topo: Topology) -> Result<Recording, String> {
        let topo = Arc::new(topo);
        let rec = Recorder::new();
        let addresses: Addresses = Arc::new(Mutex::new(HashMap::new()));
        for r in &topo.config.replicas {
            if let Some(addr) = topo.replica_http(r).await {
                addresses.lock().unwrap().insert(r.clone(), addr);
            }
        }
        let docker = record::follow_docker(&topo, rec.clone()).await?;
        let sampler = record::sampler(topo.clone(), rec.clone(), addresses.clone(), SAMPLE_EVERY);
        Ok(Recording { topo, rec, addresses, docker, sampler })
    }

    /// Stops sampling, waits for Docker's last events, and removes the topology.
    async fn stop(self, keep: bool) -> Vec<Event> {
        self.sampler.abort();
        let _ = self.sampler.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.docker.abort();
        let _ = self.docker.await;
        let events = self.rec.events();
        if keep {
            keep_logs(&self.topo).await;
        }
        remove(self.topo).await;
        events
    }
}

/// Keeps each replica's log (`docker logs`, JSON lines) in the temp dir before the containers go: a violation's
/// cause is in them.
async fn keep_logs(topo: &Topology) {
    let mut kept = Vec::new();
    for r in &topo.config.replicas {
        let path = std::env::temp_dir().join(format!("{}-{r}.log", topo.id));
        let log = super::cluster::logs(&topo.container(r), 1_000_000).await;
        if std::fs::write(&path, log).is_ok() {
            kept.push(path.display().to_string());
        }
    }
    eprintln!("chaos: the replicas' logs are in {}", kept.join(", "));
}

/// Removes the topology off the runtime's threads (its removal blocks on the docker CLI).
async fn remove(topo: Arc<Topology>) {
    match Arc::try_unwrap(topo) {
        Ok(mut topo) => {
            let _ = tokio::task::spawn_blocking(move || topo.remove()).await;
        }
        // Someone still holds it: it is removed when they drop it.
        Err(topo) => drop(topo),
    }
}

/// Runs the chaos suite once: the topology, the workload, the schedule; returns the history (the topology is
/// removed whatever happens: on error, on panic by its drop).
pub async fn run(config: &ChaosConfig) -> Result<History, String> {
    let rc = config.run_config();
    let topo = Topology::up(config.topology()).await?;
    let recording = Recording::start(topo).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = Workload {
        tenants: rc.tenants.clone(),
        replicas: rc.replicas.clone(),
        idle_timeout: config.idle_timeout,
        busy_ms: (2000, 6000),
        interval_ms: (100, 500),
    };
    let workload =
        tokio::spawn(workload::run(load, config.seed, recording.addresses.clone(), recording.rec.clone(), stop_rx));

    let result = inject_all(config, &recording).await;
    let _ = stop_tx.send(true);
    let _ = workload.await;
    let events = recording.stop(config.keep_logs).await;
    let faults = result?;
    Ok(History { seed: config.seed, config: rc, faults, events })
}

/// Deals the schedule: each fault injected, held, healed, then a pause of the convergence bound.
async fn inject_all(config: &ChaosConfig, recording: &Recording) -> Result<Vec<FaultWindow>, String> {
    let topo = &recording.topo;
    let rec = &recording.rec;
    let mut rng = Rng::new(config.seed.rotate_left(17));
    let started = tokio::time::Instant::now();
    let mut windows = Vec::new();
    // Let the workload wake the tenants before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut deck = 0u64;
    loop {
        let plan = faults::schedule(
            config.seed.wrapping_add(deck),
            &topo.config.replicas,
            1,
            config.lease_ttl,
            config.converge_bound,
        );
        for p in plan {
            let start_ms = rec.now_ms();
            eprintln!("chaos: {start_ms} ms: {} on {} for {:?}", p.kind, p.replica, p.hold);
            let injected = faults::inject(topo, &p, &mut rng).await?;
            let target = injected.target.clone();
            let killed = p.kind == FaultKind::ReplicaKill;
            if killed {
                // Its address is free now, and Docker gives it to the next container started on the network (a
                // tenant woken meanwhile): no request is sent there until the replica is back.
                recording.addresses.lock().unwrap().remove(&target);
            }
            tokio::time::sleep(p.hold).await;
            faults::heal(topo, injected).await?;
            if killed {
                // Restarted with a new address (see `HTTP_PORT`): the requests go there from now on, not only after
                // the sampler's next look.
                if let Some(addr) = topo.replica_http(&target).await {
                    recording.addresses.lock().unwrap().insert(target.clone(), addr);
                }
            }
            let healed_ms = rec.now_ms();
            windows.push(FaultWindow { kind: p.kind, target, start_ms, healed_ms });
            tokio::time::sleep(p.gap).await;
        }
        deck += 1;
        let more = match config.duration {
            Some(d) => started.elapsed() < d,
            None => (deck as usize) < config.rounds,
        };
        if !more {
            return Ok(windows);
        }
    }
}

/// The issue's partition scenario, what it saw.
#[derive(Debug)]
pub struct PartitionOutcome {
    pub requests: usize,
    pub failed: usize,
    /// Docker `die` events of the tenant while the partition lasted: how often the decider stopped it.
    pub stops: usize,
    pub starts: usize,
    pub history: History,
}

/// The partition scenario of issue 29, fixed: three etcd members, three replicas, one replica's etcd link
/// black-holed (every packet to and from its relays dropped) while its clients still reach it, one tenant with
/// a 3 s idle timeout used through that replica every 0.5 s for 20 s.
pub async fn partition_scenario(reveille: PathBuf) -> Result<PartitionOutcome, String> {
    let mut config = ChaosConfig::short(0, reveille);
    config.tenants = 1;
    let rc = config.run_config();
    let topo = Topology::up(config.topology()).await?;
    let recording = Recording::start(topo).await?;
    let (tenant, replica) = (rc.tenants[0].clone(), rc.replicas[0].clone());
    // Woken once before the cut, so that what follows counts stops, not the first start.
    workload::one(tenant.clone(), replica.clone(), recording.addresses.clone(), recording.rec.clone()).await;

    let container = recording.topo.container(&replica);
    let rules = faults::loss_rules(recording.topo.etcd_gateway, 1.0);
    let start_ms = recording.rec.now_ms();
    let cut = faults::iptables(&container, "-A", &rules).await;
    let result = match cut {
        Ok(()) => {
            workload::steady(
                &tenant,
                &replica,
                Duration::from_millis(500),
                Duration::from_secs(20),
                recording.addresses.clone(),
                recording.rec.clone(),
            )
            .await;
            faults::iptables(&container, "-D", &rules).await
        }
        Err(e) => Err(e),
    };
    let healed_ms = recording.rec.now_ms();
    let events = recording.stop(false).await;
    result?;
    let inside = |at: u64| at >= start_ms && at <= healed_ms;
    let (mut requests, mut failed, mut stops, mut starts) = (0, 0, 0, 0);
    for e in &events {
        match e {
            Event::Request { start_ms: at, status, .. } if inside(*at) => {
                requests += 1;
                failed += usize::from(!(200..300).contains(status));
            }
            Event::Docker { action, at_ms, .. } if inside(*at_ms) => match action.as_str() {
                "die" => stops += 1,
                "start" => starts += 1,
                _ => {}
            },
            _ => {}
        }
    }
    let window = FaultWindow { kind: FaultKind::EtcdLinkLoss, target: replica, start_ms, healed_ms };
    let history = History { seed: config.seed, config: rc, faults: vec![window], events };
    Ok(PartitionOutcome { requests, failed, stops, starts, history })
}
