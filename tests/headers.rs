//! Header rewriting: X-Forwarded-*, hop-by-hop removal in both directions, Host kept.

mod support;

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_appended() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;

    let got = get(proxy.http, "app.test:8080", "/").await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "app.test:8080");
    assert_eq!(h["host"][0], "app.test:8080");

    // A prior chain is appended to; a client-supplied proto is replaced.
    let req = Request::get("/")
        .header("host", "app.test")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-for", "198.51.100.2")
        .header("x-forwarded-proto", "https")
        .body(full(""))
        .unwrap();
    let got = send(proxy.http, req).await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"].as_array().unwrap().len(), 1);
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 198.51.100.2, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
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
