//! Nothing holds a slot forever: clients that stop sending their body or reading their response, backends that
//! stop mid-body, uploads too slow to be honest, and the tenants they would otherwise take down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use reveille::ProxySettings as Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn settings() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

/// A backend that reads the whole body and answers with its length; `done` counts bodies read to the end and
/// `broken` bodies whose connection failed under them.
struct Reader {
    backend: Backend,
    done: Arc<AtomicUsize>,
    broken: Arc<AtomicUsize>,
}

async fn reader() -> Reader {
    let (done, broken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (d, b) = (done.clone(), broken.clone());
    let backend = Backend::start(Arc::new(move |req: Request<Incoming>| {
        let (d, b) = (d.clone(), b.clone());
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            loop {
                match body.frame().await {
                    Some(Ok(f)) => total += f.into_data().map(|d| d.len()).unwrap_or(0),
                    Some(Err(_)) => {
                        b.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    None => {
                        d.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
            Response::new(full(total.to_string()))
        })
    }))
    .await;
    Reader { backend, done, broken }
}

/// Reads what the server sends until it closes the connection or `limit` passes; returns the text and whether
/// it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_small_upload_gets_408_and_never_reaches_the_backend() {
    let r = reader().await;
    let s = Settings { body_timeout: Duration::from_millis(500), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 1000\r\n\r\nx").await.unwrap();
    let start = Instant::now();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed, "the connection is closed after the 408");
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    // The body never arrived whole: no backend connection was taken for it.
    assert_eq!(r.backend.hits.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.metric("reveille_requests_total{service=\"up\",class=\"4xx\"}").await, 1.0);
    eventually(Duration::from_secs(3), "slot released", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_large_upload_gets_408_and_releases_the_backend_connection() {
    let r = reader().await;
    let s = Settings { body_timeout: Duration::from_millis(500), request_buffer_size: 1024, ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
    c.write_all(&[7u8; 5000]).await.unwrap();
    // More than the buffer: the body streams to the backend, which now holds a connection for it.
    eventually(Duration::from_secs(5), "request reached the backend", || async {
        r.backend.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed);
    // The backend's connection was closed under its half-read body: its worker is free again.
    eventually(Duration::from_secs(3), "backend connection released", || async {
        r.broken.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(r.done.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"protocol\"}").await, 0.0, "not the backend's fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_minimum_rate_gets_408() {
    let r = reader().await;
    let s = Settings {
        min_body_rate: 2000,
        min_body_rate_grace: Duration::from_millis(500),
        request_buffer_size: 0,
        ..settings()
    };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
    // 20 bytes every 100 ms: 200 bytes/s, a tenth of the minimum, but never idle.
    let start = Instant::now();
    let (text, closed) = loop {
        if c.write_all(&[1u8; 20]).await.is_err() {
            break read_until_closed(&mut c, Duration::from_secs(5)).await;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await {
            Ok(Ok(n)) => {
                let (rest, closed) = read_until_closed(&mut c, Duration::from_secs(5)).await;
                break (String::from_utf8_lossy(&buf[..n]).into_owned() + &rest, closed);
            }
            Ok(Err(_)) => break (String::new(), true),
            Err(_) => assert!(start.elapsed() < Duration::from_secs(10), "never cut"),
        }
    };
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed);
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    eventually(Duration::from_secs(3), "backend connection released", || async {
        r.broken.load(Ordering::SeqCst) == 1
    })
    .await;

    // An honest upload well above the minimum passes, however long it takes.
    let stream = futures::stream::iter(0..10).then(|_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![1u8; 1000])))
    });
    let req = Request::post("/").header("host", "up.test").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    let got = send(proxy.http, req).await;
    assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "10000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_gets_400() {
    let r = reader().await;
    let proxy =
        TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), settings()).await;
    let got = raw_exchange(
        proxy.http,
        b"POST / HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(got.contains("malformed request body"), "{got}");
    assert_eq!(r.backend.hits.load(Ordering::SeqCst), 0);
}

/// A backend that sends a response head and `sent` bytes of a longer body, then holds the connection open
/// without a word; it reports when reveille closes the connection.
async fn stalling_backend(sent: usize) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(testkit::backend::serve_stalling(listener, sent, Some(tx)));
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_mid_body_is_cut_after_the_read_timeout() {
    let (addr, mut released) = stalling_backend(10).await;
    let s = Settings { upstream_read_timeout: Duration::from_millis(500), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("stall", vec![addr])], &[("stall.test", "stall")]), s).await;
    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: stall.test\r\n\r\n").await.unwrap();
    let start = Instant::now();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(closed, "the client connection is closed: its response cannot be completed");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("aaaaaaaaaa"), "the bytes sent so far were passed on: {text}");
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    tokio::time::timeout(Duration::from_secs(5), released.recv()).await.expect("backend connection closed");
    // Counted where the cut is logged, which may come just after the sockets close.
    eventually(Duration::from_secs(3), "body_timeout counted", || async {
        proxy.metric("reveille_upstream_errors_total{kind=\"body_timeout\"}").await == 1.0
    })
    .await;
    eventually(Duration::from_secs(3), "slot released", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_request_time_limit_cuts_slow_answers_and_slow_bodies() {
    let slow = Backend::echo("slow").await;
    // A backend that trickles its body: a byte every 100 ms, never idle long enough for the read timeout.
    let trickle = Backend::start(Arc::new(|_req: Request<Incoming>| {
        Box::pin(async move {
            let stream = futures::stream::iter(0..100).then(|_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"t")))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        })
    }))
    .await;
    let s = Settings { request_timeout: Some(Duration::from_millis(800)), ..settings() };
    let routes = routes_file(
        &[("slow", vec![slow.addr]), ("trickle", vec![trickle.addr])],
        &[("slow.test", "slow"), ("trickle.test", "trickle")],
    );
    let proxy = TestProxy::start_with(&routes, s).await;

    let start = Instant::now();
    let got = get(proxy.http, "slow.test", "/sleep/5000").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text);
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());

    let mut c = TcpStream::connect(proxy.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: trickle.test\r\n\r\n").await.unwrap();
    let start = Instant::now();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(8)).await;
    assert!(closed, "cut at the limit, not after the backend's 10 s");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // Without the limit (the default), the same response is whole.
    let proxy = TestProxy::start_with(&routes, Settings { request_timeout: None, ..settings() }).await;
    let got = get(proxy.http, "slow.test", "/sleep/1200").await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_disconnected_after_the_send_timeout() {
    // 64 MiB, far more than the socket buffers hold.
    let big = Backend::start(Arc::new(|_req: Request<Incoming>| {
        Box::pin(async move {
            let stream = futures::stream::iter(0..1024).map(|_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![0u8; 64 * 1024])))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        })
    }))
    .await;
    let s = Settings { send_timeout: Duration::from_millis(500), idle_timeout: Duration::from_secs(1), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("big", vec![big.addr])], &[("big.test", "big")]), s).await;
    // A small receive window and no reads at all.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(proxy.http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: big.test\r\n\r\n").await.unwrap();
    eventually(Duration::from_secs(15), "zero-window reader dropped", || async {
        proxy.metric("reveille_open_connections").await == 0.0
    })
    .await;
    drop(c);
}

/// A backend like a sync gunicorn or a small puma: `workers` connections served at a time, one request each
/// (`Connection: close`), the rest waiting in the listen backlog.
async fn few_workers(workers: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(testkit::backend::serve_few_workers(listener, workers));
    addr
}

/// Slow uploaders, each sending a byte of a 1000-byte body every 200 ms, until `stop`.
fn slow_uploaders(addr: std::net::SocketAddr, n: usize, stop: tokio_util::sync::CancellationToken) {
    for _ in 0..n {
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut c) = TcpStream::connect(addr).await else { return };
            let _ = c.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n").await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                if c.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One bystander request, with a deadline: `None` when it did not get an answer in time.
async fn bystander(addr: std::net::SocketAddr) -> Option<StatusCode> {
    tokio::time::timeout(Duration::from_secs(2), get(addr, "app.test", "/")).await.ok().map(|g| g.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_take_a_two_worker_tenant_down() {
    let backend = few_workers(2).await;
    let routes = routes_file(&[("app", vec![backend])], &[("app.test", "app")]);

    // Without buffering, ten slow uploads hold both workers: the bystander waits in the backlog. This proves
    // the attack works on this backend, so the second half means something.
    let proxy =
        TestProxy::start_with(&routes, Settings { request_buffer_size: 0, min_body_rate: 0, ..settings() }).await;
    let stop = tokio_util::sync::CancellationToken::new();
    slow_uploaders(proxy.http, 10, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bystander(proxy.http).await, None, "the attack should starve an unprotected two-worker backend");
    stop.cancel();
    drop(proxy);

    // With the default buffering, the same uploads wait in reveille; the backend serves everyone else.
    let backend = few_workers(2).await;
    let routes = routes_file(&[("app", vec![backend])], &[("app.test", "app")]);
    let proxy = TestProxy::start_with(&routes, settings()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    slow_uploaders(proxy.http, 10, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(bystander(proxy.http).await, Some(StatusCode::OK));
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_upload_gets_408_on_its_stream() {
    let r = reader().await;
    let s = Settings { body_timeout: Duration::from_millis(500), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // One byte, then a body that never continues nor ends.
    let body = futures::stream::once(async {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"x")))
    })
    .chain(futures::stream::pending());
    let req = Request::post("http://up.test/").body(BodyExt::boxed(StreamBody::new(body))).unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    assert_eq!(r.backend.hits.load(Ordering::SeqCst), 0);
    // The connection itself stays usable for other streams.
    let req = Request::get("http://up.test/").body(full("")).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_slow_clients_are_cut_to_the_overload_timeout() {
    let r = reader().await;
    let s = Settings {
        max_connections: 10,
        overload_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        min_body_rate: 0,
        ..settings()
    };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let stalled_body = || async {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 1000\r\n\r\nx").await.unwrap();
        c
    };
    // Half the slots taken by slow clients of every kind: no pressure, nobody is cut.
    let mut held = Vec::new();
    held.push(TcpStream::connect(proxy.http).await.unwrap()); // silent
    let mut partial = TcpStream::connect(proxy.http).await.unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHost: up").await.unwrap();
    held.push(partial);
    for _ in 0..3 {
        held.push(stalled_body().await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(proxy.metric("reveille_open_connections").await, 5.0);
    assert_eq!(proxy.metric("reveille_overloaded").await, 0.0);

    // Every slot taken: the slow ones are cut within the overload timeout, and a new client gets in.
    for _ in 0..5 {
        held.push(stalled_body().await);
    }
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), get(proxy.http, "up.test", "/")).await;
    assert_eq!(got.expect("served despite the full slots").status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // The five that had waited long were cut at once (the five newest may outlive the pressure: once a fifth of
    // the slots is free again, the normal limits are back).
    eventually(Duration::from_secs(5), "the long-waiting slow clients cut", || async {
        proxy.metric("reveille_connections_shed_total").await >= 5.0
    })
    .await;
    for mut c in held.drain(..5) {
        let (_, closed) = read_until_closed(&mut c, Duration::from_secs(2)).await;
        assert!(closed);
    }
    assert_eq!(r.backend.hits.load(Ordering::SeqCst), 1, "only the bystander reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_a_backend_stalling_mid_body_is_cut_to_the_overload_timeout() {
    let (stalled, _released) = stalling_backend(10).await;
    let healthy = Backend::echo("healthy").await;
    let s = Settings {
        max_connections: 4,
        overload_timeout: Duration::from_millis(300),
        upstream_read_timeout: Duration::from_secs(30),
        ..settings()
    };
    let routes = routes_file(
        &[("stall", vec![stalled]), ("ok", vec![healthy.addr])],
        &[("stall.test", "stall"), ("ok.test", "ok")],
    );
    let proxy = TestProxy::start_with(&routes, s).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: stall.test\r\n\r\n").await.unwrap();
        held.push(c);
    }
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), get(proxy.http, "ok.test", "/")).await;
    assert_eq!(got.expect("served despite the pinned slots").status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(proxy.metric("reveille_connections_shed_total").await >= 1.0);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_slot_taken_the_longest_waiting_client_makes_room_for_a_newcomer() {
    let r = reader().await;
    // A long overload timeout: only eviction can explain a quick answer.
    let s = Settings {
        max_connections: 4,
        overload_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        min_body_rate: 0,
        ..settings()
    };
    let proxy = TestProxy::start_with(&routes_file(&[("up", vec![r.backend.addr])], &[("up.test", "up")]), s).await;
    let mut oldest = TcpStream::connect(proxy.http).await.unwrap(); // silent from the start
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 1000\r\n\r\nx").await.unwrap();
        others.push(c);
    }
    eventually(Duration::from_secs(3), "every slot taken", || async {
        proxy.metric("reveille_open_connections").await == 4.0
    })
    .await;
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), get(proxy.http, "up.test", "/")).await;
    assert_eq!(got.expect("the newcomer is served").status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    // The one that had waited longest went; the others are still there.
    let (_, closed) = read_until_closed(&mut oldest, Duration::from_secs(2)).await;
    assert!(closed, "the longest-waiting connection was evicted");
    assert_eq!(proxy.metric("reveille_connections_shed_total").await, 1.0);
    // The newcomer's own connection closes too (its close may be seen a moment after its response).
    eventually(Duration::from_secs(3), "the three others still open", || async {
        proxy.metric("reveille_open_connections").await == 3.0
    })
    .await;
    assert_eq!(proxy.metric("reveille_connections_shed_total").await, 1.0);
    drop(others);
}
