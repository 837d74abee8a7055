//! A tenant of several containers (`depends_on`): each dependency is a tenant of its own, with no route, the
//! same driver and the same cluster rules as any other (or, when it is another service's container, that
//! service's tenant; the registry links them, `link_dependencies`). A dependant wakes its dependencies first, in order,
//! each through its tenant's single-flight wake, and holds an activity guard on each while it is starting,
//! running or stopping. So a dependency shared by several services is started once however many wake at once,
//! and the ordinary idle rules (local guards, the `busy` activity other replicas publish, the decider's veto)
//! keep it up while any dependant runs on any replica; once every dependant is asleep, its own idle timer
//! stops it. See "Groups" in `LIFECYCLE.md`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, info_span, Instrument};

use super::{Activity, Hold, Msg, Phase, Refusal, State, Tenant};
use crate::routes::{Backend, ContainerSpec, Dependency, Service};
use crate::runtime::{ContainerInfo, ContainerState, Health, DEFAULT_HOST};

/// Probe interval during the first [`FAST_WAITING`] of a dependency's wake.
const FAST_WAIT: Duration = Duration::from_millis(5);
const FAST_WAITING: Duration = Duration::from_secs(1);
/// The longest one connect to a dependency's port may take.
const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// The name of a dependency's tenant: its status key, its activity keys and its line in `reveille status`.
/// `dep:` cannot begin a service name, so it never meets a service's tenant.
pub(crate) fn dependency_name(container: &str, host: &str) -> String {
    if host == DEFAULT_HOST {
        format!("dep:{container}")
    } else {
        format!("dep:{container}@{host}")
    }
}

/// The definition a dependency's tenant runs on, from its dependants' (`(their container spec, the entry)`,
/// at least one): on their Docker host and their network (the first dependant's), the first `port` given,
/// the longest of their `wake_timeout`s, and the shortest of their idle timeouts (never-idle ones aside), which
/// counts from the moment the last dependant went to sleep.
pub(crate) fn dependency_service(
    name: &str,
    dependants: &[(&ContainerSpec, &Dependency)],
    defaults: &super::super::Settings,
) -> Service {
    let (first, entry) = dependants[0];
    let port = dependants.iter().find_map(|(_, d)| d.port);
    let wake_timeout = dependants.iter().map(|(c, _)| c.wake_timeout.unwrap_or(defaults.wake_timeout)).max();
    let idle_timeout = dependants
        .iter()
        .map(|(c, _)| c.idle_timeout.unwrap_or(defaults.idle_timeout))
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or(Duration::ZERO);
    let spec = ContainerSpec {
        container: entry.container.clone(),
        port,
        network: first.network.clone(),
        docker_host: first.docker_host.clone(),
        idle_timeout: Some(idle_timeout),
        wake_timeout,
        stop_timeout: first.stop_timeout,
        // No traffic witness: a dependency's use is its dependants', which hold it while they run (and their own
        // witness keeps them running while a replica cut off from etcd uses them); its own counters would only
        // see its dependants' and its own chatter (replication, keep-alives), and it would never sleep.
        no_traffic_witness: true,
        // The rest unset: no HTTP face to ask (`health_path`, `stop_check`), always stopped (never paused), a
        // container (not a Swarm service), nothing of its own to wait for.
        ..Default::default()
    };
    Service::with_container(name, Vec::new(), Some(spec))
}

impl Tenant {
    /// Sets the tenants of its `depends_on`, in order. A change is taken up by the driver at once (holds).
    pub(in crate::passivation) fn set_dependencies(&self, deps: Vec<Arc<Tenant>>) {
        let current = self.deps.load();
        let same = current.len() == deps.len() && current.iter().zip(&deps).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            self.deps.store(Arc::new(deps));
            let _ = self.tx.send(Msg::Idle);
        }
    }

    /// The tenants of its `depends_on`, in order.
    pub(in crate::passivation) fn dependencies(&self) -> Arc<Vec<Arc<Tenant>>> {
        self.deps.load_full()
    }

    /// A dependant's guard on this dependency: not stopped for idleness while it is held, and started again if
    /// it is found stopped or paused (behind reveille's back, by a crash, or found so at startup).
    fn hold(self: &Arc<Self>) -> Hold {
        let mut st = self.state.lock();
        st.active += 1;
        st.held += 1;
        st.last_activity = Some(SystemTime::now());
        self.restart_if_held(&mut st);
        Hold(Activity(self.clone()))
    }

    /// Asks its driver for a wake when a dependant holds it and it is stopped or paused: a dependency must run
    /// while a dependant does. Not after a failed wake (`failed`): that waits for a dependant's next wake, so a
    /// dependency that cannot start is not retried in a loop.
    pub(super) fn restart_if_held(&self, st: &mut State) {
        if st.held > 0 && matches!(st.phase, Phase::Stopped | Phase::Paused) && !st.wake_pending {
            info!(held_by = st.held, state = st.phase.as_str(), "a dependant runs: starting its dependency again");
            st.wake_pending = true;
            st.wake_requested_at = Some(Instant::now());
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Holds a guard on each dependency while this tenant is starting, running or stopping, and none otherwise
    /// (stopped, paused, failed, removed); `unknown` keeps what it holds. Called by its driver only, so nothing
    /// else changes `holds` meanwhile; no two tenants' locks are ever held together (a dependency may be another
    /// service's tenant).
    pub(super) fn sync_holds(&self) {
        let deps = self.deps.load_full();
        let (want, same) = {
            let st = self.state.lock();
            let want = match st.phase {
                _ if self.cancel.is_cancelled() => false,
                Phase::Starting | Phase::Running | Phase::Stopping => true,
                Phase::Unknown => return,
                Phase::Stopped | Phase::Paused | Phase::Failed => false,
            };
            let same = st.holds.len() == deps.len()
                && st.holds.iter().zip(deps.iter()).all(|(h, d)| Arc::ptr_eq(h.tenant(), d));
            (want, same)
        };
        if !want {
            let released = std::mem::take(&mut self.state.lock().holds);
            drop(released);
        } else if !same {
            let holds = deps.iter().map(|d| d.hold()).collect();
            let old = std::mem::replace(&mut self.state.lock().holds, holds);
            drop(old);
        }
    }

    /// Wakes each dependency in order and waits for it (its own wake: single flight, cluster claims, its
    /// readiness). The first that fails fails the wake; those already up are left to their idle timers (the
    /// holds go with this tenant's `failed`).
    pub(super) async fn wake_dependencies(&self) -> Result<(), Refusal> {
        let deps = self.dependencies();
        if deps.is_empty() {
            return Ok(());
        }
        self.sync_holds();
        for dep in deps.iter() {
            let span = info_span!("dependency", dependency = %dep.name);
            let began = Instant::now();
            match dep.admit(false).instrument(span.clone()).await {
                // The hold taken above keeps it up: the request's own guard is not needed.
                Ok((_, guard)) => {
                    drop(guard);
                    span.in_scope(|| info!(ms = began.elapsed().as_millis() as u64, "dependency ready"));
                }
                Err(refusal) => return Err(dependency_failed(dep, refusal)),
            }
        }
        Ok(())
    }

    /// A dependency's readiness, once Docker runs it: its healthcheck `healthy` when it has one (`unhealthy`
    /// fails the wake), else a TCP connect to its port (given, or the only one it exposes) at its address.
    pub(super) async fn dependency_ready(
        &self,
        spec: &ContainerSpec,
        mut info: ContainerInfo,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
    ) -> Result<(), Refusal> {
        let interval = self.shared.settings.probe_interval;
        let network = spec.network.as_deref();
        // Docker's view now; an error when it no longer runs the container.
        let running = || async {
            let info = self.runtime().inspect(&spec.container, network).await.map_err(Refusal::from_runtime)?;
            match info.state {
                ContainerState::Running => Ok(info),
                _ => Err(super::driver::exited(&info)),
            }
        };
        let target = match info.health {
            Some(_) => None,
            None => Some(probe_target(spec, &info)?),
        };
        let waiting = Instant::now();
        let mut probes: u32 = 0;
        loop {
            let gap = if waiting.elapsed() < FAST_WAITING { interval.min(FAST_WAIT) } else { interval };
            let next = Instant::now() + gap;
            match &target {
                None => match info.health {
                    Some(Health::Healthy) | None => return Ok(()),
                    Some(Health::Unhealthy) => {
                        return Err(Refusal::Failed { reason: "its healthcheck reports unhealthy".into() })
                    }
                    Some(Health::Starting) => {}
                },
                Some(b) => {
                    // A connect to the address of a container that has just exited gets no answer at all (the
                    // address is gone): bounded, and cut short by Docker's `die` event.
                    let ready = tokio::select! {
                        r = tokio::time::timeout(PROBE_LIMIT, self.shared.probe.ready(b, None)) => r.unwrap_or(false),
                        m = rx.recv() => match m {
                            None => return Err(Refusal::Removed),
                            Some(Msg::Event) => {
                                info = running().await?;
                                false
                            }
                            Some(_) => false,
                        },
                    };
                    if ready {
                        // A container that died at once frees its address for another one, which may listen on
                        // the same port: the answer counts only if Docker still runs this one.
                        running().await?;
                        return Ok(());
                    }
                }
            }
            probes += 1;
            // Until the next look: Docker's `die` event (or, for the health status, which only an inspect shows,
            // every time; for the port, every 20 probes) ends the wait at once.
            let look = target.is_none() || probes.is_multiple_of(20);
            tokio::select! {
                () = tokio::time::sleep_until(next) => if look { info = running().await? },
                m = rx.recv() => match m {
                    None => return Err(Refusal::Removed),
                    Some(Msg::Event) => info = running().await?,
                    Some(_) => {}
                },
            }
        }
    }
}

/// The address a dependency without a healthcheck is probed at.
fn probe_target(spec: &ContainerSpec, info: &ContainerInfo) -> Result<Backend, Refusal> {
    let port = match (spec.port, info.exposed_ports.as_slice()) {
        (Some(p), _) => p,
        (None, [p]) => *p,
        (None, []) => {
            return Err(Refusal::Failed {
                reason: "it has no healthcheck and exposes no port: give the dependency a `port`".into(),
            })
        }
        (None, ports) => {
            return Err(Refusal::Failed {
                reason: format!(
                    "it has no healthcheck and exposes {} ports: give the dependency a `port`",
                    ports.len()
                )
                .into(),
            })
        }
    };
    match info.ip {
        Some(ip) => Ok(Backend::from_addr((ip, port).into())),
        None => Err(Refusal::Failed { reason: "it has no network address".into() }),
    }
}

/// A dependant's refusal for a dependency's: the dependency named, for the log and the admin API; the public
/// reason stays that of the kind.
fn dependency_failed(dep: &Tenant, refusal: Refusal) -> Refusal {
    let service = dep.service();
    let container = service.container().map_or(&*dep.name, |c| c.container.as_str());
    match refusal {
        Refusal::Removed => Refusal::Failed {
            reason: format!("dependency {container}: removed from the configuration during the wake").into(),
        },
        Refusal::Unavailable { reason } => {
            Refusal::Unavailable { reason: format!("dependency {container}: {reason}").into() }
        }
        Refusal::Failed { reason } => Refusal::Failed { reason: format!("dependency {container}: {reason}").into() },
        other => Refusal::Failed { reason: format!("dependency {container}: {other}").into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dependency's tenant never reads its own traffic counters: its use is its dependants' (who hold it), and
    /// its own chatter would keep it up for ever on a cluster.
    #[test]
    fn a_dependency_is_not_witnessed_by_its_counters() {
        let app = ContainerSpec { container: "shop".into(), port: Some(80), ..Default::default() };
        let db = Dependency { container: "shop-db".into(), port: Some(5432) };
        let service = dependency_service("dep:shop-db", &[(&app, &db)], &crate::passivation::Settings::default());
        let spec = service.container().unwrap();
        assert_eq!(spec.container, "shop-db");
        assert!(spec.no_traffic_witness);
        assert!(!app.no_traffic_witness, "a service's own tenant is witnessed unless it says otherwise");
    }
}
