//! reveille's own HTTP/1.1 client side against backends that frame their responses every legal (and some
//! illegal) way: chunked bodies cut at every byte, trailers and chunk extensions, bodies read to the close,
//! interim responses, bytes after a response, malformed and ambiguous heads, and an answer that comes before
//! the upload has ended.
//!
//! The backend is a raw TCP server written here: each test scripts the bytes of every answer, written in
//! pieces with pauses between them so that reveille reads them in as many parts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use reveille::ProxySettings as Settings;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the backend does after writing an answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    /// Reads the next request on the same connection.
    KeepOpen,
    /// Closes the connection.
    Close,
    /// Keeps the connection open without reading anything more, for this long, then closes it.
    Hold(Duration),
}

/// The answer to one request: pieces written one after another with a pause between them.
struct Answer {
    pieces: Vec<Vec<u8>>,
    after: After,
    /// Answer once the head is read, without reading the request's body.
    before_body: bool,
}

fn answer(text: &[u8], after: After) -> Answer {
    Answer { pieces: vec![text.to_vec()], after, before_body: false }
}

/// Every byte its own piece.
fn bytewise(text: &[u8], after: After) -> Answer {
    Answer { pieces: text.iter().map(|b| vec![*b]).collect(), after, before_body: false }
}

type Script = fn(&str) -> Answer;

struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    /// Request lines, as read.
    seen: Arc<Mutex<Vec<String>>>,
}

impl RawBackend {
    /// A backend answering each request as `script(request line)` says.
    async fn start(script: Script) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                *a.lock() += 1;
                tokio::spawn(serve(stream, script, s.clone()));
            }
        });
        RawBackend { addr, accepted, seen }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock()
    }
}

async fn serve(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<String>>>) {
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    loop {
        let Some((head, head_end)) = read_request_head(&mut stream, &mut buf).await else { return };
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.lock().push(line.clone());
        let reply = script(&line);
        if !reply.before_body && !consume_request(&mut stream, &mut buf, &head, head_end).await {
            return;
        }
        for (i, piece) in reply.pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        match reply.after {
            After::KeepOpen => {}
            After::Close => return,
            After::Hold(d) => {
                tokio::time::sleep(d).await;
                return;
            }
        }
    }
}

async fn proxy_to(backend: &RawBackend) -> TestProxy {
    let settings = Settings { access_log: false, ..Settings::default() };
    TestProxy::start_with(&routes_file(&[("s", vec![backend.addr])], &[("app.test", "s")]), settings).await
}

async fn get_path(proxy: &TestProxy, path: &str) -> Got {
    get(proxy.http, "app.test", path).await
}

/// A backend's fields as the client gets them: reveille's own HTTP/1.1 side passes them on as the backend wrote
/// them (its spelling and order, repeated fields kept), hyper's side through a header map (lowercase); both
/// without the hop-by-hop ones, with one `Content-Length` and the backend's `Date`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_fields_reach_the_client_as_it_wrote_them_without_the_hop_by_hop_ones() {
    let backend = RawBackend::start(|_| {
        answer(
            b"HTTP/1.1 200 OK\r\nServer: Raw/1\r\nX-Mixed-Case: Value\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\
              Proxy-Authenticate: Basic\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\nTE: trailers\r\n\
              Connection: keep-alive\r\nDate: Sun, 06 Dec 2026 00:00:00 GMT\r\n\r\nok",
            After::KeepOpen,
        )
    })
    .await;
    for side in [reveille::Http1Server::Reveille, reveille::Http1Server::Hyper] {
        let settings = Settings { access_log: false, http1_server: side, ..Settings::default() };
        let proxy =
            TestProxy::start_with(&routes_file(&[("s", vec![backend.addr])], &[("app.test", "s")]), settings).await;
        for _ in 0..2 {
            let text = raw_exchange(
                proxy.http,
                b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{side:?}: {text:?}"));
            assert_eq!(body, "ok", "{side:?}");
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{side:?}: {head}");
            let fields: Vec<(String, &str)> = head
                .split("\r\n")
                .skip(1)
                .map(|line| {
                    let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("{side:?}: {line:?}"));
                    (name.to_ascii_lowercase(), value.trim())
                })
                .collect();
            let passed: Vec<(&str, &str)> = fields
                .iter()
                .filter(|(n, _)| n != "content-length" && n != "connection")
                .map(|(n, v)| (n.as_str(), *v))
                .collect();
            assert_eq!(
                passed,
                [
                    ("server", "Raw/1"),
                    ("x-mixed-case", "Value"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("date", "Sun, 06 Dec 2026 00:00:00 GMT"),
                ],
                "{side:?}: {head}"
            );
            let lengths: Vec<&str> = fields.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| *v).collect();
            assert_eq!(lengths, ["2"], "{side:?}: {head}");
            let connection: Vec<&str> = fields.iter().filter(|(n, _)| n == "connection").map(|(_, v)| *v).collect();
            assert_eq!(connection, ["close"], "{side:?}: {head}");
            if side == reveille::Http1Server::Reveille {
                assert!(head.contains("\r\nServer: Raw/1\r\nX-Mixed-Case: Value\r\n"), "spelled as sent: {head}");
            }
        }
    }
    assert_eq!(backend.accepted(), 2, "one kept-alive backend connection per proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_cut_at_every_byte_arrives_whole_and_the_connection_is_reused() {
    let backend = RawBackend::start(|_| {
        bytewise(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-checksum: 42\r\n\r\n",
            After::KeepOpen,
        )
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for i in 0..3 {
        let got = get_path(&proxy, &format!("/{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(got.text, "hello 0123456789");
    }
    assert_eq!(backend.accepted(), 1, "the connection went back to the pool after each chunked body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_a_length_is_read_to_the_close_and_its_connection_is_not_reused() {
    let backend = RawBackend::start(|_| Answer {
        pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ".to_vec(), b"the end".to_vec()],
        after: After::Close,
        before_body: false,
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for _ in 0..2 {
        let got = get_path(&proxy, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(got.text, "until the end");
    }
    assert_eq!(backend.accepted(), 2);
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"reused_closed\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_and_the_final_one_forwarded() {
    let backend = RawBackend::start(|_| Answer {
        pieces: vec![
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec(),
            b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\nx-final: yes\r\n\r\ndone".to_vec(),
        ],
        after: After::KeepOpen,
        before_body: false,
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for _ in 0..2 {
        let req = Request::post("/items").header("host", "app.test").body(full("new item")).unwrap();
        let got = send(proxy.http, req).await;
        assert_eq!(got.status, StatusCode::CREATED, "{got:?}");
        assert_eq!(got.headers["x-final"], "yes");
        assert!(got.headers.get("link").is_none(), "the 103's fields are not the final response's");
        assert_eq!(got.text, "done");
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_keep_its_connection_out_of_the_pool() {
    let backend =
        RawBackend::start(|_| answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokSURPRISE", After::KeepOpen)).await;
    let proxy = proxy_to(&backend).await;
    for _ in 0..3 {
        let got = get_path(&proxy, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(got.text, "ok", "the extra bytes never reach a client");
    }
    assert_eq!(backend.accepted(), 3, "a connection with unasked bytes is never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_ambiguous_responses_get_502_and_are_counted() {
    let backend = RawBackend::start(|line| {
        let text: &[u8] = if line.contains("/garbage") {
            b"HTTP/1.1 two hundred\r\n\r\n"
        } else if line.contains("/lengths") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"
        } else if line.contains("/chunks") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        } else if line.contains("/upgrade") {
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        answer(text, After::KeepOpen)
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for path in ["/garbage", "/lengths", "/upgrade"] {
        let got = get_path(&proxy, path).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{path}: {got:?}");
    }
    // A bad chunk is found once the head has gone to the client: the response is cut, not completed.
    let req = Request::get("/chunks").header("host", "app.test").body(full("")).unwrap();
    let cut = testkit::http::send(proxy.http, req).await;
    assert!(
        cut.is_err() || cut.is_ok_and(|r| r.body().is_empty()),
        "a malformed chunked body is never passed on whole"
    );
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"protocol\"}").await, 3.0);
    // None of those connections is reused; a good answer still comes through.
    let before = backend.accepted();
    assert_eq!(get_path(&proxy, "/fine").await.text, "ok");
    assert_eq!(backend.accepted(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_the_upload_ends_stops_it() {
    // The backend refuses the upload as soon as it has read the head, and leaves the body unread.
    let backend = RawBackend::start(|_| Answer {
        pieces: vec![
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!".to_vec()
        ],
        after: After::Hold(Duration::from_secs(5)),
        before_body: true,
    })
    .await;
    let proxy = proxy_to(&backend).await;
    // A streamed upload far larger than the socket buffers between reveille and the backend, sent as fast as
    // reveille takes it; the client keeps the end back until it has the answer.
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
        for _ in 0..1024 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
        // Never ends on its own: only the answer can end this exchange.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let body =
        StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ))
        .boxed();
    let req = Request::post("/upload").header("host", "app.test").body(body).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(4), send(proxy.http, req))
        .await
        .expect("the backend's early answer reaches the client before the upload would have ended");
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "{got:?}");
    assert_eq!(got.text, "too big!");
    feeder.abort();
    assert_eq!(backend.seen.lock().len(), 1);
}
