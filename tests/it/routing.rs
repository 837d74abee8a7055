//! Routing by hostname against real backends: exact, wildcard, precedence, case, port; 404 and 400.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;

async fn setup() -> (TestProxy, [Backend; 4]) {
    let b = [
        Backend::echo("exact").await,
        Backend::echo("wild").await,
        Backend::echo("deep").await,
        Backend::echo("apex").await,
    ];
    let routes = routes_file(
        &[("exact", vec![b[0].addr]), ("wild", vec![b[1].addr]), ("deep", vec![b[2].addr]), ("apex", vec![b[3].addr])],
        &[
            ("app.example.com", "exact"),
            ("*.example.com", "wild"),
            ("*.deep.example.com", "deep"),
            ("example.com", "apex"),
        ],
    );
    (TestProxy::start(&routes).await, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_wildcard_and_precedence() {
    let (proxy, _b) = setup().await;
    let cases = [
        ("app.example.com", "exact"),
        ("other.example.com", "wild"),
        ("a.b.c.example.com", "wild"),
        ("x.deep.example.com", "deep"),
        ("y.x.deep.example.com", "deep"),
        ("deep.example.com", "wild"),
        ("example.com", "apex"),
    ];
    for (host, want) in cases {
        let got = get(proxy.http, host, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{host}: {}", got.text);
        assert_eq!(got.backend(), want, "host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_and_port_are_ignored_and_host_is_kept() {
    let (proxy, _b) = setup().await;
    for host in ["APP.Example.COM", "app.example.com:8080", "App.Example.Com:443", "app.example.com."] {
        let got = get(proxy.http, host, "/p?q=1").await;
        assert_eq!(got.status, StatusCode::OK, "{host}");
        assert_eq!(got.backend(), "exact", "{host}");
        let json = got.json();
        assert_eq!(json["headers"]["host"][0], host, "Host header must reach the backend unchanged");
        assert_eq!(json["path"], "/p?q=1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_never_forwarded() {
    let (proxy, b) = setup().await;
    for host in ["nope.org", "examplexcom", "com", "xexample.com"] {
        let got = get(proxy.http, host, "/").await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{host}");
        assert!(got.text.contains("no route for host"), "{}", got.text);
    }
    // Absolute-form request for a foreign host: reveille is not an open proxy.
    let got = get(proxy.http, "app.example.com", "http://evil.test/steal").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(b.iter().map(|b| b.hits.load(std::sync::atomic::Ordering::SeqCst)).sum::<usize>(), 0);
    assert_eq!(proxy.metric("reveille_unrouted_requests_total{kind=\"unknown_host\"}").await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_host_is_400() {
    let (proxy, _b) = setup().await;
    let t = Duration::from_secs(5);
    let no_host = raw_exchange(proxy.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", t).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let bad = raw_exchange(proxy.http, b"GET / HTTP/1.1\r\nHost: a b.com\r\nConnection: close\r\n\r\n", t).await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let bad_port =
        raw_exchange(proxy.http, b"GET / HTTP/1.1\r\nHost: app.example.com:x\r\nConnection: close\r\n\r\n", t).await;
    assert!(bad_port.starts_with("HTTP/1.1 400"), "{bad_port}");
    assert_eq!(proxy.metric("reveille_unrouted_requests_total{kind=\"bad_host\"}").await, 3.0);
}
