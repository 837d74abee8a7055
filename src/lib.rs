//! # reveille
//!
//! An edge reverse proxy for multi-tenant container platforms: routes requests by hostname to tenant services,
//! with routes that change live, terminating TLS, and waking tenants' containers on demand.
//!
//! # Layout
//!
//! - [`routes`]: the routing model and the immutable route table snapshot (`ArcSwap`), hostname matching.
//! - [`control`]: route sources — the routes file and etcd's route and service keys — combined into the table in
//!   force.
//! - [`etcd`]: the one etcd client of the process, the key schema, and the list-then-watch session loop that
//!   routes and certificates consume.
//! - [`fswatch`]: waiting for a file or directory to change (notify events, polling), for the routes file and
//!   the certificates directory.
//! - [`proxy`]: the data path — connections (plain or TLS), HTTP/1.1 and h2, forwarding, upgrades, HTTPS
//!   redirects, limits and timeouts.
//! - [`tls`]: TLS termination — certificates from a directory and etcd as an `ArcSwap` snapshot, SNI selection,
//!   hot reload, the handshake.
//! - [`runtime`]: the container runtime — start, stop, pause and inspect tenant containers (Docker Engine API).
//! - [`passivation`]: wake-on-request and idle stop of tenant containers — per-tenant state machines, held
//!   requests, readiness probes, the "starting" page, etcd status keys.
//! - [`admin`]: the admin listener — `/healthz`, `/readyz`, `/metrics`, `/api/routes`, `/api/services`.
//! - [`metrics`]: Prometheus metric definitions and exposition.
//! - [`config`]: the config file, command-line overrides, defaults.
//! - [`cli`]: the command line's definitions, the operator commands (`route`, `service`, `cert`) and `check`.
//! - [`telemetry`]: logging setup (text or JSON).
//! - [`app`]: wiring it all together on bound listeners, and orderly shutdown.
//!
//! `main.rs` only parses the command line, sets up logging and the runtime, dispatches to [`cli`] or
//! [`app`], and maps errors to exit codes.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod etcd;
pub mod fswatch;
pub mod metrics;
pub mod passivation;
pub mod proxy;
pub mod readiness;
pub mod routes;
pub mod runtime;
pub mod telemetry;
pub mod tls;
