//! The access log: one line per request, cheap on the request path, and never lost without being counted.
//!
//! Owns the line's format (`format`), the buffers lines wait in, and the thread that writes them (`writer`) to
//! their destination: stdout, or a file (appended to, reopened on SIGHUP or when it has been moved away).
//! It knows nothing of requests: the proxy's single exit hands it an [`Entry`]. Metric names are `metrics`'.
//!
//! On the request path a line costs a clock read, an uncontended lock of the calling thread's buffer and the
//! formatting (no `tracing`, no allocation once the buffer has grown). Each thread has a buffer of its own
//! (threads are spread over one buffer per core); the writer thread takes the filled buffers whole, every
//! [`FLUSH_INTERVAL`] or as soon as one holds [`WAKE_AT`] bytes, and writes each with one `write`. When the
//! writer cannot keep up (a stalled log collector, a full disk) and a buffer reaches its limit
//! ([`Settings::buffer`]), further lines from that thread are dropped — never blocking a request — and each
//! one is counted in `reveille_access_log_dropped_total{reason="overflow"}`; lines the destination refused are
//! counted with `reason="write_error"`. A warning says so, at most every 10 s.
//!
//! `--access-log false` turns the log off, and so does a `tracing` filter that leaves out `reveille::access`
//! at `info` (e.g. `--log-level warn` or `info,reveille::access=off`), as when lines were `tracing` events:
//! the filter in force when logging was set up ([`filter_allows`]) decides once, at start.

mod format;
mod writer;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tracing::warn;

pub use format::{Entry, Format, Formatter};

use crate::metrics::{LabelValue, LabeledCounters, Metrics};
use writer::Sink;

/// How often the writer takes what the buffers hold, at the latest, while lines keep coming.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A buffer holding this much wakes the writer at once, so that it writes in chunks of about this size.
pub(crate) const WAKE_AT: usize = 32 * 1024;

/// Where and how the access log is written.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: Format,
    /// Appended to (created if missing); `None`: stdout.
    pub file: Option<PathBuf>,
    /// Bytes of lines that may wait for the writer, per buffer (there is one per core): past it, lines are
    /// dropped and counted. The writer holds as much again while it writes.
    pub buffer: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { format: Format::Text, file: None, buffer: 4 * 1024 * 1024 }
    }
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot start the access-log writer thread: {0}")]
    Thread(std::io::Error),
}

/// Why a line was not written, as `reveille_access_log_dropped_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The writer was behind and the thread's buffer was full.
    Overflow,
    /// The destination refused the write (an error, a closed pipe, a full disk).
    WriteError,
    /// The log had been closed (a request that ended after shutdown).
    Closed,
}

impl LabelValue for DropReason {
    const ALL: &'static [Self] = &[Self::Overflow, Self::WriteError, Self::Closed];

    fn as_label(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::WriteError => "write_error",
            Self::Closed => "closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether the `tracing` filter set up with logging lets `reveille::access` through at `info`; unknown (so
/// yes) until [`filter_allows`] has been told.
static FILTERED_OUT: AtomicBool = AtomicBool::new(false);

/// Records what the `tracing` filter just installed says of `reveille::access` lines; called by `telemetry`.
pub(crate) fn filter_allows(allowed: bool) {
    FILTERED_OUT.store(!allowed, Ordering::Relaxed);
}

/// The access log's handle: cheap to clone, and off (every call a no-op) by default.
#[derive(Clone, Default)]
pub struct AccessLog(Option<Arc<Handle>>);

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AccessLog(on)" } else { "AccessLog(off)" })
    }
}

/// The running log: its buffers, and its writer thread until closed. Dropping the last handle lets the
/// writer write what is left and end.
struct Handle {
    shared: Arc<Shared>,
    /// The writer thread, and a receiver that disconnects when it ends; taken by [`AccessLog::close`].
    writer: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl AccessLog {
    /// The access log when `on` (`--access-log`) and the `tracing` filter lets it through, else a log that is
    /// off. Opens the file (or takes stdout) and starts the writer thread; with a file, SIGHUP reopens it
    /// (when called within a tokio runtime).
    pub fn open(on: bool, settings: &Settings, metrics: &Metrics) -> Result<Self, AccessLogError> {
        if !on || FILTERED_OUT.load(Ordering::Relaxed) {
            return Ok(Self::default());
        }
        let sink = match &settings.file {
            Some(path) => {
                Sink::open_file(path).map_err(|source| AccessLogError::Open { path: path.clone(), source })?
            }
            None => Sink::Stdout,
        };
        let log = Self::start(settings, sink, metrics)?;
        if settings.file.is_some() {
            log.reopen_on_sighup();
        }
        Ok(log)
    }

    /// An access log that writes to `out` instead (benchmarks and tests).
    pub fn with_writer(
        settings: &Settings,
        out: Box<dyn Write + Send>,
        metrics: &Metrics,
    ) -> Result<Self, AccessLogError> {
        Self::start(settings, Sink::Other(out), metrics)
    }

    fn start(settings: &Settings, sink: Sink, metrics: &Metrics) -> Result<Self, AccessLogError> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 64).next_power_of_two();
        let shared = Arc::new(Shared {
            shards: (0..n).map(|_| Shard::new(settings.format)).collect(),
            limit: settings.buffer.max(1),
            wake_at: WAKE_AT.min(settings.buffer / 2).max(1),
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            writer: OnceLock::new(),
            in_flight: AtomicU64::new(0),
            lines: metrics.access_log_lines(),
            dropped: metrics.access_log_dropped(),
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let for_writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("reveille-access-log".into())
            .spawn(move || writer::run(&for_writer, sink, done_tx))
            .map_err(AccessLogError::Thread)?;
        let _ = shared.writer.set(thread.thread().clone());
        Ok(Self(Some(Arc::new(Handle { shared, writer: Mutex::new(Some((thread, done_rx))) }))))
    }

    /// Whether lines are written at all: when not, callers need not gather what a line says.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Writes one line (into the calling thread's buffer; the writer thread writes it out shortly). Never
    /// blocks on the destination: when the buffer is full, the line is dropped and counted.
    #[inline]
    pub fn log(&self, entry: &Entry<'_>) {
        if let Some(h) = &self.0 {
            h.shared.log(entry);
        }
    }

    /// Has the file reopened (after a rotation) before the next write. A no-op for stdout.
    pub fn reopen(&self) {
        if let Some(h) = &self.0 {
            h.shared.reopen.store(true, Ordering::Release);
            h.shared.wake();
        }
    }

    /// Writes every line logged so far and stops the writer, waiting at most `timeout` for it (a destination
    /// that does not take writes cannot hold up the exit). Lines logged afterwards are counted as dropped.
    /// Returns false if the writer did not finish in time.
    pub fn close(&self, timeout: Duration) -> bool {
        let Some(h) = &self.0 else { return true };
        h.shared.stop();
        let Some((thread, done)) = h.writer.lock().take() else { return true };
        match done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                warn!(
                    lines = h.shared.pending(),
                    "the access log's destination did not take its last lines within {}; they are lost",
                    humantime::format_duration(timeout)
                );
                false
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                true
            }
        }
    }

    /// SIGHUP reopens the file. A task of the current tokio runtime, if any; it ends with the log.
    fn reopen_on_sighup(&self) {
        #[cfg(unix)]
        if let (Ok(rt), Some(h)) = (tokio::runtime::Handle::try_current(), &self.0) {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            let shared = Arc::downgrade(&h.shared);
            rt.spawn(async move {
                while hup.recv().await.is_some() {
                    let Some(shared) = shared.upgrade() else { return };
                    shared.reopen.store(true, Ordering::Release);
                    shared.wake();
                }
            });
        }
    }
}

/// What the request path and the writer share.
struct Shared {
    /// One buffer per core (a power of two); a thread uses `shards[slot & (len - 1)]`.
    shards: Box<[Shard]>,
    /// [`Settings::buffer`].
    limit: usize,
    /// A buffer reaching this size wakes the writer.
    wake_at: usize,
    /// Set to close: the writer takes what is left, marks the buffers closed and ends.
    stop: AtomicBool,
    /// The writer found nothing to write and sleeps until woken: the first line into an empty buffer wakes it.
    idle: AtomicBool,
    /// SIGHUP (or [`AccessLog::reopen`]) asked for the file to be reopened.
    reopen: AtomicBool,
    /// The writer thread, to wake it.
    writer: OnceLock<Thread>,
    /// Lines of the batch being written, for the warning when the writer does not finish in time.
    in_flight: AtomicU64,
    /// `reveille_access_log_lines_total`.
    lines: Counter,
    /// `reveille_access_log_dropped_total`, by reason.
    dropped: LabeledCounters<DropReason>,
}

/// One buffer, on a cache line of its own.
#[repr(align(128))]
struct Shard(Mutex<Pending>);

impl Shard {
    fn new(format: Format) -> Self {
        Self(Mutex::new(Pending { buf: Vec::new(), lines: 0, formatter: Formatter::new(format), closed: false }))
    }
}

/// Lines waiting for the writer.
struct Pending {
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// Keeps the date of the second last written, formatted.
    formatter: Formatter,
    /// The log is closed: lines are counted as dropped.
    closed: bool,
}

impl Shared {
    fn log(&self, entry: &Entry<'_>) {
        let now = SystemTime::now();
        let shard = &self.shards[thread_slot() & (self.shards.len() - 1)];
        let mut pending = shard.0.lock();
        let before = pending.buf.len();
        if before >= self.limit || pending.closed {
            let reason = if pending.closed { DropReason::Closed } else { DropReason::Overflow };
            drop(pending);
            self.dropped.inc(reason);
            return;
        }
        let Pending { buf, lines, formatter, .. } = &mut *pending;
        formatter.line(buf, now, entry);
        *lines += 1;
        let after = buf.len();
        drop(pending);
        if (before == 0 && self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst))
            || (before < self.wake_at && after >= self.wake_at)
        {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    /// Lines not written yet: in the buffers, and in the batch being written.
    fn pending(&self) -> u64 {
        self.shards.iter().map(|s| s.0.lock().lines).sum::<u64>() + self.in_flight.load(Ordering::Relaxed)
    }
}

/// A small number for this thread, fixed for its life: threads take buffers in turn.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    fn entry(path: &str) -> Entry<'_> {
        Entry {
            peer: "127.0.0.1",
            host: "app.test",
            method: "GET",
            path,
            status: 200,
            duration: Duration::from_micros(250),
            service: "app",
            backend: "127.0.0.1:9",
        }
    }

    /// What the log wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Output(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Output {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(String::from).collect()
        }

        /// Waits until `n` lines were written.
        fn wait_for(&self, n: usize) -> Vec<String> {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let lines = self.lines();
                if lines.len() >= n {
                    return lines;
                }
                assert!(Instant::now() < deadline, "{} lines written, not {n}", lines.len());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A destination that blocks its first write until the test opens the gate, as a stalled log collector
    /// would; says when that write began.
    struct Stuck {
        out: Output,
        entered: Option<mpsc::Sender<()>>,
        gate: mpsc::Receiver<()>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                entered.send(()).unwrap();
                self.gate.recv().unwrap();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn counts(metrics: &Metrics) -> (u64, [u64; 3]) {
        let dropped = metrics.access_log_dropped::<DropReason>();
        let [a, b, c] = [DropReason::Overflow, DropReason::WriteError, DropReason::Closed].map(|r| dropped.get(r));
        (metrics.access_log_lines().get(), [a, b, c])
    }

    #[test]
    fn lines_arrive_in_order_and_are_counted() {
        let metrics = Metrics::new();
        let out = Output::default();
        let log = AccessLog::with_writer(&Settings::default(), Box::new(out.clone()), &metrics).unwrap();
        for i in 0..500 {
            log.log(&entry(&format!("/{i}")));
        }
        assert!(log.close(Duration::from_secs(5)));
        let lines = out.lines();
        assert_eq!(lines.len(), 500);
        for (i, line) in lines.iter().enumerate() {
            assert!(line.contains(&format!(" path=/{i} status=200 ")), "{line}");
        }
        assert_eq!(counts(&metrics), (500, [0, 0, 0]));
        let text = metrics.encode();
        assert!(text.contains("reveille_access_log_lines_total 500"), "{text}");
        assert!(text.contains("reveille_access_log_dropped_total{reason=\"overflow\"} 0"), "{text}");
    }

    #[test]
    fn a_line_after_a_quiet_spell_wakes_the_writer() {
        let metrics = Metrics::new();
        let out = Output::default();
        let log = AccessLog::with_writer(&Settings::default(), Box::new(out.clone()), &metrics).unwrap();
        log.log(&entry("/first"));
        out.wait_for(1);
        // Long enough for the writer to find the buffers empty twice and sleep until woken.
        std::thread::sleep(FLUSH_INTERVAL * 3);
        log.log(&entry("/second"));
        let lines = out.wait_for(2);
        assert!(lines[1].contains("path=/second"), "{lines:?}");
    }

    #[test]
    fn when_the_writer_is_stuck_lines_are_dropped_and_each_one_is_counted() {
        let metrics = Metrics::new();
        let out = Output::default();
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let stuck = Stuck { out: out.clone(), entered: Some(entered_tx), gate };
        let settings = Settings { buffer: 1024, ..Settings::default() };
        let log = AccessLog::with_writer(&settings, Box::new(stuck), &metrics).unwrap();

        log.log(&entry("/0"));
        entered.recv_timeout(Duration::from_secs(5)).expect("the writer took the first line");
        // The writer is stuck in its write: this thread's buffer fills up to 1 KiB, then lines are dropped.
        for i in 1..=1000 {
            log.log(&entry(&format!("/{i}")));
        }
        let (written, [overflow, write_error, closed]) = counts(&metrics);
        assert_eq!((written, write_error, closed), (0, 0, 0));
        assert!(overflow > 900, "{overflow} lines dropped");

        open.send(()).unwrap();
        assert!(log.close(Duration::from_secs(5)));
        let (written, [overflow_after, ..]) = counts(&metrics);
        assert_eq!(overflow_after, overflow, "only lines that found the buffer full are dropped");
        assert_eq!(written + overflow, 1001, "every line is written or counted");
        let lines = out.lines();
        assert_eq!(lines.len() as u64, written);
        // The lines kept are the first ones, whole.
        for (i, line) in lines.iter().enumerate() {
            assert!(line.contains(&format!(" path=/{i} ")) && line.ends_with(" backend=127.0.0.1:9"), "{line}");
        }
    }

    /// Takes `budget` bytes, then fails.
    struct Failing {
        out: Output,
        budget: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.out.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_the_destination_refuses_are_counted() {
        let metrics = Metrics::new();
        let out = Output::default();
        let log =
            AccessLog::with_writer(&Settings::default(), Box::new(Failing { out: out.clone(), budget: 300 }), &metrics)
                .unwrap();
        for i in 0..10 {
            log.log(&entry(&format!("/{i}")));
        }
        assert!(log.close(Duration::from_secs(5)));
        let whole = out.0.lock().unwrap().iter().filter(|&&b| b == b'\n').count() as u64;
        assert!(whole >= 1, "some lines fit in 300 bytes");
        // The line cut by the failure is lost, and counted as such.
        assert_eq!(counts(&metrics), (whole, [0, 10 - whole, 0]));
    }

    #[test]
    fn lines_after_close_are_counted() {
        let metrics = Metrics::new();
        let log = AccessLog::with_writer(&Settings::default(), Box::new(io::sink()), &metrics).unwrap();
        log.log(&entry("/before"));
        assert!(log.close(Duration::from_secs(5)));
        for _ in 0..3 {
            log.log(&entry("/after"));
        }
        assert_eq!(counts(&metrics), (1, [0, 0, 3]));
    }

    #[test]
    fn the_file_is_appended_to_and_reopened_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "kept\n").unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let wait_for = |p: &std::path::Path, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !read(p).contains(what) {
                assert!(Instant::now() < deadline, "{what} not in {}: {:?}", p.display(), read(p));
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let metrics = Metrics::new();
        let settings = Settings { file: Some(path.clone()), format: Format::Json, ..Settings::default() };
        let log = AccessLog::open(true, &settings, &metrics).unwrap();
        log.log(&entry("/one"));
        wait_for(&path, "/one");
        assert!(read(&path).starts_with("kept\n{\"timestamp\""), "{}", read(&path));

        // Moved away, then reopened on request (what SIGHUP does).
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen();
        log.log(&entry("/two"));
        wait_for(&path, "/two");

        // Moved away with nobody saying so: noticed within a second.
        std::fs::rename(&path, dir.path().join("access.log.2")).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        log.log(&entry("/three"));
        wait_for(&path, "/three");
        assert!(log.close(Duration::from_secs(5)));

        let one = read(&dir.path().join("access.log.1"));
        assert!(one.contains("/one") && !one.contains("/two"), "{one}");
        let two = read(&dir.path().join("access.log.2"));
        assert!(two.contains("/two") && !two.contains("/three"), "{two}");
        for line in read(&path).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["path"], "/three");
        }
        assert_eq!(counts(&metrics), (3, [0, 0, 0]));
    }

    #[test]
    fn a_log_that_is_off_costs_nothing_and_starts_no_thread() {
        let metrics = Metrics::new();
        let log = AccessLog::open(false, &Settings::default(), &metrics).unwrap();
        assert!(!log.is_on());
        log.log(&entry("/"));
        assert!(log.close(Duration::from_secs(1)));
        assert_eq!(counts(&metrics), (0, [0, 0, 0]));
    }
}
