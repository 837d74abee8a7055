//! The second witness of use before an idle stop (issue 29): the container's own network counters, read from its
//! runtime, which do not depend on etcd. A replica cut off from etcd but not from its clients keeps serving a
//! tenant, but once its lease expires its use is invisible to the decider; the packets it sends still move the
//! container's counters. So the decider looks at the counters in the last part of the idle timeout (the
//! *window*), and before an idle stop compares: moved by more than reveille's own traffic explains, the tenant
//! was used, and the stop is put off by an idle timeout.
//!
//! This file holds the witness's state and its two rules (when to look, what a difference means); the driver
//! (`driver.rs`) makes the runtime calls and acts on the verdict. What counts as reveille's own traffic, and why
//! the window is half the idle timeout, is in `LIFECYCLE.md` ("A second witness of use").
//!
//! Only with a cluster: a single replica's own activity is exact (every request goes through it), so the
//! witness would only add a Docker call per idle period and the risk of counting the tenant's own outbound
//! traffic as use.

use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::Traffic;

/// Packets on the container's interfaces that no use explains, allowed in every window: the close of one
/// connection that a replica's upstream pool kept (FIN and ACK each way: 4) and a neighbour (ARP) exchange (2).
pub(super) const SLACK_PACKETS: u64 = 6;

/// Packets one `stop_check` accounts for on the container's side: its own connection opened (3) and closed
/// (4), one request and its response (2), their ACKs (2), one more for a split response.
pub(super) const PACKETS_PER_CHECK: u64 = 12;

/// Bytes that count as one packet where the runtime gives no packet counts: Podman 4.3's Docker-compatible stats
/// carry `rx_bytes`/`tx_bytes` but `rx_packets`/`tx_packets` always 0 (seen with `podman system service`). 128 is
/// below the mean packet of an HTTP exchange on the wire (five `GET`s of a small page through busybox httpd:
/// 5 760 bytes, about 50 packets), so the estimate errs towards "used".
pub(super) const BYTES_PER_PACKET: u64 = 128;

/// The packets that moved, or where the runtime counts none, an estimate from the bytes.
fn packets(moved: &Traffic) -> u64 {
    match moved.packets() {
        0 => moved.rx_bytes.saturating_add(moved.tx_bytes).div_ceil(BYTES_PER_PACKET),
        n => n,
    }
}

/// The window the counters are compared across: the second half of the idle timeout before the check.
///
/// Why half, not all of it: the first half holds the tail of the last use everyone saw (the response's last
/// ACKs, the closes of the connections that use left in the pools once their 90 s are up, for idle timeouts up
/// to 180 s), which is not a use; the second half is long enough to hold several requests of a replica that uses
/// the tenant steadily (every 0.5 s with a 3 s idle timeout: three), which is what must never be stopped under
/// it. A use sparser than half the idle timeout, from a replica the cluster cannot see, may still be stopped
/// once: its next request wakes the tenant (unclaimed), as before.
pub(super) fn window(idle: Duration) -> Duration {
    idle / 2
}

/// What the witness saw at one look.
#[derive(Debug, Clone, Copy)]
pub(super) struct Look {
    /// When the look was taken (when the runtime's answer came: its counters are of then).
    pub(super) at: Instant,
    /// The counters then; `None`: no witness this time (the runtime has none, or the call failed).
    pub(super) traffic: Option<Traffic>,
    /// [`Witness::checks`] at the look: the checks made after it are reveille's own traffic in the window.
    pub(super) checks: u64,
}

/// A tenant's witness state (in the tenant's `State`, under its lock).
#[derive(Debug, Default)]
pub(super) struct Witness {
    /// The last look, the start of the window.
    pub(super) look: Option<Look>,
    /// How many `stop_check`s reveille has made of the tenant so far: each is traffic of its own.
    pub(super) checks: u64,
}

/// What the driver's idle timer waits for, with the witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// A look at the counters, after this long: the window's start.
    Look(Duration),
    /// The idle check (and stop), after this long.
    Check(Duration),
}

/// What the counters say at the idle check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Moved by more than reveille's own traffic explains: used by someone the cluster cannot see.
    Used { moved: Traffic, window: Duration, checks: u64 },
    /// Within what reveille's own traffic explains.
    Quiet { moved: Traffic },
    /// Nothing can be said (no look with counters, or the counters went back): etcd's view decides.
    Unknown(&'static str),
}

impl Witness {
    /// Takes a look: the counters read at `at` start the window, with the checks made so far.
    pub(super) fn look(&mut self, at: Instant, traffic: Option<Traffic>) {
        self.look = Some(Look { at, traffic, checks: self.checks });
    }

    /// When the driver's timer fires next and for what. `until_check`: when the idle check is due without the
    /// witness; `run_since`: the tenant's last phase change (a look from before it belongs to another run, whose
    /// counters may have been reset).
    ///
    /// A look is due at the window's start (`until_check` less the window), unless the last look is in the
    /// window already. The check then comes no earlier than a whole window after the look: a decider that finds
    /// a tenant long idle by etcd's view (a replica's lease just expired, or it just became the decider) still
    /// watches the counters for a window before it stops. A look without counters waits for no window: the stop
    /// goes as it would without a witness.
    pub(super) fn next(&self, now: Instant, until_check: Duration, idle: Duration, run_since: Instant) -> Next {
        let window = window(idle);
        let check_at = now + until_check;
        let look_at = check_at.checked_sub(window).unwrap_or(now);
        match self.look.filter(|l| l.at >= run_since && l.at >= look_at) {
            Some(Look { traffic: None, .. }) => Next::Check(until_check),
            Some(l) => Next::Check((l.at + window).max(check_at).saturating_duration_since(now)),
            None => Next::Look(look_at.saturating_duration_since(now)),
        }
    }

    /// Compares the counters read `now` (at `at`) with the last look.
    pub(super) fn verdict(&self, now: Traffic, at: Instant) -> Verdict {
        let Some(look) = self.look else { return Verdict::Unknown("no look at the counters before") };
        let Some(before) = look.traffic else { return Verdict::Unknown("no counters at the last look") };
        let Some(moved) = now.since(&before) else {
            return Verdict::Unknown("the counters went back (the container restarted)");
        };
        let checks = self.checks.saturating_sub(look.checks);
        let explained = SLACK_PACKETS + checks * PACKETS_PER_CHECK;
        if packets(&moved) > explained {
            Verdict::Used { moved, window: at.saturating_duration_since(look.at), checks }
        } else {
            Verdict::Quiet { moved }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(packets: u64) -> Traffic {
        Traffic { rx_packets: packets / 2, tx_packets: packets - packets / 2, rx_bytes: packets * 80, tx_bytes: 0 }
    }

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn looks_at_the_start_of_the_window_then_checks_at_its_end() {
        let t0 = Instant::now();
        let mut w = Witness::default();
        assert_eq!(w.next(t0, IDLE, IDLE, t0), Next::Look(Duration::from_secs(5)), "no look yet");
        // The look, taken when due: the check comes when it would have without the witness.
        let at = t0 + Duration::from_secs(5);
        w.look = Some(Look { at, traffic: Some(traffic(0)), checks: 0 });
        assert_eq!(w.next(at, Duration::from_secs(5), IDLE, t0), Next::Check(Duration::from_secs(5)));
        // Use seen meanwhile moves the check later: the look is no longer in the window, look again.
        let later = t0 + Duration::from_secs(7);
        assert_eq!(w.next(later, IDLE, IDLE, t0), Next::Look(Duration::from_secs(5)));
        // A look from before the tenant's last phase change (another run) does not count.
        assert_eq!(w.next(at, Duration::from_secs(5), IDLE, at + Duration::from_millis(1)), Next::Look(Duration::ZERO));
    }

    /// A tenant idle long ago by etcd's view (a cut-off replica's lease just expired): looked at now, and
    /// stopped no earlier than a window later — never across an empty window.
    #[test]
    fn an_overdue_check_still_waits_a_window_after_the_look() {
        let t0 = Instant::now();
        let mut w = Witness::default();
        assert_eq!(w.next(t0, Duration::ZERO, IDLE, t0), Next::Look(Duration::ZERO));
        w.look = Some(Look { at: t0, traffic: Some(traffic(0)), checks: 0 });
        assert_eq!(w.next(t0, Duration::ZERO, IDLE, t0), Next::Check(Duration::from_secs(5)));
        // Without counters (no witness, or it failed): the check at once, as without a witness.
        w.look = Some(Look { at: t0, traffic: None, checks: 0 });
        assert_eq!(w.next(t0, Duration::ZERO, IDLE, t0), Next::Check(Duration::ZERO));
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_secs(5);
        let mut w = Witness::default();
        assert!(matches!(w.verdict(traffic(100), at), Verdict::Unknown(_)), "no look");
        w.look = Some(Look { at: t0, traffic: None, checks: 0 });
        assert!(matches!(w.verdict(traffic(100), at), Verdict::Unknown(_)), "no counters at the look");
        w.look = Some(Look { at: t0, traffic: Some(traffic(100)), checks: 0 });
        assert!(matches!(w.verdict(traffic(40), at), Verdict::Unknown(_)), "counters went back");
        assert_eq!(w.verdict(traffic(100 + SLACK_PACKETS), at), Verdict::Quiet { moved: traffic(SLACK_PACKETS) });
        let used = w.verdict(traffic(100 + SLACK_PACKETS + 1), at);
        assert_eq!(
            used,
            Verdict::Used { moved: traffic(SLACK_PACKETS + 1), window: Duration::from_secs(5), checks: 0 }
        );
        // Two stop checks made since the look: their packets are reveille's own.
        w.checks = 2;
        let own = SLACK_PACKETS + 2 * PACKETS_PER_CHECK;
        assert!(matches!(w.verdict(traffic(100 + own), at), Verdict::Quiet { .. }));
        assert!(matches!(w.verdict(traffic(100 + own + 1), at), Verdict::Used { checks: 2, .. }));
    }

    /// Podman counts bytes, not packets: the bytes stand in.
    #[test]
    fn bytes_stand_in_for_packets_where_none_are_counted() {
        let t0 = Instant::now();
        let bytes = |rx: u64, tx: u64| Traffic { rx_bytes: rx, tx_bytes: tx, rx_packets: 0, tx_packets: 0 };
        let w = Witness { look: Some(Look { at: t0, traffic: Some(bytes(176, 308)), checks: 0 }), checks: 0 };
        let quiet = SLACK_PACKETS * BYTES_PER_PACKET;
        assert!(matches!(w.verdict(bytes(176 + quiet, 308), t0), Verdict::Quiet { .. }), "an ARP and a close");
        // One request of a replica the cluster cannot see, as measured against Podman: about 1 150 bytes.
        assert!(matches!(w.verdict(bytes(176 + 620, 308 + 530), t0), Verdict::Used { .. }));
    }
}
