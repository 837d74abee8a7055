//! Running h2load (nghttp2's HTTP/2 load generator) and reading what it prints: requests per second, its error
//! counts, the protocol it negotiated, and latency percentiles from its per-request log (`--log-file`).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::stats::{counts, percentile};

/// What one h2load run printed, and the percentiles of its per-request log.
#[derive(Debug, Default, Clone)]
pub struct H2loadReport {
    /// "finished in 5.00s, 29416.60 req/s, ...".
    pub requests_per_sec: f64,
    /// "N succeeded".
    pub succeeded: u64,
    pub errors: H2loadErrors,
    /// "Application protocol: h2" ("" if not printed).
    pub protocol: String,
    /// "TLS Protocol: TLSv1.3", "Cipher: ..." joined ("" without TLS).
    pub tls: String,
    /// Median and 99th percentile of the per-request log's "time until the end of the response", µs (NaN
    /// without a log).
    pub p50_us: f64,
    pub p99_us: f64,
}

/// What h2load counts as failures.
#[derive(Debug, Default, Clone, Copy)]
pub struct H2loadErrors {
    /// "N failed" (includes errored and timed out).
    pub failed: u64,
    /// "N errored".
    pub errored: u64,
    /// "N timeout".
    pub timeout: u64,
    /// Responses other than 2xx ("status codes: a 2xx, b 3xx, c 4xx, d 5xx").
    pub non_2xx: u64,
}

impl H2loadErrors {
    pub fn total(&self) -> u64 {
        self.failed + self.non_2xx
    }
}

impl std::fmt::Display for H2loadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `failed` already counts the errored and timed-out requests: show the rest of it as "other".
        let other = self.failed.saturating_sub(self.errored + self.timeout);
        f.write_str(&counts(&[
            ("non-2xx", self.non_2xx),
            ("errored", self.errored),
            ("timeout", self.timeout),
            ("failed", other),
        ]))
    }
}

/// h2load's arguments for one thread, a timed run: `-t1 -c<clients> -m<streams> -D <seconds> --log-file=<log>`,
/// `-H <header>` for each header (`:authority: name` sets the authority), `<url>`.
pub fn args(clients: usize, streams: usize, seconds: u64, headers: &[&str], log: &Path, url: &str) -> Vec<String> {
    let mut args = vec![
        "-t1".to_string(),
        format!("-c{clients}"),
        format!("-m{streams}"),
        "-D".into(),
        seconds.to_string(),
        format!("--log-file={}", log.display()),
    ];
    for header in headers {
        args.push("-H".into());
        args.push((*header).into());
    }
    args.push(url.into());
    args
}

/// Runs a prepared h2load command (see [`args`]) and reads its output, then the percentiles from `log` (the
/// `--log-file` given to it), which it removes.
pub fn run(cmd: &mut Command, log: &Path) -> Result<H2loadReport, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run h2load: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut report = parse(&stdout).ok_or_else(|| {
        format!("cannot read h2load's output ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr))
    })?;
    let latencies = std::fs::read_to_string(log).map(|l| parse_log(&l)).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    report.p50_us = percentile(&latencies, 50.0);
    report.p99_us = percentile(&latencies, 99.0);
    Ok(report)
}

/// Reads "finished in ..., N req/s", "requests: ...", "status codes: ...", "Application protocol:", "TLS
/// Protocol:" and "Cipher:".
pub fn parse(out: &str) -> Option<H2loadReport> {
    let mut report = H2loadReport { p50_us: f64::NAN, p99_us: f64::NAN, ..H2loadReport::default() };
    let mut rps = None;
    let mut tls = Vec::new();
    // "<n> <word>" pairs of a comma-separated list: "147083 total, 0 failed" → [(147083, "total"), ...].
    let pairs = |v: &str| -> Vec<(u64, String)> {
        v.split(',')
            .filter_map(|part| {
                let mut words = part.split_whitespace();
                Some((words.next()?.parse().ok()?, words.next()?.to_string()))
            })
            .collect()
    };
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("finished in ") {
            // "5.00s, 29416.60 req/s, 4.35MB/s"
            rps = v.split(',').nth(1).and_then(|p| p.trim().strip_suffix(" req/s")).and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("requests:") {
            for (n, word) in pairs(v) {
                match word.as_str() {
                    "succeeded" => report.succeeded = n,
                    "failed" => report.errors.failed = n,
                    "errored" => report.errors.errored = n,
                    "timeout" => report.errors.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(v) = line.strip_prefix("status codes:") {
            report.errors.non_2xx = pairs(v).iter().filter(|(_, w)| w != "2xx").map(|(n, _)| n).sum();
        } else if let Some(v) = line.strip_prefix("Application protocol:") {
            report.protocol = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("TLS Protocol:").or_else(|| line.strip_prefix("Cipher:")) {
            tls.push(v.trim().to_string());
        }
    }
    report.requests_per_sec = rps?;
    report.tls = tls.join(", ");
    Some(report)
}

/// The per-request durations (µs) of an h2load `--log-file`: tab-separated lines of start time, status and
/// the time until the end of the response in µs.
pub fn parse_log(log: &str) -> Vec<f64> {
    log.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_output() {
        let out = "starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 5.00s, 29416.60 req/s, 4.35MB/s
requests: 147083 total, 147583 started, 147083 done, 147080 succeeded, 3 failed, 2 errored, 1 timeout
status codes: 147080 2xx, 0 3xx, 4 4xx, 1 5xx
traffic: 21.75MB (22805515) total, 1.68MB (1763160) headers (space savings 91.03%), 14.03MB (14708300) data
";
        let r = parse(out).unwrap();
        assert_eq!(r.requests_per_sec, 29416.6);
        assert_eq!(r.succeeded, 147080);
        assert_eq!(r.protocol, "h2");
        assert_eq!(r.tls, "TLSv1.3, TLS_AES_256_GCM_SHA384");
        assert_eq!(r.errors.total(), 8);
        assert_eq!(r.errors.to_string(), "8 (non-2xx 5, errored 2, timeout 1)");
        assert!(parse("no numbers").is_none());
        assert_eq!(parse_log("1700000000000000\t200\t635\n1700000000000100\t200\t2510\n"), vec![635.0, 2510.0]);
    }
}
