//! Route sources: where route tables come from and how changes reach the proxy.
//!
//! Owns loading, validating and watching route definitions (today: the routes file). A source builds a complete
//! new [`RouteTable`] and hands it to [`install`]; it never edits the table in force. It does not know how
//! requests are routed (that is `routes/`) or proxied (`proxy/`).

pub mod file;

use crate::metrics::Metrics;
use crate::routes::{RouteHandle, RouteTable};

/// Swaps `table` in as the table in force and updates the gauges that describe it.
pub fn install(routes: &RouteHandle, metrics: &Metrics, table: RouteTable) {
    metrics.table_installed(table.route_count(), table.service_count());
    routes.store(table);
}
