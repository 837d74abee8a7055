//! WebSocket through the proxy: the upgrade passes, then frames flow both ways until a side closes.

use crate::support::*;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let backend = Backend::websocket_echo().await;
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
