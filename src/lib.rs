//! # reveille
//!
//! An edge reverse proxy for multi-tenant container platforms: routes requests by hostname to tenant services,
//! with routes that change live, terminating TLS, and waking tenants' containers on demand.
//!
//! # Layout
//!
//! - `routes`: the routing model and the immutable route table snapshot (`ArcSwap`), hostname and path-prefix
//!   matching, and each backend's health (what the proxy saw of its last attempts, atomics only).
//! - `control`: route sources — the routes file and etcd's route and service keys — combined into the table in
//!   force.
//! - `etcd`: the one etcd client of the process, the key schema, and the list-then-watch session loop that
//!   routes and certificates consume.
//! - `events`: the events feed (tenant transitions, route and certificate changes) with resumable ids, for the
//!   admin API's server-sent events.
//! - `fswatch`: waiting for a file or directory to change (notify events, polling), for the routes file and
//!   the certificates directory.
//! - `fsread`: reading the files an operator points reveille at (routes, certificates, config, templates)
//!   within bounds: regular files only, opened without blocking, at most `max_file_size` bytes.
//! - `health_check`: active health checks of backends (a task per checked backend, following the route table);
//!   a failed check takes a backend out of its service's rotation until one passes.
//! - `proxy`: the data path — downstream connections (plain or TLS), HTTP/1.1 and h2, forwarding, upgrades,
//!   HTTPS redirects, limits and timeouts; one exit per request that counts it and hands its access-log line
//!   over. It puts a backend connection back in the pool once its response has been read.
//! - `http1`: HTTP/1.1 on the wire for both sides, below `proxy` and `upstream` (pure, no socket): the
//!   hop-by-hop names, body framing (`Content-Length`, the chunked decoder and encoder's pieces) and the server
//!   side's strict request-head parser.
//! - `http2`: HTTP/2 on the wire (no socket; one timer, the keep-alive PING's): frames parsed and written, HPACK
//!   (a decoder that hands out fields as slices, an encoder of static indexes and plain literals), and both
//!   sides of a connection — streams, flow control, the heads HTTP/2 refuses and the protections against abuse
//!   — with the handles a stream's bodies go through. Below `proxy` (its h2 server) and `upstream` (its h2
//!   client).
//! - `upstream`: the backend side, below `proxy` — reveille's own HTTP/1.1 client: the codec (heads, framing,
//!   chunks, trailers, hop-by-hop names), a connection's socket (TCP, or TLS for `https://` backends) and
//!   buffers, one exchange (`send` and the response body), the pool of idle connections (generic, knows no
//!   HTTP), opening connections, and a service's TLS settings for its backends; and HTTP/2 to `h2c://`
//!   and `https://` backends (`http2`'s client, a few multiplexed connections per backend). It knows nothing of the proxy
//!   (`docs/design/upstream.md`).
//! - `access_log`: the access log — the line's format (text or JSON), per-core buffers, the writer thread
//!   that writes them in batches to stdout or a file (reopened on SIGHUP), and the count of what it dropped.
//! - `tls`: TLS termination — certificates from a directory and etcd as an `ArcSwap` snapshot, SNI selection,
//!   hot reload, the handshake.
//! - `acme`: certificates by ACME for routed hosts — orders (at a route's arrival, at the first handshake, and
//!   for renewal), HTTP-01 and TLS-ALPN-01 answers shared through etcd, one order per name across replicas.
//! - `runtime`: the container runtimes — start, stop, pause and inspect tenant containers (Docker Engine API, and
//!   Podman through its Docker-compatible one), Docker Swarm services scaled 0 ↔ N as tenants, and the registry
//!   of named runtimes with their kinds.
//! - `cluster`: several replicas through etcd — leases and replica keys, the decider lock, batched activity
//!   per tenant and replica, compare-and-swap of tenants' status keys.
//! - `passivation`: wake-on-request and idle stop of tenant containers — per-tenant state machines, held
//!   requests, readiness probes, its HTTP face (browser page decision, "starting" page, status endpoint, admin
//!   view), and the cluster rules it follows when there are several replicas.
//! - `readiness`: the gates `/readyz` waits for (route sources, certificates) and the draining flag.
//! - `admin`: the admin listener — the dashboard at `/`, `/healthz`, `/readyz`, `/metrics`, `/api/routes`,
//!   `/api/services` (with each service's requests and 5xx per second over the last minute), `/api/certificates`,
//!   `/api/events`; its limits (timeouts, connection and subscriber caps) and the rules that keep other web
//!   sites out (Host, Origin, the command header).
//! - `metrics`: Prometheus metric definitions and exposition.
//! - `clock`: the time a connection's task reads once per poll (as nginx reads it once per turn of its event
//!   loop), for the proxy's and the backend pool's timestamps.
//! - `pki`: what TLS termination and TLS to backends share — the process's one crypto provider, PEM errors in
//!   words.
//! - `open_files`: the open-files limit, raised to its hard limit at start.
//! - `suggest`: the known name nearest to a misspelt key ("did you mean `container`?").
//! - `config`: the config file and `serve`'s flags (one type per section), how they merge, defaults.
//! - `cli`: the command line's definitions, the operator commands (`route`, `service`, `cert`) and `check`.
//! - `telemetry`: logging setup (text or JSON) for everything but the access log.
//! - `app`: wiring it all together on bound listeners, and orderly shutdown.
//!
//! `main.rs` only parses the command line, sets up logging and the runtime, dispatches to `cli` or
//! `app`, and maps errors to exit codes.
//!
//! The modules are private: a module reaches another only through what that one declares `pub(crate)`, and
//! `scripts/check-modules` (run by CI) fails on an import cycle between them, and between the files of one
//! module. The crate's public face is the
//! short list of re-exports below — what the binary, the tests, the labs and the benches use — so
//! `unreachable_pub` flags anything else declared `pub`.
#![forbid(unsafe_code)]

mod access_log;
mod acme;
mod admin;
mod app;
mod cli;
mod clock;
mod cluster;
mod config;
mod control;
mod etcd;
mod events;
mod fsread;
mod fswatch;
mod health_check;
mod http1;
mod http2;
mod metrics;
mod open_files;
mod passivation;
mod pki;
mod proxy;
mod readiness;
mod routes;
mod runtime;
mod suggest;
mod telemetry;
mod tls;
mod upstream;

// What the binary runs: the command line, logging, and the proxy on bound listeners.
pub use app::{docker, start, Listeners, Running, StartError};
pub use cli::{run as run_tool, Cli, Command};
pub use config::{Config, ConfigFile, Scheduler};
pub use telemetry::init as init_logging;

// The settings a `Config` is made of, for tests and labs that build one.
pub use admin::Settings as AdminSettings;
pub use cluster::Settings as ClusterSettings;
pub use etcd::{EtcdConfig, EtcdError};
#[doc(hidden)]
pub use http1::bench as http1_bench;
pub use passivation::Settings as PassivationSettings;
#[doc(hidden)]
pub use proxy::bench as header_bench;
pub use proxy::{Http1Server, Http2Server, Settings as ProxySettings};
pub use tls::Settings as TlsSettings;
#[doc(hidden)]
pub use upstream::bench as upstream_codec_bench;

// Parts that tests, labs and benches drive on their own.
pub use access_log::{
    AccessLog, AccessLogError, Entry as AccessLogEntry, Format as AccessLogFormat, Formatter as AccessLogFormatter,
    Settings as AccessLogSettings,
};
pub use acme::{
    Budget as AcmeBudget, Challenge as AcmeChallenge, Eab as AcmeEab, Hosts as AcmeHosts, Settings as AcmeSettings,
};
pub use admin::{serve as serve_admin, AdminState, CertificatesView, SourcesView};
pub use etcd::connect as etcd_connect;
pub use events::Events;
pub use metrics::Metrics;
pub use readiness::Readiness;
pub use routes::{
    normalize_request_host, Backend, HostPattern, RouteHandle, RouteKey, RouteTable, Target as RouteTarget,
};
pub use runtime::{
    ClientTls, ContainerEvent, ContainerInfo, ContainerRuntime, ContainerState, DockerEndpoint, DockerRuntime,
    EndpointError, EventStream, Health as ContainerHealth, PublishedPort, RuntimeConfig, RuntimeError, RuntimeFuture,
    RuntimeKind, Runtimes, SwarmRuntime, Traffic, DEFAULT_HOST,
};
