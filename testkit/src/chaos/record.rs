//! Recording a chaos run: the [`Recorder`] that every source appends to (one clock: the host's wall clock, in
//! ms since the run's start), Docker's events of the tenants' containers, and the sampler (every ~250 ms: the
//! decider and status keys from etcd, each tenant's Docker state, whether each replica answers its admin
//! `/readyz`, what a load balancer would ask). It owns what goes into the history's events; it does not judge
//! them (`check.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncBufReadExt;

use super::cluster::{request, Topology, ADMIN_PORT, HTTP_PORT};
use super::history::Event;

/// Where a run's events go, and the clock they are timed on.
#[derive(Clone)]
pub struct Recorder {
    /// The run's start, as Unix time in ms: every event's time is counted from it.
    start_unix_ms: u64,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start_unix_ms: unix_ms(SystemTime::now()), events: Arc::default() }
    }

    /// Now, in ms since the run's start.
    pub fn now_ms(&self) -> u64 {
        unix_ms(SystemTime::now()).saturating_sub(self.start_unix_ms)
    }

    /// A Unix time in ns (Docker's `timeNano`) in ms since the run's start.
    pub fn from_unix_ns(&self, ns: u64) -> u64 {
        (ns / 1_000_000).saturating_sub(self.start_unix_ms)
    }

    pub fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }

    /// The events so far, in time order (a request by its start).
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(Event::at_ms);
        events
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The Docker actions of a tenant the history keeps.
const ACTIONS: [&str; 6] = ["start", "kill", "die", "stop", "pause", "unpause"];

/// Follows `docker events` for the run's containers and records the tenants' [`Event::Docker`]s until aborted
/// (the child is killed when the task is dropped). Returns once the stream is open.
pub async fn follow_docker(topo: &Topology, rec: Recorder) -> Result<tokio::task::JoinHandle<()>, String> {
    let names: HashMap<String, String> = topo.config.tenants.iter().map(|t| (topo.container(t), t.clone())).collect();
    let mut child = tokio::process::Command::new("docker")
        .args(["events", "--filter", "type=container", "--format", "{{json .}}"])
        .args(["--filter", &format!("label={}={}", super::cluster::LABEL, topo.id)])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("docker events: {e}"))?;
    let stdout = child.stdout.take().ok_or("docker events: no stdout")?;
    Ok(tokio::spawn(async move {
        let _child = child;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let name = v["Actor"]["Attributes"]["name"].as_str().unwrap_or("");
            let Some(tenant) = names.get(name) else { continue };
            // "kill" carries its signal in the attributes; the action itself is the bare word.
            let action = v["Action"].as_str().unwrap_or("").split(':').next().unwrap_or("").to_string();
            if !ACTIONS.contains(&action.as_str()) {
                continue;
            }
            let at_ms = rec.from_unix_ns(v["timeNano"].as_u64().unwrap_or(0));
            rec.push(Event::Docker { tenant: tenant.clone(), action, at_ms });
        }
    }))
}

/// The replicas' proxy addresses as last seen: a restarted replica may come back with a new address, so the
/// sampler refreshes them and the workload reads them here.
pub type Addresses = Arc<Mutex<HashMap<String, SocketAddr>>>;

/// One sample's Docker view: each container's state and its address on the clients network.
async fn inspect_all(topo: &Topology, names: &[String]) -> HashMap<String, (String, Option<std::net::IpAddr>)> {
    let net = topo.clients_network();
    let ip = format!("{{{{with index .NetworkSettings.Networks \"{net}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}");
    let format = format!("{{{{.Name}}}} {{{{.State.Status}}}} {ip}");
    let mut args = vec!["inspect", "-f", &format];
    let containers: Vec<String> = names.iter().map(|n| topo.container(n)).collect();
    args.extend(containers.iter().map(String::as_str));
    // `inspect` of several prints the ones it found even when one is missing (and then fails): read stdout.
    let out = tokio::process::Command::new("docker").args(&args).output().await;
    let Ok(out) = out else { return HashMap::new() };
    let prefix = format!("/{}-", topo.id);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?.strip_prefix(&prefix)?.to_string();
            let state = parts.next()?.to_string();
            let ip = parts.next().and_then(|ip| ip.parse().ok());
            Some((name, (state, ip)))
        })
        .collect()
}

/// Takes one sample and refreshes `addresses`.
pub async fn sample(topo: &Topology, rec: &Recorder, etcd: &mut Option<etcd_client::Client>, addresses: &Addresses) {
    let at_ms = rec.now_ms();
    let mut names = topo.config.tenants.clone();
    names.extend(topo.config.replicas.iter().cloned());
    let seen = inspect_all(topo, &names).await;
    let docker_states =
        topo.config.tenants.iter().map(|t| (t.clone(), seen.get(t).map(|s| s.0.clone()).unwrap_or_default())).collect();

    // etcd: a failed read leaves the lists empty (no decider seen, no key seen) and reconnects next time.
    let (mut deciders, mut status_keys) = (Vec::new(), Vec::new());
    if etcd.is_none() {
        *etcd = topo.etcd_client(Duration::from_millis(500)).await;
    }
    if let Some(c) = etcd.as_mut() {
        let read = async {
            let d = c.get("/reveille/cluster/decider", None).await?;
            let s = c.get("/reveille/status/", Some(etcd_client::GetOptions::new().with_prefix())).await?;
            Ok::<_, etcd_client::Error>((d, s))
        };
        match tokio::time::timeout(Duration::from_millis(700), read).await {
            Ok(Ok((d, s))) => {
                deciders = d.kvs().iter().filter_map(|kv| kv.value_str().ok().map(str::to_string)).collect();
                for kv in s.kvs() {
                    let Ok(key) = kv.key_str() else { continue };
                    let tenant = key.trim_start_matches("/reveille/status/").to_string();
                    let value: serde_json::Value =
                        kv.value_str().ok().and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default();
                    status_keys.push((tenant, value["state"].as_str().unwrap_or("").to_string()));
                }
            }
            _ => *etcd = None,
        }
    }

    let mut serving = Vec::new();
    for r in &topo.config.replicas {
        let ip = seen.get(r).and_then(|s| s.1);
        let answers = match ip {
            Some(ip) => {
                addresses.lock().unwrap().insert(r.clone(), SocketAddr::new(ip, HTTP_PORT));
                let admin = SocketAddr::new(ip, ADMIN_PORT);
                matches!(request(admin, "localhost", "/readyz", Duration::from_millis(500)).await, Ok((200, _, _)))
            }
            None => false,
        };
        serving.push((r.clone(), answers));
    }
    rec.push(Event::Sample { at_ms, deciders, status_keys, docker_states, serving });
}

/// Samples every `every` until aborted.
pub fn sampler(
    topo: Arc<Topology>,
    rec: Recorder,
    addresses: Addresses,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut etcd = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sample(&topo, &rec, &mut etcd, &addresses).await;
        }
    })
}
