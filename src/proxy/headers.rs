//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1) and `X-Forwarded-*`.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the message asks for a WebSocket upgrade (`Connection: upgrade` plus `Upgrade: websocket`);
/// returns the `Upgrade` value to pass on. Other protocols (notably `h2c`, a known way to smuggle requests past
/// a proxy) are not passed: their upgrade headers are stripped like any hop-by-hop header.
pub(crate) fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(UPGRADE)?;
    if !upgrade.to_str().is_ok_and(|u| u.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket"))) {
        return None;
    }
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// Removes hop-by-hop headers: those named in `Connection`, the fixed list, and every `Proxy-*` header.
/// When `upgrade` is given, `Connection: upgrade` and `Upgrade: <value>` are put back so the upgrade passes.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // `Connection: host` must not make the request lose its Host.
            if name != HOST {
                headers.remove(name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in [&KEEP_ALIVE, &TE, &TRAILER, &TRANSFER_ENCODING, &UPGRADE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    // Proxy-Authorization, Proxy-Authenticate and friends are for the hop they were sent on.
    let proxy_named: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy_named {
        headers.remove(name);
    }
    if let Some(u) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u.clone());
    }
}

/// Appends the client address to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
/// `client_ip` is prepared once per connection, so the usual case (no incoming `X-Forwarded-For`) does not
/// allocate.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    host: Option<HeaderValue>,
) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter();
    let xff = match (prior.next(), prior.next()) {
        (None, _) => client_ip.clone(),
        (Some(first), None) => join(&[first.as_bytes()], client_ip),
        (Some(_), Some(_)) => {
            let all: Vec<&[u8]> = headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
            join(&all, client_ip)
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

fn join(prior: &[&[u8]], client_ip: &HeaderValue) -> HeaderValue {
    let mut out = Vec::with_capacity(prior.iter().map(|p| p.len() + 2).sum::<usize>() + client_ip.len());
    for p in prior {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    // Built from valid header values and ", ": always valid.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| client_ip.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upgrade_kept() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        let up = upgrade_requested(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, up.as_ref());
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("10.1.1.1");
        let proto = HeaderValue::from_static("http");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &ip, &proto, None);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.1.1.1");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(&X_FORWARDED_FOR, "2.2.2.2".parse().unwrap());
        add_forwarded(&mut h, &ip, &proto, Some(HeaderValue::from_static("a.com")));
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "1.1.1.1, 2.2.2.2, 10.1.1.1");
        assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "a.com");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    }
}
