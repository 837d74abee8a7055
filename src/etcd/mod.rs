//! etcd, shared by every part of reveille that keeps state there: the client, the key schema, and the
//! list-then-watch session loop.
//!
//! - `client`: how to reach etcd ([`EtcdConfig`]: endpoints, auth, TLS, timeouts), [`connect`] with its probe,
//!   [`within`] for a deadline per request, paged [`list_range`], and [`Etcd`], the one client of the process,
//!   shared by its consumers, connected lazily and replaced after a failed session.
//! - `keys`: [`Keys`], every key reveille reads or writes under the prefix (routes, services, status,
//!   activity, certificates) and the ranges that are watched.
//! - `session`: [`watch`], which lists a key range at revision R, watches it from R+1, and after a broken
//!   watch backs off, reconnects and lists again, handing everything to a [`Sink`].
//!
//! It does not know what the values mean: parsing routes is `control::etcd`'s, certificates `tls::etcd`'s,
//! status values `passivation::status`'s, and the operator commands are `cli`'s.

mod client;
mod keys;
mod session;

pub use client::{connect, EtcdConfig, EtcdError};
pub(crate) use client::{list_range, within, Etcd};
pub(crate) use keys::{ClusterKey, KeyKind, Keys};
pub(crate) use session::{watch, Sink};
