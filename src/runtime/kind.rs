//! Which engine a named runtime is (`[runtimes.<name>] kind`). Docker and Podman are the same client (Podman
//! through its Docker-compatible API, `podman system service`), with Podman's few differences handled where
//! Docker's answers are read (`Flavour`); Swarm is parsed and kept, but not built in this version
//! (`build_runtime`).

use serde::Deserialize;

/// The engine behind a named runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A Docker Engine (also what `[docker]` and `[docker.hosts.<name>]` are).
    #[default]
    Docker,
    /// Podman's Docker-compatible API (`podman system service`).
    Podman,
    /// Docker Swarm services, scaled 0 ↔ N.
    Swarm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Swarm => "swarm",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let parse = |s: &str| serde_json::from_str::<RuntimeKind>(s);
        assert_eq!(parse("\"docker\"").unwrap(), RuntimeKind::Docker);
        assert_eq!(parse("\"podman\"").unwrap(), RuntimeKind::Podman);
        assert_eq!(parse("\"swarm\"").unwrap(), RuntimeKind::Swarm);
        let e = parse("\"k8s\"").unwrap_err().to_string();
        assert!(e.contains("docker") && e.contains("podman") && e.contains("swarm"), "names the kinds: {e}");
        assert_eq!(RuntimeKind::Podman.to_string(), "podman");
    }
}
