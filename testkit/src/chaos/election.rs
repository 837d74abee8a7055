//! Latency during an etcd leader election (issue 29's figures): a wake of a sleeping tenant and the propagation
//! of a new route to every replica, timed on a quiet cluster and right after the etcd leader is killed, on the
//! chaos topology (three members, three replicas, one tenant).
//!
//! Each sample: wait until every replica sees the tenant stopped (its idle stop), then — on an election sample
//! — kill the leader, and at once (a) send one request for the tenant through a replica and time it to its
//! answer, and (b) put a new route (`probe-N.chaos`, through the members that are still up) and time, per
//! replica, until the replica routes it (its `/__reveille/status` answers 200, which does not wake the tenant).
//! Then the killed member is restarted and the cluster waits for all three members before the next sample.

use std::time::{Duration, Instant};

use super::cluster::{docker, request, tenant_host, Topology, MEMBERS};
use super::run::ChaosConfig;

/// Whether a sample ran on a quiet cluster or during an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Quiet,
    Election,
}

/// One sample's timings, in milliseconds.
#[derive(Debug, Clone)]
pub struct Sample {
    pub phase: Phase,
    /// The wake: the request's time to its answer, and the answer's status (0: none).
    pub wake_ms: f64,
    pub wake_status: u16,
    /// The new route: from the put being sent to each replica routing it (replica order), or `None` where a
    /// replica did not route it within the bound.
    pub route_ms: Vec<Option<f64>>,
    /// The put's own time (a put needs a leader).
    pub put_ms: f64,
    /// From the kill to a member naming a new leader (election samples only).
    pub new_leader_ms: Option<f64>,
}

/// How long a sample waits for a route to show, or a tenant to answer.
const BOUND: Duration = Duration::from_secs(30);

/// Runs `samples` quiet samples and `samples` election samples, interleaved (quiet, election, quiet, ...), so
/// that both see the same machine.
pub async fn election_latency(config: ChaosConfig, samples: usize) -> Result<Vec<Sample>, String> {
    let mut config = config;
    config.tenants = 1;
    let topo = Topology::up(config_topology(&config)).await?;
    let result = measure(&topo, samples).await;
    let mut topo = topo;
    tokio::task::spawn_blocking(move || topo.remove()).await.map_err(|e| e.to_string())?;
    result
}

fn config_topology(config: &ChaosConfig) -> super::cluster::TopologyConfig {
    super::cluster::TopologyConfig {
        reveille: config.reveille.clone(),
        replicas: (1..=config.replicas).map(|i| format!("r{i}")).collect(),
        tenants: (1..=config.tenants).map(|i| format!("t{i}")).collect(),
        idle_timeout: config.idle_timeout,
        lease_ttl: config.lease_ttl,
    }
}

async fn measure(topo: &Topology, samples: usize) -> Result<Vec<Sample>, String> {
    let tenant = topo.config.tenants[0].clone();
    let mut addrs = Vec::new();
    for r in &topo.config.replicas {
        addrs.push(topo.replica_http(r).await.ok_or_else(|| format!("replica {r} has no address"))?);
    }
    let mut out = Vec::new();
    for i in 0..samples * 2 {
        let phase = if i % 2 == 0 { Phase::Quiet } else { Phase::Election };
        wait_stopped(topo, &addrs, &tenant).await?;
        // The operator's client talks to the followers: the put then measures the election, not a client's
        // reconnection to a dead endpoint.
        let leader = topo.leader().await.ok_or("no etcd leader")?;
        let mut urls = Vec::new();
        for m in MEMBERS.iter().filter(|m| **m != leader) {
            urls.push(topo.member_url(m).await.ok_or_else(|| format!("member {m} has no address"))?);
        }
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(BOUND).with_timeout(BOUND);
        let mut etcd =
            etcd_client::Client::connect(urls, Some(options)).await.map_err(|e| format!("etcd client: {e}"))?;
        let probe = format!("probe-{i}.chaos");

        let killed = topo.container(&leader);
        let start = Instant::now();
        if phase == Phase::Election {
            docker(&["kill", &killed]).await?;
        }
        let t0 = Instant::now();
        let wake = async {
            let r = request(addrs[0], &tenant_host(&tenant), "/index.html", BOUND).await;
            (t0.elapsed().as_secs_f64() * 1e3, r.map(|(s, _, _)| s).unwrap_or(0))
        };
        let route = async {
            let put_start = Instant::now();
            let value = serde_json::json!({ "service": tenant }).to_string();
            let put = etcd.put(format!("/reveille/routes/{probe}"), value, None).await;
            let put_ms = put_start.elapsed().as_secs_f64() * 1e3;
            put.map_err(|e| format!("put the probe route: {e}"))?;
            let seen = futures::future::join_all(addrs.iter().map(|a| routed_after(*a, &probe, put_start))).await;
            Ok::<_, String>((put_ms, seen))
        };
        let new_leader = async {
            if phase == Phase::Quiet {
                return None;
            }
            while start.elapsed() < BOUND {
                if topo.leader().await.is_some_and(|l| l != leader) {
                    return Some(start.elapsed().as_secs_f64() * 1e3);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        };
        let ((wake_ms, wake_status), route, new_leader_ms) = tokio::join!(wake, route, new_leader);
        if phase == Phase::Election {
            docker(&["start", &killed]).await?;
        }
        let (put_ms, route_ms) = route?;
        let s = Sample { phase, wake_ms, wake_status, route_ms, put_ms, new_leader_ms };
        eprintln!("election: sample {i}: {s:?}");
        out.push(s);
        let _ = etcd.delete(format!("/reveille/routes/{probe}"), None).await;
        wait_members(topo).await?;
    }
    Ok(out)
}

/// Polls `addr` every 5 ms until it routes `host` (its status endpoint answers 200): the time since `since`.
async fn routed_after(addr: std::net::SocketAddr, host: &str, since: Instant) -> Option<f64> {
    while since.elapsed() < BOUND {
        if let Ok((200, _, _)) = request(addr, host, "/__reveille/status", Duration::from_secs(1)).await {
            return Some(since.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Waits until every replica says the tenant is stopped (its idle stop done and seen everywhere).
async fn wait_stopped(topo: &Topology, addrs: &[std::net::SocketAddr], tenant: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for a in addrs {
            let got = request(*a, &tenant_host(tenant), "/__reveille/status", Duration::from_secs(1)).await;
            all &= matches!(&got, Ok((200, _, body)) if body.windows(17).any(|w| w == b"\"state\":\"stopped\""));
        }
        let running = docker(&["inspect", "-f", "{{.State.Running}}", &topo.container(tenant)]).await?;
        if all && running == "false" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{tenant} not stopped everywhere within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until all three members answer and one leads.
async fn wait_members(topo: &Topology) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        for m in MEMBERS {
            if let Some(url) = topo.member_url(m).await {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(500));
                if let Ok(mut c) = etcd_client::Client::connect([url], Some(options)).await {
                    up += usize::from(c.status().await.is_ok_and(|s| s.leader() != 0));
                }
            }
        }
        if up == MEMBERS.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the etcd cluster not whole again within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The markdown table: per phase, the median and max of each timing.
pub fn markdown(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| cluster | samples | wake p50 | wake max | wakes not 200 | route p50 (slowest replica) | route max | routes \
         not seen | put p50 | new leader p50 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for phase in [Phase::Quiet, Phase::Election] {
        let s: Vec<&Sample> = samples.iter().filter(|s| s.phase == phase).collect();
        if s.is_empty() {
            continue;
        }
        let wake: Vec<f64> = s.iter().map(|s| s.wake_ms).collect();
        let failed = s.iter().filter(|s| s.wake_status != 200).count();
        let route: Vec<f64> =
            s.iter().filter_map(|s| s.route_ms.iter().copied().collect::<Option<Vec<f64>>>()).map(max).collect();
        let unseen = s.iter().map(|s| s.route_ms.iter().filter(|r| r.is_none()).count()).sum::<usize>();
        let put: Vec<f64> = s.iter().map(|s| s.put_ms).collect();
        let leader: Vec<f64> = s.iter().filter_map(|s| s.new_leader_ms).collect();
        let name = match phase {
            Phase::Quiet => "quiet",
            Phase::Election => "leader killed at t=0",
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {failed} | {} | {} | {unseen} | {} | {} |\n",
            s.len(),
            ms(median(&wake)),
            ms(Some(max(wake.clone()))),
            ms(median(&route)),
            ms((!route.is_empty()).then(|| max(route.clone()))),
            ms(median(&put)),
            ms(median(&leader)),
        ));
    }
    out
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().filter(|_| !v.is_empty())
}

fn max(v: Vec<f64>) -> f64 {
    v.into_iter().fold(0.0, f64::max)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.0} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_takes_each_phase_median_and_the_slowest_replica() {
        let q = |wake, route: [f64; 3]| Sample {
            phase: Phase::Quiet,
            wake_ms: wake,
            wake_status: 200,
            route_ms: route.iter().map(|r| Some(*r)).collect(),
            put_ms: 2.0,
            new_leader_ms: None,
        };
        let mut e = q(900.0, [1500.0, 1600.0, 1700.0]);
        e.phase = Phase::Election;
        e.route_ms[2] = None;
        e.wake_status = 504;
        e.new_leader_ms = Some(1200.0);
        let table = markdown(&[q(300.0, [5.0, 9.0, 7.0]), q(310.0, [6.0, 4.0, 8.0]), q(320.0, [3.0, 3.0, 3.0]), e]);
        assert!(table.contains("| quiet | 3 | 310 ms | 320 ms | 0 | 8 ms | 9 ms | 0 | 2 ms | – |"), "{table}");
        assert!(
            table.contains("| leader killed at t=0 | 1 | 900 ms | 900 ms | 1 | – | – | 1 | 2 ms | 1200 ms |"),
            "{table}"
        );
    }
}
