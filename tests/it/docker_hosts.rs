//! Several Docker hosts against the real Docker Engine. The second host is this machine's engine reached over
//! TCP, through a forwarder in the test (127.0.0.1:port → /var/run/docker.sock) that counts the connections it
//! accepts: a tenant on that host is woken and stopped through it, while a tenant on the default host goes to
//! the socket directly. With the forwarder gone (or a host on a closed port), only that host's tenants answer
//! 503, at once. A routes file naming an unknown host is refused and the previous definition kept. An
//! `https://` host is reached with its client certificate, through a TLS-terminating forwarder that requires one.
//!
//! Every test builds its own `FROM scratch` busybox image and uniquely named containers, removed on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::docker::{TestContainer, TestImage};
use crate::support::{eventually, get, TestProxy};
use http::StatusCode;
use reveille::{ClientTls, DockerEndpoint};
use tokio::net::{TcpListener, UnixStream};

const LONG: Duration = Duration::from_secs(20);

/// A TCP endpoint for the local Docker Engine: every accepted connection is copied both ways to the Docker
/// socket. Stopping it closes the port and every connection through it.
struct TcpForwarder {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpForwarder {
    async fn start() -> TcpForwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut f = TcpForwarder { addr: listener.local_addr().unwrap(), accepted: Arc::default(), task: None };
        f.serve(listener);
        f
    }

    fn serve(&mut self, listener: TcpListener) {
        let accepted = self.accepted.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task when it is aborted: every forwarded connection is closed too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let Ok(mut docker) = UnixStream::connect("/var/run/docker.sock").await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut docker).await;
                });
            }
        }));
    }

    fn endpoint(&self) -> DockerEndpoint {
        DockerEndpoint::plain(Some(format!("tcp://{}", self.addr)))
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Docker behind TLS with client certificates (Docker's `--tlsverify`): terminates TLS for the server
/// certificate of `localhost`, requires a client certificate signed by the client CA, then forwards to the
/// Docker socket. Counts the connections whose client certificate was verified.
struct TlsForwarder {
    addr: SocketAddr,
    verified: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsForwarder {
    async fn start(server: &support::tls::TestCert, clients: &support::tls::TestCa) -> TlsForwarder {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(clients.cert_pem().as_bytes()).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let verified = Arc::new(AtomicUsize::new(0));
        let count = verified.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, count) = (acceptor.clone(), count.clone());
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    if tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut docker) = UnixStream::connect("/var/run/docker.sock").await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut docker).await;
                });
            }
        });
        TlsForwarder { addr, verified, task }
    }
}

impl Drop for TlsForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Routes: `<name>.test` → service `<name>`, a container of port 8080 with the given extra TOML fields.
fn routes(services: &[(&str, &TestContainer, &str)]) -> String {
    let mut out = String::new();
    for (name, c, extra) in services {
        out.push_str(&format!("[services.{name}]\ncontainer = \"{}\"\nport = 8080\n{extra}\n", c.name));
    }
    out.push_str("[routes]\n");
    for (name, _, _) in services {
        out.push_str(&format!("\"{name}.test\" = \"{name}\"\n"));
    }
    out
}

async fn state_becomes(proxy: &TestProxy, service: &str, want: &str) {
    eventually(LONG, &format!("{service} to be {want}"), || async {
        proxy.service_view(service).await["state"] == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_a_second_host_is_woken_and_stopped_through_it() {
    let image = TestImage::build();
    let (home, away) = (image.web_after(""), image.web_after(""));
    let forwarder = TcpForwarder::start().await;
    let endpoint = forwarder.endpoint();
    let r = routes(&[
        ("home", &home, "idle_timeout = \"0\""),
        ("away", &away, "idle_timeout = \"1s\"\ndocker_host = \"second\""),
    ]);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.docker_hosts.insert("second".into(), endpoint);
    })
    .await;
    state_becomes(&proxy, "home", "stopped").await;
    state_becomes(&proxy, "away", "stopped").await;
    assert_eq!(proxy.service_view("home").await["docker_host"], "default");
    assert_eq!(proxy.service_view("away").await["docker_host"], "second");
    assert!(forwarder.accepted() > 0, "the second host's tenant was inspected through the forwarder");

    // The default host's tenant: through the socket, not the forwarder.
    let before = forwarder.accepted();
    let got = get(proxy.http, "home.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(home.docker_state(), "running");
    assert_eq!(forwarder.accepted(), before, "no call of the default host went through the second one");

    // The second host's tenant: woken through the forwarder...
    let got = get(proxy.http, "away.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.text.starts_with("hello from"), "{}", got.text);
    assert_eq!(away.docker_state(), "running");
    let woken = forwarder.accepted();
    assert!(woken >= before + 2, "inspect and start went through the forwarder: {before} -> {woken}");

    // ...and stopped through it once idle.
    state_becomes(&proxy, "away", "stopped").await;
    assert_eq!(away.docker_state(), "exited");
    assert!(forwarder.accepted() > woken, "the stop went through the forwarder");
    assert_eq!(home.docker_state(), "running", "the other host's tenant is left alone");

    let metric = |s: &'static str| {
        let proxy = &proxy;
        async move { proxy.metric(s).await }
    };
    assert_eq!(metric("reveille_wakes_by_host_total{host=\"default\",result=\"ok\"}").await, 1.0);
    assert_eq!(metric("reveille_wakes_by_host_total{host=\"second\",result=\"ok\"}").await, 1.0);
    assert_eq!(metric("reveille_wakes_total{service=\"away\",result=\"ok\"}").await, 1.0);
    assert_eq!(metric("reveille_docker_host_up{host=\"second\"}").await, 1.0);
    assert_eq!(metric("reveille_docker_host_up{host=\"default\"}").await, 1.0);
    assert_eq!(metric("reveille_stops_total{service=\"away\",action=\"stop\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_host_down_fails_only_its_tenants_fast() {
    let image = TestImage::build();
    let (home, away, lost) = (image.web_after(""), image.web_after(""), image.web_after(""));
    let mut forwarder = TcpForwarder::start().await;
    let endpoint = forwarder.endpoint();
    // A host on a port nothing listens on, from the start.
    let closed = DockerEndpoint::plain(Some(format!("tcp://{}", support::dead_addr().await)));
    let r = routes(&[
        ("home", &home, "idle_timeout = \"0\""),
        ("away", &away, "idle_timeout = \"0\"\ndocker_host = \"second\""),
        ("lost", &lost, "idle_timeout = \"0\"\ndocker_host = \"closed\""),
    ]);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.docker_hosts.insert("second".into(), endpoint);
        c.passivation.docker_hosts.insert("closed".into(), closed);
    })
    .await;
    state_becomes(&proxy, "home", "stopped").await;
    state_becomes(&proxy, "away", "stopped").await;
    assert_eq!(proxy.service_view("lost").await["state"], "unknown", "its host was never reached");

    // Never reachable: 503 at once.
    let begin = Instant::now();
    let got = get(proxy.http, "lost.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert_eq!(got.text, "503 Service Unavailable: the service could not be started\n");
    let took = begin.elapsed();
    assert!(took < Duration::from_secs(1), "the docker timeout is 10 s; a refused host answers at once: {took:?}");
    let error = proxy.service_view("lost").await["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("container runtime unavailable"), "{error}");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"closed\"}").await, 0.0);

    // The second host goes away: its tenant answers 503 at once...
    forwarder.stop();
    let begin = Instant::now();
    let got = get(proxy.http, "away.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    let took = begin.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    eprintln!("503 from a host that is down after {took:?}");
    assert!(proxy.service_view("away").await["last_error"].as_str().unwrap().contains("container runtime unavailable"));
    assert_ne!(away.docker_state(), "running");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"second\"}").await, 0.0);
    assert_eq!(proxy.metric("reveille_wakes_by_host_total{host=\"second\",result=\"unavailable\"}").await, 1.0);

    // ...while the default host's tenant still wakes.
    let got = get(proxy.http, "home.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(home.docker_state(), "running");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"default\"}").await, 1.0);

    // The host comes back: its own connection and event stream recover, and its tenant wakes again.
    forwarder.restart().await;
    eventually(LONG, "wakes on the second host work again", || async {
        get(proxy.http, "away.test", "/index.html").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(away.docker_state(), "running");
    assert_eq!(proxy.metric("reveille_docker_host_up{host=\"second\"}").await, 1.0);
    assert!(proxy.metric("reveille_docker_event_reconnects_total{host=\"second\"}").await >= 1.0);
    assert_eq!(proxy.metric("reveille_docker_event_reconnects_total{host=\"default\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_docker_host_in_the_routes_file_keeps_the_previous_definition() {
    let image = TestImage::build();
    let web = image.web_after("");
    let forwarder = TcpForwarder::start().await;
    let endpoint = forwarder.endpoint();
    let proxy = TestProxy::start_custom(&routes(&[("web", &web, "idle_timeout = \"0\"")]), |c| {
        c.passivation.docker_hosts.insert("second".into(), endpoint);
    })
    .await;
    state_becomes(&proxy, "web", "stopped").await;
    let failed = "reveille_route_reloads_total{source=\"file\",result=\"failed\"}";

    proxy.write_routes(&routes(&[("web", &web, "idle_timeout = \"0\"\ndocker_host = \"third\"")]));
    eventually(LONG, "the version naming an unknown host refused", || async { proxy.metric(failed).await == 1.0 })
        .await;
    assert_eq!(proxy.service_view("web").await["docker_host"], "default", "the previous definition stays");
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(forwarder.accepted(), 0, "woken on the default host");

    // A known host is taken: the service is now a tenant of the second host.
    proxy.write_routes(&routes(&[("web", &web, "idle_timeout = \"0\"\ndocker_host = \"second\"")]));
    eventually(LONG, "the service moved to the second host", || async {
        proxy.service_view("web").await["docker_host"] == "second"
    })
    .await;
    state_becomes(&proxy, "web", "running").await; // adopted through the second host
    assert!(forwarder.accepted() > 0);
    assert_eq!(proxy.metric(failed).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_host_is_reached_with_its_client_certificate() {
    let image = TestImage::build();
    let web = image.web_after("");
    let (server_ca, client_ca) = (support::tls::TestCa::new(), support::tls::TestCa::new());
    let forwarder = TlsForwarder::start(&server_ca.issue(&["localhost"]), &client_ca).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_ca.issue(&["reveille-client"]);
    let files = [("ca.pem", server_ca.cert_pem()), ("cert.pem", client.cert_pem), ("key.pem", client.key_pem)];
    for (name, pem) in files {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let endpoint = DockerEndpoint {
        uri: Some(format!("https://localhost:{}", forwarder.addr.port())),
        tls: Some(ClientTls {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        }),
    };
    endpoint.check().expect("a valid https endpoint");
    let r = routes(&[("web", &web, "idle_timeout = \"1s\"\ndocker_host = \"secure\"")]);
    let proxy = TestProxy::start_custom(&r, |c| {
        c.passivation.docker_hosts.insert("secure".into(), endpoint);
    })
    .await;
    state_becomes(&proxy, "web", "stopped").await;
    let got = get(proxy.http, "web.test", "/index.html").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(web.docker_state(), "running");
    state_becomes(&proxy, "web", "stopped").await;
    assert_eq!(web.docker_state(), "exited");
    let verified = forwarder.verified.load(Ordering::SeqCst);
    assert!(verified >= 3, "inspect, start and stop over TLS with a verified client certificate: {verified}");
    assert_eq!(proxy.metric("reveille_wakes_by_host_total{host=\"secure\",result=\"ok\"}").await, 1.0);
}
