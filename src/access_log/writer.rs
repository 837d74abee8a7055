//! The writer thread: takes the buffers' lines in batches and writes them, counting every line written or
//! lost, and reopens the file when asked to (SIGHUP) or when its path names another file (a rotation).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{DropReason, Shared, FLUSH_INTERVAL};

/// How often the file's path is checked for a rotation, while lines are written.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// Warnings about lost lines are at most this frequent.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A taken buffer larger than this is given back to the allocator once written, so a burst does not keep its
/// memory for good.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Where lines go.
pub(super) enum Sink {
    /// The process's stdout, shared with `tracing`'s other logs: each batch is written under stdout's lock,
    /// so lines never interleave.
    Stdout,
    File(FileSink),
    /// Any writer (benchmarks, tests).
    Other(Box<dyn Write + Send>),
}

/// A file opened for appending, and what says whether its path still names it.
pub(super) struct FileSink {
    path: PathBuf,
    file: File,
    /// Device and inode of `file`.
    id: Option<(u64, u64)>,
    checked: Instant,
}

impl Sink {
    pub(super) fn open_file(path: &Path) -> io::Result<Sink> {
        let (file, id) = open_append(path)?;
        Ok(Sink::File(FileSink { path: path.to_path_buf(), file, id, checked: Instant::now() }))
    }

    /// Writes all of `buf` (whole lines); on failure, how far it got.
    fn write(&mut self, buf: &[u8]) -> Result<(), (io::Error, usize)> {
        match self {
            Sink::Stdout => write_all(&mut io::stdout().lock(), buf),
            Sink::File(f) => write_all(&mut f.file, buf),
            Sink::Other(w) => write_all(w, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::File(_) => Ok(()),
            Sink::Other(w) => w.flush(),
        }
    }

    /// Reopens the file when `forced`, or when its path no longer names the open file (moved away or
    /// deleted by a rotation; checked at most every [`ROTATION_CHECK`]). Failing, keeps the open file.
    fn maybe_reopen(&mut self, forced: bool) -> io::Result<()> {
        let Sink::File(f) = self else { return Ok(()) };
        if !forced {
            if f.checked.elapsed() < ROTATION_CHECK {
                return Ok(());
            }
            f.checked = Instant::now();
            if file_id(&f.path).is_some_and(|id| Some(id) == f.id) {
                return Ok(());
            }
        }
        let (file, id) = open_append(&f.path)?;
        f.file = file;
        f.id = id;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(File, Option<(u64, u64)>)> {
    let file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    let id = meta_id(&file.metadata()?);
    Ok((file, id))
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().and_then(|m| meta_id(&m))
}

#[cfg(unix)]
fn meta_id(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn meta_id(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// `write_all`, except that a failure says how many bytes were written, and a destination that would block
/// (stdout left non-blocking by whoever started us) is waited for.
fn write_all<W: Write + ?Sized>(w: &mut W, buf: &[u8]) -> Result<(), (io::Error, usize)> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), done)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err((e, done)),
        }
    }
    Ok(())
}

/// What the writer has to say about lost lines, said at most every [`WARN_EVERY`].
#[derive(Default)]
struct Reporter {
    last: Option<Instant>,
    /// Overflow drops already reported.
    overflow_seen: u64,
    /// Lines lost to write errors since the last warning, and the last error.
    write_errors: u64,
    error: Option<io::Error>,
    reopen_error: Option<io::Error>,
}

impl Reporter {
    fn report(&mut self, shared: &Shared) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let overflow = shared.dropped.get(DropReason::Overflow);
        let mut said = false;
        if overflow > self.overflow_seen {
            warn!(
                lines = overflow - self.overflow_seen,
                "access log: the writer could not keep up and lines were dropped (counted in \
                 reveille_access_log_dropped_total)"
            );
            self.overflow_seen = overflow;
            said = true;
        }
        if let Some(e) = self.error.take() {
            warn!(lines = self.write_errors, error = %e, "access log: lines could not be written");
            self.write_errors = 0;
            said = true;
        }
        if let Some(e) = self.reopen_error.take() {
            warn!(error = %e, "access log: cannot reopen the file; still writing to the one open");
            said = true;
        }
        if said {
            self.last = Some(Instant::now());
        }
    }
}

/// The writer thread's loop: wait, take each buffer's lines, write them, count them; until stopped. On stop,
/// writes what is left and marks the buffers closed. `done` is dropped when it ends.
pub(super) fn run(shared: &Shared, mut sink: Sink, done: Sender<()>) {
    let mut spares: Vec<Vec<u8>> = shared.shards.iter().map(|_| Vec::new()).collect();
    let mut reporter = Reporter::default();
    // After a sweep that found nothing, the next one is made "idle": a line that arrives in a buffer after
    // the sweep found it empty wakes the writer, which may then sleep until woken.
    let mut going_idle = false;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if going_idle {
            shared.idle.store(true, Ordering::SeqCst);
        }
        let forced = shared.reopen.swap(false, Ordering::AcqRel);
        let mut wrote = false;
        for (shard, spare) in shared.shards.iter().zip(spares.iter_mut()) {
            let lines = {
                let mut pending = shard.0.lock();
                pending.closed |= stopping;
                if pending.lines == 0 {
                    continue;
                }
                std::mem::swap(&mut pending.buf, spare);
                std::mem::take(&mut pending.lines)
            };
            if !wrote {
                if let Err(e) = sink.maybe_reopen(forced) {
                    reporter.reopen_error = Some(e);
                }
                wrote = true;
            }
            shared.in_flight.store(lines, Ordering::Relaxed);
            match sink.write(spare) {
                Ok(()) => {
                    shared.lines.inc_by(lines);
                }
                Err((e, at)) => {
                    let lost = bytecount_newlines(&spare[at..]);
                    shared.lines.inc_by(lines - lost);
                    shared.dropped.inc_by(DropReason::WriteError, lost);
                    reporter.write_errors += lost;
                    reporter.error = Some(e);
                }
            }
            shared.in_flight.store(0, Ordering::Relaxed);
            if spare.capacity() > KEEP_CAPACITY {
                *spare = Vec::new();
            } else {
                spare.clear();
            }
        }
        if wrote {
            if let Err(e) = sink.flush() {
                reporter.error = Some(e);
            }
        } else if forced {
            if let Err(e) = sink.maybe_reopen(true) {
                reporter.reopen_error = Some(e);
            }
        }
        reporter.report(shared);
        if stopping {
            break;
        }
        if wrote {
            shared.idle.store(false, Ordering::SeqCst);
            going_idle = false;
            std::thread::park_timeout(FLUSH_INTERVAL);
        } else if going_idle {
            std::thread::park();
            shared.idle.store(false, Ordering::SeqCst);
            going_idle = false;
        } else {
            going_idle = true;
        }
    }
    drop(done);
}

fn bytecount_newlines(buf: &[u8]) -> u64 {
    buf.iter().filter(|&&b| b == b'\n').count() as u64
}
