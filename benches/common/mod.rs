//! Helpers shared by the `load` and `etcd` benchmarks (`mod common;` in each): settings from the environment,
//! the machine description, free ports, the in-process backend, child processes, `/proc` readings and
//! reporting. Cargo does not build this file as a bench of its own: only `benches/*.rs` and
//! `benches/*/main.rs` are.

use std::convert::Infallible;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

// ---------------------------------------------------------------------------------------------------------
// Settings and machine

/// The environment variable `name` parsed as a `T`, or `default` when it is not set. Panics on a value that
/// does not parse.
pub(crate) fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// The CPU's model name from `/proc/cpuinfo`.
pub(crate) fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Now, as "2025-01-31 12:34 UTC".
pub(crate) fn utc_date() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}

/// `nproc`: the CPUs this process may run on (it follows the process's affinity).
pub(crate) fn nproc() -> String {
    first_line(&mut Command::new("nproc"))
}

/// The first line a command prints (stdout, else stderr: `nginx -v` uses stderr), trimmed; "unknown" if it
/// cannot be run.
pub(crate) fn first_line(cmd: &mut Command) -> String {
    let Ok(out) = cmd.stdin(Stdio::null()).output() else {
        return "unknown".into();
    };
    let text = [out.stdout, out.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .find(|s| !s.trim().is_empty())
        .unwrap_or_default();
    text.lines().next().unwrap_or("unknown").trim().to_string()
}

/// `N` distinct free ports on 127.0.0.1 (bound together, then released: another process could take one in
/// between, which would show as a server failing to start).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [_; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    listeners.map(|l| l.local_addr().unwrap().port())
}

// ---------------------------------------------------------------------------------------------------------
// The backend

/// Starts a backend, a hyper HTTP/1.1 server answering every request 200 with `body` (`text/plain`), on its
/// own thread (single-threaded tokio runtime), and returns its port. The thread inherits this process's CPU
/// affinity.
pub(crate) fn start_backend(body: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::Builder::new()
        .name(format!("backend-{port}"))
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("backend runtime")
                .block_on(serve_backend(listener, body));
        })
        .unwrap();
    port
}

async fn serve_backend(listener: std::net::TcpListener, body: &'static [u8]) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |_req| async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(CONTENT_TYPE, "text/plain")
                        .body(Full::new(Bytes::from_static(body)))
                        .unwrap(),
                )
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Child processes and /proc

/// A child process that is killed and reaped when dropped (also while unwinding from a panic). Derefs to the
/// [`Child`].
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// A log file's contents; empty if it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `/proc/<pid>/status`; empty if it cannot be read (the process is gone).
pub(crate) fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// A `kB` field of [`proc_status`], such as `"VmRSS:"`, in KiB.
pub(crate) fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process so far, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
pub(crate) fn clock_ticks_per_sec() -> f64 {
    first_line(Command::new("getconf").arg("CLK_TCK")).parse().unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/// The median; NaN for no values.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Microseconds as "635 µs" or "2.51 ms"; "n/a" for NaN.
pub(crate) fn format_us(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Prints `title`, how many non-blank lines `log` has, and the first 10 of them.
pub(crate) fn print_log(title: &str, log: &str) {
    let lines: Vec<_> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        println!("{title}: empty");
        return;
    }
    println!("{title}: {} line(s); the first ones:", lines.len());
    for line in lines.iter().take(10) {
        println!("    {line}");
    }
}

/// Writes the report to `target/<file_name>` (or under `CARGO_TARGET_DIR`) and says where.
pub(crate) fn write_report(file_name: &str, report: &str) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join(file_name);
    match std::fs::write(&path, report) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}
