//! The checker over a chaos run's history: issue 29's four invariants, and the report's table (fault kind by
//! invariant). A pure function of the [`History`] ([`check`]), so a recorded run can be checked again, and a
//! hand-written history tests it. It does not record nor inject anything (the harness does).
//!
//! 1. **Answers.** Every request got a 2xx, or an answer [`CAUSES`] accepts for its cause; each is counted by
//!    cause. Anything else is a violation.
//! 2. **One start per wake.** No two Docker `start`s of a tenant without a `die` or `stop` between them.
//! 3. **No stop under use.** A tenant's stop (its `kill` or `pause` event, which opens a `docker stop`/`pause`)
//!    never happens while a request for it is in flight on any replica, nor within the idle timeout (minus the
//!    tolerance) of the last request any replica served for it. The requests of a replica cut off from etcd past
//!    its lease do not count (see [`unseen`]): LIFECYCLE.md, "A replica cut off from etcd while the others are
//!    not".
//! 4. **Convergence.** After each heal, within `converge_bound`: exactly one decider, every status key equal to
//!    Docker's state, no tenant `starting` or `stopping`, every replica serving. The time it took is measured
//!    from the samples.
//!
//! Each violation carries its printout: the seed, the fault schedule and the history ±2 s around it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use super::history::{Event, FaultKind, FaultWindow, History, RunConfig};
use crate::stats;

/// How much history a violation's printout shows on each side of it.
pub const SLICE_MS: u64 = 2000;

/// The invariant a violation breaks; also the report's column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// 1: every request answered, or answered as documented for its cause.
    Answers,
    /// 2: one Docker start per wake.
    OneStartPerWake,
    /// 3: no stop or pause under use.
    NoStopUnderUse,
    /// 4: converged within the bound after each heal.
    Converges,
}

impl Invariant {
    pub const ALL: [Invariant; 4] =
        [Invariant::Answers, Invariant::OneStartPerWake, Invariant::NoStopUnderUse, Invariant::Converges];

    pub fn number(self) -> usize {
        self as usize + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            Invariant::Answers => "every request answered",
            Invariant::OneStartPerWake => "one start per wake",
            Invariant::NoStopUnderUse => "no stop under use",
            Invariant::Converges => "converged after heal",
        }
    }
}

/// One broken promise, with what a reader needs to replay and understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// When it happened (a request: its start; a stop or start: its event; convergence: the last sample within
    /// the bound).
    pub at_ms: u64,
    /// What was wrong, in one line.
    pub what: String,
    /// The seed, the fault schedule and the slice of history around `at_ms` (±[`SLICE_MS`]).
    pub printout: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "violation of invariant {} ({}) at {} ms: {}",
            self.invariant.number(),
            self.invariant.name(),
            self.at_ms,
            self.what
        )?;
        f.write_str(&self.printout)
    }
}

/// A cause of a failed request that reveille documents, and how to recognise it in the history.
pub struct Cause {
    /// The report's label.
    pub name: &'static str,
    /// Where the answer is documented (or why none can be given).
    pub documented: &'static str,
    /// Whether a failed request is this cause's.
    pub matches: fn(&FailedRequest<'_>, &History) -> bool,
}

/// A request that did not succeed (no 2xx, or a 2xx the client found wrong), as the causes look at it.
#[derive(Debug, Clone, Copy)]
pub struct FailedRequest<'a> {
    pub replica: &'a str,
    pub tenant: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0: no HTTP answer.
    pub status: u16,
    pub error: Option<&'a str>,
    /// reveille's own reason (the public reason of `src/proxy/error.rs`), when it answered one itself.
    pub reveille_error: Option<&'a str>,
}

/// The failed requests the checker accepts, each for the cause LIFECYCLE.md (or the fault itself) gives; the first
/// that matches counts the request. A failure no entry matches is a violation: in particular nothing is excused
/// for an etcd leader kill, a minority or majority stop, a peer partition, or loss or delay on an etcd link, for
/// which LIFECYCLE.md promises that serving and waking go on ("etcd down: what was chosen").
pub const CAUSES: &[Cause] = &[
    Cause {
        name: "replica frozen, no answer",
        documented: "a frozen process answers nothing: the request overlapped its own replica's freeze",
        matches: |r, h| r.status == 0 && own_fault(h, r, FaultKind::ReplicaFreeze),
    },
    Cause {
        name: "replica killed, no answer",
        documented: "a killed process answers nothing: the request overlapped its own replica's kill (until its \
                     restart, plus the tolerance)",
        matches: |r, h| r.status == 0 && own_fault(h, r, FaultKind::ReplicaKill),
    },
    Cause {
        name: "replica frozen, wake timeout 504",
        documented: "LIFECYCLE.md, Waking, Bounds: a request waits at most wake_timeout from its own arrival (504); \
                     its replica was frozen while it waited",
        matches: |r, h| {
            r.status == 504
                && reason_is(r, "the service did not start in time")
                && own_fault(h, r, FaultKind::ReplicaFreeze)
        },
    },
    Cause {
        name: "replica cut off past its lease, 502",
        documented: "LIFECYCLE.md, Several replicas, \"A replica cut off from etcd while the others are not\": \
                     the decider may stop a tenant it still uses; its requests get 502 until its inspect sees \
                     the stop",
        // Judged when the 502 was given (the request's end) as well as when the request was sent: a request sent
        // to a replica just frozen is read only at its thaw, long past its lease, and answered then (seed 2914:
        // sent 0.6 s into a 5.5 s freeze, a 502 at the thaw while the decider's stop, made meanwhile, went on).
        matches: |r, h| {
            r.status == 502
                && (reason_is(r, "the service could not be reached") || reason_is(r, "the service failed to answer"))
                && (cut_off(h, r.replica, r.start_ms) || cut_off(h, r.replica, r.end_ms))
        },
    },
    Cause {
        name: "routes still loading, 503",
        documented: "docs/routing.md: before every route source has loaded (a replica restarted while etcd is slow, \
                     its /readyz still 503), a host without a route is 503 with Retry-After, not 404; accepted \
                     from a replica killed and restarted, until the convergence bound after its restart",
        matches: |r, h| {
            r.status == 503
                && reason_is(r, "the routes are still loading")
                && h.faults.iter().any(|f| {
                    f.kind == FaultKind::ReplicaKill
                        && f.target == r.replica
                        && r.start_ms >= f.start_ms
                        && r.start_ms <= f.healed_ms + h.config.converge_bound_ms
                })
        },
    },
];

/// The fault kinds that cut their target replica off from etcd: its lease lapses while the others' live. A peer
/// partition is one: replicas talk to each other only through etcd, and the harness leaves the replica only an
/// etcd member cut off from the other two, which keeps no lease. Loss and delay on the link are not: a lease
/// that lapses under them is a finding, and so is a stop during a majority loss (LIFECYCLE.md: nothing is stopped).
const CUTTING_OFF: [FaultKind; 4] =
    [FaultKind::EtcdPartition, FaultKind::PeerPartition, FaultKind::ReplicaFreeze, FaultKind::ReplicaKill];

/// Whether `replica` was cut off from etcd at `at_ms` long enough for its lease to have lapsed: inside a fault of
/// [`CUTTING_OFF`] on it, from two thirds of the lease TTL after the cut (reveille renews its lease every third of
/// the TTL, `src/cluster/membership.rs`, so etcd may drop it that early) until the heal, each end widened by the
/// tolerance.
pub fn cut_off(history: &History, replica: &str, at_ms: u64) -> bool {
    let c = &history.config;
    history.faults.iter().any(|f| lease_lapsed(c, f, replica, at_ms) && at_ms <= f.healed_ms + c.tolerance_ms)
}

/// Whether `f` cuts `replica` off from etcd and had lasted, at `at_ms`, long enough for its lease to lapse.
fn lease_lapsed(c: &RunConfig, f: &FaultWindow, replica: &str, at_ms: u64) -> bool {
    CUTTING_OFF.contains(&f.kind)
        && f.target == replica
        && at_ms + c.tolerance_ms >= f.start_ms + c.lease_ttl_ms * 2 / 3
}

/// Whether the request overlapped a fault of `kind` on its own replica (until the heal, plus the tolerance: a
/// restarted process needs a moment to listen).
fn own_fault(history: &History, r: &FailedRequest<'_>, kind: FaultKind) -> bool {
    history.faults.iter().any(|f| {
        f.kind == kind
            && f.target == r.replica
            && r.start_ms <= f.healed_ms + history.config.tolerance_ms
            && r.end_ms >= f.start_ms
    })
}

fn reason_is(r: &FailedRequest<'_>, reason: &str) -> bool {
    r.reveille_error.is_some_and(|e| e.contains(reason))
}

/// Whether a request via `replica` that began at `began` is one the decider could not know of at `at_ms`, for
/// invariant 3: its replica was cut off from etcd past its lease ([`cut_off`]) and the request came before the
/// heal, or the request was served by a replica's incarnation that was killed and whose lease has lapsed since
/// (the restarted process does not remember it, and nothing documents that it should).
pub fn unseen(history: &History, replica: &str, began: u64, at_ms: u64) -> bool {
    let c = &history.config;
    history.faults.iter().any(|f| {
        lease_lapsed(c, f, replica, at_ms)
            && began <= f.healed_ms + c.tolerance_ms
            && (at_ms <= f.healed_ms + c.tolerance_ms || f.kind == FaultKind::ReplicaKill && began <= f.start_ms)
    })
}

/// The label of failures no cause accepts.
pub const UNEXCUSED: &str = "not excused";

/// One row of the report: a fault kind (or none), over the events attributed to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// The fault kind; `None` for the rows "no fault" (events outside every fault's span) and "all".
    pub fault: Option<FaultKind>,
    /// "no fault" or "all" for the rows without a kind.
    pub label: String,
    /// How many faults of the kind were injected.
    pub runs: usize,
    pub requests: usize,
    /// Failed requests by cause ([`UNEXCUSED`] for the violations).
    pub failed: BTreeMap<&'static str, usize>,
    /// Docker starts, and wakes (starts after a die or stop, or the first): starts per wake = starts / wakes.
    pub starts: usize,
    pub wakes: usize,
    /// Stops that broke invariant 3.
    pub stops_under_use: usize,
    /// Stops that would have broken it but for a replica cut off from etcd past its lease (issue 29's thrash).
    pub stops_cut_off: usize,
    /// Time from each heal to the first converged sample.
    pub converge_ms: Vec<u64>,
    /// Heals whose convergence was not measured: another fault began before it converged or was still on.
    pub converge_unmeasured: usize,
    /// Violations by invariant (index = number - 1).
    pub violations: [usize; 4],
}

impl Row {
    fn new(fault: Option<FaultKind>, label: &str) -> Row {
        Row { fault, label: label.to_string(), ..Row::default() }
    }

    /// Where the row goes in the table: the kinds in [`FaultKind::ALL`]'s order, then "no fault", then "all".
    fn order(&self) -> usize {
        match self.fault {
            Some(kind) => FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(0),
            None if self.label == "all" => FaultKind::ALL.len() + 1,
            None => FaultKind::ALL.len(),
        }
    }

    fn add(&mut self, other: &Row) {
        self.runs += other.runs;
        self.requests += other.requests;
        for (cause, n) in &other.failed {
            *self.failed.entry(cause).or_default() += n;
        }
        self.starts += other.starts;
        self.wakes += other.wakes;
        self.stops_under_use += other.stops_under_use;
        self.stops_cut_off += other.stops_cut_off;
        self.converge_ms.extend(&other.converge_ms);
        self.converge_unmeasured += other.converge_unmeasured;
        for (mine, theirs) in self.violations.iter_mut().zip(other.violations) {
            *mine += theirs;
        }
    }
}

/// What the checker found: the violations (empty when the run kept every promise) and the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The run's seed; several for a [`Report::merge`] of runs.
    pub seeds: Vec<u64>,
    pub violations: Vec<Violation>,
    /// One row per fault kind injected (in [`FaultKind::ALL`]'s order), then "no fault", then "all".
    pub table: Vec<Row>,
}

impl Report {
    /// Several runs' reports as one (the long run's seeds): every violation, and the rows of each kind added up.
    pub fn merge(reports: impl IntoIterator<Item = Report>) -> Report {
        let mut seeds = Vec::new();
        let mut violations = Vec::new();
        let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
        for report in reports {
            seeds.extend(report.seeds);
            violations.extend(report.violations);
            for row in report.table {
                rows.entry(row.order()).or_insert_with(|| Row::new(row.fault, &row.label)).add(&row);
            }
        }
        Report { seeds, violations, table: rows.into_values().collect() }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every violation's printout, one after the other.
    pub fn violations_text(&self) -> String {
        self.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }

    /// The table, fault by invariant, in markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Seed(s) {}: {} violation(s).\n\n\
             | fault | runs | requests | failed requests by cause | starts per wake | stops under use | \
             converge after heal (median, max) | violations (1/2/3/4) |\n\
             |---|---:|---:|---|---:|---:|---|---|\n",
            self.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            self.violations.len()
        );
        for row in &self.table {
            let failed: Vec<(&str, u64)> = row.failed.iter().map(|(k, n)| (*k, *n as u64)).collect();
            let starts = if row.wakes == 0 {
                format!("n/a ({} starts)", row.starts)
            } else {
                format!("{:.2} ({}/{})", row.starts as f64 / row.wakes as f64, row.starts, row.wakes)
            };
            let stops = if row.stops_cut_off > 0 {
                format!("{} (+{} cut off)", row.stops_under_use, row.stops_cut_off)
            } else {
                row.stops_under_use.to_string()
            };
            let ms: Vec<f64> = row.converge_ms.iter().map(|&m| m as f64).collect();
            let mut converge = if ms.is_empty() {
                "n/a".to_string()
            } else {
                format!("{:.0} ms, {:.0} ms", stats::median(&ms), stats::percentile(&ms, 100.0))
            };
            if row.converge_unmeasured > 0 {
                let _ = write!(converge, " ({} not measured)", row.converge_unmeasured);
            }
            let v = row.violations;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {}/{}/{}/{} |",
                row.label,
                row.runs,
                row.requests,
                stats::counts(&failed),
                starts,
                stops,
                converge,
                v[0],
                v[1],
                v[2],
                v[3]
            );
        }
        out.push_str(
            "\nA fault's row counts what happened from its injection to its heal plus the convergence bound; \
             \"+N cut off\": stops within the idle timeout of a use the decider could not see, its replica cut off \
             from etcd past its lease (not violations).\n",
        );
        let seen: Vec<&Cause> =
            CAUSES.iter().filter(|c| self.table.iter().any(|r| r.failed.contains_key(c.name))).collect();
        if !seen.is_empty() {
            out.push_str("\nCauses:\n");
            for cause in seen {
                let _ = writeln!(out, "- {}: {}.", cause.name, cause.documented);
            }
        }
        out
    }
}

/// Checks the four invariants over `history`.
pub fn check(history: &History) -> Report {
    let mut c = Checker::new(history);
    c.answers();
    c.starts();
    c.stops();
    c.convergence();
    c.violations.sort_by_key(|v| (v.at_ms, v.invariant));
    Report { seeds: vec![history.seed], violations: c.violations, table: c.rows }
}

// === impl Checker ===

/// The running state of one check: the rows the events are attributed to, and the violations.
struct Checker<'h> {
    h: &'h History,
    /// Events by time (a request by its start), the file order kept for equal times.
    events: Vec<&'h Event>,
    rows: Vec<Row>,
    /// Row index of each fault kind injected.
    kind_row: HashMap<FaultKind, usize>,
    no_fault: usize,
    all: usize,
    violations: Vec<Violation>,
}

impl<'h> Checker<'h> {
    fn new(h: &'h History) -> Checker<'h> {
        let mut events: Vec<&Event> = h.events.iter().collect();
        events.sort_by_key(|e| e.at_ms());
        let mut rows = Vec::new();
        let mut kind_row = HashMap::new();
        for kind in FaultKind::ALL {
            let runs = h.faults.iter().filter(|f| f.kind == kind).count();
            if runs > 0 {
                kind_row.insert(kind, rows.len());
                rows.push(Row { runs, ..Row::new(Some(kind), kind.as_str()) });
            }
        }
        let no_fault = rows.len();
        rows.push(Row::new(None, "no fault"));
        let all = rows.len();
        rows.push(Row { runs: h.faults.len(), ..Row::new(None, "all") });
        Checker { h, events, rows, kind_row, no_fault, all, violations: Vec::new() }
    }

    /// The rows an event over `[from, to]` counts in: each fault kind whose span (injection to heal plus the
    /// convergence bound, when its effects may still show) it overlaps, else "no fault"; and "all".
    fn rows_for(&self, from: u64, to: u64) -> Vec<usize> {
        let bound = self.h.config.converge_bound_ms;
        let mut rows: Vec<usize> = self
            .h
            .faults
            .iter()
            .filter(|f| from <= f.healed_ms + bound && to >= f.start_ms)
            .map(|f| self.kind_row[&f.kind])
            .collect();
        rows.sort_unstable();
        rows.dedup();
        if rows.is_empty() {
            rows.push(self.no_fault);
        }
        rows.push(self.all);
        rows
    }

    fn count(&mut self, from: u64, to: u64, mut add: impl FnMut(&mut Row)) {
        for i in self.rows_for(from, to) {
            add(&mut self.rows[i]);
        }
    }

    fn violate(&mut self, invariant: Invariant, at_ms: u64, what: String) {
        self.count(at_ms, at_ms, |row| row.violations[invariant as usize] += 1);
        self.violations.push(Violation { invariant, at_ms, what, printout: printout(self.h, &self.events, at_ms) });
    }

    /// Invariant 1.
    fn answers(&mut self) {
        for e in self.events.clone() {
            let Event::Request { replica, tenant, start_ms, end_ms, status, error, reveille_error } = e else {
                continue;
            };
            self.count(*start_ms, *end_ms, |row| row.requests += 1);
            if succeeded(*status, error.as_deref()) {
                continue;
            }
            let failed = FailedRequest {
                replica,
                tenant,
                start_ms: *start_ms,
                end_ms: *end_ms,
                status: *status,
                error: error.as_deref(),
                reveille_error: reveille_error.as_deref(),
            };
            let cause = CAUSES.iter().find(|c| (c.matches)(&failed, self.h)).map_or(UNEXCUSED, |c| c.name);
            self.count(*start_ms, *end_ms, |row| *row.failed.entry(cause).or_default() += 1);
            if cause == UNEXCUSED {
                let what = format!(
                    "request via {replica} for {tenant} ({start_ms}..{end_ms} ms) got {}, for no documented cause",
                    describe_answer(*status, failed.error, failed.reveille_error)
                );
                self.violate(Invariant::Answers, *start_ms, what);
            }
        }
    }

    /// Invariant 2, and the starts and wakes of the table.
    fn starts(&mut self) {
        // Per tenant: when its running container was started; none when a start is due (first, or after a die or
        // stop).
        let mut started: HashMap<&str, Option<u64>> = HashMap::new();
        for e in self.events.clone() {
            let Event::Docker { tenant, action, at_ms } = e else { continue };
            let last = started.entry(tenant).or_insert(None);
            match action.as_str() {
                "start" => {
                    let previous = last.replace(*at_ms);
                    self.count(*at_ms, *at_ms, |row| row.starts += 1);
                    match previous {
                        None => self.count(*at_ms, *at_ms, |row| row.wakes += 1),
                        Some(before) => {
                            let what = format!(
                                "{tenant} started at {at_ms} ms, already started at {before} ms with no die or stop \
                                 since"
                            );
                            self.violate(Invariant::OneStartPerWake, *at_ms, what);
                        }
                    }
                }
                "die" | "stop" => *last = None,
                _ => {}
            }
        }
    }

    /// Invariant 3.
    fn stops(&mut self) {
        let c = &self.h.config;
        for (tenant, at) in stops(&self.events) {
            // Only requests begun before the stop and ended less than an idle timeout before it can be its use.
            let requests: Vec<Request<'_>> = self
                .events
                .iter()
                .filter_map(|e| Request::of(e, tenant))
                .filter(|r| r.start_ms < at && r.end_ms + c.idle_timeout_ms >= at)
                .collect();
            let next_wake = next_wake(&self.events, tenant, at);
            let judge = |counted: &dyn Fn(&Request<'_>) -> bool| under_use(c, &requests, at, next_wake, counted);
            match judge(&|r| !unseen(self.h, r.replica, r.start_ms, at)) {
                Some(why) => {
                    self.count(at, at, |row| row.stops_under_use += 1);
                    self.violate(Invariant::NoStopUnderUse, at, format!("{tenant} stopped at {at} ms {why}"));
                }
                None if judge(&|_| true).is_some() => self.count(at, at, |row| row.stops_cut_off += 1),
                None => {}
            }
        }
    }

    /// Invariant 4, and the convergence times of the table.
    fn convergence(&mut self) {
        let h = self.h;
        let bound = h.config.converge_bound_ms;
        let samples: Vec<(u64, Vec<String>)> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Sample { at_ms, .. } => Some((*at_ms, unconverged(&h.config, e))),
                _ => None,
            })
            .collect();
        for fault in &h.faults {
            let heal = fault.healed_ms;
            let row = self.kind_row[&fault.kind];
            let others = || h.faults.iter().filter(|f| !std::ptr::eq(*f, fault));
            // Another fault still on at this heal: the cluster is not expected to converge until that one heals.
            if others().any(|f| f.start_ms <= heal && f.healed_ms > heal) {
                self.rows[row].converge_unmeasured += 1;
                self.rows[self.all].converge_unmeasured += 1;
                continue;
            }
            let next_fault = others().map(|f| f.start_ms).filter(|&s| s >= heal).min();
            let deadline = heal + bound;
            let cutoff = next_fault.map_or(deadline, |s| s.min(deadline));
            let after: Vec<&(u64, Vec<String>)> =
                samples.iter().filter(|(at, _)| *at >= heal && *at <= cutoff).collect();
            if let Some((at, _)) = after.iter().find(|(_, wrong)| wrong.is_empty()) {
                self.rows[row].converge_ms.push(at - heal);
                self.rows[self.all].converge_ms.push(at - heal);
                continue;
            }
            if cutoff < deadline {
                self.rows[row].converge_unmeasured += 1;
                self.rows[self.all].converge_unmeasured += 1;
                continue;
            }
            let last_sample = samples.last().map(|(at, _)| *at);
            // The printout's slice is centred on the last sample that could have shown convergence.
            let healed = format!("{} on {} healed at {heal} ms", fault.kind, fault.target);
            let (at, what) = match (after.last(), last_sample) {
                (_, Some(last)) if last < deadline => (
                    last,
                    format!("{healed}; the history ends at {last} ms, before the bound ({bound} ms), not converged"),
                ),
                (None, _) => (heal, format!("{healed}; no sample within the bound ({bound} ms)")),
                (Some((at, wrong)), _) => (
                    *at,
                    format!("{healed}; not converged within {bound} ms (last sample at {at} ms: {})", wrong.join("; ")),
                ),
            };
            self.violate(Invariant::Converges, at, what);
        }
    }
}

/// Whether a request succeeded: a 2xx that the client found nothing wrong with (the harness sets `error` on a 2xx
/// that is not the tenant's own answer).
fn succeeded(status: u16, error: Option<&str>) -> bool {
    (200..300).contains(&status) && error.is_none()
}

/// A request of one tenant, as invariant 3 looks at it.
struct Request<'a> {
    replica: &'a str,
    start_ms: u64,
    end_ms: u64,
    served: bool,
}

impl<'a> Request<'a> {
    fn of(e: &'a Event, of_tenant: &str) -> Option<Request<'a>> {
        match e {
            Event::Request { replica, tenant, start_ms, end_ms, status, error, .. } if tenant == of_tenant => {
                let served = succeeded(*status, error.as_deref());
                Some(Request { replica, start_ms: *start_ms, end_ms: *end_ms, served })
            }
            _ => None,
        }
    }
}

/// Each stop of a tenant, (tenant, when): the first `kill`, `pause` or `stop` event since it last started or was
/// unpaused (a `docker stop` sends `kill`, then Docker reports `die` and `stop`; a second `kill` after the grace
/// is the same stop). A `die` alone is a crash, not a stop, and ends the running period.
fn stops<'h>(events: &[&'h Event]) -> Vec<(&'h str, u64)> {
    // Per tenant: whether its running period already ended (a stop opened, or a crash).
    let mut ended: HashMap<&str, bool> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let Event::Docker { tenant, action, at_ms } = e else { continue };
        let done = ended.entry(tenant.as_str()).or_insert(false);
        match action.as_str() {
            "start" | "unpause" => *done = false,
            "kill" | "pause" | "stop" if !*done => {
                *done = true;
                out.push((tenant.as_str(), *at_ms));
            }
            "die" => *done = true,
            _ => {}
        }
    }
    out
}

/// When the tenant was next started or unpaused after `at`.
fn next_wake(events: &[&Event], of_tenant: &str, at: u64) -> Option<u64> {
    events.iter().find_map(|e| match e {
        Event::Docker { tenant, action, at_ms } if tenant == of_tenant && *at_ms > at => {
            matches!(action.as_str(), "start" | "unpause").then_some(*at_ms)
        }
        _ => None,
    })
}

/// Why a stop at `at` was under use by the requests `counted` says count, if it was.
///
/// In flight: a request that began more than the tolerance before the stop and ended after it, before the next
/// wake (one that ended after the next wake was held by reveille through the stop, as LIFECYCLE.md's "Race with
/// requests" says, and served by the next container). Too soon: the last request served before the stop ended
/// less than the idle timeout minus the tolerance before it.
fn under_use(
    c: &RunConfig,
    requests: &[Request<'_>],
    at: u64,
    next_wake: Option<u64>,
    counted: &dyn Fn(&Request<'_>) -> bool,
) -> Option<String> {
    let counted: Vec<&Request<'_>> = requests.iter().filter(|r| counted(r)).collect();
    let held_through = |r: &Request<'_>| next_wake.is_some_and(|w| r.end_ms >= w);
    if let Some(r) = counted.iter().find(|r| r.start_ms + c.tolerance_ms < at && r.end_ms > at && !held_through(r)) {
        return Some(format!("while a request via {} was in flight ({}..{} ms)", r.replica, r.start_ms, r.end_ms));
    }
    let last = counted.iter().filter(|r| r.served && r.end_ms <= at).max_by_key(|r| r.end_ms)?;
    let idle = at - last.end_ms;
    (idle + c.tolerance_ms < c.idle_timeout_ms).then(|| {
        format!(
            "{idle} ms after the last request served (via {}, ended at {} ms), within the idle timeout ({} ms, \
             tolerance {} ms)",
            last.replica, last.end_ms, c.idle_timeout_ms, c.tolerance_ms
        )
    })
}

/// What keeps a sample from being converged (empty when it is).
fn unconverged(c: &RunConfig, sample: &Event) -> Vec<String> {
    let Event::Sample { deciders, status_keys, docker_states, serving, .. } = sample else { return Vec::new() };
    let mut wrong = Vec::new();
    if deciders.len() != 1 {
        wrong.push(format!("{} deciders {deciders:?}", deciders.len()));
    }
    let lookup = |pairs: &'_ [(String, String)], name: &str| {
        pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    for tenant in &c.tenants {
        let status = lookup(status_keys, tenant);
        let docker = lookup(docker_states, tenant);
        // The status key's settled states and the Docker states each stands for.
        let agree = matches!(
            (status.as_deref(), docker.as_deref()),
            (Some("running"), Some("running"))
                | (Some("stopped"), Some("exited" | "created"))
                | (Some("paused"), Some("paused"))
        );
        if !agree {
            let show = |v: Option<String>| v.unwrap_or_else(|| "absent".into());
            wrong.push(format!("{tenant}: status {} but Docker {}", show(status), show(docker)));
        }
    }
    for replica in &c.replicas {
        if !serving.iter().any(|(r, up)| r == replica && *up) {
            wrong.push(format!("{replica} not serving"));
        }
    }
    wrong
}

fn describe_answer(status: u16, error: Option<&str>, reveille_error: Option<&str>) -> String {
    let mut s = if status == 0 { "no answer".to_string() } else { status.to_string() };
    if let Some(e) = error {
        let _ = write!(s, " ({e})");
    }
    if let Some(e) = reveille_error {
        let _ = write!(s, " [reveille: {e}]");
    }
    s
}

/// A violation's printout: the seed, the fault schedule, and every event (of `events`, sorted) within
/// [`SLICE_MS`] of `at_ms`.
fn printout(h: &History, events: &[&Event], at_ms: u64) -> String {
    let mut out = format!("  seed {} (replay with this seed)\n  fault schedule:\n", h.seed);
    if h.faults.is_empty() {
        out.push_str("    (none)\n");
    }
    for f in &h.faults {
        let _ = writeln!(out, "    {}", describe_fault(f));
    }
    let (from, to) = (at_ms.saturating_sub(SLICE_MS), at_ms + SLICE_MS);
    let _ = writeln!(out, "  history {from}..{to} ms:");
    for e in events.iter().filter(|e| e.end_ms() >= from && e.at_ms() <= to) {
        let _ = writeln!(out, "    {}", describe_event(e));
    }
    out
}

fn describe_fault(f: &FaultWindow) -> String {
    format!("{}..{} ms  {} on {}", f.start_ms, f.healed_ms, f.kind, f.target)
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::Request { replica, tenant, start_ms, end_ms, status, error, reveille_error } => format!(
            "{start_ms}..{end_ms} ms  request via {replica} for {tenant}: {}",
            describe_answer(*status, error.as_deref(), reveille_error.as_deref())
        ),
        Event::Docker { tenant, action, at_ms } => format!("{at_ms} ms  docker {action} {tenant}"),
        Event::Sample { at_ms, deciders, status_keys, docker_states, serving } => {
            let pairs = |p: &[(String, String)]| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
            let up: Vec<String> =
                serving.iter().map(|(r, up)| format!("{r}={}", if *up { "up" } else { "down" })).collect();
            format!(
                "{at_ms} ms  sample: deciders {deciders:?}, status {}, docker {}, serving {}",
                pairs(status_keys).join(" "),
                pairs(docker_states).join(" "),
                up.join(" ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 3000;
    const TTL: u64 = 5000;
    const BOUND: u64 = 10_000;
    const TOL: u64 = 200;

    fn history(faults: Vec<FaultWindow>, events: Vec<Event>) -> History {
        History {
            seed: 4242,
            config: RunConfig {
                replicas: vec!["r1".into(), "r2".into(), "r3".into()],
                tenants: vec!["t1".into()],
                idle_timeout_ms: IDLE,
                lease_ttl_ms: TTL,
                converge_bound_ms: BOUND,
                tolerance_ms: TOL,
            },
            faults,
            events,
        }
    }

    /// The history, with a converged sample 250 ms after each heal: for the tests of invariants 1 to 3.
    fn settled(faults: Vec<FaultWindow>, mut events: Vec<Event>) -> History {
        events.extend(faults.iter().map(|f| good(f.healed_ms + 250)));
        history(faults, events)
    }

    fn fault(kind: FaultKind, target: &str, start_ms: u64, healed_ms: u64) -> FaultWindow {
        FaultWindow { kind, target: target.into(), start_ms, healed_ms }
    }

    fn ok(replica: &str, start_ms: u64, end_ms: u64) -> Event {
        failed(replica, start_ms, end_ms, 200, None, None)
    }

    fn failed(
        replica: &str,
        start_ms: u64,
        end_ms: u64,
        status: u16,
        error: Option<&str>,
        reveille_error: Option<&str>,
    ) -> Event {
        Event::Request {
            replica: replica.into(),
            tenant: "t1".into(),
            start_ms,
            end_ms,
            status,
            error: error.map(String::from),
            reveille_error: reveille_error.map(String::from),
        }
    }

    fn docker(action: &str, at_ms: u64) -> Event {
        Event::Docker { tenant: "t1".into(), action: action.into(), at_ms }
    }

    /// A docker stop as Docker reports it: kill, die, stop.
    fn docker_stop(at_ms: u64) -> Vec<Event> {
        vec![docker("kill", at_ms), docker("die", at_ms + 5), docker("stop", at_ms + 6)]
    }

    /// A converged sample (one decider, t1 running in both, everyone serving), then `spoil` applied.
    fn sample(
        at_ms: u64,
        spoil: impl FnOnce(&mut Vec<String>, &mut Vec<(String, String)>, &mut Vec<(String, bool)>),
    ) -> Event {
        let mut deciders = vec!["r1".to_string()];
        let mut status_keys = vec![("t1".to_string(), "running".to_string())];
        let mut serving = vec![("r1".to_string(), true), ("r2".to_string(), true), ("r3".to_string(), true)];
        spoil(&mut deciders, &mut status_keys, &mut serving);
        Event::Sample { at_ms, deciders, status_keys, docker_states: vec![("t1".into(), "running".into())], serving }
    }

    fn good(at_ms: u64) -> Event {
        sample(at_ms, |_, _, _| {})
    }

    /// The one violation the report has, of `invariant`.
    fn only(report: &Report, invariant: Invariant) -> Violation {
        assert_eq!(report.violations.len(), 1, "{}", report.violations_text());
        let v = report.violations[0].clone();
        assert_eq!(v.invariant, invariant, "{v}");
        v
    }

    fn row<'r>(report: &'r Report, label: &str) -> &'r Row {
        report.table.iter().find(|r| r.label == label).unwrap_or_else(|| panic!("no row {label}: {report:?}"))
    }

    // === invariant 1 ===

    #[test]
    fn a_failure_during_an_etcd_majority_loss_is_a_violation_printed_with_seed_schedule_and_slice() {
        let h = settled(
            vec![fault(FaultKind::EtcdMajorityStop, "etcd1,etcd2", 1000, 8000)],
            vec![
                ok("r1", 100, 110),
                ok("r2", 2900, 2910),
                failed("r1", 5000, 5020, 503, None, Some("the service could not be started")),
                ok("r3", 7100, 7110),
                ok("r3", 7200, 7210),
            ],
        );
        let report = check(&h);
        let v = only(&report, Invariant::Answers);
        assert_eq!(v.at_ms, 5000);
        let text = v.to_string();
        assert!(text.contains("seed 4242"), "{text}");
        assert!(text.contains("1000..8000 ms  etcd_majority_stop on etcd1,etcd2"), "{text}");
        assert!(text.contains("history 3000..7000 ms"), "{text}");
        let line = "5000..5020 ms  request via r1 for t1: 503 [reveille: the service could not be started]";
        assert!(text.contains(line), "{text}");
        // The slice is ±2 s: the requests at 2900 and 7100 are outside it.
        assert!(!text.contains("2900..") && !text.contains("7100.."), "{text}");
        assert_eq!(row(&report, "etcd_majority_stop").failed[UNEXCUSED], 1);
        assert_eq!(row(&report, "etcd_majority_stop").violations, [1, 0, 0, 0]);
        // The request at 100 ms came before the fault: it counts in "no fault", the others in the fault's row.
        assert_eq!(row(&report, "etcd_majority_stop").requests, 4);
        assert_eq!(row(&report, "no fault").requests, 1);
        assert_eq!(row(&report, "all").requests, 5);
        assert!(!report.passed());
    }

    #[test]
    fn a_2xx_that_the_client_found_wrong_is_a_failure() {
        let wrong = Some("a 200 that is not the tenant's page: \"nginx\"");
        let report = check(&settled(vec![], vec![ok("r1", 100, 110), failed("r1", 200, 210, 200, wrong, None)]));
        let v = only(&report, Invariant::Answers);
        assert!(v.what.contains("got 200 (a 200 that is not the tenant's page"), "{v}");
        assert_eq!(row(&report, "all").failed[UNEXCUSED], 1);
    }

    #[test]
    fn no_answer_inside_its_own_replicas_freeze_is_counted_by_cause_but_not_on_another_replica() {
        let freeze = || vec![fault(FaultKind::ReplicaFreeze, "r2", 1000, 7000)];
        let inside = settled(freeze(), vec![failed("r2", 2000, 4000, 0, Some("timeout"), None), ok("r1", 2000, 2010)]);
        let report = check(&inside);
        assert!(report.passed(), "{}", report.violations_text());
        let frozen = row(&report, "replica_freeze");
        assert_eq!(frozen.failed.get("replica frozen, no answer"), Some(&1));
        assert_eq!(frozen.requests, 2);
        let table = report.markdown();
        assert!(table.contains("| replica_freeze | 1 | 2 | 1 (replica frozen, no answer 1) |"), "{table}");
        assert!(table.contains("- replica frozen, no answer: a frozen process answers nothing"), "{table}");

        let elsewhere = settled(freeze(), vec![failed("r1", 2000, 4000, 0, Some("timeout"), None)]);
        let v = only(&check(&elsewhere), Invariant::Answers);
        assert!(v.what.contains("via r1") && v.what.contains("no answer (timeout)"), "{v}");
    }

    #[test]
    fn a_502_through_a_replica_cut_off_past_its_lease_is_documented_but_not_before_the_lease_lapses() {
        let cut = || vec![fault(FaultKind::EtcdPartition, "r2", 1000, 20_000)];
        let reached = Some("the service could not be reached");
        let late = settled(cut(), vec![failed("r2", 1000 + TTL, 1000 + TTL + 3, 502, None, reached)]);
        let report = check(&late);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "etcd_partition").failed.get("replica cut off past its lease, 502"), Some(&1));

        // One second into the partition the lease still lives: the decider sees r2's use, nothing excuses a 502.
        let early = settled(cut(), vec![failed("r2", 2000, 2003, 502, None, reached)]);
        only(&check(&early), Invariant::Answers);
        // Nor is a 502 from the backend itself (no reveille reason) excused.
        let backend = settled(cut(), vec![failed("r2", 1000 + TTL, 1000 + TTL + 3, 502, None, None)]);
        only(&check(&backend), Invariant::Answers);
    }

    #[test]
    fn a_502_given_at_the_thaw_of_a_freeze_past_the_lease_is_documented_and_one_given_later_is_not() {
        let freeze = || vec![fault(FaultKind::ReplicaFreeze, "r2", 1000, 1000 + 2 * TTL)];
        let reached = Some("the service could not be reached");
        // Sent before the lease could lapse, answered at the thaw: the replica held it, cut off, the whole time.
        let thaw = settled(freeze(), vec![failed("r2", 1500, 1000 + 2 * TTL, 502, None, reached)]);
        let report = check(&thaw);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "replica_freeze").failed.get("replica cut off past its lease, 502"), Some(&1));
        // A 502 given well after the thaw is the replica's own doing again.
        let late = settled(freeze(), vec![failed("r2", 1500, 1000 + 2 * TTL + 3 * TOL, 502, None, reached)]);
        only(&check(&late), Invariant::Answers);
    }

    #[test]
    fn a_503_while_the_routes_load_is_documented_and_a_404_is_not() {
        let kill = || vec![fault(FaultKind::ReplicaKill, "r2", 1000, 3000)];
        let loading = Some("the routes are still loading; try again");
        let report = check(&settled(kill(), vec![failed("r2", 4000, 4002, 503, None, loading)]));
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "replica_kill").failed.get("routes still loading, 503"), Some(&1));
        let unknown = Some("no route for host \"t1.test\"");
        only(&check(&settled(kill(), vec![failed("r2", 4000, 4002, 404, None, unknown)])), Invariant::Answers);
        // From a replica that was not restarted, or long after the restart, the routes have no excuse.
        only(&check(&settled(kill(), vec![failed("r1", 4000, 4002, 503, None, loading)])), Invariant::Answers);
        let late = 3000 + settled(vec![], vec![]).config.converge_bound_ms + 1;
        only(&check(&settled(kill(), vec![failed("r2", late, late + 2, 503, None, loading)])), Invariant::Answers);
    }

    // === invariant 2 ===

    #[test]
    fn two_starts_without_a_die_between_are_a_violation() {
        let h = settled(vec![], vec![docker("start", 1000), ok("r1", 1100, 1110), docker("start", 1500)]);
        let report = check(&h);
        let v = only(&report, Invariant::OneStartPerWake);
        assert_eq!(v.at_ms, 1500);
        assert!(v.what.contains("already started at 1000 ms"), "{v}");
        assert!(v.to_string().contains("1000 ms  docker start t1"), "{v}");
        assert_eq!((row(&report, "all").starts, row(&report, "all").wakes), (2, 1));
    }

    #[test]
    fn two_starts_with_a_die_between_are_two_wakes() {
        let mut events = vec![docker("start", 1000), ok("r1", 1100, 1110)];
        events.extend(docker_stop(1110 + IDLE + 10));
        events.extend([docker("start", 9000), docker("die", 9500), docker("start", 9600)]);
        let report = check(&settled(vec![], events));
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!((row(&report, "all").starts, row(&report, "all").wakes), (3, 3));
        assert!(report.markdown().contains("| 1.00 (3/3) |"), "{}", report.markdown());
    }

    // === invariant 3 ===

    #[test]
    fn a_stop_inside_the_idle_timeout_is_a_violation_and_one_just_over_it_is_not() {
        let at = |stop: u64| {
            let mut events = vec![docker("start", 0), ok("r1", 100, 200), ok("r3", 1000, 1100)];
            events.extend(docker_stop(stop));
            check(&settled(vec![], events))
        };
        let report = at(1100 + IDLE - TOL - 1);
        let v = only(&report, Invariant::NoStopUnderUse);
        assert!(v.what.contains("via r3, ended at 1100 ms"), "{v}");
        assert_eq!(row(&report, "no fault").stops_under_use, 1);
        // Within the tolerance of the timeout: clocks, not a broken promise.
        assert!(at(1100 + IDLE - TOL).passed());
        assert!(at(1100 + IDLE + 1).passed());
    }

    #[test]
    fn a_stop_while_a_request_is_forwarded_is_a_violation_but_one_held_through_the_stop_is_not() {
        let with = |request: Event| {
            let mut events = vec![docker("start", 0), ok("r1", 100, 200), request];
            events.extend(docker_stop(5000));
            events.push(docker("start", 6000));
            check(&settled(vec![], events))
        };
        // Began long before the stop and ended before the next start: the stopped container was serving it.
        let v = only(&with(ok("r2", 4000, 5100)), Invariant::NoStopUnderUse);
        assert!(v.what.contains("in flight (4000..5100 ms)"), "{v}");
        // Arrived after the decider's claim and was held until the next wake (LIFECYCLE.md, "Race with requests").
        assert!(with(ok("r2", 4500, 6100)).passed());
    }

    #[test]
    fn a_stop_unseen_because_a_replica_is_cut_off_past_its_lease_does_not_count_but_is_shown() {
        let events = || {
            let mut events = vec![docker("start", 0)];
            events.extend((0..24).map(|i| ok("r2", 500 * i, 500 * i + 10)));
            events.extend(docker_stop(1000 + TTL + 500));
            events.push(docker("start", 7000));
            events
        };
        for kind in [FaultKind::EtcdPartition, FaultKind::PeerPartition, FaultKind::ReplicaFreeze] {
            let report = check(&settled(vec![fault(kind, "r2", 1000, 15_000)], events()));
            assert!(report.passed(), "{kind}: {}", report.violations_text());
            assert_eq!(row(&report, kind.as_str()).stops_cut_off, 1);
            assert!(report.markdown().contains("| 0 (+1 cut off) |"), "{}", report.markdown());
        }
        // The same stop without the partition: r2's use counts; and under faults that leave it a quorum.
        only(&check(&settled(vec![], events())), Invariant::NoStopUnderUse);
        for kind in [FaultKind::EtcdLinkLoss, FaultKind::EtcdLinkDelay, FaultKind::EtcdMajorityStop] {
            only(&check(&settled(vec![fault(kind, "r2", 1000, 15_000)], events())), Invariant::NoStopUnderUse);
        }
        // With a partition on another replica: r2's use still counts.
        let other = settled(vec![fault(FaultKind::EtcdPartition, "r3", 1000, 15_000)], events());
        only(&check(&other), Invariant::NoStopUnderUse);
    }

    #[test]
    fn a_killed_replicas_use_does_not_count_once_its_lease_has_lapsed_even_after_its_restart() {
        let events = || {
            let mut events = vec![docker("start", 0), ok("r2", 900, 910)];
            // Past r2's lease (killed at 1000, TTL 5 s) but within a 10 s idle timeout of its last request.
            events.extend(docker_stop(1000 + TTL + 500));
            events
        };
        let with = |faults: Vec<FaultWindow>| {
            let mut h = settled(faults, events());
            h.config.idle_timeout_ms = 10_000;
            check(&h)
        };
        let report = with(vec![fault(FaultKind::ReplicaKill, "r2", 1000, 3000)]);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "replica_kill").stops_cut_off, 1);
        // A partition healed before the stop: r2 republished its use, which counts again.
        let v = only(&with(vec![fault(FaultKind::EtcdPartition, "r2", 1000, 3000)]), Invariant::NoStopUnderUse);
        assert!(v.what.contains("via r2, ended at 910 ms"), "{v}");
    }

    // === invariant 4 ===

    #[test]
    fn the_time_to_converge_is_measured_from_the_first_converged_sample_after_each_heal() {
        let h = history(
            vec![
                fault(FaultKind::EtcdLeaderKill, "etcd2", 1000, 10_000),
                fault(FaultKind::EtcdLeaderKill, "etcd1", 30_000, 40_000),
            ],
            vec![
                sample(9750, |d, _, _| d.clear()),
                sample(10_000, |d, _, _| d.push("r2".into())),
                sample(10_250, |_, s, _| s[0].1 = "starting".into()),
                sample(10_500, |_, _, up| up[1].1 = false),
                good(10_750),
                sample(11_000, |d, _, _| d.clear()),
                sample(40_000, |d, _, _| d.clear()),
                good(40_250),
            ],
        );
        let report = check(&h);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "etcd_leader_kill").converge_ms, vec![750, 250]);
        assert!(report.markdown().contains("| 500 ms, 750 ms |"), "{}", report.markdown());
    }

    #[test]
    fn no_convergence_within_the_bound_is_a_violation_naming_what_was_wrong() {
        let mut events: Vec<Event> =
            (0..=48).map(|i| sample(10_000 + 250 * i, |_, s, _| s[0].1 = "stopping".into())).collect();
        events.push(good(10_000 + BOUND + 250));
        let h = history(vec![fault(FaultKind::ReplicaKill, "r3", 1000, 10_000)], events);
        let report = check(&h);
        let v = only(&report, Invariant::Converges);
        assert_eq!(v.at_ms, 10_000 + BOUND);
        assert!(v.what.contains("t1: status stopping but Docker running"), "{v}");
        assert!(v.to_string().contains("seed 4242"), "{v}");

        // One sample inside the bound converged: measured, no violation.
        let mut events: Vec<Event> =
            (0..=48).map(|i| sample(10_000 + 250 * i, |_, s, _| s[0].1 = "stopping".into())).collect();
        events[40] = good(20_000);
        let report = check(&history(vec![fault(FaultKind::ReplicaKill, "r3", 1000, 10_000)], events));
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "replica_kill").converge_ms, vec![BOUND]);
    }

    #[test]
    fn a_heal_followed_by_the_next_fault_before_convergence_is_not_measured_but_a_short_history_fails() {
        let unsettled = |at: u64| sample(at, |d, _, _| d.clear());
        let next_too_soon = history(
            vec![
                fault(FaultKind::EtcdMinorityStop, "etcd3", 1000, 5000),
                fault(FaultKind::EtcdLinkLoss, "r1", 6000, 9000),
            ],
            vec![unsettled(5000), unsettled(5900), unsettled(9100), good(9250)],
        );
        let report = check(&next_too_soon);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "etcd_minority_stop").converge_unmeasured, 1);
        assert_eq!(row(&report, "etcd_link_loss").converge_ms, vec![250]);

        // A heal while another fault is still on: the cluster converges only after that one heals.
        let overlapping = history(
            vec![fault(FaultKind::EtcdLinkDelay, "r2", 1000, 5000), fault(FaultKind::EtcdPartition, "r3", 3000, 8000)],
            vec![unsettled(5000), good(8250)],
        );
        let report = check(&overlapping);
        assert!(report.passed(), "{}", report.violations_text());
        assert_eq!(row(&report, "etcd_link_delay").converge_unmeasured, 1);
        assert_eq!(row(&report, "etcd_link_delay").converge_ms, Vec::<u64>::new());
        assert_eq!(row(&report, "etcd_partition").converge_ms, vec![250]);
        assert!(report.markdown().contains("| n/a (1 not measured) |"), "{}", report.markdown());

        let ends_early = history(vec![fault(FaultKind::EtcdMinorityStop, "etcd3", 1000, 5000)], vec![unsettled(5000)]);
        let v = only(&check(&ends_early), Invariant::Converges);
        assert!(v.what.contains("the history ends at 5000 ms"), "{v}");
        assert!(v.printout.contains("5000 ms  sample: deciders [], status t1=running"), "{v}");
    }

    #[test]
    fn reports_of_several_runs_merge_row_by_row() {
        let run = |seed: u64, faults: Vec<FaultWindow>, heal_sample: u64| {
            let mut h =
                history(faults, vec![ok("r1", 100, 110), failed("r2", 2000, 2010, 0, None, None), good(heal_sample)]);
            h.seed = seed;
            check(&h)
        };
        let a = run(1, vec![fault(FaultKind::ReplicaFreeze, "r2", 1000, 5000)], 5250);
        let b = run(
            2,
            vec![fault(FaultKind::ReplicaFreeze, "r2", 1000, 3000), fault(FaultKind::EtcdLinkDelay, "r1", 9000, 9500)],
            3500,
        );
        // b's link delay heals at 9500 ms with no sample after it: a convergence violation.
        assert!(a.passed() && b.violations.len() == 1, "{}\n{}", a.violations_text(), b.violations_text());
        let both = Report::merge([a, b]);
        assert_eq!(both.seeds, vec![1, 2]);
        assert_eq!(both.violations.len(), 1);
        let labels: Vec<&str> = both.table.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["replica_freeze", "etcd_link_delay", "no fault", "all"]);
        let frozen = row(&both, "replica_freeze");
        assert_eq!((frozen.runs, frozen.requests, frozen.failed["replica frozen, no answer"]), (2, 2, 2));
        assert_eq!(row(&both, "no fault").requests, 2);
        assert_eq!(frozen.converge_ms, vec![250, 500]);
        assert_eq!(row(&both, "all").runs, 3);
        assert!(both.markdown().starts_with("Seed(s) 1, 2: 1 violation(s)."), "{}", both.markdown());
    }

    #[test]
    fn a_round_tripped_history_checks_the_same() {
        let mut events = vec![docker("start", 0), ok("r1", 100, 200), failed("r2", 300, 400, 0, Some("reset"), None)];
        events.extend(docker_stop(1000));
        events.push(good(1250));
        let h = history(vec![fault(FaultKind::PeerPartition, "r2", 250, 1200)], events);
        let mut text = Vec::new();
        h.write_jsonl(&mut text).unwrap();
        let again = History::read_jsonl(text.as_slice()).unwrap();
        let (a, b) = (check(&h), check(&again));
        assert_eq!(a, b);
        // Recorded out of order (a request is pushed when it ends): the same report.
        let mut shuffled = h.clone();
        shuffled.events.reverse();
        assert_eq!(check(&shuffled), a);
        // The reset request (nothing documents a failure for a peer partition) and the stop 800 ms after use.
        let found: Vec<Invariant> = a.violations.iter().map(|v| v.invariant).collect();
        assert_eq!(found, vec![Invariant::Answers, Invariant::NoStopUnderUse], "{}", a.violations_text());
    }
}
