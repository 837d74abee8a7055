//! The real `reveille` binary as a child process: `reveille serve` on port 0 with JSON logs, its addresses read
//! from its "listening" line, its stdout kept, killed on drop. Used by the tests of the binary itself, of the
//! cluster (several replicas) and of the admin listener under a file-descriptor limit.

use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_reveille");

/// `serve`'s arguments for listeners on port 0 and JSON logs (the addresses are read from the log).
pub const SERVE: [&str; 7] = ["serve", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json"];

/// A `reveille serve` child process, killed on drop.
pub struct Serve {
    /// Names it in the lines [`Serve::dump`] prints (a replica's node).
    pub name: String,
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Its log lines before the "listening" one.
    pub startup: Vec<serde_json::Value>,
    /// Every stdout line after the "listening" one (while something reads them: see [`Serve::start_unread`]).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Serve {
    /// `reveille serve` on port 0 with JSON logs; the caller adds its arguments.
    pub fn command() -> Command {
        let mut command = Command::new(BIN);
        command.args(SERVE);
        command
    }

    /// Starts `command` (`reveille serve` with [`SERVE`]'s arguments, or a wrapper that runs it) and reads the
    /// bound addresses from its "listening" line; then keeps reading its stdout into `log`.
    pub fn start(name: &str, command: &mut Command) -> Serve {
        let (serve, lines) = Serve::start_unread(name, command);
        // Keep draining stdout so the child never blocks on a full pipe.
        let sink = serve.log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        serve
    }

    /// Like [`Serve::start`], but stdout is left to the caller after the "listening" line: unread, its pipe
    /// fills up.
    pub fn start_unread(name: &str, command: &mut Command) -> (Serve, Lines<BufReader<ChildStdout>>) {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut startup = Vec::new();
        let (http, admin) = loop {
            let line = lines.next().expect("reveille exited before listening").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                break (v["http"].as_str().unwrap().parse().unwrap(), v["admin"].as_str().unwrap().parse().unwrap());
            }
            startup.push(v);
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        (Serve { name: name.to_string(), child, http, admin, startup, log }, lines)
    }

    /// SIGKILL: a crash, with nothing cleaned up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` (a name, as `kill -s` takes it).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {sig} failed");
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "reveille did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a log line so far contains `text`.
    pub fn log_has(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// How many log lines so far contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// The last `n` log lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().rev().take(n).rev().cloned().collect()
    }

    /// Prints every log line so far to stderr, each after its process's name.
    pub fn dump(&self) {
        for l in self.log.lock().unwrap().iter() {
            eprintln!("{}: {l}", self.name);
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resident memory now (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
