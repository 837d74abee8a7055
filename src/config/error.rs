//! What can be wrong with a configuration: reported before anything starts.

use std::path::PathBuf;

/// A problem with the configuration; reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("no route source: give --routes FILE and/or --etcd URL (or `routes` in [server], `endpoints` in [etcd])")]
    NoRouteSource,
}

/// toml's message about a config file, with what serde's alone does not say: the key an unknown one most likely
/// meant (`unknown field `idle_timout`, expected one of …` gets ` (did you mean `idle_timeout`?)`), and what a
/// duration looks like when one did not read.
pub(crate) fn explain(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("unknown field `") {
                let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
                // The expected names are the backquoted words after the unknown one.
                let known = expected.split('`').skip(1).step_by(2);
                return format!("{line}{}", crate::suggest::did_you_mean(name, known));
            }
            if line.contains("expected a duration") {
                return format!("{line}: write a duration with a unit, for example \"5s\" or \"5m\"");
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
