//! Route sources: where route tables come from and how changes reach the table in force.
//!
//! - `file`: the routes file, parsed with line numbers, watched (through `crate::fswatch`).
//! - `etcd`: route and service keys in etcd, a consumer of the shared session loop (`crate::etcd`).
//! - `compose`: the [`Composer`], the single writer of the table: each source hands it a complete set of
//!   routes and services or a batch of changes, and it publishes one table with etcd winning over the file.
//!
//! It does not know how requests are routed (that is `routes/`) or proxied (`proxy/`), how to talk to etcd or
//! watch files (`etcd/`, `fswatch`), nor the operator commands that write routes (`cli/`).

pub(crate) mod compose;
pub(crate) mod etcd;
pub(crate) mod file;

pub(crate) use compose::{Composer, Source};
