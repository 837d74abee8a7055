//! A scripted container runtime for end-to-end tests without Docker: each "container" is an in-process HTTP
//! server on 127.0.0.1 that listens only while the container runs, after a configurable start-up delay, so the
//! real proxy, the real passivation driver and the real readiness probe see a real application come and go.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reveille::{
    ContainerEvent, ContainerInfo, ContainerRuntime, ContainerState, EventStream, RuntimeError, RuntimeFuture,
};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Backend;

/// One scripted container.
struct Container {
    state: ContainerState,
    /// The port its application listens on while running.
    port: u16,
    /// Holds `port` between runs: bound, never listening, so no other test's listener takes it (connections to it
    /// are refused) while each run binds its own listener beside it (both with SO_REUSEADDR).
    _reserved: Arc<socket2::Socket>,
    /// How long after a start the application accepts connections.
    ready_after: Duration,
    /// Stops the application of the current run.
    run: Option<CancellationToken>,
}

/// The fake runtime: containers by name, the calls made, and Docker-like events.
#[derive(Clone)]
pub struct ScriptedRuntime {
    containers: Arc<Mutex<HashMap<String, Container>>>,
    calls: Arc<Mutex<Vec<(String, &'static str)>>>,
    events: broadcast::Sender<ContainerEvent>,
}

impl Default for ScriptedRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedRuntime {
    pub fn new() -> Self {
        Self { containers: Arc::default(), calls: Arc::default(), events: broadcast::channel(64).0 }
    }

    /// Adds a stopped container whose application answers `hello from <name>` on a free loopback port,
    /// `ready_after` after each start. Returns the port (the service's `port`).
    pub async fn add_stopped(&self, name: &str, ready_after: Duration) -> u16 {
        // A port nothing listens on until the container runs, reserved for it meanwhile.
        let reserved = reusable_socket();
        reserved.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).expect("bind a container port");
        let port = reserved.local_addr().unwrap().as_socket().unwrap().port();
        let c =
            Container { state: ContainerState::Stopped, port, _reserved: Arc::new(reserved), ready_after, run: None };
        self.containers.lock().insert(name.to_string(), c);
        port
    }

    /// How many times `call` (`start`, `stop`, `inspect`...) was made for `container`.
    pub fn count(&self, container: &str, call: &str) -> usize {
        self.calls.lock().iter().filter(|(c, k)| c == container && *k == call).count()
    }

    pub fn state(&self, container: &str) -> Option<ContainerState> {
        self.containers.lock().get(container).map(|c| c.state)
    }

    fn record(&self, container: &str, call: &'static str) -> Result<(), RuntimeError> {
        self.calls.lock().push((container.to_string(), call));
        if self.containers.lock().contains_key(container) {
            Ok(())
        } else {
            Err(RuntimeError::NoSuchContainer(container.to_string()))
        }
    }

    fn emit(&self, container: &str, action: &str) {
        let _ = self.events.send(ContainerEvent {
            id: format!("id-{container}"),
            container: container.to_string(),
            action: action.to_string(),
        });
    }

    fn info(&self, name: &str) -> Option<ContainerInfo> {
        let containers = self.containers.lock();
        let c = containers.get(name)?;
        Some(ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            state: c.state,
            ip: (c.state == ContainerState::Running).then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            exit_code: (c.state == ContainerState::Stopped).then_some(0),
            error: None,
            published: None,
            health: None,
            exposed_ports: Vec::new(),
        })
    }
}

/// A TCP socket with SO_REUSEADDR, so a run's listener binds the port its reservation holds (Linux allows it
/// while the reservation does not listen).
fn reusable_socket() -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s
}

/// The container's application: `hello from <name>` on `port`, from `ready_after` on, until `stop`.
async fn application(name: String, port: u16, ready_after: Duration, stop: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(ready_after) => {}
        () = stop.cancelled() => return,
    }
    let socket = reusable_socket();
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()).expect("bind beside the reserved port");
    socket.listen(128).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(socket.into()).unwrap();
    let body = format!("hello from {name}");
    let _app = Backend::start_on(
        listener,
        Arc::new(move |_req| {
            let body = body.clone();
            Box::pin(async move { hyper::Response::new(super::full(body)) })
        }),
    );
    // Dropping the backend closes its listener and connections: the container is gone.
    stop.cancelled().await;
}

impl ContainerRuntime for ScriptedRuntime {
    fn inspect<'a>(&'a self, container: &'a str, _network: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        Box::pin(async move {
            self.record(container, "inspect")?;
            self.info(container).ok_or_else(|| RuntimeError::NoSuchContainer(container.to_string()))
        })
    }

    fn start<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(container, "start")?;
            {
                let mut containers = self.containers.lock();
                let c = containers.get_mut(container).expect("recorded above");
                if c.state == ContainerState::Running {
                    return Ok(());
                }
                let stop = CancellationToken::new();
                tokio::spawn(application(container.to_string(), c.port, c.ready_after, stop.clone()));
                c.run = Some(stop);
                c.state = ContainerState::Running;
            }
            self.emit(container, "start");
            Ok(())
        })
    }

    fn stop<'a>(&'a self, container: &'a str, _grace: Option<Duration>) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(container, "stop")?;
            {
                let mut containers = self.containers.lock();
                let c = containers.get_mut(container).expect("recorded above");
                if let Some(run) = c.run.take() {
                    run.cancel();
                }
                c.state = ContainerState::Stopped;
            }
            self.emit(container, "die");
            Ok(())
        })
    }

    fn pause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(container, "pause")?;
            Err(RuntimeError::Refused { action: "pause", container: container.to_string(), reason: "scripted".into() })
        })
    }

    fn unpause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(container, "unpause")?;
            Err(RuntimeError::Refused {
                action: "unpause",
                container: container.to_string(),
                reason: "scripted".into(),
            })
        })
    }

    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        let rx = self.events.subscribe();
        Box::pin(async move {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => return Some((Ok(ev), rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            let stream: EventStream = Box::pin(stream);
            Ok(stream)
        })
    }

    fn endpoint(&self) -> &str {
        "scripted"
    }
}
