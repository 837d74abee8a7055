//! WebSocket through the proxy: the upgrade passes, then frames flow both ways until a side closes.

mod support;

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A backend that upgrades every request to a WebSocket that echoes what it receives, prefixed with "echo: ".
async fn ws_echo_backend() -> Backend {
    Backend::start(Arc::new(|mut req: Request<Incoming>| {
        Box::pin(async move {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                let mut r = Response::new(full("not a websocket request"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = TokioIo::new(upgrade.await.unwrap());
                let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => ws.send(Message::text(format!("echo: {t}"))).await.unwrap(),
                        Message::Binary(b) => ws.send(Message::binary(b)).await.unwrap(),
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert("sec-websocket-accept", derive_accept_key(key.as_bytes()).parse().unwrap());
            r
        })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let backend = ws_echo_backend().await;
    let proxy = TestProxy::start(&routes_file(&[("chat", vec![backend.addr])], &[("chat.test", "chat")])).await;

    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo: hello {i}")));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    assert_eq!(proxy.metric("reveille_requests_total{service=\"chat\",class=\"1xx\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_refused_by_backend_is_a_normal_response() {
    let backend = Backend::echo("plain").await;
    let proxy = TestProxy::start(&routes_file(&[("plain", vec![backend.addr])], &[("plain.test", "plain")])).await;

    // The upgrade headers reach the backend (they are kept for upgrades) and its 200 comes back as is.
    let req = Request::get("/")
        .header("host", "plain.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let json = got.json();
    assert_eq!(json["headers"]["connection"][0], "upgrade");
    assert_eq!(json["headers"]["upgrade"][0], "websocket");

    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let err = tokio_tungstenite::client_async("ws://plain.test/", stream).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), StatusCode::OK),
        other => panic!("expected the backend's HTTP answer, got {other}"),
    }
}
