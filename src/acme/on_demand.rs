//! The limits on orders that handshakes start (on demand), in front of the budget: per client address and
//! overall, per minute, in this replica (not shared through etcd: the budget's on-demand share is, and it is
//! what bounds the cluster); and the gate that keeps the log lines of refusals few, whatever a client sends.
//!
//! Any client can start an on-demand order: one handshake per routed name without a certificate. The budget
//! keeps part of itself from them; these limits keep one client address from taking all that part at once, and
//! bound the work (an etcd lock, a read of the ledger, the CA) that handshakes cause.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The limits' window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// How often a refusal of one kind is logged at most; those in between are counted in the next line.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// The client a limit counts: an IPv4 address, or an IPv6 /64 (one subscriber's network, where an address of
/// its own costs an attacker nothing). An IPv4-mapped IPv6 address is its IPv4 address.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Why the limiter refused an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The metric reason: `per_client` or `per_minute`.
    pub reason: &'static str,
    pub detail: String,
}

/// The orders handshakes started in the last [`WINDOW`], with their clients: a sliding log, so "N per minute"
/// means N in any 60 seconds, and the next order may go once the oldest has left the window.
#[derive(Debug)]
pub(crate) struct Limiter {
    /// Orders per client per window; 0: no limit.
    per_client: u32,
    /// Orders per window, whatever the client; 0: no limit.
    per_minute: u32,
    /// Only admitted orders are kept: with a per-minute limit, never more than it, however many clients try.
    admitted: Mutex<VecDeque<(Instant, IpAddr)>>,
}

impl Limiter {
    pub(crate) fn new(per_client: u32, per_minute: u32) -> Self {
        Self { per_client, per_minute, admitted: Mutex::new(VecDeque::new()) }
    }

    /// Admits (and counts) an order for `client` at `now`, or says which limit refuses it.
    pub(crate) fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = client_key(client);
        let mut admitted = self.admitted.lock();
        while admitted.front().is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW) {
            admitted.pop_front();
        }
        if self.per_client > 0 {
            let used = admitted.iter().filter(|(_, k)| *k == key).count();
            if used >= self.per_client as usize {
                let whom = if key == client { client.to_string() } else { format!("{client} (as {key}/64)") };
                let detail = format!(
                    "client {whom} started {used} on-demand orders in the last minute (on_demand_per_client = {})",
                    self.per_client
                );
                return Err(Refusal { reason: "per_client", detail });
            }
        }
        if self.per_minute > 0 && admitted.len() >= self.per_minute as usize {
            let detail = format!(
                "{} on-demand orders in the last minute on this replica (on_demand_per_minute = {})",
                admitted.len(),
                self.per_minute
            );
            return Err(Refusal { reason: "per_minute", detail });
        }
        if self.per_client > 0 || self.per_minute > 0 {
            admitted.push_back((now, key));
        }
        Ok(())
    }
}

/// Lets one log line per kind through every [`LOG_EVERY`], and counts the others.
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    /// Per kind: when its last line was written, and how many were held back since.
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogGate {
    /// Whether a line of `kind` may be written at `now`: `Some(held back since the last one)`, or `None`.
    pub(crate) fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock();
        match kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                (*last, *held) = (now, 0);
                Some(n)
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), client_key(ip("2001:db8:1:2::1")));
        assert_ne!(client_key(ip("2001:db8:1:3::1")), client_key(ip("2001:db8:1:2::1")));
    }

    /// Per client, then overall, in any 60 seconds: the next order goes once the oldest has left the window.
    #[tokio::test(start_paused = true)]
    async fn per_client_and_per_minute_in_a_sliding_minute() {
        let limiter = Limiter::new(3, 5);
        let (a, b, c) = (ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4"));
        for _ in 0..3 {
            limiter.admit(a, Instant::now()).unwrap();
        }
        let refused = limiter.admit(a, Instant::now()).unwrap_err();
        assert_eq!(refused.reason, "per_client");
        assert!(refused.detail.contains("client 127.0.0.2 started 3 on-demand orders"), "{}", refused.detail);
        // A refused try is not counted: the others still have the minute's rest.
        for _ in 0..10 {
            assert!(limiter.admit(a, Instant::now()).is_err());
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        limiter.admit(b, Instant::now()).unwrap();
        limiter.admit(b, Instant::now()).unwrap();
        let refused = limiter.admit(c, Instant::now()).unwrap_err();
        assert_eq!(refused.reason, "per_minute");
        assert!(refused.detail.contains("5 on-demand orders in the last minute"), "{}", refused.detail);
        // 60 s after a's orders: they have left the window, b's have not.
        tokio::time::advance(Duration::from_secs(40)).await;
        limiter.admit(a, Instant::now()).unwrap();
        limiter.admit(c, Instant::now()).unwrap();
        limiter.admit(c, Instant::now()).unwrap();
        assert_eq!(limiter.admit(c, Instant::now()).unwrap_err().reason, "per_minute", "b's 2 and these 3");
        tokio::time::advance(Duration::from_secs(20)).await;
        limiter.admit(c, Instant::now()).unwrap();
        // An IPv6 client's /64 is one client.
        let limiter = Limiter::new(1, 0);
        limiter.admit(ip("2001:db8::1"), Instant::now()).unwrap();
        let refused = limiter.admit(ip("2001:db8::2"), Instant::now()).unwrap_err();
        assert!(refused.detail.contains("2001:db8::2 (as 2001:db8::/64)"), "{}", refused.detail);
        // No limits: nothing is kept.
        let open = Limiter::new(0, 0);
        for _ in 0..100 {
            open.admit(a, Instant::now()).unwrap();
        }
        assert!(open.admitted.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_gate_lets_one_line_per_kind_through_every_ten_seconds() {
        let gate = LogGate::default();
        assert_eq!(gate.admit("per_client", Instant::now()), Some(0));
        assert_eq!(gate.admit("per_minute", Instant::now()), Some(0), "each kind its own");
        for _ in 0..1000 {
            assert_eq!(gate.admit("per_client", Instant::now()), None);
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(gate.admit("per_client", Instant::now()), Some(1000), "says how many it held back");
        assert_eq!(gate.admit("per_client", Instant::now()), None);
    }
}
