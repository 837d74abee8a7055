//! Certificates by ACME (RFC 8555), for the hosts reveille routes.
//!
//! - `store`: the account, certificates, challenge answers and order locks — in etcd (shared by every
//!   replica) or the certificates directory (one replica).
//! - `challenge`: the answers to pending HTTP-01 and TLS-ALPN-01 challenges, mirrored from etcd so that any
//!   replica the CA reaches answers.
//! - `order`: one order for one host, with `instant-acme`.
//! - `budget`: how many orders the account and each registered domain may have, and the part of it on-demand
//!   orders may use.
//! - `on_demand`: the per-minute limits on the orders handshakes start, per client address and overall.
//!
//! Which names: the exact routes of services with `acme = true`, or of every service with `[acme] hosts =
//! "all"` (a service's `acme = false` opts out). Wildcard routes never: they need DNS-01, which reveille does
//! not do. The route table is the allow-list: a name without an exact route never causes an order, so a
//! handshake for a made-up name costs nothing but a lookup.
//!
//! When: a scan after every route change and every `check_interval` orders what is missing (unless `eager =
//! false`), asks the CA for its suggested renewal windows (ARI, where the CA has it) and renews what is
//! past its renewal time (two thirds of its lifetime, or `renew_before` its expiry); a handshake for an
//! allowed name without a certificate orders at once and waits up to `on_demand_wait`, then falls back to the
//! default certificate; on-demand orders are limited per client address and per minute, and may use only part
//! of the budget (`on_demand_share`), so that no client can leave the scan nothing. One order per name at a
//! time in the process, and across replicas through an etcd lock (`<prefix>acme/orders/<host>`, on a lease): a
//! replica that finds it taken waits for the certificate to arrive through its certificate watch. A failed
//! name is retried after a delay that doubles per failure. A renewal that fails leaves the current certificate
//! in force until it expires.

mod ari;
mod budget;
mod challenge;
mod on_demand;
mod order;
mod store;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use parking_lot::Mutex;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::metrics::AcmeMetrics;
use crate::routes::RouteHandle;
use crate::tls::cert::{now, Certificate, Origin};
use crate::tls::etcd::AcmeOrigin;
use crate::tls::{CertHook, CertStore, Source};

pub use budget::Budget;
pub(crate) use challenge::{ChallengeWatcher, Challenges};
pub(crate) use store::{cert_host, Store};

/// Let's Encrypt's production directory.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Which routed hosts get certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hosts {
    /// Hosts of services with `acme = true`.
    #[default]
    Flagged,
    /// Hosts of every service but those with `acme = false`.
    All,
}

/// The challenge reveille answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Challenge {
    /// On the HTTP listener (the CA connects to port 80).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// On the HTTPS listener (the CA connects to port 443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => challenge::HTTP_01,
            Challenge::TlsAlpn01 => challenge::TLS_ALPN_01,
        }
    }
}

/// External account binding, for CAs that require one.
#[derive(Debug, Clone)]
pub struct Eab {
    pub kid: String,
    /// The HMAC key, base64url as the CA hands it out.
    pub hmac_key: String,
}

/// `[acme]` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address given to the CA.
    pub email: Option<String>,
    pub eab: Option<Eab>,
    /// PEM file of roots to trust for the CA's own HTTPS (a test CA); default: the system's roots.
    pub ca_roots: Option<PathBuf>,
    pub hosts: Hosts,
    pub challenge: Challenge,
    /// Order for an allowed name as soon as its route appears; `false`: only at its first handshake (on
    /// demand), which spares the CA's limits where many tenants' domains are never visited.
    pub eager: bool,
    /// Order at the first handshake for an allowed name without a certificate.
    pub on_demand: bool,
    /// How long such a handshake waits for its certificate.
    pub on_demand_wait: Duration,
    /// On-demand orders one client address (an IPv6 /64) may start per minute, in this replica; 0: no limit.
    pub on_demand_per_client: u32,
    /// On-demand orders per minute in this replica, whatever the client; 0: no limit.
    pub on_demand_per_minute: u32,
    /// Renew this long before expiry; unset: once two thirds of the lifetime have passed.
    pub renew_before: Option<Duration>,
    /// How often to look for missing and expiring certificates (route changes also trigger a look).
    pub check_interval: Duration,
    /// Delay before retrying a name after its first failure; doubled per failure, up to a day.
    pub retry_after: Duration,
    /// Time allowed for the CA's checks and issuance, per order.
    pub order_timeout: Duration,
    /// Orders per account and new certificates per registered domain, per window.
    pub budget: Budget,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.to_string(),
            email: None,
            eab: None,
            ca_roots: None,
            hosts: Hosts::default(),
            challenge: Challenge::default(),
            eager: true,
            on_demand: true,
            on_demand_wait: Duration::from_secs(10),
            // A visitor (or an office behind one address) opening a tenant's few names in a minute gets them all;
            // one hostile address gets a sixth of the overall rate.
            on_demand_per_client: 5,
            // A first deployment's burst of new names is served within minutes (the account's on-demand share,
            // 125 orders, in four); a flood costs at most one etcd lock and ledger read every two seconds.
            on_demand_per_minute: 30,
            renew_before: None,
            check_interval: Duration::from_secs(60),
            retry_after: Duration::from_secs(60),
            order_timeout: Duration::from_secs(90),
            budget: Budget::default(),
        }
    }
}

/// Why a certificate was not obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("the CA: {0}")]
    Ca(Arc<instant_acme::Error>),
    #[error("authorization failed: {0}")]
    Authorization(String),
    #[error("the CA offers no {0} challenge for this name")]
    NoChallenge(&'static str),
    #[error("store: {0}")]
    Store(Arc<store::StoreError>),
    #[error("the issued certificate does not load: {0}")]
    Invalid(String),
    #[error("account: {0}")]
    Account(String),
    #[error("refused by the order budget: {}", .0.detail)]
    Budget(budget::Refusal),
    #[error("{} recent failure(s) of this name; waiting", .failures.failures)]
    Backoff { failures: store::Failure },
}

/// A failed attempt: why, how many failures in a row, and how long until the next try.
#[derive(Debug)]
struct Failed {
    error: AcmeError,
    failures: u32,
    delay: Duration,
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Ca(Arc::new(e))
    }
}

impl From<store::StoreError> for AcmeError {
    fn from(e: store::StoreError) -> Self {
        AcmeError::Store(Arc::new(e))
    }
}

impl AcmeError {
    /// The metric label.
    fn reason(&self) -> &'static str {
        match self {
            AcmeError::Ca(e) => match &**e {
                instant_acme::Error::Api(p) => match p.r#type.as_deref() {
                    Some(t) if t.ends_with(":rateLimited") => "rate_limited",
                    Some(t) if t.ends_with(":rejectedIdentifier") => "rejected_identifier",
                    Some(t) if t.ends_with(":unauthorized") || t.ends_with(":connection") => "challenge_failed",
                    _ => "ca_error",
                },
                instant_acme::Error::Timeout(_) => "timeout",
                _ => "ca_unreachable",
            },
            AcmeError::Authorization(_) => "challenge_failed",
            AcmeError::NoChallenge(_) => "no_challenge",
            AcmeError::Store(_) => "store",
            AcmeError::Invalid(_) => "invalid_certificate",
            AcmeError::Account(_) => "account",
            AcmeError::Budget(r) => r.reason,
            AcmeError::Backoff { .. } => "backoff",
        }
    }
}

/// What a host needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    New,
    Renewal,
}

/// A name's failures: when it may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// The outcome of an order in flight, as its waiters see it: `None` while it runs.
type Outcome = Option<Result<(), String>>;

/// Obtains and renews certificates; answers challenges; the TLS handshake's [`CertHook`].
pub(crate) struct Acme {
    settings: Settings,
    node: String,
    store: Store,
    certs: Arc<CertStore>,
    routes: RouteHandle,
    challenges: Arc<Challenges>,
    metrics: AcmeMetrics,
    account: tokio::sync::Mutex<Option<Account>>,
    inflight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Wildcard routes already reported as needing DNS-01.
    reported: Mutex<HashSet<String>>,
    /// The CA's suggested renewal times.
    ari: ari::Ari,
    /// Held from reading the order ledger to recording an order in it.
    budget_lock: tokio::sync::Mutex<()>,
    /// The per-minute limits on orders handshakes start.
    limiter: on_demand::Limiter,
    /// Keeps the refusals of on-demand orders from flooding the log.
    log_gate: on_demand::LogGate,
    /// This manager, for the handshake hook (called on `&self`) to start orders that outlive the handshake.
    me: std::sync::Weak<Acme>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("directory", &self.settings.directory).finish_non_exhaustive()
    }
}

impl Acme {
    pub(crate) fn new(
        settings: Settings,
        node: String,
        store: Store,
        certs: Arc<CertStore>,
        routes: RouteHandle,
        metrics: AcmeMetrics,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            limiter: on_demand::Limiter::new(settings.on_demand_per_client, settings.on_demand_per_minute),
            log_gate: on_demand::LogGate::default(),
            challenges: Challenges::new(metrics.clone()),
            settings,
            node,
            store,
            certs,
            routes,
            metrics,
            account: tokio::sync::Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            budget_lock: tokio::sync::Mutex::new(()),
            ari: ari::Ari::default(),
        })
    }

    /// The pending challenges' answers (HTTP-01 is answered by the proxy).
    pub(crate) fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// Whether `host` may have a certificate by ACME: an exact route to a service that wants one.
    fn allowed(&self, host: &str) -> Result<(), &'static str> {
        let table = self.routes.load();
        let Some(service) = table.exact_service(host) else {
            return Err(if table.find(host).is_some() { "wildcard" } else { "no_route" });
        };
        match (service.https().acme, self.settings.hosts) {
            (Some(true), _) | (None, Hosts::All) => {}
            (Some(false), _) => return Err("opted_out"),
            (None, Hosts::Flagged) => return Err("not_enabled"),
        }
        if host.parse::<std::net::IpAddr>().is_ok() || !host.contains('.') {
            return Err("not_a_domain");
        }
        Ok(())
    }

    /// When a certificate by ACME is due for renewal (epoch seconds).
    /// Its own rule, or earlier when the CA suggests it (ARI).
    fn renew_at(&self, c: &Certificate) -> i64 {
        let rule = match self.settings.renew_before {
            Some(before) => c.not_after - before.as_secs() as i64,
            None => c.not_before + (c.not_after - c.not_before) * 2 / 3,
        };
        self.ari.renew_at(c).map_or(rule, |ca| ca.min(rule))
    }

    /// What `host` needs now: a first certificate, a renewal of reveille's own, or nothing (a valid certificate
    /// serves it — the operator's own, or ACME's not yet due).
    fn need(&self, host: &str) -> Need {
        let snapshot = self.certs.load();
        let now = now();
        let own = snapshot.certificates().iter().find(|c| store::cert_host(&c.name) == Some(host));
        match snapshot.for_name(host) {
            Some(c) if c.not_before <= now && now <= c.not_after => match own {
                Some(own) if Arc::ptr_eq(own, c) || own.not_after >= c.not_after => {
                    if now >= self.renew_at(own) {
                        Need::Renewal
                    } else {
                        Need::Nothing
                    }
                }
                _ => Need::Nothing,
            },
            _ => {
                if own.is_some() {
                    Need::Renewal
                } else {
                    Need::New
                }
            }
        }
    }

    /// Starts an order for `host` unless one runs already; returns what to wait on. `client`: the address of
    /// the handshake that asks for it (an on-demand order), which the per-minute limits count.
    fn ensure(
        self: &Arc<Self>,
        host: &str,
        kind: &'static str,
        client: Option<IpAddr>,
    ) -> Option<watch::Receiver<Outcome>> {
        let mut inflight = self.inflight.lock();
        if let Some(rx) = inflight.get(host) {
            return Some(rx.clone());
        }
        if let Some(b) = self.backoff.lock().get(host) {
            if Instant::now() < b.until {
                self.metrics.refused("backoff");
                return None;
            }
        }
        if let Some(client) = client {
            if let Err(refusal) = self.limiter.admit(client, tokio::time::Instant::now()) {
                self.metrics.refused(refusal.reason);
                self.refused_on_demand(refusal.reason, host, client, &refusal.detail);
                return None;
            }
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(host.to_string(), rx.clone());
        let this = self.clone();
        let host = host.to_string();
        let span = info_span!("acme", host = %host, kind, node = %self.node, client = tracing::field::Empty);
        if let Some(client) = client {
            span.record("client", tracing::field::display(client));
        }
        tokio::spawn(
            async move {
                let result = this.obtain(&host, kind).await;
                this.inflight.lock().remove(&host);
                if let Err(failed) = &result {
                    match (&failed.error, client) {
                        (AcmeError::Backoff { failures }, _) => {
                            this.metrics.refused("backoff");
                            info!(failures = failures.failures, reason = %failures.reason, retry_in = %humantime::format_duration(failed.delay), "a recent order for this name failed (on another replica): waiting");
                        }
                        (AcmeError::Budget(refusal), Some(client)) => {
                            this.metrics.order(kind, refusal.reason);
                            this.refused_on_demand(refusal.reason, &host, client, &refusal.detail);
                        }
                        (e, _) => {
                            this.metrics.order(kind, e.reason());
                            warn!(error = %e, failures = failed.failures, retry_in = %humantime::format_duration(failed.delay), "no certificate");
                        }
                    }
                }
                let _ = tx.send(Some(result.map(|_| ()).map_err(|f| f.error.to_string())));
            }
            .instrument(span),
        );
        Some(rx)
    }

    /// Counts an on-demand order refused (by a per-minute limit or the budget) and says so in the log, at most
    /// once per reason every ten seconds, with how many refusals the previous lines left out.
    fn refused_on_demand(&self, reason: &'static str, host: &str, client: IpAddr, detail: &str) {
        self.metrics.on_demand_refused(reason);
        if let Some(held_back) = self.log_gate.admit(reason, tokio::time::Instant::now()) {
            warn!(
                limit = reason,
                %host,
                %client,
                held_back,
                "on-demand certificate order for {host} from {client} refused ({reason}): {detail}; the handshake \
                 goes on with the default certificate"
            );
        }
    }

    /// Obtains a certificate for `host` (true), or finds that another replica did (false). A failure sets the
    /// name's backoff, here and (with etcd) for every replica, before the order lock is released.
    async fn obtain(&self, host: &str, kind: &'static str) -> Result<bool, Failed> {
        let lock = match self.store.lock(host, &self.node).await {
            Ok(Some(lock)) => lock,
            Ok(None) => return self.await_other(host).await.map_err(|error| self.failed(host, error, 0)),
            Err(e) => return Err(self.failed(host, e.into(), 0)),
        };
        let remote = self.store.failure(host).await.ok().flatten();
        // The CA may hang: nothing (the lock, the account, the budget) waits on it longer than this.
        let limit = self.settings.order_timeout + Duration::from_secs(30);
        let attempt = match tokio::time::timeout(limit, self.attempt(host, kind, remote.as_ref(), &lock)).await {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Authorization(format!("no result within {}", humantime::format_duration(limit)))),
        };
        let result = match attempt {
            Ok(done) => {
                self.backoff.lock().remove(host);
                if remote.is_some() {
                    self.store.set_failure(host, None).await;
                }
                Ok(done)
            }
            Err(AcmeError::Backoff { failures }) => Err(self.waiting(host, failures)),
            // The name is not at fault, nor the budget used up: an eager order or a renewal may go at once, and
            // the next handshake tries again (the per-minute limits bound how often).
            Err(AcmeError::Budget(refusal)) if refusal.on_demand_share() => {
                Err(Failed { error: AcmeError::Budget(refusal), failures: 0, delay: Duration::ZERO })
            }
            Err(error) => {
                let failed = self.failed(host, error, remote.map_or(0, |f| f.failures));
                let record = store::Failure {
                    failures: failed.failures,
                    until: now() + failed.delay.as_secs() as i64,
                    reason: failed.error.reason().to_string(),
                };
                self.store.set_failure(host, Some(&record)).await;
                Err(failed)
            }
        };
        lock.release().await;
        result
    }

    /// Another replica holds the order lock: waits for its certificate, or its failure.
    async fn await_other(&self, host: &str) -> Result<bool, AcmeError> {
        info!("another replica is ordering this certificate: waiting for it");
        let deadline = Instant::now() + self.settings.order_timeout + Duration::from_secs(30);
        let mut polls = 0u32;
        while Instant::now() < deadline {
            if self.need(host) == Need::Nothing {
                return Ok(false);
            }
            // Its order may fail: then its failure record says so (checked every second).
            polls += 1;
            if polls.is_multiple_of(10) {
                if let Some(failures) = self.store.failure(host).await? {
                    if failures.until > now() {
                        return Err(AcmeError::Backoff { failures });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AcmeError::Authorization("the other replica's order did not deliver in time".into()))
    }

    /// Another replica's failure: wait as long as it says, without counting one more.
    fn waiting(&self, host: &str, failures: store::Failure) -> Failed {
        let delay = Duration::from_secs((failures.until - now()).max(1) as u64);
        let count = failures.failures;
        self.backoff.lock().insert(host.to_string(), Backoff { failures: count, until: Instant::now() + delay });
        Failed { error: AcmeError::Backoff { failures }, failures: count, delay }
    }

    /// Sets the name's backoff after `error`: doubled per failure, except for failures that say nothing about
    /// the name (the store, the budget), which wait `retry_after` flat.
    fn failed(&self, host: &str, error: AcmeError, prior: u32) -> Failed {
        if let AcmeError::Backoff { failures } = error {
            return self.waiting(host, failures);
        }
        let local = self.backoff.lock().get(host).map_or(0, |b| b.failures);
        let (failures, delay) = match error {
            AcmeError::Store(_) | AcmeError::Budget(_) => (local.max(prior), self.settings.retry_after),
            _ => {
                let failures = local.max(prior) + 1;
                let delay = self.settings.retry_after.saturating_mul(1 << (failures - 1).min(16));
                (failures, delay.min(Duration::from_secs(86_400)))
            }
        };
        self.backoff.lock().insert(host.to_string(), Backoff { failures, until: Instant::now() + delay });
        Failed { error, failures, delay }
    }

    /// One attempt, under the order lock.
    async fn attempt(
        &self,
        host: &str,
        kind: &'static str,
        remote: Option<&store::Failure>,
        lock: &store::OrderLock,
    ) -> Result<bool, AcmeError> {
        // Another replica may have finished just before this one took the lock, or failed recently.
        if self.need(host) == Need::Nothing {
            return Ok(false);
        }
        if let Some(failures) = remote.filter(|f| f.until > now()) {
            return Err(AcmeError::Backoff { failures: failures.clone() });
        }
        let account = self.account().await?;
        // The budget, cluster-wide: the ledger is in the store. Checked and recorded under one lock, so that
        // this replica's concurrent orders see each other.
        let budget_guard = self.budget_lock.lock().await;
        let at = now();
        let ledger = self.store.ledger(&self.settings.budget, at).await?;
        // Checked again last thing before ordering: the certificate may have arrived meanwhile.
        let need = self.need(host);
        if need == Need::Nothing {
            return Ok(false);
        }
        let purpose = match need {
            Need::Renewal => budget::Purpose::Renewal,
            _ if kind == "on_demand" => budget::Purpose::OnDemand,
            _ => budget::Purpose::New,
        };
        if let Err(refusal) = budget::check(&self.settings.budget, &ledger, host, purpose, at) {
            self.metrics.refused(refusal.reason);
            return Err(AcmeError::Budget(refusal));
        }
        let entry = budget::Entry {
            host: host.to_string(),
            domain: budget::registered_domain(host),
            at,
            renewal: purpose == budget::Purpose::Renewal,
            on_demand: purpose == budget::Purpose::OnDemand,
        };
        self.store.record(&self.settings.budget, &entry).await?;
        drop(budget_guard);
        let timeout = self.settings.order_timeout;
        let issued =
            order::run(&account, host, self.settings.challenge, &self.challenges, &self.store, timeout).await?;
        let name = store::cert_name(host);
        let origin = match &self.store {
            Store::Etcd(etcd) => Origin::Etcd(etcd.keys().cert(&name)),
            Store::Dir(dir) => Origin::File(dir.join(format!("{name}.pem")).display().to_string()),
        };
        let cert = crate::tls::cert::parse(&name, origin, issued.chain.as_bytes(), issued.key.as_bytes())
            .map_err(|e| AcmeError::Invalid(e.to_string()))?;
        if let Some(before) = self.settings.renew_before {
            if before.as_secs() as i64 >= cert.not_after - cert.not_before {
                warn!(renew_before = %humantime::format_duration(before), "renew_before is longer than the certificate's lifetime: it will be renewed at every check, until the order budget refuses");
            }
        }
        // The lock's lease may have lapsed (etcd unreachable for a while): another replica may be ordering too.
        if lock.lost() {
            return Err(AcmeError::Authorization("the order lock was lost during the order; not stored".into()));
        }
        let acme = AcmeOrigin {
            directory: self.settings.directory.clone(),
            obtained: crate::cluster::rfc3339(std::time::SystemTime::now()),
            node: self.node.clone(),
        };
        self.store.save_cert(host, &issued.chain, &issued.key, acme).await?;
        // In force here at once; the store's watcher brings it to the other replicas (and here again).
        let source = match self.store {
            Store::Etcd(_) => Source::Etcd,
            Store::Dir(_) => Source::Dir,
        };
        self.metrics.order(kind, "issued");
        self.certs.update(source, vec![(name, Some(Arc::new(cert)))]);
        info!(kind, "certificate in force");
        Ok(true)
    }

    /// The ACME account: loaded from the store, or registered with the CA and stored.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let builder = || match &self.settings.ca_roots {
            Some(path) => Account::builder_with_root(path),
            None => Account::builder(),
        };
        let account = match self.store.account().await? {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_str(&json)
                    .map_err(|e| AcmeError::Account(format!("stored credentials do not parse: {e}")))?;
                builder()?.from_credentials(credentials).await?
            }
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = match &self.settings.eab {
                    Some(eab) => {
                        use base64::Engine;
                        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(eab.hmac_key.trim_end_matches('='))
                            .map_err(|e| AcmeError::Account(format!("eab hmac_key is not base64url: {e}")))?;
                        Some(ExternalAccountKey::new(eab.kid.clone(), &key))
                    }
                    None => None,
                };
                let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) =
                    builder()?.create(&new, self.settings.directory.clone(), eab.as_ref()).await?;
                let json = serde_json::to_string(&credentials).expect("credentials serialize");
                let kept = self.store.save_account(&json).await?;
                if kept == json {
                    info!(id = account.id(), directory = %self.settings.directory, "ACME account registered");
                    account
                } else {
                    // Another replica registered first: use its account, so the whole cluster has one.
                    let credentials: AccountCredentials = serde_json::from_str(&kept)
                        .map_err(|e| AcmeError::Account(format!("stored credentials do not parse: {e}")))?;
                    builder()?.from_credentials(credentials).await?
                }
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One look at every routed host: orders what is missing, renews what is due. Returns how many orders
    /// it started.
    fn scan(self: &Arc<Self>) -> usize {
        // Until every certificate source has loaded, a certificate in etcd looks missing.
        if !self.certs.is_ready() {
            return 0;
        }
        let mut wanted = Vec::new();
        {
            let table = self.routes.load();
            for (host, service) in table.exact_routes() {
                if self.allowed(host).is_ok() {
                    wanted.push((host.to_string(), service.name().to_string()));
                }
            }
            for (pattern, service) in table.wildcard_routes() {
                let Some(s) = table.service(service) else { continue };
                let wants = matches!((s.https().acme, self.settings.hosts), (Some(true), _) | (None, Hosts::All));
                if wants && self.reported.lock().insert(pattern.clone()) {
                    self.metrics.refused("wildcard");
                    warn!(route = %pattern, service, "no ACME certificate for a wildcard route: it needs the DNS-01 challenge, which reveille does not answer; give it a certificate (directory or etcd)");
                }
            }
        }
        let mut started = 0;
        let mut due = 0;
        for (host, _service) in &wanted {
            let kind = match self.need(host) {
                Need::Nothing => continue,
                Need::New if !self.settings.eager => continue,
                Need::New => "new",
                Need::Renewal => {
                    due += 1;
                    "renewal"
                }
            };
            if !self.inflight.lock().contains_key(host.as_str()) && self.ensure(host, kind, None).is_some() {
                started += 1;
            }
        }
        // Ask the CA (ARI) about the certificates ACME manages for wanted hosts and not yet due.
        let snapshot = self.certs.load();
        for cert in snapshot.certificates() {
            let Some(host) = store::cert_host(&cert.name) else { continue };
            if !wanted.iter().any(|(h, _)| h == host) || now() >= self.renew_at(cert) || !self.ari.due(cert) {
                continue;
            }
            let (this, cert) = (self.clone(), cert.clone());
            tokio::spawn(async move {
                let ask = async {
                    if let Ok(account) = this.account().await {
                        this.ari.ask(&account, &cert).await;
                    }
                };
                let _ = tokio::time::timeout(this.settings.order_timeout, ask).await;
            });
        }
        let managed = snapshot.certificates().iter().filter(|c| store::cert_host(&c.name).is_some()).count();
        self.metrics.managed(managed, due);
        started
    }

    /// Scans after every route change (settled for a moment) and every `check_interval`, until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.routes.subscribe();
        let mut tick = tokio::time::interval(self.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                () = shutdown.cancelled() => return,
            }
            self.scan();
        }
    }
}

impl CertHook for Acme {
    fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.tls_alpn01(host)
    }

    fn on_demand<'a>(&'a self, host: &'a str, client: IpAddr) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if !self.settings.on_demand || !self.certs.is_ready() {
                return;
            }
            match self.allowed(host) {
                Ok(()) => {}
                // A name without a route, or not asking for ACME: the ordinary case for a stray handshake, not
                // worth a log line.
                Err("no_route" | "not_enabled") => return,
                Err(reason) => {
                    self.metrics.refused(reason);
                    return;
                }
            }
            // `ensure` needs the Arc; the hook is always installed as one.
            let Some(this) = self.me.upgrade() else { return };
            let Some(mut rx) = this.ensure(host, "on_demand", Some(client)) else { return };
            let _ = tokio::time::timeout(self.settings.on_demand_wait, rx.wait_for(Option::is_some)).await;
        })
    }
}
