//! Slots under attack (hardening, round two): lingering closes that must not lock a bystander out, h2 streams
//! whose client opens no flow-control window, header-field floods over h2, and one address holding many
//! connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use futures::StreamExt as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use reveille::ProxySettings as Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn settings() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

/// A client whose upload reveille answers before reading it (a 404: no route), then trickles a byte every
/// `every`, so that reveille's close lingers; it connects again whenever its connection is closed, until
/// aborted.
fn lingering_uploader(proxy: SocketAddr, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(mut c) = TcpStream::connect(proxy).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let head = b"POST /upload HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 100000000\r\n\r\nx";
            if c.write_all(head).await.is_err() {
                continue;
            }
            // The 404 and reveille's FIN come at once; the client reads neither and goes on sending, as an upload
            // does, until a write fails (reveille closed the socket for good).
            loop {
                tokio::time::sleep(every).await;
                if c.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    })
}

/// How long a bystander's GET on a new connection takes to be answered 200, at most `limit`.
async fn bystander(proxy: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    match tokio::time::timeout(limit, get(proxy, "app.test", "/")).await {
        Ok(got) if got.status == StatusCode::OK => Ok(start.elapsed()),
        Ok(got) => Err(format!("answered {}", got.status)),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// 60 clients whose uploads reveille refused unread, lingering and trickling a byte every 3 s (inside the 5 s
/// that would end a linger), against 20 slots: the bystander must get a slot within twice the overload
/// timeout. Before: the first newcomer's eviction found no lingering connection old enough, and the accept
/// loop then waited for a slot without trying again; the slots came free only as each linger ran out (30 s),
/// and went to the attackers ahead of the bystander in the backlog (40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_lingering_uploads_does_not_lock_a_bystander_out() {
    let app = Backend::fixed("ok").await;
    let s = Settings { max_connections: 20, overload_timeout: Duration::from_secs(2), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("app", vec![app.addr])], &[("app.test", "app")]), s).await;
    let attackers: Vec<_> = (0..60).map(|_| lingering_uploader(proxy.http, Duration::from_secs(3))).collect();
    eventually(Duration::from_secs(10), "every slot taken by lingering uploads", || async {
        proxy.metric("reveille_open_connections").await >= 20.0
    })
    .await;
    // A moment for the lingering closes to settle in (they answer at once, then linger).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let took = bystander(proxy.http, Duration::from_secs(15)).await;
        let took = took.unwrap_or_else(|e| panic!("round {round}: the bystander was locked out: {e}"));
        assert!(took < Duration::from_secs(4), "round {round}: served after {took:?}, past 2x the overload timeout");
    }
    let evicted = proxy.metric("reveille_connections_evicted_total").await;
    assert!(evicted >= 5.0, "each bystander's slot came from an eviction: {evicted}");
    assert!(proxy.metric("reveille_connections_shed_total").await >= evicted, "evictions are counted as shed");
    for a in attackers {
        a.abort();
    }
}

/// The same, sustained: 45 lingering uploaders that reconnect as soon as they are cut, against 30 slots, and
/// a bystander sampling every 100 ms for 3 s. Every sample is served, within twice the overload timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_lingering_uploads_leave_room_for_a_bystander() {
    let app = Backend::fixed("ok").await;
    let s = Settings { max_connections: 30, overload_timeout: Duration::from_secs(2), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("app", vec![app.addr])], &[("app.test", "app")]), s).await;
    let attackers: Vec<_> = (0..45).map(|_| lingering_uploader(proxy.http, Duration::from_secs(1))).collect();
    eventually(Duration::from_secs(10), "every slot taken", || async {
        proxy.metric("reveille_open_connections").await >= 30.0
    })
    .await;
    let mut samples = Vec::new();
    for _ in 0..30 {
        samples.push(tokio::spawn(bystander(proxy.http, Duration::from_secs(10))));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut worst = Duration::ZERO;
    for (i, s) in samples.into_iter().enumerate() {
        let took = s.await.unwrap().unwrap_or_else(|e| panic!("sample {i}: {e}"));
        worst = worst.max(took);
    }
    assert!(worst < Duration::from_secs(4), "the slowest sample took {worst:?}, past 2x the overload timeout");
    for a in attackers {
        a.abort();
    }
}

/// A backend that answers every request with an endless body (`Content-Length: 1 GB`) and writes it as fast as
/// it is taken; counts the connections it has open.
async fn endless_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, accepted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, total) = (open.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let count = count.clone();
            total.fetch_add(1, Ordering::SeqCst);
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request_head(&mut s, &mut buf).await.is_some() {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
                    let chunk = vec![b'z'; 64 * 1024];
                    if s.write_all(head.as_bytes()).await.is_ok() {
                        while s.write_all(&chunk).await.is_ok() {}
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open, accepted)
}

/// An h2 client (prior knowledge) on `proxy`.
async fn h2_client(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// An h2 client that opens streams and never reads their bodies keeps the socket writable: only the stream's
/// own send timeout can free the backend connections it pins. With a backend that never stalls (so no upstream
/// timeout fires), every stream is reset and every backend connection closed within the send timeout and a
/// quarter (plus the time the heads took to arrive). The client is the h2 crate's, with its default 64 KiB
/// windows, which it never opens further: the connection window runs out while most streams still wait for
/// capacity, and each reset hands the capacity its stream held to siblings, which send a frame with it. That
/// must not count as the client reading. Before: every backend connection stayed open; with such frames
/// counted as progress, the last ones were released only at about 3 times the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_opens_no_window_releases_its_backend_connections() {
    const STREAMS: usize = 100;
    let (backend, open, accepted) = endless_backend().await;
    // 3 s: the last of the heads, opened 10 ms apart, arrives before the first stream's timeout even on a loaded
    // machine (they took 1.4-2.2 s with other builds running).
    let s = Settings { send_timeout: Duration::from_secs(3), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("big", vec![backend])], &[("big.test", "big")]), s).await;
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let start = Instant::now();
    // The streams open 10 ms apart, as a client's do: their checks fall at different moments.
    let heads = (0..STREAMS).map(|i| {
        let sender = sender.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            let mut sender = sender.ready().await.unwrap();
            let (response, _) = sender.send_request(Request::get("http://big.test/").body(()).unwrap(), true).unwrap();
            response.await
        }
    });
    // Held, never read: no window is opened for them.
    let mut held = Vec::new();
    for resp in futures::future::join_all(heads).await {
        let resp = resp.expect("the response head arrives");
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    let heads_took = start.elapsed();
    assert_eq!(accepted.load(Ordering::SeqCst), STREAMS, "one backend connection per stream");
    if heads_took < Duration::from_millis(2800) {
        assert_eq!(open.load(Ordering::SeqCst), STREAMS, "none released before the send timeout");
    }
    eventually(Duration::from_secs(15), "every backend connection released", || async {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    let took = start.elapsed();
    eprintln!("{STREAMS} streams: heads in {heads_took:?}, every backend connection released after {took:?}");
    assert!(took >= Duration::from_millis(2800), "released before the send timeout: {took:?}");
    assert!(
        took < heads_took + Duration::from_millis(4500),
        "released only after {took:?} (heads took {heads_took:?}), past 1.25 times the 3 s limit and slack"
    );
    assert_eq!(proxy.metric("reveille_send_timeouts_total{kind=\"stream\"}").await, STREAMS as f64);
    // The client sees its streams reset.
    let mut body = held.pop().unwrap().into_body();
    let mut reset = false;
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            reset = true;
            break;
        }
    }
    assert!(reset, "the stream was reset, not ended");
    drop(held);
}

/// The per-stream send timeout spares a client that reads slowly but steadily, and a backend that is slow to
/// send: neither is a client that reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_reads_slowly_or_waits_on_a_slow_backend_is_not_reset() {
    // 2 MB, in 64 KiB chunks, 150 ms apart on the backend's side for the first ten.
    let slow = Backend::start(Arc::new(|_req| {
        Box::pin(async move {
            let stream = futures::stream::iter(0..32).then(|i| async move {
                if i < 10 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(bytes::Bytes::from(
                    vec![b'y'; 64 * 1024],
                )))
            });
            http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        })
    }))
    .await;
    let s = Settings { send_timeout: Duration::from_millis(600), ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("slow", vec![slow.addr])], &[("slow.test", "slow")]), s).await;
    let mut sender = h2_client(proxy.http).await;
    let resp = sender.send_request(Request::get("http://slow.test/").body(full("")).unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let mut total = 0;
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the stream was not reset");
        total += frame.data_ref().map_or(0, |d| d.len());
        frames += 1;
        // The client pauses now and then, well within the send timeout.
        if frames % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(total, 32 * 64 * 1024);
    assert_eq!(proxy.metric("reveille_send_timeouts_total{kind=\"stream\"}").await, 0.0);
}

/// One limit on header fields for HTTP/1.1 and h2. Before: h2 forwarded 1,500 fields where HTTP/1.1 refused
/// more than 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431_over_h2_as_over_http1() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")])).await;
    let mut sender = h2_client(proxy.http).await;
    let request = |fields: usize, name: &str| {
        let mut req = Request::get("http://a.test/");
        for i in 0..fields {
            req = req.header(format!("{name}{i}").as_str(), "v");
        }
        req.body(full("")).unwrap()
    };
    let over = sender.send_request(request(1500, "x-f")).await.unwrap();
    assert_eq!(over.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let text = over.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("1500 header fields, more than the 100 allowed"));
    // 95 of its own, with what the client adds, stay within the limit.
    let within = sender.send_request(request(95, "x-f")).await.unwrap();
    assert_eq!(within.status(), StatusCode::OK);
    // Cookie crumbs (RFC 9113 §8.2.3) count as one field: they are one header once joined.
    let mut crumbs = Request::get("http://a.test/");
    for i in 0..200 {
        crumbs = crumbs.header("cookie", format!("c{i}=1"));
    }
    let crumbs = sender.send_request(crumbs.body(full("")).unwrap()).await.unwrap();
    assert_eq!(crumbs.status(), StatusCode::OK);
    // HTTP/1.1: the same limit.
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n");
    for i in 0..150 {
        head.push_str(&format!("x-f{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let reply = raw_exchange(proxy.http, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
}

/// `max_header_count` set lower applies to both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_header_count_applies_to_both_protocols() {
    let a = Backend::echo("a").await;
    let s = Settings { max_header_count: 20, ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), s).await;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n");
    for i in 0..25 {
        head.push_str(&format!("x-f{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let reply = raw_exchange(proxy.http, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let mut sender = h2_client(proxy.http).await;
    let mut req = Request::get("http://a.test/");
    for i in 0..25 {
        req = req.header(format!("x-f{i}").as_str(), "v");
    }
    let got = sender.send_request(req.body(full("")).unwrap()).await.unwrap();
    assert_eq!(got.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(get(proxy.http, "a.test", "/").await.status, StatusCode::OK, "a plain request still passes");
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Whether the server closed `c` (a read returns end of file or an error) within `limit`.
async fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(limit, c.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// nginx's `limit_conn`: an address holding its maximum has its next connections closed at once, taking no
/// slot; other addresses are not affected; a closed connection gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_its_connection_limit_and_others_are_not() {
    let app = Backend::fixed("ok").await;
    let s = Settings { max_connections: 50, max_connections_per_address: 5, ..settings() };
    let proxy = TestProxy::start_with(&routes_file(&[("app", vec![app.addr])], &[("app.test", "app")]), s).await;
    let mut kept = Vec::new();
    for _ in 0..5 {
        kept.push(connect_from("127.0.0.2", proxy.http).await.unwrap());
    }
    eventually(Duration::from_secs(3), "five connections open", || async {
        proxy.metric("reveille_open_connections").await == 5.0
    })
    .await;
    for i in 0..20 {
        let mut c = connect_from("127.0.0.2", proxy.http).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await, "connection {i} past the limit was not closed");
    }
    assert_eq!(proxy.metric("reveille_connections_refused_total{reason=\"per_address\"}").await, 20.0);
    assert_eq!(proxy.metric("reveille_open_connections").await, 5.0, "refused connections took no slot");
    // Another address is served (127.0.0.3 here; the helpers' own clients use 127.0.0.1).
    let mut other = connect_from("127.0.0.3", proxy.http).await.unwrap();
    other.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    other.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // One of the five closes: the address may open one more.
    drop(kept.pop());
    eventually(Duration::from_secs(3), "the closed connection's place given back", || async {
        proxy.metric("reveille_open_connections").await == 4.0
    })
    .await;
    let mut again = connect_from("127.0.0.2", proxy.http).await.unwrap();
    again.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    again.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
