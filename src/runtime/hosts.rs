//! Several runtimes: where each one is ([`DockerEndpoint`], checked when the config is read), what it is
//! ([`RuntimeConfig`]) and the registry of their runtimes by name, with their kinds ([`Runtimes`]). The runtime
//! named [`DEFAULT_HOST`] is the Docker Engine of `--docker` / `[docker] endpoint`; the others come from
//! `[runtimes.<name>]` and from its older form for Docker alone, `[docker.hosts.<name>]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ContainerRuntime, RuntimeKind};

/// The name of the Docker host of services that name none (`--docker`, `[docker] endpoint`).
pub const DEFAULT_HOST: &str = "default";

/// Why a Docker host definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("docker host name {0:?} must be non-empty, without '/', spaces or control characters")]
    BadName(String),
    #[error(
        "docker endpoint {0:?}: use unix:///path/to/docker.sock, tcp://host:port, http://host:port or \
         https://host:port"
    )]
    BadScheme(String),
    #[error("docker endpoint {endpoint:?}: {reason}")]
    BadAddress { endpoint: String, reason: String },
    #[error("docker endpoint {0:?} is https: it needs `ca`, `cert` and `key` (PEM files)")]
    TlsMissing(String),
    #[error("docker endpoint {0:?}: `ca`, `cert` and `key` are only for https:// endpoints")]
    TlsNotAllowed(String),
    #[error("docker endpoint {endpoint:?}: cannot read {what} {path}: {reason}")]
    TlsFile { endpoint: String, what: &'static str, path: PathBuf, reason: String },
}

/// Client TLS of an `https://` Docker endpoint (Docker's `--tlsverify`): the CA that signed the daemon's
/// certificate and this client's certificate and key, all PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where one Docker Engine is. `uri` = `None`: `DOCKER_HOST`, else the local socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerEndpoint {
    pub uri: Option<String>,
    pub tls: Option<ClientTls>,
}

impl DockerEndpoint {
    /// A plain endpoint (`unix://`, a socket path, `tcp://` or `http://`), unchecked: [`Self::check`] says
    /// whether it is usable.
    pub fn plain(uri: Option<String>) -> Self {
        Self { uri, tls: None }
    }

    /// The URI as given, or what it defaults to.
    pub fn display(&self) -> String {
        self.uri
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// True for `https://` endpoints.
    pub fn is_https(&self) -> bool {
        self.uri.as_deref().is_some_and(|u| u.starts_with("https://"))
    }

    /// Checks the scheme, the address and the TLS files (they must be readable): a bad endpoint is refused
    /// when the config is read, not at the first wake.
    pub fn check(&self) -> Result<(), EndpointError> {
        let Some(uri) = &self.uri else { return Ok(()) };
        let bad = |reason: &str| EndpointError::BadAddress { endpoint: uri.clone(), reason: reason.into() };
        if let Some(path) = uri.strip_prefix("unix://").or(uri.starts_with('/').then_some(uri.as_str())) {
            if !path.starts_with('/') {
                return Err(bad("the socket path must be absolute (unix:///path/to/docker.sock)"));
            }
        } else if let Some(addr) =
            uri.strip_prefix("tcp://").or_else(|| uri.strip_prefix("http://")).or_else(|| uri.strip_prefix("https://"))
        {
            let addr = addr.strip_suffix('/').unwrap_or(addr);
            let authority: http::uri::Authority = addr.parse().map_err(|_| bad("not a host:port address"))?;
            if authority.port_u16().is_none() || authority.host().is_empty() || authority.as_str().contains('@') {
                return Err(bad("needs host:port (e.g. tcp://10.0.0.5:2375, https://docker-2.lan:2376)"));
            }
        } else {
            return Err(EndpointError::BadScheme(uri.clone()));
        }
        match (&self.tls, self.is_https()) {
            (None, true) => Err(EndpointError::TlsMissing(uri.clone())),
            (Some(_), false) => Err(EndpointError::TlsNotAllowed(uri.clone())),
            (None, false) => Ok(()),
            (Some(tls), true) => {
                for (what, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                    // Read, not only opened: bollard reads them at connect, so a FIFO or a device is refused
                    // here, with its name, rather than hanging or filling memory there.
                    crate::fsread::read(path, crate::fsread::DEFAULT_MAX_SIZE).map_err(|e| EndpointError::TlsFile {
                        endpoint: uri.clone(),
                        what,
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// A named runtime as configured (`[runtimes.<name>]`): its kind and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    pub endpoint: DockerEndpoint,
}

/// Checks a Docker host name (it is a metrics label and a routes-file value).
pub(crate) fn check_host_name(name: &str) -> Result<(), EndpointError> {
    if name.is_empty() || name.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(EndpointError::BadName(name.into()));
    }
    Ok(())
}

/// The container runtimes by name (a service's `runtime`, or its older `docker_host`), each with its kind;
/// [`DEFAULT_HOST`] is always there. The one place that maps a name to a runtime.
#[derive(Clone)]
pub struct Runtimes {
    hosts: BTreeMap<String, (RuntimeKind, Arc<dyn ContainerRuntime>)>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.hosts.iter().map(|(n, (kind, rt))| (n, (kind, rt.endpoint())))).finish()
    }
}

impl Runtimes {
    /// One Docker runtime, the default.
    pub fn single(default: Arc<dyn ContainerRuntime>) -> Self {
        Self { hosts: BTreeMap::from([(DEFAULT_HOST.to_string(), (RuntimeKind::Docker, default))]) }
    }

    /// Adds (or replaces) Docker runtime `name`.
    pub fn with(self, name: impl Into<String>, runtime: Arc<dyn ContainerRuntime>) -> Self {
        self.with_kind(name, RuntimeKind::Docker, runtime)
    }

    /// Adds (or replaces) runtime `name`, of `kind`.
    pub fn with_kind(mut self, name: impl Into<String>, kind: RuntimeKind, runtime: Arc<dyn ContainerRuntime>) -> Self {
        self.hosts.insert(name.into(), (kind, runtime));
        self
    }

    /// The runtime named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ContainerRuntime>> {
        self.hosts.get(name).map(|(_, rt)| rt)
    }

    /// The kind of runtime `name`.
    pub fn kind(&self, name: &str) -> Option<RuntimeKind> {
        self.hosts.get(name).map(|(kind, _)| *kind)
    }

    /// The runtime names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn ContainerRuntime>)> {
        self.hosts.iter().map(|(n, (_, rt))| (n.as_str(), rt))
    }
}

/// One runtime is the default host alone.
impl From<Arc<dyn ContainerRuntime>> for Runtimes {
    fn from(default: Arc<dyn ContainerRuntime>) -> Self {
        Self::single(default)
    }
}

impl<R: ContainerRuntime> From<Arc<R>> for Runtimes {
    fn from(default: Arc<R>) -> Self {
        Self::single(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str) -> Result<(), EndpointError> {
        DockerEndpoint::plain(Some(uri.into())).check()
    }

    #[test]
    fn endpoints() {
        for ok in ["unix:///var/run/docker.sock", "/run/docker.sock", "tcp://127.0.0.1:2375", "http://d2.lan:2375/"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert!(matches!(check("ftp://x:1"), Err(EndpointError::BadScheme(_))));
        assert!(matches!(check("ssh://me@host"), Err(EndpointError::BadScheme(_))));
        for bad in ["unix://run/d.sock", "tcp://10.0.0.5", "tcp://:2375", "tcp://a b:1", "http://u@h:1"] {
            assert!(matches!(check(bad), Err(EndpointError::BadAddress { .. })), "{bad}: {:?}", check(bad));
        }
        assert_eq!(check("https://d2.lan:2376"), Err(EndpointError::TlsMissing("https://d2.lan:2376".into())));
        assert_eq!(DockerEndpoint::plain(None).check(), Ok(()));

        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, "pem").unwrap();
            p
        };
        let tls = ClientTls { ca: file("ca.pem"), cert: file("cert.pem"), key: file("key.pem") };
        let https = DockerEndpoint { uri: Some("https://d2.lan:2376".into()), tls: Some(tls.clone()) };
        assert_eq!(https.check(), Ok(()));
        let plain_tls = DockerEndpoint { uri: Some("tcp://d2.lan:2376".into()), tls: Some(tls.clone()) };
        assert!(matches!(plain_tls.check(), Err(EndpointError::TlsNotAllowed(_))));
        let missing = DockerEndpoint {
            uri: Some("https://d2.lan:2376".into()),
            tls: Some(ClientTls { key: dir.path().join("nope.pem"), ..tls }),
        };
        let e = missing.check().unwrap_err();
        assert!(matches!(e, EndpointError::TlsFile { what: "key", .. }), "{e:?}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }

    #[test]
    fn host_names() {
        assert!(check_host_name("second").is_ok());
        assert!(check_host_name("dc-1.rack_2").is_ok());
        for bad in ["", "a/b", "a b", "a\tb"] {
            assert!(check_host_name(bad).is_err(), "{bad:?}");
        }
    }
}
