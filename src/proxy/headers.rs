//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1) and the forwarding
//! headers (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`), which only peers in `trusted_proxies` may supply.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, UPGRADE};
use ipnet::IpNet;

use crate::upstream::{connection_named, hop_by_hop_index, Appended, HOP_BY_HOP};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    // One pass over the names, without hashing any: most requests carry no hop-by-hop header, and then the
    // removals (each a hash and a probe) are skipped. This was 7% of the instructions of a request.
    let found = HopByHop::find(headers);
    if found.any() {
        remove_hop_by_hop(headers, &found);
    }
    if let Some(u) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u.clone());
    }
}

/// What one pass over a message's field names found for [`strip_hop_by_hop`].
struct HopByHop {
    /// Which of the fixed names are present, so that each removal finds something.
    present: [bool; HOP_BY_HOP.len()],
    /// Another `Proxy-*` field: Proxy-Authorization, Proxy-Authenticate and friends are for the hop they were
    /// sent on.
    other_proxy: bool,
    /// A field named `close`, which `Connection: close` then names (the token is an option otherwise).
    close_field: bool,
}

impl HopByHop {
    fn find(headers: &HeaderMap) -> Self {
        let mut found = Self { present: [false; HOP_BY_HOP.len()], other_proxy: false, close_field: false };
        for name in headers.keys() {
            match hop_by_hop_index(name) {
                Some(i) => found.present[i] = true,
                None => {
                    let name = name.as_str();
                    found.other_proxy |= name.starts_with("proxy-");
                    found.close_field |= name == "close";
                }
            }
        }
        found
    }

    fn any(&self) -> bool {
        self.present.contains(&true) || self.other_proxy
    }
}

/// [`strip_hop_by_hop`]'s removals, once there is something to remove. The usual cases are a response's
/// `Connection: keep-alive` and a request's `Connection: close` from hyper's server sides (reveille's own
/// HTTP/1.1 one keeps such a field out of the request, `http1::parse_request`): each removes that one field,
/// with no allocation and no name parsed.
fn remove_hop_by_hop(headers: &mut HeaderMap, found: &HopByHop) {
    // Fields that `Connection` names beyond the fixed list (rare): collected, then removed.
    if found.present[0] {
        // `HOP_BY_HOP[0]`: `Connection`.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                // `close` is an option, not usually a field; a field by that name still goes.
                if token.trim_ascii().eq_ignore_ascii_case(b"close") && !found.close_field {
                    continue;
                }
                named.extend(connection_named(token));
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found.present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if found.other_proxy {
        remove_where(headers, |k| k.as_str().starts_with("proxy-"));
    }
}

/// The connection's peer as the forwarding headers need it, prepared once per connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The peer's address; an IPv4-mapped IPv6 address (an IPv4 client of a dual-stack listener) as IPv4.
    ip: IpAddr,
    /// `ip` as a header value.
    value: HeaderValue,
    /// The peer is in `trusted_proxies`: the forwarding headers it sends are kept and extended.
    trusted: bool,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr, trusted_proxies: &[IpNet]) -> Self {
        let ip = ip.to_canonical();
        // An address always formats as a valid header value. IPv4 by hand: `Display` for `Ipv4Addr` goes
        // through the formatting machinery (padding, a `Formatter` per octet), about 1 300 instructions of
        // every new connection, and a connection per request pays it every time.
        // The same client again (its next connection; many clients behind one NAT or load balancer): the text
        // made for it last on this thread is shared, not made again (about 400 instructions of a connection).
        let value = LAST_PEER.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((seen, value)) if *seen == ip => value.clone(),
                _ => {
                    let value = Self::text(ip);
                    *last = Some((ip, value.clone()));
                    value
                }
            }
        });
        Self { ip, value, trusted: is_trusted(trusted_proxies, ip) }
    }

    fn text(ip: IpAddr) -> HeaderValue {
        let value = match ip {
            // Its bytes owned by the value's own shared block: a clone (every request's `X-Forwarded-For`, the
            // next connection from the same address) shares it, where copied into a plain buffer it would
            // allocate once more then.
            IpAddr::V4(v4) => HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(ipv4_text(v4))).ok(),
            IpAddr::V6(_) => HeaderValue::try_from(ip.to_string()).ok(),
        };
        value.unwrap_or(HeaderValue::from_static("unknown"))
    }

    /// The peer's address as text (the access log's `peer`).
    pub(crate) fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or("-")
    }
}

thread_local! {
    /// The last peer address a connection on this thread came from, and its text.
    static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
}

/// An IPv4 address in dotted decimal (`Ipv4Addr`'s own `Display` text), with no formatter (`itoa`'s digits).
fn ipv4_text(ip: std::net::Ipv4Addr) -> ArrayText {
    let mut out = ArrayText { buf: [0; 15], len: 0 };
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        for &digit in itoa::Buffer::new().format(octet).as_bytes() {
            out.push(digit);
        }
    }
    out
}

/// Up to 15 bytes of text on the stack: an IPv4 address's longest.
struct ArrayText {
    buf: [u8; 15],
    len: usize,
}

impl ArrayText {
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
}

impl AsRef<[u8]> for ArrayText {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Whether `ip` is in one of `nets`; an IPv4-mapped IPv6 address matches the IPv4 networks too.
fn is_trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let canonical = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip) || n.contains(&canonical))
}

/// Headers that tell the backend who the client is and how it came in: any `X-Forwarded-*`, `Forwarded` and
/// `X-Real-IP`. Only a trusted proxy may send them.
fn is_forwarding(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-forwarded-") || *name == FORWARDED || *name == X_REAL_IP
}

/// Sets the forwarding headers. From an untrusted peer, the forwarding headers it sent are dropped first (an
/// app must not learn the client's address from the client), then `X-Forwarded-For` and `X-Real-IP` name the
/// peer, and `X-Forwarded-Proto` and `X-Forwarded-Host` are set. From a trusted proxy they are kept and
/// extended: the peer is appended to `X-Forwarded-For` (and to `Forwarded`, when there is one),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are set only if absent, and `X-Real-IP` names the client found by
/// [`real_ip`]. `peer` is prepared once per connection, so the usual case (untrusted, no forwarding headers)
/// does not allocate.
///
/// For an untrusted peer the four fields are returned rather than inserted, to be sent after the map's (see
/// [`Appended`]); they replace every forwarding field of the map, so the bytes are those the map would carry.
/// From a trusted proxy the map itself is extended, and nothing is returned.
#[must_use = "the forwarding fields of an untrusted peer's request are returned, not inserted"]
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &Peer,
    trusted_proxies: &[IpNet],
    proto: &HeaderValue,
    host: Option<HeaderValue>,
) -> Appended {
    let mut appended = Appended::default();
    if !peer.trusted {
        remove_where(headers, is_forwarding);
        appended.push(&X_FORWARDED_FOR, peer.value.clone());
        appended.push(&X_FORWARDED_PROTO, proto.clone());
        if let Some(host) = host {
            appended.push(&X_FORWARDED_HOST, host);
        }
        appended.push(&X_REAL_IP, peer.value.clone());
        return appended;
    }
    append_to_list(headers, &X_FORWARDED_FOR, &peer.value);
    if headers.contains_key(FORWARDED) {
        append_to_list(headers, &FORWARDED, &forwarded_element(peer.ip, proto));
    }
    headers.entry(&X_FORWARDED_PROTO).or_insert_with(|| proto.clone());
    if let Some(host) = host {
        headers.entry(&X_FORWARDED_HOST).or_insert(host);
    }
    let real = real_ip(headers.get(&X_FORWARDED_FOR), peer, trusted_proxies);
    headers.insert(X_REAL_IP.clone(), real);
    appended
}

/// The client's address behind trusted proxies: walking `X-Forwarded-For` from the right (each proxy appends
/// the address it saw), the first address outside `trusted_proxies`; the leftmost when all are trusted; the
/// peer when there are none. An entry that is not an IP address stops the walk, and the last trusted address
/// walked is taken: whatever stands left of it was written by someone no trusted proxy vouches for.
fn real_ip(xff: Option<&HeaderValue>, peer: &Peer, trusted_proxies: &[IpNet]) -> HeaderValue {
    let mut client = None;
    for entry in xff.map(HeaderValue::as_bytes).unwrap_or_default().rsplit(|&b| b == b',') {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(|e| e.trim().parse::<IpAddr>().ok()) else {
            break;
        };
        let ip = ip.to_canonical();
        client = Some(ip);
        if !is_trusted(trusted_proxies, ip) {
            break;
        }
    }
    match client {
        Some(ip) if ip != peer.ip => HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| peer.value.clone()),
        _ => peer.value.clone(),
    }
}

/// A `Forwarded` element for the peer, `for=<ip>;proto=<proto>`; an IPv6 address bracketed and quoted as
/// RFC 7239 §6 requires.
fn forwarded_element(ip: IpAddr, proto: &HeaderValue) -> HeaderValue {
    let proto = proto.to_str().unwrap_or("http");
    let element = match ip {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    };
    HeaderValue::try_from(element).unwrap_or(HeaderValue::from_static("for=unknown"))
}

/// Appends `value` to the comma-separated list in header `name`, leaving one field.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut prior = headers.get_all(name).iter();
    let list = match (prior.next(), prior.next()) {
        (None, _) => value.clone(),
        (Some(first), None) => join(&[first.as_bytes()], value),
        (Some(_), Some(_)) => {
            let all: Vec<&[u8]> = headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
            join(&all, value)
        }
    };
    headers.insert(name.clone(), list);
}

fn join(prior: &[&[u8]], last: &HeaderValue) -> HeaderValue {
    let mut out = Vec::with_capacity(prior.iter().map(|p| p.len() + 2).sum::<usize>() + last.len());
    for p in prior {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(last.as_bytes());
    // Built from valid header values and ", ": always valid.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| last.clone())
}

/// Removes every header whose name satisfies `pred`; allocates only when one does.
fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|k| pred(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::header::{HOST, TE};

    use super::*;

    #[test]
    fn ipv4_text_is_display_text() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.9.99.100", "255.255.255.255", "1.20.199.5"] {
            let v4: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4_text(v4).as_ref(), ip.as_bytes());
        }
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Peer::new(mapped, &[]).as_str(), "192.0.2.7");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(Peer::new(v6, &[]).as_str(), "2001:db8::1");
    }

    #[test]
    fn connection_fields_kept_out_by_the_parser_still_strip_what_they_name() {
        let limits = crate::http1::HeadLimits { max_size: 64 * 1024, max_fields: 100 };
        let cases: [(&[u8], bool); 5] = [
            (b"GET / HTTP/1.1\r\nConnection: close\r\nClose: x\r\nKeep: y\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep: y\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nConnection: KEEP-ALIVE\r\nKeep-Alive: timeout=5\r\nKeep: y\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nKeep: y\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: close\r\nKeep: y\r\n\r\n", false),
        ];
        for (text, keep_alive) in cases {
            let mut buf = bytes::BytesMut::from(text);
            let parsed = crate::http1::parse_request(&mut buf, limits).unwrap().unwrap();
            assert_eq!(parsed.keep_alive, keep_alive, "{}", String::from_utf8_lossy(text));
            let mut headers = parsed.request.headers().clone();
            strip_hop_by_hop(&mut headers, None);
            let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["keep"], "only the end-to-end field goes on: {}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn the_last_peers_text_is_reused_only_for_the_same_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        for ip in ["10.1.2.3", "10.1.2.3", "192.0.2.9", "::ffff:192.0.2.9", "2001:db8::2", "10.1.2.3"] {
            let peer = Peer::new(ip.parse().unwrap(), &trusted);
            let canonical = ip.trim_start_matches("::ffff:");
            assert_eq!(peer.as_str(), canonical, "{ip}");
            assert_eq!(peer.trusted, canonical.starts_with("10."), "trust is judged each time: {ip}");
        }
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_found_and_removed() {
        // The one-pass check must see each of them without a `Connection` header beside it.
        for name in ["keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization", "proxy-x"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), "1".parse().unwrap());
            h.insert("x-keep", "yes".parse().unwrap());
            h.append("x-keep", "twice".parse().unwrap());
            strip_hop_by_hop(&mut h, None);
            assert_eq!(h.len(), 2, "{name}: {h:?}");
            assert_eq!(h.get_all("x-keep").iter().count(), 2, "{name}");
        }
        let mut plain = HeaderMap::new();
        plain.insert(HOST, "a.test".parse().unwrap());
        plain.insert("accept", "*/*".parse().unwrap());
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, None);
        assert_eq!(plain, before);
    }

    #[test]
    fn strips_named_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "close, X-Secret".parse().unwrap());
        h.append(CONNECTION, "keep-alive".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("close", "named by Connection".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn connection_close_goes_alone_when_no_field_is_named_close() {
        let mut h = HeaderMap::new();
        h.insert(HOST, "a.test".parse().unwrap());
        h.insert(CONNECTION, "Close".parse().unwrap());
        h.insert("x-close", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(HOST) && h.contains_key("x-close"));
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    /// `add_forwarded` for a request from `peer` over plain HTTP to `app.test`.
    fn forward(h: &mut HeaderMap, peer: &str, trusted: &[IpNet]) {
        let peer = Peer::new(peer.parse().unwrap(), trusted);
        add_forwarded(h, &peer, trusted, &HeaderValue::from_static("http"), Some(HeaderValue::from_static("app.test")))
            .insert_into(h);
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_forged_headers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bank.test"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "edge"),
            ("x-forwardedness", "kept"),
        ]);
        forward(&mut h, "192.0.2.10", &nets(&["10.0.0.0/8"]));
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.10"]);
        assert_eq!(get(&h, "x-real-ip"), ["192.0.2.10"]);
        assert_eq!(get(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["app.test"]);
        assert_eq!(get(&h, "x-forwardedness"), ["kept"]);
        for gone in ["forwarded", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server"] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
        assert_eq!(h.len(), 5, "{h:?}");

        // No list at all trusts no one; an IPv6 peer is written as is.
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        forward(&mut h, "2001:db8::7", &[]);
        assert_eq!(get(&h, "x-forwarded-for"), ["2001:db8::7"]);
        assert_eq!(get(&h, "x-real-ip"), ["2001:db8::7"]);
    }

    #[test]
    fn trusted_peer_headers_are_extended() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=203.0.113.7"),
            ("forwarded", "for=198.51.100.2;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
        ]);
        forward(&mut h, "10.0.0.2", &trusted);
        assert_eq!(get(&h, "x-forwarded-for"), ["203.0.113.7, 198.51.100.2, 10.0.0.2"]);
        assert_eq!(get(&h, "forwarded"), ["for=203.0.113.7, for=198.51.100.2;proto=https, for=10.0.0.2;proto=http"]);
        assert_eq!(get(&h, "x-real-ip"), ["198.51.100.2"]);
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&h, "x-forwarded-port"), ["443"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["app.test"], "set when absent");

        // Nothing sent: the same headers as from an untrusted peer, and no `Forwarded` of reveille's own.
        let mut h = HeaderMap::new();
        forward(&mut h, "10.0.0.2", &trusted);
        assert_eq!(get(&h, "x-forwarded-for"), ["10.0.0.2"]);
        assert_eq!(get(&h, "x-real-ip"), ["10.0.0.2"]);
        assert_eq!(get(&h, "x-forwarded-proto"), ["http"]);
        assert!(!h.contains_key(FORWARDED));
    }

    #[test]
    fn ipv6_peers_and_mapped_ipv4() {
        let trusted = nets(&["2001:db8::/32", "10.0.0.0/8"]);
        let mut h = headers(&[("x-forwarded-for", "2001:db8:ffff::9, 2001:db8::5"), ("forwarded", "for=unknown")]);
        forward(&mut h, "2001:db8::1", &trusted);
        assert_eq!(get(&h, "forwarded"), ["for=unknown, for=\"[2001:db8::1]\";proto=http"]);
        // Every hop is trusted: the leftmost is the client.
        assert_eq!(get(&h, "x-real-ip"), ["2001:db8:ffff::9"]);

        // An IPv4 client of a dual-stack listener matches IPv4 networks and is written as IPv4.
        let mut h = headers(&[("x-forwarded-for", "::ffff:203.0.113.7")]);
        forward(&mut h, "::ffff:10.0.0.2", &trusted);
        assert_eq!(get(&h, "x-forwarded-for"), ["::ffff:203.0.113.7, 10.0.0.2"]);
        assert_eq!(get(&h, "x-real-ip"), ["203.0.113.7"]);
        let peer = Peer::new("::ffff:192.0.2.1".parse().unwrap(), &trusted);
        assert!(!peer.trusted);
        assert_eq!(peer.value, "192.0.2.1");
    }

    #[test]
    fn real_ip_walks_past_trusted_hops_and_stops_at_garbage() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16", "172.16.0.9/32"]);
        let real = |xff: &'static str| {
            let mut h = headers(&[("x-forwarded-for", xff)]);
            forward(&mut h, "10.0.0.2", &trusted);
            h.get("x-real-ip").unwrap().to_str().unwrap().to_string()
        };
        // The rightmost untrusted address, not the leftmost one the client may have made up.
        assert_eq!(real("6.6.6.6, 198.51.100.9, 192.168.1.1, 172.16.0.9, 10.0.0.5"), "198.51.100.9");
        assert_eq!(real("198.51.100.9,10.0.0.5"), "198.51.100.9");
        assert_eq!(real("192.168.1.1, 10.0.0.5"), "192.168.1.1");
        // Garbage (ports included) is not believed, nor anything left of it: the last trusted hop is taken.
        assert_eq!(real("198.51.100.9, bogus, 10.0.0.5"), "10.0.0.5");
        assert_eq!(real("198.51.100.9, 203.0.113.1:4000"), "10.0.0.2");
        assert_eq!(real(""), "10.0.0.2");
    }
}
