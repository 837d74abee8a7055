//! Backend addresses: `host:port` or `http://host:port` (HTTP/1.1), `h2c://host:port` (HTTP/2 with prior
//! knowledge) or `https://host:port` (TLS, HTTP/2 or HTTP/1.1 by ALPN), parsed once when a table is built so the request path
//! only copies a ready `Authority`; and each backend's health, what the proxy saw of its last attempts at it
//! (answers, refused or timed-out connections, timeouts, 5xx), which the admin API and the dashboard show.
//!
//! The health is written on the request path, so it is atomics only: a response below 500 refreshes one
//! timestamp (at most every [`OK_RESOLUTION_MS`], so a busy backend's cache line is mostly read, not written),
//! and a failure, the rare case, writes its time and kind. Reading it turns those times into a state over
//! [`HEALTH_WINDOW`]; see [`Health`].
//!
//! A backend may also be ejected: taken out of its service's rotation for a while after failing too often in a
//! row (the policy is the service's, `balance.rs`; the state is here, atomics too, as the rotation reads it on
//! every step: one relaxed load while it is not ejected).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::RouteError;

/// How long what reveille saw of a backend counts towards its health: a backend that nobody tried for this long
/// is `unknown` again.
pub(crate) const HEALTH_WINDOW: Duration = Duration::from_secs(60);

/// A backend's answer refreshes its "last answered" time at most this often (in milliseconds): the write is
/// what costs on a busy backend, shared by every worker thread.
const OK_RESOLUTION_MS: u64 = 250;

/// One upstream address of a service. Cloned once per request (for the access log and the error messages):
/// one reference count, whatever it holds.
#[derive(Clone)]
pub struct Backend(Arc<Inner>);

struct Inner {
    /// What the request URI to the backend is built from.
    authority: Authority,
    /// How reveille speaks to it.
    protocol: Protocol,
    /// The address as the operator wrote it, for logs, metrics and the admin API.
    display: Arc<str>,
    /// What the proxy saw of it; it lives with the definition, so a redefined service starts again from `unknown`.
    seen: Seen,
    /// Whether, until when and how often it was taken out of the rotation.
    ejection: EjectionState,
    /// Requests sent to it whose response has not ended, counted only for services that balance by
    /// `least_request` (see [`Load`]).
    in_flight: AtomicU32,
}

impl PartialEq for Backend {
    /// The same address, written the same way; what was seen of it does not count.
    fn eq(&self, other: &Self) -> bool {
        self.0.authority == other.0.authority
            && self.0.protocol == other.0.protocol
            && self.0.display == other.0.display
    }
}

impl Eq for Backend {}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("authority", &self.0.authority)
            .field("protocol", &self.0.protocol)
            .field("display", &self.0.display)
            .finish()
    }
}

/// How reveille speaks to a backend, from its address's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    /// `host:port` or `http://`: HTTP/1.1 over TCP, reveille's own client (`upstream`).
    Http1,
    /// `h2c://`: HTTP/2 over TCP with prior knowledge (RFC 9113 §3.3).
    H2c,
    /// `https://`: TLS; HTTP/2 or HTTP/1.1, as the backend picks by ALPN.
    Https,
}

impl Protocol {
    /// The scheme as written in a backend address.
    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
        }
    }

    /// The port an address of this scheme without one gets.
    fn default_port(self) -> u16 {
        match self {
            Protocol::Http1 | Protocol::H2c => 80,
            Protocol::Https => 443,
        }
    }
}

/// Why an attempt at a backend failed, as its health says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Failure {
    /// The connection was refused.
    Refused = 1,
    /// The connection was not made within the connect timeout.
    ConnectTimeout = 2,
    /// The connection failed otherwise (no route, DNS...).
    Connect = 3,
    /// No response head within the response timeout.
    Timeout = 4,
    /// The backend closed or broke the exchange without an answer.
    Protocol = 5,
    /// It answered 500 or above.
    ServerError = 6,
    /// The TLS handshake failed (its certificate does not verify, say): the address answers, the backend cannot
    /// be trusted. Apart from `Connect`, as it asks the operator for another fix.
    Tls = 7,
}

impl Failure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Connect => "connect_failed",
            Failure::Timeout => "timeout",
            Failure::Protocol => "protocol",
            Failure::ServerError => "5xx",
            Failure::Tls => "tls",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Failure::Refused,
            2 => Failure::ConnectTimeout,
            3 => Failure::Connect,
            4 => Failure::Timeout,
            5 => Failure::Protocol,
            6 => Failure::ServerError,
            7 => Failure::Tls,
            _ => return None,
        })
    }
}

/// What reveille saw of one backend: times in milliseconds since [`clock_base`], plus one (0: never).
#[derive(Debug, Default)]
struct Seen {
    last_ok: AtomicU64,
    last_failure: AtomicU64,
    failure: AtomicU8,
    /// Failed attempts since its last answer.
    failures: AtomicU32,
}

/// The ejection time of a backend that an active health check took out: never over by time, only by a check that
/// passes.
const CHECK_FAILING: u64 = u64::MAX;

/// A backend's ejections: times as in [`Seen`].
#[derive(Debug, Default)]
struct EjectionState {
    /// Until when the rotation passes it over; 0: it is in.
    until: AtomicU64,
    /// Ejections since it last answered: each one doubles the next one's length.
    repeats: AtomicU32,
    /// Ejections in all, for the admin API.
    total: AtomicU32,
}

/// The health of a backend, or of a service from its backends'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It answered within the window, and did not fail in it.
    Up,
    /// It answered last, but failed within the window (a backend); some backends are up or degraded and some
    /// down, or all degraded (a service).
    Degraded,
    /// Its last attempt failed, within the window (a backend); every backend tried within the window is down
    /// (a service).
    Down,
    /// Nothing tried within the window.
    Unknown,
}

impl Health {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }

    /// A service's health from its backends': the ones tried within the window decide (a backend nobody tried
    /// says nothing); all down is down, all up is up, anything else degraded.
    pub(crate) fn of_service(backends: impl IntoIterator<Item = Health>) -> Health {
        let (mut up, mut down, mut seen) = (0usize, 0usize, 0usize);
        for h in backends {
            match h {
                Health::Up => up += 1,
                Health::Down => down += 1,
                Health::Degraded => {}
                Health::Unknown => continue,
            }
            seen += 1;
        }
        match seen {
            0 => Health::Unknown,
            n if n == up => Health::Up,
            n if n == down => Health::Down,
            _ => Health::Degraded,
        }
    }
}

/// A backend's health as read at one time, for the admin API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthView {
    pub(crate) health: Health,
    /// How long ago it last answered (below 500).
    pub(crate) last_ok: Option<Duration>,
    /// How long ago, and why, an attempt last failed.
    pub(crate) last_failure: Option<(Duration, Failure)>,
    /// Failed attempts since its last answer.
    pub(crate) failures: u32,
    /// How long it stays out of the rotation, when it is ejected.
    pub(crate) ejected_for: Option<Duration>,
    /// How often it was ejected.
    pub(crate) ejections: u32,
    /// Its active health check fails: it is out until one passes.
    pub(crate) check_failing: bool,
}

/// The instant the health times count from: the first time anything asks.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` as a health time (milliseconds since the base, plus one so that 0 stays "never").
#[inline]
pub(super) fn stamp(at: Instant) -> u64 {
    at.saturating_duration_since(clock_base()).as_millis() as u64 + 1
}

impl Backend {
    fn new(authority: Authority, protocol: Protocol, display: Arc<str>) -> Self {
        Self(Arc::new(Inner {
            authority,
            protocol,
            display,
            seen: Seen::default(),
            ejection: EjectionState::default(),
            in_flight: AtomicU32::new(0),
        }))
    }

    /// A backend at a socket address (a container's address, found at run time).
    pub fn from_addr(addr: std::net::SocketAddr) -> Self {
        let text = addr.to_string();
        // A formatted socket address is always a valid authority.
        let authority = text.parse().unwrap_or_else(|_| Authority::from_static("0.0.0.0:1"));
        Self::new(authority, Protocol::Http1, Arc::from(text))
    }

    /// Parses `host:port`, or `http://`, `h2c://` or `https://` followed by `host[:port]` (port 80, 80 and 443
    /// by default with the scheme). Anything else — another scheme, a path, user info, a missing port — is an
    /// error naming the reason.
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let bad = |reason: &str| RouteError::BadBackend { addr: raw.to_string(), reason: reason.to_string() };
        let trimmed = raw.trim();
        let (protocol, rest, default_port) = match trimmed.split_once("://") {
            None => (Protocol::Http1, trimmed, None),
            Some((scheme, rest)) => {
                let protocol = match scheme.to_ascii_lowercase().as_str() {
                    "http" => Protocol::Http1,
                    "h2c" => Protocol::H2c,
                    "https" => Protocol::Https,
                    _ => return Err(bad("the scheme is http://, h2c:// or https:// (or none: host:port is HTTP/1.1)")),
                };
                (protocol, rest, Some(protocol.default_port()))
            }
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
        Ok(Self::new(authority, protocol, Arc::from(trimmed)))
    }

    /// `host:port` to connect to.
    pub fn authority(&self) -> &Authority {
        &self.0.authority
    }

    /// How reveille speaks to it.
    pub(crate) fn protocol(&self) -> Protocol {
        self.0.protocol
    }

    /// The address as configured.
    pub fn as_str(&self) -> &str {
        &self.0.display
    }

    /// It answered (below 500) a request that started `at`. Cheap: two loads, and a store at most every
    /// [`OK_RESOLUTION_MS`] or after a failure.
    #[inline]
    pub(crate) fn answered(&self, at: Instant) {
        let seen = &self.0.seen;
        let t = stamp(at);
        let last = seen.last_ok.load(Ordering::Relaxed);
        let failed = seen.last_failure.load(Ordering::Relaxed);
        if t >= last + OK_RESOLUTION_MS || failed >= last {
            // After a failure, the answer must read as later than it (a request started before the failure
            // may answer after it): the greater of the two times.
            seen.last_ok.store(t.max(failed + 1).max(last), Ordering::Relaxed);
            if failed != 0 {
                seen.failures.store(0, Ordering::Relaxed);
                // It answers: its next ejection, if any, is a first one again.
                self.0.ejection.repeats.store(0, Ordering::Relaxed);
            }
        }
    }

    /// An attempt at it failed, now. Returns its failures since its last answer (or its last ejection).
    pub(crate) fn failed(&self, why: Failure) -> u32 {
        let seen = &self.0.seen;
        seen.failure.store(why as u8, Ordering::Relaxed);
        seen.last_failure.fetch_max(stamp(Instant::now()), Ordering::Relaxed);
        seen.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Its identity while it lives (not its address: a redefined service's backend is another one).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// An active health check failed: it is out of the rotation until one passes. True when that takes it out
    /// (it was in, or only passively ejected).
    pub(crate) fn check_failed(&self) -> bool {
        self.0.ejection.until.swap(CHECK_FAILING, Ordering::Relaxed) != CHECK_FAILING
    }

    /// An active health check passed: back in if a failed one had taken it out. True when that puts it back.
    pub(crate) fn check_passed(&self) -> bool {
        let back = self.end_ejection(CHECK_FAILING);
        if back {
            self.0.ejection.repeats.store(0, Ordering::Relaxed);
        }
        back
    }

    /// Requests in flight at it, when its service balances by `least_request`.
    #[inline]
    pub(crate) fn in_flight(&self) -> u32 {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// Until when (a health time, see [`stamp`]) it is ejected; 0 when it is in. The rotation's one load.
    #[inline]
    pub(super) fn ejected_until(&self) -> u64 {
        self.0.ejection.until.load(Ordering::Relaxed)
    }

    /// Ejects it from `now` for `length(repeats)`, where `repeats` counts its ejections since it last answered;
    /// its failures count from 0 again. Returns the length; `None` when it was out already (a failed health
    /// check took it out meanwhile, which only a passing check ends). The caller (its service) decides that it
    /// may.
    pub(super) fn eject(&self, now: Instant, length: impl FnOnce(u32) -> Duration) -> Option<Duration> {
        let e = &self.0.ejection;
        let repeats = e.repeats.load(Ordering::Relaxed);
        let d = length(repeats);
        e.until.compare_exchange(0, stamp(now + d).max(1), Ordering::Relaxed, Ordering::Relaxed).ok()?;
        e.repeats.store(repeats.saturating_add(1), Ordering::Relaxed);
        e.total.fetch_add(1, Ordering::Relaxed);
        self.0.seen.failures.store(0, Ordering::Relaxed);
        Some(d)
    }

    /// Ends an ejection that lasted until `until` (as [`Self::ejected_until`] read it): back in, it gets
    /// `consecutive_failures` attempts again (what requests sent before its ejection saw while it was out does
    /// not count). True for the one caller that ended it, when several notice at once.
    pub(super) fn end_ejection(&self, until: u64) -> bool {
        let ended = self.0.ejection.until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if ended {
            self.0.seen.failures.store(0, Ordering::Relaxed);
        }
        ended
    }

    /// Its health at `now` (see [`Health`]): down if its last attempt within [`HEALTH_WINDOW`] failed, degraded
    /// if it answered since a failure within the window, up if it answered within the window without failing,
    /// unknown if nothing was tried within it.
    pub(crate) fn health(&self, now: Instant) -> HealthView {
        let seen = &self.0.seen;
        let now = stamp(now);
        let ago = |t: u64| (t != 0).then(|| Duration::from_millis(now.saturating_sub(t)));
        let ok = seen.last_ok.load(Ordering::Relaxed);
        let failed = seen.last_failure.load(Ordering::Relaxed);
        let window = HEALTH_WINDOW.as_millis() as u64;
        let recent = |t: u64| t != 0 && now.saturating_sub(t) <= window;
        let health = match (recent(ok), recent(failed)) {
            (_, true) if failed >= ok => Health::Down,
            (true, true) => Health::Degraded,
            (true, false) => Health::Up,
            (false, _) => Health::Unknown,
        };
        HealthView {
            health,
            last_ok: ago(ok),
            last_failure: ago(failed).zip(Failure::from_u8(seen.failure.load(Ordering::Relaxed))),
            failures: seen.failures.load(Ordering::Relaxed),
            ejected_for: match self.ejected_until() {
                0 | CHECK_FAILING => None,
                until => until.checked_sub(now).filter(|d| *d > 0).map(Duration::from_millis),
            },
            check_failing: self.ejected_until() == CHECK_FAILING,
            ejections: self.0.ejection.total.load(Ordering::Relaxed),
        }
    }
}

/// One request in flight at a backend, for `least_request`: counted from the attempt's start until the guard is
/// dropped, which the response body does when it ends or is dropped. A clone is one more request in flight.
#[derive(Debug)]
pub(crate) struct Load(Backend);

impl Load {
    /// Counts one more request at `backend`.
    pub(crate) fn start(backend: &Backend) -> Self {
        backend.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend.clone())
    }
}

impl Clone for Load {
    fn clone(&self) -> Self {
        Self::start(&self.0)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.display)
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
        let h2c = Backend::parse("h2c://grpc.internal").unwrap();
        assert_eq!((h2c.authority().as_str(), h2c.protocol()), ("grpc.internal:80", Protocol::H2c));
        let tls = Backend::parse("HTTPS://api.internal").unwrap();
        assert_eq!((tls.authority().as_str(), tls.protocol()), ("api.internal:443", Protocol::Https));
        assert_eq!(Backend::parse("https://10.0.0.7:8443").unwrap().authority().as_str(), "10.0.0.7:8443");
        assert_eq!(Backend::parse("10.0.0.5:8080").unwrap().protocol(), Protocol::Http1);
        // The same address spoken to differently is another backend.
        assert_ne!(Backend::parse("h2c://a:1").unwrap(), Backend::parse("http://a:1").unwrap());
        assert!(Backend::parse("ftp://a:1").unwrap_err().to_string().contains("h2c://"));
        for bad in [
            "",
            "10.0.0.5",
            "ftp://a:1",
            "h2c://",
            "https://a:1/x",
            "a:1/x",
            "u@a:1",
            "a:0",
            "a:99999",
            "a b:1",
            "http://",
        ] {
            assert!(Backend::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = Backend::parse("127.0.0.1:99999").unwrap_err().to_string();
        assert!(e.contains("port out of range") && !e.contains("missing port"), "{e}");
        assert!(Backend::parse("10.0.0.5").unwrap_err().to_string().contains("missing port"));
    }

    #[test]
    fn health_follows_the_last_attempts() {
        let b = Backend::parse("127.0.0.1:1").unwrap();
        let now = Instant::now();
        assert_eq!(b.health(now).health, Health::Unknown);
        b.failed(Failure::Refused);
        let v = b.health(Instant::now());
        assert_eq!((v.health, v.failures), (Health::Down, 1));
        assert_eq!(v.last_failure.map(|(_, f)| f), Some(Failure::Refused));
        // Answered since: degraded while the failure is within the window, up after it.
        std::thread::sleep(Duration::from_millis(3));
        b.answered(Instant::now());
        assert_eq!(b.health(Instant::now()).health, Health::Degraded);
        assert_eq!(b.health(Instant::now()).failures, 0);
        assert_eq!(b.health(Instant::now() + HEALTH_WINDOW + Duration::from_secs(1)).health, Health::Unknown);
        b.failed(Failure::ServerError);
        assert_eq!(b.health(Instant::now()).health, Health::Down);
        // A request that started before the failure and answered after it: the backend answers again.
        b.answered(now);
        assert_eq!(b.health(Instant::now()).health, Health::Degraded);

        let up = Backend::parse("127.0.0.1:2").unwrap();
        up.answered(Instant::now());
        assert_eq!(up.health(Instant::now()).health, Health::Up);
        // Equality ignores what was seen.
        assert_eq!(up, Backend::parse("127.0.0.1:2").unwrap());
    }

    #[test]
    fn a_failed_check_keeps_it_out_until_one_passes() {
        let b = Backend::parse("127.0.0.1:3").unwrap();
        assert!(b.check_failed(), "taken out");
        assert!(!b.check_failed(), "already out: no second warning");
        let v = b.health(Instant::now());
        assert!(v.check_failing && v.ejected_for.is_none());
        // A passive ejection does not replace it: only a passing check ends it.
        assert_eq!(b.eject(Instant::now(), |_| Duration::from_secs(1)), None);
        assert_eq!(b.ejected_until(), CHECK_FAILING);
        assert!(b.check_passed());
        assert!(!b.check_passed());
        assert_eq!(b.ejected_until(), 0);
        // A passing check leaves a passive ejection to its time.
        assert_eq!(b.eject(Instant::now(), |_| Duration::from_secs(30)), Some(Duration::from_secs(30)));
        assert!(!b.check_passed());
        assert!(b.health(Instant::now()).ejected_for.is_some_and(|d| d > Duration::from_secs(29)));
        assert_eq!(b.health(Instant::now()).ejections, 1);
    }

    #[test]
    fn a_service_is_as_healthy_as_the_backends_tried() {
        use Health::*;
        assert_eq!(Health::of_service([]), Unknown);
        assert_eq!(Health::of_service([Unknown, Unknown]), Unknown);
        assert_eq!(Health::of_service([Up, Unknown]), Up);
        assert_eq!(Health::of_service([Down, Down]), Down);
        assert_eq!(Health::of_service([Down, Unknown]), Down);
        assert_eq!(Health::of_service([Up, Down]), Degraded);
        assert_eq!(Health::of_service([Degraded]), Degraded);
        assert_eq!(Health::of_service([Up, Degraded]), Degraded);
    }
}
