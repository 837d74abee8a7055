//! The Docker hosts tenants run on, as passivation sees them: each named runtime, wrapped so that every call
//! keeps that host's health metrics (`reveille_docker_host_up`, `reveille_docker_unavailable_total`), and
//! followed by an event stream of its own (`Passivator::follow_events`).
//!
//! A tenant's host is resolved once, when its tenant is created, from its service's `docker_host`; a service
//! moved to another host is a new tenant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::metrics::PassivationMetrics;
use crate::runtime::{
    ContainerInfo, ContainerRuntime, EventStream, RuntimeError, RuntimeFuture, Runtimes, Traffic, DEFAULT_HOST,
};

/// One Docker host: its name (the metrics label) and its runtime.
pub(crate) struct DockerHost {
    pub(super) name: Arc<str>,
    runtime: Arc<dyn ContainerRuntime>,
    metrics: PassivationMetrics,
}

impl DockerHost {
    fn new(name: &str, runtime: Arc<dyn ContainerRuntime>, metrics: &PassivationMetrics) -> Arc<Self> {
        Arc::new(Self { name: Arc::from(name), runtime, metrics: metrics.clone() })
    }

    /// Notes what a call says about the host's health: unreachable (or silent) is down; any answer from Docker,
    /// an error about the container included, is up.
    fn record<T>(&self, r: Result<T, RuntimeError>) -> Result<T, RuntimeError> {
        match &r {
            Err(RuntimeError::Unavailable { .. } | RuntimeError::Timeout(_)) => {
                self.metrics.docker_host(&self.name, false)
            }
            _ => self.metrics.docker_host(&self.name, true),
        }
        r
    }
}

impl ContainerRuntime for DockerHost {
    fn inspect<'a>(&'a self, container: &'a str, network: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        Box::pin(async move { self.record(self.runtime.inspect(container, network).await) })
    }
    fn start<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.record(self.runtime.start(container).await) })
    }
    fn start_replicas<'a>(&'a self, container: &'a str, replicas: u32) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.record(self.runtime.start_replicas(container, replicas).await) })
    }
    fn stop<'a>(&'a self, container: &'a str, grace: Option<Duration>) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.record(self.runtime.stop(container, grace).await) })
    }
    fn pause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.record(self.runtime.pause(container).await) })
    }
    fn unpause<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.record(self.runtime.unpause(container).await) })
    }
    /// A stream handed over says nothing yet (the request is made when it is first polled): only a failure to
    /// open one counts here; the follower notes the first event, or the stream breaking.
    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        Box::pin(async move {
            let r = self.runtime.events().await;
            if r.is_err() {
                self.metrics.docker_host(&self.name, false);
            }
            r
        })
    }
    fn traffic<'a>(&'a self, container: &'a str) -> RuntimeFuture<'a, Option<Traffic>> {
        Box::pin(async move { self.record(self.runtime.traffic(container).await) })
    }
    fn endpoint(&self) -> &str {
        self.runtime.endpoint()
    }
}

/// A host a service names but the runtimes do not have (only possible where definitions are not checked
/// against the config): every call fails as "unavailable", so its tenant answers 503 and the others are
/// unaffected.
struct Unconfigured(String);

impl Unconfigured {
    fn fail<T: Send + 'static>(&self) -> RuntimeFuture<'_, T> {
        let e = RuntimeError::Unavailable { endpoint: self.0.clone(), reason: "no such docker host configured".into() };
        Box::pin(async move { Err(e) })
    }
}

impl ContainerRuntime for Unconfigured {
    fn inspect<'a>(&'a self, _: &'a str, _: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        self.fail()
    }
    fn start<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        self.fail()
    }
    fn stop<'a>(&'a self, _: &'a str, _: Option<Duration>) -> RuntimeFuture<'a, ()> {
        self.fail()
    }
    fn pause<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        self.fail()
    }
    fn unpause<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        self.fail()
    }
    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        self.fail()
    }
    fn endpoint(&self) -> &str {
        &self.0
    }
}

/// The hosts by name.
pub(super) struct DockerHosts {
    hosts: HashMap<Arc<str>, Arc<DockerHost>>,
    metrics: PassivationMetrics,
}

impl DockerHosts {
    pub(super) fn new(runtimes: &Runtimes, metrics: &PassivationMetrics) -> Self {
        let hosts = runtimes.iter().map(|(name, rt)| (Arc::from(name), DockerHost::new(name, rt.clone(), metrics)));
        Self { hosts: hosts.collect(), metrics: metrics.clone() }
    }

    /// The host called `name`; one that always fails when there is none.
    pub(super) fn get(&self, name: &str) -> Arc<DockerHost> {
        match self.hosts.get(name) {
            Some(h) => h.clone(),
            None => {
                let rt = Arc::new(Unconfigured(format!("docker host {name:?}")));
                DockerHost::new(name, rt, &self.metrics)
            }
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<DockerHost>> {
        self.hosts.values()
    }
}

impl Shared {
    /// The host a service's `docker_host` names (`None`: the default).
    pub(super) fn host(&self, name: Option<&str>) -> Arc<DockerHost> {
        self.hosts.get(name.unwrap_or(DEFAULT_HOST))
    }
}
