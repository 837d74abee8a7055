//! Docker Swarm services as tenants, against a real one-node swarm on this machine's Docker Engine: a request to
//! a service scaled to 0 scales it to its `replicas` and is served through the port it publishes in host mode;
//! idle, it is scaled back to 0; scaled behind reveille's back, the tasks' events make the tenant re-inspect; a
//! missing service or an unreachable swarm is a clear 503 while other routes keep serving.
//!
//! A second test runs reveille itself in a container on an attachable overlay network: a service on that
//! network (`swarm_network`), publishing no port, is reached at its task's overlay address.
//!
//! Each test makes the node a swarm manager (`docker swarm init --advertise-addr 127.0.0.1`) unless it already is
//! one, and then leaves the swarm and removes `docker_gwbridge` at the end, only if it created the swarm. Other
//! tests share the Docker Engine: every check against the swarm is in these two tests, which take [`SWARM_LOCK`]
//! in turn (one swarm lifecycle at a time), and they touch only the services, networks, containers and images
//! they created (unique names), removed on drop, failure or not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::docker::{DockerSocketProxy, TestImage};
use crate::support::{eventually, get, Backend, TestProxy};
use http::StatusCode;
use reveille::{Config, ContainerRuntime, ContainerState, DockerEndpoint, RuntimeConfig, RuntimeKind, SwarmRuntime};

const LONG: Duration = Duration::from_secs(30);

/// Held for a whole test: one joins and leaves the swarm while the other waits.
static SWARM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const T: Duration = Duration::from_secs(10);

fn docker(args: &[&str]) -> Result<String, String> {
    testkit::docker::docker(args)
}

/// The node as a swarm manager for the test's duration; it leaves the swarm on drop only if it joined it.
struct Swarm {
    created: bool,
}

impl Swarm {
    fn join() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
        if state == "active" {
            let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]).unwrap();
            assert_eq!(manager, "true", "this node is in a swarm but not a manager: cannot run services");
            return Swarm { created: false };
        }
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).unwrap();
        Swarm { created: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.created {
            let _ = docker(&["swarm", "leave", "--force"]);
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// busybox httpd serving /www on 8080.
const WEB: &[&str] = &["httpd", "-f", "-p", "8080", "-h", "/www"];

/// A replicated service of the test image, 0 replicas, running `busybox <command>` (e.g. [`WEB`]) with 8080
/// published in host mode on `port`.
struct TestService {
    name: String,
    port: u16,
}

impl TestService {
    fn create(image: &TestImage, port: u16, options: &[&str], command: &[&str]) -> TestService {
        let name = format!("reveille-test-swarm-{}-{port}", std::process::id());
        let publish = format!("mode=host,target=8080,published={port}");
        let service = TestService { name: name.clone(), port };
        let mut create = vec![
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--replicas",
            "0",
            "--no-resolve-image",
            "--publish",
            &publish,
            "--stop-grace-period",
            "1s",
        ];
        create.extend_from_slice(options);
        create.push(&image.tag);
        create.extend_from_slice(command);
        docker(&create).unwrap();
        service
    }

    fn replicas(&self) -> String {
        docker(&["service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", &self.name]).unwrap()
    }

    /// What a scale must leave as it was: the task template and the published ports.
    fn template(&self) -> String {
        docker(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate}} {{json .Spec.EndpointSpec}}",
            &self.name,
        ])
        .unwrap()
    }

    /// The ids of the service's task containers that run.
    fn running_containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.name);
        docker(&["ps", "-q", "--filter", &filter]).unwrap().lines().map(str::to_string).collect()
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.name]);
        // The tasks' containers go after the service: wait for them, so the image can be removed next.
        let filter = format!("label=com.docker.swarm.service.name={}", self.name);
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            match docker(&["ps", "-aq", "--filter", &filter]) {
                Ok(ids) if ids.is_empty() => break,
                Err(_) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The config's runtime `swarm`: the Swarm manager at `endpoint`.
fn on_swarm(config: &mut Config, endpoint: DockerEndpoint) {
    config.passivation.runtimes.insert("swarm".into(), RuntimeConfig { kind: RuntimeKind::Swarm, endpoint });
}

/// A port free on this machine now, for the service to publish, taken outside the kernel's ephemeral range: the
/// service publishes it only when it is scaled up, seconds later, and a port from `bind(0)` could meanwhile be
/// the local port of any other test's outgoing connection or listener (a run failed so, Docker's `address
/// already in use`). Outside that range only a port someone names is taken. Below the range if there is room
/// (Linux's default range starts at 32768), else above it.
fn free_port() -> u16 {
    use std::sync::Mutex;
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut bounds = r.split_whitespace().map(|b| b.parse::<u32>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let (first, span) = if low > 21_000 { (20_000, low - 20_000) } else { (high + 1, 65_535 - high) };
    assert!(span >= 100, "no room outside the ephemeral range {low}-{high} for a port to publish");
    // Each call starts past the last one's port (the services do not bind theirs before they are scaled up);
    // where the first starts depends on the process, scattered, so that two runs on one machine try different
    // ports.
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let start = next.unwrap_or(std::process::id().wrapping_mul(2_654_435_761) % span);
    let offset = (0..span)
        .map(|i| (start + i) % span)
        .find(|&o| std::net::TcpListener::bind(("0.0.0.0", (first + o) as u16)).is_ok())
        .expect("a free port outside the ephemeral range");
    *next = Some((offset + 1) % span);
    (first + offset) as u16
}

/// From the call that scales the service up to the first answer of its application on its published port: the
/// scale, Swarm's `running` for the task (a task is polled every 20 ms), then `GET` every 5 ms, each try bounded
/// (Docker's userland proxy may accept before the application listens, then hold the connection). What reveille
/// does, without reveille.
async fn direct_cold_start(rt: &SwarmRuntime, service: &TestService) -> Duration {
    let begin = Instant::now();
    rt.scale_up(&service.name, 1).await.unwrap();
    loop {
        if tokio::time::timeout(Duration::from_millis(100), http_ok(service.port)).await == Ok(true) {
            return begin.elapsed();
        }
        assert!(begin.elapsed() < LONG, "the service never answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True when `GET /index.html` on 127.0.0.1:`port` answers 200.
async fn http_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_service_is_scaled_up_on_request_and_down_when_idle() {
    // Drop order (reverse of declaration): reveille, the service, the image, the swarm, then the lock.
    let _lock = SWARM_LOCK.lock().await;
    let swarm = Swarm::join();
    let image = TestImage::build();
    let service = TestService::create(&image, free_port(), &[], WEB);
    let created = service.template();
    let no_restart = TestService::create(&image, free_port(), &["--restart-condition", "none"], WEB);
    let crashing = TestService::create(&image, free_port(), &[], &["false"]);
    let pair = TestService::create(&image, free_port(), &[], WEB);
    let mut socket = DockerSocketProxy::start();
    let endpoint = DockerEndpoint::plain(Some(socket.endpoint()));
    let rt = SwarmRuntime::new(endpoint.clone(), T);
    let other = Backend::fixed("other").await;
    let missing = format!("{}-missing", service.name);
    let routes = format!(
        "[services.shop]\nswarm_service = \"{}\"\nruntime = \"swarm\"\nidle_timeout = \"2s\"\nwake_timeout = \"20s\"\n\
         health_path = \"/index.html\"\n\
         [services.gone]\nswarm_service = \"{missing}\"\nruntime = \"swarm\"\n\
         [services.once]\nswarm_service = \"{}\"\nruntime = \"swarm\"\n\
         [services.crash]\nswarm_service = \"{}\"\nruntime = \"swarm\"\nhealth_path = \"/\"\n\
         [services.pair]\nswarm_service = \"{}\"\nruntime = \"swarm\"\nreplicas = 2\n\
         [services.other]\nbackends = [\"{}\"]\n\
         [routes]\n\"shop.test\" = \"shop\"\n\"gone.test\" = \"gone\"\n\"once.test\" = \"once\"\n\
         \"crash.test\" = \"crash\"\n\"pair.test\" = \"pair\"\n\
         \"other.test\" = \"other\"\n",
        service.name, no_restart.name, crashing.name, pair.name, other.addr
    );

    // The runtime's own view: scaled to 0 is stopped, and the node's address is where its port is published.
    let info = rt.inspect(&service.name, None).await.unwrap();
    assert_eq!(info.state, ContainerState::Stopped);
    assert_eq!(info.ip, Some([127, 0, 0, 1].into()));
    let published = info.published.expect("a swarm service reports its published ports");
    assert_eq!(published.len(), 1);
    assert_eq!((published[0].target, published[0].published), (8080, service.port));
    assert!(rt.pause(&service.name).await.unwrap_err().to_string().contains("cannot be paused"));

    let proxy = TestProxy::start_custom(&routes, |c| on_swarm(c, endpoint)).await;

    // A request to the sleeping service scales it to 1 and is served by it.
    let r = get(proxy.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::OK, "{}: {}", r.text, proxy.service_view("shop").await);
    assert!(r.text.contains(&format!("hello from {}", image.tag)), "{}", r.text);
    assert_eq!(service.replicas(), "1");
    assert_eq!(service.running_containers().len(), 1);
    assert_eq!(service.template(), created, "scaling changed nothing else in the service's spec");
    let view = proxy.service_view("shop").await;
    assert_eq!(
        (&view["state"], &view["swarm_service"], &view["replicas"]),
        (&"running".into(), &service.name.as_str().into(), &1.into()),
        "{view}"
    );

    // Idle for 2 s: scaled back to 0, its task gone.
    eventually(LONG, "shop scaled to 0", || async { service.replicas() == "0" }).await;
    eventually(LONG, "shop's task stopped", || async { service.running_containers().is_empty() }).await;
    eventually(LONG, "shop stopped", || async { proxy.service_view("shop").await["state"] == "stopped" }).await;

    // Woken again.
    let r = get(proxy.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(service.replicas(), "1");

    // Scaled to 0 behind reveille's back: its task's events make the tenant re-inspect and see it stopped.
    docker(&["service", "scale", "--detach", &format!("{}=0", service.name)]).unwrap();
    eventually(LONG, "shop seen stopped", || async { proxy.service_view("shop").await["state"] == "stopped" }).await;
    let r = get(proxy.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::OK, "woken after an outside scale to 0: {}", r.text);

    // A service the swarm does not have: a clear 503, naming nothing internal; other routes keep serving.
    let r = get(proxy.http, "gone.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(!r.text.contains(&missing), "the body names nothing internal: {}", r.text);
    let view = proxy.service_view("gone").await;
    assert!(view["last_error"].as_str().unwrap_or_default().contains("no such"), "{view}");
    assert_eq!(get(proxy.http, "other.test", "/").await.status, StatusCode::OK);
    // A service Swarm would not run again after a scale to 0 (`--restart-condition none`) is refused, with why.
    let r = get(proxy.http, "once.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let view = proxy.service_view("once").await;
    assert!(view["last_error"].as_str().unwrap_or_default().contains("restart condition is `none`"), "{view}");
    assert_eq!(no_restart.replicas(), "0");
    // A service whose task exits at once: the wake fails with Swarm's error for the task, not at the timeout.
    let begin = Instant::now();
    let r = get(proxy.http, "crash.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(begin.elapsed() < Duration::from_secs(15), "failed with the task, not after the wake timeout");
    let view = proxy.service_view("crash").await;
    let error = view["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("exit"), "Swarm's error for the task: {view}");
    // Two replicas publishing one host-mode port on one node: the second cannot be placed. Said at once, and the
    // service is scaled back to 0.
    let begin = Instant::now();
    let r = get(proxy.http, "pair.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(begin.elapsed() < Duration::from_secs(15), "failed with the task, not after the wake timeout");
    let view = proxy.service_view("pair").await;
    assert!(view["last_error"].as_str().unwrap_or_default().contains("Swarm cannot place its task"), "{view}");
    assert_eq!(pair.replicas(), "0", "scaled back to 0");

    // The swarm unreachable: a wake fails at once with 503, the others keep serving; reachable again, it wakes.
    eventually(LONG, "shop scaled to 0", || async { service.replicas() == "0" }).await;
    eventually(LONG, "shop stopped", || async { proxy.service_view("shop").await["state"] == "stopped" }).await;
    socket.cut();
    let begin = Instant::now();
    let r = get(proxy.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(begin.elapsed() < Duration::from_secs(5), "failed at once, not after the wake timeout");
    assert_eq!(get(proxy.http, "other.test", "/").await.status, StatusCode::OK);
    socket.restore();
    eventually(LONG, "shop served again", || async {
        get(proxy.http, "shop.test", "/index.html").await.status == StatusCode::OK
    })
    .await;

    // The figure: Swarm's scale → first accept, against a wake through reveille, alternately, three of each; on
    // the Docker socket itself (the forwarder above would slow reveille's calls, not Swarm's).
    drop(proxy);
    let direct_rt = Arc::new(SwarmRuntime::new(DockerEndpoint::plain(None), T));
    let routes = format!(
        "[services.shop]\nswarm_service = \"{}\"\nruntime = \"swarm\"\nidle_timeout = \"1s\"\n\
         health_path = \"/index.html\"\n\
         [routes]\n\"shop.test\" = \"shop\"\n",
        service.name
    );
    let proxy = TestProxy::start_custom(&routes, |c| on_swarm(c, DockerEndpoint::plain(None))).await;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let mut phases = Vec::new();
    for _ in 0..3 {
        let stopped = || async {
            service.running_containers().is_empty() && proxy.service_view("shop").await["state"] == "stopped"
        };
        eventually(LONG, "shop stopped", stopped).await;
        direct.push(direct_cold_start(&direct_rt, &service).await);
        direct_rt.scale_down(&service.name, None).await.unwrap();
        eventually(LONG, "shop stopped", stopped).await;
        let begin = Instant::now();
        assert_eq!(get(proxy.http, "shop.test", "/index.html").await.status, StatusCode::OK);
        proxied.push(begin.elapsed());
        phases.push(proxy.service_view("shop").await["last_wake"].clone());
    }
    direct.sort();
    proxied.sort();
    eprintln!(
        "swarm cold start: scale → first answer {direct:?}; through reveille {proxied:?}; overhead of the medians \
         {:?}; reveille's wake phases: {phases:?}",
        proxied[1].saturating_sub(direct[1])
    );
    let _ = &swarm;
}

/// An attachable overlay network, removed on drop.
struct Overlay {
    name: String,
}

impl Overlay {
    fn create() -> Overlay {
        let name = format!("reveille-test-overlay-{}", std::process::id());
        if let Err(e) = docker(&["network", "create", "-d", "overlay", "--attachable", &name]) {
            panic!("overlay networks do not work here: {e}");
        }
        Overlay { name }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

impl TestService {
    /// A replicated service of the test image on `network`, 0 replicas, publishing no port, running
    /// `busybox <command>`.
    fn on_network(image: &TestImage, network: &str, command: &[&str]) -> TestService {
        let name = format!("reveille-test-swarm-{}-overlay", std::process::id());
        let service = TestService { name: name.clone(), port: 0 };
        let mut create = vec![
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--replicas",
            "0",
            "--no-resolve-image",
            "--network",
            network,
            "--stop-grace-period",
            "1s",
            &image.tag,
        ];
        create.extend_from_slice(command);
        docker(&create).unwrap();
        service
    }

    /// The address on `network` of its running task (`NetworksAttachments`, without the prefix length).
    fn task_address(&self, network: &str) -> String {
        let task = docker(&["service", "ps", "-q", "--filter", "desired-state=running", &self.name]).unwrap();
        let task = task.lines().next().expect("a running task");
        let format = format!(
            "{{{{range .NetworksAttachments}}}}{{{{if eq .Network.Spec.Name \"{network}\"}}}}{{{{index .Addresses \
             0}}}}{{{{end}}}}{{{{end}}}}"
        );
        let address = docker(&["inspect", "--format", &format, task]).unwrap();
        address.split('/').next().unwrap().to_string()
    }
}

/// reveille's debug binary in a container: a `FROM scratch` image with the binary, its `ldd` libraries, its
/// config and routes; the Docker socket mounted; on `network` and on the default bridge, its proxy and admin
/// ports published on 127.0.0.1. The container and the image are removed on drop.
struct ReveilleContainer {
    name: String,
    image: String,
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl ReveilleContainer {
    fn start(network: &str, config: &str, routes: &str) -> ReveilleContainer {
        let pid = std::process::id();
        let (http, admin) = (free_port(), free_port());
        let rev = ReveilleContainer {
            name: format!("reveille-test-swarm-proxy-{pid}"),
            image: format!("reveille-test-swarm-proxy-image-{pid}"),
            http: ([127, 0, 0, 1], http).into(),
            admin: ([127, 0, 0, 1], admin).into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay");
        testkit::docker::copy_binary(&overlay, std::path::Path::new(env!("CARGO_BIN_EXE_reveille")), "/reveille")
            .unwrap();
        std::fs::create_dir_all(overlay.join("etc/reveille")).unwrap();
        std::fs::write(overlay.join("etc/reveille/reveille.toml"), config).unwrap();
        std::fs::write(overlay.join("etc/reveille/routes.toml"), routes).unwrap();
        let build = testkit::docker::BusyboxImage { tag: &rev.image, overlay: true, no_cache: true };
        build.build(dir.path()).unwrap_or_else(|e| panic!("building reveille's image: {e}"));
        let (http_publish, admin_publish) = (format!("127.0.0.1:{http}:8080"), format!("127.0.0.1:{admin}:9090"));
        docker(&[
            "create",
            "--name",
            &rev.name,
            "-p",
            &http_publish,
            "-p",
            &admin_publish,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "--entrypoint",
            "/reveille",
            &rev.image,
            "serve",
            "--config",
            "/etc/reveille/reveille.toml",
            "--routes",
            "/etc/reveille/routes.toml",
            "--http",
            "0.0.0.0:8080",
            "--admin",
            "0.0.0.0:9090",
        ])
        .unwrap();
        docker(&["network", "connect", network, &rev.name]).unwrap();
        docker(&["start", &rev.name]).unwrap();
        rev
    }

    fn logs(&self) -> String {
        let out = std::process::Command::new("docker").args(["logs", "--tail", "40", &self.name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    async fn service_view(&self, name: &str) -> serde_json::Value {
        let r = get(self.admin, &self.admin.to_string(), "/api/services").await;
        let v: serde_json::Value = serde_json::from_str(&r.text).unwrap_or_default();
        v["services"][name].clone()
    }
}

impl Drop for ReveilleContainer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("reveille's log:\n{}", self.logs());
        }
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_service_on_an_overlay_network_is_reached_at_its_task_address() {
    // Drop order (reverse of declaration): reveille's container and image, the service, the network, the test
    // image, the swarm, then the lock.
    let _lock = SWARM_LOCK.lock().await;
    let _swarm = Swarm::join();
    let image = TestImage::build();
    let network = Overlay::create();
    let service = TestService::on_network(&image, &network.name, WEB);
    let config = "[runtimes.swarm]\nkind = \"swarm\"\nendpoint = \"unix:///var/run/docker.sock\"\n";
    let routes = format!(
        "[services.shop]\nswarm_service = \"{}\"\nruntime = \"swarm\"\nswarm_network = \"{}\"\nport = 8080\n\
         idle_timeout = \"2s\"\nwake_timeout = \"20s\"\nhealth_path = \"/index.html\"\n\
         [routes]\n\"shop.test\" = \"shop\"\n",
        service.name, network.name
    );
    let reveille = ReveilleContainer::start(&network.name, config, &routes);

    // Listening: a host it has no route for is answered (Docker's proxy accepts before reveille listens).
    eventually(LONG, "reveille answering in its container", || async {
        let req = http::Request::get("/").header("host", "none.test").body(crate::support::full("")).unwrap();
        testkit::http::send(reveille.http, req).await.is_ok()
    })
    .await;
    assert_eq!(service.replicas(), "0");

    // A request scales the service to 1 and is served by its task, over the overlay network.
    let r = get(reveille.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::OK, "{}: {}\n{}", r.text, reveille.service_view("shop").await, reveille.logs());
    assert!(r.text.contains(&format!("hello from {}", image.tag)), "{}", r.text);
    assert_eq!(service.replicas(), "1");
    let address = service.task_address(&network.name);
    let view = reveille.service_view("shop").await;
    assert!(view.to_string().contains(&format!("{address}:8080")), "the task's overlay address: {view}");
    assert_eq!(view["swarm_network"], network.name.as_str(), "{view}");

    // Idle for 2 s: scaled back to 0, its task gone.
    eventually(LONG, "shop scaled to 0", || async { service.replicas() == "0" }).await;
    eventually(LONG, "shop's task stopped", || async { service.running_containers().is_empty() }).await;
    eventually(LONG, "shop stopped", || async { reveille.service_view("shop").await["state"] == "stopped" }).await;

    // Woken again, by a new task (a new address, maybe).
    let r = get(reveille.http, "shop.test", "/index.html").await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text, reveille.logs());
    assert_eq!(service.replicas(), "1");
}
