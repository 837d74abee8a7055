//! HTTP/2 with prior knowledge (h2c) from clients; backends still get HTTP/1.1 with a Host header.

use crate::support::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_routed_by_authority_and_multiplexed() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(
        &[("a", vec![a.addr]), ("b", vec![b.addr])],
        &[("a.test", "a"), ("b.test", "b")],
    ))
    .await;

    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);

    // 20 concurrent streams on one connection, alternating hosts.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let host = if i % 2 == 0 { "a.test" } else { "b.test" };
            let req = Request::get(format!("http://{host}/sleep/50?i={i}")).body(full("")).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (host, json)
        }));
    }
    for t in tasks {
        let (host, json) = t.await.unwrap();
        assert_eq!(json["backend"], &host[..1]);
        assert_eq!(json["version"], "HTTP/1.1", "backends speak HTTP/1.1");
        assert_eq!(json["headers"]["host"][0], host, "Host is set from :authority");
        assert_eq!(json["headers"]["x-forwarded-host"][0], host);
    }

    // A POST body over h2.
    let mut sender = sender.clone();
    let req = Request::post("http://a.test/").body(full("x".repeat(100_000))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Unknown host over h2: 404.
    let resp = sender.send_request(Request::get("http://c.test/").body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
