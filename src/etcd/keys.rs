//! The key schema under one prefix (default `/reveille/`): every key any part of reveille reads or writes.
//!
//! - `<prefix>routes/<hostname>` → `{"service": "acme"}` (`<hostname>` may be `*.example.com`), read by
//!   `control::etcd`, written by `reveille route`.
//! - `<prefix>services/<name>` → `{"backends": [...], ...}`, read by `control::etcd`, written by
//!   `reveille service`.
//! - `<prefix>status/<name>` and `<prefix>activity/<name>`: a passivated service's state and last use,
//!   written by `passivation::status`.
//! - `<prefix>certs/<name>` → `{"cert": "PEM chain", "key": "PEM key"}`, read by `tls::etcd`, written by
//!   `reveille cert`.
//!
//! What the values mean is for those modules; this one only names keys and ranges.

/// The key schema under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Route(&'a str),
    Service(&'a str),
    Other,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn routes(&self) -> String {
        format!("{}routes/", self.prefix)
    }

    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }

    pub fn route(&self, host: &str) -> String {
        format!("{}routes/{host}", self.prefix)
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    /// `<prefix>status/<name>`: a passivated service's state, written by reveille.
    pub fn status(&self, name: &str) -> String {
        format!("{}status/{name}", self.prefix)
    }

    /// `<prefix>activity/<name>`: when a passivated service last had a request, written by reveille.
    pub fn activity(&self, name: &str) -> String {
        format!("{}activity/{name}", self.prefix)
    }

    /// `<prefix>certs/<name>`: a TLS certificate chain and its key.
    pub fn cert(&self, name: &str) -> String {
        format!("{}certs/{name}", self.prefix)
    }

    /// The key range of certificates: `[<prefix>certs/, <prefix>certs0)`.
    pub fn certs_range(&self) -> (String, String) {
        (format!("{}certs/", self.prefix), format!("{}certs0", self.prefix))
    }

    /// The certificate name of a key in [`Keys::certs_range`].
    pub fn cert_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("certs/")
    }

    /// The key range holding routes and services, and nothing that changes often (`activity/` sorts before
    /// it, `status/` after): `[<prefix>routes/, <prefix>services0)`.
    pub fn watched_range(&self) -> (String, String) {
        (self.routes(), format!("{}services0", self.prefix))
    }

    pub fn kind<'k>(&self, key: &'k str) -> KeyKind<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        if let Some(host) = rest.strip_prefix("routes/") {
            KeyKind::Route(host)
        } else if let Some(name) = rest.strip_prefix("services/") {
            KeyKind::Service(name)
        } else {
            KeyKind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_schema() {
        let k = Keys::new("/reveille");
        assert_eq!(k.route("a.com"), "/reveille/routes/a.com");
        assert_eq!(k.kind("/reveille/routes/*.a.com"), KeyKind::Route("*.a.com"));
        assert_eq!(k.kind("/reveille/services/acme"), KeyKind::Service("acme"));
        assert_eq!(k.kind("/reveille/status/acme"), KeyKind::Other);
        assert_eq!(k.kind("/other/routes/a"), KeyKind::Other);
        let (start, end) = k.watched_range();
        for inside in ["/reveille/routes/a", "/reveille/services/z"] {
            assert!(inside >= start.as_str() && inside < end.as_str(), "{inside}");
        }
        for outside in ["/reveille/status/a", "/reveille/activity/a", "/reveille/certs/a"] {
            assert!(!(outside >= start.as_str() && outside < end.as_str()), "{outside}");
        }
    }
}
