//! The client connection's state machine fed a server's frames by hand, its output read back: the request head
//! as HPACK writes it, responses with 1xx, trailers and a broken `content-length`, the peer's stream limit, GOAWAY,
//! and what a stream's handles send when they end early. (The whole client against real servers, tonic's and
//! nginx's among them, is tested in `tests/it/`: `h2_backend`, `grpc`, `backend_tls`.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::task::noop_waker_ref;
use http_body::Body;

use super::*;
use crate::http2::frame::{Frame, Head, HEAD_LEN};

fn config() -> Config {
    Config {
        stream_window: 1 << 16,
        connection_window: 1 << 20,
        max_header_list_size: 4096,
        max_send_buffer: 1 << 20,
        initial_max_streams: 100,
    }
}

/// A connection whose server has sent its SETTINGS (`settings`); the client's first output checked and read.
fn connect(settings: Settings) -> (Connection, Handle) {
    DECODER.set(Decoder::new(hpack::DEFAULT_TABLE_SIZE));
    let (mut conn, handle) = Connection::new(config());
    let out = conn.output.take_output().unwrap();
    conn.output.unflushed(0);
    assert!(out.starts_with(frame::PREFACE));
    let first = frames(&out[frame::PREFACE.len()..]);
    assert_eq!(first[0], Owned::Settings(false), "{first:?}");
    assert_eq!(first[1], Owned::Window { stream: 0, increment: (1 << 20) - frame::DEFAULT_WINDOW });
    let mut input = BytesMut::new();
    frame::put_settings(&mut input, &settings);
    feed(&mut conn, input).unwrap();
    assert_eq!(output(&conn), [Owned::Settings(true)]);
    (conn, handle)
}

fn feed(conn: &mut Connection, mut input: BytesMut) -> Result<(), ConnError> {
    let result = conn.recv(&mut input);
    assert!(result.is_err() || input.is_empty());
    result.map(|_| ())
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Settings(bool),
    Headers { stream: u32, end: bool, fields: Vec<(String, String)> },
    Data { stream: u32, len: usize, end: bool },
    Window { stream: u32, increment: u32 },
    Reset { stream: u32, reason: Reason },
    GoAway(Reason),
    Other,
}

thread_local! {
    /// The peer's HPACK decoder, in step with the connection's encoder: one connection per test (each test has
    /// its thread), the decoder made new by `connect`.
    static DECODER: std::cell::RefCell<Decoder> = std::cell::RefCell::new(Decoder::new(hpack::DEFAULT_TABLE_SIZE));
}

fn frames(rest: &[u8]) -> Vec<Owned> {
    DECODER.with_borrow_mut(|decoder| frames_with(decoder, rest))
}

fn frames_with(decoder: &mut Decoder, mut rest: &[u8]) -> Vec<Owned> {
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let head = Head::parse(rest[..HEAD_LEN].try_into().unwrap());
        let payload = &rest[HEAD_LEN..HEAD_LEN + head.len];
        frames.push(match frame::parse(head, payload).unwrap() {
            Frame::Settings { ack, .. } => Owned::Settings(ack),
            Frame::Headers { stream, end_stream, block, .. } => {
                let mut fields = Vec::new();
                decoder
                    .decode(block, |f| {
                        fields.push((
                            String::from_utf8(f.name.to_vec()).unwrap(),
                            String::from_utf8(f.value.to_vec()).unwrap(),
                        ))
                    })
                    .unwrap();
                Owned::Headers { stream, end: end_stream, fields }
            }
            Frame::Data { stream, data, end_stream, .. } => Owned::Data { stream, len: data.len(), end: end_stream },
            Frame::WindowUpdate { stream, increment } => Owned::Window { stream, increment },
            Frame::RstStream { stream, reason } => Owned::Reset { stream, reason },
            Frame::GoAway { reason, .. } => Owned::GoAway(reason),
            _ => Owned::Other,
        });
        rest = &rest[HEAD_LEN + head.len..];
    }
    frames
}

fn output(conn: &Connection) -> Vec<Owned> {
    let Some(out) = conn.output.take_output() else { return Vec::new() };
    conn.output.unflushed(0);
    frames(&out)
}

fn head_frame(stream: u32, end: bool, fields: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    let start = frame::begin_headers(&mut out);
    for (n, v) in fields {
        hpack::put_field(&mut out, n.as_bytes(), v.as_bytes(), false);
    }
    frame::finish_headers(&mut out, start, stream, end, frame::DEFAULT_MAX_FRAME_SIZE);
    out
}

fn data(stream: u32, len: usize, end: bool) -> BytesMut {
    let mut out = BytesMut::new();
    frame::put_data_head(&mut out, stream, len, end);
    out.extend_from_slice(&vec![b'x'; len]);
    out
}

fn request(method: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::builder().method(method).uri("http://b.test:8080/p?q=1");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(()).unwrap().into_parts().0
}

fn cx() -> Context<'static> {
    Context::from_waker(noop_waker_ref())
}

fn open(handle: &Handle, head: &http::request::Parts, end: bool) -> (ResponseFuture, Option<RequestSender>) {
    match handle.poll_open(&mut cx(), head, end) {
        Poll::Ready(Ok(pair)) => pair,
        other => panic!("the stream did not open: {:?}", other.map(|r| r.map(|_| ()))),
    }
}

fn poll_response(response: &mut ResponseFuture) -> Poll<Result<http::Response<ResponseBody>, StreamError>> {
    Pin::new(response).poll(&mut cx())
}

fn frame_of(body: &mut ResponseBody) -> Poll<Option<Result<http_body::Frame<Bytes>, StreamError>>> {
    Pin::new(body).poll_frame(&mut cx())
}

#[test]
fn the_request_head_becomes_pseudo_fields_and_leaves_out_what_http2_forbids() {
    let (conn, handle) = connect(Settings::default());
    let head = request(
        "POST",
        &[("host", "front.test"), ("connection", "keep-alive"), ("te", "gzip"), ("x-a", "1"), ("x-a", "2")],
    );
    let _stream = open(&handle, &head, false);
    let head = request("GET", &[("te", "trailers")]);
    let _other = open(&handle, &head, true);
    let fields = |list: &[(&str, &str)]| list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    assert_eq!(
        output(&conn),
        [
            Owned::Headers {
                stream: 1,
                end: false,
                fields: fields(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":authority", "b.test:8080"),
                    (":path", "/p?q=1"),
                    ("x-a", "1"),
                    ("x-a", "2"),
                ]),
            },
            Owned::Headers {
                stream: 3,
                end: true,
                fields: fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "b.test:8080"),
                    (":path", "/p?q=1"),
                    ("te", "trailers"),
                ]),
            },
        ]
    );
}

#[test]
fn a_response_skips_1xx_and_ends_with_its_trailers() {
    let (mut conn, handle) = connect(Settings::default());
    let (mut response, sender) = open(&handle, &request("GET", &[]), true);
    assert!(sender.is_none());
    assert!(poll_response(&mut response).is_pending());
    feed(&mut conn, head_frame(1, false, &[(":status", "103"), ("link", "</a>")])).unwrap();
    assert!(poll_response(&mut response).is_pending());
    feed(&mut conn, head_frame(1, false, &[(":status", "200"), ("content-length", "5")])).unwrap();
    let Poll::Ready(Ok(resp)) = poll_response(&mut response) else { panic!("no response") };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(frame_of(&mut body).is_pending());
    let mut input = data(1, 5, false);
    input.extend_from_slice(&head_frame(1, true, &[("grpc-status", "0")]));
    feed(&mut conn, input).unwrap();
    let Poll::Ready(Some(Ok(f))) = frame_of(&mut body) else { panic!("no data") };
    assert_eq!(f.into_data().unwrap().len(), 5);
    let Poll::Ready(Some(Ok(f))) = frame_of(&mut body) else { panic!("no trailers") };
    assert_eq!(f.into_trailers().unwrap()["grpc-status"], "0");
    assert!(matches!(frame_of(&mut body), Poll::Ready(None)));
}

#[test]
fn a_head_that_ends_the_stream_gives_a_body_already_over() {
    let (mut conn, handle) = connect(Settings::default());
    let (mut response, _) = open(&handle, &request("GET", &[]), true);
    feed(&mut conn, head_frame(1, true, &[(":status", "200"), ("grpc-status", "14")])).unwrap();
    let Poll::Ready(Ok(resp)) = poll_response(&mut response) else { panic!("no response") };
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(resp.body().is_end_stream());
    // A HEAD's response says the length of a body it does not have.
    let (mut response, _) = open(&handle, &request("HEAD", &[]), true);
    feed(&mut conn, head_frame(3, true, &[(":status", "200"), ("content-length", "10")])).unwrap();
    assert!(matches!(poll_response(&mut response), Poll::Ready(Ok(_))));
}

#[test]
fn a_body_that_breaks_its_content_length_fails_and_its_stream_is_reset() {
    let (mut conn, handle) = connect(Settings::default());
    let (mut response, _) = open(&handle, &request("GET", &[]), true);
    output(&conn);
    feed(&mut conn, head_frame(1, false, &[(":status", "200"), ("content-length", "3")])).unwrap();
    let Poll::Ready(Ok(resp)) = poll_response(&mut response) else { panic!("no response") };
    let mut body = resp.into_body();
    feed(&mut conn, data(1, 4, true)).unwrap();
    assert!(matches!(frame_of(&mut body), Poll::Ready(Some(Err(StreamError::Reset(Reason::PROTOCOL_ERROR))))));
    assert_eq!(output(&conn), [Owned::Reset { stream: 1, reason: Reason::PROTOCOL_ERROR }]);
    // A malformed head (a request's pseudo-header field) fails its stream alone.
    let (mut response, _) = open(&handle, &request("GET", &[]), true);
    output(&conn);
    feed(&mut conn, head_frame(3, false, &[(":status", "200"), (":path", "/")])).unwrap();
    assert!(matches!(poll_response(&mut response), Poll::Ready(Err(StreamError::Reset(Reason::PROTOCOL_ERROR)))));
    assert_eq!(output(&conn), [Owned::Reset { stream: 3, reason: Reason::PROTOCOL_ERROR }]);
}

#[test]
fn streams_wait_for_the_peers_limit_and_open_as_others_end() {
    let (mut conn, handle) = connect(Settings { max_concurrent_streams: Some(1), ..Settings::default() });
    assert_eq!(conn.max_streams(), 1);
    let head = request("GET", &[]);
    let (mut first, _) = open(&handle, &head, true);
    assert!(handle.poll_open(&mut cx(), &head, true).is_pending());
    feed(&mut conn, head_frame(1, true, &[(":status", "204")])).unwrap();
    assert!(matches!(poll_response(&mut first), Poll::Ready(Ok(_))));
    assert_eq!(conn.active(), 0);
    let _second = open(&handle, &head, true);
}

#[test]
fn a_goaway_refuses_the_streams_above_its_last_id_and_every_new_one() {
    let (mut conn, handle) = connect(Settings::default());
    let head = request("GET", &[]);
    let (mut kept, _) = open(&handle, &head, true);
    let (mut refused, _) = open(&handle, &head, true);
    let mut input = BytesMut::new();
    frame::put_goaway(&mut input, 1, Reason::NO_ERROR, b"");
    feed(&mut conn, input).unwrap();
    assert!(conn.is_going_away());
    assert!(matches!(poll_response(&mut refused), Poll::Ready(Err(StreamError::Reset(Reason::REFUSED_STREAM)))));
    assert!(
        matches!(handle.poll_open(&mut cx(), &head, true), Poll::Ready(Err(StreamError::Reset(r))) if r == Reason::REFUSED_STREAM)
    );
    assert!(poll_response(&mut kept).is_pending());
    feed(&mut conn, head_frame(1, true, &[(":status", "200")])).unwrap();
    assert!(matches!(poll_response(&mut kept), Poll::Ready(Ok(_))));
    // The connection's end fails what is left.
    let (mut conn, handle) = connect(Settings::default());
    let (mut waiting, _) = open(&handle, &head, true);
    drop(std::mem::replace(&mut conn, Connection::new(config()).0));
    assert!(matches!(poll_response(&mut waiting), Poll::Ready(Err(StreamError::Closed))));
    assert!(matches!(handle.poll_open(&mut cx(), &head, true), Poll::Ready(Err(StreamError::Closed))));
}

#[test]
fn a_push_promise_or_a_frame_on_a_stream_never_opened_ends_the_connection() {
    let (mut conn, _handle) = connect(Settings::default());
    let err = feed(&mut conn, head_frame(1, true, &[(":status", "200")])).unwrap_err();
    assert_eq!(err.reason(), Reason::PROTOCOL_ERROR);
    assert_eq!(output(&conn), [Owned::GoAway(Reason::PROTOCOL_ERROR)]);
    let (mut conn, handle) = connect(Settings::default());
    let _stream = open(&handle, &request("GET", &[]), true);
    output(&conn);
    let mut input = BytesMut::new();
    Head { len: 4, kind: frame::PUSH_PROMISE, flags: frame::END_HEADERS, stream: 1 }.put(&mut input);
    input.extend_from_slice(&2u32.to_be_bytes());
    assert_eq!(feed(&mut conn, input).unwrap_err().reason(), Reason::PROTOCOL_ERROR);
}

#[test]
fn a_request_body_goes_as_the_window_allows_and_a_dropped_response_cancels_the_stream() {
    let (mut conn, handle) = connect(Settings { initial_window_size: Some(4), ..Settings::default() });
    let (mut response, sender) = open(&handle, &request("POST", &[]), false);
    let mut sender = sender.unwrap();
    output(&conn);
    let mut chunk = Bytes::from_static(b"0123456789");
    assert!(sender.poll_send_data(&mut cx(), &mut chunk, true).is_pending());
    assert_eq!(output(&conn), [Owned::Data { stream: 1, len: 4, end: false }]);
    let mut input = BytesMut::new();
    frame::put_window_update(&mut input, 1, 100);
    feed(&mut conn, input).unwrap();
    assert!(matches!(sender.poll_send_data(&mut cx(), &mut chunk, true), Poll::Ready(Ok(()))));
    assert_eq!(output(&conn), [Owned::Data { stream: 1, len: 6, end: true }]);
    drop(sender);
    feed(&mut conn, head_frame(1, false, &[(":status", "200")])).unwrap();
    let Poll::Ready(Ok(resp)) = poll_response(&mut response) else { panic!("no response") };
    drop(resp);
    assert_eq!(output(&conn), [Owned::Reset { stream: 1, reason: Reason::CANCEL }]);
    assert_eq!(conn.active(), 0);
}

#[test]
fn a_reset_after_a_whole_response_stops_the_request_body_and_keeps_the_response() {
    let (mut conn, handle) = connect(Settings::default());
    let (mut response, sender) = open(&handle, &request("POST", &[]), false);
    let mut sender = sender.unwrap();
    let mut input = head_frame(1, false, &[(":status", "200"), ("content-length", "5")]);
    input.extend_from_slice(&data(1, 5, true));
    frame::put_rst_stream(&mut input, 1, Reason::NO_ERROR);
    feed(&mut conn, input).unwrap();
    let mut chunk = Bytes::from_static(b"body");
    assert!(matches!(
        sender.poll_send_data(&mut cx(), &mut chunk, true),
        Poll::Ready(Err(StreamError::Reset(Reason::NO_ERROR)))
    ));
    let Poll::Ready(Ok(resp)) = poll_response(&mut response) else { panic!("no response") };
    let mut body = resp.into_body();
    assert!(!body.is_end_stream());
    let Poll::Ready(Some(Ok(f))) = frame_of(&mut body) else { panic!("the response's data was dropped") };
    assert_eq!(f.into_data().unwrap().len(), 5);
    assert!(matches!(frame_of(&mut body), Poll::Ready(None)));
}

#[test]
fn data_before_the_response_head_fails_the_stream() {
    let (mut conn, handle) = connect(Settings::default());
    let (mut response, _) = open(&handle, &request("GET", &[]), true);
    output(&conn);
    feed(&mut conn, data(1, 3, true)).unwrap();
    assert!(matches!(poll_response(&mut response), Poll::Ready(Err(StreamError::Reset(Reason::PROTOCOL_ERROR)))));
    assert_eq!(output(&conn), [Owned::Reset { stream: 1, reason: Reason::PROTOCOL_ERROR }]);
    // A frame error naming a stream never opened ends the connection (no RST_STREAM on an idle stream).
    let mut input = BytesMut::new();
    frame::put_rst_stream(&mut input, 1, Reason::CANCEL);
    Head { len: 4, kind: frame::WINDOW_UPDATE, flags: 0, stream: 7 }.put(&mut input);
    input.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(feed(&mut conn, input).unwrap_err().reason(), Reason::PROTOCOL_ERROR);
}

#[test]
fn a_goaway_does_not_refuse_a_stream_already_answered() {
    let (mut conn, handle) = connect(Settings::default());
    let head = request("GET", &[]);
    let _first = open(&handle, &head, true);
    let (mut answered, _) = open(&handle, &head, true);
    let mut input = head_frame(3, false, &[(":status", "200")]);
    frame::put_goaway(&mut input, 1, Reason::NO_ERROR, b"");
    feed(&mut conn, input).unwrap();
    let Poll::Ready(Ok(resp)) = poll_response(&mut answered) else { panic!("the answered stream was refused") };
    let mut body = resp.into_body();
    assert!(frame_of(&mut body).is_pending());
    feed(&mut conn, data(3, 2, true)).unwrap();
    assert!(matches!(frame_of(&mut body), Poll::Ready(Some(Ok(_)))));
}

#[test]
fn the_connections_window_comes_back_while_other_streams_hold_theirs_unread() {
    // Windows of 64 KiB a stream and 1 MiB the connection: a stream whose body is not read holds 64 KiB; the
    // connection's window must come back by the stream's window, not wait for half of it (512 KiB) given back.
    let (mut conn, handle) = connect(Settings::default());
    let head = request("GET", &[]);
    let (mut stalled, _) = open(&handle, &head, true);
    let (mut read, _) = open(&handle, &head, true);
    output(&conn);
    let mut input = head_frame(1, false, &[(":status", "200")]);
    input.extend_from_slice(&head_frame(3, false, &[(":status", "200")]));
    for _ in 0..4 {
        input.extend_from_slice(&data(1, 16_384, false));
        input.extend_from_slice(&data(3, 16_384, false));
    }
    feed(&mut conn, input).unwrap();
    let Poll::Ready(Ok(_stalled)) = poll_response(&mut stalled) else { panic!() };
    let Poll::Ready(Ok(resp)) = poll_response(&mut read) else { panic!() };
    let mut body = resp.into_body();
    while let Poll::Ready(Some(Ok(_))) = frame_of(&mut body) {}
    let windows = output(&conn);
    assert!(windows.contains(&Owned::Window { stream: 0, increment: 65_536 }), "{windows:?}");
}

/// The HEADERS blocks among the frames of `rest`, as they are on the wire.
fn header_blocks(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    while !rest.is_empty() {
        let head = Head::parse(rest[..HEAD_LEN].try_into().unwrap());
        if let Frame::Headers { block, .. } = frame::parse(head, &rest[HEAD_LEN..HEAD_LEN + head.len]).unwrap() {
            blocks.push(block.to_vec());
        }
        rest = &rest[HEAD_LEN + head.len..];
    }
    blocks
}

#[test]
fn a_server_that_allows_no_hpack_table_is_told_so_and_gets_no_field_indexed() {
    let (mut conn, handle) = connect(Settings::default());
    let head = request("POST", &[("content-type", "application/grpc"), ("te", "trailers")]);
    let _first = open(&handle, &head, true);
    let first = header_blocks(&conn.output.take_output().unwrap());
    conn.output.unflushed(0);
    // Three fields went as literals with incremental indexing: :authority, content-type, te.
    let mut peer: Decoder = Decoder::new(hpack::DEFAULT_TABLE_SIZE);
    peer.decode(&first[0], |_| {}).unwrap();
    assert_eq!(peer.entries(), 3);
    // The server now allows none: the next block starts with a size update to 0 (001 00000), and from then on
    // every field is a literal that is not indexed, as the stateless encoder writes it.
    let mut input = BytesMut::new();
    frame::put_settings(&mut input, &Settings { header_table_size: Some(0), ..Settings::default() });
    feed(&mut conn, input).unwrap();
    let (_second, _third) = (open(&handle, &head, true), open(&handle, &head, true));
    let blocks = header_blocks(&conn.output.take_output().unwrap());
    let mut stateless = BytesMut::new();
    head.fields(&mut |n, v, s| {
        if n.starts_with(b":") || !super::is_forbidden(n, v) {
            hpack::put_field(&mut stateless, n, v, s);
        }
    });
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0][0], 0x20);
    assert_eq!(blocks[0][1..], stateless[..]);
    assert_eq!(blocks[1][..], stateless[..]);
}
