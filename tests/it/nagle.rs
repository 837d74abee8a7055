//! Backends that leave Nagle's algorithm on and write a response's head and body in two writes (Python's
//! `http.server`, many app servers): on a reused connection, the body waits for the ACK of the head, and a proxy
//! that delays its ACKs (Linux does, on a request/response connection) makes every response 40 ms late. nginx and
//! HAProxy both pay it; reveille pays it once per upstream connection, then acknowledges that connection's data
//! at once (`TCP_QUICKACK`).

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 keep-alive backend with Nagle on (no `TCP_NODELAY`) that writes each response as two writes:
/// the head, then the body.
async fn nagle_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            s.set_nodelay(false).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request (GET, no body): up to the blank line.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let body = b"hello from a backend with Nagle on";
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_nagle_on_costs_no_delayed_ack_on_a_reused_connection() {
    let backend = nagle_backend().await;
    let proxy = TestProxy::start(&routes_file(&[("slowack", vec![backend])], &[("nagle.test", "slowack")])).await;
    let mut client = testkit::http::KeepAlive::new(proxy.http.port(), Duration::from_secs(5));
    // The first request opens the upstream connection; the second reuses it and pays one delayed ACK, which
    // turns immediate ACKs on for that connection.
    for _ in 0..2 {
        let (status, body) = client.get("nagle.test", "/").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"hello from a backend with Nagle on");
    }
    const N: u32 = 20;
    let start = Instant::now();
    for _ in 0..N {
        let (status, _) = client.get("nagle.test", "/").await.unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(client.reconnects, 0);
    let per_request = start.elapsed() / N;
    eprintln!("quickack on: {per_request:?} per request on a reused upstream connection");
    // With delayed ACKs each request waits about 40 ms for the body; acknowledged at once, well under a
    // millisecond here. The bound leaves the noise of a shared machine a wide margin on both sides.
    assert!(per_request < Duration::from_millis(15), "{per_request:?} per request on a reused upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quickack_the_same_backend_is_40_ms_late_per_response() {
    // The control: the delay the setting removes is real on this machine (Linux's minimum delayed ACK is 40 ms).
    let backend = nagle_backend().await;
    let s = reveille::ProxySettings { upstream_quickack: false, ..Default::default() };
    let proxy =
        TestProxy::start_with(&routes_file(&[("slowack", vec![backend])], &[("nagle.test", "slowack")]), s).await;
    let mut client = testkit::http::KeepAlive::new(proxy.http.port(), Duration::from_secs(5));
    assert_eq!(client.get("nagle.test", "/").await.unwrap().0, 200);
    const N: u32 = 5;
    let start = Instant::now();
    for _ in 0..N {
        assert_eq!(client.get("nagle.test", "/").await.unwrap().0, 200);
    }
    let per_request = start.elapsed() / N;
    eprintln!("quickack off: {per_request:?} per request on a reused upstream connection");
    assert!(per_request > Duration::from_millis(20), "{per_request:?}: no delayed ACK to remove?");
}
