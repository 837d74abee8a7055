//! The key schema under one prefix (default `/reveille/`): every key any part of reveille reads or writes.
//!
//! - `<prefix>routes/<hostname>` → `{"service": "acme"}` (`<hostname>` may be `*.example.com`, and may go on
//!   with a path prefix: `routes/shop.test/api/`), read by `control::etcd`, written by `reveille route`.
//! - `<prefix>services/<name>` → `{"backends": [...], ...}`, read by `control::etcd`, written by
//!   `reveille service`.
//! - `<prefix>status/<name>` → `{"state", "since", "node"}`: a passivated service's state, changed by
//!   compare-and-swap transactions (`cluster`).
//! - `<prefix>cluster/replicas/<node>`, `<prefix>cluster/decider` and `<prefix>cluster/activity/<name>/<node>`:
//!   the replicas alive, the one that decides idle stops, and each replica's use of each tenant, all under the
//!   writing replica's lease (`cluster`).
//! - `<prefix>certs/<name>` → `{"cert": "PEM chain", "key": "PEM key"}`, read by `tls::etcd`, written by
//!   `reveille cert`, and by ACME (`acme-<host>`).
//! - `<prefix>acme/account` (the ACME account's credentials), `<prefix>acme/challenges/<kind>/<id>` (a pending
//!   challenge's answer, under a lease), `<prefix>acme/orders/<host>` (the replica ordering a certificate,
//!   under a lease), `<prefix>acme/ledger/<at>-<host>` (orders placed, for the budgets) and
//!   `<prefix>acme/failures/<host>` (a name's recent failures: its backoff): `acme`.
//!
//! What the values mean is for those modules; this one only names keys and ranges.

/// What a key under `<prefix>cluster/` is.
#[derive(Debug, PartialEq, Eq)]
pub enum ClusterKey<'a> {
    Replica(&'a str),
    Decider,
    Activity { service: &'a str, node: &'a str },
    KeepAwake(&'a str),
    Other,
}

/// The key schema under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Route(&'a str),
    Service(&'a str),
    Other,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn routes(&self) -> String {
        format!("{}routes/", self.prefix)
    }

    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }

    pub fn route(&self, host: &str) -> String {
        format!("{}routes/{host}", self.prefix)
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    /// `<prefix>status/<name>`: a passivated service's state, written by reveille.
    pub fn status(&self, name: &str) -> String {
        format!("{}status/{name}", self.prefix)
    }

    /// The key range of status keys: `[<prefix>status/, <prefix>status0)`.
    pub fn status_range(&self) -> (String, String) {
        (format!("{}status/", self.prefix), format!("{}status0", self.prefix))
    }

    /// The service name of a key in [`Keys::status_range`].
    pub fn status_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("status/")
    }

    /// The key range of the cluster's keys (replicas, decider, activity): `[<prefix>cluster/, <prefix>cluster0)`.
    pub fn cluster_range(&self) -> (String, String) {
        (format!("{}cluster/", self.prefix), format!("{}cluster0", self.prefix))
    }

    /// `<prefix>cluster/replicas/<node>`: a live replica, under its lease.
    pub fn replica(&self, node: &str) -> String {
        format!("{}cluster/replicas/{node}", self.prefix)
    }

    /// `<prefix>cluster/decider`: the node that decides idle stops, under its lease.
    pub fn decider(&self) -> String {
        format!("{}cluster/decider", self.prefix)
    }

    /// `<prefix>cluster/activity/<name>/<node>`: a replica's use of a tenant, under its lease.
    pub fn activity(&self, name: &str, node: &str) -> String {
        format!("{}cluster/activity/{name}/{node}", self.prefix)
    }

    /// `<prefix>cluster/keep-awake/<name>`: a tenant kept awake, under a lease that ends with it.
    pub fn keep_awake(&self, name: &str) -> String {
        format!("{}cluster/keep-awake/{name}", self.prefix)
    }

    /// What a key in [`Keys::cluster_range`] is.
    pub fn cluster_kind<'k>(&self, key: &'k str) -> ClusterKey<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix("cluster/")) else {
            return ClusterKey::Other;
        };
        if rest == "decider" {
            return ClusterKey::Decider;
        }
        if let Some(node) = rest.strip_prefix("replicas/") {
            return ClusterKey::Replica(node);
        }
        if let Some((service, node)) = rest.strip_prefix("activity/").and_then(|r| r.rsplit_once('/')) {
            return ClusterKey::Activity { service, node };
        }
        if let Some(service) = rest.strip_prefix("keep-awake/") {
            return ClusterKey::KeepAwake(service);
        }
        ClusterKey::Other
    }

    /// `<prefix>certs/<name>`: a TLS certificate chain and its key.
    pub fn cert(&self, name: &str) -> String {
        format!("{}certs/{name}", self.prefix)
    }

    /// The key range of certificates: `[<prefix>certs/, <prefix>certs0)`.
    pub fn certs_range(&self) -> (String, String) {
        (format!("{}certs/", self.prefix), format!("{}certs0", self.prefix))
    }

    /// The certificate name of a key in [`Keys::certs_range`].
    pub fn cert_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("certs/")
    }

    /// `<prefix>acme/account`: the ACME account's credentials (JSON).
    pub fn acme_account(&self) -> String {
        format!("{}acme/account", self.prefix)
    }

    /// `<prefix>acme/challenges/<kind>/<id>`: a pending ACME challenge's answer.
    pub fn acme_challenge(&self, kind: &str, id: &str) -> String {
        format!("{}acme/challenges/{kind}/{id}", self.prefix)
    }

    /// `<prefix>acme/ledger/<at>-<host>`: an order placed, for the order budgets.
    pub fn acme_ledger(&self, id: &str) -> String {
        format!("{}acme/ledger/{id}", self.prefix)
    }

    /// `<prefix>acme/failures/<host>`: a name's recent order failures, its backoff for every replica.
    pub fn acme_failure(&self, host: &str) -> String {
        format!("{}acme/failures/{host}", self.prefix)
    }

    /// `<prefix>acme/orders/<host>`: held by the replica that orders a certificate for `host`.
    pub fn acme_order(&self, host: &str) -> String {
        format!("{}acme/orders/{host}", self.prefix)
    }

    /// The key range holding routes and services, and nothing that changes often (`activity/` sorts before
    /// it, `status/` after): `[<prefix>routes/, <prefix>services0)`.
    pub fn watched_range(&self) -> (String, String) {
        (self.routes(), format!("{}services0", self.prefix))
    }

    pub fn kind<'k>(&self, key: &'k str) -> KeyKind<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        if let Some(host) = rest.strip_prefix("routes/") {
            KeyKind::Route(host)
        } else if let Some(name) = rest.strip_prefix("services/") {
            KeyKind::Service(name)
        } else {
            KeyKind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_schema() {
        let k = Keys::new("/reveille");
        assert_eq!(k.route("a.com"), "/reveille/routes/a.com");
        assert_eq!(k.kind("/reveille/routes/*.a.com"), KeyKind::Route("*.a.com"));
        assert_eq!(k.kind("/reveille/services/acme"), KeyKind::Service("acme"));
        assert_eq!(k.kind("/reveille/status/acme"), KeyKind::Other);
        assert_eq!(k.kind("/other/routes/a"), KeyKind::Other);
        let (start, end) = k.watched_range();
        for inside in ["/reveille/routes/a", "/reveille/services/z"] {
            assert!(inside >= start.as_str() && inside < end.as_str(), "{inside}");
        }
        for outside in ["/reveille/status/a", "/reveille/cluster/activity/a/n", "/reveille/certs/a"] {
            assert!(!(outside >= start.as_str() && outside < end.as_str()), "{outside}");
        }
        assert_eq!(k.cluster_kind(&k.activity("acme", "n1")), ClusterKey::Activity { service: "acme", node: "n1" });
        assert_eq!(k.cluster_kind(&k.replica("n1")), ClusterKey::Replica("n1"));
        assert_eq!(k.cluster_kind(&k.decider()), ClusterKey::Decider);
        assert_eq!(k.cluster_kind(&k.keep_awake("acme")), ClusterKey::KeepAwake("acme"));
        assert_eq!(k.status_name(&k.status("acme")), Some("acme"));
        let (start, end) = k.cluster_range();
        assert!(k.activity("a", "b") > start && k.activity("a", "b") < end && k.status("a") > end);
    }
}
