//! Hot reload of the routes file: a valid change applies within a second without dropping connections; an
//! invalid one is logged, counted, and the previous table stays in force. So does a version without routes (a
//! truncating write seen halfway) and a missing file, unless the file says `allow_empty = true`.

use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_change_applies_within_a_second() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "a");

    // Move app.test to b and add a new host, by atomic rename.
    let changed = Instant::now();
    proxy.write_routes(&routes_file(
        &[("a", vec![a.addr]), ("b", vec![b.addr])],
        &[("app.test", "b"), ("new.test", "a")],
    ));
    eventually(Duration::from_secs(1), "app.test served by b", || async {
        get(proxy.http, "app.test", "/").await.text.contains("\"b\"")
    })
    .await;
    eprintln!("applied after {:?}", changed.elapsed());
    assert_eq!(get(proxy.http, "new.test", "/").await.backend(), "a");

    // In-place write (truncate + write), as an editor without atomic save does.
    std::fs::write(&proxy.routes_path, routes_file(&[("a", vec![a.addr])], &[("only.test", "a")])).unwrap();
    eventually(Duration::from_secs(1), "app.test removed", || async {
        get(proxy.http, "app.test", "/").await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(get(proxy.http, "only.test", "/").await.backend(), "a");
    assert!(proxy.metric("reveille_route_reloads_total{source=\"file\",result=\"ok\"}").await >= 3.0);
    assert_eq!(proxy.metric("reveille_routes").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_change_is_rejected_and_previous_table_kept() {
    let a = Backend::echo("a").await;
    let good = routes_file(&[("a", vec![a.addr])], &[("app.test", "a")]);
    let proxy = TestProxy::start(&good).await;

    let bad_versions = [
        "[services.a\nbackends = 1\n".to_string(),       // not TOML
        format!("{good}\"other.test\" = \"missing\"\n"), // undefined service
        "[services.a]\nbackends = [\"no-port\"]\n[routes]\n\"app.test\" = \"a\"\n".into(), // bad address
    ];
    for (i, bad) in bad_versions.iter().enumerate() {
        proxy.write_routes(bad);
        eventually(Duration::from_secs(2), "failed reload counted", || async {
            proxy.metric("reveille_route_reloads_total{source=\"file\",result=\"failed\"}").await == (i + 1) as f64
        })
        .await;
        let got = get(proxy.http, "app.test", "/").await;
        assert_eq!(got.status, StatusCode::OK, "previous table must stay in force after bad version {i}");
        assert_eq!(got.backend(), "a");
        assert_eq!(get(proxy.http, "other.test", "/").await.status, StatusCode::NOT_FOUND);
    }

    // Fixing the file applies again.
    proxy.write_routes(&routes_file(&[("a", vec![a.addr])], &[("fixed.test", "a")]));
    eventually(Duration::from_secs(1), "fixed file applied", || async {
        get(proxy.http, "fixed.test", "/").await.status == StatusCode::OK
    })
    .await;
}

/// `reveille_route_reloads_total{source="file",result=...}`.
async fn reloads(proxy: &TestProxy, result: &str) -> f64 {
    proxy.metric(&format!("reveille_route_reloads_total{{source=\"file\",result=\"{result}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_refused_and_the_table_kept() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let two = routes_file(&[("a", vec![a.addr])], &[("app.test", "a"), ("www.test", "a")]);
    let proxy = TestProxy::start(&two).await;

    // `cat new > routes.toml` seen between the truncation and the write.
    std::fs::File::create(&proxy.routes_path).unwrap();
    eventually(Duration::from_secs(2), "the empty version refused", || async { reloads(&proxy, "empty").await == 1.0 })
        .await;
    for host in ["app.test", "www.test"] {
        let got = get(proxy.http, host, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{host} still routed");
        assert_eq!(got.backend(), "a");
    }
    assert_eq!(proxy.metric("reveille_routes").await, 2.0);
    assert_eq!(reloads(&proxy, "ok").await, 1.0, "only the initial load");

    // Cut before its routes: services but no routes is refused too.
    proxy.write_routes(&routes_file(&[("a", vec![a.addr])], &[]));
    eventually(Duration::from_secs(2), "the services-only version refused", || async {
        reloads(&proxy, "empty").await == 2.0
    })
    .await;
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "a");

    // The write completes: the new version applies.
    std::fs::write(&proxy.routes_path, routes_file(&[("b", vec![b.addr])], &[("app.test", "b")])).unwrap();
    eventually(Duration::from_secs(2), "the new version applied", || async {
        get(proxy.http, "app.test", "/").await.text.contains("\"b\"")
    })
    .await;
    assert_eq!(get(proxy.http, "www.test", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(reloads(&proxy, "ok").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_keeps_the_table_until_it_reappears() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;

    std::fs::remove_file(&proxy.routes_path).unwrap();
    eventually(Duration::from_secs(2), "the missing file counted", || async {
        reloads(&proxy, "missing").await == 1.0
    })
    .await;
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "a", "still routed");

    // Recreated with a change: applied.
    std::fs::write(&proxy.routes_path, routes_file(&[("b", vec![b.addr])], &[("app.test", "b")])).unwrap();
    eventually(Duration::from_secs(2), "the recreated file applied", || async {
        get(proxy.http, "app.test", "/").await.text.contains("\"b\"")
    })
    .await;

    // Renamed away and back: the table stays throughout, and the same content is not re-applied.
    let away = proxy.routes_path.with_extension("away");
    std::fs::rename(&proxy.routes_path, &away).unwrap();
    eventually(Duration::from_secs(2), "the second disappearance counted", || async {
        reloads(&proxy, "missing").await == 2.0
    })
    .await;
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "b");
    let ok = reloads(&proxy, "ok").await;
    std::fs::rename(&away, &proxy.routes_path).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the poll interval
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "b");
    assert_eq!(reloads(&proxy, "ok").await, ok, "unchanged content is not reloaded");
    assert_eq!(reloads(&proxy, "missing").await, 2.0, "counted once per disappearance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_empty_really_empties_the_table() {
    let a = Backend::echo("a").await;
    // At startup an empty file is accepted (with a warning): there is no table to protect.
    let proxy = TestProxy::start("").await;
    assert_eq!(get(proxy.http, "app.test", "/").await.status, StatusCode::NOT_FOUND);

    proxy.write_routes(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a"), ("www.test", "a")]));
    eventually(Duration::from_secs(2), "routes applied", || async {
        get(proxy.http, "app.test", "/").await.status == StatusCode::OK
    })
    .await;

    proxy.write_routes("# emptied on purpose\nallow_empty = true\n");
    eventually(Duration::from_secs(2), "the table emptied", || async { proxy.metric("reveille_routes").await == 0.0 })
        .await;
    for host in ["app.test", "www.test", "other.test"] {
        assert_eq!(get(proxy.http, host, "/").await.status, StatusCode::NOT_FOUND, "{host}");
    }
    assert_eq!(reloads(&proxy, "empty").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_does_not_drop_open_connections() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = TestProxy::start(&routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).await;

    // A keep-alive connection and a request in flight across the reload.
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let slow = sender.send_request(http::Request::get("/sleep/400").header("host", "app.test").body(full("")).unwrap());
    let reload = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.write_routes(&routes_file(&[("b", vec![b.addr])], &[("app.test", "b")]));
    };
    let (resp, ()) = tokio::join!(slow, reload);
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "in-flight request survives the reload");
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"a\""));

    // The same connection keeps working and now reaches the new table.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        sender.ready().await.expect("the connection stays open across the reload");
        let req = http::Request::get("/").header("host", "app.test").body(full("")).unwrap();
        let body = sender.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        if String::from_utf8_lossy(&body).contains("\"b\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new table was not applied within a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap_is_seen() {
    // The layout a ConfigMap volume has: routes.toml -> ..data/routes.toml, ..data -> ..v1 (a directory).
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/routes.toml"), routes_file(&[("a", vec![a.addr])], &[("app.test", "a")])).unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.toml", root.join("routes.toml")).unwrap();

    // The routes file is the ConfigMap's link, not the one the test proxy writes.
    let proxy = TestProxy::start_custom("", |c| c.routes = Some(root.join("routes.toml"))).await;
    assert_eq!(get(proxy.http, "app.test", "/").await.backend(), "a");

    // The kubelet writes a new directory and swaps ..data atomically with a rename.
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/routes.toml"), routes_file(&[("b", vec![b.addr])], &[("app.test", "b")])).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    eventually(Duration::from_secs(2), "swap applied", || async {
        get(proxy.http, "app.test", "/").await.text.contains("\"b\"")
    })
    .await;
    drop(proxy);
}
