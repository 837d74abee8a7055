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
