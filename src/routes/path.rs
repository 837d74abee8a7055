//! Routes by path: a route key's optional path prefix ([`PathPrefix`]), the key as a whole ([`RouteKey`],
//! `shop.test/api/`), what a route leads to ([`Target`]: a service, and whether the prefix is stripped), and
//! the per-host map of path routes the table keeps beside a host's own route ([`PathRoutes`]).
//!
//! # The matching rule
//!
//! A prefix is matched on whole segments, and its trailing slash is optional: `/api/` and `/api` are the same
//! prefix, which matches the path `/api` itself and any path that continues it with `/` (`/api/`, `/api/x`),
//! never `/apix`. The longest prefix wins. The request path is matched as sent (no percent-decoding: `/%61pi`
//! is not `/api`), except that a path with a `.` or `..` segment, literal or percent-encoded (`%2e%2e`), is
//! refused (400) for a host that has path routes: a backend that resolves it would serve another prefix's
//! paths than the one reveille matched. Clients resolve dot segments before sending (RFC 3986 §5.2.4), so a
//! request that still carries one is not a browser's.
//!
//! Looking a path up costs one hash lookup per segment of the request path, at most, and only for hosts that
//! have path routes: a host without any keeps its single lookup.

use std::collections::HashMap;
use std::sync::Arc;

use super::{HostPattern, RouteError};

/// A route's path prefix, checked and canonical: it starts with `/`, has no trailing slash and is not `/`
/// alone (that is the host route). Shown with a trailing slash (`/api/`), the way it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPrefix(Box<str>);

impl PathPrefix {
    /// Parses the path part of route key `key` (for messages). Refuses what a request path cannot match or
    /// what would make the match ambiguous: no leading `/`, `/` alone, `?`, `#`, whitespace or control
    /// characters, non-ASCII, a bad `%` escape, an empty segment (`//`), a `.` or `..` segment.
    pub fn parse(raw: &str, key: &str) -> Result<Self, RouteError> {
        let bad = |reason: &str| RouteError::BadPath { route: key.to_string(), reason: reason.to_string() };
        let Some(body) = raw.strip_prefix('/') else {
            return Err(bad("a path prefix starts with '/'"));
        };
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Err(bad("the prefix '/' is the host route itself: write the hostname alone"));
        }
        if let Some(c) = body.chars().find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("invalid character {c:?} (a prefix is a path, without query or fragment)")));
        }
        if !body.is_ascii() {
            return Err(bad("non-ASCII character (percent-encode it, as requests send it)"));
        }
        for segment in body.split('/') {
            if segment.is_empty() {
                return Err(bad("empty segment (double slash)"));
            }
            if is_dot_segment(segment) {
                return Err(bad("a '.' or '..' segment"));
            }
            if !percent_escapes_ok(segment) {
                return Err(bad("'%' not followed by two hex digits"));
            }
        }
        Ok(Self(format!("/{body}").into()))
    }

    /// The canonical form, without the trailing slash: what request paths are compared with.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.0)
    }
}

/// Whether a path segment is `.` or `..`, written literally or percent-encoded (`%2e`, `%2E`, mixed).
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    let mut dots = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && (rest[2] | 0x20) == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// Every `%` is followed by two hex digits.
fn percent_escapes_ok(segment: &str) -> bool {
    let b = segment.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() || !b[i + 1].is_ascii_hexdigit() || !b[i + 2].is_ascii_hexdigit() {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A route key: a host pattern, optionally followed by a path prefix (`shop.test`, `*.shop.test/api/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub host: HostPattern,
    pub path: Option<PathPrefix>,
}

impl RouteKey {
    /// Parses a route key as an operator wrote it: everything before the first `/` is the host pattern (see
    /// [`HostPattern::parse`]), the rest the path prefix (see [`PathPrefix::parse`]).
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        match raw.find('/') {
            None => Ok(Self { host: HostPattern::parse(raw)?, path: None }),
            Some(i) => {
                let host = HostPattern::parse(&raw[..i])?;
                let path = PathPrefix::parse(&raw[i..], raw)?;
                Ok(Self { host, path: Some(path) })
            }
        }
    }
}

impl From<HostPattern> for RouteKey {
    fn from(host: HostPattern) -> Self {
        Self { host, path: None }
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// What a route leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service's name (resolved against the table's services at each lookup).
    pub service: Arc<str>,
    /// Send the path without the route's prefix (`/api/x` as `/x`, `/api` as `/`); path routes only.
    pub strip_prefix: bool,
}

impl Target {
    /// A target that keeps the path as sent.
    pub fn service(service: Arc<str>) -> Self {
        Self { service, strip_prefix: false }
    }
}

type PrefixMap = HashMap<Box<str>, Target, foldhash::fast::RandomState>;

/// One host's path routes, with the host's own route beside them: the table's value for a host that has at
/// least one path route (a host without keeps a bare service name, and its one lookup).
#[derive(Debug, Clone, Default)]
pub(crate) struct PathRoutes {
    /// The host route (`shop.test`), if there is one: what a path that matches no prefix reaches.
    pub(crate) host: Option<Arc<str>>,
    /// Canonical prefix (`/api`) → target.
    prefixes: PrefixMap,
    /// The longest prefix, in bytes: longer candidates are not looked up.
    longest: usize,
}

/// What a path lookup found in one host's routes.
pub(crate) enum PathMatch<'a> {
    /// A service name, and how many bytes of the path to strip (0: none).
    Hit(&'a Arc<str>, usize),
    /// Neither a prefix nor the host route: the next host pattern (a wildcard) may still serve it.
    Miss,
    /// The path has a `.` or `..` segment (see the module docs).
    DotSegment,
}

impl PathRoutes {
    /// A host's routes that begin as its host route alone, `host`.
    pub(crate) fn with_host(host: Option<Arc<str>>) -> Self {
        Self { host, ..Default::default() }
    }

    /// The number of path routes.
    pub(crate) fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Sets (`Some`) or removes (`None`) the route of `prefix`. Returns whether a route was there before.
    pub(crate) fn set(&mut self, prefix: &PathPrefix, target: Option<Target>) -> bool {
        let had = match target {
            Some(t) => self.prefixes.insert(prefix.as_str().into(), t).is_some(),
            None => self.prefixes.remove(prefix.as_str()).is_some(),
        };
        self.longest = self.prefixes.keys().map(|k| k.len()).max().unwrap_or(0);
        had
    }

    /// Every path route as `(prefix shown with its trailing slash, target)`, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (String, &Target)> {
        self.prefixes.iter().map(|(p, t)| (format!("{p}/"), t))
    }

    /// The route of the shortest prefix (ties: the first in byte order): the service whose policy speaks for
    /// a host that has only path routes (its ACME certificate).
    pub(crate) fn first(&self) -> Option<&Target> {
        self.prefixes.iter().min_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0))).map(|(_, t)| t)
    }

    /// The route `path` reaches: the longest prefix it continues on a segment boundary, else the host route.
    #[inline(never)]
    pub(crate) fn find(&self, path: &str) -> PathMatch<'_> {
        if path.split('/').any(is_dot_segment) {
            return PathMatch::DotSegment;
        }
        // Candidates from the longest: the whole path (unless it ends with '/', which no prefix does), then the
        // path cut before each '/' from the right. One hash lookup each, the too long ones skipped.
        let mut candidate = path;
        loop {
            if candidate.len() <= self.longest && !candidate.ends_with('/') {
                if let Some(t) = self.prefixes.get(candidate) {
                    return PathMatch::Hit(&t.service, if t.strip_prefix { candidate.len() } else { 0 });
                }
            }
            match candidate.rfind('/') {
                Some(i) if i > 0 => candidate = &candidate[..i],
                _ => break,
            }
        }
        match &self.host {
            Some(s) => PathMatch::Hit(s, 0),
            None => PathMatch::Miss,
        }
    }
}

/// The path and query a backend gets when `strip` bytes of prefix are taken off `path_and_query`: what
/// follows the prefix (`/x`, or `/` when nothing does), and the query as sent.
pub(crate) fn stripped(path: &str, query: Option<&str>, strip: usize) -> String {
    let rest = path.get(strip..).unwrap_or("");
    let rest = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(prefixes: &[(&str, &str, bool)], host: Option<&str>) -> PathRoutes {
        let mut r = PathRoutes::with_host(host.map(Arc::from));
        for (p, s, strip) in prefixes {
            let prefix = PathPrefix::parse(p, p).unwrap();
            r.set(&prefix, Some(Target { service: Arc::from(*s), strip_prefix: *strip }));
        }
        r
    }

    fn hit(r: &PathRoutes, path: &str) -> Option<(String, usize)> {
        match r.find(path) {
            PathMatch::Hit(s, n) => Some((s.to_string(), n)),
            PathMatch::Miss => None,
            PathMatch::DotSegment => Some(("400".into(), 0)),
        }
    }

    #[test]
    fn prefixes_parse_to_one_canonical_form() {
        assert_eq!(PathPrefix::parse("/api/", "k").unwrap().as_str(), "/api");
        assert_eq!(PathPrefix::parse("/api", "k").unwrap(), PathPrefix::parse("/api/", "k").unwrap());
        assert_eq!(PathPrefix::parse("/a/b%20c/", "k").unwrap().to_string(), "/a/b%20c/");
        for bad in [
            "api/",
            "/",
            "//",
            "/a//b",
            "/a?b",
            "/a#b",
            "/a b",
            "/a/../b",
            "/a/./b",
            "/..",
            "/%2e%2E/x",
            "/é",
            "/a%2",
            "/a%zz",
        ] {
            let e = PathPrefix::parse(bad, "shop.test{bad}").unwrap_err();
            assert!(matches!(e, RouteError::BadPath { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn route_keys() {
        let k = RouteKey::parse("Shop.Test/api/").unwrap();
        assert_eq!(k.to_string(), "shop.test/api/");
        assert_eq!(RouteKey::parse("*.shop.test/api").unwrap().to_string(), "*.shop.test/api/");
        assert_eq!(RouteKey::parse("shop.test").unwrap(), RouteKey::from(HostPattern::parse("shop.test").unwrap()));
        let e = RouteKey::parse("shop.test/a b").unwrap_err().to_string();
        assert!(e.starts_with("route \"shop.test/a b\": invalid path prefix"), "{e}");
        assert!(RouteKey::parse("/api/").is_err());
        assert!(RouteKey::parse("a b/api/").is_err());
    }

    #[test]
    fn whole_segments_longest_first() {
        let r = routes(&[("/api/", "api", false), ("/api/v2", "v2", true)], Some("web"));
        let cases = [
            ("/api/x", Some(("api", 0))),
            ("/api", Some(("api", 0))),
            ("/api/", Some(("api", 0))),
            ("/apix", Some(("web", 0))),
            ("/apix/y", Some(("web", 0))),
            ("/api/v2", Some(("v2", 7))),
            ("/api/v2/", Some(("v2", 7))),
            ("/api/v2/z", Some(("v2", 7))),
            ("/api/v20", Some(("api", 0))),
            ("/", Some(("web", 0))),
            ("", Some(("web", 0))),
            ("*", Some(("web", 0))),
            ("/API/x", Some(("web", 0))),
            ("/%61pi/x", Some(("web", 0))),
        ];
        for (path, want) in cases {
            assert_eq!(hit(&r, path), want.map(|(s, n)| (s.to_string(), n)), "{path}");
        }
        let only = routes(&[("/api/", "api", false)], None);
        assert_eq!(hit(&only, "/other"), None, "no host route: a miss");
    }

    #[test]
    fn dot_segments_never_reach_a_backend() {
        let r = routes(&[("/public/", "pub", false)], Some("web"));
        for path in ["/public/../admin", "/public/%2e%2e/admin", "/public/.%2E/x", "/./public", "/public/.", "/.."] {
            assert_eq!(hit(&r, path), Some(("400".into(), 0)), "{path}");
        }
        for path in ["/public/...", "/public/.x", "/public/%2e%2e%2e", "/public/a..b"] {
            assert_eq!(hit(&r, path), Some(("pub".into(), 0)), "{path}");
        }
    }

    #[test]
    fn strip_keeps_the_rest_and_the_query() {
        assert_eq!(stripped("/api/x", Some("q=1"), 4), "/x?q=1");
        assert_eq!(stripped("/api", None, 4), "/");
        assert_eq!(stripped("/api/", None, 4), "/");
        assert_eq!(stripped("/api", Some("q"), 4), "/?q");
    }

    #[test]
    fn removing_the_last_prefix_empties_the_entry() {
        let mut r = routes(&[("/a", "a", false), ("/a/b/c", "c", false)], None);
        assert_eq!(r.longest, 6);
        assert_eq!(r.first().unwrap().service.as_ref(), "a");
        assert!(r.set(&PathPrefix::parse("/a/b/c", "k").unwrap(), None));
        assert_eq!(r.longest, 2);
        r.set(&PathPrefix::parse("/a", "k").unwrap(), None);
        assert_eq!((r.len(), r.longest, r.first()), (0, 0, None));
    }
}
