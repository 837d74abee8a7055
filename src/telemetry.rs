//! Logging setup: `tracing` to stdout, as text or JSON, through a non-blocking writer so a slow terminal or
//! log collector never stalls the data path. The access log is not a `tracing` event: `access_log` writes it,
//! and is told here whether the filter lets `reveille::access` through.

use tracing_appender::non_blocking::WorkerGuard;
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
    crate::access_log::filter_allows(tracing::enabled!(target: "reveille::access", tracing::Level::INFO));
    guard
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
    #[test]
    fn rustls_is_quiet_unless_asked() {
        assert_eq!(super::quiet_rustls("info"), "info,rustls=error");
        assert_eq!(super::quiet_rustls("debug,rustls=warn"), "debug,rustls=warn");
    }
}
