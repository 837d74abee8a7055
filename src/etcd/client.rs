//! The etcd client: settings, connecting (auth, TLS, timeouts, a probe), requests with a deadline, paged
//! listings, and [`Etcd`], the one client a process shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};

use super::keys::Keys;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one or more.
    pub endpoints: Vec<String>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA certificate (PEM) to verify etcd's certificate; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Time allowed to connect and for each request (not for the watch stream itself).
    pub timeout: Duration,
    /// The largest of the TLS files read (`max_file_size`).
    pub max_file_size: u64,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            user: None,
            password: None,
            ca: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(5),
            max_file_size: crate::fsread::DEFAULT_MAX_SIZE,
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }
}

pub(crate) const DEFAULT_PREFIX: &str = "/reveille/";

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {endpoints}: {}", describe(source))]
    Connect { endpoints: String, source: Box<etcd_client::Error> },
    #[error("etcd at {endpoints} did not answer within {}", humantime::format_duration(*.timeout))]
    Unreachable { endpoints: String, timeout: Duration },
    #[error("etcd did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("etcd request failed: {}", describe(.0))]
    Request(Box<etcd_client::Error>),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid etcd settings: {0}")]
    Config(String),
    #[error("etcd watch ended: {0}")]
    WatchEnded(String),
}

/// An etcd client error as a person reads it: a gRPC status's message, its code and what caused it (the
/// client's own `Display` of a status ends in `details: [], metadata: MetadataMap { headers: {} }`).
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let mut out = match e {
        etcd_client::Error::GRpcStatus(status) => {
            let code = format!("{:?}", status.code()).to_lowercase();
            match status.message() {
                "" => code,
                message => format!("{message} ({code})"),
            }
        }
        etcd_client::Error::TransportError(e) => e.to_string(),
        other => other.to_string(),
    };
    let mut cause = match e {
        etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
        etcd_client::Error::TransportError(e) => std::error::Error::source(e),
        _ => None,
    };
    while let Some(c) = cause {
        let said = c.to_string();
        if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        cause = c.source();
    }
    out
}

impl EtcdError {
    /// How etcd went away, when that is what this error says, as a person says it: the connection refused or
    /// closed (etcd stopped, restarted, or its host went down), or no answer. `None` for an error of another kind
    /// (a compacted revision, a permission denied), which is worth its details.
    pub(crate) fn gone(&self) -> Option<&'static str> {
        let text = match self {
            EtcdError::Unreachable { .. } | EtcdError::Timeout(_) => return Some("no answer"),
            EtcdError::WatchEnded(why) if why == STREAM_CLOSED => return Some("connection closed"),
            EtcdError::Connect { source, .. } | EtcdError::Request(source) => describe(source).to_lowercase(),
            _ => return None,
        };
        // The same outage reaches us in many words (tonic's transport error, h2's broken pipe or GOAWAY, a gRPC
        // status "unavailable"): what they share is one of these.
        if text.contains("connection refused") {
            Some("connection refused")
        } else if [
            "broken pipe",
            "connection reset",
            "connection closed",
            "stream closed",
            "h2 protocol error",
            "goaway",
        ]
        .iter()
        .any(|w| text.contains(w))
        {
            Some("connection closed")
        } else if text.contains("(unavailable)") || text.contains("transport error") {
            Some("unavailable")
        } else {
            None
        }
    }
}

/// [`EtcdError::WatchEnded`]'s reason when etcd closed the watch stream.
pub(crate) const STREAM_CLOSED: &str = "stream closed by etcd";

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        EtcdError::Request(Box::new(e))
    }
}

/// Connects (and authenticates) to etcd, within `config.timeout`.
pub async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    if config.endpoints.is_empty() {
        return Err(EtcdError::Config("no etcd endpoint given".into()));
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.timeout)
        // Notice a dead or partitioned etcd within seconds, even with no traffic on the watch.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    match (&config.user, &config.password) {
        (Some(u), Some(p)) => options = options.with_user(u.clone(), p.clone()),
        (Some(_), None) => return Err(EtcdError::Config("an etcd user needs a password".into())),
        (None, Some(_)) => return Err(EtcdError::Config("an etcd password needs a user".into())),
        (None, None) => {}
    }
    if config.ca.is_some() || config.cert.is_some() {
        let read = |p: &PathBuf| {
            crate::fsread::read(p, config.max_file_size)
                .map_err(|source| EtcdError::ReadFile { path: p.clone(), source })
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&config.cert, &config.key) {
            (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err(EtcdError::Config("a client certificate needs its key, and the other way round".into())),
        }
        options = options.with_tls(tls);
    }
    let endpoints = config.endpoints.join(",");
    let connecting = Client::connect(&config.endpoints, Some(options));
    let mut client = match tokio::time::timeout(config.timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(source)) => return Err(EtcdError::Connect { endpoints, source: Box::new(source) }),
        Err(_) => return Err(EtcdError::Unreachable { endpoints, timeout: config.timeout }),
    };
    // The channel connects lazily: make one cheap request so "unreachable" is reported as such, here.
    let probe = client.get(config.prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only()));
    match tokio::time::timeout(config.timeout, probe).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(source)) => Err(EtcdError::Connect { endpoints, source: Box::new(source) }),
        Err(_) => Err(EtcdError::Unreachable { endpoints, timeout: config.timeout }),
    }
}

/// Runs an etcd request within `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(EtcdError::Timeout(limit)),
    }
}

/// Keys per page when listing: a large table is read in pages at one revision, so no response approaches gRPC's
/// message size limit.
const PAGE: i64 = 5_000;
/// Largest gRPC message accepted from etcd (a page of listing, or one watch response).
pub(super) const MAX_MESSAGE: usize = 64 << 20;

/// Lists `[start, end)` at one revision, page by page. Returns the revision and every key/value.
pub(crate) async fn list_range(
    client: &Client,
    start: &str,
    end: &str,
    timeout: Duration,
) -> Result<(i64, Vec<KeyValue>), EtcdError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut from = start.as_bytes().to_vec();
    let mut revision = 0;
    let mut all = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let mut resp = within(timeout, kv.get(from.clone(), Some(options))).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let page = resp.take_kvs();
        let full = page.len() as i64 == PAGE;
        if let Some(last) = page.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        all.extend(page);
        if !full {
            return Ok((revision, all));
        }
    }
}

/// The process's one etcd client, shared by the route watcher, the certificate watcher and the status writer.
/// Cloning shares it.
///
/// It connects on first use, and a consumer whose session or write failed says so with [`Etcd::failed`]: the
/// next [`Etcd::client`] connects afresh (and so authenticates again). Only the client that failed is dropped:
/// when two consumers see the same outage, the second does not throw away the client the first has already
/// replaced, and a consumer whose own watch is fine keeps it.
#[derive(Clone)]
pub(crate) struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    config: EtcdConfig,
    keys: Keys,
    /// The client in force and its generation; `None` before the first connect and after a failure.
    current: parking_lot::Mutex<Option<Connection>>,
    /// Held while connecting, so consumers that find no client make one connection, not one each. Counts the
    /// connections made (the generations).
    connecting: tokio::sync::Mutex<u64>,
    /// reveille is shutting down: a watch that breaks now (etcd stopping with it) is not worth a warning.
    draining: std::sync::atomic::AtomicBool,
    /// etcd went away and that was said: every watch sees the same outage, and each of its retries fails too,
    /// but an operator needs one line, then one when it is back.
    gone: std::sync::atomic::AtomicBool,
}

/// A client handed out by [`Etcd::client`], with the generation that tells [`Etcd::failed`] which one it is.
#[derive(Clone)]
pub(crate) struct Connection {
    pub client: Client,
    generation: u64,
}

impl Etcd {
    /// Does not connect: the first [`Etcd::client`] does.
    pub(crate) fn new(config: EtcdConfig) -> Self {
        let keys = config.keys();
        let inner = Inner {
            config,
            keys,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            gone: std::sync::atomic::AtomicBool::new(false),
        };
        Self { inner: Arc::new(inner) }
    }

    /// reveille's shutdown has begun (the watchers go on until the drain is over).
    pub(crate) fn drain(&self) {
        self.inner.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that etcd went away; true for the first consumer to notice (the one to say so).
    pub(crate) fn went_away(&self) -> bool {
        !self.inner.gone.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that etcd answers again; true when it had gone away (and this consumer is the one to say so).
    pub(crate) fn came_back(&self) -> bool {
        self.inner.gone.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The client in force, connecting (and authenticating) first if there is none.
    pub(crate) async fn client(&self) -> Result<Connection, EtcdError> {
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        let mut generation = self.inner.connecting.lock().await;
        // Another consumer may have connected while this one waited.
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        let client = connect(&self.inner.config).await?;
        *generation += 1;
        let connection = Connection { client, generation: *generation };
        *self.inner.current.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Reports that `connection` failed: if it is still the client in force, the next [`Etcd::client`] replaces
    /// it. Consumers that hold it (a watch still running) keep using it.
    pub(crate) fn failed(&self, connection: &Connection) {
        self.failed_generation(connection.generation);
    }

    pub(super) fn failed_generation(&self, generation: u64) {
        let mut current = self.inner.current.lock();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }
}

impl Connection {
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Etcd {
        /// Makes `client` the one in force, as a connect would.
        async fn install(&self, client: Client) -> Connection {
            let mut generation = self.inner.connecting.lock().await;
            *generation += 1;
            let connection = Connection { client, generation: *generation };
            *self.inner.current.lock() = Some(connection.clone());
            connection
        }
    }

    #[tokio::test]
    async fn only_the_client_that_failed_is_given_up() {
        // Nothing listens there: a call that tried to connect would fail.
        let nowhere = "http://127.0.0.1:1";
        let mut config = EtcdConfig::new(vec![nowhere.into()]);
        config.timeout = Duration::from_millis(200);
        let etcd = Etcd::new(config);
        // Without auth, the client connects lazily: no request is made here.
        let lazy = || Client::connect([nowhere], None);

        let first = etcd.install(lazy().await.unwrap()).await;
        assert_eq!(etcd.client().await.unwrap().generation, first.generation, "shared, not reconnected");
        etcd.failed(&first);
        assert!(etcd.client().await.is_err(), "a failed client is replaced by a new connection");

        let second = etcd.install(lazy().await.unwrap()).await;
        // A consumer that saw the same outage late reports the old client: the new one stays.
        etcd.failed(&first);
        assert_eq!(etcd.client().await.unwrap().generation, second.generation);
        etcd.failed(&second);
        assert!(etcd.client().await.is_err());
    }
}
