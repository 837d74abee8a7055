//! The faults a chaos run injects and heals, and their seeded schedule. It owns how each [`FaultKind`] is made
//! on the [`Topology`] (Docker commands, iptables in a container's network namespace through `nsenter`, the
//! etcd relays) and how it is undone; it does not record (the run writes the [`FaultWindow`]s).
//!
//! Substitutes, because this kernel has no netem (`CONFIG_NET_SCH_NETEM` is not set):
//! - loss: `iptables ... -m statistic --mode random --probability P -j DROP` in the replica's namespace, on the
//!   traffic to and from the etcd network's gateway (all of a replica's etcd traffic goes through the relays
//!   there), so nothing else of the replica's is touched, and never the host's own rules;
//! - latency: the replica's relays delay every chunk (a delay line: added latency, throughput not cut).
//!
//! A peer partition: replicas meet only through etcd (no replica talks to another), so "cut off from its peers"
//! is made as the partition that matters for that: the replica with one etcd member on one side, the two other
//! members (and so the other replicas) on the other. The member's peer traffic is dropped by iptables in its
//! namespace, and the replica's relays forward to that member only.

use std::time::Duration;

use super::cluster::{docker, Topology, MEMBERS};
use super::history::FaultKind;

/// splitmix64: a small seeded PRNG, enough for a replayable schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next_u64() as usize % items.len()]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next_u64() as usize % (i + 1));
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone)]
pub struct Planned {
    pub kind: FaultKind,
    /// A replica's name, or (for the etcd faults) chosen when injected: the leader is known only then.
    pub replica: String,
    /// How long it is held before the heal.
    pub hold: Duration,
    /// The pause after the heal before the next fault (at least the convergence bound).
    pub gap: Duration,
    /// For the link faults: the loss probability or the added delay (ms).
    pub amount: u64,
}

/// The schedule: every kind once in a seeded order for the short run (`rounds` = 1), then seeded decks of every
/// kind again, so each kind is hit as often as the others.
pub fn schedule(seed: u64, replicas: &[String], rounds: usize, lease_ttl: Duration, gap: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut plan = Vec::new();
    for _ in 0..rounds {
        let mut deck = FaultKind::ALL.to_vec();
        rng.shuffle(&mut deck);
        for kind in deck {
            let ttl = lease_ttl.as_millis() as u64;
            // A freeze and a partition longer than the lease TTL: the replica's lease expires (issue 29).
            let hold = match kind {
                FaultKind::ReplicaFreeze | FaultKind::EtcdPartition | FaultKind::PeerPartition => {
                    rng.range(ttl * 2, ttl * 2 + 3000)
                }
                _ => rng.range(3000, 6000),
            };
            let amount = match kind {
                FaultKind::EtcdLinkLoss => rng.range(20, 60),
                FaultKind::EtcdLinkDelay => rng.range(100, 800),
                _ => 0,
            };
            plan.push(Planned {
                kind,
                replica: rng.pick(replicas).clone(),
                hold: Duration::from_millis(hold),
                gap,
                amount,
            });
        }
    }
    plan
}

/// An injected fault, to be healed.
#[derive(Debug)]
pub struct Injected {
    pub kind: FaultKind,
    /// What the history names as its target.
    pub target: String,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    Connect { network: String, container: String },
    Start(Vec<String>),
    Unpause(String),
    Iptables { container: String, rules: Vec<Vec<String>> },
    Relay { replica: String },
    Peer { replica: String, member: String, rules: Vec<Vec<String>> },
}

/// Injects `p`; `rng` picks the members of the etcd faults.
pub async fn inject(topo: &Topology, p: &Planned, rng: &mut Rng) -> Result<Injected, String> {
    let replica = topo.container(&p.replica);
    let (target, undo) = match p.kind {
        FaultKind::EtcdPartition => {
            let network = topo.etcd_network();
            docker(&["network", "disconnect", "-f", &network, &replica]).await?;
            (p.replica.clone(), Undo::Connect { network, container: replica })
        }
        FaultKind::PeerPartition => {
            let member = rng.pick(&MEMBERS).to_string();
            let container = topo.container(&member);
            let mut rules = Vec::new();
            for other in MEMBERS.iter().filter(|m| **m != member) {
                let ip = topo
                    .ip(&topo.container(other), &topo.etcd_network())
                    .await
                    .ok_or_else(|| format!("no address of {other}"))?
                    .to_string();
                // Everything between the two members, both ways: their peer (raft) traffic.
                rules.push(["INPUT", "-s", &ip, "-j", "DROP"].map(String::from).to_vec());
                rules.push(["OUTPUT", "-d", &ip, "-j", "DROP"].map(String::from).to_vec());
            }
            iptables(&container, "-A", &rules).await?;
            let control = &topo.relays[&p.replica];
            for (i, m) in MEMBERS.iter().enumerate() {
                control.blocked[i].store(*m != member, std::sync::atomic::Ordering::Relaxed);
            }
            (p.replica.clone(), Undo::Peer { replica: p.replica.clone(), member, rules })
        }
        FaultKind::EtcdLeaderKill => {
            let leader = topo.leader().await.ok_or("no etcd leader to kill")?;
            let c = topo.container(&leader);
            docker(&["kill", "-s", "KILL", &c]).await?;
            (leader, Undo::Start(vec![c]))
        }
        FaultKind::EtcdMinorityStop | FaultKind::EtcdMajorityStop => {
            let mut members = MEMBERS.to_vec();
            rng.shuffle(&mut members);
            members.truncate(if p.kind == FaultKind::EtcdMinorityStop { 1 } else { 2 });
            let containers: Vec<String> = members.iter().map(|m| topo.container(m)).collect();
            let mut args = vec!["stop", "-t", "1"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args).await?;
            (members.join(","), Undo::Start(containers))
        }
        FaultKind::ReplicaFreeze => {
            docker(&["pause", &replica]).await?;
            (p.replica.clone(), Undo::Unpause(replica))
        }
        FaultKind::ReplicaKill => {
            docker(&["kill", "-s", "KILL", &replica]).await?;
            (p.replica.clone(), Undo::Start(vec![replica]))
        }
        FaultKind::EtcdLinkLoss => {
            let rules = loss_rules(topo.etcd_gateway, p.amount as f64 / 100.0);
            iptables(&replica, "-A", &rules).await?;
            (p.replica.clone(), Undo::Iptables { container: replica, rules })
        }
        FaultKind::EtcdLinkDelay => {
            topo.relays[&p.replica].delay_ms.store(p.amount, std::sync::atomic::Ordering::Relaxed);
            (p.replica.clone(), Undo::Relay { replica: p.replica.clone() })
        }
    };
    Ok(Injected { kind: p.kind, target, undo })
}

/// The rules dropping a share `p` of a replica's etcd traffic (to and from the etcd network's gateway, where
/// its relays are); `p` = 1 black-holes it.
pub fn loss_rules(etcd_gateway: std::net::IpAddr, p: f64) -> Vec<Vec<String>> {
    let gw = etcd_gateway.to_string();
    let p = format!("{p:.3}");
    let rule = |chain: &str, dir: &str| {
        let mut r: Vec<String> = [chain, dir, &gw].map(String::from).to_vec();
        if p != "1.000" {
            r.extend(["-m", "statistic", "--mode", "random", "--probability", &p].map(String::from));
        }
        r.extend(["-j", "DROP"].map(String::from));
        r
    };
    vec![rule("OUTPUT", "-d"), rule("INPUT", "-s")]
}

/// Heals an injected fault.
pub async fn heal(topo: &Topology, injected: Injected) -> Result<(), String> {
    match injected.undo {
        Undo::Connect { network, container } => docker(&["network", "connect", &network, &container]).await.map(drop),
        Undo::Start(containers) => {
            let mut args = vec!["start"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args).await.map(drop)
        }
        Undo::Unpause(container) => docker(&["unpause", &container]).await.map(drop),
        Undo::Iptables { container, rules } => iptables(&container, "-D", &rules).await,
        Undo::Relay { replica } => {
            topo.relays[&replica].delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Undo::Peer { replica, member, rules } => {
            let control = &topo.relays[&replica];
            for flag in &control.blocked {
                flag.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            iptables(&topo.container(&member), "-D", &rules).await
        }
    }
}

/// Runs `iptables <op> <rule>` for each rule inside `container`'s network namespace (never the host's).
pub async fn iptables(container: &str, op: &str, rules: &[Vec<String>]) -> Result<(), String> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]).await?;
    if pid == "0" || pid.is_empty() {
        return Err(format!("{container} is not running"));
    }
    for rule in rules {
        let out = tokio::process::Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w", op])
            .args(rule)
            .output()
            .await
            .map_err(|e| format!("nsenter: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "iptables {op} {} in {container}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas() -> Vec<String> {
        ["r1", "r2", "r3"].map(String::from).to_vec()
    }

    #[test]
    fn a_deck_holds_every_kind_once_and_a_seed_replays_it() {
        let ttl = Duration::from_secs(2);
        let gap = Duration::from_secs(10);
        let plan = schedule(29, &replicas(), 1, ttl, gap);
        let mut kinds: Vec<FaultKind> = plan.iter().map(|p| p.kind).collect();
        kinds.sort();
        assert_eq!(kinds, FaultKind::ALL.to_vec());
        let again: Vec<(FaultKind, String, Duration)> =
            schedule(29, &replicas(), 1, ttl, gap).into_iter().map(|p| (p.kind, p.replica, p.hold)).collect();
        let first: Vec<(FaultKind, String, Duration)> =
            plan.iter().map(|p| (p.kind, p.replica.clone(), p.hold)).collect();
        assert_eq!(first, again, "the same seed deals the same schedule");
        let other: Vec<FaultKind> = schedule(30, &replicas(), 1, ttl, gap).iter().map(|p| p.kind).collect();
        assert_ne!(plan.iter().map(|p| p.kind).collect::<Vec<_>>(), other, "another seed, another order");
        for p in schedule(29, &replicas(), 5, ttl, gap) {
            if p.kind == FaultKind::ReplicaFreeze {
                assert!(p.hold > ttl, "a freeze outlasts the lease: {p:?}");
            }
            assert!(replicas().contains(&p.replica));
            assert_eq!(p.gap, gap);
        }
    }

    #[test]
    fn loss_rules_only_touch_the_etcd_gateway() {
        let gw: std::net::IpAddr = "172.30.0.1".parse().unwrap();
        let rules = loss_rules(gw, 0.25);
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            text,
            [
                "OUTPUT -d 172.30.0.1 -m statistic --mode random --probability 0.250 -j DROP",
                "INPUT -s 172.30.0.1 -m statistic --mode random --probability 0.250 -j DROP",
            ]
        );
        let black_hole: Vec<String> = loss_rules(gw, 1.0).iter().map(|r| r.join(" ")).collect();
        assert_eq!(black_hole, ["OUTPUT -d 172.30.0.1 -j DROP", "INPUT -s 172.30.0.1 -j DROP"]);
    }
}
