//! Who gets a connection slot: the per-address connection limit (nginx's `limit_conn`), checked as a
//! connection is accepted, before it takes one of the `max_connections` slots.
//!
//! The slots themselves, the pressure they are under and the eviction of connections that keep a slot waiting
//! are `conn`'s ([`Pressure`](super::conn::Pressure)); the accept loop that puts both together is `Proxy::serve`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open connections per client address, against a maximum. Only used when a maximum is set: the common
/// configuration takes no lock here.
pub(crate) struct AddressLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
}

impl AddressLimit {
    /// `None` when `max` is 0 (no limit).
    pub(crate) fn new(max: usize) -> Option<Arc<Self>> {
        (max > 0).then(|| Arc::new(Self { max, open: Mutex::new(HashMap::default()) }))
    }

    /// Counts a new connection from `ip`, or refuses it when `ip` already holds the maximum.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressGuard> {
        let ip = canonical(ip);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressGuard { limit: self.clone(), ip })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: counted as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection's place in its address's count, given back on drop.
pub(crate) struct AddressGuard {
    limit: Arc<AddressLimit>,
    ip: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_maximum_and_its_places_back() {
        let limit = AddressLimit::new(2).expect("a limit");
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = limit.admit(a).expect("first");
        let _second = limit.admit(a).expect("second");
        assert!(limit.admit(a).is_none(), "a third from the same address is refused");
        // The same address written as IPv4-mapped IPv6 is the same client.
        assert!(limit.admit("::ffff:127.0.0.2".parse().unwrap()).is_none());
        assert!(limit.admit(b).is_some(), "another address has its own count");
        drop(first);
        assert!(limit.admit(a).is_some(), "a closed connection gives its place back");
        assert!(AddressLimit::new(0).is_none(), "0 is no limit");
    }

    #[test]
    fn counts_are_forgotten_at_zero() {
        let limit = AddressLimit::new(1).expect("a limit");
        for i in 0..100u8 {
            drop(limit.admit(IpAddr::from([10, 0, 0, i])).expect("admitted"));
        }
        assert!(limit.open.lock().is_empty(), "no entry is kept for an address with no connection");
    }
}
