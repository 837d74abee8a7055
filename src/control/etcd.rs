//! Routes from etcd (v3 API): the key schema, connecting, and the watcher that keeps the table in step.
//!
//! Key schema, under a prefix (default `/reveille/`):
//!
//! - `<prefix>routes/<hostname>` → `{"service": "acme"}` (`<hostname>` may be `*.example.com`)
//! - `<prefix>services/<name>` → `{"backends": ["10.0.0.5:8080", "http://10.0.0.6:8080"]}`
//!
//! One JSON value per key, so a single `put` is never half-applied. Unknown JSON fields are accepted with a
//! warning; wrong types are errors. Other keys under the prefix (`status/`, `activity/`, `certs/`...) belong to
//! other parts of reveille and are not watched here.
//!
//! The watcher lists the route and service keys with one `Get` at revision R, then watches them from R+1 and
//! hands each watch response to the [`Composer`] as one batch, so a transaction that writes a route and its
//! service is applied at once. When the watch breaks (etcd restarted, leader lost, revision compacted, token
//! expired), the table in force stays, and the watcher reconnects with backoff, lists again and applies the
//! difference: nothing changed meanwhile is lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchOptions};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::compose::{Change, Composer, Source};
use crate::metrics::Metrics;
use crate::routes::{HostPattern, RouteError, RouteSet, RouteSpec, Service, ServiceSpec};

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
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }
}

pub const DEFAULT_PREFIX: &str = "/reveille/";

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect { endpoints: String, source: Box<etcd_client::Error> },
    #[error("etcd at {endpoints} did not answer within {}", humantime::format_duration(*.timeout))]
    Unreachable { endpoints: String, timeout: Duration },
    #[error("etcd did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("etcd request failed: {0}")]
    Request(Box<etcd_client::Error>),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid etcd settings: {0}")]
    Config(String),
    #[error("etcd watch ended: {0}")]
    WatchEnded(String),
}

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
        let read = |p: &PathBuf| std::fs::read(p).map_err(|source| EtcdError::ReadFile { path: p.clone(), source });
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
pub async fn within<T>(
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
const MAX_MESSAGE: usize = 64 << 20;

/// Lists `[start, end)` at one revision, page by page. Returns the revision and every key/value.
pub async fn list_range(
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

/// The key schema under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Route(&'a str),
    Service(&'a str),
    Other,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn routes(&self) -> String {
        format!("{}routes/", self.prefix)
    }

    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }

    pub fn route(&self, host: &str) -> String {
        format!("{}routes/{host}", self.prefix)
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    /// `<prefix>status/<name>`: a passivated service's state, written by reveille.
    pub fn status(&self, name: &str) -> String {
        format!("{}status/{name}", self.prefix)
    }

    /// `<prefix>activity/<name>`: when a passivated service last had a request, written by reveille.
    pub fn activity(&self, name: &str) -> String {
        format!("{}activity/{name}", self.prefix)
    }

    /// `<prefix>certs/<name>`: a TLS certificate chain and its key.
    pub fn cert(&self, name: &str) -> String {
        format!("{}certs/{name}", self.prefix)
    }

    /// The key range of certificates: `[<prefix>certs/, <prefix>certs0)`.
    pub fn certs_range(&self) -> (String, String) {
        (format!("{}certs/", self.prefix), format!("{}certs0", self.prefix))
    }

    /// The certificate name of a key in [`Keys::certs_range`].
    pub fn cert_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("certs/")
    }

    /// The key range holding routes and services, and nothing that changes often (`activity/` sorts before
    /// it, `status/` after): `[<prefix>routes/, <prefix>services0)`.
    pub fn watched_range(&self) -> (String, String) {
        (self.routes(), format!("{}services0", self.prefix))
    }

    pub fn kind<'k>(&self, key: &'k str) -> KeyKind<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        if let Some(host) = rest.strip_prefix("routes/") {
            KeyKind::Route(host)
        } else if let Some(name) = rest.strip_prefix("services/") {
            KeyKind::Service(name)
        } else {
            KeyKind::Other
        }
    }
}

/// Why an etcd value was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("value is not valid JSON for this key: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// A parsed `put`.
#[derive(Debug)]
pub enum Parsed {
    Route(HostPattern, Arc<str>),
    Service(Arc<str>, Arc<Service>),
}

/// Parses one key/value pair. `Ok(None)`: a key of another part of reveille, not ours.
pub fn parse_kv(keys: &Keys, key: &[u8], value: &[u8]) -> Result<Option<Parsed>, ValueError> {
    let key = std::str::from_utf8(key).map_err(|_| ValueError::KeyNotUtf8)?;
    match keys.kind(key) {
        KeyKind::Route(host) => {
            let pattern = HostPattern::parse(host)?;
            let spec: RouteSpec = serde_json::from_slice(value)?;
            for field in spec.unknown.keys() {
                warn!(key, field, "unknown field in etcd route value ignored");
            }
            crate::routes::validate_service_name(&spec.service)?;
            Ok(Some(Parsed::Route(pattern, Arc::from(spec.service))))
        }
        KeyKind::Service(name) => {
            let spec: ServiceSpec = serde_json::from_slice(value)?;
            for field in spec.unknown.keys() {
                warn!(key, field, "unknown field in etcd service value ignored");
            }
            let service = spec.to_service(name).map_err(|(_, e)| e)?;
            Ok(Some(Parsed::Service(Arc::from(name), Arc::new(service))))
        }
        KeyKind::Other => Ok(None),
    }
}

/// Parses a deleted key into the change that removes it.
fn deletion(keys: &Keys, key: &[u8]) -> Option<Change> {
    let key = std::str::from_utf8(key).ok()?;
    match keys.kind(key) {
        KeyKind::Route(host) => HostPattern::parse(host).ok().map(|p| Change::Route(p, None)),
        KeyKind::Service(name) => Some(Change::Service(Arc::from(name), None)),
        KeyKind::Other => None,
    }
}

/// Keeps the etcd part of the route table in step with etcd, until shutdown.
pub struct EtcdWatcher {
    config: EtcdConfig,
    keys: Keys,
    composer: Arc<Composer>,
    metrics: Arc<Metrics>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// How a watch session ended: its error, and whether it had loaded its keys (which resets the backoff).
#[derive(Debug)]
pub struct SessionEnd {
    pub error: EtcdError,
    pub loaded: bool,
}

/// Runs watch sessions one after the other until `shutdown`: a session that ends (etcd restarted, leader lost,
/// revision compacted, token expired, even a panic inside the etcd client) is followed by another, after a
/// backoff that grows while sessions fail before loading anything. `ended` is called after each session.
pub async fn supervise<F, Fut>(what: &str, mut session: F, ended: impl Fn(), shutdown: CancellationToken)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), SessionEnd>>,
{
    let mut backoff = BACKOFF_MIN;
    let mut sessions = 0u64;
    loop {
        // A panic inside the etcd client (it asserts on some server answers) must not end the watcher.
        let run = std::panic::AssertUnwindSafe(session(sessions)).catch_unwind();
        let result = tokio::select! {
            r = run => r.unwrap_or_else(|_| Err(SessionEnd {
                error: EtcdError::WatchEnded("etcd client panicked".into()),
                loaded: false,
            })),
            _ = shutdown.cancelled() => return,
        };
        ended();
        sessions += 1;
        let end = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if end.loaded {
            backoff = BACKOFF_MIN;
        }
        warn!(error = %end.error, retry_in = ?backoff, "etcd watch of {what} interrupted; keeping what is in force and reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens a watch of `[start, end)` from `revision + 1` (the revision a listing was made at).
pub async fn watch_from(
    client: &Client,
    start: String,
    end: String,
    revision: i64,
) -> Result<(etcd_client::Watcher, etcd_client::WatchStream), EtcdError> {
    let options = WatchOptions::new().with_range(end).with_start_revision(revision + 1).with_progress_notify();
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    Ok(watch_client.watch(start, Some(options)).await?)
}

/// The next watch response; an error when the stream closes or etcd cancels the watch (`from` is the revision
/// the watch started after, for the message).
pub async fn next_response(
    stream: &mut etcd_client::WatchStream,
    from: i64,
) -> Result<etcd_client::WatchResponse, EtcdError> {
    let Some(resp) = stream.message().await? else {
        return Err(EtcdError::WatchEnded("stream closed by etcd".into()));
    };
    if resp.canceled() {
        let reason = match resp.compact_revision() {
            0 => resp.cancel_reason().to_string(),
            c => format!("revision {} compacted (now {c})", from + 1),
        };
        return Err(EtcdError::WatchEnded(format!("canceled: {reason}")));
    }
    Ok(resp)
}

impl EtcdWatcher {
    pub fn new(config: EtcdConfig, composer: Arc<Composer>, metrics: Arc<Metrics>) -> Self {
        let keys = config.keys();
        Self { config, keys, composer, metrics }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let span =
            tracing::info_span!("etcd", endpoints = %self.config.endpoints.join(","), prefix = %self.keys.prefix());
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) {
        let this = &self;
        supervise("routes", |n| this.session(n), || this.metrics.etcd_connected(false), shutdown).await
    }

    async fn session(&self, n: u64) -> Result<(), SessionEnd> {
        let mut loaded = false;
        self.session_inner(n, &mut loaded).await.map_err(|error| SessionEnd { error, loaded })
    }

    /// One connection: list, apply, watch until something breaks.
    async fn session_inner(&self, n: u64, loaded: &mut bool) -> Result<(), EtcdError> {
        let client = connect(&self.config).await?;
        let (start, end) = self.keys.watched_range();
        let (revision, kvs) = list_range(&client, &start, &end, self.config.timeout).await?;
        let set = self.list_to_set(&kvs);
        let (routes, services) = (set.routes.len(), set.services.len());
        let changed = self.composer.replace(Source::Etcd, set);
        self.metrics.etcd_connected(true);
        self.metrics.etcd_revision(revision);
        if n == 0 {
            info!(revision, routes, services, "etcd routes loaded");
        } else {
            self.metrics.etcd_resync();
            info!(revision, routes, services, changed, "etcd routes resynced after reconnecting");
        }
        // A successful load resets the backoff.
        *loaded = true;

        let (_watcher, mut stream) = watch_from(&client, start, end, revision).await?;
        loop {
            let resp = next_response(&mut stream, revision).await?;
            let rev = resp.header().map_or(0, |h| h.revision());
            if resp.events().is_empty() {
                self.metrics.etcd_revision(rev);
                continue;
            }
            let mut changes = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => match parse_kv(&self.keys, kv.key(), kv.value()) {
                        Ok(Some(Parsed::Route(p, s))) => changes.push(Change::Route(p, Some(s))),
                        Ok(Some(Parsed::Service(n, s))) => changes.push(Change::Service(n, Some(s))),
                        Ok(None) => {}
                        Err(e) => self.reject(kv, &e),
                    },
                    EventType::Delete => changes.extend(deletion(&self.keys, kv.key())),
                }
            }
            let n = changes.len();
            if n > 0 {
                self.composer.update(Source::Etcd, changes);
                self.metrics.etcd_events(n as u64);
            }
            self.metrics.etcd_revision(rev);
            debug!(revision = rev, changes = n, "etcd changes applied");
        }
    }

    /// Builds the etcd set from a listing. A value that does not parse keeps whatever that key had before (if
    /// anything), so one bad write never removes a working route.
    fn list_to_set(&self, kvs: &[KeyValue]) -> RouteSet {
        let previous = self.composer.source_set(Source::Etcd).unwrap_or_default();
        let mut set = RouteSet::default();
        for kv in kvs {
            match parse_kv(&self.keys, kv.key(), kv.value()) {
                Ok(Some(Parsed::Route(p, s))) => {
                    set.routes.insert(p, s);
                }
                Ok(Some(Parsed::Service(n, s))) => {
                    set.services.insert(n, s);
                }
                Ok(None) => {}
                Err(e) => {
                    self.reject(kv, &e);
                    let key = kv.key_str().unwrap_or_default();
                    match self.keys.kind(key) {
                        KeyKind::Route(h) => {
                            if let Some((p, s)) =
                                HostPattern::parse(h).ok().and_then(|p| previous.routes.get_key_value(&p))
                            {
                                set.routes.insert(p.clone(), s.clone());
                            }
                        }
                        KeyKind::Service(n) => {
                            if let Some((k, s)) = previous.services.get_key_value(n) {
                                set.services.insert(k.clone(), s.clone());
                            }
                        }
                        KeyKind::Other => {}
                    }
                }
            }
        }
        set
    }

    fn reject(&self, kv: &KeyValue, error: &ValueError) {
        self.metrics.etcd_rejected();
        warn!(key = %String::from_utf8_lossy(kv.key()), error = %error, "etcd value rejected; the previous value (if any) stays in force");
    }
}

/// Reads every route and service under the prefix (for the CLI): `(routes, services)` as raw JSON values.
pub async fn list(
    client: &mut Client,
    keys: &Keys,
    timeout: Duration,
) -> Result<(BTreeMap<String, serde_json::Value>, BTreeMap<String, serde_json::Value>), EtcdError> {
    let (start, end) = keys.watched_range();
    let (_, kvs) = list_range(client, &start, &end, timeout).await?;
    let mut routes = BTreeMap::new();
    let mut services = BTreeMap::new();
    for kv in &kvs {
        let key = kv.key_str().unwrap_or_default();
        let value = serde_json::from_slice(kv.value())
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(kv.value()).into()));
        match keys.kind(key) {
            KeyKind::Route(h) => {
                routes.insert(h.to_string(), value);
            }
            KeyKind::Service(n) => {
                services.insert(n.to_string(), value);
            }
            KeyKind::Other => {}
        }
    }
    Ok((routes, services))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_schema() {
        let k = Keys::new("/reveille");
        assert_eq!(k.route("a.com"), "/reveille/routes/a.com");
        assert_eq!(k.kind("/reveille/routes/*.a.com"), KeyKind::Route("*.a.com"));
        assert_eq!(k.kind("/reveille/services/acme"), KeyKind::Service("acme"));
        assert_eq!(k.kind("/reveille/status/acme"), KeyKind::Other);
        assert_eq!(k.kind("/other/routes/a"), KeyKind::Other);
        let (start, end) = k.watched_range();
        for inside in ["/reveille/routes/a", "/reveille/services/z"] {
            assert!(inside >= start.as_str() && inside < end.as_str(), "{inside}");
        }
        for outside in ["/reveille/status/a", "/reveille/activity/a", "/reveille/certs/a"] {
            assert!(!(outside >= start.as_str() && outside < end.as_str()), "{outside}");
        }
    }

    #[test]
    fn values() {
        let k = Keys::new("/r/");
        assert!(
            matches!(parse_kv(&k, b"/r/routes/A.com", br#"{"service":"s"}"#), Ok(Some(Parsed::Route(HostPattern::Exact(h), _))) if h == "a.com")
        );
        assert!(matches!(parse_kv(&k, b"/r/routes/a.com", br#"{"service":"s","extra":1}"#), Ok(Some(_))));
        assert!(parse_kv(&k, b"/r/routes/a.com", br#"{"service":1}"#).is_err());
        assert!(parse_kv(&k, b"/r/routes/a.com", b"not json").is_err());
        assert!(parse_kv(&k, b"/r/routes/a b", br#"{"service":"s"}"#).is_err());
        assert!(parse_kv(&k, b"/r/services/s", br#"{"backends":["127.0.0.1:1"]}"#).unwrap().is_some());
        assert!(parse_kv(&k, b"/r/services/s", br#"{"backends":["nope"]}"#).is_err());
        assert!(parse_kv(&k, b"/r/status/s", b"whatever").unwrap().is_none());
    }
}
