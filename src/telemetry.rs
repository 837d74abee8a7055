//! Logging setup: `tracing` to stdout, as text or JSON, through a non-blocking writer so a slow terminal or
//! log collector never stalls the data path. The access log is not a `tracing` event: `access_log` writes it,
//! and is told here whether the filter lets `reveille::access` through.
//!
//! One event is one line, also in text: a multi-line message (a routes file's errors, one per line; a TOML
//! error's excerpt) has its inner line breaks written as `\n`, as the JSON format does, so that a line-based
//! collector never takes its second line for an event of its own.

use std::io::Write;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Keep the returned guard alive until exit: dropping it flushes the log.
/// `RUST_LOG`, when set, takes precedence over `level`.
pub fn init(format: LogFormat, level: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let filter = env
        .iter()
        .map(String::as_str)
        .chain([level, "info"])
        .find_map(|spec| EnvFilter::try_new(quiet_rustls(spec)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_writer(OneLine(writer)).init(),
        LogFormat::Json => {
            builder.with_writer(writer).json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
    crate::access_log::filter_allows(tracing::enabled!(target: "reveille::access", tracing::Level::INFO));
    guard
}

/// A writer of formatted events that keeps each on one line: the formatter hands over one whole event per
/// `write` (its line break last), and a line break before the last byte is written as `\n`.
#[derive(Clone)]
struct OneLine<W>(W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for OneLine<W> {
    type Writer = OneLine<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.contains(&b'\n') {
            return self.0.write(buf);
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(&buf[body.len()..]);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// rustls warns about what clients send (e.g. an IP address as SNI): one line per handshake that any client can
/// cause. Unless the filter says otherwise about rustls, only its errors are logged; reveille logs handshake
/// failures itself (at debug, with the reason, and in the metrics).
fn quiet_rustls(spec: &str) -> String {
    if spec.contains("rustls") {
        spec.to_string()
    } else {
        format!("{spec},rustls=error")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn an_event_stays_on_one_line() {
        let mut out = super::OneLine(Vec::new());
        out.write_all(b"ERROR routes file r.toml is invalid:\n  line 2: x\n  line 4: y\n").unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        let text = String::from_utf8(out.0).unwrap();
        assert_eq!(text, "ERROR routes file r.toml is invalid:\\n  line 2: x\\n  line 4: y\nINFO plain\n");
    }

    #[test]
    fn rustls_is_quiet_unless_asked() {
        assert_eq!(super::quiet_rustls("info"), "info,rustls=error");
        assert_eq!(super::quiet_rustls("debug,rustls=warn"), "debug,rustls=warn");
    }
}
