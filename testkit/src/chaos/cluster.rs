//! The chaos run's topology: a three-member etcd, reveille replicas and busybox tenants as containers on two
//! private Docker networks the run creates (`<id>-clients`: the host, the replicas and the tenants; `<id>-etcd`:
//! the replicas and the members), and the relays on the host through which each replica reaches etcd. It owns
//! creating them and removing them (on drop, also while unwinding, and a sweep of a dead run's leftovers by
//! label at start); it does not inject faults (`faults.rs`) nor send requests (`workload.rs`).
//!
//! No image can be pulled, and reveille and etcd link glibc dynamically: every container runs the one busybox
//! image `FROM scratch` ([`BusyboxImage`]), with the programs (the reveille binary, `/usr/bin/etcd`) and the
//! host's `/usr/lib`, `/usr/lib64` bind-mounted read-only (`/lib` and `/lib64` are links to them on this host,
//! and the binaries' loader path is `/lib64/ld-linux-x86-64.so.2`). One image instead of a marker-only one for
//! the programs: the tenants need busybox anyway, and one build is one less thing to remove.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::docker::BusyboxImage;

/// The label every container and network of a chaos run carries, valued with the run's id.
pub const LABEL: &str = "reveille-chaos";
/// The label holding the pid of the process that made a thing: the sweep removes those whose process is gone.
pub const PID_LABEL: &str = "reveille-chaos-pid";

/// The port reveille's proxy listens on in its container. Not the tenants' port: Docker gives a killed replica's
/// address to the next container started on the network (a tenant woken meanwhile), and the restarted replica a
/// new one; a request sent to the old address must then be refused, not answered by the tenant itself behind
/// every replica's back. With one port for both, the chaos long run took such answers for requests served by
/// the restarted replica, and the tenant's stop 2 s later for a stop under use (seed 2913, 2026-12-06).
pub const HTTP_PORT: u16 = 8081;
/// The port reveille's admin API listens on in its container.
pub const ADMIN_PORT: u16 = 9090;
/// The tenants' HTTP port (busybox httpd).
pub const TENANT_PORT: u16 = 8080;
/// etcd's client port in its container.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port in its container.
pub const ETCD_PEER_PORT: u16 = 2380;

/// Runs the docker CLI: its trimmed stdout, or why it failed.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A container's last `n` log lines (stdout and stderr: etcd logs to stderr).
pub async fn logs(container: &str, n: usize) -> String {
    let out = tokio::process::Command::new("docker").args(["logs", "--tail", &n.to_string(), container]).output().await;
    match out {
        Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("docker logs {container}: {e}"),
    }
}

/// What the topology is made of.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// The reveille binary bind-mounted into the replicas (the tests' debug build, the lab's release build).
    pub reveille: PathBuf,
    /// Replica node names (also the containers' suffixes).
    pub replicas: Vec<String>,
    /// Tenant service names; each is a busybox httpd container routed at `<name>.chaos`.
    pub tenants: Vec<String>,
    /// The tenants' idle timeout.
    pub idle_timeout: Duration,
    /// The replicas' `--lease-ttl`.
    pub lease_ttl: Duration,
}

/// The host a tenant is routed at.
pub fn tenant_host(tenant: &str) -> String {
    format!("{tenant}.chaos")
}

/// The etcd members' names.
pub const MEMBERS: [&str; 3] = ["e1", "e2", "e3"];

/// A run's containers, networks, image and relays; dropping it removes them all.
pub struct Topology {
    /// The run's id: every name starts with it.
    pub id: String,
    pub config: TopologyConfig,
    image: String,
    /// The etcd network's gateway: the host's address there, where the relays listen.
    pub etcd_gateway: IpAddr,
    /// Per replica, its relays' state (one relay per member).
    pub relays: HashMap<String, Arc<RelayControl>>,
    /// (replica, member) → the relay's address on the host.
    relay_addrs: HashMap<(String, String), SocketAddr>,
    relay_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The members' data dirs (bind-mounted, so a restarted member keeps its data; tmpfs would not).
    data: tempfile::TempDir,
    /// Set once the things exist, so that drop does not list what a failed start never made.
    made: bool,
}

/// What a replica's etcd relays do, changed by the faults.
#[derive(Debug, Default)]
pub struct RelayControl {
    /// Added to every chunk in both directions (the latency fault: this kernel has no netem).
    pub delay_ms: AtomicU64,
    /// Per member index: forward nothing (a partition keeping the replica with a minority member).
    pub blocked: [AtomicBool; 3],
}

impl Topology {
    /// The container's name for `what` (a replica, member or tenant name).
    pub fn container(&self, what: &str) -> String {
        format!("{}-{what}", self.id)
    }

    pub fn clients_network(&self) -> String {
        format!("{}-clients", self.id)
    }

    pub fn etcd_network(&self) -> String {
        format!("{}-etcd", self.id)
    }

    /// Creates everything: image, networks, the etcd cluster (waits for a leader), the routes and services, the
    /// relays, the tenants (created, not started: reveille starts them) and the replicas (waits until each
    /// answers and has loaded every route, and a decider is elected).
    pub async fn up(config: TopologyConfig) -> Result<Topology, String> {
        sweep().await;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let id = format!("chaos-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let data = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut topo = Topology {
            image: format!("{id}-image"),
            id,
            config,
            etcd_gateway: IpAddr::from([0, 0, 0, 0]),
            relays: HashMap::new(),
            relay_addrs: HashMap::new(),
            relay_tasks: Vec::new(),
            data,
            made: true,
        };
        topo.build().await?;
        Ok(topo)
    }

    async fn build(&mut self) -> Result<(), String> {
        let ctx = self.data.path().join("image");
        let tag = self.image.clone();
        tokio::task::spawn_blocking(move || BusyboxImage { tag: &tag, overlay: false, no_cache: true }.build(&ctx))
            .await
            .map_err(|e| e.to_string())??;
        let labels = self.labels();
        for net in [self.clients_network(), self.etcd_network()] {
            let mut args = vec!["network", "create"];
            args.extend(labels.iter().map(String::as_str));
            args.push(&net);
            docker(&args).await?;
        }
        let gw =
            docker(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", &self.etcd_network()]).await?;
        self.etcd_gateway = gw.parse().map_err(|e| format!("the etcd network's gateway {gw:?}: {e}"))?;

        self.start_etcd().await?;
        self.define_tenants().await?;
        self.start_relays().await?;
        for tenant in self.config.tenants.clone() {
            let script = crate::docker::web_script();
            let name = self.container(&tenant);
            let mut args = vec!["create", "--name", &name, "--network"];
            let net = self.clients_network();
            args.push(&net);
            args.extend(labels.iter().map(String::as_str));
            args.extend([self.image.as_str(), "sh", "-c", &script]);
            docker(&args).await?;
        }
        for replica in self.config.replicas.clone() {
            self.create_replica(&replica).await?;
        }
        for replica in self.config.replicas.clone() {
            self.wait_replica(&replica, Duration::from_secs(30)).await?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.decider().await.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err("no decider elected within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{LABEL}={}", self.id),
            "--label".into(),
            format!("{PID_LABEL}={}", std::process::id()),
        ]
    }

    /// The bind mounts every program container needs: the host's libraries.
    fn lib_mounts() -> Vec<String> {
        ["-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro"].map(String::from).to_vec()
    }

    async fn start_etcd(&mut self) -> Result<(), String> {
        let cluster: Vec<String> =
            MEMBERS.iter().map(|m| format!("{m}=http://{}:{ETCD_PEER_PORT}", self.container(m))).collect();
        let cluster = cluster.join(",");
        for m in MEMBERS {
            let dir = self.data.path().join(m);
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let name = self.container(m);
            let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
            args.extend(self.labels());
            args.extend(["--network".into(), self.etcd_network()]);
            args.extend(Self::lib_mounts());
            args.extend(["-v".into(), format!("{}:/data", dir.display())]);
            args.extend(["-v".into(), format!("{}:/etcd:ro", crate::etcd::ETCD)]);
            // The image's entrypoint is busybox.
            args.extend(["--entrypoint".into(), "/etcd".into(), self.image.clone()]);
            args.extend(
                [
                    "--name",
                    m,
                    "--data-dir",
                    "/data/member",
                    "--listen-client-urls",
                    &format!("http://0.0.0.0:{ETCD_CLIENT_PORT}"),
                    "--advertise-client-urls",
                    &format!("http://{name}:{ETCD_CLIENT_PORT}"),
                    "--listen-peer-urls",
                    &format!("http://0.0.0.0:{ETCD_PEER_PORT}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{name}:{ETCD_PEER_PORT}"),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    &self.id,
                    "--initial-cluster-state",
                    "new",
                ]
                .map(String::from),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker(&args).await?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.leader().await.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let logs = logs(&self.container("e1"), 20).await;
                return Err(format!("the etcd cluster elected no leader within 30 s; e1's log:\n{logs}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A container's address on `network`, if it is attached and running.
    pub async fn ip(&self, container: &str, network: &str) -> Option<IpAddr> {
        let format = format!("{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}");
        docker(&["inspect", "-f", &format, container]).await.ok()?.parse().ok()
    }

    /// A member's client URL as the host reaches it (its address on the etcd network).
    pub async fn member_url(&self, member: &str) -> Option<String> {
        let ip = self.ip(&self.container(member), &self.etcd_network()).await?;
        Some(format!("http://{ip}:{ETCD_CLIENT_PORT}"))
    }

    /// A client of the members that are up, each call connecting afresh (a restarted member may have a new
    /// address), within `timeout`.
    pub async fn etcd_client(&self, timeout: Duration) -> Option<etcd_client::Client> {
        let mut urls = Vec::new();
        for m in MEMBERS {
            if let Some(url) = self.member_url(m).await {
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return None;
        }
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        etcd_client::Client::connect(urls, Some(options)).await.ok()
    }

    /// The member that leads now, asked of each member itself.
    pub async fn leader(&self) -> Option<String> {
        let mut ids = HashMap::new();
        let mut leader = None;
        for m in MEMBERS {
            let Some(url) = self.member_url(m).await else { continue };
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_millis(500));
            let Ok(mut c) = etcd_client::Client::connect([url], Some(options)).await else { continue };
            let Ok(status) = c.status().await else { continue };
            if let Some(h) = status.header() {
                ids.insert(h.member_id(), m);
            }
            if status.leader() != 0 && status.raft_index() > 0 {
                leader = Some(status.leader());
            }
        }
        ids.get(&leader?).map(|m| m.to_string())
    }

    /// Writes every tenant's service and route.
    async fn define_tenants(&self) -> Result<(), String> {
        let mut c = self.etcd_client(Duration::from_secs(5)).await.ok_or("no etcd member reachable")?;
        for t in &self.config.tenants {
            let service = serde_json::json!({
                "container": self.container(t),
                "port": TENANT_PORT,
                "network": self.clients_network(),
                "idle_timeout": format!("{}ms", self.config.idle_timeout.as_millis()),
            });
            let route = serde_json::json!({ "service": t });
            c.put(format!("/reveille/services/{t}"), service.to_string(), None)
                .await
                .map_err(|e| format!("put the service {t}: {e}"))?;
            c.put(format!("/reveille/routes/{}", tenant_host(t)), route.to_string(), None)
                .await
                .map_err(|e| format!("put the route of {t}: {e}"))?;
        }
        Ok(())
    }

    /// The decider key's value.
    pub async fn decider(&self) -> Option<String> {
        let mut c = self.etcd_client(Duration::from_secs(1)).await?;
        let r = c.get("/reveille/cluster/decider", None).await.ok()?;
        r.kvs().first().and_then(|kv| kv.value_str().ok()).map(str::to_string)
    }

    async fn start_relays(&mut self) -> Result<(), String> {
        for replica in &self.config.replicas {
            let control = Arc::new(RelayControl::default());
            for (i, m) in MEMBERS.iter().enumerate() {
                let listener = TcpListener::bind((self.etcd_gateway, 0))
                    .await
                    .map_err(|e| format!("bind a relay on {}: {e}", self.etcd_gateway))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                self.relay_addrs.insert((replica.clone(), m.to_string()), addr);
                let relay = Relay {
                    control: control.clone(),
                    member: i,
                    container: self.container(m),
                    network: self.etcd_network(),
                };
                self.relay_tasks.push(tokio::spawn(relay.run(listener)));
            }
            self.relays.insert(replica.clone(), control);
        }
        Ok(())
    }

    /// Creates a replica: `reveille serve` on both networks, its etcd endpoints the relays, the Docker socket;
    /// then starts it.
    async fn create_replica(&self, replica: &str) -> Result<(), String> {
        let name = self.container(replica);
        let urls: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("http://{}", self.relay_addrs[&(replica.to_string(), m.to_string())]))
            .collect();
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), name.clone()];
        args.extend(self.labels());
        args.extend(["--network".into(), self.clients_network()]);
        args.extend(Self::lib_mounts());
        args.extend(["-v".into(), format!("{}:/reveille:ro", self.config.reveille.display())]);
        args.extend(["-v".into(), "/var/run/docker.sock:/var/run/docker.sock".into()]);
        // `CHAOS_LOG` sets the replicas' log filter (a long run chasing a violation wants the cluster's and the
        // tenants' debug lines).
        let filter = std::env::var("CHAOS_LOG").unwrap_or_else(|_| "info,reveille::access=off".into());
        args.extend(["-e".into(), format!("RUST_LOG={filter}")]);
        args.extend(["--entrypoint".into(), "/reveille".into(), self.image.clone()]);
        args.extend(
            [
                "serve",
                "--http",
                &format!("0.0.0.0:{HTTP_PORT}"),
                "--admin",
                &format!("0.0.0.0:{ADMIN_PORT}"),
                "--log-format",
                "json",
                "--etcd",
                &urls.join(","),
                "--node",
                replica,
                "--lease-ttl",
                &format!("{}ms", self.config.lease_ttl.as_millis()),
                "--activity-interval",
                "200ms",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).await?;
        docker(&["network", "connect", &self.etcd_network(), &name]).await?;
        docker(&["start", &name]).await?;
        Ok(())
    }

    /// A replica's proxy address, as the host reaches it.
    pub async fn replica_http(&self, replica: &str) -> Option<SocketAddr> {
        let ip = self.ip(&self.container(replica), &self.clients_network()).await?;
        Some(SocketAddr::new(ip, HTTP_PORT))
    }

    /// Waits until the replica answers `/healthz` and routes every tenant.
    pub async fn wait_replica(&self, replica: &str, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(addr) = self.replica_http(replica).await {
                let mut all = true;
                for t in &self.config.tenants {
                    let got = request(addr, &tenant_host(t), "/__reveille/status", Duration::from_secs(1)).await;
                    all &= matches!(got, Ok((200, _, _)));
                }
                if all {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                let logs = logs(&self.container(replica), 30).await;
                return Err(format!("replica {replica} not routing within {within:?}; its log:\n{logs}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The data dir of the run (for the history file).
    pub fn dir(&self) -> &Path {
        self.data.path()
    }

    /// Removes every container, network and the image (also what a failed start made).
    pub fn remove(&mut self) {
        if !std::mem::take(&mut self.made) {
            return;
        }
        for t in self.relay_tasks.drain(..) {
            t.abort();
        }
        remove_labelled(&format!("{LABEL}={}", self.id));
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the containers, then the networks, labelled `label` (blocking: it runs in drop).
fn remove_labelled(label: &str) {
    let ls = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let filter = format!("label={label}");
    let containers = ls(&["ps", "-aq", "--filter", &filter]);
    if !containers.is_empty() {
        // A paused container is removed by `rm -f` as well (it is killed first).
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        if let Err(e) = std::process::Command::new("docker").args(&args).output() {
            eprintln!("chaos cleanup: {e}");
        }
    }
    for net in ls(&["network", "ls", "-q", "--filter", &filter]) {
        let _ = std::process::Command::new("docker").args(["network", "rm", &net]).output();
    }
}

/// Removes what runs of processes that no longer exist left behind (a run killed by SIGKILL cannot clean up).
/// Another live process's run is left alone.
pub async fn sweep() {
    // The pids labelled on the runs' containers and networks.
    let labelled = |list: &'static [&'static str]| async move {
        let (filter, format) = (format!("label={LABEL}"), format!("{{{{.Label \"{PID_LABEL}\"}}}}"));
        let args: Vec<&str> = list.iter().copied().chain(["--filter", &filter, "--format", &format]).collect();
        docker(&args).await.unwrap_or_default()
    };
    let out = labelled(&["ps", "-a"]).await;
    let nets = labelled(&["network", "ls"]).await;
    let mut pids: Vec<&str> = out.lines().chain(nets.lines()).collect();
    pids.sort();
    pids.dedup();
    for pid in pids {
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("chaos: removing the leftovers of process {pid}");
        remove_labelled(&format!("{PID_LABEL}={pid}"));
        let images =
            docker(&["images", "-q", "--filter", &format!("reference=chaos-{pid}-*")]).await.unwrap_or_default();
        for image in images.lines() {
            let _ = docker(&["rmi", "-f", image]).await;
        }
    }
}

/// One GET with `Host: host`, on a new connection, within `timeout`: (status, reveille's own error reason if it
/// answered one, body).
pub async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Option<String>, bytes::Bytes), String> {
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, crate::http::send(addr, req)).await {
        Err(_) => Err(format!("timeout after {timeout:?}")),
        Ok(Err(e)) => Err(error_kind(&*e)),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            // reveille answers its own errors as text/plain with the reason as the body (src/proxy/error.rs);
            // busybox httpd's are HTML.
            let plain =
                resp.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
            let reason = (status >= 400 && plain)
                .then(|| String::from_utf8_lossy(resp.body()).lines().next().unwrap_or("").to_string());
            Ok((status, reason, resp.into_body()))
        }
    }
}

/// A short name for why a request got no answer: refused, reset, closed, or the error's text.
fn error_kind(e: &(dyn std::error::Error + 'static)) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused => "refused".into(),
                K::ConnectionReset => "reset".into(),
                K::TimedOut => "timeout".into(),
                K::HostUnreachable | K::NetworkUnreachable => "unreachable".into(),
                _ => format!("io: {io}"),
            };
        }
        src = s.source();
    }
    let text = e.to_string();
    if text.contains("connection closed") || text.contains("IncompleteMessage") {
        "closed".into()
    } else {
        text
    }
}

/// A TCP relay from a replica to one etcd member, on the host: the place where latency is added (this kernel
/// has no netem) and where a replica is kept with one member only.
struct Relay {
    control: Arc<RelayControl>,
    member: usize,
    container: String,
    network: String,
}

impl Relay {
    async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        loop {
            let Ok((downstream, _)) = listener.accept().await else { return };
            let this = this.clone();
            tokio::spawn(async move { this.serve(downstream).await });
        }
    }

    fn blocked(&self) -> bool {
        self.control.blocked[self.member].load(Ordering::Relaxed)
    }

    async fn serve(&self, downstream: TcpStream) {
        let _ = downstream.set_nodelay(true);
        if self.blocked() {
            // Black-holed: hold the connection, forward nothing, until the partition heals; then close it.
            self.hold(downstream).await;
            return;
        }
        // The member's address now: a restarted member may have a new one.
        let ip = {
            let format = format!(
                "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
                self.network
            );
            docker(&["inspect", "-f", &format, &self.container]).await.ok().and_then(|s| s.parse::<IpAddr>().ok())
        };
        let Some(ip) = ip else { return };
        let Ok(Ok(upstream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect((ip, ETCD_CLIENT_PORT))).await
        else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let (dr, dw) = downstream.into_split();
        let (ur, uw) = upstream.into_split();
        let up = self.pipe(dr, uw);
        let down = self.pipe(ur, dw);
        // Either direction ending (or a partition starting) ends both.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }

    async fn hold(&self, mut downstream: TcpStream) {
        let mut buf = [0u8; 4096];
        while self.blocked() {
            match tokio::time::timeout(Duration::from_millis(100), downstream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    }

    /// Copies `from` to `to`, each chunk delayed by the control's delay (a delay line: chunks keep their
    /// spacing, throughput is not cut); stops when the member is blocked, so that no byte is lost in a stream
    /// that would then go on corrupted.
    async fn pipe(&self, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let reader = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let due = tokio::time::Instant::now()
                            + Duration::from_millis(self.control.delay_ms.load(Ordering::Relaxed));
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let writer = async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        let cut = async {
            while !self.blocked() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = async { tokio::join!(reader, writer) } => {}
            _ = cut => {}
        }
    }
}
