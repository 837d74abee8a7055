//! gRPC and HTTP/2 test support: a real tonic service (`test.Echo`, its one message written by hand as a
//! `prost::Message`, its routes as tonic's own generated code would route them) served over h2c by hyper's h2
//! server, which counts the connections it accepts and can send GOAWAY; and tonic clients over h2c and TLS
//! (ALPN h2) that reach reveille whatever the host they ask for.
// tonic's service traits take `Result<_, tonic::Status>`, a large error by design.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::codec::ProstCodec;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

/// The one message of `test.Echo`: what a call says, and a number (how many replies, or a count).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub n: u32,
}

pub fn msg(text: &str, n: u32) -> Msg {
    Msg { text: text.to_string(), n }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// `test.Echo`: `Unary` answers `name: text` (`fail` fails with INVALID_ARGUMENT and a message with a space and
/// a `%`; `sleep:MS` answers after MS ms); `Stream` answers `n` messages; `Collect` joins what the client
/// streamed; `Chat` answers each message as it comes.
#[derive(Clone)]
pub struct Echo {
    pub name: &'static str,
}

const FAIL_MESSAGE: &str = "told to fail: 100% sure";

impl Echo {
    fn route(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<tonic::body::Body>> + Send>> {
        let name = self.name;
        let codec = || ProstCodec::<Msg, Msg>::default();
        match req.uri().path() {
            "/test.Echo/Unary" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<Msg>| async move {
                    let m = r.into_inner();
                    if m.text == "fail" {
                        return Err(Status::invalid_argument(FAIL_MESSAGE));
                    }
                    if let Some(ms) = m.text.strip_prefix("sleep:") {
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    }
                    Ok(tonic::Response::new(msg(&format!("{name}: {}", m.text), m.n)))
                });
                tonic::server::Grpc::new(codec()).unary(svc, req).await
            }),
            "/test.Echo/Stream" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<Msg>| async move {
                    let m = r.into_inner();
                    let text = m.text.clone();
                    let out: MsgStream =
                        Box::pin(futures::stream::iter((0..m.n).map(move |i| Ok(msg(&format!("{text} {i}"), i)))));
                    Ok::<_, Status>(tonic::Response::new(out))
                });
                tonic::server::Grpc::new(codec()).server_streaming(svc, req).await
            }),
            "/test.Echo/Collect" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<Streaming<Msg>>| async move {
                    let mut stream = r.into_inner();
                    let mut texts = Vec::new();
                    while let Some(m) = stream.next().await {
                        texts.push(m?.text);
                    }
                    Ok::<_, Status>(tonic::Response::new(msg(&texts.join(","), texts.len() as u32)))
                });
                tonic::server::Grpc::new(codec()).client_streaming(svc, req).await
            }),
            "/test.Echo/Chat" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<Streaming<Msg>>| async move {
                    let out: MsgStream =
                        Box::pin(r.into_inner().map(move |m| m.map(|m| msg(&format!("{name} heard {}", m.text), m.n))));
                    Ok::<_, Status>(tonic::Response::new(out))
                });
                tonic::server::Grpc::new(codec()).streaming(svc, req).await
            }),
            _ => Box::pin(async move { Status::unimplemented("no such method").into_http() }),
        }
    }
}

/// An h2c backend (hyper's HTTP/2 server, prior knowledge) on 127.0.0.1:0.
pub struct H2Backend {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
    /// Connections ended (closed by either side, or shut down).
    pub closed: Arc<AtomicUsize>,
    /// Wakes the connections open now to freeze: they stop reading and writing, their sockets left open.
    freeze: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How an [`H2Backend`] serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct H2Options {
    /// Each connection is shut down gracefully (GOAWAY, then the streams it took run to their end) once it has
    /// taken this many requests.
    pub goaway_after: Option<usize>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default: 200).
    pub max_streams: Option<u32>,
    /// `SETTINGS_HEADER_TABLE_SIZE`: the HPACK table the backend's decoder allows (hyper's default: 4096).
    pub header_table_size: Option<u32>,
}

/// What an [`H2Backend`] answers.
pub type H2Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<tonic::body::Body>> + Send>> + Send + Sync>;

impl H2Backend {
    /// Serves `test.Echo` as `name`.
    pub async fn grpc(name: &'static str) -> H2Backend {
        let echo = Echo { name };
        Self::start(Arc::new(move |req| echo.route(req)), H2Options::default()).await
    }

    /// Serves `handler`, as `options` say.
    pub async fn start(handler: H2Handler, options: H2Options) -> H2Backend {
        let H2Options { goaway_after, max_streams, header_table_size } = options;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let freeze = Arc::new(tokio::sync::Notify::new());
        let closed = Arc::new(AtomicUsize::new(0));
        let (conns, reqs, s, f) = (connections.clone(), requests.clone(), stop.clone(), freeze.clone());
        let ended = closed.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = s.cancelled() => return,
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (handler, reqs, s, f) = (handler.clone(), reqs.clone(), s.clone(), f.clone());
                let ended = Ended(ended.clone());
                tokio::spawn(async move {
                    let _ended = ended;
                    let taken = Arc::new(AtomicUsize::new(0));
                    let enough = Arc::new(tokio::sync::Notify::new());
                    let (t, e) = (taken.clone(), enough.clone());
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        if goaway_after.is_some_and(|n| t.fetch_add(1, Ordering::SeqCst) + 1 == n) {
                            e.notify_one();
                        }
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        builder.max_concurrent_streams(n);
                    }
                    if let Some(n) = header_table_size {
                        builder.header_table_size(n);
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = enough.notified() => conn.as_mut().graceful_shutdown(),
                        _ = f.notified() => {
                            // Held, never polled again: a peer that is there and answers nothing.
                            s.cancelled().await;
                            return;
                        }
                        _ = s.cancelled() => return,
                    }
                    tokio::select! { _ = conn => {}, _ = s.cancelled() => {} }
                });
            }
        });
        H2Backend { addr, connections, requests, closed, freeze, stop }
    }

    /// Freezes the connections open now (see `freeze`); later ones are served as usual.
    pub fn freeze(&self) {
        self.freeze.notify_waiters();
    }
}

/// Counts a connection's end when dropped, however its task ends.
struct Ended(Arc<AtomicUsize>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A plain HTTP answer from an h2 backend's handler.
pub fn h2_text(text: impl Into<Bytes>) -> Response<tonic::body::Body> {
    Response::new(tonic::body::Body::new(http_body_util::Full::new(text.into())))
}

/// A tonic channel to reveille's plain listener at `proxy` (h2c, prior knowledge), asking for `host`.
pub async fn h2c_channel(proxy: SocketAddr, host: &str) -> Channel {
    Endpoint::from_shared(format!("http://{host}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| async move {
            Ok::<_, std::io::Error>(TokioIo::new(TcpStream::connect(proxy).await?))
        }))
        .await
        .unwrap()
}

/// A tonic channel to reveille's HTTPS listener at `proxy` (TLS, ALPN h2 only), asking for `host` (also the SNI).
pub async fn tls_channel(proxy: SocketAddr, host: &str, tls: tokio_rustls::TlsConnector) -> Channel {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    // tonic (without its TLS feature) refuses `https://` endpoints: the connector does the TLS, and the calls
    // say `https` as their scheme.
    Endpoint::from_shared(format!("http://{host}"))
        .unwrap()
        .origin(format!("https://{host}").parse().unwrap())
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (tls, name) = (tls.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(proxy).await?;
                let stream = tls.connect(name, tcp).await?;
                assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// A `test.Echo` client on `channel`.
pub struct EchoClient(tonic::client::Grpc<Channel>);

impl EchoClient {
    pub fn new(channel: Channel) -> EchoClient {
        EchoClient(tonic::client::Grpc::new(channel))
    }

    fn codec() -> ProstCodec<Msg, Msg> {
        ProstCodec::default()
    }

    pub async fn unary(&mut self, m: Msg) -> Result<Msg, Status> {
        self.0.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Unary");
        self.0.unary(tonic::Request::new(m), path, Self::codec()).await.map(tonic::Response::into_inner)
    }

    pub async fn stream(&mut self, m: Msg) -> Result<Streaming<Msg>, Status> {
        self.0.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Stream");
        self.0.server_streaming(tonic::Request::new(m), path, Self::codec()).await.map(tonic::Response::into_inner)
    }

    pub async fn collect(&mut self, ms: impl Stream<Item = Msg> + Send + 'static) -> Result<Msg, Status> {
        self.0.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Collect");
        self.0.client_streaming(tonic::Request::new(ms), path, Self::codec()).await.map(tonic::Response::into_inner)
    }

    pub async fn chat(&mut self, ms: impl Stream<Item = Msg> + Send + 'static) -> Result<Streaming<Msg>, Status> {
        self.0.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Chat");
        self.0.streaming(tonic::Request::new(ms), path, Self::codec()).await.map(tonic::Response::into_inner)
    }
}

/// The message `Unary` fails with when asked to.
pub fn fail_message() -> &'static str {
    FAIL_MESSAGE
}
