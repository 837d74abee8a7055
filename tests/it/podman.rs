//! Podman as a runtime (`[runtimes.<name>] kind = "podman"`), against the real thing: each test starts its own
//! `podman system service` on a temp socket (with a containers.conf of `default_ulimits = []`, since the
//! sandbox forbids raising rlimits, given to every podman process through `CONTAINERS_CONF`), builds a
//! `FROM scratch` busybox image in Podman and uniquely named containers, and removes them, and stops the
//! service, on drop. A tenant on Podman is woken, served, stopped when idle and woken again; Podman's service
//! down answers 503 at once while other routes serve; a Podman tenant beside a Docker one in one config file;
//! and the places where Podman's answers differ from Docker's, through the runtime itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::docker::TestImage;
use crate::support::{eventually, get, services_file, Backend, TestProxy};
use futures::StreamExt;
use http::StatusCode;
use reveille::{ContainerState, DockerEndpoint, DockerRuntime, RuntimeConfig, RuntimeError, RuntimeKind};

const LONG: Duration = Duration::from_secs(30);

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(kind: &str) -> String {
    format!("reveille-test-podman-{kind}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// A `podman system service` of the test's own, on a socket in a temp dir, and the podman CLI with the same
/// containers.conf.
struct Podman {
    dir: tempfile::TempDir,
    /// The service's process, while it runs (the images and containers borrow the `Podman` while a test stops
    /// and restarts it).
    child: std::sync::Mutex<Option<Child>>,
}

impl Podman {
    fn start() -> Podman {
        assert!(
            Path::new("/usr/bin/podman").exists(),
            "/usr/bin/podman not found: install Debian's podman (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // The sandbox forbids raising rlimits, which Podman does for every container by default.
        std::fs::write(dir.path().join("containers.conf"), "[containers]\ndefault_ulimits = []\n").unwrap();
        let podman = Podman { dir, child: std::sync::Mutex::new(None) };
        podman.restart();
        podman
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    fn endpoint(&self) -> DockerEndpoint {
        DockerEndpoint::plain(Some(format!("unix://{}", self.socket().display())))
    }

    /// (Re)starts the service and waits until its socket accepts connections.
    fn restart(&self) {
        self.stop();
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &format!("unix://{}", self.socket().display())])
            .env("CONTAINERS_CONF", self.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run podman system service");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + LONG;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "podman system service did not listen on {:?}", self.socket());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the service: its socket refuses connections (containers keep running, under conmon).
    fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Runs the podman CLI: its trimmed stdout, or why it failed.
    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.conf())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds a `FROM scratch` image holding busybox and `/www/index.html` ("hello from <tag>").
    fn image(&self) -> PodImage<'_> {
        let tag = format!("localhost/{}", unique("image"));
        // Registered before the build: a half-built image is removed as well.
        let image = PodImage { podman: self, tag };
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir(ctx.path().join("www")).unwrap();
        std::fs::copy(testkit::docker::BUSYBOX, ctx.path().join("busybox"))
            .expect("/bin/busybox: install Debian's busybox-static");
        std::fs::write(ctx.path().join("www/index.html"), format!("hello from {}\n", image.tag)).unwrap();
        std::fs::write(
            ctx.path().join("Containerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        // --no-cache: concurrent builds of the same layers, one of which removes its image, must not take a
        // cached parent layer from under another (as with Docker, see `support::docker`).
        self.cli(&["build", "--no-cache", "-q", "-t", &image.tag, ctx.path().to_str().unwrap()]);
        image
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.stop();
    }
}

struct PodImage<'a> {
    podman: &'a Podman,
    tag: String,
}

impl<'a> PodImage<'a> {
    /// Creates (does not start) a container with `podman create` options, running `busybox <args...>`.
    fn container_with(&self, options: &[&str], args: &[&str]) -> PodContainer<'a> {
        let name = unique("ctr");
        let c = PodContainer { podman: self.podman, name };
        let mut create = vec!["create", "--name", &c.name];
        create.extend_from_slice(options);
        create.push(&self.tag);
        create.extend_from_slice(args);
        self.podman.cli(&create);
        c
    }

    /// Serves /www on port 8080 and exits at once on SIGTERM.
    fn web(&self) -> PodContainer<'a> {
        self.container_with(&[], &["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"])
    }
}

impl Drop for PodImage<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.podman.try_cli(&["rmi", "-f", &self.tag]) {
            eprintln!("cleanup: {e}");
        }
    }
}

struct PodContainer<'a> {
    podman: &'a Podman,
    name: String,
}

impl PodContainer<'_> {
    /// The state Podman reports (`created`, `running`, `paused`, `exited`...), through its CLI.
    fn state(&self) -> String {
        self.podman.cli(&["inspect", "-f", "{{.State.Status}}", &self.name])
    }
}

impl Drop for PodContainer<'_> {
    fn drop(&mut self) {
        // Already removed by the test is fine.
        let _ = self.podman.try_cli(&["rm", "-f", "-t", "0", &self.name]);
    }
}

fn podman_runtime(podman: &Podman) -> RuntimeConfig {
    RuntimeConfig { kind: RuntimeKind::Podman, endpoint: podman.endpoint() }
}

async fn state_becomes(proxy: &TestProxy, service: &str, want: &str) {
    eventually(LONG, &format!("{service} to be {want}"), || async {
        proxy.service_view(service).await["state"] == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_podman_is_woken_served_stopped_when_idle_and_woken_again() {
    let podman = Podman::start();
    let image = podman.image();
    let web = image.web();
    let r = services_file(&[(
        "pod",
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\nruntime = \"pod\"", web.name),
    )]);
    let runtime = podman_runtime(&podman);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.runtimes.insert("pod".into(), runtime);
    })
    .await;
    state_becomes(&proxy, "pod", "stopped").await;
    assert_eq!(proxy.service_view("pod").await["docker_host"], "pod");
    assert_eq!(proxy.service_view("pod").await["runtime"], "pod");

    let got = get(proxy.http, "pod.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, format!("hello from {}\n", image.tag));
    assert_eq!(web.state(), "running");

    state_becomes(&proxy, "pod", "stopped").await;
    assert_eq!(web.state(), "exited", "stopped through Podman when idle");

    let got = get(proxy.http, "pod.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(web.state(), "running");
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"pod\",result=\"ok\"}").await, 2.0);
    assert_eq!(proxy.metric("reveille_stops_total{service=\"pod\",action=\"stop\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"pod\"}").await, 1.0);

    // Podman's events reach the tenant: stopped behind reveille's back, it is seen stopped (Podman's `die`)...
    podman.cli(&["stop", "-t", "0", &web.name]);
    state_becomes(&proxy, "pod", "stopped").await;
    // ...and removed, it is seen gone (Podman's `remove`, Docker's `destroy`).
    podman.cli(&["rm", "-f", "-t", "0", &web.name]);
    state_becomes(&proxy, "pod", "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_podman_paused_when_idle_is_unpaused_by_a_request() {
    let podman = Podman::start();
    let image = podman.image();
    let web = image.web();
    web.podman.cli(&["start", &web.name]);
    let fields = format!(
        "container = \"{}\"\nport = 8080\nidle_timeout = \"1s\"\nidle_action = \"pause\"\nruntime = \"pod\"",
        web.name
    );
    let runtime = podman_runtime(&podman);
    let proxy = TestProxy::start_custom(&services_file(&[("pod", fields)]), |c| {
        c.passivation.runtimes.insert("pod".into(), runtime);
    })
    .await;
    state_becomes(&proxy, "pod", "paused").await;
    assert_eq!(web.state(), "paused", "paused through Podman when idle");

    let got = get(proxy.http, "pod.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, format!("hello from {}\n", image.tag));
    assert_eq!(proxy.metric("reveille_wakes_total{service=\"pod\",result=\"ok\"}").await, 1.0);
    state_becomes(&proxy, "pod", "paused").await;
    assert_eq!(proxy.metric("reveille_stops_total{service=\"pod\",action=\"pause\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_down_answers_503_at_once_while_other_routes_serve() {
    let podman = Podman::start();
    let image = podman.image();
    let web = image.web();
    let plain = Backend::fixed("plain").await;
    let r = services_file(&[
        ("pod", format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\nruntime = \"pod\"", web.name)),
        ("plain", format!("backends = [\"{}\"]", plain.addr)),
    ]);
    let runtime = podman_runtime(&podman);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.runtimes.insert("pod".into(), runtime);
    })
    .await;
    state_becomes(&proxy, "pod", "stopped").await;

    podman.stop();
    let begin = Instant::now();
    let got = get(proxy.http, "pod.test", "/index.html").await;
    let took = begin.elapsed();
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert_eq!(got.text, "503 Service Unavailable: the service could not be started\n");
    assert!(took < Duration::from_secs(1), "a refused socket answers at once: {took:?}");
    let error = proxy.service_view("pod").await["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("container runtime unavailable"), "{error}");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"pod\"}").await, 0.0);
    assert_eq!(proxy.metric("reveille_wakes_by_host_total{host=\"pod\",result=\"unavailable\"}").await, 1.0);
    let got = get(proxy.http, "plain.test", "/").await;
    assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "plain"), "other routes keep serving");
    assert_ne!(web.state(), "running");

    // The service comes back on the same socket: the tenant wakes again.
    podman.restart();
    eventually(LONG, "wakes on Podman work again", || async {
        get(proxy.http, "pod.test", "/index.html").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(web.state(), "running");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"pod\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_podman_tenant_beside_a_docker_tenant_in_one_config_file() {
    let podman = Podman::start();
    let pod_image = podman.image();
    let pod_web = pod_image.web();
    let docker_image = TestImage::build();
    let docker_web = docker_image.web_after("");

    // The runtimes as an operator writes them, read by the config file's own code.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reveille.toml");
    let sock = podman.socket();
    let text = format!(
        "[server]\nroutes = \"routes.toml\"\n[runtimes.pod]\nkind = \"podman\"\nendpoint = \"unix://{}\"\n",
        sock.display()
    );
    std::fs::write(&file, text).unwrap();
    let resolved = reveille::Config::resolve(Some(&file), &reveille::ConfigFile::default()).unwrap();
    let runtimes = resolved.passivation.runtimes;
    assert_eq!(runtimes["pod"].kind, RuntimeKind::Podman);

    let r = services_file(&[
        ("dock", format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"", docker_web.name)),
        ("pod", format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\nruntime = \"pod\"", pod_web.name)),
    ]);
    let proxy = TestProxy::start_custom(&r, |c| c.passivation.runtimes = runtimes).await;
    state_becomes(&proxy, "dock", "stopped").await;
    state_becomes(&proxy, "pod", "stopped").await;

    let got = get(proxy.http, "pod.test", "/index.html").await;
    assert_eq!(got.text, format!("hello from {}\n", pod_image.tag), "served by the Podman container");
    let got = get(proxy.http, "dock.test", "/index.html").await;
    assert_eq!(got.text, format!("hello from {}\n", docker_image.tag), "served by the Docker container");
    assert_eq!((pod_web.state(), docker_web.docker_state()), ("running".into(), "running".into()));
    assert_eq!(proxy.service_view("dock").await["docker_host"], "default");
    assert_eq!(proxy.service_view("pod").await["docker_host"], "pod");
    assert_eq!(proxy.metric("reveille_wakes_by_host_total{host=\"pod\",result=\"ok\"}").await, 1.0);
    assert_eq!(proxy.metric("reveille_wakes_by_host_total{host=\"default\",result=\"ok\"}").await, 1.0);
    // Neither engine knows the other's container.
    assert!(podman.try_cli(&["inspect", &docker_web.name]).is_err());
    assert!(testkit::docker::docker(&["inspect", &pod_web.name]).is_err());
}

/// Where Podman's Docker-compatible API answers differently from Docker, through the runtime itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_answers_are_read_as_dockers() {
    let podman = Podman::start();
    let image = podman.image();
    // PID 1 ignores SIGTERM (no trap): a stop waits for the StopTimeout, then kills.
    let web = image.container_with(&["--stop-timeout", "1"], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let timeout = Duration::from_secs(10);
    // Podman 4 says ApiVersion 1.41; the client steps down to it.
    let rt = DockerRuntime::connect_kind(&podman.endpoint(), timeout, RuntimeKind::Podman).await.unwrap();
    assert_eq!(rt.kind(), RuntimeKind::Podman);
    let since = std::time::SystemTime::now() - Duration::from_secs(1);

    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!((info.state, info.ip), (ContainerState::Stopped, None));
    assert_eq!(info.name, web.name);

    // Start: already started is 304 on both.
    rt.start(&web.name).await.unwrap();
    rt.start(&web.name).await.unwrap();
    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    // Podman's default network is `podman` (10.88.0.0/16); the address is read from it as from Docker's.
    let ip = info.ip.expect("an address on Podman's network");
    assert_eq!(rt.inspect(&web.name, Some("podman")).await.unwrap().ip, Some(ip));
    let addr = SocketAddr::new(ip, 8080);
    eventually(LONG, "the container to accept", || async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;

    // Pause twice: Docker refuses the second with 409, Podman with 500 ("container state improper"); both are
    // a refusal, not the runtime being unavailable.
    rt.pause(&web.name).await.unwrap();
    assert_eq!(rt.inspect(&web.name, None).await.unwrap().state, ContainerState::Paused);
    let e = rt.pause(&web.name).await.unwrap_err();
    assert!(matches!(e, RuntimeError::Refused { action: "pause", .. }), "{e:?}");
    assert!(e.to_string().contains("already paused"), "{e}");
    rt.unpause(&web.name).await.unwrap();
    let e = rt.unpause(&web.name).await.unwrap_err();
    assert!(matches!(e, RuntimeError::Refused { action: "unpause", .. }), "{e:?}");

    // Stop without a grace: the container's own StopTimeout (Podman's inspect always gives one, its default 10;
    // here 1), then SIGKILL. Already stopped is 304 on both.
    let begin = Instant::now();
    rt.stop(&web.name, None).await.unwrap();
    let took = begin.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "StopTimeout 1 s: {took:?}");
    rt.stop(&web.name, None).await.unwrap();
    let info = rt.inspect(&web.name, None).await.unwrap();
    assert_eq!((info.state, info.exit_code), (ContainerState::Stopped, Some(137)));

    let e = rt.start("reveille-no-such-container").await.unwrap_err();
    assert!(matches!(e, RuntimeError::NoSuchContainer(_)), "{e:?}");

    // A health check's event: Docker says `health_status: healthy`, Podman a bare `health_status` (read as a
    // prefix). Podman runs checks from systemd timers, absent here: the test runs one by hand.
    let checked = image.container_with(&["--health-cmd", r#"["/bin/busybox","true"]"#], &["sleep", "100000"]);
    let since_health = std::time::SystemTime::now() - Duration::from_secs(1);
    rt.start(&checked.name).await.unwrap();
    podman.cli(&["healthcheck", "run", &checked.name]);
    let mut events = Box::pin(rt.events(Some(since_health)));
    let deadline = tokio::time::Instant::now() + LONG;
    let action = loop {
        let ev = tokio::time::timeout_at(deadline, events.next()).await.expect("a health_status event");
        let ev = ev.expect("stream open").unwrap();
        if ev.container == checked.name && ev.action.starts_with("health_status") {
            break ev.action;
        }
    };
    assert_eq!(action, "health_status", "Podman's has no result: inspect for it");
    drop(events);

    // Events, replayed from `since`: Docker's actions and fields (`name` among the actor's attributes).
    podman.cli(&["rm", "-f", "-t", "0", &web.name]);
    let mut events = Box::pin(rt.events(Some(since)));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while !seen.iter().any(|a| a == "destroy") {
        let ev = tokio::time::timeout_at(deadline, events.next()).await;
        let ev = ev.unwrap_or_else(|_| panic!("no destroy event; seen {seen:?}")).expect("stream open").unwrap();
        if ev.container == web.name {
            assert_eq!(ev.id, info.id);
            seen.push(ev.action);
        }
    }
    for want in ["start", "pause", "unpause", "die", "destroy"] {
        assert!(seen.iter().any(|a| a == want), "{want} in {seen:?}");
    }
    assert!(!seen.iter().any(|a| a == "remove" || a == "died"), "Podman's own words are not passed on: {seen:?}");
}

/// The figure for issue 28's note (run by hand: `cargo test --test it podman::cold_start_figure -- --ignored
/// --nocapture`): Podman `start` → first accepted connection, against the first request to a stopped tenant on
/// Podman through reveille → its response. Medians of 7 rounds each, alternated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn cold_start_figure() {
    const ROUNDS: usize = 7;
    let podman = Podman::start();
    let image = podman.image();
    let (direct, tenant) = (image.web(), image.web());
    let rt =
        DockerRuntime::connect_kind(&podman.endpoint(), Duration::from_secs(10), RuntimeKind::Podman).await.unwrap();
    let r = services_file(&[(
        "pod",
        format!("container = \"{}\"\nport = 8080\nidle_timeout = \"0\"\nruntime = \"pod\"", tenant.name),
    )]);
    let runtime = podman_runtime(&podman);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.runtimes.insert("pod".into(), runtime);
    })
    .await;
    let (mut bare, mut through) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        tokio::time::sleep(testkit::docker::SETTLE).await;
        let begin = Instant::now();
        rt.start(&direct.name).await.unwrap();
        let ip = rt.inspect(&direct.name, None).await.unwrap().ip.expect("an address");
        while tokio::net::TcpStream::connect((ip, 8080)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bare.push(begin.elapsed());
        rt.stop(&direct.name, Some(Duration::ZERO)).await.unwrap();

        state_becomes(&proxy, "pod", "stopped").await;
        tokio::time::sleep(testkit::docker::SETTLE).await;
        let begin = Instant::now();
        let got = get(proxy.http, "pod.test", "/index.html").await;
        through.push(begin.elapsed());
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        podman.cli(&["stop", "-t", "0", &tenant.name]);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (b, t) = (median(&mut bare), median(&mut through));
    eprintln!("podman start -> first accept: median {b:?} of {bare:?}");
    eprintln!("first request through reveille -> response: median {t:?} of {through:?}");
    let overhead = t.as_secs_f64() * 1e3 - b.as_secs_f64() * 1e3;
    eprintln!("reveille's overhead (difference of the medians): {overhead:+.1} ms");
}

/// A service defined in etcd (`"runtime": "pod"`, written by `reveille service set --runtime`) is woken on
/// Podman by a reveille whose config names that runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_from_etcd_names_its_podman_runtime() {
    let etcd = crate::support::etcd::Etcd::start().await;
    let url = etcd.url.as_str();
    let podman = Podman::start();
    let image = podman.image();
    let web = image.web();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reveille.toml");
    let text = format!("[runtimes.pod]\nkind = \"podman\"\nendpoint = \"unix://{}\"\n", podman.socket().display());
    std::fs::write(&file, text).unwrap();
    let config_arg = file.to_str().unwrap();
    let set = ["service", "set", "web", "--container", &web.name, "--port", "8080", "--runtime", "pod"];
    let (code, _, err) =
        crate::cli::reveille(url, &[&set[..], &["--idle-timeout", "0", "--config", config_arg]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = crate::cli::reveille(url, &["route", "set", "pod.test", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(crate::cli::value(&etcd, "/reveille/services/web").await.unwrap()["runtime"], "pod");

    // The runtimes from the config file (with etcd as its route source), the listeners on port 0.
    let mut flags = reveille::ConfigFile::default();
    flags.etcd.endpoints = Some(vec![url.to_string()]);
    let mut config = reveille::Config::resolve(Some(&file), &flags).unwrap();
    assert_eq!(config.passivation.runtimes["pod"].kind, RuntimeKind::Podman);
    config.http = "127.0.0.1:0".parse().unwrap();
    config.admin = "127.0.0.1:0".parse().unwrap();
    config.threads = 1;
    config.proxy.access_log = false;
    let listeners = reveille::Listeners::bind(&config).await.unwrap();
    let running = reveille::start(&config, listeners, reveille::docker(&config)).await.unwrap();
    let http = running.http_addr;

    eventually(LONG, "the route from etcd to serve from Podman", || async {
        get(http, "pod.test", "/index.html").await.status == StatusCode::OK
    })
    .await;
    let got = get(http, "pod.test", "/index.html").await;
    assert_eq!(got.text, format!("hello from {}\n", image.tag));
    assert_eq!(web.state(), "running");
    running.shutdown();
    running.wait(Duration::from_secs(5)).await;
}
