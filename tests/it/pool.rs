//! reveille's own upstream pool: kept-alive backend connections are reused whatever the response's framing,
//! expire after the idle timeout, and a backend closing a kept-alive connection as a request goes out gets the
//! request again on a new connection only when that is safe (idempotent method, body still whole).
//!
//! The backend is a raw TCP server written here, so a test decides exactly what happens on each connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use http::{Request, StatusCode};
use parking_lot::Mutex;
use reveille::ProxySettings as Settings;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the raw backend does with the n-th request (from 1) on a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// 200 with `Content-Length`.
    Length,
    /// 200, chunked.
    Chunked,
    /// 204, no body.
    NoContent,
    /// Read the request, then close the connection without a byte of answer (a keep-alive timeout that
    /// crossed the request).
    Close,
}

/// One request as the backend read it: on which connection (from 0), its method and path.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    conn: usize,
    method: String,
    path: String,
}

struct RawBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted, and how many of them the peer (reveille) has closed.
    accepted: Arc<Mutex<usize>>,
    closed_by_peer: Arc<Mutex<usize>>,
}

impl RawBackend {
    /// A backend answering the n-th request of each connection as `act(n)` says.
    async fn start(act: fn(usize) -> Act) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let closed_by_peer = Arc::new(Mutex::new(0));
        let (s, a, c) = (seen.clone(), accepted.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let conn = {
                    let mut a = a.lock();
                    *a += 1;
                    *a - 1
                };
                tokio::spawn(serve_conn(stream, conn, act, s.clone(), c.clone()));
            }
        });
        RawBackend { addr, seen, accepted, closed_by_peer }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock()
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    conn: usize,
    act: fn(usize) -> Act,
    seen: Arc<Mutex<Vec<Seen>>>,
    closed_by_peer: Arc<Mutex<usize>>,
) {
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        // Read one request head (and its Content-Length body).
        let Some((head, head_end)) = read_request_head(&mut stream, &mut buf).await else {
            if buf.is_empty() {
                *closed_by_peer.lock() += 1;
            }
            return;
        };
        if !consume_request(&mut stream, &mut buf, &head, head_end).await {
            return;
        }
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        seen.lock().push(Seen { conn, method, path: path.clone() });
        n += 1;
        let head_only = seen.lock().last().is_some_and(|s| s.method == "HEAD");
        let answer = match act(n) {
            // A response to HEAD has the length of the body it does not carry.
            Act::Length if head_only => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", path.len()),
            Act::Length => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len()),
            Act::Chunked if head_only => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
            Act::Chunked => {
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{path}\r\n0\r\n\r\n", path.len())
            }
            Act::NoContent => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            Act::Close => return,
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn proxy_to(backend: &RawBackend, settings: Settings) -> TestProxy {
    TestProxy::start_with(&routes_file(&[("s", vec![backend.addr])], &[("app.test", "s")]), settings).await
}

fn quiet() -> Settings {
    Settings { access_log: false, ..Settings::default() }
}

/// Sends `req` through a new client connection each time: any reuse is reveille's, not the client's.
async fn through(proxy: &TestProxy, method: &str, path: &str, body: &str) -> Got {
    let req = Request::builder().method(method).uri(path).header("host", "app.test").body(full(body.to_string()));
    send(proxy.http, req.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_connection_serves_every_kind_of_response() {
    // Content-Length, chunked, 204 and HEAD responses all end in different ways; each must hand the
    // connection back.
    let backend = RawBackend::start(|n| match n % 3 {
        0 => Act::NoContent,
        1 => Act::Length,
        _ => Act::Chunked,
    })
    .await;
    let proxy = proxy_to(&backend, quiet()).await;
    for i in 0..12 {
        let method = if i % 4 == 3 { "HEAD" } else { "GET" };
        let got = through(&proxy, method, &format!("/r{i}"), "").await;
        assert!(got.status == StatusCode::OK || got.status == StatusCode::NO_CONTENT, "request {i}: {got:?}");
        if got.status == StatusCode::OK && method == "GET" {
            assert_eq!(got.text, format!("/r{i}"));
        }
    }
    assert_eq!(backend.seen().len(), 12);
    assert_eq!(backend.accepted(), 1, "every request on one kept-alive backend connection: {:?}", backend.seen());
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"reused_closed\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_are_closed_after_the_idle_timeout() {
    let backend = RawBackend::start(|_| Act::Length).await;
    let settings = Settings { pool_idle_timeout: Duration::from_millis(300), ..quiet() };
    let proxy = proxy_to(&backend, settings).await;
    assert_eq!(through(&proxy, "GET", "/a", "").await.status, StatusCode::OK);
    assert_eq!(*backend.closed_by_peer.lock(), 0);
    eventually(Duration::from_secs(5), "reveille closes its idle backend connection", || async {
        *backend.closed_by_peer.lock() == 1
    })
    .await;
    // The next request opens a new one and works.
    assert_eq!(through(&proxy, "GET", "/b", "").await.status, StatusCode::OK);
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_request_is_replayed_when_a_kept_alive_connection_closes_under_it() {
    // Every connection serves one request and closes on the second, after reading it.
    let backend = RawBackend::start(|n| if n == 1 { Act::Length } else { Act::Close }).await;
    let proxy = proxy_to(&backend, quiet()).await;
    assert_eq!(through(&proxy, "GET", "/first", "").await.text, "/first");
    for (method, body) in [("GET", ""), ("PUT", "same twice is fine"), ("DELETE", "")] {
        let got = through(&proxy, method, "/again", body).await;
        assert_eq!(got.status, StatusCode::OK, "{method}: {got:?}");
        assert_eq!(got.text, "/again");
    }
    let seen = backend.seen();
    // Each of the three went out on the kept-alive connection, met the close, and went again on a new one.
    assert_eq!(seen.len(), 7, "{seen:?}");
    for pair in seen[1..].chunks(2) {
        assert_eq!(pair[0].method, pair[1].method);
        assert_ne!(pair[0].conn, pair[1].conn, "the replay takes a new connection: {seen:?}");
    }
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"reused_closed\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_request_that_may_have_arrived_is_never_sent_twice() {
    let backend = RawBackend::start(|n| if n == 1 { Act::Length } else { Act::Close }).await;
    let proxy = proxy_to(&backend, quiet()).await;
    assert_eq!(through(&proxy, "GET", "/first", "").await.status, StatusCode::OK);
    let got = through(&proxy, "POST", "/order", "buy one").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
    let posts = backend.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1, "the POST reached the backend once and was not replayed: {:?}", backend.seen());
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"reused_closed\"}").await, 1.0);
    // The pool is not poisoned: the next request gets a new connection.
    assert_eq!(through(&proxy, "GET", "/after", "").await.text, "/after");
}
