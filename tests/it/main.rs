//! reveille's integration tests: real sockets, real backends, etcd, Docker, TLS and the real binary. One test
//! binary with a module per concern (as cargo's own `tests/testsuite`): one link instead of one per file.
//!
//! Every test shares this process with all the others, running in parallel threads: nothing here may set
//! process-wide state of its own (environment, current directory, a global `tracing` subscriber: the log
//! capture is `support::log`'s, installed once for all), and every port, container, image and etcd is the
//! test's own (port 0, unique names, throwaway data dirs).

mod support;

mod acme;
mod admin;
mod backend_tls;
mod balancing;
mod binary;
mod build_script;
mod busy;
mod chaos;
mod check;
mod cli;
mod cluster;
mod dashboard;
mod docker;
mod docker_hosts;
mod ejection;
mod etcd;
mod exits;
mod groups;
mod grpc;
mod h2_backend;
mod h2_frames;
mod h2_server;
mod h2c;
mod hardening;
mod headers;
mod health_checks;
mod limits;
mod manpage;
mod nagle;
mod passivation;
mod path_routes;
mod podman;
mod pool;
mod pressure;
mod reload;
mod retries;
mod routing;
mod runtimes;
mod smuggling;
mod stalls;
mod streaming;
mod swarm;
mod tls;
mod upstream_h1;
mod wake;
mod websocket;
mod witness;
