//! TLS termination with real rustls clients: SNI selection, ALPN (h2 and HTTP/1.1), WebSocket over TLS,
//! `X-Forwarded-Proto`, HTTPS redirects and HSTS, certificate hot reload from a directory and from etcd while
//! connections stay open, broken pairs rejected, old protocol versions refused, and the `cert` CLI.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::tls::*;
use crate::support::*;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use reveille::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A reveille with an HTTPS listener on port 0 and `certs` as its certificates directory.
async fn start_tls(routes: &str, certs: &Path, f: impl FnOnce(&mut Config)) -> (TestProxy, SocketAddr) {
    let certs = certs.to_path_buf();
    let proxy = TestProxy::start_custom(routes, move |c| {
        c.https = Some("127.0.0.1:0".parse().unwrap());
        c.tls.certs_dir = Some(certs);
        f(c)
    })
    .await;
    let https = proxy.running().https_addr.unwrap();
    (proxy, https)
}

fn get_req(host: &str, path: &str) -> Request<BoxBody> {
    Request::get(path).header("host", host).body(full("")).unwrap()
}

/// Which certificate (by DER) a client asking for `sni` is given, or the handshake error.
async fn served(addr: SocketAddr, sni: Option<&str>) -> std::io::Result<Vec<u8>> {
    connect(&any_cert_client(), addr, sni).await.map(|s| presented(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_most_specific_wildcard_then_latest_expiry_then_default() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let exact = ca.issue(&["api.example.test"]);
    let wild = ca.issue(&["*.example.test"]);
    let deeper = ca.issue(&["*.eu.example.test"]);
    let dup_old = ca.issue_until(&["dup.test"], 2090);
    let dup_new = ca.issue_until(&["dup.test"], 2095);
    let fallback = ca.issue(&["fallback.test"]);
    exact.write_pair(dir.path(), "exact");
    wild.write_pair(dir.path(), "wild");
    deeper.write_pair(dir.path(), "deeper");
    // One file holding chain and key.
    std::fs::write(dir.path().join("dup-old.pem"), format!("{}{}", dup_old.cert_pem, dup_old.key_pem)).unwrap();
    dup_new.write_pair(dir.path(), "dup-new");
    fallback.write_pair(dir.path(), "fallback");
    let backend = Backend::fixed("ok").await;
    let routes = routes_file(&[("s", vec![backend.addr])], &[("api.example.test", "s")]);

    let (proxy, https) = start_tls(&routes, dir.path(), |c| c.tls.default_cert = Some("fallback".into())).await;
    assert_eq!(served(https, Some("api.example.test")).await.unwrap(), exact.der, "exact name first");
    assert_eq!(served(https, Some("www.example.test")).await.unwrap(), wild.der, "wildcard");
    assert_eq!(served(https, Some("x.eu.example.test")).await.unwrap(), deeper.der, "the parent's wildcard");
    assert_eq!(served(https, Some("a.b.example.test")).await.unwrap(), fallback.der, "a wildcard covers one label");
    assert_eq!(served(https, Some("dup.test")).await.unwrap(), dup_new.der, "the one that expires last");
    assert_eq!(served(https, None).await.unwrap(), fallback.der, "no SNI: the default");
    assert_eq!(served(https, Some("unknown.org")).await.unwrap(), fallback.der, "unknown name: the default");
    assert_eq!(proxy.metric("reveille_tls_certificates").await, 6.0);

    // A client that verifies (against the CA, for the name it asked) gets through and is served.
    let stream = connect(&ca.client(&["http/1.1"]), https, Some("api.example.test")).await.unwrap();
    let got = exchange1(&mut h1(stream).await, get_req("api.example.test", "/")).await;
    assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "ok"));

    // Without a default certificate, no SNI or an unknown name is refused with `unrecognized_name`.
    let (strict, https) = start_tls(&routes, dir.path(), |_| {}).await;
    for sni in [Some("unknown.org"), None] {
        let err = served(https, sni).await.unwrap_err();
        assert_eq!(alert_of(&err), Some(rustls::AlertDescription::UnrecognisedName), "{sni:?}: {err}");
    }
    assert_eq!(served(https, Some("www.example.test")).await.unwrap(), wild.der);
    assert_eq!(strict.metric("reveille_tls_handshake_failures_total{reason=\"unrecognized_name\"}").await, 2.0);
    assert!(strict.metric("reveille_tls_handshakes_total").await >= 1.0);
    let days = strict.metric("reveille_tls_certificate_expiry_days").await;
    assert!(days > 365.0 * 60.0, "earliest expiry is 2090: {days} days");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_by_alpn_http11_and_forwarded_proto() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["app.test"]).write_pair(dir.path(), "app");
    let backend = Backend::echo("app").await;
    let routes = routes_file(&[("app", vec![backend.addr])], &[("app.test", "app")]);
    let (proxy, https) = start_tls(&routes, dir.path(), |_| {}).await;

    // h2 chosen by ALPN, several streams at once on one connection.
    let stream = connect(&ca.client(&["h2", "http/1.1"]), https, Some("app.test")).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let sender = h2(stream).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("https://app.test/h2/{i}"))
                .header("x-forwarded-proto", "http")
                .body(full(""))
                .unwrap();
            exchange2(&mut s, req).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.headers["x-test-version"], "HTTP/2.0");
        let json = got.json();
        assert_eq!(json["path"], format!("/h2/{i}"));
        assert_eq!(json["version"], "HTTP/1.1", "backends get HTTP/1.1");
        assert_eq!(json["headers"]["x-forwarded-proto"], serde_json::json!(["https"]), "client's value replaced");
        assert_eq!(json["headers"]["host"][0], "app.test");
    }

    // HTTP/1.1 by ALPN, two requests on one keep-alive connection.
    let stream = connect(&ca.client(&["http/1.1"]), https, Some("app.test")).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = h1(stream).await;
    for path in ["/one", "/two"] {
        let got = exchange1(&mut sender, get_req("app.test", path)).await;
        assert_eq!(got.headers["x-test-version"], "HTTP/1.1");
        assert_eq!(got.json()["path"], path);
        assert_eq!(got.json()["headers"]["x-forwarded-proto"][0], "https");
    }

    // TLS 1.2 too.
    let tls12 = ca.client_with(&[&rustls::version::TLS12], &["h2", "http/1.1"]);
    let stream = connect(&tls12, https, Some("app.test")).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let got = exchange2(&mut h2(stream).await, Request::get("https://app.test/tls12").body(full("")).unwrap()).await;
    assert_eq!(got.json()["path"], "/tls12");
    let stream = connect(&ca.client(&[]), https, Some("app.test")).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    // Only protocols reveille does not speak: refused with no_application_protocol (RFC 7301).
    let err = connect(&ca.client(&["spdy/3", "acme-tls/1"]), https, Some("app.test")).await.unwrap_err();
    assert_eq!(alert_of(&err), Some(rustls::AlertDescription::NoApplicationProtocol), "{err}");
    assert_eq!(proxy.metric("reveille_tls_handshake_failures_total{reason=\"no_application_protocol\"}").await, 1.0);

    // No ALPN at all: HTTP/1.1.
    let stream = connect(&ca.client(&[]), https, Some("app.test")).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let got = exchange1(&mut h1(stream).await, get_req("app.test", "/noalpn")).await;
    assert_eq!(got.json()["path"], "/noalpn");

    // The plain listener still says http.
    let got = get(proxy.http, "app.test", "/plain").await;
    assert_eq!(got.json()["headers"]["x-forwarded-proto"][0], "http");
    assert_eq!(proxy.metric("reveille_requests_total{service=\"app\",class=\"2xx\"}").await, 15.0);
}

/// The per-core scheduler with an HTTPS listener: the second worker accepts TLS connections too (h2 and
/// HTTP/1.1), and each worker's connections reach the backend through its own pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_terminate_tls_and_speak_h2() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["app.test"]).write_pair(dir.path(), "app");
    let backend = Backend::echo("app").await;
    let routes = routes_file(&[("app", vec![backend.addr])], &[("app.test", "app")]);
    let (proxy, https) = start_tls(&routes, dir.path(), |c| {
        c.threads = 2;
        c.scheduler = reveille::Scheduler::PerCore;
    })
    .await;
    let worker = |w: usize| format!("reveille_worker_connections_total{{worker=\"{w}\"}}");
    eventually(WAIT, "both workers accepted TLS connections", || async {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let client = ca.client(if i % 2 == 0 { &["h2"] } else { &["http/1.1"] });
            tasks.push(tokio::spawn(async move {
                let stream = connect(&client, https, Some("app.test")).await.unwrap();
                if i % 2 == 0 {
                    let mut sender = h2(stream).await;
                    exchange2(&mut sender, Request::get("https://app.test/pc").body(full("")).unwrap()).await
                } else {
                    let mut sender = h1(stream).await;
                    exchange1(&mut sender, get_req("app.test", "/pc")).await
                }
            }));
        }
        for t in tasks {
            let got = t.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.json()["headers"]["x-forwarded-proto"], serde_json::json!(["https"]));
        }
        proxy.metric(&worker(0)).await > 0.0 && proxy.metric(&worker(1)).await > 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["chat.test"]).write_pair(dir.path(), "chat");
    let backend = Backend::websocket_echo().await;
    let routes = routes_file(&[("chat", vec![backend.addr])], &[("chat.test", "chat")]);
    let (_proxy, https) = start_tls(&routes, dir.path(), |_| {}).await;

    let stream = connect(&ca.client(&["http/1.1"]), https, Some("chat.test")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://chat.test/socket", stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("echo: hello {i}")));
    }
    let big = vec![9u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

/// HSTS is added to a backend's response only when the backend sends no policy of its own, whichever side
/// serves the client: reveille's own HTTP/1.1 side (which passes the backend's fields on as it wrote them, and
/// writes the added field after them) and HTTP/2 (through a header map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_hsts_wins_and_the_configured_one_is_added_otherwise() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["own.test", "added.test"]).write_pair(dir.path(), "all");
    let own = Backend::start(std::sync::Arc::new(|_req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let mut resp = http::Response::new(full("own"));
            resp.headers_mut().insert("strict-transport-security", "max-age=60".parse().unwrap());
            resp.headers_mut().insert("x-from", "backend".parse().unwrap());
            resp
        })
    }))
    .await;
    let plain = Backend::echo("plain").await;
    let routes = format!(
        "[services.own]\nbackends = [\"{own}\"]\nhsts = \"max-age=31536000\"\n\
         [services.added]\nbackends = [\"{plain}\"]\nhsts = \"max-age=31536000\"\n\
         [routes]\n\"own.test\" = \"own\"\n\"added.test\" = \"added\"\n",
        own = own.addr,
        plain = plain.addr
    );
    let (_proxy, https) = start_tls(&routes, dir.path(), |_| {}).await;
    let h1_client = ca.client(&["http/1.1"]);
    let h2_client = ca.client(&["h2"]);
    for (host, expected) in [("own.test", "max-age=60"), ("added.test", "max-age=31536000")] {
        let mut s = h1(connect(&h1_client, https, Some(host)).await.unwrap()).await;
        let req = Request::get("/").header("host", host).body(full("")).unwrap();
        let got = exchange1(&mut s, req).await;
        assert_eq!(got.status, StatusCode::OK, "{host} over HTTP/1.1");
        let sts: Vec<_> = got.headers.get_all("strict-transport-security").iter().collect();
        assert_eq!(sts, [expected], "{host} over HTTP/1.1: {:?}", got.headers);
        let mut s = h2(connect(&h2_client, https, Some(host)).await.unwrap()).await;
        let got = exchange2(&mut s, Request::get(format!("https://{host}/")).body(full("")).unwrap()).await;
        assert_eq!(got.status, StatusCode::OK, "{host} over HTTP/2");
        let sts: Vec<_> = got.headers.get_all("strict-transport-security").iter().collect();
        assert_eq!(sts, [expected], "{host} over HTTP/2: {:?}", got.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_per_service_and_global_with_hsts() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["secure.test", "plain.test", "optout.test"]).write_pair(dir.path(), "all");
    let backend = Backend::echo("b").await;
    let routes = format!(
        "[services.secure]\nbackends = [\"{a}\"]\nhttps_redirect = true\nhsts = \"max-age=31536000; includeSubDomains\"\n\
         [services.plain]\nbackends = [\"{a}\"]\n\
         [services.optout]\nbackends = [\"{a}\"]\nhttps_redirect = false\n\
         [routes]\n\"secure.test\" = \"secure\"\n\"plain.test\" = \"plain\"\n\"optout.test\" = \"optout\"\n",
        a = backend.addr
    );
    let (proxy, https) = start_tls(&routes, dir.path(), |_| {}).await;

    let got = get(proxy.http, "Secure.test", "/a/b?c=d&e").await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(got.headers["location"], format!("https://secure.test:{}/a/b?c=d&e", https.port()));
    assert!(!got.headers.contains_key("strict-transport-security"), "no HSTS over plain HTTP");
    let post = Request::post("/form").header("host", "secure.test").body(full("x=1")).unwrap();
    let got = send(proxy.http, post).await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT, "308 keeps the method: POST is redirected too");
    let raw =
        raw_exchange(proxy.http, b"OPTIONS * HTTP/1.1\r\nHost: secure.test\r\n\r\n", Duration::from_millis(500)).await;
    let location = format!("location: https://secure.test:{}/\r\n", https.port());
    assert!(raw.starts_with("HTTP/1.1 308") && raw.contains(&location), "{raw}");
    // ACME HTTP-01 challenges stay on plain HTTP.
    let got = get(proxy.http, "secure.test", "/.well-known/acme-challenge/tok").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["path"], "/.well-known/acme-challenge/tok");
    assert_eq!(get(proxy.http, "plain.test", "/").await.status, StatusCode::OK, "no redirect unless asked");
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 2, "redirects never reach the backend");

    // Over HTTPS: served, with HSTS for the service that asks for it.
    let client = ca.client(&["h2"]);
    let mut s = h2(connect(&client, https, Some("secure.test")).await.unwrap()).await;
    let got = exchange2(&mut s, Request::get("https://secure.test/").body(full("")).unwrap()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["strict-transport-security"], "max-age=31536000; includeSubDomains");
    let mut s = h2(connect(&client, https, Some("plain.test")).await.unwrap()).await;
    let got = exchange2(&mut s, Request::get("https://plain.test/").body(full("")).unwrap()).await;
    assert!(!got.headers.contains_key("strict-transport-security"));

    // Global redirect, to the standard port: every service but the one that opts out.
    let (global, _) = start_tls(&routes, dir.path(), |c| {
        c.tls.redirect = true;
        c.tls.redirect_port = Some(443);
    })
    .await;
    let got = get(global.http, "plain.test", "/x").await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(got.headers["location"], "https://plain.test/x");
    assert_eq!(get(global.http, "optout.test", "/x").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_directory_hot_reload_keeps_connections_and_rejects_broken_pairs() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["app.test"]);
    v1.write_pair(dir.path(), "app");
    let backend = Backend::fixed("ok").await;
    let routes = routes_file(&[("app", vec![backend.addr])], &[("app.test", "app")]);
    let (proxy, https) = start_tls(&routes, dir.path(), |_| {}).await;
    let client = ca.client(&["http/1.1"]);

    let open = connect(&client, https, Some("app.test")).await.unwrap();
    assert_eq!(presented(&open), v1.der);
    let mut open = h1(open).await;
    assert_eq!(exchange1(&mut open, get_req("app.test", "/")).await.status, StatusCode::OK);

    // A new pair replaces the old one for the next handshake...
    let v2 = ca.issue(&["app.test", "new.test"]);
    v2.write_pair(dir.path(), "app");
    eventually(WAIT, "the new certificate served", || async {
        served(https, Some("app.test")).await.ok() == Some(v2.der.clone())
    })
    .await;
    assert_eq!(served(https, Some("new.test")).await.unwrap(), v2.der);
    // ...and the connection opened before goes on.
    assert_eq!(exchange1(&mut open, get_req("app.test", "/")).await.status, StatusCode::OK);

    // A key that does not match: rejected (once the files have settled), counted, v2 stays.
    let errors = || async { proxy.metric("reveille_tls_certificate_errors_total{source=\"dir\"}").await };
    let before = errors().await;
    let other = ca.issue(&["app.test"]);
    write_atomic(&dir.path().join("app.key"), &other.key_pem);
    eventually(WAIT, "the mismatched pair counted", || async { errors().await > before }).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v2.der);
    // Garbage: rejected too, v2 stays.
    let before = errors().await;
    write_atomic(&dir.path().join("app.crt"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
    eventually(WAIT, "the garbage counted", || async { errors().await > before }).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v2.der);
    assert_eq!(exchange1(&mut open, get_req("app.test", "/")).await.status, StatusCode::OK);

    // Fixed: served again, and the unchanged broken state is not reported again meanwhile.
    let v3 = ca.issue(&["app.test"]);
    v3.write_pair(dir.path(), "app");
    eventually(WAIT, "v3 served", || async { served(https, Some("app.test")).await.ok() == Some(v3.der.clone()) })
        .await;
    let settled = errors().await;

    // One file holding both, replaced in place.
    let v4 = ca.issue(&["combined.test"]);
    let v5 = ca.issue(&["combined.test"]);
    write_atomic(&dir.path().join("combined.pem"), &format!("{}{}", v4.cert_pem, v4.key_pem));
    eventually(WAIT, "v4 served", || async { served(https, Some("combined.test")).await.ok() == Some(v4.der.clone()) })
        .await;
    write_atomic(&dir.path().join("combined.pem"), &format!("{}{}", v5.cert_pem, v5.key_pem));
    eventually(WAIT, "v5 served", || async { served(https, Some("combined.test")).await.ok() == Some(v5.der.clone()) })
        .await;

    // Removing the certificate file removes the certificate, even with its key left behind.
    std::fs::remove_file(dir.path().join("app.crt")).unwrap();
    eventually(WAIT, "the removed certificate gone", || async { served(https, Some("app.test")).await.is_err() }).await;
    assert_eq!(proxy.metric("reveille_tls_certificates").await, 1.0);
    assert_eq!(errors().await, settled, "a leftover key is not an error");
    assert_eq!(exchange1(&mut open, get_req("app.test", "/")).await.status, StatusCode::OK, "still open");
}

/// A Kubernetes TLS secret mounted as a volume: `tls.crt` and `tls.key` are symlinks through `..data`, a
/// symlink to a timestamped directory that the kubelet swaps atomically on update.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_volume_swap() {
    use std::os::unix::fs::symlink;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = |n: &str, cert: &TestCert| {
        std::fs::create_dir(d.join(n)).unwrap();
        std::fs::write(d.join(n).join("tls.crt"), &cert.cert_pem).unwrap();
        std::fs::write(d.join(n).join("tls.key"), &cert.key_pem).unwrap();
    };
    let v1 = ca.issue(&["k8s.test"]);
    version("..2026_11_22_a", &v1);
    symlink("..2026_11_22_a", d.join("..data")).unwrap();
    symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
    symlink("..data/tls.key", d.join("tls.key")).unwrap();
    let (_proxy, https) = start_tls("[routes]\n", d, |_| {}).await;
    assert_eq!(served(https, Some("k8s.test")).await.unwrap(), v1.der);

    let v2 = ca.issue(&["k8s.test"]);
    version("..2026_11_22_b", &v2);
    symlink("..2026_11_22_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    eventually(WAIT, "the swapped secret served", || async {
        served(https, Some("k8s.test")).await.ok() == Some(v2.der.clone())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_etcd_hot_reload_and_rejects() {
    let etcd = etcd::Etcd::start().await;
    let ca = TestCa::new();
    let backend = Backend::fixed("ok").await;
    etcd.put("/reveille/services/app", &format!("{{\"backends\": [\"{}\"]}}", backend.addr)).await;
    etcd.put("/reveille/routes/app.test", r#"{"service": "app"}"#).await;
    let v1 = ca.issue(&["app.test"]);
    etcd.put("/reveille/certs/app", &v1.etcd_value()).await;

    let mut config = reveille::EtcdConfig::new(vec![etcd.url.clone()]);
    config.timeout = Duration::from_secs(2);
    let proxy = TestProxy::start_custom("", move |c| {
        c.routes = None;
        c.etcd = Some(config);
        c.https = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let https = proxy.running().https_addr.unwrap();
    let client = ca.client(&["h2"]);
    eventually(WAIT, "the etcd certificate served", || async {
        served(https, Some("app.test")).await.ok() == Some(v1.der.clone())
    })
    .await;
    eventually(WAIT, "ready", || async { proxy.admin_get("/readyz").await.0 == StatusCode::OK }).await;
    let mut open = h2(connect(&client, https, Some("app.test")).await.unwrap()).await;
    let req = || Request::get("https://app.test/").body(full("")).unwrap();
    eventually(WAIT, "the etcd route", || {
        let mut s = open.clone();
        async move { exchange2(&mut s, req()).await.status == StatusCode::OK }
    })
    .await;

    let v2 = ca.issue(&["app.test"]);
    etcd.put("/reveille/certs/app", &v2.etcd_value()).await;
    eventually(WAIT, "v2 served", || async { served(https, Some("app.test")).await.ok() == Some(v2.der.clone()) })
        .await;
    assert_eq!(exchange2(&mut open, req()).await.status, StatusCode::OK, "the open connection goes on");

    // Broken values: mismatched key, not JSON. Both rejected and counted; v2 stays.
    let other = ca.issue(&["app.test"]);
    let mismatched = serde_json::json!({"cert": v2.cert_pem, "key": other.key_pem}).to_string();
    etcd.put("/reveille/certs/app", &mismatched).await;
    etcd.put("/reveille/certs/app", "{not json").await;
    eventually(WAIT, "two rejections counted", || async {
        proxy.metric("reveille_tls_certificate_errors_total{source=\"etcd\"}").await == 2.0
    })
    .await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v2.der);

    // Deleted: refused.
    etcd.delete("/reveille/certs/app").await;
    eventually(WAIT, "the deleted certificate gone", || async {
        served(https, Some("app.test"))
            .await
            .is_err_and(|e| alert_of(&e) == Some(rustls::AlertDescription::UnrecognisedName))
    })
    .await;
    assert_eq!(exchange2(&mut open, req()).await.status, StatusCode::OK, "still open");
}

/// A TLS 1.1 ClientHello for `sni`: legacy version 3.2, no supported_versions extension, CBC suites only. With
/// `sigalgs`, it also carries a signature_algorithms extension (some 1.1 clients do).
fn tls11_client_hello(sni: &str, sigalgs: bool) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = sni.as_bytes();
    let mut sn = vec![0u8];
    sn.extend((name.len() as u16).to_be_bytes());
    sn.extend(name);
    let mut list = (sn.len() as u16).to_be_bytes().to_vec();
    list.extend(sn);
    ext.extend([0, 0]);
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    ext.extend([0, 10, 0, 6, 0, 4, 0, 29, 0, 23]); // supported_groups: x25519, secp256r1
    ext.extend([0, 11, 0, 2, 1, 0]); // ec_point_formats: uncompressed
    if sigalgs {
        ext.extend([0, 13, 0, 6, 0, 4, 4, 3, 8, 4]); // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    }
    let mut body = vec![3, 2];
    body.extend([7u8; 32]);
    body.push(0); // no session id
    body.extend([0, 6, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend([1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["app.test"]).write_pair(dir.path(), "app");
    let (proxy, https) = start_tls("[routes]\n", dir.path(), |_| {}).await;
    for sigalgs in [true, false] {
        let mut s = tokio::net::TcpStream::connect(https).await.unwrap();
        s.write_all(&tls11_client_hello("app.test", sigalgs)).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await.unwrap().unwrap();
        // One fatal alert record, no ServerHello, then the connection is closed.
        assert_eq!(answer.len(), 7, "{answer:?}");
        assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
        assert_eq!(answer[5], 2, "fatal");
        if sigalgs {
            assert_eq!(answer[6], 70, "protocol_version");
        } else {
            // rustls checks signature_algorithms (absent before TLS 1.2) before the version.
            assert_eq!(answer[6], 40, "handshake_failure");
        }
    }
    assert_eq!(proxy.metric("reveille_tls_handshake_failures_total{reason=\"protocol_version\"}").await, 2.0);
    // A modern client still gets in.
    assert!(connect(&ca.client(&[]), https, Some("app.test")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["app.test"]).write_pair(dir.path(), "app");
    let (proxy, https) =
        start_tls("[routes]\n", dir.path(), |c| c.tls.handshake_timeout = Duration::from_millis(300)).await;
    let mut s = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("closed by reveille").unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert_eq!(proxy.metric("reveille_tls_handshake_failures_total{reason=\"timeout\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificates_directory_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        http: "127.0.0.1:0".parse().unwrap(),
        https: Some("127.0.0.1:0".parse().unwrap()),
        admin: "127.0.0.1:0".parse().unwrap(),
        routes: Some(dir.path().join("routes.toml")),
        tls: reveille::TlsSettings { certs_dir: Some(dir.path().join("missing")), ..Default::default() },
        ..Config::default()
    };
    std::fs::write(dir.path().join("routes.toml"), "[routes]\n").unwrap();
    let listeners = reveille::Listeners::bind(&config).await.unwrap();
    let err = reveille::start(&config, listeners, reveille::docker(&config)).await.err().expect("refused to start");
    assert!(err.to_string().contains("missing"), "{err}");
}

const BIN: &str = env!("CARGO_BIN_EXE_reveille");

fn cli(etcd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN).args(args).args(["--etcd", etcd]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_cli_validates_writes_lists_and_removes() {
    let etcd = etcd::Etcd::start().await;
    let ep = etcd.url.clone();
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue_until(&["shop.test", "*.shop.test"], 2090);
    let other = ca.issue(&["x.test"]);
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(p("good.crt"), &good.cert_pem).unwrap();
    std::fs::write(p("good.key"), &good.key_pem).unwrap();
    std::fs::write(p("other.key"), &other.key_pem).unwrap();
    std::fs::write(p("both.pem"), format!("{}{}", other.cert_pem, other.key_pem)).unwrap();

    let (ok, out) = cli(&ep, &["cert", "put", "shop", "--cert", &p("good.crt"), "--key", &p("good.key")]);
    assert!(ok, "{out}");
    assert!(out.contains("shop.test, *.shop.test") && out.contains("2090-01-01") && out.contains("new"), "{out}");
    let (ok, out) = cli(&ep, &["cert", "put", "bad", "--cert", &p("good.crt"), "--key", &p("other.key")]);
    assert!(!ok && out.contains("does not match"), "{out}");
    let (ok, out) = cli(&ep, &["cert", "put", "nokey", "--cert", &p("good.crt")]);
    assert!(!ok && out.contains("no private key"), "{out}");
    let (ok, out) = cli(&ep, &["cert", "put", "combined", "--cert", &p("both.pem")]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&ep, &["cert", "put", "a/b", "--cert", &p("both.pem")]);
    assert!(!ok && out.contains("invalid certificate name"), "{out}");

    // What was written is what the proxy reads.
    let mut client = etcd.client().await;
    let stored = client.get("/reveille/certs/shop", None).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(v["cert"], good.cert_pem.as_str());
    assert_eq!(v["key"], good.key_pem.as_str());
    assert!(client.get("/reveille/certs/bad", None).await.unwrap().kvs().is_empty(), "nothing written");

    let expired = ca.issue_until(&["old.test"], 2021);
    std::fs::write(p("old.pem"), format!("{}{}", expired.cert_pem, expired.key_pem)).unwrap();
    let (ok, out) = cli(&ep, &["cert", "put", "old", "--cert", &p("old.pem")]);
    assert!(ok && out.contains("already expired"), "an expired pair is stored, with a warning: {out}");
    etcd.put("/reveille/certs/junk", "{}").await;
    let (ok, out) = cli(&ep, &["cert", "ls"]);
    assert!(ok, "{out}");
    let line = |name: &str| out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or("").to_string();
    assert!(line("shop").contains("2090-01-01T00:00:00Z") && line("shop").contains("*.shop.test"), "{out}");
    assert!(line("shop").contains("operator"), "not ACME's: {out}");
    assert!(line("combined").contains("x.test"), "{out}");
    assert!(line("junk").contains("INVALID"), "{out}");
    assert!(line("old").contains("EXPIRED") && line("old").contains("2021-01-01"), "{out}");

    let (ok, out) = cli(&ep, &["cert", "rm", "shop"]);
    assert!(ok && out.contains("removed"), "{out}");
    let (ok, out) = cli(&ep, &["cert", "rm", "shop"]);
    assert!(!ok && out.contains("no certificate"), "{out}");
}

#[test]
fn check_reports_each_certificate_of_a_directory() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue_until(&["a.test", "*.a.test"], 2090).write_pair(dir.path(), "good");
    let other = ca.issue(&["b.test"]);
    std::fs::write(dir.path().join("bad.crt"), &other.cert_pem).unwrap();
    std::fs::write(dir.path().join("bad.key"), ca.issue(&["c.test"]).key_pem).unwrap();
    std::fs::write(dir.path().join("lonely.key"), &other.key_pem).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = run(&["check", "--certs", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("certificate good: ok, a.test, *.a.test until 2090-01-01T00:00:00Z"), "{out}");
    assert!(out.contains("certificate bad: the private key does not match the certificate"), "{out}");
    assert!(out.contains("certificate lonely:") && out.contains("has no certificate"), "{out}");
    // Broken PEM and DER are said in words, not as the parsers' byte arrays and debug dumps.
    let key = ca.issue(&["d.test"]).key_pem;
    for (name, pem) in [
        ("nobase64", "-----BEGIN CERTIFICATE-----\nMIIB!!!!\n-----END CERTIFICATE-----\n"),
        ("noder", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        ("noend", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
    ] {
        std::fs::write(dir.path().join(format!("{name}.crt")), pem).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), &key).unwrap();
    }
    let (ok, out) = run(&["check", "--certs", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("certificate nobase64: the certificate PEM is malformed: the text between its BEGIN and END lines is not valid base64"), "{out}");
    assert!(out.contains("certificate noder: the certificate cannot be parsed: it is not an X.509 certificate (its DER encoding is invalid)"), "{out}");
    assert!(
        out.contains("certificate noend: the certificate PEM is malformed: no -----END CERTIFICATE----- line"),
        "{out}"
    );
    assert!(!out.contains("[45, 45") && !out.contains("Der(") && !out.contains("InvalidCharacter"), "{out}");
    for name in ["nobase64", "noder", "noend"] {
        std::fs::remove_file(dir.path().join(format!("{name}.crt"))).unwrap();
        std::fs::remove_file(dir.path().join(format!("{name}.key"))).unwrap();
    }
    std::fs::remove_file(dir.path().join("bad.key")).unwrap();
    std::fs::remove_file(dir.path().join("lonely.key")).unwrap();
    std::fs::remove_file(dir.path().join("bad.crt")).unwrap();
    let (ok, out) = run(&["check", "--certs", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// A certificate file replaced by a symlink to `/dev/zero`, by a FIFO, or by a file over `max_file_size`
/// (issue 24, item 3): each is rejected with its reason and counted, the certificate in force stays (it is not
/// taken for a removal), and a good pair still applies after. `check` reports the same without hanging.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_that_are_not_regular_or_too_large_are_rejected_and_the_previous_stays() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["app.test"]);
    v1.write_pair(dir.path(), "app");
    let (proxy, https) = start_tls("[routes]\n", dir.path(), |c| c.max_file_size = 8192).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v1.der);
    let errors = || async { proxy.metric("reveille_tls_certificate_errors_total{source=\"dir\"}").await };
    let crt = dir.path().join("app.crt");
    let tmp = dir.path().join(".app.crt.tmp");

    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    std::fs::rename(&tmp, &crt).unwrap();
    let before = errors().await;
    eventually(WAIT, "the symlink to /dev/zero rejected", || async { errors().await > before }).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v1.der, "v1 stays");

    assert!(std::process::Command::new("mkfifo").arg(&tmp).status().unwrap().success());
    std::fs::rename(&tmp, &crt).unwrap();
    let before = errors().await;
    eventually(WAIT, "the FIFO rejected", || async { errors().await > before }).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v1.der, "v1 stays");
    let out = std::process::Command::new(BIN).args(["check", "--certs"]).arg(dir.path()).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("certificate app: cannot read") && out.contains("not a regular file but a FIFO"), "{out}");

    // The same certificate, padded past the limit with text the PEM parser skips: refused for its size alone.
    write_atomic(&crt, &format!("{}{}", "padding outside the PEM block\n".repeat(300), v1.cert_pem));
    let before = errors().await;
    eventually(WAIT, "the file over the limit rejected", || async { errors().await > before }).await;
    assert_eq!(served(https, Some("app.test")).await.unwrap(), v1.der, "v1 stays");
    let out = std::process::Command::new(BIN)
        .args(["check", "--max-file-size", "8192", "--certs"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("certificate app: cannot read") && out.contains("larger than 8192 bytes"), "{out}");

    let v2 = ca.issue(&["app.test"]);
    v2.write_pair(dir.path(), "app");
    eventually(WAIT, "v2 served", || async { served(https, Some("app.test")).await.ok() == Some(v2.der.clone()) })
        .await;
}
