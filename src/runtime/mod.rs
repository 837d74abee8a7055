//! The container runtime: starting, stopping, pausing and inspecting tenant containers through the Docker
//! Engine API (bollard).
//!
//! Owns talking to Docker and turning its answers into a few plain states and errors. It does not decide when
//! a tenant should wake or sleep (that is `passivation/`), and it never creates or removes containers: the
//! platform does, reveille only starts and stops them.
//!
//! Several runtimes (`hosts`): each has its own [`DockerEndpoint`] (unix socket, plain TCP, or HTTPS with
//! client certificates) and its own lazily connected [`LazyDocker`]; [`Runtimes`] names them, with their
//! [`RuntimeKind`] (`kind`). Podman is the same client through its Docker-compatible API: where its answers
//! differ from Docker's, the difference is handled here, each with a comment saying what Podman does.

mod hosts;
mod kind;
mod swarm;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};

pub(crate) use hosts::check_host_name;
pub use hosts::{ClientTls, DockerEndpoint, EndpointError, RuntimeConfig, Runtimes, DEFAULT_HOST};
pub use kind::RuntimeKind;
pub use swarm::SwarmRuntime;

/// The runtime of `kind` at `endpoint`, each call bounded by `timeout`: the one place that turns a configured
/// runtime into a [`ContainerRuntime`]. Nothing is contacted here: each connects at its first call (see
/// [`LazyDocker`], [`SwarmRuntime`]).
pub(crate) fn build_runtime(
    kind: RuntimeKind,
    endpoint: &DockerEndpoint,
    timeout: Duration,
) -> Arc<dyn ContainerRuntime> {
    match kind {
        RuntimeKind::Docker | RuntimeKind::Podman => Arc::new(LazyDocker::of_kind(endpoint.clone(), timeout, kind)),
        RuntimeKind::Swarm => Arc::new(SwarmRuntime::new(endpoint.clone(), timeout)),
    }
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Docker cannot be reached at all: wakes fail fast with 503, running tenants are unaffected.
    #[error("container runtime unavailable ({endpoint}): {reason}")]
    Unavailable { endpoint: String, reason: String },
    #[error("no such container {0:?}")]
    NoSuchContainer(String),
    #[error("docker refused to {action} container {container:?}: {reason}")]
    Refused { action: &'static str, container: String, reason: String },
    #[error("docker did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// What a container is doing, as far as reveille cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    Paused,
    /// Created or exited: `docker start` brings it back.
    Stopped,
    Restarting,
    /// Being removed, or dead: cannot be started.
    Dead,
}

/// The result of inspecting a container.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Docker's full id.
    pub id: String,
    /// The container's name, without the leading `/`.
    pub name: String,
    pub state: ContainerState,
    /// The container's address on the requested network (or its first network).
    pub ip: Option<IpAddr>,
    /// Exit code of the last run, when stopped.
    pub exit_code: Option<i64>,
    /// Docker's error for the last start, if any.
    pub error: Option<String>,
    /// For what is reached only through ports published on its node (a Swarm service): those ports, and `ip`
    /// is the node's address. `None` for a container, reached at its own address and port.
    pub published: Option<Vec<PublishedPort>>,
    /// Its healthcheck's status (`State.Health.Status`); `None` when it has no healthcheck.
    pub health: Option<Health>,
    /// The TCP ports it exposes (`Config.ExposedPorts`), ascending: a dependency without a `port` is waited for
    /// on the only one.
    pub exposed_ports: Vec<u16>,
}

/// A port published on the node for a port of the container (Swarm's host mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// The port inside the container.
    pub target: u16,
    /// The port on the node.
    pub published: u16,
}

/// A container's healthcheck status, as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// A container's network traffic counters since it started, summed over its interfaces (Docker's stats API:
/// `networks.*.{rx,tx}_{bytes,packets}`). Passivation's second witness of use: counters that moved while no
/// replica saw a request mean someone used the container unseen (see `passivation/LIFECYCLE.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Traffic {
    /// Packets both ways.
    pub fn packets(&self) -> u64 {
        self.rx_packets.saturating_add(self.tx_packets)
    }

    /// What moved since `earlier`; `None` when a counter went back (the container restarted, its interfaces
    /// are new): nothing can be said about the interval then.
    pub fn since(&self, earlier: &Traffic) -> Option<Traffic> {
        Some(Traffic {
            rx_bytes: self.rx_bytes.checked_sub(earlier.rx_bytes)?,
            tx_bytes: self.tx_bytes.checked_sub(earlier.tx_bytes)?,
            rx_packets: self.rx_packets.checked_sub(earlier.rx_packets)?,
            tx_packets: self.tx_packets.checked_sub(earlier.tx_packets)?,
        })
    }
}

/// A container lifecycle event from Docker's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container's full id.
    pub id: String,
    /// The container's name (without the leading `/`).
    pub container: String,
    /// Docker's action: `start`, `die`, `stop`, `pause`, `unpause`, `health_status: healthy`...
    pub action: String,
}

/// Docker's stop timeout for a container that sets none (the daemon's default).
const DOCKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop is allowed to take for a container whose `StopTimeout` is negative ("wait for ever").
const UNBOUNDED_STOP: Duration = Duration::from_secs(3600);

/// A connection to one Docker Engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    timeout: Duration,
    /// Docker, or Podman's Docker-compatible API, whose answers differ in a few places.
    kind: RuntimeKind,
}

impl DockerRuntime {
    /// Connects to `endpoint` (`unix:///path`, `tcp://host:port` or `http://host:port`), or to `DOCKER_HOST` / the
    /// local socket when `None`, and agrees on an API version. Fails fast when Docker does not answer.
    pub async fn connect(endpoint: Option<&str>, timeout: Duration) -> Result<Self, RuntimeError> {
        Self::connect_to(&DockerEndpoint::plain(endpoint.map(str::to_string)), timeout).await
    }

    /// Connects to `endpoint`, `https://` ones with their client certificates, and agrees on an API version.
    /// Fails fast when Docker does not answer.
    pub async fn connect_to(endpoint: &DockerEndpoint, timeout: Duration) -> Result<Self, RuntimeError> {
        Self::connect_kind(endpoint, timeout, RuntimeKind::Docker).await
    }

    /// Connects to `endpoint`, a Docker Engine or Podman's Docker-compatible API (`kind`), as
    /// [`Self::connect_to`]. Podman 4 answers `/version` with `ApiVersion` 1.41, and bollard's negotiation
    /// steps down to it; Podman serves any `/v1.x/` prefix, so nothing else differs here.
    pub async fn connect_kind(
        endpoint: &DockerEndpoint,
        timeout: Duration,
        kind: RuntimeKind,
    ) -> Result<Self, RuntimeError> {
        let name = endpoint.display();
        let unavailable = |reason: String| RuntimeError::Unavailable { endpoint: name.clone(), reason };
        let secs = timeout.as_secs().max(1);
        let docker = match (endpoint.uri.as_deref(), &endpoint.tls) {
            (None, _) => Docker::connect_with_defaults(),
            (Some(e), _) if e.starts_with("unix://") || e.starts_with('/') => {
                Docker::connect_with_unix(e, secs, bollard::API_DEFAULT_VERSION)
            }
            (Some(e), Some(tls)) if endpoint.is_https() => {
                // bollard's client-certificate resolver uses the process-wide rustls provider: make sure there
                // is one (reveille's own TLS passes its provider explicitly and needs none).
                let _ = rustls::crypto::ring::default_provider().install_default();
                Docker::connect_with_ssl(e, &tls.key, &tls.cert, &tls.ca, secs, bollard::API_DEFAULT_VERSION)
            }
            (Some(_), None) if endpoint.is_https() => {
                return Err(unavailable("https needs a client certificate (ca, cert, key)".into()))
            }
            (Some(e), _) => Docker::connect_with_http(e, secs, bollard::API_DEFAULT_VERSION),
        }
        .map_err(|e| unavailable(e.to_string()))?;
        let docker = match tokio::time::timeout(timeout, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable(format!("no answer within {}", humantime::format_duration(timeout)))),
        };
        Ok(Self { docker, endpoint: name, timeout, kind })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Docker or Podman.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// Inspects a container; `network` picks which network's address to report.
    pub async fn inspect(&self, container: &str, network: Option<&str>) -> Result<ContainerInfo, RuntimeError> {
        let info = self
            .call("inspect", container, self.docker.inspect_container(container, None::<InspectContainerOptions>))
            .await?;
        let st = info.state.unwrap_or_default();
        use bollard::models::ContainerStateStatusEnum as S;
        let state = match st.status {
            Some(S::RUNNING) => ContainerState::Running,
            Some(S::PAUSED) => ContainerState::Paused,
            Some(S::RESTARTING) => ContainerState::Restarting,
            Some(S::REMOVING) | Some(S::DEAD) => ContainerState::Dead,
            _ => ContainerState::Stopped,
        };
        let networks = info.network_settings.and_then(|n| n.networks).unwrap_or_default();
        let ip = pick_network(&networks, network)
            .and_then(|n| n.ip_address.as_deref())
            .filter(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse().ok());
        let error = st.error.filter(|e| !e.is_empty());
        let exit_code = if state == ContainerState::Stopped { st.exit_code } else { None };
        let id = info.id.unwrap_or_default();
        let name = info.name.unwrap_or_default().trim_start_matches('/').to_string();
        use bollard::models::HealthStatusEnum as H;
        let health = match st.health.and_then(|h| h.status) {
            Some(H::STARTING) => Some(Health::Starting),
            Some(H::HEALTHY) => Some(Health::Healthy),
            Some(H::UNHEALTHY) => Some(Health::Unhealthy),
            Some(H::NONE | H::EMPTY) | None => None,
        };
        let mut exposed_ports: Vec<u16> = (info.config.and_then(|c| c.exposed_ports).unwrap_or_default().keys())
            .filter_map(|k| k.strip_suffix("/tcp").unwrap_or(k).parse().ok())
            .collect();
        exposed_ports.sort_unstable();
        Ok(ContainerInfo { id, name, state, ip, exit_code, error, health, exposed_ports, published: None })
    }

    /// Starts a stopped container. Already running is not an error (304, from Docker and Podman alike).
    pub async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        self.call(
            "start",
            container,
            self.docker.start_container(container, None::<bollard::query_parameters::StartContainerOptions>),
        )
        .await
    }

    /// Stops a container: Docker sends its stop signal (the image's `StopSignal`, else SIGTERM) and kills it
    /// if it has not exited after `grace` (rounded up to whole seconds), or, when `None`, after the container's
    /// own `StopTimeout` (what Compose's `stop_grace_period` sets; Docker's default is 10 s). Already stopped is
    /// not an error.
    pub async fn stop(&self, container: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let mut options = StopContainerOptionsBuilder::new();
        let grace = match grace {
            Some(grace) => {
                let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
                options = options.t(secs.min(i32::MAX as u64) as i32);
                Duration::from_secs(secs)
            }
            None => self.own_stop_timeout(container).await?,
        };
        // The stop itself takes up to `grace`: allow for it on top of the usual timeout, in bollard's own request
        // timeout too (a second more, so that ours is the one that fires).
        let limit = self.timeout + grace;
        let docker = self.docker.clone().with_timeout(limit + Duration::from_secs(1));
        match tokio::time::timeout(limit, docker.stop_container(container, Some(options.build()))).await {
            Ok(r) => self.classify("stop", container, r),
            Err(_) => Err(RuntimeError::Timeout(limit)),
        }
    }

    /// How long Docker waits for `container` to stop when not told: its `StopTimeout`, else Docker's default.
    async fn own_stop_timeout(&self, container: &str) -> Result<Duration, RuntimeError> {
        let info = self
            .call("inspect", container, self.docker.inspect_container(container, None::<InspectContainerOptions>))
            .await?;
        // Docker leaves `StopTimeout` out unless the container sets one; Podman always gives it (its default is
        // 10 s too), so both come to the same grace.
        Ok(match info.config.and_then(|c| c.stop_timeout) {
            None => DOCKER_STOP_TIMEOUT,
            Some(secs) if secs < 0 => UNBOUNDED_STOP,
            Some(secs) => Duration::from_secs(secs as u64),
        })
    }

    pub async fn pause(&self, container: &str) -> Result<(), RuntimeError> {
        self.call("pause", container, self.docker.pause_container(container)).await
    }

    pub async fn unpause(&self, container: &str) -> Result<(), RuntimeError> {
        self.call("unpause", container, self.docker.unpause_container(container)).await
    }

    /// The container's traffic counters now, summed over its interfaces (`GET /containers/{id}/stats` with
    /// `stream=false` and `one-shot=true`: one sample at once, instead of Docker's two a second apart for the
    /// CPU figures). `None` when the answer has no network counters: a container on the host's network, or
    /// with none, or a runtime that does not report them.
    pub async fn traffic(&self, container: &str) -> Result<Option<Traffic>, RuntimeError> {
        let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let first = async {
            match self.docker.stats(container, Some(options)).next().await {
                Some(r) => r.map(Some),
                None => Ok(None),
            }
        };
        let Some(stats) = self.call("stats", container, first).await? else { return Ok(None) };
        let networks = stats.networks.unwrap_or_default();
        if networks.is_empty() {
            return Ok(None);
        }
        let mut sum = Traffic::default();
        for n in networks.values() {
            sum.rx_bytes = sum.rx_bytes.saturating_add(n.rx_bytes.unwrap_or(0));
            sum.tx_bytes = sum.tx_bytes.saturating_add(n.tx_bytes.unwrap_or(0));
            sum.rx_packets = sum.rx_packets.saturating_add(n.rx_packets.unwrap_or(0));
            sum.tx_packets = sum.tx_packets.saturating_add(n.tx_packets.unwrap_or(0));
        }
        Ok(Some(sum))
    }

    /// Lifecycle events of containers. The request is made when the stream is first polled; `since` (a
    /// time) has Docker replay what happened from then on, so a subscriber that re-subscribes after a broken
    /// connection, or subscribes just after acting, misses nothing. The stream ends (or yields an error) when
    /// the connection to Docker breaks.
    pub fn events(
        &self,
        since: Option<std::time::SystemTime>,
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        let filters = HashMap::from([("type", vec!["container"])]);
        let mut options = EventsOptionsBuilder::new().filters(&filters);
        if let Some(t) = since.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            options = options.since(&t.as_secs().to_string());
        }
        let options = options.build();
        let endpoint = self.endpoint.clone();
        let kind = self.kind;
        self.docker.events(Some(options)).map(move |r| match r {
            Ok(ev) => {
                let actor = ev.actor.unwrap_or_default();
                let name = actor.attributes.unwrap_or_default().remove("name").unwrap_or_default();
                let id = actor.id.unwrap_or_default();
                let action = event_action(kind, ev.action.unwrap_or_default());
                Ok(ContainerEvent { id, container: name, action })
            }
            Err(e) => Err(RuntimeError::Unavailable { endpoint: endpoint.clone(), reason: e.to_string() }),
        })
    }

    async fn call<T: Default>(
        &self,
        action: &'static str,
        container: &str,
        fut: impl std::future::Future<Output = Result<T, DockerError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => self.classify(action, container, r),
            Err(_) => Err(RuntimeError::Timeout(self.timeout)),
        }
    }

    fn classify<T>(&self, action: &'static str, container: &str, r: Result<T, DockerError>) -> Result<T, RuntimeError>
    where
        T: Default,
    {
        match r {
            Ok(v) => Ok(v),
            // 304: already started / already stopped (Podman too). Pausing a paused container is 409 from Docker
            // and 500 "container state improper" from Podman: a refusal either way, as below.
            Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => Ok(T::default()),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                Err(RuntimeError::NoSuchContainer(container.to_string()))
            }
            Err(DockerError::DockerResponseServerError { message, .. }) => {
                Err(RuntimeError::Refused { action, container: container.to_string(), reason: message })
            }
            Err(e) => Err(RuntimeError::Unavailable { endpoint: self.endpoint.clone(), reason: e.to_string() }),
        }
    }
}

/// A boxed runtime call.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;
/// A boxed stream of container events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEvent, RuntimeError>> + Send>>;

/// What passivation needs of a container runtime. `LazyDocker` is the real one (what `app::docker` returns);
/// the passivation state machine's unit tests and the end-to-end tests without Docker use scripted ones.
pub trait ContainerRuntime: Send + Sync + 'static {
    fn inspect<'a>(&'a self, container: &'a str, network: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo>;
    fn start<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()>;
    /// Starts `replicas` instances of it, for a runtime that scales (Swarm); one container is just started.
    fn start_replicas<'a>(&'a self, container: &'a str, replicas: u32) -> RuntimeFuture<'a, ()> {
        let _ = replicas;
        self.start(container)
    }
    /// Stops a container, killing it after `grace`; `None` leaves the grace to the container's own settings.
    fn stop<'a>(&'a self, container: &'a str, grace: Option<Duration>) -> RuntimeFuture<'a, ()>;
    fn pause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()>;
    fn unpause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()>;
    /// Container lifecycle events from now on; ends or errors when the connection breaks.
    fn events(&self) -> RuntimeFuture<'_, EventStream>;
    /// The container's traffic counters now, a witness of use that does not depend on etcd. `Ok(None)`: this
    /// runtime has no such witness (the default; a Swarm service's tasks run on other nodes).
    fn traffic<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, Option<Traffic>> {
        let _ = container;
        Box::pin(async { Ok(None) })
    }
    /// Where the runtime is, for messages.
    fn endpoint(&self) -> &str;
}

/// A Docker runtime that connects on first use and, until a connection has succeeded, tries again on every
/// call: reveille starts (and serves its static routes) while Docker is down, and wakes answer "unavailable"
/// at once instead of hanging.
pub(crate) struct LazyDocker {
    endpoint: DockerEndpoint,
    name: String,
    timeout: Duration,
    /// Docker or Podman.
    kind: RuntimeKind,
    docker: tokio::sync::OnceCell<DockerRuntime>,
}

impl LazyDocker {
    /// `endpoint` as for [`DockerRuntime::connect_to`]; `timeout` bounds every call.
    pub(crate) fn new(endpoint: DockerEndpoint, timeout: Duration) -> Self {
        Self::of_kind(endpoint, timeout, RuntimeKind::Docker)
    }

    /// A Docker Engine or Podman's Docker-compatible API, as `kind` says.
    pub(crate) fn of_kind(endpoint: DockerEndpoint, timeout: Duration, kind: RuntimeKind) -> Self {
        let name = endpoint.display();
        Self { endpoint, name, timeout, kind, docker: tokio::sync::OnceCell::new() }
    }

    async fn get(&self) -> Result<&DockerRuntime, RuntimeError> {
        self.docker.get_or_try_init(|| DockerRuntime::connect_kind(&self.endpoint, self.timeout, self.kind)).await
    }
}

impl ContainerRuntime for LazyDocker {
    fn inspect<'a>(&'a self, container: &'a str, network: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        Box::pin(async move { self.get().await?.inspect(container, network).await })
    }
    fn start<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.get().await?.start(container).await })
    }
    fn stop<'a>(&'a self, container: &'a str, grace: Option<Duration>) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.get().await?.stop(container, grace).await })
    }
    fn pause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.get().await?.pause(container).await })
    }
    fn unpause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.get().await?.unpause(container).await })
    }
    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        Box::pin(async move {
            let docker = self.get().await?;
            let stream: EventStream = Box::pin(docker.events(None));
            Ok(stream)
        })
    }
    fn traffic<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, Option<Traffic>> {
        Box::pin(async move { self.get().await?.traffic(container).await })
    }
    fn endpoint(&self) -> &str {
        &self.name
    }
}

/// An event's action in Docker's words. Podman's compatible API already says `die` where its own log says
/// `died`, but it says `remove` where Docker says `destroy`: passivation reads `destroy` (a tenant's container
/// is gone), so Podman's is renamed. A health check's event is `health_status: healthy` from Docker but a bare
/// `health_status` from Podman, without the result (in the action or the attributes): a reader matches the
/// prefix and inspects. (Podman also runs health checks from systemd timers: without systemd, as in this
/// sandbox, they run only when `podman healthcheck run` is called, and the status stays `starting`.)
fn event_action(kind: RuntimeKind, action: String) -> String {
    match (kind, action.as_str()) {
        (RuntimeKind::Podman, "remove") => "destroy".into(),
        _ => action,
    }
}

fn pick_network<'a>(
    networks: &'a HashMap<String, bollard::models::EndpointSettings>,
    wanted: Option<&str>,
) -> Option<&'a bollard::models::EndpointSettings> {
    match wanted {
        Some(w) => networks.get(w),
        // "First network": the map has no order, so take the first by name, which is stable.
        None => networks.iter().min_by(|a, b| a.0.cmp(b.0)).map(|(_, v)| v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_carry_their_kinds() {
        let endpoint = DockerEndpoint::plain(Some("unix:///run/podman/podman.sock".into()));
        let timeout = Duration::from_secs(1);
        let podman = build_runtime(RuntimeKind::Podman, &endpoint, timeout);
        assert_eq!(podman.endpoint(), "unix:///run/podman/podman.sock");
        let docker = build_runtime(RuntimeKind::Docker, &DockerEndpoint::plain(None), timeout);
        let runtimes =
            Runtimes::single(docker).with_kind("pods", RuntimeKind::Podman, podman.clone()).with("rack2", podman);
        assert_eq!(runtimes.kind(DEFAULT_HOST), Some(RuntimeKind::Docker));
        assert_eq!(runtimes.kind("pods"), Some(RuntimeKind::Podman));
        assert_eq!(runtimes.kind("rack2"), Some(RuntimeKind::Docker), "`with` adds a Docker runtime");
        assert_eq!(runtimes.kind("nope"), None);
        assert_eq!(runtimes.get("pods").unwrap().endpoint(), "unix:///run/podman/podman.sock");
        assert_eq!(runtimes.names().collect::<Vec<_>>(), ["default", "pods", "rack2"]);

        let swarm =
            build_runtime(RuntimeKind::Swarm, &DockerEndpoint::plain(Some("tcp://10.0.0.5:2375".into())), timeout);
        assert_eq!(swarm.endpoint(), "tcp://10.0.0.5:2375");
    }

    #[test]
    fn podman_events_in_dockers_words() {
        assert_eq!(event_action(RuntimeKind::Podman, "remove".into()), "destroy");
        assert_eq!(event_action(RuntimeKind::Podman, "die".into()), "die");
        assert_eq!(event_action(RuntimeKind::Docker, "remove".into()), "remove", "Docker's own are kept");
    }
}
