//! A hyper HTTP/1.1 client: one request on a new connection ([`send`], [`send_close`], [`fetch`] for blocking code), or a
//! kept-alive connection ([`KeepAlive`]). Clients that measure bytes on the wire (a TLS handshake client, the
//! held requests of the passivation lab) write their own requests instead.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Any error of a request.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Sends `req` on a new HTTP/1.1 connection to `addr` and reads the whole response.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Response<Bytes>, Error>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Error>,
{
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, bytes))
}

thread_local! {
    /// The runtime blocking callers run their requests on: one per thread, created on first use.
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
}

/// Runs a future to completion on this thread's client runtime. Not from inside another runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// `METHOD path` with `Host: host` and `Connection: close` on a new connection to `addr`: the whole response.
pub async fn send_close(addr: SocketAddr, method: &str, host: &str, path: &str) -> Result<Response<Bytes>, Error> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    send(addr, req).await
}

/// [`send_close`] to 127.0.0.1:port, from blocking code: the status and body, or `None` if there is no answer
/// within `timeout`.
pub fn fetch(port: u16, method: &str, host: &str, path: &str, timeout: Duration) -> Option<(u16, Bytes)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let resp =
        block_on(async { tokio::time::timeout(timeout, send_close(addr, method, host, path)).await }).ok()?.ok()?;
    Some((resp.status().as_u16(), resp.into_body()))
}

/// One kept-alive HTTP/1.1 connection to 127.0.0.1:port, one request at a time, opened again when it closes.
pub struct KeepAlive {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    timeout: Duration,
    /// Times a request on the open connection failed and the connection was opened again.
    pub reconnects: usize,
}

impl KeepAlive {
    /// Connects on the first request. `timeout` bounds each request, connecting included.
    pub fn new(port: u16, timeout: Duration) -> Self {
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), sender: None, timeout, reconnects: 0 }
    }

    /// `GET path` with this `Host`: `(status, body)`. If the kept-alive connection turns out closed, connects
    /// again once and retries.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), Error> {
        if self.sender.is_some() {
            match self.exchange_on(host, path).await {
                Ok(r) => return Ok(r),
                Err(_) => self.reconnects += 1,
            }
        }
        self.connect().await?;
        self.exchange_on(host, path).await
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr)).await??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        self.sender = Some(sender);
        Ok(())
    }

    async fn exchange_on(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), Error> {
        let result = tokio::time::timeout(self.timeout, self.exchange(host, path)).await.map_err(Error::from);
        let result = result.and_then(|r| r);
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), Error> {
        let sender = self.sender.as_mut().ok_or("not connected")?;
        sender.ready().await?;
        let req = Request::get(path).header(HOST, host).body(Empty::new())?;
        let resp = sender.send_request(req).await?;
        let close = resp.headers().get(CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if close {
            self.sender = None;
        }
        Ok((status, body))
    }
}
