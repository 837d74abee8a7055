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
        AdminState { routes: routes.clone(), metrics: Arc::new(Metrics::new()), passivator: None, readiness },
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
