//! HTTP/2 to `h2c://` backends: what the backend receives, few connections for many requests (multiplexed),
//! a backend that goes away (GOAWAY) under a steady load without losing a request, request bodies that stream
//! beside an early response or past every window, clients that stop reading, PING keep-alive and the idle close.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::support::grpc::*;
use crate::support::*;

/// An h2 backend that answers with a JSON description of the request (as `Backend::echo`), after `/sleep/MS`
/// waits and `/big/MIB` answers that many MiB, served as `options` say.
async fn h2_echo(options: H2Options) -> H2Backend {
    H2Backend::start(
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                }
                if let Some(mib) = req.uri().path().strip_prefix("/big/") {
                    return h2_text(vec![b'x'; mib.parse::<usize>().unwrap() << 20]);
                }
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers.entry(k.to_string()).or_default().push(v.to_str().unwrap_or("?").to_string());
                }
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(usize::MAX);
                let json = serde_json::json!({
                    "method": parts.method.as_str(),
                    "uri": parts.uri.to_string(),
                    "version": format!("{:?}", parts.version),
                    "headers": headers,
                    "body": body,
                });
                h2_text(json.to_string())
            })
        }),
        options,
    )
    .await
}

fn h2c_routes(backend: &H2Backend) -> String {
    format!("[services.h]\nbackends = [\"h2c://{}\"]\n[routes]\n\"h2.test\" = \"h\"\n", backend.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_reaches_an_h2c_backend_as_http2() {
    let backend = h2_echo(H2Options::default()).await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;

    let req = Request::post("/submit?x=1")
        .header("host", "h2.test")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "gone")
        .header("x-end", "kept")
        .body(full("y".repeat(200_000)))
        .unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let json = got.json();
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(json["method"], "POST");
    // `Host` went as `:authority`.
    assert_eq!(json["uri"], "http://h2.test/submit?x=1");
    assert!(json["headers"].get("host").is_none(), "{json}");
    assert!(json["headers"].get("x-hop").is_none() && json["headers"].get("connection").is_none(), "{json}");
    assert_eq!(json["headers"]["x-end"][0], "kept");
    // The forwarding fields, which travel beside the request's map (`upstream::Appended`), are in the h2 one.
    assert_eq!(json["headers"]["x-forwarded-host"][0], "h2.test");
    assert_eq!(json["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(json["headers"]["x-real-ip"][0], "127.0.0.1");
    assert_eq!(json["headers"]["x-forwarded-proto"][0], "http");
    assert_eq!(json["body"], 200_000, "the whole body went through");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// reveille indexes the fields it repeats into the backend's HPACK table, no larger than the backend allows:
/// every request arrives whole whatever that is — no table at all, one that holds a few fields and evicts as it
/// goes (a field that changes with every request is a new entry each time), or the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arrive_whole_whatever_hpack_table_the_backend_allows() {
    for size in [0, 400, 4096] {
        let backend = h2_echo(H2Options { header_table_size: Some(size), ..H2Options::default() }).await;
        let proxy = TestProxy::start(&h2c_routes(&backend)).await;
        for i in 0..30 {
            let req = Request::get(format!("/r?i={i}"))
                .header("host", "h2.test")
                .header("x-same", "s")
                .header("x-each", format!("v{i}"))
                .header("x-third", format!("t{}", i % 3))
                .body(full(""))
                .unwrap();
            let got = send(proxy.http, req).await;
            assert_eq!(got.status, StatusCode::OK, "table {size}, request {i}: {}", got.text);
            let json = got.json();
            assert_eq!(json["uri"], format!("http://h2.test/r?i={i}"), "table {size}");
            let h = &json["headers"];
            assert_eq!((&h["x-same"][0], &h["x-each"][0]), (&"s".into(), &format!("v{i}").into()), "table {size}: {h}");
            assert_eq!(h["x-third"][0], format!("t{}", i % 3), "table {size}: {h}");
            assert_eq!(h["x-forwarded-host"][0], "h2.test", "table {size}: {h}");
        }
        assert!(backend.connections.load(Ordering::SeqCst) <= 2, "the requests shared a connection (and its table)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_few_connections() {
    let backend = h2_echo(H2Options::default()).await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;

    // 60 requests at once from 60 client connections, each held 200 ms by the backend: they overlap.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move { get(addr, "h2.test", &format!("/sleep/200?i={i}")).await }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 60);
    let conns = backend.connections.load(Ordering::SeqCst);
    // The backend allows 200 streams per connection (hyper's default): one connection carries them all.
    assert!((1..=4).contains(&conns), "{conns} connections for 60 concurrent requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_allows_few_streams_gets_more_connections() {
    // 10 streams per connection, and each request held until all 30 are in (or 5 s pass): 30 requests at once
    // need three connections (and get no more than four).
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let (a, n) = (arrived.clone(), all_in.clone());
    let backend = H2Backend::start(
        Arc::new(move |req: Request<Incoming>| {
            let (a, n) = (a.clone(), n.clone());
            Box::pin(async move {
                if req.uri().path() == "/hold" {
                    let wait = n.notified();
                    if a.fetch_add(1, Ordering::SeqCst) + 1 >= 30 {
                        n.notify_waiters();
                    } else {
                        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
                    }
                }
                h2_text("ok")
            })
        }),
        H2Options { max_streams: Some(10), ..H2Options::default() },
    )
    .await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;
    // A first request brings the backend's SETTINGS: the limit is known before the burst.
    assert_eq!(get(proxy.http, "h2.test", "/").await.status, StatusCode::OK);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move { get(addr, "h2.test", &format!("/hold?i={i}")).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(arrived.load(Ordering::SeqCst), 30);
    let conns = backend.connections.load(Ordering::SeqCst);
    assert!((3..=4).contains(&conns), "{conns} connections for 30 requests at 10 streams each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_goes_away_under_load_loses_no_request() {
    // Every connection is shut down gracefully (GOAWAY) after 25 requests.
    let backend = h2_echo(H2Options { goaway_after: Some(25), ..H2Options::default() }).await;
    // A request stuck on a closing connection would show as a 504 in 5 s, not after a minute.
    let settings = reveille::ProxySettings {
        access_log: false,
        response_timeout: Duration::from_secs(5),
        ..reveille::ProxySettings::default()
    };
    let proxy = TestProxy::start_with(&h2c_routes(&backend), settings).await;

    // 16 clients, 25 requests each, back to back: GETs and POSTs with a body.
    let mut tasks = Vec::new();
    for c in 0..16 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..25 {
                let req = if i % 2 == 0 {
                    Request::get(format!("/sleep/5?c={c}&i={i}")).header("host", "h2.test").body(full("")).unwrap()
                } else {
                    Request::post(format!("/?c={c}&i={i}"))
                        .header("host", "h2.test")
                        .body(full("z".repeat(1000)))
                        .unwrap()
                };
                let got = send(addr, req).await;
                assert_eq!(got.status, StatusCode::OK, "client {c} request {i}: {}", got.text);
                ok += 1;
            }
            ok
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, 400, "every request answered");
    let conns = backend.connections.load(Ordering::SeqCst);
    assert!(conns >= 2, "the backend went away: requests moved to new connections ({conns})");
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"protocol\"}").await, 0.0);
}

/// An h2 backend that answers at once, before it reads anything of the request, and echoes the request body
/// back as it comes.
async fn h2_early_echo() -> H2Backend {
    H2Backend::start(
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move { hyper::Response::new(tonic::body::Body::new(req.into_body())) })
        }),
        H2Options::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_reading_the_request_still_gets_its_body_as_it_comes() {
    // The response head comes before the request body has ended, and the backend then waits for more of it:
    // reveille must go on sending the body beside the response (a bidirectional stream), in lockstep.
    let backend = h2_early_echo().await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);

    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::convert::Infallible>>();
    tx.unbounded_send(Ok(Frame::data(Bytes::from("chunk 0")))).unwrap();
    // As a gRPC call, so that reveille streams the body from its first byte (it holds other bodies up to its
    // buffer, to send them again if a backend fails).
    let req = Request::post("http://h2.test/echo")
        .header("content-type", "application/grpc")
        .body(StreamBody::new(rx))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("the response head while the request body is still open")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..5 {
        // Each chunk is sent only once the one before came back.
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("chunk {i} never came back"))
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("chunk {i}"));
        if i < 4 {
            tx.unbounded_send(Ok(Frame::data(Bytes::from(format!("chunk {}", i + 1))))).unwrap();
        }
    }
    // The request body ends, and so does the echo.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.unwrap().unwrap();
    assert!(end.to_bytes().is_empty());
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_and_resets_the_request_body_it_does_not_want_is_still_heard_whole() {
    // The backend answers at once and never reads the request: once its response has ended it resets the stream
    // with NO_ERROR to stop the body (RFC 9113 §8.1, as nginx's `return` and hyper's server do). The response
    // must reach the client whole, not dropped with the stream.
    let backend = H2Backend::start(
        Arc::new(|_req: Request<Incoming>| Box::pin(async move { h2_text("answered without reading") })),
        H2Options::default(),
    )
    .await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        // A body that stays open: the backend's reset comes while reveille still has it to send.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::convert::Infallible>>();
        tx.unbounded_send(Ok(Frame::data(Bytes::from("unwanted")))).unwrap();
        let req = Request::post("http://h2.test/")
            .header("content-type", "application/grpc")
            .body(StreamBody::new(rx))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "call {i}");
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.unwrap();
        assert_eq!(body.unwrap().to_bytes(), "answered without reading", "call {i}");
        drop(tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_larger_than_every_window_arrive_whole_side_by_side() {
    // Four 3 MiB uploads at once on one backend connection: each is more than the backend's windows (hyper's
    // server defaults: 1 MiB per stream and per connection), so each goes out as the backend opens them, and no
    // stream's body holds the connection's window from the others.
    let backend = h2_echo(H2Options::default()).await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move {
            let req = Request::post(format!("/upload?i={i}"))
                .header("host", "h2.test")
                .body(full(vec![b'u'; 3 << 20]))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(20), send(addr, req)).await.expect("upload stalled")
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.json()["body"], 3 << 20);
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "all on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_slow_their_own_streams_only() {
    let backend = h2_echo(H2Options::default()).await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;

    // Four clients ask for 16 MiB each and read none of it: far more than the socket buffers take, so each
    // stream's flow-control window at reveille fills and stays full.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /big/16 HTTP/1.1\r\nHost: h2.test\r\n\r\n").await.unwrap();
        stalled.push(s);
    }
    eventually(Duration::from_secs(5), "the backend took the four requests", || {
        let n = backend.requests.load(Ordering::SeqCst);
        async move { n == 4 }
    })
    .await;
    // What the windows let through is on its way; there is no event to wait on for it to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another request on the same backend connection still gets its whole answer.
    let got = tokio::time::timeout(Duration::from_secs(5), get(proxy.http, "h2.test", "/big/2"))
        .await
        .expect("a stalled client held up another client's stream");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text.len(), 2 << 20);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "all on one connection");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_that_stops_answering_pings_is_replaced() {
    let backend = h2_echo(H2Options::default()).await;
    let settings = reveille::ProxySettings {
        access_log: false,
        upstream_h2_keep_alive_interval: Duration::from_millis(100),
        upstream_h2_keep_alive_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_secs(3),
        ..reveille::ProxySettings::default()
    };
    let proxy = TestProxy::start_with(&h2c_routes(&backend), settings).await;
    assert_eq!(get(proxy.http, "h2.test", "/first").await.status, StatusCode::OK);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);

    // The connection goes silent without closing (a peer that hangs, a network that drops everything). Its
    // PINGs go unanswered, and it is closed; the next request opens a new one instead of waiting on it for
    // the response timeout.
    backend.freeze();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    let got = get(proxy.http, "h2.test", "/second").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_backend_connection_is_closed_after_the_idle_timeout() {
    let backend = h2_echo(H2Options::default()).await;
    let settings = reveille::ProxySettings {
        access_log: false,
        pool_idle_timeout: Duration::from_millis(300),
        ..reveille::ProxySettings::default()
    };
    let proxy = TestProxy::start_with(&h2c_routes(&backend), settings).await;
    // In use, it stays open across several idle periods.
    for i in 0..6 {
        assert_eq!(get(proxy.http, "h2.test", &format!("/sleep/100?i={i}")).await.status, StatusCode::OK);
    }
    assert_eq!((backend.connections.load(Ordering::SeqCst), backend.closed.load(Ordering::SeqCst)), (1, 0));
    // Unused, it is closed.
    eventually(Duration::from_secs(3), "the idle connection closed", || {
        let closed = backend.closed.load(Ordering::SeqCst);
        async move { closed == 1 }
    })
    .await;
    // And the next request opens another.
    assert_eq!(get(proxy.http, "h2.test", "/again").await.status, StatusCode::OK);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_backend_is_health_checked_over_http2() {
    // A backend that speaks HTTP/2 only and fails its check; another that passes it.
    let sick = H2Backend::start(
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let mut resp = h2_text("sick");
                if req.uri().path() == "/healthz" {
                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                resp
            })
        }),
        H2Options::default(),
    )
    .await;
    let good = h2_echo(H2Options::default()).await;
    let routes = format!(
        "[services.h]\nbackends = [\"h2c://{}\", \"h2c://{}\"]\nejection = false\n\
         health_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }}\n\
         [routes]\n\"h2.test\" = \"h\"\n",
        sick.addr, good.addr
    );
    let proxy = TestProxy::start(&routes).await;
    eventually(Duration::from_secs(5), "the sick backend's check to fail", || async {
        let view = proxy.service_view("h").await;
        let sick_view = view["backend_health"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == format!("h2c://{}", sick.addr) || b["address"] == sick.addr.to_string())
            .cloned()
            .unwrap_or_default();
        sick_view["check_failing"] == true
    })
    .await;
    let checks = sick.requests.load(Ordering::SeqCst);
    for i in 0..10 {
        assert_eq!(get(proxy.http, "h2.test", &format!("/?i={i}")).await.status, StatusCode::OK);
    }
    // Only checks reached the sick backend (a check or two more may have come meanwhile).
    assert!(sick.requests.load(Ordering::SeqCst) <= checks + 3);
    assert!(good.requests.load(Ordering::SeqCst) >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_to_an_h2c_backend_is_refused_not_sent_as_a_plain_request() {
    let backend = h2_echo(H2Options::default()).await;
    let proxy = TestProxy::start(&h2c_routes(&backend)).await;

    let req = Request::get("/chat")
        .header("host", "h2.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(full(""))
        .unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!(got.status, StatusCode::NOT_IMPLEMENTED, "{}", got.text);
    assert!(got.text.contains("does not take WebSocket connections"), "{}", got.text);
    // Nothing reached the backend, and its health is not the worse for it.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);
    let view = proxy.service_view("h").await;
    assert_eq!(view["backend_health"][0]["health"], "unknown", "{view}");
    // A plain request still goes through.
    assert_eq!(get(proxy.http, "h2.test", "/after").await.status, StatusCode::OK);
}
