//! The routes file (`config/routes.toml`): parsing with line numbers, and watching it for changes.
//!
//! ```toml
//! [services.acme]
//! backends = ["127.0.0.1:8081", "http://127.0.0.1:8082"]
//!
//! [routes]
//! "acme.example.com" = "acme"
//! "*.acme.example.com" = "acme"
//! "acme.example.com/api/" = { service = "acme", strip_prefix = true }
//! ```
//!
//! A file that does not parse or validate is rejected whole: the previous table stays in force (or, at start,
//! reveille refuses to start). Every problem is reported with its line. Waiting for the file to change (events,
//! polling) is `crate::fswatch`'s; this module decides which events concern the file and when it really changed.
//! Reading it is `crate::fsread`'s: a regular file (a symlink to one is followed) of at most `max_file_size`
//! bytes; a FIFO, a device (a symlink to `/dev/zero`), a directory or a larger file is refused like an invalid
//! file.
//!
//! # A changed file is applied once it holds still
//!
//! A file written in place (truncated, then written in pieces) can be read between two pieces; cut at a line
//! boundary inside `[routes]`, it is valid TOML that drops every host after the cut. So a change is applied
//! only once two reads, `routes_settle` apart, agree: the same size, modification time and inode, and the same
//! content. A writer that pauses longer than the settle can still be read half-way, which is why operators
//! should write a new file and rename it over the old one (atomic); in-place writes are applied once the file
//! has been stable for the settle.
//!
//! # An emptied file is refused
//!
//! A truncating write (`cat new > routes.toml`, many config managers) read halfway looks like a file without
//! routes, and applying it would take every tenant down. So while reveille runs:
//!
//! - a version that defines **no routes** is refused while the file in force defines some, and a version that
//!   defines **nothing at all** (no routes, no services) is refused while the file in force defines anything (a
//!   services-only file, whose services etcd's routes use);
//! - a file that is **missing** (deleted, or renamed away and not back yet) is refused the same way; when it
//!   reappears it is read again.
//!
//! Refused means logged at `error`, counted (`reveille_route_reloads_total{source="file"}` with `result`
//! `empty` or `missing`) and the last table kept. The operator who really means it says so in the file itself,
//! with the top-level key `allow_empty = true`: the intent travels with the content, and a truncated file cannot
//! carry it (a top-level key must come before the first table, so it is also the first thing a prefix loses).
//! At startup there is no table to protect: a file without routes is accepted, with a warning. The rule is about
//! the file's own contribution: routes from etcd neither excuse an empty file nor are touched by one.

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
use crate::routes::{
    check_field, DockerHostNames, RouteError, RouteKey, RouteSet, RouteSpec, RouteTable, ServiceSpec, ROUTE_FIELDS,
};

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
    Invalid {
        path: PathBuf,
        errors: Vec<Located>,
        /// What `reveille check` shows besides the errors (see [`Loaded::warning`]); not part of the message.
        warnings: Vec<&'static str>,
    },
    #[error(
        "routes file {path} defines no routes ({bytes} bytes, {services} services) but the file in force defines \
         {previous}: refused as a likely truncated or half-written file (to really remove every route, write \
         `allow_empty = true` at the top of the file)"
    )]
    Empty { path: PathBuf, bytes: usize, services: usize, previous: Counts },
    #[error(
        "routes file {path} is missing; the file in force defined {previous} (to really remove every route, \
         write a file with `allow_empty = true` instead of deleting it)"
    )]
    Missing { path: PathBuf, previous: Counts },
}

impl FileError {
    /// The `result` label of `reveille_route_reloads_total` for a version refused for this reason.
    fn result(&self) -> &'static str {
        match self {
            FileError::Empty { .. } => "empty",
            FileError::Missing { .. } => "missing",
            FileError::Read { .. } | FileError::Parse { .. } | FileError::Invalid { .. } => "failed",
        }
    }
}

/// How much a version of the file defines: what the emptiness rule compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub routes: usize,
    pub services: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} routes and {} services", self.routes, self.services)
    }
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

/// The file as TOML reads it, before each service and route is checked on its own (so that every wrong one is
/// reported in one pass, not the first type error alone), each field with its place in the text.
#[derive(Deserialize)]
struct RoutesFile {
    /// The operator really means a file without routes (see the module docs).
    #[serde(default)]
    allow_empty: bool,
    #[serde(default)]
    services: BTreeMap<String, Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    #[serde(default)]
    routes: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// The top-level keys of a routes file.
const TOP_LEVEL_KEYS: &[&str] = &["allow_empty", "services", "routes"];

/// A valid version of the routes file.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub set: RouteSet,
    /// `allow_empty = true`: a version without routes is applied even over one with routes.
    pub allow_empty: bool,
    /// Keys this version does not know (a typo such as `contaner =`), with the nearest known one: ignored when
    /// serving (and logged at error, see [`Loaded::log_unknown_keys`]), refused by `reveille check`.
    pub unknown_keys: Vec<Located>,
}

impl Loaded {
    pub(crate) fn counts(&self) -> Counts {
        Counts { routes: self.set.routes.len(), services: self.set.services.len() }
    }

    /// Whether this version must be refused in place of a file in force that defines `previous` (see the module
    /// docs): no routes where there were some, or nothing at all where there was something.
    fn empties(&self, previous: Counts) -> bool {
        let now = self.counts();
        !self.allow_empty && now.routes == 0 && (previous.routes > 0 || (now.services == 0 && previous.services > 0))
    }

    /// What an operator should hear about this version's emptiness, if anything (see [`emptiness_warning`]).
    pub(crate) fn warning(&self) -> Option<&'static str> {
        emptiness_warning(self.set.routes.is_empty(), self.allow_empty)
    }

    /// Logs each unknown key at error: the rest of the file is applied, but a misspelt key is a setting the
    /// operator believes in force (`contaner = "x"` turns passivation off), so it must stand out.
    fn log_unknown_keys(&self, path: &Path) {
        for unknown in &self.unknown_keys {
            error!(path = %path.display(), line = unknown.line, "routes file: {}; ignored", unknown.error);
        }
    }
}

/// What an operator should hear about a version's emptiness: a file without routes that does not say
/// `allow_empty = true`, or one that says it while defining routes (so a half-written version of it would be
/// applied).
fn emptiness_warning(no_routes: bool, allow_empty: bool) -> Option<&'static str> {
    match (no_routes, allow_empty) {
        (true, false) => Some(
            "the routes file defines no routes, so it serves no host; once routes are in force, a version \
             without routes is refused (the last table kept) unless the file says `allow_empty = true`",
        ),
        (false, true) => Some(
            "the routes file says `allow_empty = true` but defines routes: remove the key once the table is \
             emptied, or a truncated version of this file would be applied",
        ),
        _ => None,
    }
}

/// Line numbers of byte offsets in a text.
struct Lines {
    /// The offset where each line starts, once: a line number is then a binary search, so a file of a million
    /// routes parses in linear time.
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let newlines = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1);
        Self { starts: std::iter::once(0).chain(newlines).collect() }
    }

    /// The 1-based line of `offset`.
    fn of(&self, offset: usize) -> usize {
        self.starts.partition_point(|s| *s <= offset)
    }
}

/// The line where top-level key `key` is written (`key = …`, `[key]`, `[key.x]`), or 0. Only for the rare
/// unknown key: serde's `flatten` keeps no place for it.
fn top_level_line(text: &str, key: &str) -> usize {
    let starts_key = |t: &str| {
        let t = t.trim_start();
        let rest = t.strip_prefix(key).or_else(|| t.strip_prefix(&format!("\"{key}\"")));
        rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '=', '.', ']']))
    };
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            starts_key(l) || l.strip_prefix('[').is_some_and(|r| !r.starts_with('[') && starts_key(r))
        })
        .map_or(0, |i| i + 1)
}

/// The line of backend `index` in a `backends` array written at `span` of `text`: the array is read again on
/// its own, with its elements' places.
fn backend_line(text: &str, span: std::ops::Range<usize>, index: usize, lines: &Lines) -> Option<usize> {
    #[derive(Deserialize)]
    struct Array {
        v: Vec<Spanned<toml::Value>>,
    }
    const PREFIX: &str = "v = ";
    let array: Array = toml::from_str(&format!("{PREFIX}{}", text.get(span.clone())?)).ok()?;
    let element = array.v.get(index)?;
    Some(lines.of(span.start + element.span().start - PREFIX.len()))
}

/// Where a service's `tls` files are read from, and how much of each.
struct TlsFiles<'a> {
    /// The routes file's directory: relative paths start there.
    dir: &'a Path,
    max_size: u64,
}

/// Reads service `name` field by field, then as a whole (with the files its `tls` block names). Every wrong
/// field is an error at its line; unknown fields go to `unknown` (the service still loads without them).
#[allow(clippy::too_many_arguments)]
fn read_service(
    name: &str,
    entry: &Spanned<BTreeMap<String, Spanned<toml::Value>>>,
    hosts: &DockerHostNames,
    files: &TlsFiles<'_>,
    text: &str,
    lines: &Lines,
    errors: &mut Vec<Located>,
    unknown: &mut Vec<Located>,
) -> Option<crate::routes::Service> {
    let mut table = toml::Table::new();
    let mut bad = false;
    for (field, value) in entry.get_ref() {
        let line = lines.of(value.span().start);
        let read = || {
            let alone = toml::Table::from_iter([(field.clone(), value.get_ref().clone())]);
            toml::Value::Table(alone).try_into::<ServiceSpec>().map(|_| ()).map_err(|e| e.to_string())
        };
        match check_field(name, field, value.get_ref().as_str(), read) {
            Ok(()) => {
                table.insert(field.clone(), value.get_ref().clone());
            }
            Err(error @ RouteError::UnknownField { .. }) => unknown.push(Located { line, error }),
            Err(error) => {
                bad = true;
                errors.push(Located { line, error });
            }
        }
    }
    if bad {
        return None;
    }
    let line = lines.of(entry.span().start);
    let mut spec: ServiceSpec = match toml::Value::Table(table).try_into() {
        Ok(spec) => spec,
        Err(e) => {
            // Each field read on its own; together they still read (no field depends on another's type).
            let error = RouteError::BadField { service: name.to_string(), reason: e.to_string() };
            errors.push(Located { line, error });
            return None;
        }
    };
    if let Some(tls) = &mut spec.tls {
        if let Err(error) = tls.read_files(name, files.dir, files.max_size) {
            let line = entry.get_ref().get("tls").map_or(line, |t| lines.of(t.span().start));
            errors.push(Located { line, error });
            return None;
        }
    }
    match spec.to_service(name, hosts) {
        Ok(service) => Some(service),
        Err((backend, error)) => {
            let backends = entry.get_ref().get("backends");
            let line = backend
                .zip(backends)
                .and_then(|(i, b)| backend_line(text, b.span(), i, lines))
                .or_else(|| backends.filter(|_| backend.is_some()).map(|b| lines.of(b.span().start)))
                .unwrap_or(line);
            errors.push(Located { line, error });
            None
        }
    }
}

/// Reads a route's value: the service's name (`"acme"`) or a table (`{ service = "acme", strip_prefix = true }`).
/// A wrong value is an error at `line`; an unknown field of the table goes to `unknown` (the route still loads).
fn route_value(
    host: &str,
    value: &toml::Value,
    line: usize,
    errors: &mut Vec<Located>,
    unknown: &mut Vec<Located>,
) -> Option<(String, bool)> {
    let bad = |reason: String| Located { line, error: RouteError::BadRoute { host: host.to_string(), reason } };
    match value {
        toml::Value::String(service) => Some((service.clone(), false)),
        toml::Value::Table(_) => match value.clone().try_into::<RouteSpec>() {
            Ok(spec) => {
                for field in spec.unknown.keys() {
                    let hint = crate::suggest::did_you_mean(field, ROUTE_FIELDS.iter().copied());
                    let error = RouteError::UnknownKey { place: "field of a route", key: field.clone(), hint };
                    unknown.push(Located { line, error });
                }
                Some((spec.service, spec.strip_prefix))
            }
            Err(e) => {
                let message = e.to_string();
                let message = message.lines().next().unwrap_or_default().to_string();
                errors
                    .push(bad(format!("{message} (a route's table is {{ service = \"acme\", strip_prefix = true }})")));
                None
            }
        },
        _ => {
            let reason = format!(
                "the value is the service's name, a string (\"{host}\" = \"acme\"), or a table \
                 ({{ service = \"acme\", strip_prefix = true }})"
            );
            errors.push(bad(reason));
            None
        }
    }
}

/// Parses and validates routes-file text; a service's `docker_host` must be one of `hosts`. `path` is used in
/// messages, and its directory is where a service's `tls` files (`ca`, `client_cert`, `client_key`) are read
/// from when relative (each at most `max_size` bytes). Every service and route is checked on its own, so every
/// problem is reported at once.
pub(crate) fn parse(path: &Path, text: &str, hosts: &DockerHostNames, max_size: u64) -> Result<Loaded, FileError> {
    let file: RoutesFile =
        toml::from_str(text).map_err(|e| FileError::Parse { path: path.to_owned(), message: e.to_string() })?;
    let lines = Lines::new(text);
    let mut unknown_keys = Vec::new();
    for key in file.unknown.keys() {
        let hint = crate::suggest::did_you_mean(key, TOP_LEVEL_KEYS.iter().copied());
        let error = RouteError::UnknownKey { place: "top-level key", key: key.clone(), hint };
        unknown_keys.push(Located { line: top_level_line(text, key), error });
    }

    let mut errors = Vec::new();
    let mut builder = RouteTable::builder();
    let files =
        TlsFiles { dir: path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")), max_size };
    for (name, entry) in &file.services {
        match read_service(name, entry, hosts, &files, text, &lines, &mut errors, &mut unknown_keys) {
            Some(service) => {
                if let Err(error) = builder.insert_service(service) {
                    errors.push(Located { line: lines.of(entry.span().start), error });
                }
            }
            None => {
                builder.invalid_service(name);
            }
        }
    }
    // In the file's order, so that the second of two routes for one host is the duplicate.
    let mut routes: Vec<_> = file.routes.iter().collect();
    routes.sort_by_key(|(_, service)| service.span().start);
    // Each host's lines: a route's error is at the first, a duplicate's at the last.
    let mut route_lines: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (host, value) in routes {
        let line = lines.of(value.span().start);
        let Some((service, strip_prefix)) = route_value(host, value.get_ref(), line, &mut errors, &mut unknown_keys)
        else {
            continue;
        };
        match RouteKey::parse(host) {
            Ok(pattern) => {
                route_lines.entry(pattern.to_string()).or_default().push(line);
                builder.route_with(pattern, &service, strip_prefix);
            }
            Err(error) => errors.push(Located { line, error }),
        }
    }
    unknown_keys.sort_by_key(|e| e.line);
    let invalid = |mut errors: Vec<Located>, unknown_keys: Vec<Located>| {
        errors.extend(unknown_keys);
        errors.sort_by_key(|e| e.line);
        let warnings = emptiness_warning(file.routes.is_empty(), file.allow_empty).into_iter().collect();
        Err(FileError::Invalid { path: path.to_owned(), errors, warnings })
    };
    match builder.build() {
        Ok(set) if errors.is_empty() => Ok(Loaded { set, allow_empty: file.allow_empty, unknown_keys }),
        Ok(_) => invalid(errors, unknown_keys),
        Err(build_errors) => {
            for error in build_errors {
                let lines = |host: &str| route_lines.get(host).map(Vec::as_slice).unwrap_or_default();
                let line = match &error {
                    RouteError::UnknownService { host, .. }
                    | RouteError::InvalidService { host, .. }
                    | RouteError::BadRoute { host, .. } => lines(host).first().copied().unwrap_or(0),
                    RouteError::DuplicateRoute { host } => lines(host).last().copied().unwrap_or(0),
                    _ => 0,
                };
                errors.push(Located { line, error });
            }
            invalid(errors, unknown_keys)
        }
    }
}

/// Reads (a regular file of at most `max_size` bytes) and validates a routes file.
pub(crate) fn load(path: &Path, hosts: &DockerHostNames, max_size: u64) -> Result<Loaded, FileError> {
    let text = read(path, max_size)?;
    parse(path, &text, hosts, max_size)
}

fn read(path: &Path, max_size: u64) -> Result<String, FileError> {
    crate::fsread::read_to_string(path, max_size).map_err(|source| FileError::Read { path: path.to_owned(), source })
}

/// How the routes file is read while reveille runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// A change is applied once two reads this far apart agree (see the module docs).
    pub settle: Duration,
    /// A larger file is refused (`max_file_size`).
    pub max_size: u64,
}

/// Watches a routes file and installs each valid new version.
pub(crate) struct FileWatcher {
    path: PathBuf,
    composer: Arc<Composer>,
    metrics: Arc<Metrics>,
    watch: FsWatch,
    reading: Reading,
    /// The stamp of the version last acted on: a poll that sees another one reads the file again.
    stamp: Option<Stamp>,
    /// The fingerprint of the last content read (applied or refused), so an unchanged file is not re-applied.
    last_seen: Option<u64>,
    /// What the version in force defines, for the emptiness rule.
    applied: Counts,
    /// The version (stamp) and the error of the last read that failed (the file missing, not a regular file,
    /// too large): reported once per version, until it reads again.
    unreadable: Option<(Option<Stamp>, String)>,
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

/// One read of the file: its stamp just before, and what the read gave.
struct Snapshot {
    stamp: Option<Stamp>,
    /// The text with its fingerprint, or why it could not be read.
    read: std::io::Result<(u64, String)>,
}

impl Snapshot {
    fn take(path: &Path, max_size: u64) -> Self {
        let stamp = stamp(path);
        let read = crate::fsread::read_to_string(path, max_size).map(|text| (fingerprint(&text), text));
        Self { stamp, read }
    }

    /// Whether a later read `next` saw the same version: the same stamp, and the same content (or failure).
    fn agrees(&self, next: &Snapshot) -> bool {
        self.stamp == next.stamp
            && match (&self.read, &next.read) {
                (Ok((a, _)), Ok((b, _))) => a == b,
                (Err(a), Err(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
                _ => false,
            }
    }
}

/// A file that has not held still for this long is reported (at warn, once per change), then still waited for.
const RESTLESS: Duration = Duration::from_secs(5);

impl FileWatcher {
    /// Starts watching right away, before [`Self::load`] reads the file for the first table, so no change made
    /// after that read can be missed.
    pub(crate) fn new(path: PathBuf, composer: Arc<Composer>, metrics: Arc<Metrics>, reading: Reading) -> Self {
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
        let applied = Counts::default();
        Self { path, composer, metrics, watch, reading, stamp, last_seen: None, applied, unreadable: None }
    }

    /// Loads the file for the first table. Unreadable or invalid is an error (reveille does not start); a file
    /// without routes is accepted, with a warning: there is no previous table to protect yet.
    pub(crate) fn load(&mut self) -> Result<(), FileError> {
        let path = &self.path;
        let text = read(path, self.reading.max_size)?;
        let loaded = parse(path, &text, self.composer.docker_hosts(), self.reading.max_size)?;
        loaded.log_unknown_keys(path);
        if let Some(warning) = loaded.warning() {
            warn!(path = %path.display(), "{warning}");
        }
        let counts = loaded.counts();
        info!(path = %path.display(), routes = counts.routes, services = counts.services, "routes file loaded");
        self.install(loaded);
        self.last_seen = Some(fingerprint(&text));
        Ok(())
    }

    /// Runs until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("routes_file", path = %self.path.display());
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: CancellationToken) {
        loop {
            let (path, seen) = (&self.path, self.stamp);
            if !self.watch.next_change(&shutdown, || stamp(path) != seen).await {
                return;
            }
            self.reload(&shutdown).await;
        }
    }

    /// Reads the file until it holds still (see the module docs): two reads `settle` apart that agree. `None`
    /// at shutdown.
    async fn settled(&self, shutdown: &CancellationToken) -> Option<Snapshot> {
        let started = tokio::time::Instant::now();
        let mut restless_reported = false;
        let mut previous = self.snapshot().await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.reading.settle) => {}
            }
            let next = self.snapshot().await?;
            if previous.agrees(&next) {
                return Some(next);
            }
            if !restless_reported && started.elapsed() >= RESTLESS {
                warn!(
                    "the routes file has kept changing for {RESTLESS:?}; it is applied once it holds still for {:?} \
                     (write a new file and rename it over the old one to apply it at once)",
                    self.reading.settle
                );
                restless_reported = true;
            }
            debug!(settle = ?self.reading.settle, "routes file still changing; reading it again");
            previous = next;
        }
    }

    /// One read, off the threads that serve requests (a large file takes a while).
    async fn snapshot(&self) -> Option<Snapshot> {
        let (path, max_size) = (self.path.clone(), self.reading.max_size);
        match tokio::task::spawn_blocking(move || Snapshot::take(&path, max_size)).await {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "routes file read task failed");
                None
            }
        }
    }

    /// Hands a version to the composer and remembers what it defines.
    fn install(&mut self, loaded: Loaded) -> usize {
        self.applied = loaded.counts();
        let changed = self.composer.replace(Source::File, loaded.set);
        self.metrics.reload("file", "ok");
        changed
    }

    /// Logs and counts a version that is not applied; the table in force stays.
    fn refuse(&self, e: &FileError) {
        error!("{e}; the last route table stays in force");
        self.metrics.reload("file", e.result());
    }

    /// Reads the file once it holds still; if its content differs from the last version seen (applied or
    /// refused), validates and installs it or reports why not.
    async fn reload(&mut self, shutdown: &CancellationToken) {
        let Some(snapshot) = self.settled(shutdown).await else { return };
        self.stamp = snapshot.stamp;
        let (fp, text) = match snapshot.read {
            Ok(read) => read,
            Err(e) => return self.unreadable(snapshot.stamp, e),
        };
        if self.unreadable.take().is_some() {
            info!("routes file readable again");
        }
        if self.last_seen == Some(fp) {
            return;
        }
        self.last_seen = Some(fp);
        // Parsing a large file takes a while: keep it off the threads that serve requests.
        let (path, hosts, bytes) = (self.path.clone(), self.composer.docker_hosts().clone(), text.len());
        let max_size = self.reading.max_size;
        let parsed = match tokio::task::spawn_blocking(move || parse(&path, &text, &hosts, max_size)).await {
            Ok(parsed) => parsed,
            Err(e) => {
                error!(error = %e, "routes file reload task failed");
                return;
            }
        };
        let previous = self.applied;
        let checked = parsed.and_then(|loaded| {
            if loaded.empties(previous) {
                let (path, services) = (self.path.clone(), loaded.set.services.len());
                return Err(FileError::Empty { path, bytes, services, previous });
            }
            Ok(loaded)
        });
        match checked {
            Ok(loaded) => {
                loaded.log_unknown_keys(&self.path);
                if let Some(warning) = loaded.warning() {
                    warn!("{warning}");
                }
                let counts = loaded.counts();
                if counts.routes == 0 && previous.routes > 0 {
                    warn!(removed = previous.routes, "`allow_empty = true`: every route of the routes file is removed");
                }
                let changed = self.install(loaded);
                info!(routes = counts.routes, services = counts.services, changed, "routes file reloaded");
            }
            Err(e) => self.refuse(&e),
        }
    }

    /// A read that failed: the file missing (deleted, or renamed away and not back yet), unreadable, not a
    /// regular file or too large. Reported once per version of the path (`stamp`) until the file reads again;
    /// the table in force stays.
    fn unreadable(&mut self, stamp: Option<Stamp>, e: std::io::Error) {
        let seen = Some((stamp, e.to_string()));
        if self.unreadable == seen {
            return;
        }
        self.unreadable = seen;
        let path = self.path.clone();
        let e = match e.kind() {
            std::io::ErrorKind::NotFound => FileError::Missing { path, previous: self.applied },
            _ => FileError::Read { path, source: e },
        };
        self.refuse(&e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = crate::fsread::DEFAULT_MAX_SIZE;

    fn errs(text: &str) -> String {
        parse(Path::new("r.toml"), text, &DockerHostNames::Any, LIMIT).unwrap_err().to_string()
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
            &DockerHostNames::Any,
            LIMIT,
        )
        .unwrap();
        assert_eq!(t.set.routes.len(), 2);
        assert_eq!(t.set.to_table().find("a.example.com").unwrap().name(), "a");
        assert!(!t.allow_empty);
        assert!(t.warning().is_none());

        let t = parse(
            Path::new("r.toml"),
            "[services.w]\ncontainer = \"w-1\"\nport = 80\nstop_timeout = \"2s\"\n",
            &DockerHostNames::Any,
            LIMIT,
        )
        .unwrap();
        let w = t.set.services.values().next().unwrap().container().unwrap().clone();
        assert_eq!(w.stop_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn path_routes_and_their_tables() {
        let text = r#"[services.web]
backends = ["127.0.0.1:1"]
[services.api]
backends = ["127.0.0.1:2"]
[routes]
"shop.test" = "web"
"shop.test/api/" = { service = "api", strip_prefix = true }
"*.shop.test/docs" = { service = "web", colour = "x" }
"#;
        let t = parse(Path::new("r.toml"), text, &DockerHostNames::Any, LIMIT).unwrap();
        assert_eq!(t.counts(), Counts { routes: 3, services: 2 });
        let said: Vec<String> = t.unknown_keys.iter().map(|u| format!("{}: {}", u.line, u.error)).collect();
        assert_eq!(said, ["8: unknown field of a route `colour`"]);
        let table = t.set.to_table();
        let (found, strip) = table.lookup_request("shop.test", || "/api/x");
        assert!(matches!(found, crate::routes::Lookup::Found(s) if s.name() == "api") && strip == 4);

        let e = errs(
            "[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = { service = \"a\", strip_prefix = true }\n\
             \"a.test/x/../y\" = \"a\"\n\"a.test/q?x\" = \"a\"\n\"a.test/z\" = { strip_prefix = true }\n\"a.test/w\" = \"a\"\n\"a.test/w/\" = \"a\"\n",
        );
        let lines: Vec<&str> = e.lines().skip(1).map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "line 4: route \"a.test\": `strip_prefix` needs a path prefix in the key (as in shop.test/api/)",
                "line 5: route \"a.test/x/../y\": invalid path prefix: a '.' or '..' segment",
                "line 6: route \"a.test/q?x\": invalid path prefix: invalid character '?' (a prefix is a path, without query or fragment)",
                "line 7: route \"a.test/z\": missing field `service` (a route's table is { service = \"acme\", strip_prefix = true })",
                "line 9: route \"a.test/w/\" is defined twice (hostnames are case-insensitive, and a path prefix's trailing slash is optional)",
            ],
            "{e}"
        );
    }

    #[test]
    fn a_version_without_routes_is_refused_unless_allowed() {
        let load = |text: &str| parse(Path::new("r.toml"), text, &DockerHostNames::Any, LIMIT).unwrap();
        let counts = |routes, services| Counts { routes, services };
        let blank = load("");
        let services_only = load("[services.a]\nbackends = [\"127.0.0.1:1\"]\n");
        let allowed = load("allow_empty = true\n");
        let full = load("[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"a\"\n");

        assert!(blank.empties(counts(2, 1)), "truncated to nothing");
        assert!(services_only.empties(counts(2, 1)), "cut before its routes");
        assert!(blank.empties(counts(0, 1)), "nothing at all, over a services-only file");
        assert!(!services_only.empties(counts(0, 1)), "a services-only file stays editable");
        assert!(!blank.empties(counts(0, 0)), "nothing to protect");
        assert!(!full.empties(counts(5, 5)));
        assert!(!allowed.empties(counts(2, 1)), "the operator means it");

        assert!(blank.warning().unwrap().contains("allow_empty = true"));
        assert!(allowed.warning().is_none());
        let kept =
            load("allow_empty = true\n[services.a]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"a\"\n");
        assert!(kept.warning().unwrap().contains("remove the key"));
        assert!(errs("allow_empty = \"yes\"\n").contains("not valid TOML"));

        let e = FileError::Empty { path: "r.toml".into(), bytes: 0, services: 0, previous: counts(2, 1) };
        let e = e.to_string();
        assert!(e.contains("defines no routes (0 bytes") && e.contains("2 routes") && e.contains("allow_empty"), "{e}");
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

    #[test]
    fn every_error_of_a_file_in_one_pass() {
        let text = r#"[services.a]
port = "x"
container = "a"
idle_timeout = "5"

[services.b]
backends = [
  "127.0.0.1:1",
  "127.0.0.1:99999",
]

[services.c]
backends = ["127.0.0.1:3"]

[routes]
"a.test" = "a"
"A.test" = "a"
"b.test" = "b"
"c.test" = 3
"d.test" = "nowhere"
"#;
        let e = errs(text);
        let lines: Vec<&str> = e.lines().skip(1).map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "line 2: service \"a\": `port`: invalid type: string \"x\", expected u16",
                "line 4: service \"a\": `idle_timeout` \"5\" has no unit: write a duration with one, for example 5s or 5m",
                "line 9: invalid backend address \"127.0.0.1:99999\": port out of range (1-65535)",
                "line 16: route \"a.test\" points to service \"a\", which is invalid",
                "line 17: route \"a.test\" is defined twice (hostnames are case-insensitive)",
                "line 18: route \"b.test\" points to service \"b\", which is invalid",
                "line 19: route \"c.test\": the value is the service's name, a string (\"c.test\" = \"acme\"), or a table ({ service = \"acme\", strip_prefix = true })",
                "line 20: route \"d.test\" points to undefined service \"nowhere\"",
            ],
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_found_with_their_line_and_the_key_meant() {
        let text = "allow_emty = true\n[services.w]\ncontaner = \"x\"\nbackends = [\"127.0.0.1:1\"]\nidle_timout = \"5m\"\n[routes]\n\"w.test\" = \"w\"\n";
        let loaded = parse(Path::new("r.toml"), text, &DockerHostNames::Any, LIMIT).unwrap();
        assert_eq!(loaded.counts(), Counts { routes: 1, services: 1 }, "the rest loads");
        let said: Vec<String> = loaded.unknown_keys.iter().map(|u| format!("{}: {}", u.line, u.error)).collect();
        assert_eq!(
            said,
            [
                "1: unknown top-level key `allow_emty` (did you mean `allow_empty`?)",
                "3: service \"w\": unknown field `contaner` (did you mean `container`?)",
                "5: service \"w\": unknown field `idle_timout` (did you mean `idle_timeout`?)",
            ]
        );
        // With errors besides, the unknown keys are listed with them, and the warnings kept apart.
        let Err(FileError::Invalid { errors, warnings, .. }) = parse(
            Path::new("r.toml"),
            "[services.w]\ncontaner = \"x\"\nbackends = [\"nope\"]\n",
            &DockerHostNames::Any,
            LIMIT,
        ) else {
            panic!("invalid")
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(matches!(errors[0].error, RouteError::UnknownField { .. }) && errors[0].line == 2, "{errors:?}");
        assert_eq!(warnings.len(), 1, "no routes: {warnings:?}");
    }
}
