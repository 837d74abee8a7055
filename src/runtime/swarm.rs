//! Docker Swarm services as tenants: the "container" a tenant names is a replicated Swarm service, woken by
//! scaling it from 0 to its `replicas` and put to sleep by scaling it back to 0 (what `docker service scale`
//! does: inspect the service, change its replica count, update it at the version read).
//!
//! Owns the mapping of a service and its tasks onto [`ContainerState`]; it never creates or removes services.
//! A service is reached one of two ways:
//! - at the port it publishes in host mode (`PublishMode: host`), on the node's address ([`ContainerInfo::ip`]:
//!   127.0.0.1 for a unix endpoint, else the endpoint's host; the ports in [`ContainerInfo::published`]): the
//!   ingress mesh's ports are not published on loopback;
//! - when inspect is given a network (the service's `swarm_network`: reveille runs on that overlay network), at
//!   a running task's address on it ([`ContainerInfo::ip`], `published` being `None`), read from the tasks'
//!   `NetworksAttachments` with a plain `GET /tasks` (bollard's `Task` leaves them out; unix and plain-TCP
//!   endpoints only). With several replicas, one task's address: the backend is that address at the service's
//!   `port`.
//!
//! | Swarm                                  | state                                        |
//! |----------------------------------------|----------------------------------------------|
//! | replicas = 0                           | `Stopped` (tasks still shutting down too)    |
//! | replicas > 0, that many tasks running  | `Running`                                    |
//! | replicas > 0, fewer tasks running      | `Restarting` (Swarm is (re)scheduling them)  |
//!
//! A task is up when Swarm says `running` (see [`is_up`]). `start` scales up and returns once that many tasks
//! are up (as `docker start` returns once the process runs), or at once with the error of a task Swarm failed or
//! rejected, or within 2 s with that of one it cannot place (a port in use, a missing image; the service is then
//! scaled back to 0); `stop`
//! scales to 0 and returns once no task runs. When the service is not running, inspect reports its last failed
//! task's error and exit code. A service cannot be paused: `pause` and `unpause` are refused with a reason, so
//! `idle_action = "pause"` is refused for a swarm service when the config is read. A service whose restart
//! condition is `none` is refused at `start`: Swarm runs no task for it again once it was scaled to 0.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{EndpointPortConfigPublishModeEnum, Task, TaskSpecRestartPolicyConditionEnum, TaskState};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectServiceOptions, ListTasksOptionsBuilder, UpdateServiceOptionsBuilder,
};
use futures_util::StreamExt;

use super::{
    ContainerEvent, ContainerInfo, ContainerRuntime, ContainerState, DockerEndpoint, DockerRuntime, EventStream,
    PublishedPort, RuntimeError, RuntimeFuture,
};

/// How often a scale is checked for its tasks (a task takes about half a second to run here).
const POLL: Duration = Duration::from_millis(20);
/// The longest `start` waits for its tasks; a wake gives up sooner, after its `wake_timeout`.
const START_LIMIT: Duration = Duration::from_secs(300);
/// A stop's grace when none is given: Swarm's default `StopGracePeriod`.
const SWARM_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a new task must stay pending with a placement error before the start fails with it. Swarm's own
/// books can lag: a run saw the first task of a service whose command exits at once refused "host-mode port
/// already in use" by a task of its own, with no failed task listed yet; the port is free again a moment later.
const PLACE_GRACE: Duration = Duration::from_secs(2);
/// The label Swarm puts on a task's container: which service it belongs to.
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";
const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// The Swarm services of one Docker Engine (a manager node). Connects on first use and, until a connection has
/// succeeded, tries again on every call, as [`super::LazyDocker`] does.
pub struct SwarmRuntime {
    endpoint: DockerEndpoint,
    name: String,
    timeout: Duration,
    docker: tokio::sync::OnceCell<DockerRuntime>,
}

/// What one look at a service gave.
struct Look {
    id: String,
    name: String,
    desired: u64,
    running: Vec<Task>,
    published: Vec<PublishedPort>,
    /// The status of its last failed or rejected task.
    failed: Option<bollard::models::TaskStatus>,
}

impl SwarmRuntime {
    /// `endpoint` as for [`DockerRuntime::connect_to`] (a manager node's Engine); `timeout` bounds every call but
    /// the waits of `start` and `stop` for their tasks.
    pub fn new(endpoint: DockerEndpoint, timeout: Duration) -> Self {
        let name = endpoint.display();
        Self { endpoint, name, timeout, docker: tokio::sync::OnceCell::new() }
    }

    async fn get(&self) -> Result<&DockerRuntime, RuntimeError> {
        self.docker.get_or_try_init(|| DockerRuntime::connect_to(&self.endpoint, self.timeout)).await
    }

    /// The state of service `service`: see the module's table. Without `network`, `ip` is the node's address
    /// and `published` its host-mode ports (see the module); with it, `ip` is a running task's address on that
    /// network (name or id) and `published` is `None`, the backend being that address at the service's `port`.
    pub async fn inspect_service(&self, service: &str, network: Option<&str>) -> Result<ContainerInfo, RuntimeError> {
        let look = self.look(service).await?;
        let state = match (look.desired, look.running.len() as u64) {
            (0, _) => ContainerState::Stopped,
            (desired, running) if running >= desired => ContainerState::Running,
            _ => ContainerState::Restarting,
        };
        let (ip, published) = match network {
            None => (Some(self.node_address().await?), Some(look.published)),
            Some(_) if look.running.is_empty() => (None, None),
            Some(network) => (self.task_address(service, network, &look.running).await?, None),
        };
        let failed = look.failed.filter(|_| state != ContainerState::Running).unwrap_or_default();
        Ok(ContainerInfo {
            id: look.id,
            name: look.name,
            state,
            ip,
            exit_code: failed.container_status.and_then(|c| c.exit_code),
            error: failed.err.filter(|e| !e.is_empty()),
            published,
            health: None,
            exposed_ports: Vec::new(),
        })
    }

    /// Scales `service` to `replicas` and waits until that many of its tasks run; fails with the error of a new
    /// task that Swarm failed or rejected (at once) or cannot place (after `PLACE_GRACE`), after scaling it back
    /// to 0.
    pub async fn scale_up(&self, service: &str, replicas: u32) -> Result<(), RuntimeError> {
        let before: HashSet<String> = self.tasks(service).await?.into_iter().filter_map(|t| t.id).collect();
        self.scale(service, u64::from(replicas)).await?;
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        // When each new task was first seen pending with a placement error.
        let mut unplaced: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            let tasks = self.tasks(service).await?;
            if tasks.iter().filter(|t| serving(t)).count() >= replicas as usize {
                return Ok(());
            }
            // A new task that failed fails the start now rather than at the wake's timeout; so does one that
            // Swarm cannot place (pending with an error: a host-mode port already bound on every node, no node
            // with the resources) once it has stayed so for `PLACE_GRACE`.
            let now = tokio::time::Instant::now();
            let failure = match start_failure(&tasks, &before) {
                Some(StartFailure::Failed(reason)) => Some(reason),
                Some(StartFailure::Unplaced { task, reason }) => {
                    let since = *unplaced.entry(task).or_insert(now);
                    (now.duration_since(since) >= PLACE_GRACE).then_some(reason)
                }
                None => None,
            };
            if let Some(reason) = failure {
                // Back to 0, as a container that exited stays stopped: not left for Swarm to retry for ever.
                if let Err(e) = self.scale(service, 0).await {
                    tracing::warn!(service, error = %e, "could not scale back to 0 after a failed task");
                }
                return Err(refused("start", service, reason));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Timeout(START_LIMIT));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Scales `service` to 0 and waits until none of its tasks runs. Swarm gives its tasks the service's own
    /// stop grace period (`--stop-grace-period`, else 10 s), whatever `grace` says: the wait allows for the longer
    /// of the two, plus the call timeout.
    pub async fn scale_down(&self, service: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let own = self.scale(service, 0).await?.unwrap_or(SWARM_STOP_GRACE);
        let limit = self.timeout + grace.map_or(own, |g| g.max(own));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let tasks = self.tasks(service).await?;
            if !tasks.iter().any(is_up) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Timeout(limit));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sets the service's replica count, at the version just read (a concurrent update makes Docker refuse,
    /// and it is tried once more). Returns the service's own stop grace period, if it sets one.
    async fn scale(&self, service: &str, replicas: u64) -> Result<Option<Duration>, RuntimeError> {
        let rt = self.get().await?;
        let mut attempt = 0;
        loop {
            let current = self
                .call(rt, "inspect", service, rt.docker.inspect_service(service, None::<InspectServiceOptions>))
                .await?;
            let version = current.version.and_then(|v| v.index).unwrap_or_default();
            let mut spec = current.spec.unwrap_or_default();
            let grace = spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref()?.stop_grace_period)
                .and_then(|ns| u64::try_from(ns).ok())
                .map(Duration::from_nanos);
            let mode = spec.mode.get_or_insert_with(Default::default);
            let Some(replicated) = mode.replicated.as_mut() else {
                return Err(refused("scale", service, "it is not a replicated service (global or job mode)".into()));
            };
            if replicated.replicas == Some(replicas as i64) {
                return Ok(grace);
            }
            // Seen with Docker 20.10: once scaled to 0, such a service gets no task when scaled up again (its
            // slots count as done), so the wake would wait for nothing.
            let restart = spec.task_template.as_ref().and_then(|t| t.restart_policy.as_ref()?.condition);
            if replicas > 0 && restart == Some(TaskSpecRestartPolicyConditionEnum::NONE) {
                return Err(refused(
                    "start",
                    service,
                    "its restart condition is `none`, with which Swarm runs no task again after a scale to 0: \
                     use `on-failure` or `any`"
                        .into(),
                ));
            }
            replicated.replicas = Some(replicas as i64);
            let Ok(version) = i32::try_from(version) else {
                return Err(refused("scale", service, format!("its version {version} is out of range")));
            };
            let options = UpdateServiceOptionsBuilder::new().version(version).build();
            match self.call(rt, "scale", service, rt.docker.update_service(service, spec, options, None)).await {
                Ok(_) => return Ok(grace),
                // "update out of sequence": someone else updated it between our inspect and our update.
                Err(RuntimeError::Refused { reason, .. }) if attempt == 0 && reason.contains("out of sequence") => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The service, its desired replicas, its running tasks and its host-mode ports.
    async fn look(&self, service: &str) -> Result<Look, RuntimeError> {
        let rt = self.get().await?;
        let svc = self
            .call(rt, "inspect", service, rt.docker.inspect_service(service, None::<InspectServiceOptions>))
            .await?;
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(desired) = spec.mode.as_ref().and_then(|m| m.replicated.as_ref()) else {
            return Err(refused("inspect", service, "it is not a replicated service (global or job mode)".into()));
        };
        let desired = desired.replicas.unwrap_or(1).max(0) as u64;
        let tasks = self.tasks(service).await?;
        // The last task that failed, for what a stopped or restarting service says of its last run.
        let failed = tasks
            .iter()
            .filter(|t| matches!(task_state(t), Some(TaskState::FAILED | TaskState::REJECTED)))
            .max_by(|a, b| status_time(a).cmp(status_time(b)))
            .and_then(|t| t.status.clone());
        let running: Vec<Task> = tasks.into_iter().filter(serving).collect();
        let declared = spec.endpoint_spec.and_then(|e| e.ports).unwrap_or_default();
        // A host-mode port published without a number gets one per task: the running tasks say which.
        let assigned = running.iter().filter_map(|t| t.status.as_ref()?.port_status.as_ref()?.ports.clone()).flatten();
        let mut published: Vec<PublishedPort> = Vec::new();
        for p in declared.into_iter().chain(assigned) {
            if p.publish_mode != Some(EndpointPortConfigPublishModeEnum::HOST) {
                continue;
            }
            let (Some(target), Some(port)) = (p.target_port, p.published_port) else { continue };
            let (Ok(target), Ok(port)) = (u16::try_from(target), u16::try_from(port)) else { continue };
            if port != 0 && !published.iter().any(|q| q.target == target) {
                published.push(PublishedPort { target, published: port });
            }
        }
        Ok(Look {
            id: svc.id.unwrap_or_default(),
            name: spec.name.unwrap_or_else(|| service.into()),
            desired,
            running,
            published,
            failed,
        })
    }

    /// The service's tasks, whatever their state.
    async fn tasks(&self, service: &str) -> Result<Vec<Task>, RuntimeError> {
        let rt = self.get().await?;
        let filters = HashMap::from([("service", vec![service])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        self.call(rt, "list the tasks of", service, rt.docker.list_tasks(Some(options))).await
    }

    /// The address on `network` (name, id or id prefix) of one of the `running` tasks, from the tasks'
    /// `NetworksAttachments` (`10.0.1.3/24`, without its prefix length); `None` when none has one. With several
    /// replicas, the first running task's: spreading over all of them is the design note's "several addresses".
    async fn task_address(
        &self,
        service: &str,
        network: &str,
        running: &[Task],
    ) -> Result<Option<IpAddr>, RuntimeError> {
        let filters = serde_json::json!({"service": [service], "desired-state": ["running"]}).to_string();
        let body = self.raw_get(service, &format!("/tasks?filters={}", percent_encode(&filters))).await?;
        let tasks: Vec<TaskAttachments> = serde_json::from_slice(&body)
            .map_err(|e| refused("inspect", service, format!("Docker's list of its tasks is not understood: {e}")))?;
        let running: HashSet<&str> = running.iter().filter_map(|t| t.id.as_deref()).collect();
        Ok(tasks.iter().filter(|t| running.contains(t.id.as_str())).find_map(|t| t.address_on(network)))
    }

    /// `GET path` on the Engine, its body: bollard's models leave out what [`Self::task_address`] needs. Over a
    /// unix socket or plain TCP (`tcp://`, `http://`); with an `https://` endpoint, inspecting `service` is
    /// refused, with why.
    async fn raw_get(&self, service: &str, path: &str) -> Result<Vec<u8>, RuntimeError> {
        use http_body_util::BodyExt;
        use hyper_util::rt::TokioIo;
        let endpoint = self.endpoint.uri.clone().or_else(|| std::env::var("DOCKER_HOST").ok());
        let endpoint = endpoint.unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unavailable = |reason: String| RuntimeError::Unavailable { endpoint: self.name.clone(), reason };
        let get = async {
            type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;
            let handshake_failed = |e: hyper::Error| unavailable(e.to_string());
            let unix = endpoint.strip_prefix("unix://").or(endpoint.starts_with('/').then_some(endpoint.as_str()));
            let mut sender: Sender = if let Some(socket) = unix {
                let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| unavailable(e.to_string()))?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(s)).await.map_err(handshake_failed)?;
                tokio::spawn(conn);
                sender
            } else if let Some(host) = endpoint_host(&endpoint).filter(|_| !endpoint.starts_with("https://")) {
                let port = endpoint.rsplit_once(':').and_then(|(_, p)| p.trim_end_matches('/').parse().ok());
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let s = tokio::net::TcpStream::connect((host, port.unwrap_or(2375)))
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(s)).await.map_err(handshake_failed)?;
                tokio::spawn(conn);
                sender
            } else {
                let reason = "`swarm_network` needs a unix, tcp:// or http:// endpoint (https:// is not supported for \
                              it in this version)";
                return Err(refused("inspect", service, reason.into()));
            };
            let request = http::Request::get(path)
                .header(http::header::HOST, "docker")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| unavailable(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(|e| unavailable(e.to_string()))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| unavailable(e.to_string()))?.to_bytes();
            if !status.is_success() {
                return Err(unavailable(format!("GET {path}: {status}: {}", String::from_utf8_lossy(&body).trim())));
            }
            Ok(body.to_vec())
        };
        tokio::time::timeout(self.timeout, get).await.map_err(|_| RuntimeError::Timeout(self.timeout))?
    }

    /// Where the node's published ports are reached: 127.0.0.1 for a unix endpoint, else the endpoint's host
    /// (resolved when it is a name).
    async fn node_address(&self) -> Result<IpAddr, RuntimeError> {
        let uri = self.endpoint.display();
        let Some(host) = endpoint_host(&uri) else { return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)) };
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(ip);
        }
        let unavailable = |reason: String| RuntimeError::Unavailable { endpoint: uri.clone(), reason };
        let mut addrs =
            tokio::net::lookup_host((host, 0)).await.map_err(|e| unavailable(format!("cannot resolve {host}: {e}")))?;
        addrs.next().map(|a| a.ip()).ok_or_else(|| unavailable(format!("{host} has no address")))
    }

    /// Lifecycle events of the services' tasks, as events of their service (its id and name): a task's
    /// container starting or dying, and the service's removal (as `destroy`).
    pub fn events(&self, rt: &DockerRuntime) -> EventStream {
        let filters = HashMap::from([("type", vec!["container", "service"])]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let endpoint = self.name.clone();
        let stream = rt.docker.events(Some(options)).filter_map(move |r| {
            let out = match r {
                Ok(ev) => service_event(ev).map(Ok),
                Err(e) => Some(Err(RuntimeError::Unavailable { endpoint: endpoint.clone(), reason: e.to_string() })),
            };
            std::future::ready(out)
        });
        Box::pin(stream)
    }

    /// Runs one Docker call within the timeout; a node that is not a swarm manager (503) is "unavailable".
    async fn call<T: Default>(
        &self,
        rt: &DockerRuntime,
        action: &'static str,
        service: &str,
        fut: impl std::future::Future<Output = Result<T, DockerError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RuntimeError::Timeout(self.timeout)),
            Ok(Err(DockerError::DockerResponseServerError { status_code: 503, message })) => {
                Err(RuntimeError::Unavailable { endpoint: self.name.clone(), reason: format!("swarm: {message}") })
            }
            Ok(r) => rt.classify(action, service, r),
        }
    }
}

/// What [`SwarmRuntime::task_address`] reads of a task: its id and its addresses on its networks.
#[derive(serde::Deserialize, Default)]
struct TaskAttachments {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "NetworksAttachments", default)]
    networks: Vec<Attachment>,
}

#[derive(serde::Deserialize, Default)]
struct Attachment {
    #[serde(rename = "Network", default)]
    network: AttachedNetwork,
    #[serde(rename = "Addresses", default)]
    addresses: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
struct AttachedNetwork {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Spec", default)]
    spec: NetworkName,
}

#[derive(serde::Deserialize, Default)]
struct NetworkName {
    #[serde(rename = "Name", default)]
    name: String,
}

impl TaskAttachments {
    /// Its address on `network`: matched by name, id or id prefix; `10.0.1.3/24` without the `/24`.
    fn address_on(&self, network: &str) -> Option<IpAddr> {
        let n = self.networks.iter().find(|a| {
            let net = &a.network;
            net.spec.name == network || (!net.id.is_empty() && net.id.starts_with(network))
        })?;
        n.addresses.iter().find_map(|a| a.split('/').next()?.parse().ok())
    }
}

/// `s` with every byte but ASCII letters and digits as `%XX`, for a query string.
fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// When the task's status was last set (RFC 3339 in UTC, so the text orders as the time).
fn status_time(t: &Task) -> &str {
    t.status.as_ref().and_then(|s| s.timestamp.as_deref()).unwrap_or_default()
}

/// Why a scale-up has failed, or may have.
#[derive(Debug, PartialEq)]
enum StartFailure {
    /// A new task failed or was rejected.
    Failed(String),
    /// A new task is pending with an error: Swarm cannot place it, for now at least.
    Unplaced { task: String, reason: String },
}

/// Why a scale-up has failed, from the tasks that are new since (not in `before`): a task that failed or was
/// rejected, else one that Swarm cannot place (pending with an error). A task that failed is the cause to give
/// before a pending one: when a task exits, Swarm starts another, which may wait on the port its predecessor
/// still holds ("host-mode port already in use").
fn start_failure(tasks: &[Task], before: &HashSet<String>) -> Option<StartFailure> {
    let new = || tasks.iter().filter(|t| t.id.as_ref().is_some_and(|id| !before.contains(id)));
    let err = |t: &Task| t.status.as_ref().and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
    let failed = new().find_map(|t| match task_state(t) {
        Some(TaskState::FAILED | TaskState::REJECTED) => {
            let message = t.status.as_ref().and_then(|s| s.message.clone());
            let why = err(t).or(message).unwrap_or_else(|| "no reason given".into());
            Some(StartFailure::Failed(format!("its task failed: {why}")))
        }
        _ => None,
    });
    failed.or_else(|| {
        new().find_map(|t| match (task_state(t), &t.id) {
            (Some(TaskState::PENDING), Some(id)) => err(t).map(|e| StartFailure::Unplaced {
                task: id.clone(),
                reason: format!("Swarm cannot place its task: {e}"),
            }),
            _ => None,
        })
    })
}

fn task_state(t: &Task) -> Option<TaskState> {
    t.status.as_ref().and_then(|s| s.state)
}

/// A task whose container runs: Swarm says `running`. It says `starting` some 400 ms earlier (Docker 20.10
/// here), when Docker's userland proxy already accepts on the published port though the application may not
/// listen yet, and a task that exits at once goes from there to `failed`: waiting for `running` costs a wake
/// nothing (the application answered some 600 ms after it here) and lets `start` report such a task's error.
fn is_up(t: &Task) -> bool {
    task_state(t) == Some(TaskState::RUNNING)
}

/// A task that is up and that Swarm means to keep (not one a scale down is stopping).
fn serving(t: &Task) -> bool {
    t.desired_state == Some(TaskState::RUNNING) && is_up(t)
}

fn refused(action: &'static str, service: &str, reason: String) -> RuntimeError {
    RuntimeError::Refused { action, container: service.to_string(), reason }
}

/// The host of a `tcp://`, `http://` or `https://` endpoint; `None` for a unix socket.
fn endpoint_host(uri: &str) -> Option<&str> {
    let rest =
        uri.strip_prefix("tcp://").or_else(|| uri.strip_prefix("http://")).or_else(|| uri.strip_prefix("https://"))?;
    let rest = rest.split('/').next().unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => Some(host),
        _ => Some(rest),
    }
}

/// A Docker event as an event of the Swarm service it concerns, if any.
fn service_event(ev: bollard::models::EventMessage) -> Option<ContainerEvent> {
    use bollard::models::EventMessageTypeEnum as Type;
    let actor = ev.actor.unwrap_or_default();
    let mut attributes = actor.attributes.unwrap_or_default();
    let action = ev.action.unwrap_or_default();
    match ev.typ {
        Some(Type::CONTAINER) => {
            let name = attributes.remove(SERVICE_NAME_LABEL)?;
            let id = attributes.remove(SERVICE_ID_LABEL).unwrap_or_default();
            Some(ContainerEvent { id, container: name, action })
        }
        Some(Type::SERVICE) => {
            let name = attributes.remove("name").unwrap_or_default();
            let action = if action == "remove" { "destroy".to_string() } else { action };
            Some(ContainerEvent { id: actor.id.unwrap_or_default(), container: name, action })
        }
        _ => None,
    }
}

impl ContainerRuntime for SwarmRuntime {
    fn inspect<'a>(&'a self, service: &'a str, network: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        Box::pin(self.inspect_service(service, network))
    }
    /// One replica; the passivation asks for the service's own count through [`Self::start_replicas`].
    fn start<'a>(&'a self, service: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(self.scale_up(service, 1))
    }
    fn start_replicas<'a>(&'a self, service: &'a str, replicas: u32) -> RuntimeFuture<'a, ()> {
        Box::pin(self.scale_up(service, replicas))
    }
    fn stop<'a>(&'a self, service: &'a str, grace: Option<Duration>) -> RuntimeFuture<'a, ()> {
        Box::pin(self.scale_down(service, grace))
    }
    fn pause<'a>(&'a self, service: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { Err(refused("pause", service, "a swarm service cannot be paused".into())) })
    }
    fn unpause<'a>(&'a self, service: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { Err(refused("unpause", service, "a swarm service cannot be paused".into())) })
    }
    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        Box::pin(async move {
            let rt = self.get().await?;
            Ok(SwarmRuntime::events(self, rt))
        })
    }
    fn endpoint(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_task_is_the_cause_given_before_a_pending_one() {
        let task = |id: &str, state: &str, err: &str| -> Task {
            serde_json::from_value(serde_json::json!({"ID": id, "Status": {"State": state, "Err": err}})).unwrap()
        };
        let before: HashSet<String> = ["old".to_string()].into();
        // The restart of a task that exited waits on the port its predecessor holds: listed first, it is not
        // the cause.
        let tasks = [
            task("t2", "pending", "no suitable node (host-mode port already in use on 1 node)"),
            task("t1", "failed", "task: non-zero exit (1)"),
            task("old", "failed", "an earlier failure"),
        ];
        assert_eq!(
            start_failure(&tasks, &before),
            Some(StartFailure::Failed("its task failed: task: non-zero exit (1)".into()))
        );
        // A task that cannot be placed, with nothing failed: said as Swarm says it, naming the task (the start
        // fails once it has stayed so for `PLACE_GRACE`).
        assert_eq!(
            start_failure(&tasks[..1], &before),
            Some(StartFailure::Unplaced {
                task: "t2".into(),
                reason: "Swarm cannot place its task: no suitable node (host-mode port already in use on 1 node)"
                    .into()
            })
        );
        // A task from before the scale-up, or one still starting, is no failure of this one.
        assert_eq!(start_failure(&[tasks[2].clone(), task("t3", "starting", "")], &before), None);
    }

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("unix:///var/run/docker.sock"), None);
        assert_eq!(endpoint_host("/run/docker.sock"), None);
        assert_eq!(endpoint_host("tcp://10.0.0.5:2375"), Some("10.0.0.5"));
        assert_eq!(endpoint_host("https://manager-1.lan:2376/"), Some("manager-1.lan"));
        assert_eq!(endpoint_host("tcp://[fd00::5]:2375"), Some("[fd00::5]"));
    }

    #[test]
    fn a_task_address_on_a_network() {
        let json = r#"{"ID": "t1", "NetworksAttachments": [
            {"Network": {"ID": "ingressid", "Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.7/24"]},
            {"Network": {"ID": "kguzz2k0yrcg", "Spec": {"Name": "front"}}, "Addresses": ["10.0.1.3/24"]}
        ]}"#;
        let task: TaskAttachments = serde_json::from_str(json).unwrap();
        let front = Some(IpAddr::from([10, 0, 1, 3]));
        assert_eq!(task.address_on("front"), front, "by name, without the prefix length");
        assert_eq!(task.address_on("kguzz2k0yrcg"), front, "by id");
        assert_eq!(task.address_on("kguzz"), front, "by id prefix");
        assert_eq!(task.address_on("back"), None);
        let none: TaskAttachments = serde_json::from_str(r#"{"ID": "t2"}"#).unwrap();
        assert_eq!(none.address_on("front"), None, "a task not yet attached");
        assert_eq!(percent_encode(r#"{"a":["b-1"]}"#), "%7B%22a%22%3A%5B%22b%2D1%22%5D%7D");
    }

    #[test]
    fn task_events_are_their_services() {
        use bollard::models::{EventActor, EventMessage, EventMessageTypeEnum as Type};
        let ev = |typ, action: &str, id: &str, attrs: &[(&str, &str)]| EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            ..Default::default()
        };
        let task = ev(
            Type::CONTAINER,
            "die",
            "c0ffee",
            &[("name", "shop.1.abc"), (SERVICE_NAME_LABEL, "shop"), (SERVICE_ID_LABEL, "s1")],
        );
        let expected = ContainerEvent { id: "s1".into(), container: "shop".into(), action: "die".into() };
        assert_eq!(service_event(task), Some(expected));
        assert_eq!(service_event(ev(Type::CONTAINER, "start", "c1", &[("name", "plain")])), None, "not a task");
        let removed = service_event(ev(Type::SERVICE, "remove", "s1", &[("name", "shop")])).unwrap();
        assert_eq!((removed.container.as_str(), removed.action.as_str()), ("shop", "destroy"));
    }
}
