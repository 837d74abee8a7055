//! The certificates directory (`--certs DIR`), loaded at start and watched.
//!
//! File naming, per certificate `NAME`:
//! - `NAME.crt` (the chain, leaf first) with `NAME.key` (its private key), or
//! - `NAME.pem` holding both the chain and the key (or with a separate `NAME.key`).
//!
//! The names a certificate serves come from its subject alternative names. Files whose name starts with `.`
//! and subdirectories are ignored (Kubernetes secret volumes keep their real files in `..data/`, and the
//! visible names are symlinks to them, which are followed). A pair that does not load is reported with its
//! files and reason, counted, and the previous version of `NAME` (if any) stays in force: among the reasons, a
//! file that is not a regular one (a FIFO, a device such as a symlink to `/dev/zero`) or is larger than
//! `max_file_size` (`crate::fsread`). Waiting for the
//! directory to change (events, polling) is `crate::fswatch`'s.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::cert::{self, log_loaded, CertError, Certificate, Origin};
use super::store::{CertStore, Source};
use super::TlsError;
use crate::fswatch::FsWatch;
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

/// The directory's files, by certificate name.
struct Grouped {
    pairs: BTreeMap<String, Files>,
    /// Names whose files are ambiguous: the previous certificate of that name stays.
    problems: Vec<(String, CertError)>,
    /// Key files without a certificate file.
    orphans: Vec<(String, PathBuf)>,
}

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
        // Anything but a directory is a candidate, so that a FIFO or a device in a certificate's place is
        // reported (and the previous version kept) rather than taken for a removal.
        if file_name.starts_with('.') || path.is_dir() {
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
    let mut orphans = Vec::new();
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
            // The certificate file is gone (or not written yet): the certificate is removed, not kept.
            (None, None, Some(key)) => orphans.push((name, key)),
            (None, None, None) => {}
        }
    }
    Ok(Grouped { pairs, problems, orphans })
}

fn read(path: &Path, max_size: u64) -> Result<Vec<u8>, CertError> {
    crate::fsread::read(path, max_size).map_err(|source| CertError::Read { path: path.display().to_string(), source })
}

/// Loads one pair (files of at most `max_size` bytes), reusing `previous` when the files have not changed.
fn load_pair(
    name: &str,
    files: &Files,
    previous: Option<&Arc<Certificate>>,
    max_size: u64,
) -> Result<Arc<Certificate>, CertError> {
    let cert_pem = read(&files.cert, max_size)?;
    let key_pem = match &files.key {
        Some(k) => read(k, max_size)?,
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
pub(crate) type CertResult = Result<Arc<Certificate>, CertError>;

/// Loads every pair of `dir` without installing anything (for `reveille check`): each name with its
/// certificate or the reason it does not load.
pub(crate) fn check(dir: &Path, max_file_size: u64) -> Result<Vec<(String, CertResult)>, TlsError> {
    let g = group(dir).map_err(|source| TlsError::Dir { path: dir.to_path_buf(), source })?;
    let mut out: Vec<_> = g.problems.into_iter().map(|(name, e)| (name, Err(e))).collect();
    out.extend(g.orphans.into_iter().map(|(name, key)| {
        let e = CertError::Layout(format!("{} has no certificate ({name}.crt or {name}.pem)", key.display()));
        (name, Err(e))
    }));
    out.extend(g.pairs.iter().map(|(name, files)| (name.clone(), load_pair(name, files, None, max_file_size))));
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
pub(crate) struct DirWatcher {
    /// `None` only while a reload runs on the blocking pool.
    loader: Option<DirLoader>,
    watch: FsWatch,
    dir: PathBuf,
}

/// Reads the directory and updates the store.
struct DirLoader {
    dir: PathBuf,
    store: Arc<CertStore>,
    metrics: TlsMetrics,
    stamp: Option<Stamp>,
    /// Names whose last reported problem had this signature (of the files' sizes and times, and the error), so
    /// an unchanged broken pair is reported once, not at every rescan. 0: an orphan key.
    reported: HashMap<String, u64>,
    /// A pair failed to load while its files were still changing: load again after [`SETTLE`].
    unsettled: bool,
    /// The largest certificate or key file read (`max_file_size`).
    max_file_size: u64,
}

impl DirWatcher {
    /// Starts watching `dir` (before the first load, so no change can slip between the two). Certificate and
    /// key files larger than `max_file_size` bytes are refused.
    pub(crate) fn new(dir: PathBuf, store: Arc<CertStore>, metrics: TlsMetrics, max_file_size: u64) -> Self {
        // Every file of the directory matters (a certificate, its key, Kubernetes' `..data` swap).
        let watch = FsWatch::new(&dir, |_| true, POLL_INTERVAL, DEBOUNCE).unwrap_or_else(|e| {
            warn!(dir = %dir.display(), error = %e, "cannot watch the certificates directory; polling every {POLL_INTERVAL:?} instead");
            FsWatch::polling(POLL_INTERVAL, DEBOUNCE)
        });
        let loader = DirLoader {
            dir: dir.clone(),
            store,
            metrics,
            stamp: None,
            reported: HashMap::new(),
            unsettled: false,
            max_file_size,
        };
        Self { loader: Some(loader), watch, dir }
    }

    /// Loads the directory (at start). Fails only if the directory cannot be read; bad pairs are reported and
    /// skipped.
    pub(crate) fn load(&mut self) -> Result<usize, TlsError> {
        match self.loader.as_mut() {
            Some(l) => l.load(),
            None => Ok(0),
        }
    }

    /// Reloads on every change until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("certs_dir", dir = %self.dir.display());
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: CancellationToken) {
        loop {
            let loader = &self.loader;
            let unsettled = loader.as_ref().is_some_and(|l| l.unsettled);
            let changed = || loader.as_ref().is_none_or(|l| stamp(&l.dir) != l.stamp);
            let next = self.watch.next_change(&shutdown, changed);
            let go = if unsettled {
                tokio::select! {
                    go = next => go,
                    _ = tokio::time::sleep(SETTLE) => true,
                }
            } else {
                next.await
            };
            if !go {
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
        self.unsettled = false;
        let g = group(&self.dir).map_err(|source| TlsError::Dir { path: self.dir.clone(), source })?;
        let previous = self.store.source(Source::Dir);
        let mut next = BTreeMap::new();
        let mut seen = Vec::new();
        for (name, err) in g.problems {
            self.reject(&name, &err, previous.get(&name), 0);
            if let Some(p) = previous.get(&name) {
                next.insert(name.clone(), p.clone());
            }
            seen.push(name);
        }
        for (name, key) in g.orphans {
            if self.reported.get(&name) != Some(&0) {
                warn!(name = %name, key = %key.display(), "key file without a certificate file ({name}.crt or {name}.pem): ignored");
                self.reported.insert(name.clone(), 0);
            }
            seen.push(name);
        }
        for (name, files) in &g.pairs {
            seen.push(name.clone());
            let before = previous.get(name);
            match load_pair(name, files, before, self.max_file_size) {
                Ok(c) => {
                    if !before.is_some_and(|b| Arc::ptr_eq(b, &c)) {
                        log_loaded(&c, before.is_some());
                    }
                    self.reported.remove(name);
                    next.insert(name.clone(), c);
                }
                Err(e) => {
                    // A pair being replaced file by file (a new certificate beside the old key) is not an
                    // error yet: look again once the files have settled.
                    if recently_modified(files) {
                        debug!(name = %name, error = %e, "certificate files changed moments ago; looking again shortly");
                        self.unsettled = true;
                    } else {
                        self.reject(name, &e, before, signature(files, &e));
                    }
                    if let Some(p) = before {
                        next.insert(name.clone(), p.clone());
                    }
                }
            }
        }
        self.reported.retain(|name, _| seen.contains(name));
        for (name, c) in &previous {
            if !next.contains_key(name) {
                info!(name = %name, origin = %c.origin, "certificate removed");
            }
        }
        let count = next.len();
        let unchanged = previous.len() == next.len()
            && previous.iter().zip(next.iter()).all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y));
        if !unchanged || !self.store.is_loaded(Source::Dir) {
            self.store.replace(Source::Dir, next);
        }
        Ok(count)
    }

    /// Reports a rejected pair once per version of its files (`signature`): an unchanged broken pair is not
    /// reported again at every rescan, a different broken version is.
    fn reject(&mut self, name: &str, err: &CertError, kept: Option<&Arc<Certificate>>, signature: u64) {
        let signature = signature.max(1);
        if self.reported.get(name) == Some(&signature) {
            return;
        }
        self.metrics.rejected(Source::Dir.as_str());
        match kept {
            Some(k) => {
                error!(dir = %self.dir.display(), name, error = %err, "certificate rejected; the previous one stays in force (from {})", k.origin)
            }
            None => error!(dir = %self.dir.display(), name, error = %err, "certificate rejected"),
        }
        self.reported.insert(name.to_string(), signature);
    }
}

/// How long after a change a broken pair is given to settle (its other file to be written) before it is
/// reported.
const SETTLE: Duration = Duration::from_secs(2);

fn recently_modified(files: &Files) -> bool {
    let now = SystemTime::now();
    [Some(&files.cert), files.key.as_ref()].into_iter().flatten().any(|p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).map_or(true, |age| age < SETTLE))
    })
}

/// Identifies one version of a pair's files and its error.
fn signature(files: &Files, err: &CertError) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    err.to_string().hash(&mut h);
    for p in [Some(&files.cert), files.key.as_ref()].into_iter().flatten() {
        if let Ok(m) = std::fs::metadata(p) {
            (m.len(), m.modified().ok()).hash(&mut h);
        }
    }
    h.finish()
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
        let g = group(dir.path()).unwrap();
        assert_eq!(g.pairs.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(g.pairs["a"].key.as_deref(), Some(dir.path().join("a.key").as_path()));
        assert_eq!(g.pairs["b"].key, None);
        assert_eq!(g.pairs["c"].cert, dir.path().join("c.pem"));
        let names: Vec<_> = g.problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["e"]);
        assert_eq!(g.orphans.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["d"]);
    }
}
