//! Header rewriting: forwarding headers (replaced from clients, extended from trusted proxies), hop-by-hop
//! removal in both directions, Host kept.

use std::sync::Arc;

use crate::support::*;
use http::{Request, Response, StatusCode};
use reveille::ProxySettings as Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;

    let got = get(proxy.http, "app.test:8080", "/").await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-real-ip"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "app.test:8080");
    assert_eq!(h["host"][0], "app.test:8080");
    assert!(h.get("forwarded").is_none(), "{h}");
}

/// A request whose forwarding headers claim it comes from 6.6.6.6 over HTTPS.
fn forged() -> Request<BoxBody> {
    Request::get("/")
        .header("host", "app.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .body(full(""))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_of_untrusted_clients_are_replaced() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;

    let got = send(proxy.http, forged()).await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-real-ip"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("x-forwarded-port").is_none(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_of_trusted_proxies_are_extended() {
    let a = Backend::echo("a").await;
    let trusted =
        Settings { trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], access_log: false, ..Settings::default() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]), trusted).await;

    let got = send(proxy.http, forged()).await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["6.6.6.6, 127.0.0.1"]));
    assert_eq!(h["x-real-ip"], serde_json::json!(["6.6.6.6"]));
    assert_eq!(h["forwarded"], serde_json::json!(["for=6.6.6.6, for=127.0.0.1;proto=http"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(h["x-forwarded-port"], serde_json::json!(["443"]));
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["app.test"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    // The backend sends hop-by-hop headers of its own.
    let backend = Backend::start(Arc::new(|req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            let mut resp = Response::new(full(names.join(",")));
            let h = resp.headers_mut();
            h.insert("connection", "x-backend-private".parse().unwrap());
            h.insert("x-backend-private", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-authenticate", "Basic".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            resp
        })
    }))
    .await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![backend.addr])], &[("app.test", "a")])).await;

    let req = Request::get("/")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=10")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("proxy-authorization", "Basic abc")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "1")
        .body(full(""))
        .unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen: Vec<&str> = got.text.split(',').collect();
    for gone in [
        "connection",
        "x-client-private",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(!seen.contains(&gone), "{gone} reached the backend: {seen:?}");
    }
    assert!(seen.contains(&"x-end-to-end"), "{seen:?}");
    assert!(seen.contains(&"host"), "{seen:?}");

    for gone in ["x-backend-private", "keep-alive", "proxy-authenticate"] {
        assert!(!got.headers.contains_key(gone), "{gone} reached the client: {:?}", got.headers);
    }
    assert_eq!(got.headers["x-end-to-end"], "kept");
}
