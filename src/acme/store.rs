//! Where ACME keeps what must outlive an order and be shared by every replica: the account, the certificates,
//! the pending challenges' answers and the per-host order locks.
//!
//! With etcd (every replica sees the same): the account at `<prefix>acme/account`, certificates at
//! `<prefix>certs/acme-<host>` (where every replica's certificate watcher already loads them), challenge
//! answers at `<prefix>acme/challenges/<kind>/<id>` and order locks at `<prefix>acme/orders/<host>`, both under
//! a lease so that a replica that dies mid-order leaves nothing behind. Without etcd (one replica): the
//! certificates directory, `acme-<host>.pem` (chain and key) beside the operator's files, and the account in
//! its `.acme/account.json`; challenges and locks live in memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::task::JoinHandle;
use tracing::debug;

use super::budget::{prune, Budget, Entry};
use crate::etcd::{list_range, within, Etcd, EtcdError};
use crate::tls::etcd::{AcmeOrigin, CertValue};

/// How long a challenge answer stays in etcd if the replica that wrote it dies before withdrawing it.
const CHALLENGE_TTL: i64 = 600;
/// The order lock's lease; kept alive while the order runs.
const LOCK_TTL: i64 = 30;

/// Why the ACME store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Etcd(EtcdError::from(e))
    }
}

/// The ACME store: etcd, or the certificates directory.
#[derive(Clone)]
pub(crate) enum Store {
    Etcd(Etcd),
    Dir(PathBuf),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Etcd(_) => f.write_str("Store::Etcd"),
            Store::Dir(d) => write!(f, "Store::Dir({})", d.display()),
        }
    }
}

/// The certificate's name in the store: `acme-<host>`.
pub(crate) fn cert_name(host: &str) -> String {
    format!("acme-{host}")
}

/// The host of an ACME certificate's name.
pub(crate) fn cert_host(name: &str) -> Option<&str> {
    name.strip_prefix("acme-")
}

/// A name's recent failures, shared by the replicas (etcd): none orders it again before `until`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Failure {
    pub failures: u32,
    /// Seconds since the epoch.
    pub until: i64,
    pub reason: String,
}

/// An order lock held in etcd: released (its lease revoked) by [`OrderLock::release`]; if the process dies, the
/// lease expires.
pub(crate) struct OrderLock {
    release: Option<(Etcd, i64)>,
    keeper: Option<JoinHandle<()>>,
    /// Set when the lease could not be kept alive: another replica may take the lock.
    lost: Arc<AtomicBool>,
}

impl OrderLock {
    /// Whether the lock's lease lapsed (or may have).
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub(crate) async fn release(mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        if let Some((etcd, lease)) = self.release.take() {
            if let Ok(c) = etcd.client().await {
                let _ = within(etcd.config().timeout, c.client.lease_client().revoke(lease)).await;
            }
        }
    }
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

impl Store {
    fn account_path(dir: &Path) -> PathBuf {
        dir.join(".acme").join("account.json")
    }

    /// The stored account credentials (JSON), if any.
    pub(crate) async fn account(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Etcd(etcd) => {
                let c = etcd.client().await?;
                let got = within(etcd.config().timeout, c.client.kv_client().get(etcd.keys().acme_account(), None))
                    .await
                    .inspect_err(|_| etcd.failed(&c))?;
                Ok(got.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
            }
            Store::Dir(dir) => {
                let path = Self::account_path(dir);
                match read_bounded(&path).await.and_then(|b| String::from_utf8(b).map_err(std::io::Error::other)) {
                    Ok(s) => Ok(Some(s)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io { path, source }),
                }
            }
        }
    }

    /// Saves new account credentials unless another replica saved some first: returns the credentials in force
    /// (`json`, or the other replica's).
    pub(crate) async fn save_account(&self, json: &str) -> Result<String, StoreError> {
        match self {
            Store::Etcd(etcd) => {
                let key = etcd.keys().acme_account();
                let c = etcd.client().await?;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), json, None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let resp = within(etcd.config().timeout, c.client.kv_client().txn(txn))
                    .await
                    .inspect_err(|_| etcd.failed(&c))?;
                if resp.succeeded() {
                    return Ok(json.to_string());
                }
                for op in resp.op_responses() {
                    if let etcd_client::TxnOpResponse::Get(g) = op {
                        if let Some(kv) = g.kvs().first() {
                            return Ok(String::from_utf8_lossy(kv.value()).into_owned());
                        }
                    }
                }
                Ok(json.to_string())
            }
            Store::Dir(dir) => {
                let path = Self::account_path(dir);
                write_private(&path, json.as_bytes()).await?;
                Ok(json.to_string())
            }
        }
    }

    /// Stores an obtained certificate where every replica's certificate source loads it.
    pub(crate) async fn save_cert(
        &self,
        host: &str,
        chain_pem: &str,
        key_pem: &str,
        origin: AcmeOrigin,
    ) -> Result<(), StoreError> {
        let name = cert_name(host);
        match self {
            Store::Etcd(etcd) => {
                let value = CertValue { cert: chain_pem.to_string(), key: key_pem.to_string(), acme: Some(origin) };
                let value = serde_json::to_vec(&value).expect("a certificate value serializes");
                let c = etcd.client().await?;
                within(etcd.config().timeout, c.client.kv_client().put(etcd.keys().cert(&name), value, None))
                    .await
                    .inspect_err(|_| etcd.failed(&c))?;
                Ok(())
            }
            Store::Dir(dir) => {
                let mut pem = String::with_capacity(chain_pem.len() + key_pem.len() + 1);
                pem.push_str(chain_pem);
                if !pem.ends_with('\n') {
                    pem.push('\n');
                }
                pem.push_str(key_pem);
                write_private(&dir.join(format!("{name}.pem")), pem.as_bytes()).await
            }
        }
    }

    /// Whether other replicas share this store (and must learn challenge answers through it).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Store::Etcd(_))
    }

    /// Publishes a challenge answer for every replica (etcd, under a lease). Without etcd, nothing to do: the
    /// answer is in this process's memory.
    pub(crate) async fn put_challenge(&self, kind: &str, id: &str, answer: &str) -> Result<(), StoreError> {
        let Store::Etcd(etcd) = self else { return Ok(()) };
        let timeout = etcd.config().timeout;
        let c = etcd.client().await?;
        let result = async {
            let lease = within(timeout, c.client.lease_client().grant(CHALLENGE_TTL, None)).await?.id();
            let key = etcd.keys().acme_challenge(kind, id);
            within(timeout, c.client.kv_client().put(key, answer, Some(PutOptions::new().with_lease(lease)))).await?;
            Ok::<_, EtcdError>(())
        }
        .await;
        result.inspect_err(|_| etcd.failed(&c))?;
        Ok(())
    }

    /// Removes a challenge answer once its order is over.
    pub(crate) async fn remove_challenge(&self, kind: &str, id: &str) {
        let Store::Etcd(etcd) = self else { return };
        if let Ok(c) = etcd.client().await {
            let key = etcd.keys().acme_challenge(kind, id);
            if let Err(e) = within(etcd.config().timeout, c.client.kv_client().delete(key, None)).await {
                debug!(error = %e, "could not remove a challenge answer; its lease will");
            }
        }
    }

    /// Takes the cluster-wide lock on ordering for `host`: `None` when another replica holds it. Without etcd
    /// there is one replica, and the caller's in-process dedup is the lock.
    pub(crate) async fn lock(&self, host: &str, node: &str) -> Result<Option<OrderLock>, StoreError> {
        let Store::Etcd(etcd) = self else {
            return Ok(Some(OrderLock { release: None, keeper: None, lost: Arc::new(AtomicBool::new(false)) }));
        };
        let timeout = etcd.config().timeout;
        let c = etcd.client().await?;
        let client = c.client.clone();
        let result = async {
            let mut leases = client.lease_client();
            let lease = within(timeout, leases.grant(LOCK_TTL, None)).await?.id();
            let key = etcd.keys().acme_order(host);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), node, Some(PutOptions::new().with_lease(lease)))]);
            if !within(timeout, client.kv_client().txn(txn)).await?.succeeded() {
                let _ = within(timeout, leases.revoke(lease)).await;
                return Ok(None);
            }
            let (mut keeper, mut answers) = within(timeout, leases.keep_alive(lease)).await?;
            let lost = Arc::new(AtomicBool::new(false));
            let flag = lost.clone();
            let keep = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(LOCK_TTL as u64 / 3));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let renewed = async {
                        within(timeout, keeper.keep_alive()).await?;
                        Ok::<_, EtcdError>(within(timeout, answers.message()).await?.is_some_and(|a| a.ttl() > 0))
                    };
                    if !matches!(renewed.await, Ok(true)) {
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
            let release = Some((etcd.clone(), lease));
            Ok::<_, EtcdError>(Some(OrderLock { release, keeper: Some(keep), lost }))
        }
        .await;
        Ok(result.inspect_err(|_| etcd.failed(&c))?)
    }
}

impl Store {
    /// The name's recorded failures (etcd only: one replica keeps them in memory).
    pub(crate) async fn failure(&self, host: &str) -> Result<Option<Failure>, StoreError> {
        let Store::Etcd(etcd) = self else { return Ok(None) };
        let c = etcd.client().await?;
        let got = within(etcd.config().timeout, c.client.kv_client().get(etcd.keys().acme_failure(host), None))
            .await
            .inspect_err(|_| etcd.failed(&c))?;
        Ok(got.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// Records (`Some`) or clears (`None`) the name's failures for every replica. Best effort: without it, each
    /// replica still backs off on its own.
    pub(crate) async fn set_failure(&self, host: &str, failure: Option<&Failure>) {
        let Store::Etcd(etcd) = self else { return };
        let timeout = etcd.config().timeout;
        let Ok(c) = etcd.client().await else { return };
        let key = etcd.keys().acme_failure(host);
        let result = async {
            match failure {
                Some(f) => {
                    // Kept a day past its backoff, so the count goes on if the name fails again soon.
                    let ttl = (f.until - crate::tls::cert::now()).max(1) + 86_400;
                    let lease = within(timeout, c.client.lease_client().grant(ttl, None)).await?.id();
                    let value = serde_json::to_vec(f).expect("a failure serializes");
                    within(timeout, c.client.kv_client().put(key, value, Some(PutOptions::new().with_lease(lease))))
                        .await?;
                }
                None => {
                    within(timeout, c.client.kv_client().delete(key, None)).await?;
                }
            }
            Ok::<_, EtcdError>(())
        }
        .await;
        if let Err(e) = result {
            debug!(error = %e, "could not record the name's failures in etcd");
        }
    }

    /// The orders placed within the budget's longest window.
    pub(crate) async fn ledger(&self, budget: &Budget, now: i64) -> Result<Vec<Entry>, StoreError> {
        let mut entries: Vec<Entry> = match self {
            Store::Etcd(etcd) => {
                let prefix = etcd.keys().acme_ledger("");
                let c = etcd.client().await?;
                let end = format!("{}0", prefix.trim_end_matches('/'));
                let (_, kvs) = list_range(&c.client, &prefix, &end, etcd.config().timeout)
                    .await
                    .inspect_err(|_| etcd.failed(&c))?;
                kvs.iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect()
            }
            Store::Dir(dir) => {
                let path = Self::ledger_path(dir);
                match read_bounded(&path).await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
        };
        prune(budget, &mut entries, now);
        Ok(entries)
    }

    /// Adds an order to the ledger. In etcd, under a lease as long as the budget's longest window, so old
    /// entries go by themselves.
    pub(crate) async fn record(&self, budget: &Budget, entry: &Entry) -> Result<(), StoreError> {
        match self {
            Store::Etcd(etcd) => {
                let timeout = etcd.config().timeout;
                let c = etcd.client().await?;
                let ttl = budget.longest_window().as_secs().max(60) as i64;
                let key = etcd.keys().acme_ledger(&format!("{}-{}", entry.at, entry.host));
                let value = serde_json::to_vec(entry).expect("a ledger entry serializes");
                let result = async {
                    let lease = within(timeout, c.client.lease_client().grant(ttl, None)).await?.id();
                    within(timeout, c.client.kv_client().put(key, value, Some(PutOptions::new().with_lease(lease))))
                        .await?;
                    Ok::<_, EtcdError>(())
                }
                .await;
                result.inspect_err(|_| etcd.failed(&c))?;
                Ok(())
            }
            Store::Dir(dir) => {
                let mut entries = self.ledger(budget, entry.at).await?;
                entries.push(entry.clone());
                let json = serde_json::to_vec(&entries).expect("a ledger serializes");
                write_private(&Self::ledger_path(dir), &json).await
            }
        }
    }

    fn ledger_path(dir: &Path) -> PathBuf {
        dir.join(".acme").join("ledger.json")
    }
}

/// Writes a file readable by its owner only (it holds a private key), atomically (a temporary file renamed).
async fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let tmp = path.with_extension("tmp~");
    let (tmp2, bytes) = (tmp.clone(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp2)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))?
    .map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)
}

/// Reads one of the store's own files off the runtime's threads, regular files only and within the size limit
/// of every file reveille reads (`fsread`).
async fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || crate::fsread::read(&path, crate::fsread::DEFAULT_MAX_SIZE))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
