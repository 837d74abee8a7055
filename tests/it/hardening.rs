//! Hostile and unusual clients and backends: the cases an edge proxy meets in the wild.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use reveille::ProxySettings as Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn settings() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

/// A backend that counts the body it receives and answers with the count.
async fn counting_backend() -> Backend {
    Backend::start(Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(Ok(f)) = body.frame().await {
                total += f.into_data().map(|d| d.len()).unwrap_or(0);
            }
            Response::new(full(total.to_string()))
        })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connection_without_a_stream_is_closed_after_the_header_timeout() {
    let a = Backend::echo("a").await;
    let s = Settings { header_read_timeout: Duration::from_millis(400), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    // Preface and an empty SETTINGS frame, then nothing.
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .expect("connection must be closed")
        .ok();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    eventually(Duration::from_secs(2), "slot released", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_hold_their_connection_slot_and_idle_ones_are_closed() {
    let backend = Backend::websocket_echo().await;
    let s = Settings { max_connections: 2, tunnel_idle_timeout: Duration::from_millis(800), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("ws", vec![backend.addr])], &[("ws.test", "ws")]), s).await;

    let (mut ws1, _) =
        tokio_tungstenite::client_async("ws://ws.test/", TcpStream::connect(proxy.http).await.unwrap()).await.unwrap();
    let (mut ws2, _) =
        tokio_tungstenite::client_async("ws://ws.test/", TcpStream::connect(proxy.http).await.unwrap()).await.unwrap();
    assert_eq!(proxy.metric("reveille_open_connections").await, 2.0, "open tunnels are open connections");
    // Both slots are taken: a third client waits.
    let third = tokio::spawn(get(proxy.http, "ws.test", "/"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served while two tunnels held the limit");

    // Keep ws1 busy; ws2 goes idle and is closed after the tunnel idle timeout, which frees a slot.
    for i in 0..6 {
        ws1.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(ws1.next().await.unwrap().unwrap(), Message::text(format!("echo: ping {i}")));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(3), ws2.next()).await.expect("idle tunnel must be closed");
    assert!(!matches!(closed, Some(Ok(Message::Text(_)))), "{closed:?}");
    let got = tokio::time::timeout(Duration::from_secs(3), third).await.expect("third client served once a slot freed");
    // (The backend answers a plain GET with 400: what matters is that it was served at all.)
    assert_eq!(got.unwrap().status, StatusCode::BAD_REQUEST);
    // ws1, active all along, still works.
    ws1.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws1.next().await.unwrap().unwrap(), Message::text("echo: still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_is_not_a_gateway_timeout() {
    let backend = counting_backend().await;
    let s = Settings { response_timeout: Duration::from_millis(500), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![backend.addr])], &[("up.test", "up")]), s).await;
    // 1.5 s of upload, far longer than the response timeout.
    let stream = futures::stream::iter(0..15).then(|_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![1u8; 1000])))
    });
    let req = Request::post("/").header("host", "up.test").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.text, "15000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_get_body_is_forwarded() {
    let backend = counting_backend().await;
    let proxy = TestProxy::start(&routes_file(&[("c", vec![backend.addr])], &[("c.test", "c")])).await;
    let raw = b"GET / HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let reply = raw_exchange(proxy.http, raw, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n\r\n5"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_decides_routing_and_host() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(
        &[("a", vec![a.addr]), ("b", vec![b.addr])],
        &[("a.test", "a"), ("b.test", "b")],
    ))
    .await;
    // Absolute-form target for a.test with a Host naming b.test: a.test's backend gets Host a.test.
    let got = send(proxy.http, Request::get("http://a.test/x").header("host", "b.test").body(full("")).unwrap()).await;
    assert_eq!(got.backend(), "a");
    assert_eq!(got.json()["headers"]["host"], serde_json::json!(["a.test"]));
    assert_eq!(got.json()["headers"]["x-forwarded-host"], serde_json::json!(["a.test"]));
    // Two Host headers: 400, nothing forwarded.
    let raw = b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(proxy.http, raw, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // `Connection: host` does not strip Host.
    let got = send(
        proxy.http,
        Request::get("/").header("host", "a.test").header("connection", "host").body(full("")).unwrap(),
    )
    .await;
    assert_eq!(got.json()["headers"]["host"], serde_json::json!(["a.test"]));
    assert_eq!(a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_wins_over_host_and_cookies_are_joined() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(
        &[("a", vec![a.addr]), ("b", vec![b.addr])],
        &[("a.test", "a"), ("b.test", "b")],
    ))
    .await;
    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a.test/")
        .header("host", "b.test")
        .header("cookie", "x=1")
        .header("cookie", "y=2")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["backend"], "a");
    assert_eq!(json["headers"]["host"], serde_json::json!(["a.test"]));
    assert_eq!(json["headers"]["cookie"], serde_json::json!(["x=1; y=2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_pass_and_connect_is_refused() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")])).await;
    // h2c upgrade (a request-smuggling vector): forwarded as a plain request, without the upgrade headers.
    let req = Request::get("/")
        .header("host", "a.test")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
        .body(full(""))
        .unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    let h = &got.json()["headers"];
    assert!(h.get("upgrade").is_none() && h.get("connection").is_none() && h.get("http2-settings").is_none(), "{h}");

    let reply =
        raw_exchange(proxy.http, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", Duration::from_secs(5))
            .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 1, "CONNECT never reaches a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_mid_upload_is_not_a_backend_error() {
    let backend = counting_backend().await;
    let proxy = TestProxy::start(&routes_file(&[("up", vec![backend.addr])], &[("up.test", "up")])).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
    // More than the request buffer, so the body streams to the backend.
    c.write_all(&[7u8; 80_000]).await.unwrap();
    eventually(Duration::from_secs(5), "request reached the backend", || async {
        backend.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(c);
    eventually(Duration::from_secs(5), "request finished", || async {
        proxy.metric("reveille_requests_total{service=\"up\",class=\"4xx\"}").await == 1.0
    })
    .await;
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"protocol\"}").await, 0.0);
    assert_eq!(proxy.metric("reveille_requests_total{service=\"up\",class=\"5xx\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_with_content_length_and_chunked_is_not_truncated() {
    // A backend that sends both framings (invalid, but seen in the wild).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nhello world!\r\n0\r\n\r\n")
                    .await;
            });
        }
    });
    let proxy = TestProxy::start(&routes_file(&[("x", vec![addr])], &[("x.test", "x")])).await;
    let got = get(proxy.http, "x.test", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text, "hello world!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_does_not_accept_is_skipped_after_the_connect_timeout() {
    // A listener with a backlog of one that never accepts: once its queue is full, further SYNs are dropped,
    // so a connect hangs as it would to a blackholed host — without sending anything off this machine.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let black = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(black)).await {
            fillers.push(s);
        }
    }
    let live = Backend::echo("live").await;
    let s = Settings { connect_timeout: Duration::from_millis(300), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("s", vec![black, live.addr])], &[("s.test", "s")]), s).await;
    for _ in 0..2 {
        let started = Instant::now();
        let got = get(proxy.http, "s.test", "/").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.backend(), "live");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"connect_timeout\"}").await, 1.0);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_client_that_ignores_goaway_is_dropped() {
    let a = Backend::echo("a").await;
    let s = Settings { idle_timeout: Duration::from_millis(300), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    // Preface, empty SETTINGS, then one GET on stream 1 (HPACK: :method GET, :scheme http, :path /,
    // :authority "a.test"). After that the client reads but never answers anything: no SETTINGS ack, no PING ack.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let block = b"\x82\x86\x84\x41\x06a.test";
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(block);
    c.write_all(&out).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut buf))
        .await
        .expect("connection must be dropped")
        .ok();
    let waited = start.elapsed();
    assert_eq!(a.hits.load(Ordering::SeqCst), 1, "the request was served");
    assert!(waited >= Duration::from_millis(300), "closed before the idle timeout: {waited:?}");
    assert!(waited < Duration::from_secs(10), "kept for {waited:?}");
    eventually(Duration::from_secs(2), "slot released", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
}

/// A streamed request body of `chunks` × 256 KiB that never ends on its own (only the answer ends the exchange),
/// fed as fast as the connection takes it.
fn endless_upload(chunks: usize) -> (BoxBody, tokio::task::JoinHandle<()>) {
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
        for _ in 0..chunks {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (BodyExt::boxed(StreamBody::new(stream)), feeder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_unread_gets_its_answer_not_a_reset() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), settings()).await;
    // reveille answers 404 without reading the body, and closes: with bytes of the upload still arriving, a
    // plain close would reset the connection, and the client (hyper here, a browser or curl alike) would get a
    // broken pipe instead of the answer. Several times: the reset is a race.
    for round in 0..10 {
        let (body, feeder) = endless_upload(1024);
        let req = Request::post("/upload").header("host", "nobody.test").body(body).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), testkit::http::send(proxy.http, req))
            .await
            .expect("answered before the upload would have ended");
        feeder.abort();
        let got = got.unwrap_or_else(|e| panic!("round {round}: the answer was lost: {e:?}"));
        assert_eq!(got.status(), StatusCode::NOT_FOUND, "round {round}");
    }
    eventually(Duration::from_secs(5), "every slot released once its client closed", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
    // A client that stops sending without closing: the answer, then reveille's FIN; once the client closes,
    // the lingering connection gives its slot back. With `Connection: close` too: its body is unread all the
    // same.
    for close in ["", "Connection: close\r\n"] {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        let head = format!("POST / HTTP/1.1\r\nHost: nobody.test\r\n{close}Content-Length: 10000000\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&[7u8; 1_000_000]).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .expect("reveille closed its side after the answer")
            .expect("a clean end, not a reset");
        assert!(got.starts_with(b"HTTP/1.1 404"), "{close}: {}", String::from_utf8_lossy(&got));
        assert_eq!(proxy.metric("reveille_open_connections").await, 1.0, "{close}: lingering, it holds its slot");
        drop(c);
        eventually(Duration::from_secs(3), "slot released once the client closed", || async {
            proxy.metric("reveille_open_connections").await == 0.0
        })
        .await;
    }
}

/// A request that asks for the close and is read whole ends the connection at once, with a clean end: its
/// client sends nothing more (RFC 9112 §9.6), so there is nothing to linger for and its slot is given back with
/// the client still connected. Bytes it sent along after that request (a pipelined request, which it must not
/// send) are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asking_for_the_close_ends_its_connection_without_lingering() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), settings()).await;
    for (what, request) in [
        ("a GET", &b"GET /one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"[..]),
        (
            "a POST read whole",
            b"POST /one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
        ),
        ("HTTP/1.0", b"GET /one HTTP/1.0\r\nHost: a.test\r\n\r\n"),
    ] {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: reveille closed after the answer"))
            .unwrap_or_else(|e| panic!("{what}: a clean end, not a reset: {e}"));
        assert!(
            got.starts_with(b"HTTP/1.1 200") || got.starts_with(b"HTTP/1.0 200"),
            "{what}: {}",
            String::from_utf8_lossy(&got)
        );
        // The client has not closed: the slot is given back all the same.
        eventually(Duration::from_secs(3), "slot released with the client still connected", || async {
            proxy.metric("reveille_open_connections").await == 0.0
        })
        .await;
        drop(c);
    }
    // Bytes after a `Connection: close` request, sent with it: answered, and no slot held for the client.
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(
        b"GET /one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await.expect("closed");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert!(!String::from_utf8_lossy(&got).contains("/two"), "nothing after the close is served");
    eventually(Duration::from_secs(3), "slot released with the client still connected", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
}
