//! Test support: real backends and a real reveille on port 0, with short builders so each test reads like a
//! sentence (see linkerd2-proxy's tests). Nothing here sleeps to "let things start": servers are bound before
//! they are handed over, and waits poll a condition with a deadline.
#![allow(dead_code, unreachable_pub)]

pub mod docker;
pub mod etcd;
pub mod grpc;
pub mod log;
pub mod pebble;
pub mod runtime;
pub mod serve;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reveille::{Config, ContainerRuntime, Listeners, ProxySettings as Settings, Running, Runtimes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>> + Send + Sync>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A backend HTTP server on 127.0.0.1:0 (HTTP/1.1 with upgrades), counting the requests it serves.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Serves every request with `handler`.
    pub async fn start(handler: Handler) -> Backend {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
    }

    /// Serves every request on `listener` with `handler`.
    pub fn start_on(listener: TcpListener, handler: Handler) -> Backend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, s) = (hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = s.cancelled() => return,
                };
                let (handler, hits, s) = (handler.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! { _ = conn => {}, _ = s.cancelled() => {} }
                });
            }
        });
        Backend { addr, hits, stop }
    }

    /// Answers every request with a JSON description of it: `{"backend": name, "method", "path", "headers"}`.
    /// `/sleep/<ms>` waits that long first.
    pub async fn echo(name: &str) -> Backend {
        let name = name.to_string();
        Backend::start(Arc::new(move |req: Request<Incoming>| {
            let name = name.clone();
            Box::pin(async move {
                if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                }
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers.entry(k.to_string()).or_default().push(v.to_str().unwrap_or("?").to_string());
                }
                let body = serde_json::json!({
                    "backend": name,
                    "method": req.method().as_str(),
                    "path": req.uri().to_string(),
                    "version": format!("{:?}", req.version()),
                    "headers": headers,
                });
                let mut resp = Response::new(full(body.to_string()));
                resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                resp
            })
        }))
        .await
    }

    /// Upgrades every WebSocket request to a socket that echoes text prefixed with "echo: " and binary as is;
    /// a plain request gets 400.
    pub async fn websocket_echo() -> Backend {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::WebSocketStream;
        Backend::start(Arc::new(|mut req: Request<Incoming>| {
            Box::pin(async move {
                let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                    let mut r = Response::new(full("not a websocket request"));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return r;
                };
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let io = TokioIo::new(upgrade.await.unwrap());
                    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("echo: {t}")),
                            Message::Binary(b) => Message::binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut().insert("connection", "upgrade".parse().unwrap());
                r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
                r.headers_mut().insert("sec-websocket-accept", derive_accept_key(key.as_bytes()).parse().unwrap());
                r
            })
        }))
        .await
    }

    /// Answers every request with 200 and `body`.
    pub async fn fixed(body: &'static str) -> Backend {
        Backend::start(Arc::new(move |_req| Box::pin(async move { Response::new(full(body)) }))).await
    }
}

/// An address on which nothing listens (bound, then closed): connections to it are refused.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A running in-process reveille on port 0 with its routes file in a temp dir.
pub struct TestProxy {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub routes_path: PathBuf,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(routes: &str) -> TestProxy {
        Self::start_with(routes, Settings { access_log: false, ..Settings::default() }).await
    }

    pub async fn start_with(routes: &str, settings: Settings) -> TestProxy {
        Self::start_custom(routes, |c| c.proxy = settings).await
    }

    /// A reveille on `routes`, with `config` adjusted by `f` first (passivation settings, etcd...).
    pub async fn start_custom(routes: &str, f: impl FnOnce(&mut Config)) -> TestProxy {
        Self::start_routes(routes, f, None).await
    }

    /// `POST path` on the admin listener, as curl does it (`X-Reveille: 1`, which commands need without a token).
    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        let req = Request::post(path).header("host", self.admin.to_string()).header("x-reveille", "1");
        let r = send(self.admin, req.body(full("")).unwrap()).await;
        (r.status, r.text)
    }

    /// One service's entry of `/api/services`.
    pub async fn service_view(&self, name: &str) -> serde_json::Value {
        let (_, text) = self.admin_get("/api/services").await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["services"][name].clone()
    }

    /// A reveille with etcd as its (only) route source. Returns once started, not once etcd has loaded.
    pub async fn start_etcd(endpoint: &str) -> TestProxy {
        let mut etcd = reveille::EtcdConfig::new(vec![endpoint.to_string()]);
        etcd.timeout = Duration::from_secs(2);
        Self::start_etcd_config(etcd).await
    }

    pub async fn start_etcd_config(etcd: reveille::EtcdConfig) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            etcd: Some(etcd),
            proxy: Settings { access_log: false, ..Settings::default() },
            // One worker: the test's runtime serves everything (the per-core workers are tested through the
            // binary, `binary.rs`).
            threads: 1,
            ..Config::default()
        };
        let routes_path = dir.path().join("unused.toml");
        Self::start_config(config, dir, routes_path).await
    }

    /// A reveille on `routes` that wakes and stops tenants through `runtime` instead of Docker.
    pub async fn start_with_runtime(
        routes: &str,
        f: impl FnOnce(&mut Config),
        runtime: Arc<dyn ContainerRuntime>,
    ) -> TestProxy {
        Self::start_routes(routes, f, Some(runtime)).await
    }

    /// A reveille on a routes file holding `routes`, `config` adjusted by `f`, with `runtime` or Docker.
    async fn start_routes(
        routes: &str,
        f: impl FnOnce(&mut Config),
        runtime: Option<Arc<dyn ContainerRuntime>>,
    ) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let routes_path = dir.path().join("routes.toml");
        std::fs::write(&routes_path, routes).unwrap();
        let mut config = Config {
            http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            routes: Some(routes_path.clone()),
            proxy: Settings { access_log: false, ..Settings::default() },
            // One worker: the test's runtime serves everything (the per-core workers are tested through the
            // binary, `binary.rs`).
            threads: 1,
            ..Config::default()
        };
        f(&mut config);
        let runtimes = runtime.map_or_else(|| reveille::docker(&config), Runtimes::single);
        Self::start_runtime(config, dir, routes_path, runtimes).await
    }

    async fn start_config(config: Config, dir: tempfile::TempDir, routes_path: PathBuf) -> TestProxy {
        let runtime = reveille::docker(&config);
        Self::start_runtime(config, dir, routes_path, runtime).await
    }

    async fn start_runtime(
        config: Config,
        dir: tempfile::TempDir,
        routes_path: PathBuf,
        runtimes: Runtimes,
    ) -> TestProxy {
        let listeners = Listeners::bind(&config).await.unwrap();
        let running = reveille::start(&config, listeners, runtimes).await.unwrap();
        TestProxy { http: running.http_addr, admin: running.admin_addr, routes_path, running: Some(running), _dir: dir }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Replaces the routes file atomically (write + rename), as config managers do.
    pub fn write_routes(&self, text: &str) {
        let tmp = self.routes_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.routes_path).unwrap();
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(mut self, grace: Duration) -> bool {
        let running = self.running.take().unwrap();
        running.shutdown();
        running.wait(grace).await
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let r =
            send(self.admin, Request::get(path).header("host", self.admin.to_string()).body(full("")).unwrap()).await;
        (r.status, r.text)
    }

    /// The value of one sample line of /metrics (`name{labels}` exactly as exposed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The echo backend's name.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap().to_string()
    }
}

/// Sends one request on a new HTTP/1.1 connection and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<BoxBody>) -> Got {
    let (parts, bytes) = testkit::http::send(addr, req).await.unwrap().into_parts();
    Got { status: parts.status, headers: parts.headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

/// `GET path` with `Host: host` through the proxy.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    send(addr, Request::get(path).header("host", host).body(full("")).unwrap()).await
}

/// Polls `f` until it returns true, failing the test after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A routes file with one service per `(name, backends)` and the given routes.
pub fn routes_file(services: &[(&str, Vec<SocketAddr>)], routes: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, backends) in services {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        out.push_str(&format!("[services.{name}]\nbackends = [{}]\n", list.join(", ")));
    }
    out.push_str("[routes]\n");
    for (host, svc) in routes {
        out.push_str(&format!("\"{host}\" = \"{svc}\"\n"));
    }
    out
}

/// A routes file: `<name>.test` → service `<name>`, each service with the given TOML fields.
pub fn services_file(services: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (name, fields) in services {
        out.push_str(&format!("[services.{name}]\n{fields}\n"));
    }
    out.push_str("[routes]\n");
    for (name, _) in services {
        out.push_str(&format!("\"{name}.test\" = \"{name}\"\n"));
    }
    out
}

/// Seconds since the Unix epoch (for `docker events --since`).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Writes raw bytes on a new connection and reads until the server closes it or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

/// For raw test backends: reads one request head from `stream` into `buf` (which may already hold bytes of it)
/// and returns it with its length, or `None` when the peer closes (or fails) first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some((String::from_utf8_lossy(&buf[..i + 4]).into_owned(), i + 4));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// For raw test backends: reads the `Content-Length` body of the request whose head (`head_end` bytes) is at the
/// start of `buf`, then takes both off `buf`. False when the peer closes first.
pub async fn consume_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
    head_end: usize,
) -> bool {
    use tokio::io::AsyncReadExt;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    buf.drain(..head_end + len);
    true
}

/// A client of a server-sent events stream: what arrived so far, read by a background task.
pub struct EventStream {
    pub text: Arc<parking_lot::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// `GET path` on `addr` with `headers` (name, value), reading the stream as it comes.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let text = Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = text.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // The response head arrives at once: the stream is subscribed from then on.
        eventually(Duration::from_secs(5), "the event stream's head", || async {
            text.lock().contains("text/event-stream")
        })
        .await;
        EventStream { text, task }
    }

    /// Waits until the stream holds `what`; returns everything so far.
    pub async fn until(&self, what: &str) -> String {
        eventually(Duration::from_secs(20), &format!("{what:?} in the event stream"), || async {
            self.text.lock().contains(what)
        })
        .await;
        self.text.lock().clone()
    }

    /// The id of the last event received so far.
    pub fn last_id(&self) -> Option<String> {
        self.text.lock().lines().rev().find_map(|l| l.strip_prefix("id: ")).map(str::to_string)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
