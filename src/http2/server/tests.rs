//! The connection's state machine fed frames by hand, its output read back as frames: flow control both ways,
//! trailers, and what a stream's handles send when they end early. (The whole server against real clients is
//! tested in `tests/it/`: `h2_frames`, `h2_server`, `grpc`, `h2c`.)

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::task::noop_waker_ref;
use http::Request;
use http_body::Body;

use super::*;
use crate::http2::frame::{Frame, Head, Reason, HEAD_LEN};

fn config(stream_window: u32) -> Config {
    Config {
        max_concurrent_streams: 10,
        stream_window,
        connection_window: frame::DEFAULT_WINDOW,
        max_header_list_size: 4096,
        max_send_buffer: 1 << 20,
        max_local_resets: 10,
    }
}

type Accepted = Vec<(Request<RequestBody>, Respond)>;

/// A connection past its preface and the client's SETTINGS (`settings`), its first output read.
fn open(stream_window: u32, settings: Settings) -> Connection {
    let mut conn = Connection::new(config(stream_window));
    let mut input = BytesMut::from(&frame::PREFACE[..]);
    frame::put_settings(&mut input, &settings);
    assert!(feed(&mut conn, input).is_empty());
    let first = output(&conn);
    assert!(matches!(first[0], Owned::Settings(false)), "{first:?}");
    assert!(matches!(first.last(), Some(Owned::Settings(true))), "{first:?}");
    conn
}

fn feed(conn: &mut Connection, mut input: BytesMut) -> Accepted {
    let mut accepted = Vec::new();
    conn.recv(&mut input, &mut |req, respond| accepted.push((req, respond))).unwrap();
    assert!(input.is_empty());
    accepted
}

/// The frames the connection queued, in a form that outlives its buffer.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Settings(bool),
    Headers { stream: u32, end: bool },
    Data { stream: u32, len: usize, end: bool },
    Window { stream: u32, increment: u32 },
    Reset { stream: u32, reason: Reason },
    GoAway(Reason),
    Other,
}

fn output(conn: &Connection) -> Vec<Owned> {
    let Some(out) = conn.output.take_output() else { return Vec::new() };
    conn.output.unflushed(0);
    let mut rest = &out[..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let head = Head::parse(rest[..HEAD_LEN].try_into().unwrap());
        let payload = &rest[HEAD_LEN..HEAD_LEN + head.len];
        frames.push(match frame::parse(head, payload).unwrap() {
            Frame::Settings { ack, .. } => Owned::Settings(ack),
            Frame::Headers { stream, end_stream, .. } => Owned::Headers { stream, end: end_stream },
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

fn headers(stream: u32, end: bool, fields: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    let start = frame::begin_headers(&mut out);
    for (n, v) in fields {
        hpack::put_field(&mut out, n.as_bytes(), v.as_bytes(), false);
    }
    frame::finish_headers(&mut out, start, stream, end, frame::DEFAULT_MAX_FRAME_SIZE);
    out
}

const POST: [(&str, &str); 4] = [(":method", "POST"), (":scheme", "http"), (":authority", "a.test"), (":path", "/")];

fn data(stream: u32, len: usize, end: bool) -> BytesMut {
    let mut out = BytesMut::new();
    frame::put_data_head(&mut out, stream, len, end);
    out.extend_from_slice(&vec![b'x'; len]);
    out
}

fn poll_body(body: &mut RequestBody) -> Poll<Option<Result<http_body::Frame<Bytes>, StreamError>>> {
    Pin::new(body).poll_frame(&mut Context::from_waker(noop_waker_ref()))
}

#[test]
fn a_body_is_handed_over_and_its_window_given_back_by_halves() {
    let mut conn = open(100, Settings::default());
    let mut accepted = feed(&mut conn, headers(1, false, &POST));
    let (req, _respond) = accepted.pop().unwrap();
    let mut body = req.into_body();
    assert!(poll_body(&mut body).is_pending());
    feed(&mut conn, data(1, 30, false));
    assert_eq!(poll_body(&mut body).map(|f| f.unwrap().unwrap().into_data().unwrap().len()), Poll::Ready(30));
    assert_eq!(output(&conn), [], "30 of 100 taken: no WINDOW_UPDATE yet");
    feed(&mut conn, data(1, 30, false));
    assert!(poll_body(&mut body).is_ready());
    assert_eq!(output(&conn), [Owned::Window { stream: 1, increment: 60 }]);
    // The window is 100 again: 41 fit, and 101 more would not.
    feed(&mut conn, data(1, 41, false));
    feed(&mut conn, data(1, 60, false));
    assert_eq!(output(&conn), [Owned::Reset { stream: 1, reason: Reason::FLOW_CONTROL_ERROR }]);
    // The stream is void: what was queued is dropped, the body fails at once.
    let failed = poll_body(&mut body).map(|f| f.unwrap().unwrap_err());
    assert_eq!(failed, Poll::Ready(StreamError::Reset(Reason::FLOW_CONTROL_ERROR)));
    assert!(matches!(poll_body(&mut body), Poll::Ready(None)));
}

#[test]
fn trailers_end_the_body() {
    let mut conn = open(100, Settings::default());
    let (req, _respond) = feed(&mut conn, headers(1, false, &POST)).pop().unwrap();
    let mut body = req.into_body();
    let mut input = data(1, 5, false);
    input.extend_from_slice(&headers(1, true, &[("grpc-status", "0")]));
    feed(&mut conn, input);
    assert!(poll_body(&mut body).map(|f| f.unwrap().unwrap().is_data()).eq(&Poll::Ready(true)));
    let trailers = match poll_body(&mut body) {
        Poll::Ready(Some(Ok(f))) => f.into_trailers().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert!(matches!(poll_body(&mut body), Poll::Ready(None)));
    assert!(body.is_end_stream());
}

#[test]
fn a_response_goes_out_as_the_clients_window_allows() {
    let mut conn = open(100, Settings { initial_window_size: Some(10), ..Settings::default() });
    let (_req, mut respond) = feed(&mut conn, headers(1, true, &POST)).pop().unwrap();
    let head = http::Response::new(()).into_parts().0;
    respond.send_response(&head, false).unwrap();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut body = Bytes::from(vec![b'y'; 25]);
    assert!(respond.poll_send_data(&mut cx, &mut body, true).is_pending());
    assert_eq!(
        output(&conn),
        [Owned::Headers { stream: 1, end: false }, Owned::Data { stream: 1, len: 10, end: false }]
    );
    let mut update = BytesMut::new();
    frame::put_window_update(&mut update, 1, 100);
    feed(&mut conn, update);
    assert!(respond.poll_send_data(&mut cx, &mut body, true).is_ready());
    assert_eq!(output(&conn), [Owned::Data { stream: 1, len: 15, end: true }]);
}

#[test]
fn handles_that_end_early_reset_their_stream_as_they_must() {
    let mut conn = open(100, Settings::default());
    // A response dropped mid-body: CANCEL.
    let (_req, mut respond) = feed(&mut conn, headers(1, true, &POST)).pop().unwrap();
    respond.send_response(&http::Response::new(()).into_parts().0, false).unwrap();
    drop(respond);
    assert_eq!(
        output(&conn),
        [Owned::Headers { stream: 1, end: false }, Owned::Reset { stream: 1, reason: Reason::CANCEL }]
    );
    // A response complete while the client still sends a body no one reads: NO_ERROR stops the client.
    let (req, mut respond) = feed(&mut conn, headers(3, false, &POST)).pop().unwrap();
    respond.send_response(&http::Response::new(()).into_parts().0, true).unwrap();
    assert_eq!(output(&conn), [Owned::Headers { stream: 3, end: true }]);
    drop(req);
    assert_eq!(output(&conn), [Owned::Reset { stream: 3, reason: Reason::NO_ERROR }]);
    // Its late data only goes back to the connection's window.
    feed(&mut conn, data(3, 50, false));
    assert_eq!(output(&conn), []);
    drop(respond);
    // A request dropped before any response: INTERNAL_ERROR.
    let (req, respond) = feed(&mut conn, headers(5, true, &POST)).pop().unwrap();
    drop((req, respond));
    assert_eq!(output(&conn), [Owned::Reset { stream: 5, reason: Reason::INTERNAL_ERROR }]);
}

#[test]
fn a_connection_error_queues_its_goaway() {
    let mut conn = open(100, Settings::default());
    let mut input = BytesMut::new();
    frame::put_settings(&mut input, &Settings::default());
    // SETTINGS on a stream.
    input[5..9].copy_from_slice(&1u32.to_be_bytes());
    let e = conn.recv(&mut input, &mut |_, _| panic!("no request")).unwrap_err();
    assert_eq!(e.reason(), Reason::PROTOCOL_ERROR);
    assert_eq!(output(&conn), [Owned::GoAway(Reason::PROTOCOL_ERROR)]);
    // Not HTTP/2 at all.
    let mut conn = Connection::new(config(100));
    let mut input = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert_eq!(conn.recv(&mut input, &mut |_, _| {}).unwrap_err(), ConnError::Preface);
}

/// A waker that counts its wakes.
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_stream_waiting_for_the_connections_window_is_woken_by_it_alone() {
    // The client gives streams 1 MiB but leaves the connection's window at 65 535.
    let mut conn = open(100, Settings { initial_window_size: Some(1 << 20), ..Settings::default() });
    let (_req, mut respond) = feed(&mut conn, headers(1, true, &POST)).pop().unwrap();
    respond.send_response(&http::Response::new(()).into_parts().0, false).unwrap();
    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut body = Bytes::from(vec![b'z'; 70_000]);
    assert!(respond.poll_send_data(&mut cx, &mut body, true).is_pending());
    assert_eq!(body.len(), 70_000 - 65_535);
    // The writes drain: room in the buffer, but no window. Woken for it, the stream would spin.
    output(&conn);
    output(&conn);
    assert_eq!(counter.0.load(Ordering::Relaxed), 0, "woken without window");
    let mut update = BytesMut::new();
    frame::put_window_update(&mut update, 0, 10_000);
    feed(&mut conn, update);
    assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    assert!(respond.poll_send_data(&mut cx, &mut body, true).is_ready());
}

#[test]
fn padding_and_the_data_of_a_reset_stream_go_back_to_the_connections_window_whole() {
    let mut conn = open(1 << 20, Settings::default());
    let (req, _respond) = feed(&mut conn, headers(1, false, &POST)).pop().unwrap();
    // 100 octets of data and 50 of padding (151 with the pad length), never read; then the client resets.
    let mut input = BytesMut::new();
    let mut payload = vec![50u8];
    payload.extend([b'd'; 100]);
    payload.extend([0u8; 50]);
    input.extend_from_slice(&[0, 0, payload.len() as u8, frame::DATA, frame::PADDED, 0, 0, 0, 1]);
    input.extend_from_slice(&payload);
    frame::put_rst_stream(&mut input, 1, Reason::CANCEL);
    feed(&mut conn, input);
    let core = conn.shared.lock();
    assert_eq!(core.recv_window + i64::from(core.recv_unacked), i64::from(frame::DEFAULT_WINDOW), "all 151 given back");
    drop(core);
    drop(req);
}

#[test]
fn a_client_reset_with_no_error_fails_the_body_it_cut_short() {
    let mut conn = open(100, Settings::default());
    let (req, _respond) = feed(&mut conn, headers(1, false, &POST)).pop().unwrap();
    let mut body = req.into_body();
    let mut input = data(1, 5, false);
    frame::put_rst_stream(&mut input, 1, Reason::NO_ERROR);
    feed(&mut conn, input);
    let got = poll_body(&mut body).map(|f| f.unwrap().unwrap_err());
    assert_eq!(got, Poll::Ready(StreamError::Reset(Reason::NO_ERROR)));
}
