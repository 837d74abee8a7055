//! Hostname normalisation, shared by the request path (what a client sent) and the route sources (what an
//! operator wrote). Both sides end up with the same lowercase, port-less, dot-less form, so the table is a plain
//! string lookup.

use std::borrow::Cow;

use super::RouteError;

/// Longest DNS name we accept (RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// Turns a request's `Host` header (or HTTP/2 `:authority`) into the form the table is keyed by: the port
/// stripped, a trailing dot removed, ASCII-lowercased. Borrowed when nothing had to change, which is the common
/// case, so the request path does not allocate.
///
/// Returns `None` for anything that is not a plausible host name or IP literal: the caller answers 400.
pub fn normalize_request_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = strip_port(raw)?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if host.starts_with('[') {
        // IPv6 literal: keep as is (lowercased), brackets included, so it can be routed if an operator wants.
        if !host.ends_with(']')
            || !host[1..host.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
    } else if !host.bytes().all(is_host_byte) {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn strip_port(raw: &str) -> Option<&str> {
    if let Some(rest) = raw.strip_prefix('[') {
        // [v6] or [v6]:port
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !after.is_empty() && !valid_port_suffix(after) {
            return None;
        }
        return Some(&raw[..end + 2]);
    }
    match raw.rfind(':') {
        Some(i) if valid_port_suffix(&raw[i..]) => Some(&raw[..i]),
        Some(_) => None,
        None => Some(raw),
    }
}

/// `:` followed by 1-5 digits.
fn valid_port_suffix(s: &str) -> bool {
    let Some(digits) = s.strip_prefix(':') else {
        return false;
    };
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

/// A route's hostname as an operator wrote it, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `acme.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix without the `*.`: `example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a route key. Accepts an exact name or `*.` followed by a name; a port or a trailing dot is an error
    /// here (unlike in requests), because a route key that looks like it has one is a typo worth reporting.
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let bad = |reason: &str| RouteError::BadHostname { host: raw.to_string(), reason: reason.to_string() };
        if raw.is_empty() {
            return Err(bad("empty hostname"));
        }
        let (wild, name) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if name.len() > MAX_HOST_LEN {
            return Err(bad("longer than 253 characters"));
        }
        if name.contains('*') {
            return Err(bad("a wildcard is only allowed as the whole first label, as in *.example.com"));
        }
        if name.contains(':') {
            return Err(bad("a route hostname takes no port (requests match whatever port they used)"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("empty label (leading, trailing or double dot)"));
            }
            if label.len() > 63 {
                return Err(bad("label longer than 63 characters"));
            }
            if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
                return Err(bad(&format!("invalid character {c:?}")));
            }
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild { Self::Wildcard(name) } else { Self::Exact(name) })
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n),
            Self::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hosts() {
        assert_eq!(normalize_request_host("Example.COM").as_deref(), Some("example.com"));
        assert!(matches!(normalize_request_host("example.com"), Some(Cow::Borrowed("example.com"))));
        assert_eq!(normalize_request_host("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(normalize_request_host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(normalize_request_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_request_host("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_request_host(""), None);
        assert_eq!(normalize_request_host(":80"), None);
        assert_eq!(normalize_request_host("a b"), None);
        assert_eq!(normalize_request_host("a:b"), None);
        assert_eq!(normalize_request_host("a:123456"), None);
        assert_eq!(normalize_request_host("evil.com/x"), None);
        assert_eq!(normalize_request_host("[::1"), None);
    }

    #[test]
    fn patterns() {
        assert_eq!(HostPattern::parse("Acme.Example.com").unwrap(), HostPattern::Exact("acme.example.com".into()));
        assert_eq!(HostPattern::parse("*.example.com").unwrap(), HostPattern::Wildcard("example.com".into()));
        for bad in ["", "*", "*.", "a.*.com", "a..b", ".a", "a.", "a:80", "a b", "x*.a.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
