//! Order budgets: how many orders the account may place per window, and how many new certificates a registered
//! domain may get per window, so that a burst of tenants' domains (or a bug) cannot burn the CA's rate limits —
//! Let's Encrypt's are 300 new orders per account per 3 hours and 50 certificates per registered domain per
//! week; the defaults stay below them.
//!
//! The ledger of orders lives in the store (etcd for the cluster, the certificates directory for one replica):
//! the account is the cluster's, so is the budget. It counts orders when they are placed, failed ones included
//! — conservative, as a CA's own limits can count failed orders too. Renewals do not count against the domain
//! budget (the CA exempts them), only against the account's, of which a fifth is kept for them. Two replicas ordering different names of one
//! domain at the same moment may both see the last unit of its budget: the budget can be passed by the number
//! of replicas minus one, never more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[acme]` budget settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// New certificates per registered domain per `domain_window`.
    pub per_domain: u32,
    pub domain_window: Duration,
    /// Orders per account per `account_window`.
    pub per_account: u32,
    pub account_window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            per_domain: 40,
            domain_window: Duration::from_secs(7 * 86_400),
            per_account: 250,
            account_window: Duration::from_secs(3 * 3_600),
        }
    }
}

impl Budget {
    /// How long a ledger entry matters.
    pub(crate) fn longest_window(&self) -> Duration {
        self.domain_window.max(self.account_window)
    }
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

/// Whether an order for `host` fits the budget, given the ledger.
pub(crate) fn check(budget: &Budget, ledger: &[Entry], host: &str, renewal: bool, now: i64) -> Result<(), Refusal> {
    let since = |w: Duration| now - w.as_secs() as i64;
    let refuse = |reason, used: usize, what: String, window: Duration, max: u32| {
        if used < max as usize {
            return Ok(());
        }
        let detail = format!("{used} {what} in the last {} (budget {max})", humantime::format_duration(window));
        Err(Refusal { reason, detail })
    };
    let account = ledger.iter().filter(|e| e.at > since(budget.account_window)).count();
    // A fifth of the account's budget is kept for renewals: new names (a flood of handshakes for routed names
    // that never validate, say) cannot starve the certificates already in use.
    let max = if renewal { budget.per_account } else { budget.per_account - budget.per_account / 5 };
    refuse("budget_account", account, "orders".into(), budget.account_window, max)?;
    if !renewal {
        let domain = registered_domain(host);
        let used =
            ledger.iter().filter(|e| !e.renewal && e.domain == domain && e.at > since(budget.domain_window)).count();
        let what = format!("new certificates for {domain}");
        refuse("budget_domain", used, what, budget.domain_window, budget.per_domain)?;
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
        Entry { host: host.into(), domain: registered_domain(host), at, renewal }
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
        let refused = check(&b, &ledger, "t40.example.com", false, now).unwrap_err();
        assert_eq!(refused.reason, "budget_domain");
        assert!(
            refused.detail.contains("40 new certificates for example.com") && refused.detail.contains("(budget 40)"),
            "{}",
            refused.detail
        );
        assert!(check(&b, &ledger[1..], "t40.example.com", false, now).is_ok(), "the 40th is allowed");
        // 250 orders in 3 hours per account, below Let's Encrypt's 300.
        let burst: Vec<Entry> = (0..250).map(|i| entry(&format!("a.d{i}.org"), now - 60, false)).collect();
        assert_eq!(check(&b, &burst, "a.d250.org", false, now).unwrap_err().reason, "budget_account");
        assert!(b.per_domain < 50 && b.per_account < 300);
    }

    #[test]
    fn domain_and_account_budgets() {
        let b = Budget {
            per_domain: 2,
            domain_window: Duration::from_secs(100),
            per_account: 5,
            account_window: Duration::from_secs(10),
        };
        let now = 1_000;
        let mut ledger = vec![entry("a.example.com", now - 50, false), entry("b.example.com", now - 40, false)];
        let refused = check(&b, &ledger, "c.example.com", false, now).unwrap_err();
        assert_eq!(refused.reason, "budget_domain");
        assert!(refused.detail.contains("2 new certificates for example.com"), "{}", refused.detail);
        assert!(check(&b, &ledger, "a.example.com", true, now).is_ok(), "renewals are exempt from the domain's");
        assert!(check(&b, &ledger, "x.other.org", false, now).is_ok(), "another domain has its own");
        assert!(check(&b, &ledger, "c.example.com", false, now + 51).is_ok(), "the window moves on");

        for i in 0..5 {
            ledger.push(entry(&format!("h{i}.org{i}.net"), now - 1, i % 2 == 0));
        }
        assert_eq!(check(&b, &ledger, "z.zz.net", true, now).unwrap_err().reason, "budget_account");
        ledger.pop();
        assert!(check(&b, &ledger, "z.zz.net", true, now).is_ok(), "the renewals' reserve");
        assert_eq!(check(&b, &ledger, "y.zz.net", false, now).unwrap_err().reason, "budget_account");
        ledger.push(entry("h4.org4.net", now - 1, true));
        assert!(check(&b, &ledger, "z.zz.net", true, now + 10).is_ok());

        prune(&b, &mut ledger, now + 55);
        assert_eq!(ledger.len(), 6, "the oldest left the longest window");
    }
}
