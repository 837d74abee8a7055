//! reveille's own HTTP/2 server for clients (`[server] http2 = "reveille"`, the default) against what hyper's
//! server does (`"hyper"`): gRPC in all four call kinds on both; one access-log line per
//! stream; a stream in flight finishing across a graceful shutdown (GOAWAY); a client that resets streams as fast
//! as it opens them (the rapid-reset attack) sent away with `ENHANCE_YOUR_CALM`.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reveille::{AccessLogFormat, Http2Server, ProxySettings as Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::grpc::all_four_kinds;
use crate::h2_frames::frame;
use crate::support::grpc::*;
use crate::support::*;

fn settings(http2: Http2Server) -> Settings {
    Settings { access_log: false, http2, ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http2_servers_carry_all_four_grpc_call_kinds() {
    let backend = H2Backend::grpc("b1").await;
    let routes = format!("[services.g]\nbackends = [\"h2c://{}\"]\n[routes]\n\"grpc.test\" = \"g\"\n", backend.addr);
    for server in [Http2Server::Reveille, Http2Server::Hyper] {
        let proxy = TestProxy::start_with(&routes, settings(server)).await;
        let mut client = EchoClient::new(h2c_channel(proxy.http, "grpc.test").await);
        all_four_kinds(&mut client, "b1").await;
        let got = client.unary(msg(&format!("{server:?}"), 1)).await.unwrap();
        assert_eq!(got.text, format!("b1: {server:?}"));
    }
}

/// An h2c connection to `proxy` (hyper's client), its driver spawned.
async fn h2c(proxy: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// reveille's server indexes the response fields it repeats into the client's HPACK table, no larger than the
/// client allows (none, one that holds a few fields and evicts as it goes, the default): every response
/// decodes, answers of the backend and reveille's own 404 taking turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_decode_whatever_hpack_table_the_client_allows() {
    let a = Backend::echo("a").await;
    let routes = routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]);
    let proxy = TestProxy::start_with(&routes, settings(Http2Server::Reveille)).await;
    for size in [0, 400, 4096] {
        let stream = TcpStream::connect(proxy.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .header_table_size(size)
            .handshake::<_, BoxBody>(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..20 {
            let host = if i % 3 == 0 { "nowhere.test" } else { "a.test" };
            let req = Request::get(format!("http://{host}/p{i}")).body(full("")).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if i % 3 == 0 {
                assert_eq!(status, StatusCode::NOT_FOUND, "table {size}, stream {i}");
                continue;
            }
            assert_eq!(status, StatusCode::OK, "table {size}, stream {i}");
            assert_eq!(headers["content-type"], "application/json", "table {size}, stream {i}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["path"], format!("/p{i}"), "table {size}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_of_a_connection_gets_one_access_log_line() {
    let a = Backend::echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = log.clone();
    let proxy = TestProxy::start_custom(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), move |c| {
        c.proxy.access_log = true;
        c.proxy.http2 = Http2Server::Reveille;
        c.access_log.file = Some(path);
        c.access_log.format = AccessLogFormat::Json;
    })
    .await;
    let sender = h2c(proxy.http).await;
    let mut calls = Vec::new();
    for i in 0..30 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            let host = if i % 3 == 0 { "nowhere.test" } else { "a.test" };
            let req = Request::get(format!("http://{host}/sleep/20?i={i}")).body(full("")).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            status
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let want = if i % 3 == 0 { StatusCode::NOT_FOUND } else { StatusCode::OK };
        assert_eq!(call.await.unwrap(), want, "stream {i}");
    }
    let lines = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    eventually(Duration::from_secs(5), "30 access-log lines", || {
        let n = lines().len();
        async move { n >= 30 }
    })
    .await;
    let lines = lines();
    assert_eq!(lines.len(), 30, "{lines:?}");
    for i in 0..30 {
        let target = format!("/sleep/20?i={i}");
        let mine: Vec<_> = lines.iter().filter(|l| l["path"] == target.as_str()).collect();
        assert_eq!(mine.len(), 1, "stream {i}: {mine:?}");
        let (status, service) = if i % 3 == 0 { ("404", "-") } else { ("200", "a") };
        assert_eq!(mine[0]["status"].to_string().trim_matches('"'), status, "{:?}", mine[0]);
        assert_eq!(mine[0]["service"], service, "{:?}", mine[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_finishes_across_a_graceful_shutdown() {
    let a = Backend::echo("a").await;
    let proxy = TestProxy::start_with(
        &routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]),
        settings(Http2Server::Reveille),
    )
    .await;
    let mut sender = h2c(proxy.http).await;
    let slow = tokio::spawn(async move {
        let resp = sender.send_request(Request::get("http://a.test/sleep/800").body(full("")).unwrap()).await;
        let resp = resp.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body, sender)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = tokio::spawn(proxy.stop(Duration::from_secs(10)));
    let (status, body, mut sender) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/sleep/800");
    assert!(stop.await.unwrap(), "the proxy drained");
    // The connection was asked to go away: no new stream is served on it.
    let again = sender.send_request(Request::get("http://a.test/").body(full("")).unwrap()).await;
    assert!(again.is_err(), "a stream opened after the GOAWAY: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_streams_as_fast_as_it_opens_them_is_sent_away() {
    let a = Backend::echo("a").await;
    for server in [Http2Server::Reveille, Http2Server::Hyper] {
        let proxy =
            TestProxy::start_with(&routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]), settings(server)).await;
        let mut c = TcpStream::connect(proxy.http).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        // GET http://a.test/ in HPACK: :method GET, :scheme http, :path / (static table), :authority a.test.
        let block = [&[0x82, 0x86, 0x84, 0x01, 6][..], b"a.test"].concat();
        for i in 0..200u32 {
            let id = 2 * i + 1;
            out.extend(frame(0x1, 0x5, id, &block));
            // RST_STREAM(CANCEL) at once.
            out.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
        }
        c.write_all(&out).await.unwrap();
        // Read frames until a GOAWAY, which must say ENHANCE_YOUR_CALM (0xb).
        let mut buf = Vec::new();
        let goaway = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut at = 0;
                while buf.len() >= at + 9 {
                    let len = (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
                    if buf.len() < at + 9 + len {
                        break;
                    }
                    if buf[at + 3] == 0x7 {
                        let p = &buf[at + 9..at + 9 + len];
                        return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                    }
                    at += 9 + len;
                }
                let mut chunk = [0u8; 4096];
                match c.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the connection must end");
        assert_eq!(goaway, Some(0xb), "{server:?}: GOAWAY(ENHANCE_YOUR_CALM)");
        // The proxy still serves others.
        let resp = h2c(proxy.http).await.send_request(Request::get("http://a.test/").body(full("")).unwrap()).await;
        assert_eq!(resp.unwrap().status(), StatusCode::OK, "{server:?}");
    }
}

/// Reads h2 frames from a client that answers nothing (not the server's SETTINGS, not its PINGs) until the server
/// closes the connection or `limit` passes: the PINGs seen, and whether it was closed.
async fn silent_client(proxy: std::net::SocketAddr, limit: Duration) -> (usize, bool) {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    // The preface, then an empty SETTINGS frame.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let (mut pings, mut buf, mut chunk) = (0, Vec::new(), [0u8; 4096]);
    let closed = tokio::time::timeout(limit, async {
        loop {
            let n = conn.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            // Frame header: length (24 bits), type, flags, stream id. A PING is type 6; its ACK has flag 1.
            while buf.len() >= 9 {
                let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 6 && buf[4] & 1 == 0 {
                    pings += 1;
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await;
    (pings, closed.is_ok())
}

/// Both servers PING every `h2_keep_alive_interval` and close a connection whose peer left one unanswered for
/// `h2_keep_alive_timeout` (a vanished client holds nothing for long); a client that answers keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http2_servers_close_a_connection_whose_peer_stops_answering_pings() {
    let a = Backend::echo("a").await;
    let routes = routes_file(&[("a", vec![a.addr])], &[("a.test", "a")]);
    for server in [Http2Server::Reveille, Http2Server::Hyper] {
        let settings = Settings {
            h2_keep_alive_interval: Duration::from_millis(300),
            h2_keep_alive_timeout: Duration::from_millis(300),
            ..settings(server)
        };
        let proxy = TestProxy::start_with(&routes, settings).await;
        let begin = std::time::Instant::now();
        let (pings, closed) = silent_client(proxy.http, Duration::from_secs(10)).await;
        let after = begin.elapsed();
        assert!(closed, "{server:?}: a client that answers no PING still connected after 10 s ({pings} PINGs)");
        assert!(pings >= 1, "{server:?}: closed after {after:?} without a PING");
        assert!(
            after >= Duration::from_millis(500),
            "{server:?}: closed after {after:?}, before a PING could time out"
        );

        // The same time and more, answering (hyper's client answers PINGs): still connected, and served.
        let mut sender = h2c(proxy.http).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let resp = sender.send_request(Request::get("http://a.test/").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{server:?}");
    }
}

/// True for an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), checked by the class of each byte.
fn is_imf_fixdate(v: &[u8]) -> bool {
    const SHAPE: &[u8; 29] = b"Aaa, 00 Aaa 0000 00:00:00 GMT";
    v.len() == SHAPE.len()
        && v.iter().zip(SHAPE).all(|(&b, &s)| match s {
            b'A' => b.is_ascii_uppercase(),
            b'a' => b.is_ascii_lowercase(),
            b'0' => b.is_ascii_digit(),
            _ => b == s,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http2_servers_date_the_answers_that_come_without_one() {
    assert!(is_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 GMT") && !is_imf_fixdate(b"Sun, 6 Nov 1994 08:49:37 GMT"));
    for server in [Http2Server::Reveille, Http2Server::Hyper] {
        let proxy = TestProxy::start_with("[routes]\n", settings(server)).await;
        let mut sender = h2c(proxy.http).await;
        // reveille's own answer (no route): no backend gave it a Date.
        let resp = sender.send_request(Request::get("http://nowhere.test/").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{server:?}");
        let dates: Vec<_> = resp.headers().get_all("date").iter().collect();
        assert_eq!(dates.len(), 1, "{server:?}: {:?}", resp.headers());
        assert!(is_imf_fixdate(dates[0].as_bytes()), "{server:?}: {:?}", dates[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http2_servers_pass_a_backends_reset_reason_on_to_the_client() {
    // The backend sends a head and some data, then resets the stream with ENHANCE_YOUR_CALM: the client's stream
    // is reset with the same reason (as hyper's server did with the h2 crate's client behind it), not with a
    // reason of reveille's making.
    let backend = H2Backend::start(
        std::sync::Arc::new(|_req: Request<hyper::body::Incoming>| {
            Box::pin(async move {
                // The reset comes a little after the data: reveille has begun the response by then.
                let body = http_body_util::StreamBody::new(futures::stream::unfold(0, |step| async move {
                    match step {
                        0 => Some((Ok(http_body::Frame::data(bytes::Bytes::from_static(b"partial"))), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Err(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)), 2))
                        }
                        _ => None,
                    }
                }));
                hyper::Response::new(tonic::body::Body::new(body))
            })
        }),
        H2Options::default(),
    )
    .await;
    let routes = format!("[services.h]\nbackends = [\"h2c://{}\"]\n[routes]\n\"h2.test\" = \"h\"\n", backend.addr);
    for server in [Http2Server::Reveille, Http2Server::Hyper] {
        let proxy = TestProxy::start_with(&routes, settings(server)).await;
        let mut sender = h2c(proxy.http).await;
        let resp = sender.send_request(Request::get("http://h2.test/").body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{server:?}");
        let err = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .unwrap()
            .expect_err("the body should end with the backend's reset");
        let reason =
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<h2::Error>()).and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM), "{server:?}: {err:?}");
    }
}
