//! Who may use the admin listener from a browser: the rules that keep a web page on another site from reading
//! it (DNS rebinding) or running its commands (cross-site requests).
//!
//! - **Host.** A request must name the listener: an IP literal (any port: a port mapping or a port-forward
//!   changes it, and no page can rebind an address), `localhost`, or one of `allowed_hosts`. Otherwise 421. A
//!   request without a Host is not from a browser and passes. `/healthz`, `/readyz` and `/metrics` are exempt:
//!   probes and Prometheus reach them by any name, and they hold nothing a page could use.
//! - **Commands** (every method but GET and HEAD) come from the listener's own origin or from no browser at all:
//!   an `Origin` other than the request's Host, or `Sec-Fetch-Site` other than `same-origin`/`none`, is 403.
//! - Without a token, a command must also carry an `X-Reveille` header (any value, `X-Reveille: 1` in the
//!   docs): a header a page can only send with a CORS preflight, which this listener never grants, so a plain
//!   HTML form or a "simple" `fetch` cannot run one. With a token, `Authorization` does the same.
//!
//! Owns these rules only; the token's check is `super::authorized`.

use http::header::{HOST, ORIGIN};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Uri};

/// The header that makes a command a request no web page can send across sites without asking first.
pub(super) const COMMAND_HEADER: &str = "x-reveille";

/// Paths answered whatever the Host: what orchestrators and Prometheus reach by address or service name.
const ANY_HOST: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// 421: the Host names something else than this listener.
    Host(String),
    /// 403: a command from another site (what said so).
    CrossSite(String),
    /// 403: a command without `X-Reveille` and without a token configured.
    NoHeader,
}

impl Refused {
    /// The metrics label.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refused::Host(_) => "host",
            Refused::CrossSite(_) => "cross_site",
            Refused::NoHeader => "no_header",
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            Refused::Host(host) => format!(
                "misdirected request: Host {host:?} does not name this admin listener; reach it by its address \
                 (an IP literal) or localhost, or add the name to [admin] allowed_hosts (--admin-allowed-hosts)\n"
            ),
            Refused::CrossSite(why) => format!(
                "refused: a command from another site ({why}); commands are taken from the dashboard's own origin \
                 or from clients that send no Origin"
            ),
            Refused::NoHeader => "refused: commands need the header `X-Reveille: 1` (or the admin token), which a \
                                  web page on another site cannot send: curl -X POST -H 'X-Reveille: 1' URL"
                .to_string(),
        }
    }
}

/// Whether the listener's rules let `req` through. `token` says whether the commands need a token (checked
/// after these rules).
pub(super) fn check<B>(req: &Request<B>, allowed_hosts: &[String], token: bool) -> Result<(), Refused> {
    let host = host_of(req);
    if !ANY_HOST.contains(&req.uri().path()) {
        if let Some(host) = &host {
            if !names_the_listener(host, allowed_hosts) {
                return Err(Refused::Host(host.clone()));
            }
        }
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(());
    }
    cross_site(req.headers(), host.as_deref())?;
    if !token && !req.headers().contains_key(COMMAND_HEADER) {
        return Err(Refused::NoHeader);
    }
    Ok(())
}

/// The Host header, else the request target's authority (HTTP/2's `:authority`).
fn host_of<B>(req: &Request<B>) -> Option<String> {
    match req.headers().get(HOST) {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => req.uri().authority().map(|a| a.as_str().to_string()),
    }
}

/// An IP literal (any port), `localhost`, or a configured name (case-insensitive, any port).
fn names_the_listener(host: &str, allowed_hosts: &[String]) -> bool {
    let Ok(authority) = host.parse::<Authority>() else { return false };
    let name = authority.host();
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    bare.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// A command from another site: `Sec-Fetch-Site` says so, or its `Origin` is not the Host it was sent to.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Result<(), Refused> {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `same-site` too: another port of the same host is the same site.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            let site = String::from_utf8_lossy(site.as_bytes());
            return Err(Refused::CrossSite(format!("Sec-Fetch-Site: {site}")));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !host.is_some_and(|h| same_origin(&origin, h)) {
            return Err(Refused::CrossSite(format!("Origin: {origin}")));
        }
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page served at `host` (a Host header): the same
/// name and port, a missing port being the scheme's default. The scheme itself is not compared: behind a TLS
/// terminator the page is https and the Host the same.
fn same_origin(origin: &str, host: &str) -> bool {
    let Ok(origin) = origin.parse::<Uri>() else { return false };
    let (Some(scheme), Some(from)) = (origin.scheme(), origin.authority()) else { return false };
    let Ok(to) = host.parse::<Authority>() else { return false };
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    from.host().eq_ignore_ascii_case(to.host())
        && from.port_u16().unwrap_or(default) == to.port_u16().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn hosts_that_name_the_listener() {
        let allowed = vec!["admin.example.com".to_string()];
        for host in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "10.1.2.3:19090",
            "[::1]:9090",
            "[fd00::7]",
            "localhost:9090",
            "LOCALHOST",
            "admin.example.com",
            "Admin.Example.com:443",
        ] {
            assert_eq!(check(&req("GET", "/api/routes", &[("host", host)]), &allowed, false), Ok(()), "{host}");
        }
        for host in ["evil.example", "evil.example:9090", "localhost.evil.example", "127.0.0.1.nip.io:9090", "", "a b"]
        {
            let got = check(&req("GET", "/api/routes", &[("host", host)]), &allowed, false);
            assert!(matches!(got, Err(Refused::Host(_))), "{host}: {got:?}");
        }
        // Probes and Prometheus: any Host.
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(check(&req("GET", path, &[("host", "reveille-admin:9090")]), &[], false), Ok(()));
        }
        // Not a browser.
        assert_eq!(check(&req("GET", "/api/routes", &[]), &[], false), Ok(()));
    }

    #[test]
    fn commands_from_another_site_are_refused() {
        let own = [("host", "127.0.0.1:9090"), ("x-reveille", "1")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut h = own.to_vec();
            h.extend_from_slice(extra);
            check(&req("POST", "/api/services/a/sleep", &h), &[], false)
        };
        assert_eq!(with(&[]), Ok(()), "curl: no Origin");
        assert_eq!(with(&[("origin", "http://127.0.0.1:9090"), ("sec-fetch-site", "same-origin")]), Ok(()));
        for extra in [
            [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
            [("origin", "https://evil.example"), ("accept", "*/*")],
            [("origin", "http://127.0.0.1:8000"), ("accept", "*/*")],
            [("origin", "null"), ("accept", "*/*")],
            [("sec-fetch-site", "same-site"), ("accept", "*/*")],
        ] {
            assert!(matches!(with(&extra), Err(Refused::CrossSite(_))), "{extra:?}");
        }
        // Default ports, and a TLS terminator in front.
        let h = [("host", "admin.example.com"), ("origin", "https://admin.example.com"), ("x-reveille", "1")];
        assert_eq!(check(&req("POST", "/api/x", &h), &["admin.example.com".into()], false), Ok(()));
        let h = [("host", "localhost:80"), ("origin", "http://localhost"), ("x-reveille", "1")];
        assert_eq!(check(&req("POST", "/api/x", &h), &[], false), Ok(()));
    }

    #[test]
    fn without_a_token_commands_need_the_header() {
        let h = [("host", "127.0.0.1:9090"), ("content-type", "application/x-www-form-urlencoded")];
        assert_eq!(check(&req("POST", "/api/services/a/wake", &h), &[], false), Err(Refused::NoHeader));
        assert_eq!(check(&req("POST", "/api/services/a/wake", &h), &[], true), Ok(()), "the token is checked next");
        assert_eq!(check(&req("GET", "/api/services", &h), &[], false), Ok(()), "reading needs nothing");
    }
}
