//! Backend addresses: `host:port` or `http://host:port`, parsed once when a table is built so the request path
//! only copies a ready `Authority`.

use std::sync::Arc;

use http::uri::Authority;

use super::RouteError;

/// One upstream address of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// What the request URI to the backend is built from.
    authority: Authority,
    /// The address as the operator wrote it, for logs, metrics and the admin API.
    display: Arc<str>,
}

impl Backend {
    /// A backend at a socket address (a container's address, found at run time).
    pub fn from_addr(addr: std::net::SocketAddr) -> Self {
        let text = addr.to_string();
        // A formatted socket address is always a valid authority.
        let authority = text.parse().unwrap_or_else(|_| Authority::from_static("0.0.0.0:1"));
        Self { authority, display: Arc::from(text) }
    }

    /// Parses `host:port` or `http://host:port` (port 80 by default with the scheme). Anything else — another
    /// scheme, a path, user info, a missing port — is an error naming the reason.
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let bad = |reason: &str| RouteError::BadBackend { addr: raw.to_string(), reason: reason.to_string() };
        let trimmed = raw.trim();
        let (rest, default_port) = if let Some(rest) = trimmed.strip_prefix("http://") {
            (rest, Some(80))
        } else if trimmed.contains("://") {
            return Err(bad("only http:// backends are supported"));
        } else {
            (trimmed, None)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("empty address"));
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad("a backend is host:port, without a path"));
        }
        if rest.contains('@') {
            return Err(bad("user info is not allowed"));
        }
        let authority: Authority = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        if authority.host().is_empty() {
            return Err(bad("missing host"));
        }
        // `Authority` takes any digits after the colon, and `port_u16` is `None` both without a port and with one
        // past 65535: tell them apart, or `host:99999` reads as "missing port".
        let digits = authority.as_str().rsplit_once(':').map(|(_, p)| p).filter(|p| !p.is_empty());
        if authority.port_u16().is_none() && digits.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad("port out of range (1-65535)"));
        }
        let authority = match (authority.port_u16(), default_port) {
            (Some(0), _) => return Err(bad("port 0")),
            (Some(_), _) => authority,
            (None, Some(p)) => format!("{}:{p}", authority.host()).parse().map_err(|e| bad(&format!("{e}")))?,
            (None, None) => return Err(bad("missing port (write host:port)")),
        };
        Ok(Self { authority, display: Arc::from(trimmed) })
    }

    /// `host:port` to connect to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The address as configured.
    pub fn as_str(&self) -> &str {
        &self.display
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(Backend::parse("10.0.0.5:8080").unwrap().authority().as_str(), "10.0.0.5:8080");
        assert_eq!(Backend::parse("http://10.0.0.6:8080").unwrap().authority().as_str(), "10.0.0.6:8080");
        assert_eq!(Backend::parse("http://app.internal").unwrap().authority().as_str(), "app.internal:80");
        assert_eq!(Backend::parse("http://[::1]:81/").unwrap().authority().as_str(), "[::1]:81");
        for bad in ["", "10.0.0.5", "https://a:1", "a:1/x", "u@a:1", "a:0", "a:99999", "a b:1", "http://"] {
            assert!(Backend::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = Backend::parse("127.0.0.1:99999").unwrap_err().to_string();
        assert!(e.contains("port out of range") && !e.contains("missing port"), "{e}");
        assert!(Backend::parse("10.0.0.5").unwrap_err().to_string().contains("missing port"));
    }
}
