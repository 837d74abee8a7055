//! The certificates directory (`--certs DIR`), loaded at start and watched.
//!
//! File naming, per certificate `NAME`:
//! - `NAME.crt` (the chain, leaf first) with `NAME.key` (its private key), or
//! - `NAME.pem` holding both the chain and the key (or with a separate `NAME.key`).
//!
//! The names a certificate serves come from its subject alternative names. Files whose name starts with `.`
//! and subdirectories are ignored (Kubernetes secret volumes keep their real files in `..data/`, and the
//! visible names are symlinks to them, which are followed). A pair that does not load is reported with its
//! files and reason, counted, and the previous version of `NAME` (if any) stays in force.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use super::cert::{self, log_loaded, CertError, Certificate, Origin};
use super::store::{CertStore, Source};
use super::TlsError;
use crate::metrics::TlsMetrics;

/// A safety net for file systems that notify poorly; events normally apply a change within milliseconds.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Events come in bursts (a certificate and its key are written one after the other): wait for the burst.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The files of one certificate.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cert: PathBuf,
    /// `None`: the key is in the certificate file.
    key: Option<PathBuf>,
}

/// The directory's certificates by name, and the names whose files do not form a pair.
type Grouped = (BTreeMap<String, Files>, Vec<(String, CertError)>);

/// Groups the directory's files by certificate name.
fn group(dir: &Path) -> std::io::Result<Grouped> {
    #[derive(Default)]
    struct Found {
        crt: Option<PathBuf>,
        pem: Option<PathBuf>,
        key: Option<PathBuf>,
    }
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if file_name.starts_with('.') || !path.is_file() {
            continue;
        }
        let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension()) else {
            continue;
        };
        let slot: fn(&mut Found) -> &mut Option<PathBuf> = match ext.to_ascii_lowercase().to_str() {
            Some("crt") => |f: &mut Found| &mut f.crt,
            Some("pem") => |f: &mut Found| &mut f.pem,
            Some("key") => |f: &mut Found| &mut f.key,
            _ => continue,
        };
        *slot(found.entry(stem.to_string()).or_default()) = Some(path.clone());
    }
    let mut pairs = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, f) in found {
        match (f.crt, f.pem, f.key) {
            (Some(crt), Some(pem), _) => problems.push((
                name.clone(),
                CertError::Layout(format!(
                    "both {} and {} exist for certificate {name:?}; keep one",
                    crt.display(),
                    pem.display()
                )),
            )),
            (Some(cert), None, key) | (None, Some(cert), key) => {
                pairs.insert(name, Files { cert, key });
            }
            (None, None, Some(key)) => problems.push((
                name.clone(),
                CertError::Layout(format!("{} has no certificate ({name}.crt or {name}.pem)", key.display())),
            )),
            (None, None, None) => {}
        }
    }
    Ok((pairs, problems))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read { path: path.display().to_string(), source })
}

/// Loads one pair, reusing `previous` when the files have not changed.
fn load_pair(name: &str, files: &Files, previous: Option<&Arc<Certificate>>) -> Result<Arc<Certificate>, CertError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = match &files.key {
        Some(k) => read(k)?,
        None => cert_pem.clone(),
    };
    if let Some(p) = previous {
        if p.fingerprint == cert::fingerprint(&cert_pem, &key_pem) {
            return Ok(p.clone());
        }
    }
    let origin = Origin::File(match &files.key {
        Some(k) => format!("{} + {}", files.cert.display(), k.display()),
        None => files.cert.display().to_string(),
    });
    match cert::parse(name, origin, &cert_pem, &key_pem) {
        Err(CertError::NoKey) if files.key.is_none() => Err(CertError::Layout(format!(
            "no private key: {} holds none and {name}.key does not exist",
            files.cert.display()
        ))),
        r => r.map(Arc::new),
    }
}

/// A certificate, or why it did not load.
pub type CertResult = Result<Arc<Certificate>, CertError>;

/// Loads every pair of `dir` without installing anything (for `reveille check`): each name with its
/// certificate or the reason it does not load.
pub fn check(dir: &Path) -> Result<Vec<(String, CertResult)>, TlsError> {
    let (pairs, problems) = group(dir).map_err(|source| TlsError::Dir { path: dir.to_path_buf(), source })?;
    let mut out: Vec<_> = problems.into_iter().map(|(name, e)| (name, Err(e))).collect();
    out.extend(pairs.iter().map(|(name, files)| (name.clone(), load_pair(name, files, None))));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What identifies the directory's state cheaply: every entry's name, size, modification time and inode.
type Stamp = Vec<(OsString, u64, Option<SystemTime>, u64)>;

fn stamp(dir: &Path) -> Option<Stamp> {
    let mut s: Stamp = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            // Follow symlinks: a swapped target is a change.
            let meta = std::fs::metadata(e.path()).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let ino = 0;
            Some((e.file_name(), meta.len(), meta.modified().ok(), ino))
        })
        .collect();
    s.sort();
    Some(s)
}

/// Loads the certificates directory into the store and keeps it in step.
pub struct DirWatcher {
    /// `None` only while a reload runs on the blocking pool.
    loader: Option<DirLoader>,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    dir: PathBuf,
}

/// Reads the directory and updates the store.
struct DirLoader {
    dir: PathBuf,
    store: Arc<CertStore>,
    metrics: TlsMetrics,
    stamp: Option<Stamp>,
    /// Names whose last rejected input had this fingerprint (of the file names and sizes, and the error), so an
    /// unchanged broken pair is reported once, not at every rescan.
    reported: HashMap<String, String>,
}

impl DirWatcher {
    /// Starts watching `dir` (before the first load, so no change can slip between the two).
    pub fn new(dir: PathBuf, store: Arc<CertStore>, metrics: TlsMetrics) -> Self {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch the certificates directory; polling every {POLL_INTERVAL:?} instead");
                None
            }
        };
        let loader = DirLoader { dir: dir.clone(), store, metrics, stamp: None, reported: HashMap::new() };
        Self { loader: Some(loader), events, _watcher: watcher, dir }
    }

    /// Loads the directory (at start). Fails only if the directory cannot be read; bad pairs are reported and
    /// skipped.
    pub fn load(&mut self) -> Result<usize, TlsError> {
        match self.loader.as_mut() {
            Some(l) => l.load(),
            None => Ok(0),
        }
    }

    /// Reloads on every change until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("certs_dir", dir = %self.dir.display());
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let loader = &self.loader;
            let changed = || !loader.as_ref().is_some_and(|l| stamp(&l.dir) == l.stamp);
            if !crate::control::next_change(&mut self.events, &mut poll, DEBOUNCE, &shutdown, changed).await {
                return;
            }
            let Some(mut loader) = self.loader.take() else { return };
            // Reading and parsing happen off the request threads.
            let span = tracing::Span::current();
            let work = tokio::task::spawn_blocking(move || {
                let result = span.in_scope(|| loader.load());
                (loader, result)
            });
            match work.await {
                Ok((loader, result)) => {
                    self.loader = Some(loader);
                    if let Err(e) = result {
                        error!(error = %e, "certificates directory not readable; the certificates in force stay");
                    }
                }
                Err(e) => {
                    error!(error = %e, "certificates reload task failed; no longer watching the directory");
                    return;
                }
            }
        }
    }
}

impl DirLoader {
    fn load(&mut self) -> Result<usize, TlsError> {
        self.stamp = stamp(&self.dir);
        let (pairs, problems) = group(&self.dir).map_err(|source| TlsError::Dir { path: self.dir.clone(), source })?;
        let previous = self.store.source(Source::Dir);
        let mut next = BTreeMap::new();
        for (name, err) in problems {
            self.reject(&name, &err, previous.get(&name));
            if let Some(p) = previous.get(&name) {
                next.insert(name, p.clone());
            }
        }
        for (name, files) in &pairs {
            let before = previous.get(name);
            match load_pair(name, files, before) {
                Ok(c) => {
                    if !before.is_some_and(|b| Arc::ptr_eq(b, &c)) {
                        log_loaded(&c, before.is_some());
                    }
                    self.reported.remove(name);
                    next.insert(name.clone(), c);
                }
                Err(e) => {
                    self.reject(name, &e, before);
                    if let Some(p) = before {
                        next.insert(name.clone(), p.clone());
                    }
                }
            }
        }
        for (name, c) in &previous {
            if !next.contains_key(name) {
                info!(name = %name, origin = %c.origin, "certificate removed");
                self.reported.remove(name);
            }
        }
        let count = next.len();
        let unchanged = previous.len() == next.len()
            && previous.iter().zip(next.iter()).all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y));
        if !unchanged || count == 0 {
            self.store.replace(Source::Dir, next);
        }
        Ok(count)
    }

    fn reject(&mut self, name: &str, err: &CertError, kept: Option<&Arc<Certificate>>) {
        let message = err.to_string();
        if self.reported.get(name) == Some(&message) {
            return;
        }
        self.metrics.rejected(Source::Dir.as_str());
        match kept {
            Some(k) => {
                error!(dir = %self.dir.display(), name, error = %message, "certificate rejected; the previous one stays in force (from {})", k.origin)
            }
            None => error!(dir = %self.dir.display(), name, error = %message, "certificate rejected"),
        }
        self.reported.insert(name.to_string(), message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.crt", "a.key", "b.pem", "c.pem", "c.key", "d.key", "e.crt", "e.pem", ".hidden.pem", "x.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.pem")).unwrap();
        let (pairs, problems) = group(dir.path()).unwrap();
        assert_eq!(pairs.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(pairs["a"].key.as_deref(), Some(dir.path().join("a.key").as_path()));
        assert_eq!(pairs["b"].key, None);
        assert_eq!(pairs["c"].cert, dir.path().join("c.pem"));
        let names: Vec<_> = problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["d", "e"]);
    }
}
