//! Order budgets: how many orders the account may place per window, and how many new certificates a registered
//! domain may get per window, so that a burst of tenants' domains (or a bug) cannot burn the CA's rate limits —
//! Let's Encrypt's are 300 new orders per account per 3 hours and 50 certificates per registered domain per
//! week; the defaults stay below them.
//!
//! The ledger of orders lives in the store (etcd for the cluster, the certificates directory for one replica):
//! the account is the cluster's, so is the budget. It counts orders when they are placed, failed ones included
//! — conservative, as a CA's own limits can count failed orders too. Renewals do not count against the domain
//! budget (the CA exempts them), only against the account's, of which a fifth is kept for them. Orders that a
//! handshake started (on demand) may use only `on_demand_share` of each budget: any client can cause them, by
//! handshakes for routed names, and must not leave nothing for the orders of the scan (eager orders, renewals).
//! Two replicas ordering different names of one domain at the same moment may both see the last unit of its
//! budget: the budget can be passed by the number of replicas minus one, never more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[acme]` budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// New certificates per registered domain per `domain_window`.
    pub per_domain: u32,
    pub domain_window: Duration,
    /// Orders per account per `account_window`.
    pub per_account: u32,
    pub account_window: Duration,
    /// The part of each budget (0 to 1, rounded down to whole orders) that on-demand orders may use; the rest
    /// is kept for eager orders and renewals.
    pub on_demand_share: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            per_domain: 40,
            domain_window: Duration::from_secs(7 * 86_400),
            per_account: 250,
            account_window: Duration::from_secs(3 * 3_600),
            on_demand_share: 0.5,
        }
    }
}

impl Budget {
    /// How long a ledger entry matters.
    pub(crate) fn longest_window(&self) -> Duration {
        self.domain_window.max(self.account_window)
    }

    /// How many of `max` orders on-demand orders may use.
    pub(crate) fn on_demand_part(&self, max: u32) -> u32 {
        (f64::from(max) * self.on_demand_share.clamp(0.0, 1.0)).floor() as u32
    }
}

/// What an order is for, as the budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A first certificate, ordered by the scan (eager).
    New,
    /// A first certificate, ordered because a handshake asked for it.
    OnDemand,
    /// A certificate that replaces one of reveille's own.
    Renewal,
}

/// One order placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub host: String,
    /// The registered domain of `host` (the public suffix list's "domain").
    pub domain: String,
    /// When it was placed, in seconds since the epoch.
    pub at: i64,
    pub renewal: bool,
    /// Started by a handshake (absent in entries written before on-demand orders were told apart).
    #[serde(default)]
    pub on_demand: bool,
}

/// The registered domain of `host`: `a.b.example.co.uk` → `example.co.uk`; a name the list cannot split is its
/// own domain.
pub(crate) fn registered_domain(host: &str) -> String {
    psl::domain_str(host).unwrap_or(host).to_string()
}

/// Why an order is refused by the budget: the metric reason and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    /// Refused for the on-demand share only: an eager order or a renewal of the same name may still go.
    pub(crate) fn on_demand_share(&self) -> bool {
        matches!(self.reason, "on_demand_domain" | "on_demand_account")
    }
}

/// Whether an order for `host` fits the budget, given the ledger.
pub(crate) fn check(budget: &Budget, ledger: &[Entry], host: &str, purpose: Purpose, now: i64) -> Result<(), Refusal> {
    let since = |w: Duration| now - w.as_secs() as i64;
    let window = |w: Duration| humantime::format_duration(w).to_string();
    let refuse = |reason, used: usize, what: String, window: Duration, max: u32| {
        if used < max as usize {
            return Ok(());
        }
        let detail = format!("{used} {what} in the last {} (budget {max})", humantime::format_duration(window));
        Err(Refusal { reason, detail })
    };
    let renewal = purpose == Purpose::Renewal;
    let on_demand = purpose == Purpose::OnDemand;
    let in_account = |e: &&Entry| e.at > since(budget.account_window);
    let account = ledger.iter().filter(in_account).count();
    // A fifth of the account's budget is kept for renewals: new names (a flood of handshakes for routed names
    // that never validate, say) cannot starve the certificates already in use.
    let max = if renewal { budget.per_account } else { budget.per_account - budget.per_account / 5 };
    refuse("budget_account", account, "orders".into(), budget.account_window, max)?;
    if on_demand {
        let part = budget.on_demand_part(budget.per_account);
        let used = ledger.iter().filter(in_account).filter(|e| e.on_demand).count();
        if used >= part as usize {
            let detail = format!(
                "{used} on-demand orders in the last {} (on-demand share {part} of the account's budget of {}: \
                 the rest is kept for eager orders and renewals)",
                window(budget.account_window),
                budget.per_account
            );
            return Err(Refusal { reason: "on_demand_account", detail });
        }
    }
    if !renewal {
        let domain = registered_domain(host);
        let in_domain = |e: &&Entry| !e.renewal && e.domain == domain && e.at > since(budget.domain_window);
        let used = ledger.iter().filter(in_domain).count();
        let what = format!("new certificates for {domain}");
        refuse("budget_domain", used, what, budget.domain_window, budget.per_domain)?;
        if on_demand {
            let part = budget.on_demand_part(budget.per_domain);
            let used = ledger.iter().filter(in_domain).filter(|e| e.on_demand).count();
            if used >= part as usize {
                let detail = format!(
                    "{used} on-demand certificates for {domain} in the last {} (on-demand share {part} of its \
                     budget of {}: the rest is kept for eager orders)",
                    window(budget.domain_window),
                    budget.per_domain
                );
                return Err(Refusal { reason: "on_demand_domain", detail });
            }
        }
    }
    Ok(())
}

/// The entries still inside the longest window.
pub(crate) fn prune(budget: &Budget, ledger: &mut Vec<Entry>, now: i64) {
    let since = now - budget.longest_window().as_secs() as i64;
    ledger.retain(|e| e.at > since);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, at: i64, renewal: bool) -> Entry {
        Entry { host: host.into(), domain: registered_domain(host), at, renewal, on_demand: false }
    }

    fn on_demand(host: &str, at: i64) -> Entry {
        Entry { on_demand: true, ..entry(host, at, false) }
    }

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        assert_eq!(registered_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("shop.example.com"), "example.com");
        assert_eq!(registered_domain("tenant.github.io"), "tenant.github.io", "a private suffix");
        assert_eq!(registered_domain("a.web.test"), "web.test");
    }

    /// With the defaults, a registered domain's 41st new certificate in a week is refused, with its reason:
    /// Let's Encrypt's limit (50) is never reached, whatever the tenants' routes ask for.
    #[test]
    fn the_default_budget_stays_below_lets_encrypts_limits() {
        let b = Budget::default();
        let now = 10_000_000;
        // Spread over the week, so the account's 3-hour window is not what refuses.
        let ledger: Vec<Entry> =
            (0..40).map(|i| entry(&format!("t{i}.example.com"), now - 6 * 86_400 + i * 3_600, false)).collect();
        let refused = check(&b, &ledger, "t40.example.com", Purpose::New, now).unwrap_err();
        assert_eq!(refused.reason, "budget_domain");
        assert!(
            refused.detail.contains("40 new certificates for example.com") && refused.detail.contains("(budget 40)"),
            "{}",
            refused.detail
        );
        assert!(check(&b, &ledger[1..], "t40.example.com", Purpose::New, now).is_ok(), "the 40th is allowed");
        // 250 orders in 3 hours per account, below Let's Encrypt's 300.
        let burst: Vec<Entry> = (0..250).map(|i| entry(&format!("a.d{i}.org"), now - 60, false)).collect();
        assert_eq!(check(&b, &burst, "a.d250.org", Purpose::New, now).unwrap_err().reason, "budget_account");
        assert!(b.per_domain < 50 && b.per_account < 300);
    }

    #[test]
    fn domain_and_account_budgets() {
        let b = Budget {
            per_domain: 2,
            domain_window: Duration::from_secs(100),
            per_account: 5,
            account_window: Duration::from_secs(10),
            on_demand_share: 0.5,
        };
        let now = 1_000;
        let mut ledger = vec![entry("a.example.com", now - 50, false), entry("b.example.com", now - 40, false)];
        let refused = check(&b, &ledger, "c.example.com", Purpose::New, now).unwrap_err();
        assert_eq!(refused.reason, "budget_domain");
        assert!(refused.detail.contains("2 new certificates for example.com"), "{}", refused.detail);
        assert!(
            check(&b, &ledger, "a.example.com", Purpose::Renewal, now).is_ok(),
            "renewals are exempt from the domain's"
        );
        assert!(check(&b, &ledger, "x.other.org", Purpose::New, now).is_ok(), "another domain has its own");
        assert!(check(&b, &ledger, "c.example.com", Purpose::New, now + 51).is_ok(), "the window moves on");

        for i in 0..5 {
            ledger.push(entry(&format!("h{i}.org{i}.net"), now - 1, i % 2 == 0));
        }
        assert_eq!(check(&b, &ledger, "z.zz.net", Purpose::Renewal, now).unwrap_err().reason, "budget_account");
        ledger.pop();
        assert!(check(&b, &ledger, "z.zz.net", Purpose::Renewal, now).is_ok(), "the renewals' reserve");
        assert_eq!(check(&b, &ledger, "y.zz.net", Purpose::New, now).unwrap_err().reason, "budget_account");
        ledger.push(entry("h4.org4.net", now - 1, true));
        assert!(check(&b, &ledger, "z.zz.net", Purpose::Renewal, now + 10).is_ok());

        prune(&b, &mut ledger, now + 55);
        assert_eq!(ledger.len(), 6, "the oldest left the longest window");
    }

    /// On-demand orders use at most their share of each budget, rounded down to whole orders; eager orders and
    /// renewals may still use the rest, which on-demand orders never reach.
    #[test]
    fn on_demand_orders_use_only_their_share_of_each_budget() {
        let b = Budget {
            per_domain: 5,
            domain_window: Duration::from_secs(100),
            per_account: 20,
            account_window: Duration::from_secs(10),
            on_demand_share: 0.5,
        };
        assert_eq!((b.on_demand_part(5), b.on_demand_part(20)), (2, 10), "rounded down");
        let now = 1_000;
        let mut ledger = vec![on_demand("a.shop.test", now - 50), on_demand("b.shop.test", now - 40)];
        assert!(check(&b, &ledger[1..], "c.shop.test", Purpose::OnDemand, now).is_ok(), "the second of two");
        let refused = check(&b, &ledger, "c.shop.test", Purpose::OnDemand, now).unwrap_err();
        assert_eq!(refused.reason, "on_demand_domain");
        assert!(refused.on_demand_share());
        assert!(
            refused.detail.contains("2 on-demand certificates for shop.test")
                && refused.detail.contains("share 2 of its budget of 5"),
            "{}",
            refused.detail
        );
        assert!(check(&b, &ledger, "c.shop.test", Purpose::New, now).is_ok(), "an eager order uses the reserve");
        assert!(check(&b, &ledger, "x.other.test", Purpose::OnDemand, now).is_ok(), "another domain's share");
        assert!(check(&b, &ledger, "c.shop.test", Purpose::OnDemand, now + 51).is_ok(), "the window moves on");

        // Eager orders do not count against the on-demand share, and use the budget up to its end, not past it.
        let eager: Vec<Entry> = (0..2).map(|i| entry(&format!("e{i}.shop.test"), now - 30, false)).collect();
        let mut mixed = vec![ledger[0].clone()];
        mixed.extend(eager.iter().cloned());
        assert!(check(&b, &mixed, "c.shop.test", Purpose::OnDemand, now).is_ok(), "1 of 2 on demand");
        ledger.extend(eager);
        ledger.push(entry("e2.shop.test", now - 30, false));
        let refused = check(&b, &ledger, "c.shop.test", Purpose::New, now).unwrap_err();
        assert_eq!(refused.reason, "budget_domain", "5 of 5: the whole budget");
        assert_eq!(check(&b, &ledger, "c.shop.test", Purpose::OnDemand, now).unwrap_err().reason, "budget_domain");
        assert!(check(&b, &ledger, "a.shop.test", Purpose::Renewal, now).is_ok(), "renewals are exempt");

        // The account: 10 on-demand orders across domains in its window are its share; eager orders go on up to
        // four fifths of it (16), renewals to the end.
        let flood: Vec<Entry> = (0..10).map(|i| on_demand(&format!("a.d{i}.org"), now - 1)).collect();
        let refused = check(&b, &flood, "a.d10.org", Purpose::OnDemand, now).unwrap_err();
        assert_eq!(refused.reason, "on_demand_account");
        assert!(refused.detail.contains("10 on-demand orders in the last 10s"), "{}", refused.detail);
        assert!(check(&b, &flood, "a.d10.org", Purpose::New, now).is_ok());
        assert!(check(&b, &flood, "a.d10.org", Purpose::OnDemand, now + 10).is_ok(), "the account's window moved");

        // A share of 1 keeps nothing back; 0 leaves on-demand orders nothing.
        let all = Budget { on_demand_share: 1.0, ..b };
        assert!(check(&all, &ledger[..4], "c.shop.test", Purpose::OnDemand, now).is_ok());
        let none = Budget { on_demand_share: 0.0, ..b };
        assert_eq!(check(&none, &[], "c.shop.test", Purpose::OnDemand, now).unwrap_err().reason, "on_demand_account");

        // The defaults: 20 of a domain's 40 a week, 125 of the account's 250 in 3 hours.
        let d = Budget::default();
        assert_eq!((d.on_demand_part(d.per_domain), d.on_demand_part(d.per_account)), (20, 125));
        // Ledger entries written before on-demand orders were told apart read as eager ones.
        let old: Entry =
            serde_json::from_str(r#"{"host":"a.b.test","domain":"b.test","at":1,"renewal":false}"#).unwrap();
        assert!(!old.on_demand);
    }
}
