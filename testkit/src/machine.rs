//! The machine a report was made on: CPU, date, tool versions, and the commit measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::docker::{docker, BUSYBOX};
use crate::wrk::WRK;

/// The workspace's root directory (where `Cargo.lock` and `target/` are).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The CPU's model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Now, as "2025-01-31 12:34 UTC".
pub fn utc_date() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}

/// `nproc`: the CPUs this process may run on (it follows the process's affinity).
pub fn nproc() -> String {
    first_line(&mut Command::new("nproc"))
}

/// The kernel's release (`uname -r`).
pub fn kernel() -> String {
    first_line(Command::new("uname").arg("-r"))
}

/// The 1-minute load average.
pub fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().next().unwrap_or("?").to_string()
}

/// The first line a command prints (stdout, else stderr: `nginx -v` uses stderr), trimmed; "unknown" if it
/// cannot be run.
pub fn first_line(cmd: &mut Command) -> String {
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

/// The first line of a command's output (stdout and stderr) that contains `needle`, trimmed; "" if none.
pub fn first_line_matching(cmd: &mut Command, needle: &str) -> String {
    let Ok(out) = cmd.stdin(Stdio::null()).output() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().find(|l| l.contains(needle)).unwrap_or_default().trim().to_string()
}

/// The first line a command prints (see [`first_line`]), without URLs and copyright notices.
pub fn version(cmd: &mut Command) -> String {
    let line = first_line(cmd);
    // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12 2023/03/20 - https://haproxy.org/",
    // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    let line = line.split_once("version: ").map_or(line.as_str(), |(_, v)| v);
    let line = line.split(" - http").next().unwrap_or(line);
    let line = line.split(" Copyright").next().unwrap_or(line);
    line.replace(" version ", " ").trim().to_string()
}

/// The commit checked out in the workspace, with `(src/ modified)` when `src/` or the manifests differ from it.
pub fn git_revision() -> String {
    let root = workspace_root();
    let dir = root.to_str().unwrap_or(".");
    let head = first_line(Command::new("git").args(["-C", dir, "rev-parse", "--short", "HEAD"]));
    let dirty = Command::new("git")
        .args(["-C", dir, "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"])
        .status()
        .is_ok_and(|s| !s.success());
    if dirty {
        format!("{head} (src/ modified)")
    } else {
        head
    }
}

/// A package's version in the workspace's `Cargo.lock`, "?" if it is not there exactly once.
pub fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{package}\"\nversion = \"");
    let mut found = lock.match_indices(&needle).map(|(i, _)| &lock[i + needle.len()..]);
    match (found.next(), found.next()) {
        (Some(rest), None) => rest.split('"').next().unwrap_or("?").to_string(),
        _ => "?".into(),
    }
}

/// What a lab that runs reveille, Docker and wrk reports about the machine.
pub struct Machine {
    pub date: String,
    pub nproc: String,
    pub cpu: String,
    pub kernel: String,
    pub reveille: String,
    /// The commit benchmarked, with `(src/ modified)` when `src/` differs from it.
    pub revision: String,
    pub docker: String,
    pub busybox: String,
    pub wrk: Option<String>,
}

impl Machine {
    /// The versions, for a report: reveille and its commit, Docker Engine, the image's busybox, wrk.
    pub fn versions(&self) -> String {
        format!(
            "{} at commit {}; Docker Engine {}; image `FROM scratch` + {}; {}",
            self.reveille,
            self.revision,
            self.docker,
            self.busybox,
            self.wrk.as_deref().unwrap_or("wrk: not found")
        )
    }

    /// Reads it all; `reveille` is the binary measured.
    pub fn describe(reveille: &Path) -> Self {
        let wrk = Path::new(WRK).exists().then(|| first_line(Command::new(WRK).arg("-v")));
        Self {
            date: utc_date(),
            nproc: nproc(),
            cpu: cpu_model(),
            kernel: first_line(Command::new("uname").arg("-r")),
            reveille: first_line(Command::new(reveille).arg("--version")),
            revision: git_revision(),
            docker: docker(&["version", "--format", "{{.Server.Version}}"]).unwrap_or_else(|_| "unknown".into()),
            // "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
            busybox: first_line(&mut Command::new(BUSYBOX)).replace(" multi-call binary.", ""),
            // "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer"
            wrk: wrk.map(|w| w.split(" Copyright").next().unwrap_or(&w).trim().to_string()),
        }
    }
}
