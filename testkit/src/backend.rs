//! The labs' backends: a hyper HTTP/1.1 server answering every request 200 with a fixed body (or one chosen by
//! path), a backend with a
//! fixed number of one-connection-at-a-time workers, and one that stalls mid-body. The integration tests'
//! general backends (with handlers and hit counters) are `tests/it/support`'s own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Starts a backend answering every request 200 with `body` (`text/plain`), on its own thread (single-threaded
/// tokio runtime), and returns its port on 127.0.0.1. The thread inherits this process's CPU affinity.
pub fn start_backend(body: &'static [u8]) -> u16 {
    start_backend_bodies(Bodies { default: body, by_path: &[] }).port
}

/// What a backend started by [`start_backend_bodies`] answers: `by_path`'s body for a request whose path is one
/// of its paths exactly, else `default`.
#[derive(Clone, Copy)]
pub struct Bodies {
    pub default: &'static [u8],
    pub by_path: &'static [(&'static str, &'static [u8])],
}

impl Bodies {
    fn for_path(&self, path: &str) -> &'static [u8] {
        self.by_path.iter().find(|(p, _)| *p == path).map_or(self.default, |(_, body)| body)
    }
}

/// A backend started by [`start_backend_bodies`].
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The Linux thread id of its one thread (to pin it, or to read its CPU time), if known.
    pub tid: Option<u32>,
}

/// [`start_backend`] with a body chosen by the request's path.
pub fn start_backend_bodies(bodies: Bodies) -> Backend {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("backend-{port}"))
        .spawn(move || {
            let _ = tid_tx.send(crate::procfs::thread_id());
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend runtime").block_on(
                async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    serve_bodies(listener, bodies, Some("text/plain")).await
                },
            );
        })
        .unwrap();
    let tid = tid_rx.recv().ok().flatten();
    Backend { port, tid }
}

/// Serves every connection `listener` accepts (HTTP/1.1, `TCP_NODELAY`), answering every request 200 with
/// `body`, with this `Content-Type` if any, once it has read the request's body (as an application does before
/// it answers a `POST`; a body-less request costs nothing more). Runs until the task is dropped.
pub async fn serve_fixed(listener: TcpListener, body: &'static [u8], content_type: Option<&'static str>) {
    serve_bodies(listener, Bodies { default: body, by_path: &[] }, content_type).await
}

/// [`serve_fixed`] with a body chosen by the request's path.
pub async fn serve_bodies(listener: TcpListener, bodies: Bodies, content_type: Option<&'static str>) {
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                let body = bodies.for_path(req.uri().path());
                let _ = req.into_body().collect().await;
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

/// A backend like a sync gunicorn or a small puma: `workers` connections served at a time, one request each
/// (`Connection: close`), the rest waiting in `listener`'s backlog. Each request's body is read whole; the answer
/// is 200 with its length in bytes. Runs until the future is dropped, which also ends the connections.
pub async fn serve_few_workers(listener: TcpListener, workers: usize) {
    let listener = Arc::new(listener);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let listener = listener.clone();
        set.spawn(async move {
            loop {
                let stream = accept(&listener).await;
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
                });
                let _ = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), svc).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// A backend that stops mid-body: it reads a request (one read), answers with a head announcing
/// `Content-Length: 100000` and `sent` bytes of that body, then holds the connection without a word until the
/// peer closes it, and tells `released` (if any). Runs until the future is dropped, which also ends the
/// connections.
pub async fn serve_stalling(listener: TcpListener, sent: usize, released: Option<mpsc::Sender<()>>) {
    let mut set = JoinSet::new();
    loop {
        while set.try_join_next().is_some() {}
        let mut stream = accept(&listener).await;
        let released = released.clone();
        set.spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&vec![b'a'; sent]).await.is_err() {
                return;
            }
            // Wait for the peer to give up (EOF or reset).
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            if let Some(released) = released {
                let _ = released.send(()).await;
            }
        });
    }
}

/// The next connection `listener` accepts, with `TCP_NODELAY` set. An accept error (out of file descriptors,
/// say) is logged and retried 10 ms later.
pub async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
