//! `https://` backends: verified against a service's own CA (from the routes file and from etcd), refused with
//! 502 when they do not verify (and given nothing), `verify = false` served and warned about, a client
//! certificate for backends that ask for one, kept-alive TLS connections, WebSocket through TLS, and bad `tls`
//! blocks refused with the old table kept.
//!
//! The TLS backend is real: a tokio-rustls server ([`TlsFront`]) that terminates TLS and hands the plaintext to
//! one of the support backends (hyper's HTTP/1.1 server), counting its handshakes and the client certificates
//! it was shown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::etcd::Etcd;
use crate::support::serve::BIN;
use crate::support::tls::{TestCa, TestCert};
use crate::support::*;

/// A TLS server in front of a plain backend: counts what it saw.
pub(crate) struct TlsFront {
    pub(crate) addr: SocketAddr,
    /// TCP connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Handshakes completed.
    handshakes: Arc<AtomicUsize>,
    /// The client certificate of each completed handshake (DER), when one was sent.
    client_certs: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: CancellationToken,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TlsFront {
    /// Serves `cert` and forwards to `plain`; asks for a client certificate from `client_ca` when given;
    /// offers `alpn`.
    pub(crate) async fn start(
        cert: &TestCert,
        client_ca: Option<&TestCa>,
        alpn: &[&str],
        plain: SocketAddr,
    ) -> TlsFront {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(cert, client_ca, alpn));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = TlsFront {
            addr,
            accepts: Arc::default(),
            handshakes: Arc::default(),
            client_certs: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (accepts, handshakes, certs, stop) =
            (front.accepts.clone(), front.handshakes.clone(), front.client_certs.clone(), front.stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = stop.cancelled() => return,
                };
                accepts.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handshakes, certs, stop) =
                    (acceptor.clone(), handshakes.clone(), certs.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    if let Some(c) = tls.get_ref().1.peer_certificates() {
                        certs.lock().unwrap().push(c[0].to_vec());
                    }
                    let mut backend = TcpStream::connect(plain).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut backend) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        front
    }
}

/// A TLS server's settings: `cert`, a client certificate from `client_ca` required when given, `alpn` offered.
fn server_config(cert: &TestCert, client_ca: Option<&TestCa>, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A test CA, and a certificate from it for `names` served in front of an echo backend named `name`.
async fn echo_behind_tls(name: &str, names: &[&str]) -> (TestCa, TlsFront, Backend) {
    let ca = TestCa::new();
    let backend = Backend::echo(name).await;
    let front = TlsFront::start(&ca.issue(names), None, &["http/1.1"], backend.addr).await;
    (ca, front, backend)
}

/// A routes file with service `name` on `https://{front}` with `tls` (TOML lines of its `tls` block, if any),
/// routed from `{name}.test`.
fn tls_routes(name: &str, front: SocketAddr, tls: Option<&str>) -> String {
    let block = tls.map(|t| format!("[services.{name}.tls]\n{t}\n")).unwrap_or_default();
    format!("[services.{name}]\nbackends = [\"https://{front}\"]\n{block}[routes]\n\"{name}.test\" = \"{name}\"\n")
}

/// A proxy on `routes`, with `files` (name, text) written beside its routes file first.
async fn proxy_with_files(routes: &str, files: &[(&str, &str)]) -> TestProxy {
    // The routes file is read from a temp dir the proxy makes: write the files into a dir of ours, by absolute
    // path, and once more relative to the proxy's own dir (see `relative_paths_are_read_from_the_routes_dir`).
    let proxy = TestProxy::start("allow_empty = true\n").await;
    let dir = proxy.routes_path.parent().unwrap().to_path_buf();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    proxy.write_routes(routes);
    proxy
}

/// Waits until a reload of the routes file has been applied (`ok`) `n` times in all.
async fn applied(proxy: &TestProxy, n: f64) {
    eventually(Duration::from_secs(5), "the routes file applied", || async {
        proxy.metric("reveille_route_reloads_total{source=\"file\",result=\"ok\"}").await >= n
    })
    .await;
}

/// The warnings logged so far that contain `text`, as their fields joined.
fn warned(text: &str) -> Vec<String> {
    log::warnings()
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
        .filter(|l| l.contains(text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_verified_by_the_service_ca_is_served() {
    let (ca, front, backend) = echo_behind_tls("secure", &["127.0.0.1"]).await;
    // `ca` relative to the routes file; the backend's IP address verified against the certificate's IP SAN.
    let proxy =
        proxy_with_files(&tls_routes("secure", front.addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())])
            .await;
    applied(&proxy, 2.0).await;
    let got = get(proxy.http, "secure.test", "/hello").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.backend(), "secure");
    assert_eq!(got.json()["path"], "/hello");
    assert_eq!(backend.hits.load(Ordering::SeqCst), 1);

    // A certificate for a name, not the address: `server_name` says which name to verify.
    let (ca, named, named_backend) = echo_behind_tls("named", &["api.internal.test"]).await;
    let pem = ca.cert_pem().replace('\n', "\\n");
    let tls = format!("ca_pem = \"{pem}\"\nserver_name = \"api.internal.test\"");
    proxy.write_routes(&tls_routes("named", named.addr, Some(&tls)));
    applied(&proxy, 3.0).await;
    let got = get(proxy.http, "named.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(named_backend.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_verify_answers_502_and_gets_nothing() {
    log::warnings();
    let (ca, front, backend) = echo_behind_tls("unverified", &["127.0.0.1"]).await;
    let other_ca = TestCa::new();
    let cases = [
        ("tls-noca", None, "UnknownIssuer"),
        // Both test CAs have the same subject: the chain is found, and its signature does not verify.
        ("tls-wrongca", Some("ca = \"other.pem\"".to_string()), "invalid peer certificate: BadSignature"),
        (
            "tls-wrongname",
            Some("ca = \"ca.pem\"\nserver_name = \"elsewhere.test\"".to_string()),
            "certificate not valid for name \"elsewhere.test\"",
        ),
    ];
    let proxy =
        proxy_with_files("allow_empty = true\n", &[("ca.pem", &ca.cert_pem()), ("other.pem", &other_ca.cert_pem())])
            .await;
    let mut reloads = 1.0;
    for (name, tls, reason) in cases {
        proxy.write_routes(&tls_routes(name, front.addr, tls.as_deref()));
        reloads += 1.0;
        applied(&proxy, reloads).await;
        let got = get(proxy.http, &format!("{name}.test"), "/").await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{name}: {}", got.text);
        let lines = warned("backend TLS handshake failed");
        let line = lines.iter().find(|l| l.contains(&format!("service={name}"))).unwrap_or_else(|| panic!("{lines:?}"));
        assert!(line.contains(reason), "{name}: the reason is logged: {line}");
        assert_eq!(proxy.service_view(name).await["backend_health"][0]["last_failure"]["kind"], "tls");
    }
    assert_eq!(backend.hits.load(Ordering::SeqCst), 0, "no request reached the backend");
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"tls\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_is_served_and_warned_at_every_load() {
    log::warnings();
    let (_ca, front, backend) = echo_behind_tls("insecure", &["somewhere.else.test"]).await;
    let routes = tls_routes("tls-insecure", front.addr, Some("verify = false"));
    let proxy = TestProxy::start(&routes).await;
    let said = "service tls-insecure: backend certificates are not verified";
    let at_start = warned(said).len();
    assert!(at_start >= 1, "warned at the load");
    let got = get(proxy.http, "tls-insecure.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 1);

    // Each load says it again.
    proxy.write_routes(&format!("{routes}\"again.test\" = \"tls-insecure\"\n"));
    applied(&proxy, 2.0).await;
    assert!(warned(said).len() > at_start, "warned at the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_asks_for_a_client_certificate_gets_it() {
    let ca = TestCa::new();
    let client_ca = TestCa::new();
    let client = client_ca.issue(&["reveille.client.test"]);
    let backend = Backend::echo("mtls").await;
    let front = TlsFront::start(&ca.issue(&["127.0.0.1"]), Some(&client_ca), &["http/1.1"], backend.addr).await;
    let tls = "ca = \"ca.pem\"\nclient_cert = \"client.crt\"\nclient_key = \"client.key\"";
    let files =
        [("ca.pem", ca.cert_pem()), ("client.crt", client.cert_pem.clone()), ("client.key", client.key_pem.clone())];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let proxy = proxy_with_files(&tls_routes("mtls", front.addr, Some(tls)), &files).await;
    applied(&proxy, 2.0).await;
    let got = get(proxy.http, "mtls.test", "/").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(
        *front.client_certs.lock().unwrap(),
        std::slice::from_ref(&client.der),
        "the backend saw reveille's certificate"
    );

    // Without it, the backend refuses the handshake, and no request reaches it.
    proxy.write_routes(&tls_routes("mtls", front.addr, Some("ca = \"ca.pem\"")));
    applied(&proxy, 3.0).await;
    let got = get(proxy.http, "mtls.test", "/").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_sequence_reuse_one_tls_connection() {
    let (ca, front, backend) = echo_behind_tls("kept", &["127.0.0.1"]).await;
    let proxy =
        proxy_with_files(&tls_routes("kept", front.addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())]).await;
    applied(&proxy, 2.0).await;
    for i in 0..20 {
        let got = get(proxy.http, "kept.test", &format!("/{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.json()["path"], format!("/{i}"));
    }
    assert_eq!(backend.hits.load(Ordering::SeqCst), 20);
    assert_eq!(front.accepts.load(Ordering::SeqCst), 1, "one TCP connection");
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 1, "one handshake");

    // The same address over plain HTTP is another backend: it never gets the TLS connection (it gets a TCP
    // connection of its own, which the TLS server refuses as a bad handshake).
    let both = format!(
        "[services.kept]\nbackends = [\"https://{0}\"]\n[services.kept.tls]\nca = \"ca.pem\"\n\
         [services.plain]\nbackends = [\"http://{0}\"]\n[routes]\n\"kept.test\" = \"kept\"\n\"plain.test\" = \"plain\"\n",
        front.addr
    );
    proxy.write_routes(&both);
    applied(&proxy, 3.0).await;
    assert_ne!(get(proxy.http, "plain.test", "/").await.status, StatusCode::OK);
    assert_eq!(front.accepts.load(Ordering::SeqCst), 2, "its own connection");
    assert_eq!(backend.hits.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_an_https_backend() {
    let ca = TestCa::new();
    let backend = Backend::websocket_echo().await;
    let front = TlsFront::start(&ca.issue(&["127.0.0.1"]), None, &["http/1.1"], backend.addr).await;
    let proxy =
        proxy_with_files(&tls_routes("wss", front.addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())]).await;
    applied(&proxy, 2.0).await;

    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://wss.test/socket", stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("echo: hello {i}")));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_picks_h2_gets_http2_and_grpc_calls_of_every_kind() {
    // A gRPC service (HTTP/2 only) behind TLS that offers only `h2` by ALPN.
    let ca = TestCa::new();
    let backend = crate::support::grpc::H2Backend::grpc("tls-grpc").await;
    let front = TlsFront::start(&ca.issue(&["127.0.0.1"]), None, &["h2"], backend.addr).await;
    let proxy =
        proxy_with_files(&tls_routes("tls-h2", front.addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())])
            .await;
    applied(&proxy, 2.0).await;
    let channel = crate::support::grpc::h2c_channel(proxy.http, "tls-h2.test").await;
    let mut client = crate::support::grpc::EchoClient::new(channel);
    crate::grpc::all_four_kinds(&mut client, "tls-grpc").await;
    for i in 0..10 {
        client.unary(crate::support::grpc::msg("again", i)).await.unwrap();
    }
    // Every call on streams of one TLS connection: the one whose handshake picked h2.
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// The `tls` blocks a routes file must refuse, each with what its message must say.
fn bad_blocks(dir: &Path) -> Vec<(String, &'static str)> {
    std::fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    vec![
        ("ca = \"missing.pem\"".to_string(), "`tls.ca`: cannot read"),
        ("ca = \"garbage.pem\"".to_string(), "`tls.ca`: the text between its BEGIN and END lines is not valid base64"),
        ("cax = \"ca.pem\"".to_string(), "unknown field `cax`"),
        ("verify = \"no\"".to_string(), "`tls`"),
        ("server_name = \"not a name\"".to_string(), "`tls.server_name` \"not a name\""),
        ("client_cert = \"ca.pem\"".to_string(), "`client_key` is missing"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_block_is_refused_and_the_table_kept() {
    let (ca, front, backend) = echo_behind_tls("guarded", &["127.0.0.1"]).await;
    let good = tls_routes("guarded", front.addr, Some("ca = \"ca.pem\""));
    let proxy = proxy_with_files(&good, &[("ca.pem", &ca.cert_pem())]).await;
    applied(&proxy, 2.0).await;
    let dir = proxy.routes_path.parent().unwrap().to_path_buf();
    for (i, (block, said)) in bad_blocks(&dir).into_iter().enumerate() {
        proxy.write_routes(&tls_routes("guarded", front.addr, Some(&block)));
        eventually(Duration::from_secs(5), "the bad version refused", || async {
            proxy.metric("reveille_route_reloads_total{source=\"file\",result=\"failed\"}").await == (i + 1) as f64
        })
        .await;
        let got = get(proxy.http, "guarded.test", "/").await;
        assert_eq!(got.status, StatusCode::OK, "the previous table stays after {block:?}");

        // `reveille check` says why, naming the service.
        let out = std::process::Command::new(BIN).args(["check", "--routes"]).arg(&proxy.routes_path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{block}: {text}");
        assert!(text.contains("service \"guarded\"") && text.contains(said), "{block}: {said:?} in {text}");
    }
    assert_eq!(backend.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_etcd_with_the_ca_inline() {
    let etcd = Etcd::start().await;
    let (ca, front, backend) = echo_behind_tls("from-etcd", &["127.0.0.1"]).await;
    let proxy = TestProxy::start_etcd(&etcd.url).await;
    let service = |tls: serde_json::Value| {
        serde_json::json!({ "backends": [format!("https://{}", front.addr)], "tls": tls }).to_string()
    };
    etcd.put("/reveille/services/etls", &service(serde_json::json!({ "ca_pem": ca.cert_pem() }))).await;
    etcd.put("/reveille/routes/etls.test", r#"{"service": "etls"}"#).await;
    eventually(Duration::from_secs(5), "served over TLS", || async {
        get(proxy.http, "etls.test", "/").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(proxy.http, "etls.test", "/").await.backend(), "from-etcd");

    // A path means nothing in etcd; a bad PEM, an unknown field: each refused, the service kept as it was.
    for bad in [
        serde_json::json!({ "ca": "/etc/ssl/ca.pem" }),
        serde_json::json!({ "ca_pem": "-----BEGIN CERTIFICATE-----\nnope\n" }),
        serde_json::json!({ "ca_pem": ca.cert_pem(), "verfy": false }),
    ] {
        etcd.put("/reveille/services/etls", &service(bad.clone())).await;
        etcd.put("/reveille/routes/marker.test", r#"{"service": "etls"}"#).await;
        eventually(Duration::from_secs(5), "the marker route applied", || async {
            get(proxy.http, "marker.test", "/").await.status == StatusCode::OK
        })
        .await;
        assert_eq!(get(proxy.http, "etls.test", "/").await.status, StatusCode::OK, "{bad}: the old service stays");
        etcd.delete("/reveille/routes/marker.test").await;
        eventually(Duration::from_secs(5), "the marker route removed", || async {
            get(proxy.http, "marker.test", "/").await.status == StatusCode::NOT_FOUND
        })
        .await;
    }
    assert!(backend.hits.load(Ordering::SeqCst) >= 4);
}

/// For the raw TLS backends: reads one request head (and what came with it).
async fn read_head(tls: &mut tokio_rustls::server::TlsStream<TcpStream>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "a whole request head");
        head.extend_from_slice(&buf[..n]);
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_backend_closed_with_close_notify_is_not_reused_and_its_session_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca.issue(&["127.0.0.1"]), None, &["http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepts, closed, resumed) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c, r) = (accepts.clone(), closed.clone(), resumed.clone());
    // Answers one request, keep-alive as far as HTTP says, then ends TLS (`close_notify`) and leaves TCP open.
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let (acceptor, c, r) = (acceptor.clone(), c.clone(), r.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                read_head(&mut tls).await;
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                tls.shutdown().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                // Hold the TCP connection until the proxy drops it.
                let _ = tls.get_mut().0.read(&mut [0u8; 64]).await;
            });
        }
    });
    let proxy =
        proxy_with_files(&tls_routes("notified", addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())]).await;
    applied(&proxy, 2.0).await;
    assert_eq!(get(proxy.http, "notified.test", "/").await.text, "ok");
    eventually(Duration::from_secs(5), "close_notify sent", || async { closed.load(Ordering::SeqCst) == 1 }).await;
    // The alert is on its way over loopback: give the proxy's reactor a moment to see the socket readable.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(proxy.http, "notified.test", "/").await.text, "ok");
    assert_eq!(accepts.load(Ordering::SeqCst), 2, "a new connection for the second request");
    assert_eq!(resumed.load(Ordering::SeqCst), 1, "the service's session cache resumed the first session");
    assert_eq!(
        proxy.metric("reveille_upstream_errors_total{kind=\"reused_closed\"}").await,
        0.0,
        "the closed connection was found idle, not under the request"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_delimited_by_the_close_needs_close_notify() {
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca.issue(&["127.0.0.1"]), None, &["http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A body without a length, ended by the close: with `close_notify` on `/notify`, by a bare TCP close else.
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let head = read_head(&mut tls).await;
                tls.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await.unwrap();
                tls.flush().await.unwrap();
                if head.starts_with(b"GET /notify ") {
                    tls.shutdown().await.unwrap();
                } else {
                    // Only TCP's FIN: the TLS session is never closed.
                    tls.get_mut().0.shutdown().await.unwrap();
                }
            });
        }
    });
    let proxy =
        proxy_with_files(&tls_routes("closing", addr, Some("ca = \"ca.pem\"")), &[("ca.pem", &ca.cert_pem())]).await;
    applied(&proxy, 2.0).await;
    let got = get(proxy.http, "closing.test", "/notify").await;
    assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "until the end"));

    let req = http::Request::get("/bare").header("host", "closing.test").body(full("")).unwrap();
    let cut = testkit::http::send(proxy.http, req).await;
    assert!(cut.is_err(), "the client sees the response cut short, not a whole one: {cut:?}");
    server.abort();
}
