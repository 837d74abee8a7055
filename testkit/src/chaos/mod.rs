//! The chaos suite (issue 29): reveille replicas and a three-member etcd as containers on private Docker
//! networks, faults injected and healed on a seeded schedule, a workload through every replica, and a checker
//! over the recorded history. The short run is `tests/it/chaos.rs`, the long one `reveille-lab chaos`.
//!
//! # Layout
//! - [`history`]: the recorded history's types and their JSON-lines form.
//! - [`check`]: the checker, a pure function of a history, and its report.

pub mod check;
pub mod history;
