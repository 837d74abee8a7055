//! Route sources: where route tables come from and how changes reach the proxy.
//!
//! Owns loading, validating and watching route definitions (today: the routes file). A source builds a complete
//! set of routes and services (or a batch of changes) and hands it to the [`Composer`], the single writer of the
//! table in force. It does not know how
//! requests are routed (that is `routes/`) or proxied (`proxy/`).

pub mod compose;
pub mod etcd;
pub mod file;
pub mod ops;

pub use compose::{Change, Composer, Source};
