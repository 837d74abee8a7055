//! gRPC end to end through reveille: a real tonic client (over h2c, and over TLS with ALPN h2) calling a real
//! tonic service behind an `h2c://` backend, in all four call kinds; statuses and trailers from the backend;
//! and reveille's own failures answered in gRPC's terms (trailers-only, `grpc-status`), read by tonic.

use std::time::Duration;

use futures::StreamExt;
use tonic::Code;

use crate::support::grpc::*;
use crate::support::tls::TestCa;
use crate::support::*;

/// A routes file with one service `g` on `backends` (written as they are, scheme and all), routed from
/// `grpc.test`.
fn grpc_routes(backends: &[String]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!("[services.g]\nbackends = [{}]\n[routes]\n\"grpc.test\" = \"g\"\n", list.join(", "))
}

/// Every call kind on `client`, against the `test.Echo` named `name`.
pub(crate) async fn all_four_kinds(client: &mut EchoClient, name: &str) {
    // Unary, and a non-OK status with its message (trailers-only from tonic) reaching the client.
    let got = client.unary(msg("hello", 7)).await.unwrap();
    assert_eq!((got.text.as_str(), got.n), (&*format!("{name}: hello"), 7));
    let err = client.unary(msg("fail", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(err.message(), fail_message());

    // Server streaming: every message, then the OK trailers.
    let mut stream = client.stream(msg("tick", 5)).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.text);
    }
    assert_eq!(got, (0..5).map(|i| format!("tick {i}")).collect::<Vec<_>>());
    assert!(stream.trailers().await.unwrap().is_some(), "the backend's trailers reach the client");

    // Client streaming.
    let got = client.collect(futures::stream::iter(["a", "b", "c"].map(|t| msg(t, 0)))).await.unwrap();
    assert_eq!((got.text.as_str(), got.n), ("a,b,c", 3));

    // Bidirectional, in lockstep: each message is sent only once the answer to the one before has come back,
    // so the request body must stream through reveille (a body read whole first would never start).
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(msg("m0", 0)).unwrap();
    let mut replies = client.chat(rx).await.unwrap();
    for i in 0..5u32 {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
        assert_eq!((reply.text, reply.n), (format!("{name} heard m{i}"), i));
        if i < 4 {
            tx.unbounded_send(msg(&format!("m{}", i + 1), i + 1)).unwrap();
        }
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none(), "the call ends when the client's stream does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_over_h2c_to_an_h2c_backend() {
    let backend = H2Backend::grpc("b1").await;
    let proxy = TestProxy::start(&grpc_routes(&[format!("h2c://{}", backend.addr)])).await;
    let mut client = EchoClient::new(h2c_channel(proxy.http, "grpc.test").await);
    all_four_kinds(&mut client, "b1").await;
    // Unary calls share the backend's connections: not one per call.
    for i in 0..20 {
        client.unary(msg(&format!("again {i}"), i)).await.unwrap();
    }
    assert!(backend.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_over_tls_with_alpn_h2() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["grpc.test"]).write_pair(dir.path(), "grpc");
    let backend = H2Backend::grpc("b1").await;
    let certs = dir.path().to_path_buf();
    let proxy = TestProxy::start_custom(&grpc_routes(&[format!("h2c://{}", backend.addr)]), move |c| {
        c.https = Some("127.0.0.1:0".parse().unwrap());
        c.tls.certs_dir = Some(certs);
    })
    .await;
    let https = proxy.running().https_addr.unwrap();
    let mut client = EchoClient::new(tls_channel(https, "grpc.test", ca.client(&["h2"])).await);
    all_four_kinds(&mut client, "b1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveilles_own_failures_answer_in_grpc_terms() {
    let dead = dead_addr().await;
    let slow = H2Backend::grpc("slow").await;
    let routes = format!(
        "[services.down]\nbackends = [\"h2c://{dead}\"]\n[services.slow]\nbackends = [\"h2c://{}\"]\n\
         [routes]\n\"down.test\" = \"down\"\n\"slow.test\" = \"slow\"\n",
        slow.addr
    );
    let settings = reveille::ProxySettings {
        access_log: false,
        response_timeout: Duration::from_millis(300),
        ..reveille::ProxySettings::default()
    };
    let proxy = TestProxy::start_with(&routes, settings).await;

    // No route: UNIMPLEMENTED.
    let err = EchoClient::new(h2c_channel(proxy.http, "nowhere.test").await).unary(msg("x", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("nowhere.test"), "{err:?}");

    // Every backend refused: UNAVAILABLE.
    let err = EchoClient::new(h2c_channel(proxy.http, "down.test").await).unary(msg("x", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // No response head within the response timeout: DEADLINE_EXCEEDED.
    let mut slow_client = EchoClient::new(h2c_channel(proxy.http, "slow.test").await);
    let err = slow_client.unary(msg("sleep:2000", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The same client and service still work.
    assert_eq!(slow_client.unary(msg("quick", 1)).await.unwrap().text, "slow: quick");

    // Counted as the errors they are, whatever status went on the wire.
    assert_eq!(proxy.metric("reveille_unrouted_requests_total{kind=\"unknown_host\"}").await, 1.0);
    assert!(proxy.metric("reveille_upstream_errors_total{kind=\"response_timeout\"}").await >= 1.0);

    // h2 attempts feed the backends' health as h1 ones do.
    assert_eq!(proxy.metric("reveille_upstream_errors_total{kind=\"connect_refused\"}").await, 1.0);
    let down = &proxy.service_view("down").await["backend_health"][0];
    assert_eq!((&down["health"], &down["last_failure"]["kind"]), (&"down".into(), &"connect_refused".into()), "{down}");
    let slow = &proxy.service_view("slow").await["backend_health"][0];
    assert_eq!(slow["last_failure"]["kind"], "timeout", "{slow}");
    assert!(!slow["last_answer"].is_null(), "answered after its timeout: {slow}");

    // A plain HTTP client still gets the plain answer.
    let got = get(proxy.http, "nowhere.test", "/").await;
    assert_eq!(got.status, http::StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_messages_arrive_as_they_are_sent() {
    // A stream whose messages come with pauses: each reaches the client before the next is sent.
    let backend = H2Backend::grpc("b1").await;
    let proxy = TestProxy::start(&grpc_routes(&[format!("h2c://{}", backend.addr)])).await;
    let mut client = EchoClient::new(h2c_channel(proxy.http, "grpc.test").await);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut replies = client.chat(rx.boxed()).await.unwrap();
    for i in 0..3u32 {
        tx.unbounded_send(msg(&format!("p{i}"), i)).unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.n, i);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_quiet_for_longer_than_the_upstream_read_timeout_is_cut() {
    // What the timeouts do to a long call: the response timeout ends at the response head, but the upstream
    // read timeout still applies between the backend's messages.
    let backend = H2Backend::grpc("b1").await;
    let settings = reveille::ProxySettings {
        access_log: false,
        upstream_read_timeout: Duration::from_millis(400),
        ..reveille::ProxySettings::default()
    };
    let proxy = TestProxy::start_with(&grpc_routes(&[format!("h2c://{}", backend.addr)]), settings).await;
    let mut client = EchoClient::new(h2c_channel(proxy.http, "grpc.test").await);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut replies = client.chat(rx).await.unwrap();
    // Messages within the timeout keep the call going past it.
    for i in 0..4u32 {
        tx.unbounded_send(msg(&format!("m{i}"), i)).unwrap();
        assert_eq!(replies.message().await.unwrap().unwrap().n, i);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Silence past it ends the call with an error (the stream is reset), not an OK status.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = tx.unbounded_send(msg("late", 9));
    let end = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap();
    let err = end.expect_err("the quiet call was cut");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_tenant_holds_a_grpc_call_while_it_wakes() {
    // A passivated service whose container only gives the lifecycle; its backend is a fixed h2c address, whose
    // readiness is a `GET` of `health_path` over HTTP/2 (it speaks nothing else).
    let runtime = crate::support::runtime::ScriptedRuntime::new();
    let port = runtime.add_stopped("grpc-ctr", Duration::from_millis(200)).await;
    let backend = H2Backend::grpc("woken").await;
    let routes = format!(
        "[services.g]\ncontainer = \"grpc-ctr\"\nport = {port}\nidle_timeout = \"0\"\nbackends = [\"h2c://{}\"]\n\
         health_path = \"/healthz\"\n\
         [routes]\n\"grpc.test\" = \"g\"\n",
        backend.addr
    );
    let proxy = TestProxy::start_with_runtime(&routes, |_| {}, std::sync::Arc::new(runtime.clone())).await;
    eventually(Duration::from_secs(10), "the tenant seen stopped", || async {
        proxy.service_view("g").await["state"] == "stopped"
    })
    .await;
    assert_eq!(runtime.count("grpc-ctr", "start"), 0);

    let mut client = EchoClient::new(h2c_channel(proxy.http, "grpc.test").await);
    let got = client.unary(msg("wake up", 1)).await.unwrap();
    assert_eq!(got.text, "woken: wake up");
    assert_eq!(runtime.count("grpc-ctr", "start"), 1, "the call woke the tenant");
    assert_eq!(proxy.service_view("g").await["state"], "running");
}
