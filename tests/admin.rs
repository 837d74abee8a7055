//! The admin endpoint: health, readiness, metrics and the route table as JSON.

mod support;

use std::sync::Arc;

use http::StatusCode;
use reveille::{AdminState, Metrics, Readiness, RouteHandle};
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_routes() {
    let a = Backend::echo("a").await;
    let proxy =
        TestProxy::start(&routes_file(&[("acme", vec![a.addr])], &[("acme.test", "acme"), ("*.acme.test", "acme")]))
            .await;

    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(proxy.admin_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(proxy.admin_get("/nope").await.0, StatusCode::NOT_FOUND);

    let (status, body) = proxy.admin_get("/api/routes").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["routes"]["acme.test"], "acme");
    assert_eq!(json["routes"]["*.acme.test"], "acme");
    assert_eq!(json["services"]["acme"]["backends"][0], a.addr.to_string());

    for _ in 0..3 {
        assert_eq!(get(proxy.http, "acme.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(get(proxy.http, "unknown.test", "/").await.status, StatusCode::NOT_FOUND);
    let (_, text) = proxy.admin_get("/metrics").await;
    for series in [
        "reveille_requests_total{service=\"acme\",class=\"2xx\"} 3",
        "reveille_unrouted_requests_total{kind=\"unknown_host\"} 1",
        "reveille_request_duration_seconds_count 4", // the 404 is timed too
        "reveille_routes 2",
        "reveille_services 1",
        "reveille_route_reloads_total{source=\"file\",result=\"ok\"} 1",
        "reveille_upstream_errors_total{kind=\"connect_refused\"} 0",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // Connections: at least the ones above; the gauge is exposed.
    assert!(proxy.metric("reveille_connections_total").await >= 4.0);
    assert!(text.contains("reveille_open_connections "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_a_table_is_loaded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteHandle::new();
    let readiness = Readiness::new();
    let loaded = readiness.gate("route sources");
    let stop = CancellationToken::new();
    tokio::spawn(reveille::serve_admin(
        listener,
        AdminState {
            routes: routes.clone(),
            metrics: Arc::new(Metrics::new()),
            passivator: None,
            readiness,
            token: None,
            certificates: None,
            sources: None,
        },
        stop.clone(),
    ));

    let got = get(addr, "admin", "/readyz").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(addr, "admin", "/healthz").await.status, StatusCode::OK);
    routes.store(reveille::RouteTable::empty());
    assert_eq!(
        get(addr, "admin", "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a table alone is not readiness"
    );
    loaded.open();
    assert_eq!(get(addr, "admin", "/readyz").await.status, StatusCode::OK);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_feed_streams_route_changes_and_resumes_after_a_reconnect() {
    let backend = support::Backend::fixed("x").await;
    let table = |hosts: &[&str]| {
        let mut t = format!("[services.s]\nbackends = [\"{}\"]\n[routes]\n", backend.addr);
        for h in hosts {
            t.push_str(&format!("\"{h}\" = \"s\"\n"));
        }
        t
    };
    let proxy = support::TestProxy::start(&table(&["a.test"])).await;
    let feed = support::EventStream::open(proxy.admin, "/api/events", &[]).await;
    proxy.write_routes(&table(&["a.test", "b.test"]));
    let seen = feed.until("\"routes\":2").await;
    assert!(seen.contains("event: routes"), "{seen}");
    let id = feed.last_id().expect("events carry ids");
    drop(feed);

    // Missed while disconnected: delivered on reconnecting with Last-Event-ID, and nothing from before it.
    proxy.write_routes(&table(&["a.test", "b.test", "c.test"]));
    let resumed = support::EventStream::open(proxy.admin, "/api/events", &[("Last-Event-ID", &id)]).await;
    let seen = resumed.until("\"routes\":3").await;
    assert!(!seen.contains("\"routes\":2"), "{seen}");
    // An id this process never gave: reload, then follow.
    let stale = support::EventStream::open(proxy.admin, "/api/events", &[("Last-Event-ID", "1-5")]).await;
    let seen = stale.until("event: reset").await;
    assert!(!seen.contains("event: routes"), "{seen}");
    proxy.write_routes(&table(&["a.test"]));
    stale.until("\"routes\":1").await;
}

/// Every series the Grafana dashboard (`deploy/grafana/reveille.json`) queries is one reveille exposes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let proxy =
        support::TestProxy::start("[services.s]\nbackends = [\"127.0.0.1:1\"]\n[routes]\n\"a.test\" = \"s\"\n").await;
    let (_, exposed) = proxy.admin_get("/metrics").await;
    let families: std::collections::BTreeSet<&str> =
        exposed.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/reveille.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("reveille_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() > 15, "{queried:?}");
    for name in &queried {
        let family = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(families.contains(family), "the dashboard queries {name}, which reveille does not expose");
    }
}
