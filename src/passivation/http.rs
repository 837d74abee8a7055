//! Passivation's HTTP face: what clients and operators see of a tenant's lifecycle.
//!
//! Owns the "is this a browser navigation" decision ([`wants_page`]), the "starting" page response, the status
//! endpoint (`GET <status_path>` on every routed host) and the admin API's `/api/services` view. Everything here
//! reads a tenant through [`Tenant::snapshot`] and never changes it. Responses carry a plain `String` body: the
//! proxy wraps it in its own body type, writes the access-log line and counts the metrics; nothing here does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderName, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, UPGRADE, VARY};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{PageValues, Passivator, Phase, Tenant};
use crate::cluster::rfc3339;
use crate::routes::{Backend, Health, RouteTable, Service};

/// `Retry-After` of the starting page, in seconds (the page itself reloads sooner, when ready).
const PAGE_RETRY_AFTER: u64 = 2;

const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

/// A `GET` for a page a browser shows (not a script, image, XHR or upgrade): the only kind of request that may
/// get the "starting" page instead of waiting.
pub(crate) fn wants_page<B>(req: &Request<B>) -> bool {
    if req.method() != Method::GET || req.headers().contains_key(UPGRADE) {
        return false;
    }
    let h = req.headers();
    if let Some(dest) = h.get(SEC_FETCH_DEST).and_then(|v| v.to_str().ok()) {
        if !matches!(dest, "document" | "iframe") {
            return false;
        }
    }
    if h.contains_key(X_REQUESTED_WITH) {
        return false;
    }
    h.get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))))
}

impl Passivator {
    /// True for `GET` or `HEAD` of the status path: the proxy answers it with [`Self::status_response`] on
    /// every routed host, instead of forwarding it.
    #[inline]
    pub fn is_status_request<B>(&self, req: &Request<B>) -> bool {
        req.uri().path() == self.settings().status_path.as_str() && matches!(*req.method(), Method::GET | Method::HEAD)
    }

    /// The status endpoint: the state of `service`, for the starting page's polling and for tools. A service
    /// that is not passivated is always `running`.
    pub fn status_response(&self, service: &Arc<Service>) -> Response<String> {
        let (state, error) = match self.tenant(service) {
            Some(t) => {
                let snap = t.snapshot();
                let error = match snap.phase {
                    // Public: the kind of failure only; the detail is the admin API's.
                    Phase::Failed => snap.last_error.map(|r| r.public_reason()),
                    _ => None,
                };
                (snap.phase.as_str(), error)
            }
            None => ("running", None),
        };
        let body = json!({
            "service": service.name(),
            "state": state,
            "ready": state == "running",
            "error": error,
        });
        let mut resp = Response::new(body.to_string());
        no_store(resp.headers_mut(), "application/json");
        resp
    }

    /// The "starting" page for a browser whose tenant was not ready within `page_after`: 503, never cached,
    /// reloads itself once the tenant is ready.
    pub fn starting_page(&self, tenant: &Tenant, host: &str) -> Response<String> {
        let settings = self.settings();
        let html = settings.page.render(&PageValues {
            service: tenant.name(),
            host,
            state: tenant.phase().as_str(),
            status_path: &settings.status_path,
            retry_after: PAGE_RETRY_AFTER,
        });
        let mut resp = Response::new(html);
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let h = resp.headers_mut();
        no_store(h, "text/html; charset=utf-8");
        h.insert(RETRY_AFTER, HeaderValue::from(PAGE_RETRY_AFTER));
        h.insert(VARY, HeaderValue::from_static("Accept"));
        resp
    }

    /// Every service of `table` as the admin API's `/api/services` shows it, passivated or not: its backends
    /// with what the proxy saw of each, its `health` (see [`service_health`]) and, for a tenant, its state.
    /// Durations are whole milliseconds.
    pub fn services_json(&self, table: &RouteTable) -> Value {
        let tenants = self.tenants.load();
        let cluster = self.cluster().map(|c| (c, c.view()));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut out = serde_json::Map::new();
        for (name, service) in table.services() {
            let backends: Vec<&str> = service.backends().iter().map(|b| b.as_str()).collect();
            let mut v = json!({ "backends": backends });
            // What the proxy saw of each backend it tries: the fixed ones, or the container's address.
            let mut seen: Vec<Backend> = service.backends().to_vec();
            let health = match (service.container(), tenants.get(name)) {
                (Some(spec), Some(t)) => {
                    let snap = t.snapshot();
                    if seen.is_empty() {
                        seen.extend(snap.backend.clone());
                    }
                    // The tenant's own container and host: until `reconcile` replaces a tenant whose service moved
                    // to another container or host, the state shown is the old tenant's, and so is its host.
                    let own = t.service();
                    let spec = own.container().unwrap_or(spec);
                    v["container"] = json!(spec.container);
                    // `runtime` is the name's own key; `docker_host` its older name, kept for existing readers.
                    v["runtime"] = json!(spec.docker_host());
                    v["docker_host"] = json!(spec.docker_host());
                    if let Some(swarm) = &spec.swarm {
                        v["swarm_service"] = json!(spec.container);
                        v["replicas"] = json!(swarm.replicas);
                        if let Some(network) = &swarm.network {
                            v["swarm_network"] = json!(network);
                        }
                    }
                    v["state"] = json!(snap.phase.as_str());
                    v["since"] = json!(rfc3339(snap.since));
                    if matches!(snap.phase, Phase::Stopped | Phase::Paused) {
                        v["stopped_since"] = json!(rfc3339(snap.since));
                    }
                    v["in_flight"] = json!(snap.in_flight);
                    v["last_activity"] = json!(snap.last_activity.map(rfc3339));
                    v["last_error"] = json!(snap.last_error.as_ref().map(|r| r.to_string()));
                    v["held"] = json!(snap.held);
                    v["last_wake"] = json!(snap.last_wake.map(|w| {
                        json!({
                            "ok": w.ok,
                            "ended": w.ended.map(rfc3339),
                            "start_call_ms": w.start_call.map(whole_ms),
                            "running_ms": w.running.map(whole_ms),
                            "ready_ms": w.ready.map(whole_ms),
                            "total_ms": w.total.map(whole_ms),
                        })
                    }));
                    // A group's members: each dependency's tenant, in the order it is started.
                    let deps: Vec<Value> = t
                        .dependencies()
                        .iter()
                        .map(|d| {
                            let snap = d.snapshot();
                            let own = d.service();
                            json!({
                                "container": own.container().map(|c| c.container.as_str()),
                                "tenant": d.name(),
                                "state": snap.phase.as_str(),
                                "since": rfc3339(snap.since),
                                "held_by": snap.in_flight,
                                "last_error": snap.last_error.as_ref().map(|r| r.to_string()),
                            })
                        })
                        .collect();
                    if !deps.is_empty() {
                        v["depends_on"] = json!(deps);
                    }
                    v["idle_action"] = json!(spec.idle_action.as_str());
                    let idle = spec.idle_timeout.unwrap_or(self.settings().idle_timeout);
                    v["idle_timeout"] = json!(humantime::format_duration(idle).to_string());
                    if let Some((c, view)) = &cluster {
                        // The cluster-wide status key, and which replicas hold activity for the tenant.
                        let status = c
                            .status(name)
                            .map(|s| json!({ "state": s.state, "node": s.node, "since": s.since.map(rfc3339) }));
                        v["cluster"] = json!({
                            "status": status,
                            "activity": view.activity.get(&**name).cloned().unwrap_or_default(),
                        });
                    }
                    tenant_health(snap.phase, service_health(&seen, now))
                }
                (Some(spec), None) => {
                    v["container"] = json!(spec.container);
                    // `runtime` is the name's own key; `docker_host` its older name, kept for existing readers.
                    v["runtime"] = json!(spec.docker_host());
                    v["docker_host"] = json!(spec.docker_host());
                    if let Some(swarm) = &spec.swarm {
                        v["swarm_service"] = json!(spec.container);
                        v["replicas"] = json!(swarm.replicas);
                        if let Some(network) = &swarm.network {
                            v["swarm_network"] = json!(network);
                        }
                    }
                    v["state"] = json!(Phase::Unknown.as_str());
                    tenant_health(Phase::Unknown, service_health(&seen, now))
                }
                // A plain service is served whenever its backends are: its state is always `running`, its health
                // says whether they answer.
                (None, _) => {
                    v["state"] = json!("running");
                    service_health(&seen, now).as_str()
                }
            };
            v["health"] = json!(health);
            v["backend_health"] = seen.iter().map(|b| backend_json(b, now, wall)).collect();
            out.insert(name.to_string(), v);
        }
        match cluster {
            Some((_, view)) => json!({ "services": out, "cluster": view }),
            None => json!({ "services": out }),
        }
    }
}

/// A service's health from its backends' (see [`Health::of_service`]).
fn service_health(backends: &[Backend], now: Instant) -> Health {
    Health::of_service(backends.iter().map(|b| b.health(now).health))
}

/// A tenant's health: while it runs, its backends' (`up` when nothing was tried within the window: reveille saw
/// it running, by its wake's readiness check or Docker's inspect); otherwise what it is, never `down` for a tenant
/// put to sleep: `asleep` (stopped, paused or stopping), `waking` (starting), `down` (its last wake failed),
/// `unknown` (not inspected yet).
fn tenant_health(phase: Phase, seen: Health) -> &'static str {
    match phase {
        Phase::Running if seen == Health::Unknown => Health::Up.as_str(),
        Phase::Running => seen.as_str(),
        Phase::Stopped | Phase::Paused | Phase::Stopping => "asleep",
        Phase::Starting => "waking",
        Phase::Failed => Health::Down.as_str(),
        Phase::Unknown => Health::Unknown.as_str(),
    }
}

/// One backend as `/api/services` shows it: its address, health, when it last answered and when and why an
/// attempt last failed (wall-clock times), the failures since its last answer, and its ejections (until when
/// it is out of the rotation, how often it was).
fn backend_json(backend: &Backend, now: Instant, wall: SystemTime) -> Value {
    let view = backend.health(now);
    let at = |ago: Duration| rfc3339(wall.checked_sub(ago).unwrap_or(wall));
    json!({
        "address": backend.as_str(),
        "health": view.health.as_str(),
        "last_answer": view.last_ok.map(at),
        "last_failure": view.last_failure.map(|(ago, why)| json!({ "at": at(ago), "kind": why.as_str() })),
        "failures": view.failures,
        // Out of its service's rotation until then (passive ejection), and how often it was.
        "ejected_until": view.ejected_for.map(|left| rfc3339(wall + left)),
        "ejections": view.ejections,
        // Its active health check fails: out until one passes.
        "check_failing": view.check_failing,
    })
}

/// A duration in whole milliseconds (rounded), as the admin API shows every duration.
fn whole_ms(d: Duration) -> u64 {
    (d.as_secs_f64() * 1000.0).round() as u64
}

fn no_store(h: &mut HeaderMap, content_type: &'static str) {
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn only_browser_navigations_want_the_page() {
        let html = ("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
        assert!(wants_page(&req(Method::GET, &[html])));
        assert!(wants_page(&req(Method::GET, &[html, ("sec-fetch-dest", "iframe")])));
        assert!(!wants_page(&req(Method::POST, &[html])));
        assert!(!wants_page(&req(Method::GET, &[("accept", "application/json")])));
        assert!(!wants_page(&req(Method::GET, &[])));
        assert!(!wants_page(&req(Method::GET, &[html, ("sec-fetch-dest", "image")])));
        assert!(!wants_page(&req(Method::GET, &[html, ("x-requested-with", "XMLHttpRequest")])));
        assert!(!wants_page(&req(Method::GET, &[html, ("upgrade", "websocket")])));
    }

    #[test]
    fn durations_are_whole_milliseconds() {
        assert_eq!(whole_ms(Duration::from_nanos(188_950_497)), 189);
        assert_eq!(json!(whole_ms(Duration::from_micros(1_400))).to_string(), "1");
    }

    #[test]
    fn a_sleeping_tenant_is_not_down() {
        assert_eq!(tenant_health(Phase::Stopped, Health::Down), "asleep");
        assert_eq!(tenant_health(Phase::Paused, Health::Unknown), "asleep");
        assert_eq!(tenant_health(Phase::Running, Health::Unknown), "up");
        assert_eq!(tenant_health(Phase::Running, Health::Down), "down");
        assert_eq!(tenant_health(Phase::Failed, Health::Unknown), "down");
    }
}
