//! The labs' backend: a hyper HTTP/1.1 server answering every request 200 with a fixed body. The integration
//! tests' backends (with handlers and hit counters) are `tests/support`'s own.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

/// Starts a backend answering every request 200 with `body` (`text/plain`), on its own thread (single-threaded
/// tokio runtime), and returns its port on 127.0.0.1. The thread inherits this process's CPU affinity.
pub fn start_backend(body: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::Builder::new()
        .name(format!("backend-{port}"))
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend runtime").block_on(
                async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    serve_fixed(listener, body, Some("text/plain")).await
                },
            );
        })
        .unwrap();
    port
}

/// Serves every connection `listener` accepts (HTTP/1.1, `TCP_NODELAY`), answering every request 200 with
/// `body`, with this `Content-Type` if any. Runs until the task is dropped.
pub async fn serve_fixed(listener: tokio::net::TcpListener, body: &'static [u8], content_type: Option<&'static str>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |_req| async move {
                let mut response = Response::builder();
                if let Some(content_type) = content_type {
                    response = response.header(CONTENT_TYPE, content_type);
                }
                Ok::<_, Infallible>(response.body(Full::new(Bytes::from_static(body))).unwrap())
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
