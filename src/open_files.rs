//! The process's open-files limit (`RLIMIT_NOFILE`): raised at start from its soft value to its hard one, as
//! Go's runtime does, so that connections are not refused (`EMFILE`) below what the system allows. Many systems
//! still start services with a soft limit of 1 024 and a hard one far above it.
//!
//! Owns that one adjustment and its log line; nothing else reads or sets limits.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::{info, warn};

/// What the limit was and became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Raised from the first figure to the second (`None`: unlimited).
    Raised(u64, Option<u64>),
    /// Already at the hard limit (or unlimited).
    Unchanged(Option<u64>),
    /// The hard limit could not be taken.
    Failed,
}

/// Raises the soft limit to the hard one and logs the figure.
pub(crate) fn raise() -> Outcome {
    let limit = getrlimit(Resource::Nofile);
    let shown = |n: Option<u64>| n.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    let Some(soft) = limit.current.filter(|&soft| Some(soft) != limit.maximum) else {
        info!(limit = %shown(limit.current), "open files limit {} (its hard limit)", shown(limit.current));
        return Outcome::Unchanged(limit.current);
    };
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => {
            let hard = shown(limit.maximum);
            info!(from = soft, to = %hard, "open files limit raised from {soft} to {hard}");
            Outcome::Raised(soft, limit.maximum)
        }
        Err(e) => {
            warn!(limit = soft, hard = %shown(limit.maximum), error = %e,
                "open files limit {soft} could not be raised to its hard limit: connections past it will be refused");
            Outcome::Failed
        }
    }
}
