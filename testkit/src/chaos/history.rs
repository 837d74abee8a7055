//! The chaos suite's recorded history: the run's seed and settings, the fault windows, and the events (client
//! requests, Docker events of tenants, periodic samples of etcd and Docker), all timed in milliseconds since the
//! run's start on one clock, the host's. It owns the types and their JSON-lines form (one object a line, so a
//! run can be written as it happens and a failed run's file still reads); it does not record (the harness does)
//! nor judge (`check.rs` does).
//!
//! The JSON-lines form: a `{"type":"run",...}` line with the seed and the config, then `fault`, `request`,
//! `docker` and `sample` lines in any order (a fault is known in full only when it heals, after the events
//! inside it). The reader keeps the events in file order and the faults sorted by start.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::Path;

use serde_json::{json, Value};

/// One run's record, what the checker reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The schedule's seed: printed with every violation, so the run can be replayed.
    pub seed: u64,
    pub config: RunConfig,
    /// Every fault injected, with when it was healed.
    pub faults: Vec<FaultWindow>,
    /// As recorded; in time order ideally, but the checker sorts them itself (a request by its start), since a
    /// request is recorded when it ends and a Docker event when the stream delivers it.
    pub events: Vec<Event>,
}

/// The run's settings the invariants depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunConfig {
    /// The reveille replicas' names (the node names, also a fault's target).
    pub replicas: Vec<String>,
    /// The tenants' names (their service names, the Docker events' and status keys' names).
    pub tenants: Vec<String>,
    /// The tenants' idle timeout: no stop within it of the last request served (invariant 3).
    pub idle_timeout_ms: u64,
    /// The replicas' etcd lease TTL: a replica cut off from etcd longer than it no longer counts for invariant 3.
    pub lease_ttl_ms: u64,
    /// How long after a heal the cluster has to converge (invariant 4).
    pub converge_bound_ms: u64,
    /// Slack for the clocks the checker compares (a request's end seen by the client before the proxy's, Docker's
    /// event delivered late): a stop counts as under use only when it is more than this inside the idle timeout.
    pub tolerance_ms: u64,
}

/// The faults the harness injects (issue 29's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// A replica's etcd network disconnected; its clients still reach it.
    EtcdPartition,
    /// A replica partitioned from its peers: replicas meet only through etcd, so it is left with one etcd member
    /// that is itself cut off from the other two (no quorum).
    PeerPartition,
    /// The etcd leader killed, then restarted.
    EtcdLeaderKill,
    /// One of the three etcd members stopped (quorum kept).
    EtcdMinorityStop,
    /// Two of the three etcd members stopped (quorum lost).
    EtcdMajorityStop,
    /// A replica frozen (`docker pause`), then thawed.
    ReplicaFreeze,
    /// A replica killed (SIGKILL) and restarted under the same node name.
    ReplicaKill,
    /// Packet loss on a replica's etcd link (iptables `statistic` drops in its namespace: this kernel has no netem).
    EtcdLinkLoss,
    /// Latency on a replica's etcd link (its relays hold each chunk: this kernel has no netem).
    EtcdLinkDelay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::EtcdPartition,
        FaultKind::PeerPartition,
        FaultKind::EtcdLeaderKill,
        FaultKind::EtcdMinorityStop,
        FaultKind::EtcdMajorityStop,
        FaultKind::ReplicaFreeze,
        FaultKind::ReplicaKill,
        FaultKind::EtcdLinkLoss,
        FaultKind::EtcdLinkDelay,
    ];

    /// The name in the JSON-lines form and the report's table.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::EtcdPartition => "etcd_partition",
            FaultKind::PeerPartition => "peer_partition",
            FaultKind::EtcdLeaderKill => "etcd_leader_kill",
            FaultKind::EtcdMinorityStop => "etcd_minority_stop",
            FaultKind::EtcdMajorityStop => "etcd_majority_stop",
            FaultKind::ReplicaFreeze => "replica_freeze",
            FaultKind::ReplicaKill => "replica_kill",
            FaultKind::EtcdLinkLoss => "etcd_link_loss",
            FaultKind::EtcdLinkDelay => "etcd_link_delay",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault, from its injection to its heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWindow {
    pub kind: FaultKind,
    /// The replica or etcd member it hit (for a majority stop, the members joined by `,`).
    pub target: String,
    pub start_ms: u64,
    pub healed_ms: u64,
}

impl FaultWindow {
    /// Whether `[from, to]` overlaps the window.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        from <= self.healed_ms && to >= self.start_ms
    }
}

/// One thing recorded during the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One client request: status 0 = no HTTP answer (refused, reset, timeout), with `error` saying which;
    /// `reveille_error` = the proxy's own error reason if it answered one (its `x-reveille-error` header or body
    /// marker, see `src/proxy/error.rs`).
    Request {
        replica: String,
        tenant: String,
        start_ms: u64,
        end_ms: u64,
        status: u16,
        error: Option<String>,
        reveille_error: Option<String>,
    },
    /// A Docker event of a tenant's container: start, kill, die, stop, pause, unpause.
    Docker { tenant: String, action: String, at_ms: u64 },
    /// A periodic sample (every ~250 ms): who is decider (etcd), each tenant's status key in etcd and its Docker
    /// state, and whether each replica answers.
    Sample {
        at_ms: u64,
        deciders: Vec<String>,
        /// (tenant, status key's value: running, stopped, starting, stopping, paused...).
        status_keys: Vec<(String, String)>,
        /// (tenant, Docker's state: running, exited, created, paused...).
        docker_states: Vec<(String, String)>,
        /// (replica, answers).
        serving: Vec<(String, bool)>,
    },
}

impl Event {
    /// When it happened (a request: when it started).
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Request { start_ms, .. } => *start_ms,
            Event::Docker { at_ms, .. } | Event::Sample { at_ms, .. } => *at_ms,
        }
    }

    /// The last instant it covers (a request: its end).
    pub fn end_ms(&self) -> u64 {
        match self {
            Event::Request { end_ms, .. } => *end_ms,
            other => other.at_ms(),
        }
    }
}

/// A history file that does not read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the history: {0}")]
    Io(#[from] io::Error),
    #[error("history line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the history has no `run` line (seed and config)")]
    NoRunLine,
}

// === impl JSON lines ===

impl RunConfig {
    fn to_json(&self) -> Value {
        json!({
            "replicas": self.replicas,
            "tenants": self.tenants,
            "idle_timeout_ms": self.idle_timeout_ms,
            "lease_ttl_ms": self.lease_ttl_ms,
            "converge_bound_ms": self.converge_bound_ms,
            "tolerance_ms": self.tolerance_ms,
        })
    }

    fn from_json(v: &Value) -> Result<RunConfig, String> {
        Ok(RunConfig {
            replicas: strings(v, "replicas")?,
            tenants: strings(v, "tenants")?,
            idle_timeout_ms: uint(v, "idle_timeout_ms")?,
            lease_ttl_ms: uint(v, "lease_ttl_ms")?,
            converge_bound_ms: uint(v, "converge_bound_ms")?,
            tolerance_ms: uint(v, "tolerance_ms")?,
        })
    }
}

/// The first line of a history: the seed and the config. A harness streaming its record writes this, then one
/// [`FaultWindow::to_json_line`] or [`Event::to_json_line`] per line.
pub fn run_line(seed: u64, config: &RunConfig) -> String {
    json!({ "type": "run", "seed": seed, "config": config.to_json() }).to_string()
}

impl FaultWindow {
    /// Its line in the JSON-lines form (no newline).
    pub fn to_json_line(&self) -> String {
        json!({
            "type": "fault",
            "kind": self.kind.as_str(),
            "target": self.target,
            "start_ms": self.start_ms,
            "healed_ms": self.healed_ms,
        })
        .to_string()
    }

    fn from_json(v: &Value) -> Result<FaultWindow, String> {
        let kind = string(v, "kind")?;
        Ok(FaultWindow {
            kind: FaultKind::parse(&kind).ok_or_else(|| format!("unknown fault kind {kind:?}"))?,
            target: string(v, "target")?,
            start_ms: uint(v, "start_ms")?,
            healed_ms: uint(v, "healed_ms")?,
        })
    }
}

impl Event {
    /// Its line in the JSON-lines form (no newline).
    pub fn to_json_line(&self) -> String {
        let pairs = |pairs: &[(String, String)]| pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>();
        match self {
            Event::Request { replica, tenant, start_ms, end_ms, status, error, reveille_error } => json!({
                "type": "request",
                "replica": replica,
                "tenant": tenant,
                "start_ms": start_ms,
                "end_ms": end_ms,
                "status": status,
                "error": error,
                "reveille_error": reveille_error,
            }),
            Event::Docker { tenant, action, at_ms } => json!({
                "type": "docker",
                "tenant": tenant,
                "action": action,
                "at_ms": at_ms,
            }),
            Event::Sample { at_ms, deciders, status_keys, docker_states, serving } => json!({
                "type": "sample",
                "at_ms": at_ms,
                "deciders": deciders,
                "status_keys": pairs(status_keys),
                "docker_states": pairs(docker_states),
                "serving": serving.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            }),
        }
        .to_string()
    }

    fn from_json(kind: &str, v: &Value) -> Result<Event, String> {
        match kind {
            "request" => Ok(Event::Request {
                replica: string(v, "replica")?,
                tenant: string(v, "tenant")?,
                start_ms: uint(v, "start_ms")?,
                end_ms: uint(v, "end_ms")?,
                status: u16::try_from(uint(v, "status")?).map_err(|_| "status out of range".to_string())?,
                error: opt_string(v, "error")?,
                reveille_error: opt_string(v, "reveille_error")?,
            }),
            "docker" => Ok(Event::Docker {
                tenant: string(v, "tenant")?,
                action: string(v, "action")?,
                at_ms: uint(v, "at_ms")?,
            }),
            "sample" => Ok(Event::Sample {
                at_ms: uint(v, "at_ms")?,
                deciders: strings(v, "deciders")?,
                status_keys: string_pairs(v, "status_keys")?,
                docker_states: string_pairs(v, "docker_states")?,
                serving: pairs(v, "serving", |x| x.as_bool())?,
            }),
            other => Err(format!("unknown line type {other:?}")),
        }
    }
}

impl History {
    /// Writes the JSON-lines form: the run line, the faults, then the events.
    pub fn write_jsonl(&self, mut out: impl Write) -> io::Result<()> {
        writeln!(out, "{}", run_line(self.seed, &self.config))?;
        for fault in &self.faults {
            writeln!(out, "{}", fault.to_json_line())?;
        }
        for event in &self.events {
            writeln!(out, "{}", event.to_json_line())?;
        }
        out.flush()
    }

    /// Reads the JSON-lines form; blank lines are skipped, anything else that does not parse is an error naming
    /// its line.
    pub fn read_jsonl(input: impl BufRead) -> Result<History, HistoryError> {
        let mut head = None;
        let mut faults = Vec::new();
        let mut events = Vec::new();
        for (i, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |reason: String| HistoryError::Line { line: i + 1, reason };
            let v: Value = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
            let kind = string(&v, "type").map_err(at)?;
            match kind.as_str() {
                "run" => {
                    let seed = uint(&v, "seed").map_err(at)?;
                    let config = v.get("config").ok_or_else(|| at("missing `config`".into()))?;
                    head = Some((seed, RunConfig::from_json(config).map_err(at)?));
                }
                "fault" => faults.push(FaultWindow::from_json(&v).map_err(at)?),
                other => events.push(Event::from_json(other, &v).map_err(at)?),
            }
        }
        let (seed, config) = head.ok_or(HistoryError::NoRunLine)?;
        faults.sort_by_key(|f| (f.start_ms, f.healed_ms));
        Ok(History { seed, config, faults, events })
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        self.write_jsonl(io::BufWriter::new(std::fs::File::create(path)?))
    }

    pub fn load(path: &Path) -> Result<History, HistoryError> {
        History::read_jsonl(io::BufReader::new(std::fs::File::open(path)?))
    }
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing `{key}`"))
}

fn uint(v: &Value, key: &str) -> Result<u64, String> {
    field(v, key)?.as_u64().ok_or_else(|| format!("`{key}` is not an unsigned integer"))
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    Ok(field(v, key)?.as_str().ok_or_else(|| format!("`{key}` is not a string"))?.to_string())
}

fn opt_string(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` is not a string or null")),
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, String> {
    let bad = || format!("`{key}` is not an array of strings");
    field(v, key)?.as_array().ok_or_else(bad)?.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(bad)).collect()
}

fn pairs<T>(v: &Value, key: &str, second: impl Fn(&Value) -> Option<T>) -> Result<Vec<(String, T)>, String> {
    let bad = || format!("`{key}` is not an array of [name, value] pairs");
    field(v, key)?
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([name, value]) => Ok((name.as_str().ok_or_else(bad)?.to_string(), second(value).ok_or_else(bad)?)),
            _ => Err(bad()),
        })
        .collect()
}

fn string_pairs(v: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    pairs(v, key, |x| x.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_history() -> History {
        History {
            seed: u64::MAX - 7,
            config: RunConfig {
                replicas: vec!["r1".into(), "r2".into()],
                tenants: vec!["t1".into()],
                idle_timeout_ms: 3000,
                lease_ttl_ms: 5000,
                converge_bound_ms: 15_000,
                tolerance_ms: 300,
            },
            faults: vec![FaultWindow {
                kind: FaultKind::ReplicaFreeze,
                target: "r2".into(),
                start_ms: 1000,
                healed_ms: 9000,
            }],
            events: vec![
                Event::Request {
                    replica: "r1".into(),
                    tenant: "t1".into(),
                    start_ms: 10,
                    end_ms: 260,
                    status: 200,
                    error: None,
                    reveille_error: None,
                },
                Event::Request {
                    replica: "r2".into(),
                    tenant: "t1".into(),
                    start_ms: 1200,
                    end_ms: 3200,
                    status: 0,
                    error: Some("timeout".into()),
                    reveille_error: Some("wake \"quoted\"".into()),
                },
                Event::Docker { tenant: "t1".into(), action: "start".into(), at_ms: 40 },
                Event::Sample {
                    at_ms: 250,
                    deciders: vec!["r1".into()],
                    status_keys: vec![("t1".into(), "running".into())],
                    docker_states: vec![("t1".into(), "running".into())],
                    serving: vec![("r1".into(), true), ("r2".into(), false)],
                },
            ],
        }
    }

    #[test]
    fn jsonl_round_trip() {
        let history = sample_history();
        let mut text = Vec::new();
        history.write_jsonl(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert_eq!(History::read_jsonl(text.as_bytes()).unwrap(), history);
    }

    #[test]
    fn a_streamed_file_reads_with_faults_after_their_events() {
        let history = sample_history();
        // As a harness writes it while running: the fault is known in full only at its heal.
        let mut text = run_line(history.seed, &history.config) + "\n";
        for event in &history.events {
            text += &(event.to_json_line() + "\n\n");
        }
        text += &history.faults[0].to_json_line();
        assert_eq!(History::read_jsonl(text.as_bytes()).unwrap(), history);
    }

    #[test]
    fn a_bad_line_is_named() {
        let history = sample_history();
        let text = format!("{}\n{{\"type\":\"docker\",\"tenant\":\"t1\"}}\n", run_line(history.seed, &history.config));
        let err = History::read_jsonl(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "history line 2: missing `action`");
        let err = History::read_jsonl(history.faults[0].to_json_line().as_bytes()).unwrap_err();
        assert!(matches!(err, HistoryError::NoRunLine), "{err}");
    }
}
