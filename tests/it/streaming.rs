//! Bodies are streamed both ways: the backend sees the first bytes of an upload before the client has sent the
//! rest, and the client sees the first bytes of a download before the backend has produced the rest.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::{mpsc, watch, Notify};

const CHUNK: usize = 256 * 1024;

fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_streamed_to_the_backend() {
    // The backend reports how many bytes it has received so far, and answers with the total and a checksum.
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let backend = Backend::start(Arc::new(move |req: Request<Incoming>| {
        let progress_tx = progress_tx.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let (mut total, mut sum) = (0usize, 0u64);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                    sum = data.iter().fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(*b as u64));
                    progress_tx.send_replace(total);
                }
            }
            Response::new(full(format!("{total} {sum}")))
        })
    }))
    .await;
    let proxy = TestProxy::start(&routes_file(&[("up", vec![backend.addr])], &[("up.test", "up")])).await;

    let chunks = 256; // 64 MiB
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(2);
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let req = Request::post("/upload").header("host", "up.test").body(body).unwrap();
    let response = tokio::spawn(send(proxy.http, req));

    tx.send(Ok(Frame::data(chunk(0)))).await.unwrap();
    // The backend must see the first chunk while the client is still holding back the rest.
    tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|n| *n >= CHUNK))
        .await
        .expect("first chunk reached the backend before the upload finished")
        .unwrap();
    let mut expected_sum = 0u64;
    expected_sum = chunk(0).iter().fold(expected_sum, |s, b| s.wrapping_mul(31).wrapping_add(*b as u64));
    for i in 1..chunks {
        let c = chunk(i);
        expected_sum = c.iter().fold(expected_sum, |s, b| s.wrapping_mul(31).wrapping_add(*b as u64));
        tx.send(Ok(Frame::data(c))).await.unwrap();
    }
    drop(tx);
    let got = response.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text, format!("{} {expected_sum}", chunks * CHUNK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_is_streamed_to_the_client() {
    // The backend sends one chunk, then waits for the test to say it has seen it before sending the rest.
    let go_on = Arc::new(Notify::new());
    let gate = go_on.clone();
    let chunks = 256; // 64 MiB
    let backend = Backend::start(Arc::new(move |_req| {
        let gate = gate.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(2);
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(chunk(0)))).await.unwrap();
                gate.notified().await;
                for i in 1..chunks {
                    if tx.send(Ok(Frame::data(chunk(i)))).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(StreamBody::new(tokio_stream_from(rx)).boxed())
        })
    }))
    .await;
    let proxy = TestProxy::start(&routes_file(&[("down", vec![backend.addr])], &[("down.test", "down")])).await;

    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp =
        sender.send_request(Request::get("/").header("host", "down.test").body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while received < CHUNK {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("first chunk arrived before the backend finished")
            .unwrap()
            .unwrap();
        received += frame.into_data().map(|d| d.len()).unwrap_or(0);
    }
    go_on.notify_one();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        // Spot-check content: every byte of chunk i is i % 251.
        if let Some(first) = data.first() {
            let i = received / CHUNK;
            assert_eq!(*first, (i % 251) as u8, "byte {received}");
        }
        received += data.len();
    }
    assert_eq!(received, chunks * CHUNK);
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Sync + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
