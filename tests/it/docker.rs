//! The container runtime against the real Docker Engine: start, inspect (state and address), pause, unpause,
//! stop, events, and the failures reveille must report clearly.

use std::time::{Duration, Instant};

use crate::support::docker::TestImage;
use futures::StreamExt;
use reveille::{ContainerState, DockerRuntime, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn http_get(ip: std::net::IpAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect((ip, 8080)).await.ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_of_a_real_container() {
    let image = TestImage::build();
    let web = image.web();
    let rt = DockerRuntime::connect(None, T).await.unwrap();
    let before = std::time::SystemTime::now() - Duration::from_secs(1);

    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!(info.state, ContainerState::Stopped, "created, not started");
    assert_eq!(info.ip, None);

    rt.start(&web.name).await.unwrap();
    rt.start(&web.name).await.expect("starting a running container is not an error");
    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(web.docker_state(), "running");
    let ip = info.ip.expect("a running container has an address");
    // The app really answers on that address (it may take a moment to listen).
    let deadline = Instant::now() + T;
    let body = loop {
        if let Some(b) = http_get(ip).await {
            break b;
        }
        assert!(Instant::now() < deadline, "httpd in the container never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains(&format!("hello from {}", image.tag)), "{body}");
    // Docker's event stream reported the start (replayed from `before`).
    let mut events = Box::pin(rt.events(Some(before)));
    let seen = tokio::time::timeout(T, async {
        while let Some(ev) = events.next().await {
            let ev = ev.unwrap();
            if ev.container == web.name && ev.action == "start" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true));

    rt.pause(&web.name).await.unwrap();
    assert_eq!(rt.inspect(&web.name, None).await.unwrap().state, ContainerState::Paused);
    assert_eq!(web.docker_state(), "paused");
    rt.unpause(&web.name).await.unwrap();
    assert_eq!(rt.inspect(&web.name, None).await.unwrap().state, ContainerState::Running);

    rt.stop(&web.name, Some(Duration::from_secs(1))).await.unwrap();
    rt.stop(&web.name, None).await.expect("stopping a stopped container is not an error");
    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!(info.state, ContainerState::Stopped);
    assert_eq!(web.docker_state(), "exited");
    // A named network that the container is not on gives no address.
    rt.start(&web.name).await.unwrap();
    assert!(rt.inspect(&web.name, Some("bridge")).await.unwrap().ip.is_some());
    assert_eq!(rt.inspect(&web.name, Some("no-such-network")).await.unwrap().ip, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_the_given_grace_or_the_containers_own_and_the_call_allows_for_it() {
    let image = TestImage::build();
    // PID 1 (busybox httpd) ignores SIGTERM: every stop lasts its whole grace, then Docker kills it.
    let web = image.container_with(&["--stop-timeout", "3"], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    // A per-call timeout shorter than the grace, on an explicit endpoint (bollard's own request timeout is then
    // that short too): the stop call must still be allowed the grace.
    let rt = DockerRuntime::connect(Some("unix:///var/run/docker.sock"), Duration::from_secs(1)).await.unwrap();

    rt.start(&web.name).await.unwrap();
    let begin = Instant::now();
    rt.stop(&web.name, None).await.expect("the call allows for the container's own 3 s");
    let own = begin.elapsed();
    assert!(own >= Duration::from_millis(2900), "Docker waited the container's own 3 s: {own:?}");

    rt.start(&web.name).await.unwrap();
    let begin = Instant::now();
    rt.stop(&web.name, Some(Duration::from_secs(1))).await.unwrap();
    let given = begin.elapsed();
    eprintln!("stop with the container's own 3 s: {own:?}; with a given 1 s: {given:?}");
    assert!(given + Duration::from_secs(1) < own, "the given 1 s replaced the container's 3 s: {given:?}");
    assert_eq!(web.docker_state(), "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_once_reports_its_exit_code() {
    let image = TestImage::build();
    let bad = image.container(&["false"]);
    let rt = DockerRuntime::connect(None, T).await.unwrap();
    rt.start(&bad.name).await.unwrap();
    let deadline = Instant::now() + T;
    loop {
        let info = rt.inspect(&bad.name, None).await.unwrap();
        if info.state == ContainerState::Stopped {
            assert_eq!(info.exit_code, Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "the container never exited: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_container_and_unreachable_docker_are_clear_errors() {
    let rt = DockerRuntime::connect(None, T).await.unwrap();
    let err = rt.start("reveille-test-no-such-container").await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoSuchContainer(ref n) if n == "reveille-test-no-such-container"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}/docker.sock", dir.path().display());
    let started = Instant::now();
    let err = DockerRuntime::connect(Some(&socket), Duration::from_secs(2)).await.err().expect("no Docker there");
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("container runtime unavailable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}
