//! One access-log line, written straight into a byte buffer: no `fmt` machinery, no allocation, the date
//! formatted once per second.
//!
//! Text lines are `key=value` pairs (logfmt) after the time and `reveille::access`; a value is quoted only
//! when it has to be. JSON lines are one object per line. Both carry the same fields, in the same order;
//! docs/operations.md documents them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How lines are written: the format of `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `2026-11-22T02:45:01.123Z reveille::access peer=… host=… method=GET path=/ status=200 …`
    #[default]
    Text,
    /// `{"timestamp":"…","target":"reveille::access","peer":"…",…}`
    Json,
}

/// One request, as its access-log line tells it. `"-"` stands for what is unknown (no host, no service,
/// no backend).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The client's address (the connection's peer, not a forwarding header).
    pub peer: &'a str,
    /// The host asked for: normalised when it was routed, as sent when it could not be.
    pub host: &'a str,
    pub method: &'a str,
    /// Path and query, as sent.
    pub path: &'a str,
    pub status: u16,
    /// From the request's head to its response's head.
    pub duration: Duration,
    pub service: &'a str,
    /// The backend of the last forwarding attempt.
    pub backend: &'a str,
}

/// Writes lines in one format, keeping the date of the last second it wrote.
#[derive(Debug, Clone, Default)]
pub struct Formatter {
    format: Format,
    clock: Clock,
}

impl Formatter {
    pub fn new(format: Format) -> Self {
        Self { format, clock: Clock::default() }
    }

    /// Appends `entry`'s line, ending in `\n`, to `buf`, stamped `now`.
    #[inline]
    pub fn line(&mut self, buf: &mut Vec<u8>, now: SystemTime, entry: &Entry<'_>) {
        match self.format {
            Format::Text => text(buf, &mut self.clock, now, entry),
            Format::Json => json(buf, &mut self.clock, now, entry),
        }
    }
}

/// The second the cached date text is for, and that text (`YYYY-MM-DDTHH:MM:SS`).
#[derive(Debug, Clone)]
struct Clock {
    second: u64,
    text: [u8; 19],
}

impl Default for Clock {
    fn default() -> Self {
        Self { second: u64::MAX, text: [b'0'; 19] }
    }
}

impl Clock {
    /// Appends `now` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC); the date and time of day are formatted again only
    /// when the second changes.
    fn push(&mut self, buf: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second {
            self.second = second;
            self.text = civil(second);
        }
        buf.extend_from_slice(&self.text);
        let ms = since.subsec_millis();
        buf.extend_from_slice(&[b'.', digit(ms / 100), digit(ms / 10 % 10), digit(ms % 10), b'Z']);
    }
}

fn digit(n: u32) -> u8 {
    b'0' + (n % 10) as u8
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), by Howard Hinnant's `civil_from_days`.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe as i64 + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u32;
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    [
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        digit(month / 10),
        digit(month),
        b'-',
        digit(day / 10),
        digit(day),
        b'T',
        digit(h / 10),
        digit(h),
        b':',
        digit(m / 10),
        digit(m),
        b':',
        digit(s / 10),
        digit(s),
    ]
}

fn text(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, e: &Entry<'_>) {
    clock.push(buf, now);
    buf.extend_from_slice(b" reveille::access peer=");
    logfmt_value(buf, e.peer);
    buf.extend_from_slice(b" host=");
    logfmt_value(buf, e.host);
    buf.extend_from_slice(b" method=");
    logfmt_value(buf, e.method);
    buf.extend_from_slice(b" path=");
    logfmt_value(buf, e.path);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    buf.extend_from_slice(b" duration_ms=");
    millis(buf, e.duration);
    buf.extend_from_slice(b" service=");
    logfmt_value(buf, e.service);
    buf.extend_from_slice(b" backend=");
    logfmt_value(buf, e.backend);
    buf.push(b'\n');
}

fn json(buf: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    clock.push(buf, now);
    buf.extend_from_slice(b"\",\"target\":\"reveille::access\",\"peer\":\"");
    json_str(buf, e.peer);
    buf.extend_from_slice(b"\",\"host\":\"");
    json_str(buf, e.host);
    buf.extend_from_slice(b"\",\"method\":\"");
    json_str(buf, e.method);
    buf.extend_from_slice(b"\",\"path\":\"");
    json_str(buf, e.path);
    buf.extend_from_slice(b"\",\"status\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    buf.extend_from_slice(b",\"duration_ms\":");
    millis(buf, e.duration);
    buf.extend_from_slice(b",\"service\":\"");
    json_str(buf, e.service);
    buf.extend_from_slice(b"\",\"backend\":\"");
    json_str(buf, e.backend);
    buf.extend_from_slice(b"\"}\n");
}

/// Milliseconds with three decimals (to the microsecond): `0.412`, `1500.000`.
fn millis(buf: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    buf.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let frac = (us % 1000) as u32;
    buf.extend_from_slice(&[b'.', digit(frac / 100), digit(frac / 10), digit(frac)]);
}

/// A logfmt value: bare when it is non-empty and has no space, quote, `=`, backslash or control character;
/// otherwise quoted, with `"` and `\` escaped and control characters as `\xHH`. Nothing a client sends can
/// start a new line or a new field.
fn logfmt_value(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(|&b| LOGFMT_BARE[usize::from(b)]) {
        buf.extend_from_slice(bytes);
        return;
    }
    buf.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b if b < b' ' || b == 0x7f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(escaped);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The bytes a bare logfmt value may hold (one table lookup per byte, on every line).
const LOGFMT_BARE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b > b' ' as usize && b != b'"' as usize && b != b'=' as usize && b != b'\\' as usize && b != 0x7f;
        b += 1;
    }
    t
};

/// The bytes a JSON string holds as they are.
const JSON_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b >= b' ' as usize && b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// The inside of a JSON string: `"`, `\` and control characters escaped (RFC 8259); the rest, UTF-8
/// included, as is.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if bytes.iter().all(|&b| JSON_PLAIN[usize::from(b)]) {
        buf.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if JSON_PLAIN[usize::from(b)] {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            peer: "127.0.0.1",
            host: "app.test",
            method: "GET",
            path: "/hello?x=1",
            status: 200,
            duration: Duration::from_micros(412),
            service: "acme",
            backend: "127.0.0.1:8001",
        }
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    fn one(format: Format, e: &Entry<'_>, now: SystemTime) -> String {
        let mut buf = Vec::new();
        Formatter::new(format).line(&mut buf, now, e);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn text_line() {
        assert_eq!(
            one(Format::Text, &entry(), at(1_795_315_501, 123)),
            "2026-11-22T02:45:01.123Z reveille::access peer=127.0.0.1 host=app.test method=GET path=\"/hello?x=1\" \
             status=200 duration_ms=0.412 service=acme backend=127.0.0.1:8001\n"
        );
    }

    #[test]
    fn json_line() {
        let e = Entry { duration: Duration::from_micros(1_500_007), service: "-", backend: "-", ..entry() };
        assert_eq!(
            one(Format::Json, &e, at(1_795_315_501, 7)),
            "{\"timestamp\":\"2026-11-22T02:45:01.007Z\",\"target\":\"reveille::access\",\"peer\":\"127.0.0.1\",\
             \"host\":\"app.test\",\"method\":\"GET\",\"path\":\"/hello?x=1\",\"status\":200,\"duration_ms\":1500.007,\
             \"service\":\"-\",\"backend\":\"-\"}\n"
        );
    }

    #[test]
    fn dates_across_the_calendar() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_799, "2000-02-29T23:59:59"),
            (951_868_800, "2000-03-01T00:00:00"),
            (1_709_164_800, "2024-02-29T00:00:00"),
            (4_102_444_799, "2099-12-31T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want, "{secs}");
        }
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        let mut clock = Clock::default();
        let mut buf = Vec::new();
        for (secs, ms) in [(59, 999), (60, 0), (60, 500), (3_600 * 24, 1)] {
            clock.push(&mut buf, at(secs, ms));
            buf.push(b' ');
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1970-01-01T00:00:59.999Z 1970-01-01T00:01:00.000Z 1970-01-01T00:01:00.500Z 1970-01-02T00:00:00.001Z "
        );
    }

    #[test]
    fn text_values_are_quoted_only_when_needed_and_cannot_break_the_line() {
        let e = Entry { host: "evil host\" x=1\n", path: "", service: "a\\b", backend: "b=c", ..entry() };
        let got = one(Format::Text, &e, at(0, 0));
        assert!(
            got.contains(r#" host="evil host\" x=1\x0a" method=GET path="" status=200"#)
                && got.contains(r#" service="a\\b" backend="b=c""#),
            "{got}"
        );
        assert_eq!(got.matches('\n').count(), 1, "{got}");
    }

    #[test]
    fn json_lines_parse_whatever_the_values() {
        let e = Entry { host: "h\"\\\n\t\u{1}\u{7f}é", path: "/ü?q=\"x\"", ..entry() };
        let got = one(Format::Json, &e, at(0, 0));
        assert_eq!(got.matches('\n').count(), 1, "{got}");
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["host"], "h\"\\\n\t\u{1}\u{7f}é");
        assert_eq!(v["path"], "/ü?q=\"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 0.412);
    }
}
