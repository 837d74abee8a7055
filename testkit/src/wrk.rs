//! Running wrk and reading what it prints: requests per second, latency percentiles and its error counts.

use std::process::{Command, Stdio};

use crate::stats::counts;

/// Debian's wrk, where the labs that need no other tool look for it.
pub const WRK: &str = "/usr/bin/wrk";

/// What one wrk run printed.
#[derive(Debug, Default, Clone)]
pub struct WrkReport {
    pub requests_per_sec: f64,
    /// The "50%" line of `--latency`, µs.
    pub p50_us: Option<f64>,
    /// The "99%" line of `--latency`, µs.
    pub p99_us: f64,
    /// "N requests in ...".
    pub requests: u64,
    pub errors: WrkErrors,
}

/// What wrk counts as errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct WrkErrors {
    /// "Non-2xx or 3xx responses".
    pub non_2xx_3xx: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.non_2xx_3xx + self.connect + self.read + self.write + self.timeout
    }

    pub fn add(&mut self, o: &WrkErrors) {
        self.non_2xx_3xx += o.non_2xx_3xx;
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
    }
}

impl std::fmt::Display for WrkErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&counts(&[
            ("non-2xx/3xx", self.non_2xx_3xx),
            ("connect", self.connect),
            ("read", self.read),
            ("write", self.write),
            ("timeout", self.timeout),
        ]))
    }
}

/// wrk's arguments for one thread: `-t1 -c<connections> -d<seconds>s --latency -H 'Host: <host>' <url>`.
pub fn args(connections: usize, seconds: u64, host: &str, url: &str) -> Vec<String> {
    args_with(1, connections, seconds, &[&format!("Host: {host}")], url)
}

/// wrk's arguments: `-t<threads> -c<connections> -d<seconds>s --latency`, `-H <header>` for each header, `<url>`.
pub fn args_with(threads: usize, connections: usize, seconds: u64, headers: &[&str], url: &str) -> Vec<String> {
    let mut args =
        vec![format!("-t{threads}"), format!("-c{connections}"), format!("-d{seconds}s"), "--latency".into()];
    for header in headers {
        args.push("-H".into());
        args.push((*header).into());
    }
    args.push(url.into());
    args
}

/// Runs a prepared wrk command (its program and arguments set; see [`args`]) and reads its output.
pub fn run(cmd: &mut Command) -> Result<WrkReport, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse(&stdout).ok_or_else(|| {
        format!("cannot read wrk's output ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

/// Reads "Requests/sec:", the "50%" and "99%" lines of `--latency`, "N requests in", "Socket errors:" and
/// "Non-2xx or 3xx responses:".
pub fn parse(out: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let (mut rps, mut p99) = (None, None);
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            report.p50_us = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_us(v.trim());
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            report.requests = n.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.errors.non_2xx_3xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().ok()?;
                match kind {
                    "connect" => report.errors.connect = n,
                    "read" => report.errors.read = n,
                    "write" => report.errors.write = n,
                    "timeout" => report.errors.timeout = n,
                    _ => {}
                }
            }
        }
    }
    report.requests_per_sec = rps?;
    report.p99_us = p99?;
    Some(report)
}

/// wrk's durations: "635.00us", "2.51ms", "1.02s", "1.50m", "1.00h".
pub fn parse_duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = s[..split].parse().ok()?;
    let scale = match &s[split..] {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/
  1 threads and 10 connections
  Latency Distribution
     50%  635.00us
     75%    1.00ms
     90%    1.50ms
     99%    2.51ms
  1234 requests in 2.00s, 1.2MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:    617.00
";
        let r = parse(out).unwrap();
        assert_eq!(r.requests_per_sec, 617.0);
        assert_eq!(r.p50_us, Some(635.0));
        assert!((r.p99_us - 2510.0).abs() < 1e-6);
        assert_eq!(r.requests, 1234);
        assert_eq!(r.errors.to_string(), "6 (non-2xx/3xx 3, read 2, timeout 1)");
        assert_eq!(parse_duration_us("1.50m"), Some(90e6));
        assert!(parse("no numbers").is_none());
    }
}
