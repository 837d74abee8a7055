//! Helpers shared by reveille's load labs (`lab/`) and its integration tests (`tests/it/support/`): what both
//! need to run real processes on loopback and read what they did. It owns no proxy logic and does not depend on
//! reveille, so reveille's tests can depend on it without a cycle.
//!
//! # Layout
//! - [`env`]: settings from environment variables.
//! - [`machine`]: the machine, tool versions and the commit a report describes.
//! - [`procfs`]: `/proc` readings (memory, CPU time, fds, listen queues).
//! - [`process`]: child processes killed on drop, finding tools, log files.
//! - [`ports`]: free loopback ports.
//! - [`stats`]: medians, percentiles, formatting of durations.
//! - [`report`]: writing a report under `target/`, showing logs.
//! - [`backend`]: the in-process backends: a hyper server answering a fixed body, a few-workers backend, a
//!   backend that stalls mid-body.
//! - [`http`]: a hyper HTTP/1.1 client, async and blocking.
//! - [`wire`]: an HTTP/1.1 client writing its own bytes, timing a response's head and body.
//! - [`admin`]: reveille's admin API: services' states, `/metrics`, the wake phases.
//! - [`prometheus`]: reading a sample from reveille's `/metrics`.
//! - [`wrk`]: running wrk and reading its output.
//! - [`etcd`]: a throwaway etcd on free loopback ports.
//! - [`h2load`]: running h2load (HTTP/2) and reading its output and per-request log.
//! - [`docker`]: the docker CLI, the `FROM scratch` busybox image, the labs' containers.
//! - [`tls`]: a rustls server-certificate check for test clients.
//! - [`chaos`]: the fault-injection suite (issue 29): its history, its checker.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod chaos;
pub mod docker;
pub mod env;
pub mod etcd;
pub mod h2load;
pub mod http;
pub mod machine;
pub mod ports;
pub mod process;
pub mod procfs;
pub mod prometheus;
pub mod report;
pub mod stats;
pub mod tls;
pub mod wire;
pub mod wrk;
