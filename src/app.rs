//! Wiring: builds the route handle, metrics, readiness, the one etcd client, route sources, certificates,
//! passivation (on the container runtime it is given), proxy and admin servers from a [`Config`], runs them on
//! already-bound listeners, and shuts them down in order. Holds no logic of its own beyond that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::acme::{Acme, ChallengeWatcher, Store as AcmeStore};
use crate::admin::{self, AdminState};
use crate::cluster::Cluster;
use crate::config::{Config, Scheduler};
use crate::control::etcd::EtcdWatcher;
use crate::control::{file, Composer, Source};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::passivation::{NetProbe, Passivator};
use crate::proxy::{PlainHttp, Proxy, Redirect};
use crate::readiness::Readiness;
use crate::routes::DockerHostNames;
use crate::routes::RouteHandle;
use crate::runtime::{DockerEndpoint, LazyDocker, Runtimes};
use crate::tls::dir::DirWatcher;
use crate::tls::etcd::CertWatcher;
use crate::tls::{CertHook, CertStore, Source as CertSource, TlsAcceptor};

/// How often the certificate snapshot is checked for a certificate that became valid or expired.
const CERT_REFRESH: Duration = Duration::from_secs(30);

/// How long the access log's last lines may take to be written, at exit.
const ACCESS_LOG_CLOSE: Duration = Duration::from_secs(5);

/// Why reveille could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Routes(#[from] file::FileError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error("cannot start the proxy's worker threads: {0}")]
    Workers(std::io::Error),
}

/// The listeners reveille serves on. Tests bind `127.0.0.1:0` and pass them in.
pub struct Listeners {
    pub http: TcpListener,
    /// The HTTPS listener, when `config.https` is set.
    pub https: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let http = listen(config.http, LISTEN_BACKLOG).map_err(|source| StartError::Bind {
            addr: config.http,
            what: "http",
            source,
        })?;
        let https = match config.https {
            Some(addr) => {
                Some(listen(addr, LISTEN_BACKLOG).map_err(|source| StartError::Bind { addr, what: "https", source })?)
            }
            None => None,
        };
        let admin = TcpListener::bind(config.admin).await.map_err(|source| StartError::Bind {
            addr: config.admin,
            what: "admin",
            source,
        })?;
        Ok(Self { http, https, admin })
    }
}

/// The proxy's listen backlog. std's default (128) drops connections when thousands of clients arrive at once,
/// e.g. a burst of requests for a waking tenant; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with `SO_REUSEADDR` (a restart does not wait for old connections in TIME_WAIT) and `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A started reveille.
pub struct Running {
    pub http_addr: SocketAddr,
    /// The HTTPS listener's address, when there is one.
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The certificates in force, when there is an HTTPS listener.
    pub certs: Option<Arc<CertStore>>,
    pub routes: RouteHandle,
    pub metrics: Arc<Metrics>,
    /// The admin API's events feed (`/api/events`).
    pub events: Events,
    pub passivator: Arc<Passivator>,
    /// What `/readyz` reports; marked draining at shutdown.
    readiness: Readiness,
    proxy: Arc<Proxy>,
    /// Stops accepting and starts the drain.
    shutdown: CancellationToken,
    /// Stops the admin endpoint and route watchers, once the drain is over.
    background: CancellationToken,
    /// The accept loops (HTTP, and HTTPS if any).
    accept: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Closed last, so that every request's line is written before exit.
    access_log: AccessLog,
    /// Told when the shutdown begins, so its watchers do not warn of etcd stopping too.
    etcd: Option<crate::etcd::Etcd>,
}

/// The container runtimes the binary passivates tenants with: the default Docker Engine (`--docker`,
/// `[docker] endpoint`), each of `[docker.hosts]` and each of `[runtimes]`, each contacted only once a service
/// needs it.
pub fn docker(config: &Config) -> Runtimes {
    let p = &config.passivation;
    let default = LazyDocker::new(DockerEndpoint::plain(p.docker.clone()), p.docker_timeout);
    let mut runtimes = Runtimes::single(Arc::new(default));
    for (name, endpoint) in &p.docker_hosts {
        runtimes = runtimes.with(name.clone(), Arc::new(LazyDocker::new(endpoint.clone(), p.docker_timeout)));
    }
    for (name, r) in &p.runtimes {
        let runtime = crate::runtime::build_runtime(r.kind, &r.endpoint, p.docker_timeout);
        runtimes = runtimes.with_kind(name.clone(), r.kind, runtime);
    }
    runtimes
}

/// Loads the route sources and starts serving, waking and stopping tenants through `runtimes` (the binary
/// passes [`docker`]; tests may pass a scripted runtime, which is then the default host). A service may only
/// name a Docker host `runtimes` has. Fails (and serves nothing) if the initial routes are invalid.
pub async fn start(
    config: &Config,
    listeners: Listeners,
    runtimes: impl Into<Runtimes>,
) -> Result<Running, StartError> {
    let runtimes = runtimes.into();
    crate::open_files::raise();
    let routes = RouteHandle::new();
    let metrics = Arc::new(Metrics::new());
    // The admin API's events feed: the composer, the certificate store and the tenants publish to it.
    let events = Events::new();
    let access_log = AccessLog::open(config.proxy.access_log, &config.access_log, &metrics)?;
    let background = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut sources = Vec::new();
    if config.routes.is_some() {
        sources.push(Source::File);
    }
    if config.etcd.is_some() {
        sources.push(Source::Etcd);
    }
    let readiness = Readiness::new();
    let hosts = DockerHostNames::with_kinds(runtimes.names().filter_map(|n| Some((n, runtimes.kind(n)?))));
    let composer = Composer::new(
        routes.clone(),
        metrics.clone(),
        events.clone(),
        &sources,
        readiness.gate("route sources"),
        hosts,
    );
    // One etcd client for the route watcher, the certificate watcher and the status writer.
    let etcd = config.etcd.clone().map(crate::etcd::Etcd::new);

    if let Some(path) = &config.routes {
        let reading = file::Reading { settle: config.routes_settle, max_size: config.max_file_size };
        let mut watcher = file::FileWatcher::new(path.clone(), composer.clone(), metrics.clone(), reading);
        watcher.load()?;
        tasks.push(tokio::spawn(watcher.run(background.clone())));
    }
    if let Some(etcd) = &etcd {
        // Not awaited: reveille serves (the file's routes; other hosts 503 with `Retry-After`, as their routes may be
        // in etcd) and reports not-ready until etcd has loaded, instead of refusing to start when etcd is briefly
        // unreachable.
        let watcher = EtcdWatcher::new(etcd.clone(), composer.clone(), metrics.clone());
        tasks.push(tokio::spawn(watcher.run(background.clone())));
    }

    let http_addr =
        listeners.http.local_addr().map_err(|source| StartError::Bind { addr: config.http, what: "http", source })?;
    let admin_addr = listeners.admin.local_addr().map_err(|source| StartError::Bind {
        addr: config.admin,
        what: "admin",
        source,
    })?;

    // With etcd, this replica is one of a cluster (of one, or more): it coordinates wakes and stops with the
    // others. Without, it decides alone.
    let cluster = etcd.as_ref().map(|etcd| {
        Cluster::new(
            etcd.clone(),
            &config.passivation.node,
            config.cluster.clone(),
            config.activity_interval,
            metrics.cluster().clone(),
        )
    });
    let passivator = Passivator::new(
        config.passivation.clone(),
        runtimes,
        Arc::new(NetProbe::default()),
        &metrics,
        events.clone(),
        cluster.clone(),
    );
    tasks.push(tokio::spawn(passivator.clone().run(routes.clone(), background.clone())));
    tasks.push(tokio::spawn(crate::health_check::run(routes.clone(), background.clone())));
    if let Some(cluster) = cluster {
        tasks.push(tokio::spawn(cluster.run(background.clone())));
    }

    // TLS: the certificates are loaded before the HTTPS listener serves its first handshake.
    let https_addr = match &listeners.https {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
            addr: config.https.unwrap_or(config.http),
            what: "https",
            source,
        })?),
        None => None,
    };
    let mut tls = None;
    let mut challenges = None;
    if https_addr.is_some() {
        // Readiness waits for etcd's certificates too: a replica must not take traffic it would refuse.
        let etcd_certs = config.etcd.is_some() && config.tls.etcd;
        let awaited: &[CertSource] = if etcd_certs { &[CertSource::Etcd] } else { &[] };
        let store = CertStore::new(
            config.tls.default_cert.clone(),
            metrics.tls().clone(),
            events.clone(),
            awaited,
            readiness.gate("certificates"),
        );
        tasks.push(tokio::spawn(store.clone().run_refresh(CERT_REFRESH, background.clone())));
        if let Some(dir) = &config.tls.certs_dir {
            let mut watcher = DirWatcher::new(dir.clone(), store.clone(), metrics.tls().clone(), config.max_file_size);
            let n = watcher.load()?;
            info!(dir = %dir.display(), certificates = n, "certificates directory loaded");
            tasks.push(tokio::spawn(watcher.run(background.clone())));
        }
        if let (Some(etcd), true) = (&etcd, etcd_certs) {
            let watcher = CertWatcher::new(etcd.clone(), store.clone(), metrics.tls().clone());
            tasks.push(tokio::spawn(watcher.run(background.clone())));
        }
        let mut hook: Option<Arc<dyn CertHook>> = None;
        if let Some(settings) = &config.acme {
            // Certificates go where this replica's certificate sources load them: etcd, else the directory.
            let acme_store = match (&etcd, &config.tls.certs_dir) {
                (Some(etcd), _) => AcmeStore::Etcd(etcd.clone()),
                (None, Some(dir)) => AcmeStore::Dir(dir.clone()),
                (None, None) => unreachable!("the config check requires etcd or a certificates directory"),
            };
            let manager = Acme::new(
                settings.clone(),
                config.passivation.node.clone(),
                acme_store,
                store.clone(),
                routes.clone(),
                metrics.acme().clone(),
            );
            if let Some(etcd) = &etcd {
                let watcher = ChallengeWatcher::new(etcd.clone(), manager.challenges().clone());
                tasks.push(tokio::spawn(watcher.run(background.clone())));
            }
            tasks.push(tokio::spawn(manager.clone().run(background.clone())));
            info!(directory = %settings.directory, challenge = settings.challenge.as_str(), "ACME on");
            challenges = Some(manager.challenges().clone());
            hook = Some(manager);
        }
        let acceptor = TlsAcceptor::new(store.clone(), metrics.tls().clone(), config.tls.handshake_timeout, hook)?;
        tls = Some((store, Arc::new(acceptor)));
    } else if config.tls.certs_dir.is_some() {
        warn!("a certificates directory is configured but no HTTPS listener (--https): it is not loaded");
    }
    if config.tls.redirect && https_addr.is_none() {
        warn!("HTTPS redirects are on but this reveille has no HTTPS listener: TLS must be terminated in front of it, or clients will loop");
    }

    if config.admin_token.is_none() && !admin_addr.ip().is_loopback() {
        warn!(admin = %admin_addr, "the admin listener is reachable beyond this host and has no token: anyone who reaches it can wake and stop tenants; set [admin] token_file (or --admin-token-file)");
    }
    let admin_state = AdminState {
        routes: routes.clone(),
        metrics: metrics.clone(),
        events: events.clone(),
        passivator: Some(passivator.clone()),
        readiness: readiness.clone(),
        token: config.admin_token.clone(),
        certificates: tls.as_ref().map(|(store, _)| {
            let store = store.clone();
            let view: crate::admin::CertificatesView = Arc::new(move || store.load().to_json(crate::tls::cert::now()));
            view
        }),
        sources: Some({
            let composer = composer.clone();
            let view: crate::admin::SourcesView = Arc::new(move || composer.sources());
            view
        }),
        settings: config.admin_settings.clone(),
    };
    tasks.push(tokio::spawn(admin::serve(listeners.admin, admin_state, background.clone())));

    let redirect =
        Redirect { all: config.tls.redirect, port: config.tls.redirect_port.or(https_addr.map(|a| a.port())) };
    // The per-core scheduler: this runtime is worker 0 and `workers` starts the others, each with its own
    // shard of the backend pool.
    let pool_shards = match config.scheduler {
        Scheduler::PerCore => config.worker_threads(),
        Scheduler::Shared => 1,
    };
    let proxy = Proxy::new(
        routes.clone(),
        metrics.clone(),
        config.proxy.clone(),
        passivator.clone(),
        PlainHttp { redirect, acme: challenges },
        access_log.clone(),
        pool_shards,
    );
    let shutdown = CancellationToken::new();
    let mut accept = Vec::new();
    if pool_shards > 1 {
        let mut served = vec![(&listeners.http, None)];
        if let (Some(listener), Some((_, acceptor))) = (&listeners.https, &tls) {
            served.push((listener, Some(acceptor.clone())));
        }
        let workers = crate::proxy::workers::spawn(&proxy, &served, pool_shards, &shutdown, &background)
            .map_err(StartError::Workers)?;
        for w in workers {
            accept.push(tokio::spawn(async move {
                let _ = w.accepting.await;
            }));
            tasks.push(tokio::spawn(async move {
                let _ = w.ended.await;
            }));
        }
    }
    accept.push(tokio::spawn(proxy.clone().serve(listeners.http, None, shutdown.clone())));
    if let (Some(listener), Some((_, acceptor))) = (listeners.https, &tls) {
        accept.push(tokio::spawn(proxy.clone().serve(listener, Some(acceptor.clone()), shutdown.clone())));
    }
    let node = &config.passivation.node;
    match https_addr {
        Some(https) => info!(node, http = %http_addr, https = %https, admin = %admin_addr, "listening"),
        None => info!(node, http = %http_addr, admin = %admin_addr, "listening"),
    }

    Ok(Running {
        http_addr,
        https_addr,
        admin_addr,
        certs: tls.map(|(store, _)| store),
        routes,
        metrics,
        events,
        passivator,
        readiness,
        proxy,
        shutdown,
        background,
        accept,
        tasks,
        access_log,
        etcd,
    })
}

impl Running {
    /// A token that, when cancelled, starts the shutdown (same as [`Running::shutdown`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts the shutdown: stop accepting, let connections finish.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the shutdown to be requested, then for in-flight work to finish, at most `grace`. Returns
    /// false if connections were still open when the grace period ran out.
    pub async fn wait(self, grace: Duration) -> bool {
        self.shutdown.cancelled().await;
        self.readiness.mark_draining();
        if let Some(etcd) = &self.etcd {
            etcd.drain();
        }
        for a in self.accept {
            let _ = a.await;
        }
        info!(grace = %humantime::format_duration(grace), "shutting down: no longer accepting, draining connections");
        let drained = tokio::time::timeout(grace, self.proxy.drained()).await.is_ok();
        if !drained {
            warn!("grace period over with connections still open; closing them");
        }
        self.background.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let log = self.access_log;
        let _ = tokio::task::spawn_blocking(move || log.close(ACCESS_LOG_CLOSE)).await;
        drained
    }
}
