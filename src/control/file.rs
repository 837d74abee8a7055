//! The routes file (`config/routes.toml`): parsing with line numbers, and watching it for changes.
//!
//! ```toml
//! [services.acme]
//! backends = ["127.0.0.1:8081", "http://127.0.0.1:8082"]
//!
//! [routes]
//! "acme.example.com" = "acme"
//! "*.acme.example.com" = "acme"
//! ```
//!
//! A file that does not parse or validate is rejected whole: the previous table stays in force (or, at start,
//! reveille refuses to start). Every problem is reported with its line. Waiting for the file to change (events,
//! polling) is `crate::fswatch`'s; this module decides which events concern the file and when it really changed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use tracing::{debug, error, info, warn, Instrument};

use super::compose::{Composer, Source};
use crate::fswatch::FsWatch;
use crate::metrics::Metrics;
use crate::routes::{HostPattern, RouteError, RouteSet, RouteTable, ServiceSpec};

/// How often the file's metadata is checked even without a file-system event: a safety net for file systems
/// and editors that notify poorly. Events normally apply a change in a few milliseconds.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Events come in bursts (truncate, write, close, rename); wait this long for the burst to end.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// A problem in a routes file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read routes file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("routes file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("routes file {path} is invalid:\n{}", format_located(.errors))]
    Invalid { path: PathBuf, errors: Vec<Located> },
}

/// A route error with the line it comes from (1-based; 0 when unknown).
#[derive(Debug, Clone)]
pub struct Located {
    pub line: usize,
    pub error: RouteError,
}

fn format_located(errors: &[Located]) -> String {
    errors
        .iter()
        .map(|e| if e.line > 0 { format!("  line {}: {}", e.line, e.error) } else { format!("  {}", e.error) })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Deserialize)]
struct RoutesFile {
    #[serde(default)]
    services: BTreeMap<String, Spanned<ServiceSpec<Spanned<String>>>>,
    #[serde(default)]
    routes: BTreeMap<String, Spanned<String>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// Parses and validates routes-file text. `path` is only used in messages.
pub(crate) fn parse(path: &Path, text: &str) -> Result<RouteSet, FileError> {
    let file: RoutesFile =
        toml::from_str(text).map_err(|e| FileError::Parse { path: path.to_owned(), message: e.to_string() })?;
    // Line starts, once: a line number is then a binary search, so a file of a million routes parses in
    // linear time.
    let starts: Vec<usize> =
        std::iter::once(0).chain(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1)).collect();
    let line_of = |offset: usize| starts.partition_point(|s| *s <= offset);
    for key in file.unknown.keys() {
        warn!(path = %path.display(), key, "unknown top-level key in routes file ignored");
    }

    let mut errors = Vec::new();
    let mut builder = RouteTable::builder();
    for (name, entry) in &file.services {
        let line = line_of(entry.span().start);
        let spec = entry.get_ref();
        for key in spec.unknown.keys() {
            warn!(path = %path.display(), line, service = %name, key, "unknown service field ignored");
        }
        let added =
            spec.to_service(name).and_then(|svc| builder.insert_service(svc).map(|_| ()).map_err(|e| (None, e)));
        if let Err((backend, error)) = added {
            let line = backend.map_or(line, |i| line_of(spec.backends[i].span().start));
            errors.push(Located { line, error });
        }
    }
    let mut route_lines = BTreeMap::new();
    for (host, service) in &file.routes {
        let line = line_of(service.span().start);
        match HostPattern::parse(host) {
            Ok(pattern) => {
                route_lines.insert(pattern.to_string(), line);
                builder.route(pattern, service.get_ref());
            }
            Err(error) => errors.push(Located { line, error }),
        }
    }
    match builder.build() {
        Ok(table) if errors.is_empty() => Ok(table),
        Ok(_) => Err(FileError::Invalid { path: path.to_owned(), errors }),
        Err(build_errors) => {
            for error in build_errors {
                let line = match &error {
                    RouteError::UnknownService { host, .. } | RouteError::DuplicateRoute { host } => {
                        route_lines.get(host).copied().unwrap_or(0)
                    }
                    _ => 0,
                };
                errors.push(Located { line, error });
            }
            errors.sort_by_key(|e| e.line);
            Err(FileError::Invalid { path: path.to_owned(), errors })
        }
    }
}

/// Reads and validates a routes file.
pub(crate) fn load(path: &Path) -> Result<RouteSet, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Watches a routes file and installs each valid new version.
pub(crate) struct FileWatcher {
    path: PathBuf,
    composer: Arc<Composer>,
    metrics: Arc<Metrics>,
    watch: FsWatch,
    stamp: Option<Stamp>,
}

/// What identifies a version of the file cheaply, before reading it.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

fn fingerprint(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl FileWatcher {
    /// Starts watching right away, before the caller reads the file for its first table, so no change made
    /// after that read can be missed.
    pub(crate) fn new(path: PathBuf, composer: Arc<Composer>, metrics: Arc<Metrics>) -> Self {
        // Watch the directory, not the file: editors and config managers replace files by rename, and
        // Kubernetes swaps a symlink, which a watch on the file itself would miss.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        // Only events about our file, or about Kubernetes' `..data` symlink swap: other files in a busy
        // directory must not cause a re-read each time they change.
        let relevant = move |ev: &notify::Event| {
            ev.paths.is_empty()
                || ev
                    .paths
                    .iter()
                    .filter_map(|p| p.file_name())
                    .any(|n| n == name || n.to_string_lossy().starts_with(".."))
        };
        let watch = FsWatch::new(&dir, relevant, POLL_INTERVAL, DEBOUNCE).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "cannot watch the routes file's directory; polling every {POLL_INTERVAL:?} instead");
            FsWatch::polling(POLL_INTERVAL, DEBOUNCE)
        });
        let stamp = stamp(&path);
        Self { path, composer, metrics, watch, stamp }
    }

    /// Runs until `shutdown`. `applied_text` is the content already in force (loaded at start), so the first
    /// event for an unchanged file is not reported as a reload.
    pub(crate) async fn run(self, applied_text: Option<String>, shutdown: CancellationToken) {
        let span = tracing::info_span!("routes_file", path = %self.path.display());
        self.run_inner(applied_text, shutdown).instrument(span).await
    }

    async fn run_inner(mut self, applied_text: Option<String>, shutdown: CancellationToken) {
        let mut last_seen = applied_text.as_deref().map(fingerprint);
        loop {
            let (path, seen) = (&self.path, self.stamp);
            if !self.watch.next_change(&shutdown, || stamp(path) != seen).await {
                return;
            }
            self.stamp = stamp(&self.path);
            self.reload(&mut last_seen).await;
        }
    }

    /// Reads the file; if its content differs from the last version seen (applied or rejected), validates and
    /// installs it or reports why not.
    async fn reload(&self, last_seen: &mut Option<u64>) {
        // Reading and parsing a large file takes a while: keep it off the threads that serve requests.
        let path = self.path.clone();
        let seen = *last_seen;
        let work = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path)?;
            let fp = fingerprint(&text);
            if seen == Some(fp) {
                return Ok((fp, None));
            }
            Ok::<_, std::io::Error>((fp, Some(parse(&path, &text))))
        });
        let (fp, parsed) = match work.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // A rename-in-progress can make the file briefly absent; the next event or poll retries.
                debug!(error = %e, "routes file not readable right now");
                return;
            }
            Err(e) => {
                error!(error = %e, "routes file reload task failed");
                return;
            }
        };
        *last_seen = Some(fp);
        let Some(parsed) = parsed else { return };
        match parsed {
            Ok(set) => {
                let (routes, services) = (set.routes.len(), set.services.len());
                let changed = self.composer.replace(Source::File, set);
                info!(routes, services, changed, "routes file reloaded");
                self.metrics.reload("file", true);
            }
            Err(e) => {
                error!("{e}; keeping the previous route table");
                self.metrics.reload("file", false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> String {
        parse(Path::new("r.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn valid_file() {
        let t = parse(
            Path::new("r.toml"),
            r#"
[services.a]
backends = ["127.0.0.1:1", "http://127.0.0.1:2"]
[routes]
"A.example.com" = "a"
"*.example.com" = "a"
"#,
        )
        .unwrap();
        assert_eq!(t.routes.len(), 2);
        assert_eq!(t.to_table().find("a.example.com").unwrap().name(), "a");
    }

    #[test]
    fn errors_carry_lines() {
        let e = errs("[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"x.com\" = \"a\"\n\"y.com\" = \"b\"\n");
        assert!(e.contains("line 5") && e.contains("undefined service \"b\""), "{e}");
        let e = errs("[services.a]\nbackends = [\"nope\"]\n");
        assert!(e.contains("line 2") && e.contains("missing port"), "{e}");
        let e = errs("[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a b\" = \"a\"\n");
        assert!(e.contains("line 4") && e.contains("invalid hostname"), "{e}");
        let e = errs("[services.a\n");
        assert!(e.contains("line 1") && e.contains("not valid TOML"), "{e}");
        let e = errs("[services.a]\nbackends = \"127.0.0.1:1\"\n");
        assert!(e.contains("line 2"), "{e}");
        let e = errs("[services.a]\nbackends = []\n");
        assert!(e.contains("no backends"), "{e}");
    }
}
