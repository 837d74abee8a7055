//! The codec against a real peer: the `h2` crate's client, over a real socket, talking to a server made of this
//! module's frames and HPACK alone. The client's requests (Huffman-coded, indexed into the dynamic table, a field
//! block long enough to need CONTINUATION, a never-indexed field) must decode to what it sent, and what the
//! codec writes back (status, fields, DATA, trailers, a trailer block split into CONTINUATIONs) must reach the
//! client as written.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::frame::{self, Frame, Head, Settings, HEAD_LEN};
use super::hpack::{self, Decoder};

/// What the server side saw of one request: its fields, as (name, value, never-indexed), and its body.
type Seen = (Vec<(String, String, bool)>, Vec<u8>);

const BIG: usize = 20_000;

#[tokio::test]
async fn the_h2_crates_client_and_this_codec_understand_each_other() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        serve(socket).await
    });

    let socket = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(socket).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut sent = Vec::new();
    for i in 0..3usize {
        let mut client = client.clone().ready().await.unwrap();
        let mut auth = HeaderValue::from_static("Bearer secret-token");
        auth.set_sensitive(true);
        let mut req = Request::post("http://grpc.test/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", format!("{}m", 100 + i))
            .header("authorization", auth)
            .body(())
            .unwrap();
        if i == 1 {
            req.headers_mut().insert("x-big", HeaderValue::from_str(&"b".repeat(BIG)).unwrap());
        }
        let mut want: Vec<(String, String, bool)> = vec![
            (":method".into(), "POST".into(), false),
            (":scheme".into(), "http".into(), false),
            (":authority".into(), "grpc.test".into(), false),
            (":path".into(), "/helloworld.Greeter/SayHello".into(), false),
        ];
        for (n, v) in req.headers() {
            want.push((n.to_string(), v.to_str().unwrap().to_owned(), v.is_sensitive()));
        }
        want.sort();
        sent.push(want);

        let (response, mut body) = client.send_request(req, false).unwrap();
        body.send_data(Bytes::from(format!("call {i}")), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["x-call"], i.to_string().as_str());
        assert_eq!(response.headers()["x-secret"], "s", "a never-indexed field");
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            data.extend_from_slice(&chunk);
        }
        assert_eq!(data, format!("answer {i}").as_bytes());
        let trailers: HeaderMap = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        if i == 1 {
            assert_eq!(trailers["x-big-trailer"].len(), BIG, "a trailer block in CONTINUATIONs");
        }
    }
    drop(client);
    let seen = server.await.unwrap();
    driver.await.unwrap().unwrap();

    assert_eq!(seen.len(), 3);
    for (i, ((fields, body), want)) in seen.into_iter().zip(sent).enumerate() {
        let mut fields = fields;
        fields.sort();
        assert_eq!(fields, want, "request {i}");
        assert_eq!(body, format!("call {i}").as_bytes());
    }
}

/// A server of one connection, on the codec alone: answers every request whose body has ended, and returns
/// what it saw once the client has gone.
async fn serve(mut socket: TcpStream) -> Vec<Seen> {
    let mut preface = [0; 24];
    socket.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, frame::PREFACE);
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &Settings { max_concurrent_streams: Some(10), ..Settings::default() });
    socket.write_all(&out).await.unwrap();

    let mut decoder: Decoder = Decoder::new(hpack::DEFAULT_TABLE_SIZE);
    let mut seen: Vec<Seen> = Vec::new();
    let mut block = Vec::new();
    let mut calls = 0;
    let mut indexed = 0;
    loop {
        let mut head = [0; HEAD_LEN];
        if socket.read_exact(&mut head).await.is_err() {
            break;
        }
        let head = Head::parse(&head);
        assert!(head.len <= frame::DEFAULT_MAX_FRAME_SIZE as usize, "{head:?}");
        let mut payload = vec![0; head.len];
        socket.read_exact(&mut payload).await.unwrap();
        let mut out = BytesMut::new();
        let end_headers = match frame::parse(head, &payload).unwrap() {
            Frame::Settings { ack: false, .. } => {
                frame::put_settings_ack(&mut out);
                false
            }
            Frame::Headers { block: b, end_headers, end_stream, .. } => {
                assert!(!end_stream, "every request has a body");
                block.extend_from_slice(b);
                end_headers
            }
            Frame::Continuation { block: b, end_headers, .. } => {
                block.extend_from_slice(b);
                end_headers
            }
            Frame::Data { stream, data, end_stream, .. } => {
                seen.last_mut().unwrap().1.extend_from_slice(data);
                if end_stream {
                    answer(&mut out, stream, calls);
                    calls += 1;
                }
                false
            }
            _ => false,
        };
        if end_headers {
            let mut fields = Vec::new();
            decoder
                .decode(&block, |f| {
                    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                    fields.push((s(f.name), s(f.value), f.sensitive));
                })
                .unwrap();
            seen.push((fields, Vec::new()));
            block.clear();
            indexed = indexed.max(decoder.entries());
        }
        socket.write_all(&out).await.unwrap();
    }
    assert!(indexed > 0, "the client indexed fields into the dynamic table");
    seen
}

/// The answer to call `i`: 200 with fields, a DATA frame, and trailers (a long one on call 1).
fn answer(out: &mut BytesMut, stream: u32, i: usize) {
    let start = frame::begin_headers(out);
    hpack::put_status(out, 200);
    hpack::put_field(out, b"content-type", b"application/grpc", false);
    hpack::put_field(out, b"x-call", i.to_string().as_bytes(), false);
    hpack::put_field(out, b"x-secret", b"s", true);
    frame::finish_headers(out, start, stream, false, frame::DEFAULT_MAX_FRAME_SIZE);
    let body = format!("answer {i}");
    frame::put_data_head(out, stream, body.len(), false);
    out.extend_from_slice(body.as_bytes());
    let start = frame::begin_headers(out);
    hpack::put_field(out, b"grpc-status", b"0", false);
    if i == 1 {
        hpack::put_field(out, b"x-big-trailer", "t".repeat(BIG).as_bytes(), false);
    }
    frame::finish_headers(out, start, stream, true, frame::DEFAULT_MAX_FRAME_SIZE);
}
