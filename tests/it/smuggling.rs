//! Request smuggling and the HTTP/1.1 server side's strictness, as a table against the real listener: each row
//! is the bytes a client writes on a fresh connection and what it must read back — the responses in order
//! (`200 <path>` for one the backend answered, whose body is the path it was asked for; the bare status for
//! one reveille answered itself) and whether reveille then closed the connection or kept it open.
//!
//! Every smuggled request in the table asks for `/smuggled`, and the backend records every request it gets:
//! whatever the row's answer, no `/smuggled` may ever reach it, and it must have answered exactly the `200`s
//! the rows read. The rows come from `hardening.rs` and the public request-smuggling corpora (CL.TE, TE.CL,
//! TE.TE obfuscations, chunk-size tricks, line-ending tricks). The expected answers are what hyper's server
//! side gave (hyper 1.12), and the table runs against both server sides (`[server] http1`): reveille's own
//! must give the same.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use reveille::{Http1Server, ProxySettings as Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One row: what a client sends, and what it reads back.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// The responses, comma-separated, then `; closed` or `; open`.
    expect: &'static str,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: &'static str) -> Case {
    Case { name, bytes: bytes.into(), expect }
}

/// A smuggled request, for the end of a payload.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn cases() -> Vec<Case> {
    let big = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let many: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n");
    // TE.CL: a front end that reads Content-Length sees 4 bytes; one that reads chunked sees a chunk that
    // holds a whole request.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\nContent-Length: 15\r\n\r\nx=1";
    let te_cl = format!(
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let post = |fields: &str, body: &str| format!("POST / HTTP/1.1\r\nHost: a.test\r\n{fields}\r\n{body}");
    vec![
        // Plain, pipelined, kept alive.
        case("a plain GET", "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "200 /; open"),
        case(
            "pipelined requests are answered in order",
            "GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\n\
             GET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "200 /one, 200 /two, 200 /three; closed",
        ),
        case(
            "a body's end is where Content-Length says, the rest is the next request",
            post("Content-Length: 3\r\n", "abcGET /second HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            "200 /, 200 /second; open",
        ),
        case("HTTP/1.0 closes", "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n", "200 /; closed"),
        case(
            "HTTP/1.0 with keep-alive stays",
            "GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n",
            "200 /; open",
        ),
        // From hardening.rs.
        case("two Host fields", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "400; open"),
        case("no Host", "GET / HTTP/1.1\r\n\r\n", "400; open"),
        case("CONNECT", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "405; open"),
        case(
            "a chunked GET body is forwarded",
            "GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "200 /; open",
        ),
        case(
            "absolute form: its authority routes",
            "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
            "200 /; open",
        ),
        case("absolute form without Host", "GET http://a.test/ HTTP/1.1\r\n\r\n", "200 /; open"),
        // Forms RFC 9112 keeps for CONNECT and OPTIONS, which hyper takes on any method: the authority routes
        // (the backend gets `/`), and `*` goes to the backend as it is.
        case("an authority-form target on GET", "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n", "200 /; open"),
        case("an asterisk target on GET", "GET * HTTP/1.1\r\nHost: a.test\r\n\r\n", "200 *; open"),
        // CL.TE and TE.CL: Transfer-Encoding wins, the length is dropped, the connection closes after.
        case(
            "CL.TE",
            post("Content-Length: 44\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "200 /; closed",
        ),
        case("TE.CL", te_cl, "200 /; closed"),
        // TE.TE: obfuscated Transfer-Encoding.
        case(
            "Transfer-Encoding: xchunked",
            post("Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a space before the colon",
            post("Content-Length: 4\r\nTransfer-Encoding : chunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a tab before chunked is whitespace",
            post("Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "200 /; closed",
        ),
        case(
            "chunked then another coding",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case("chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"), "400; closed"),
        case("identity, chunked", post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"), "200 /; open"),
        case("CHUNKED in capitals", post("Transfer-Encoding: CHUNKED\r\n", "0\r\n\r\n"), "200 /; open"),
        case("\"chunked\" quoted", post("Transfer-Encoding: \"chunked\"\r\n", "0\r\n\r\n"), "400; closed"),
        case(
            "Transfer-Encoding folded onto the next line",
            post("Transfer-Encoding:\r\n chunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a field line starting with a space (obs-fold)",
            post("Content-Length: 4\r\n Transfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case("obs-fold in a plain field", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\r\n c\r\n\r\n", "400; closed"),
        case(
            "HTTP/1.0 with Transfer-Encoding",
            format!("POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            "400; closed",
        ),
        // Content-Length.
        case("two equal Content-Lengths", post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"), "200 /; open"),
        case(
            "two different Content-Lengths",
            post("Content-Length: 3\r\nContent-Length: 4\r\n", &format!("abc{SMUGGLED}")),
            "400; closed",
        ),
        case("a Content-Length list", post("Content-Length: 3, 3\r\n", &format!("abc{SMUGGLED}")), "400; closed"),
        case("a negative Content-Length", post("Content-Length: -1\r\n", SMUGGLED), "400; closed"),
        case("a Content-Length with a plus", post("Content-Length: +3\r\n", &format!("abc{SMUGGLED}")), "400; closed"),
        case("a hex Content-Length", post("Content-Length: 0x3\r\n", &format!("abc{SMUGGLED}")), "400; closed"),
        case(
            "an overflowing Content-Length",
            post("Content-Length: 99999999999999999999\r\n", SMUGGLED),
            "400; closed",
        ),
        case("an empty Content-Length", post("Content-Length: \r\n", SMUGGLED), "400; closed"),
        case("a Content-Length padded with spaces", post("Content-Length:  3  \r\n", "abc"), "200 /; open"),
        // Chunk sizes: a bad one ends the request before any backend sees it.
        case("a chunk extension", post("Transfer-Encoding: chunked\r\n", "5;a=b\r\nhello\r\n0\r\n\r\n"), "200 /; open"),
        case(
            "a chunk size that is not hex",
            post("Transfer-Encoding: chunked\r\n", &format!("zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a chunk size with 0x",
            post("Transfer-Encoding: chunked\r\n", &format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a negative chunk size",
            post("Transfer-Encoding: chunked\r\n", &format!("-1\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "an overflowing chunk size",
            post("Transfer-Encoding: chunked\r\n", &format!("fffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a chunk-size line ending in LF alone",
            post("Transfer-Encoding: chunked\r\n", &format!("5\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "chunk data not followed by CRLF",
            post("Transfer-Encoding: chunked\r\n", &format!("5\r\nhelloXX\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "chunk data followed by LF alone",
            post("Transfer-Encoding: chunked\r\n", &format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        case(
            "a chunk extension with a bare LF",
            post("Transfer-Encoding: chunked\r\n", &format!("5;a\nb\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
            "400; closed",
        ),
        // The head's own bytes.
        case("LF-only line endings", "GET / HTTP/1.1\nHost: a.test\n\n", "200 /; open"),
        case("a bare CR", "GET / HTTP/1.1\rHost: a.test\r\n\r\n", "400; closed"),
        case("a NUL in a field value", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\0b\r\n\r\n", "400; closed"),
        case("a NUL in a field name", "GET / HTTP/1.1\r\nHost: a.test\r\nX\0A: b\r\n\r\n", "400; closed"),
        case("a space in a field name", "GET / HTTP/1.1\r\nHost: a.test\r\nX A: b\r\n\r\n", "400; closed"),
        case("an empty field name", "GET / HTTP/1.1\r\nHost: a.test\r\n: b\r\n\r\n", "400; closed"),
        case("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n", "400; closed"),
        case("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a.test\r\n\r\n", "400; closed"),
        case("HTTP/2.0 in a request line", "GET / HTTP/2.0\r\nHost: a.test\r\n\r\n", "400; closed"),
        case("a head over 64 KiB", big, "431; closed"),
        case("101 fields", many, "431; closed"),
        // Expect: 100-continue.
        case("Expect: 100-continue", post("Content-Length: 3\r\nExpect: 100-continue\r\n", "abc"), "100, 200 /; open"),
        // RFC 9110 §10.1.1: an HTTP/1.0 client's expectation is ignored (a 100 would be its final response).
        case(
            "Expect: 100-continue from HTTP/1.0 gets no 100",
            "POST / HTTP/1.0\r\nHost: a.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            "200 /; closed",
        ),
    ]
}

/// Reads what the connection gives until it closes, or nothing more comes for a while.
async fn read_all(c: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let quiet = if out.is_empty() { Duration::from_secs(10) } else { Duration::from_millis(1500) };
        match tokio::time::timeout(quiet, c.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The responses in `bytes`, each as `200 <body>` when the backend answered, else its status alone.
fn responses(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
            out.push(format!("unparsable {:?}", String::from_utf8_lossy(bytes)));
            break;
        };
        let code = resp.code.unwrap_or_default();
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let length = if code / 100 == 1 { 0 } else { length.min(bytes.len() - len) };
        let body = &bytes[len..len + length];
        out.push(if code == 200 { format!("200 {}", String::from_utf8_lossy(body)) } else { code.to_string() });
        bytes = &bytes[len + length..];
    }
    out
}

/// Runs every row on its own connection, all at once, against a reveille with `settings`.
async fn run_table(settings: Settings) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let backend = Backend::start(Arc::new(move |req: Request<Incoming>| {
        let record = record.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            record.lock().unwrap().push(path.clone());
            let _ = req.into_body().collect().await;
            Response::new(full(path))
        })
    }))
    .await;
    let proxy = TestProxy::start_with(&routes_file(&[("a", vec![backend.addr])], &[("a.test", "a")]), settings).await;
    let rows = cases();
    let runs = rows.iter().map(|row| async move {
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        c.write_all(&row.bytes).await.unwrap();
        let (bytes, closed) = read_all(&mut c).await;
        format!("{}; {}", responses(&bytes).join(", "), if closed { "closed" } else { "open" })
    });
    let got = futures::future::join_all(runs).await;
    let wrong: Vec<String> = rows
        .iter()
        .zip(&got)
        .filter(|(row, got)| row.expect != got.as_str())
        .map(|(row, got)| format!("{}: expected {:?}, got {got:?}", row.name, row.expect))
        .collect();
    assert!(wrong.is_empty(), "{} of {} rows differ:\n{}", wrong.len(), rows.len(), wrong.join("\n"));
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p == "/smuggled"), "a smuggled request reached the backend: {seen:?}");
    let answered: usize = got.iter().map(|g| g.matches("200 ").count()).sum();
    assert_eq!(seen.len(), answered, "the backend answered what the clients read: {seen:?}");
    assert_eq!(proxy.metric("reveille_requests_total{service=\"a\",class=\"2xx\"}").await, answered as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_server_side_refuses_every_smuggling_attempt() {
    run_table(Settings { access_log: false, http1_server: Http1Server::Hyper, ..Settings::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveille_server_side_refuses_every_smuggling_attempt() {
    run_table(Settings { access_log: false, http1_server: reveille::Http1Server::Reveille, ..Settings::default() })
        .await;
}
