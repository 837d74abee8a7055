//! Passivation end to end without Docker: the real proxy listener, the real tenant driver and readiness probe,
//! and a scripted container runtime whose "containers" are in-process servers that listen only while running.
//! The same paths against the real Docker Engine are in `passivation.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::support::runtime::ScriptedRuntime;
use crate::support::{eventually, get, TestProxy};
use http::StatusCode;
use reveille::ContainerState;

const LONG: Duration = Duration::from_secs(10);

fn routes(container: &str, port: u16, extra: &str) -> String {
    format!("[services.app]\ncontainer = \"{container}\"\nport = {port}\n{extra}\n[routes]\n\"app.test\" = \"app\"\n")
}

/// A reveille whose service `app` (`app.test`) is the scripted container `container`, stopped, whose
/// application listens `ready_after` after each start; once reveille has seen it stopped.
async fn start(runtime: &ScriptedRuntime, container: &str, ready_after: Duration, fields: &str) -> (TestProxy, u16) {
    let port = runtime.add_stopped(container, ready_after).await;
    let proxy =
        TestProxy::start_with_runtime(&routes(container, port, fields), |_| {}, Arc::new(runtime.clone())).await;
    state_becomes(&proxy, "stopped").await;
    (proxy, port)
}

async fn state_becomes(proxy: &TestProxy, want: &str) {
    eventually(LONG, &format!("app to be {want}"), || async { proxy.service_view("app").await["state"] == want }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_tenant_is_woken_once_for_concurrent_requests_and_serves_them() {
    let runtime = ScriptedRuntime::new();
    let (proxy, _) = start(&runtime, "app-ctr", Duration::from_millis(300), "idle_timeout = \"0\"").await;
    assert_eq!(runtime.count("app-ctr", "start"), 0);

    let requests: Vec<_> = (0..20).map(|_| tokio::spawn(get(proxy.http, "app.test", "/"))).collect();
    for r in requests {
        let got = r.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.text, "hello from app-ctr");
    }
    assert_eq!(runtime.count("app-ctr", "start"), 1, "one start for all held requests");
    assert_eq!(runtime.state("app-ctr"), Some(ContainerState::Running));
    let view = proxy.service_view("app").await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["container"], "app-ctr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_is_stopped_then_woken_again_by_the_next_request() {
    let runtime = ScriptedRuntime::new();
    let (proxy, port) = start(&runtime, "idle-ctr", Duration::from_millis(50), "idle_timeout = \"1s\"").await;

    let got = get(proxy.http, "app.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(runtime.count("idle-ctr", "start"), 1);

    // Nobody uses it: the driver stops it after the idle timeout.
    state_becomes(&proxy, "stopped").await;
    assert_eq!(runtime.count("idle-ctr", "stop"), 1);
    assert_eq!(runtime.state("idle-ctr"), Some(ContainerState::Stopped));
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "the stopped container's application still listens");

    let got = get(proxy.http, "app.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, "hello from idle-ctr");
    assert_eq!(runtime.count("idle-ctr", "start"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_never_becomes_ready_answers_504_at_the_wake_timeout() {
    let runtime = ScriptedRuntime::new();
    let fields = "idle_timeout = \"0\"\nwake_timeout = \"500ms\"";
    let (proxy, _) = start(&runtime, "slow-ctr", Duration::from_secs(3600), fields).await;

    let got = get(proxy.http, "app.test", "/").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text);
    assert_eq!(got.text, "504 Gateway Timeout: the service did not start in time\n");
    assert_eq!(runtime.count("slow-ctr", "start"), 1);
}
