//! The chaos suite (issue 29): reveille replicas and a three-member etcd as containers on private Docker
//! networks, faults injected and healed on a seeded schedule, a workload through every replica, and a checker
//! over the recorded history. The short run is `tests/it/chaos.rs`, the long one `reveille-lab chaos`.
//!
//! # Layout
//! - [`history`]: the recorded history's types and their JSON-lines form.
//! - [`check`]: the checker, a pure function of a history, and its report.
//! - [`cluster`]: the topology (networks, etcd members, replicas, tenants, the etcd relays), made and removed.
//! - [`faults`]: each fault kind injected and healed, the seeded schedule.
//! - [`workload`]: the clients, every request recorded.
//! - [`record`]: the recorder's clock, Docker's events of the tenants, the periodic sampler.
//! - [`run`]: a whole run, and the partition scenario.
//! - [`election`]: wake and route-propagation latency during an etcd leader election against a quiet cluster.

pub mod check;
pub mod cluster;
pub mod election;
pub mod faults;
pub mod history;
pub mod record;
pub mod run;
pub mod workload;

pub use run::{partition_scenario, run, ChaosConfig, PartitionOutcome};
