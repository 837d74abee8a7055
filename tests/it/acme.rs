//! Certificates by ACME against a real CA: Debian's Pebble, validating reveille's own listeners (HTTP-01 on the
//! HTTP one, TLS-ALPN-01 on the HTTPS one), with pebble-challtestsrv resolving every name to 127.0.0.1. Each
//! certificate is checked by a real TLS client that trusts Pebble's issuing root only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::pebble::Pebble;
use crate::support::{full, Backend};
use reveille::{Config, ConfigFile, Listeners, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LONG: Duration = Duration::from_secs(60);

/// Listeners on 127.0.0.1:0, bound before Pebble is told their ports.
struct Bound {
    http: TcpListener,
    https: TcpListener,
    admin: TcpListener,
}

impl Bound {
    async fn new() -> Bound {
        let bind = || TcpListener::bind("127.0.0.1:0");
        Bound { http: bind().await.unwrap(), https: bind().await.unwrap(), admin: bind().await.unwrap() }
    }

    fn port(l: &TcpListener) -> u16 {
        l.local_addr().unwrap().port()
    }
}

/// A reveille on `config.toml` in `dir`, serving on `bound`.
async fn start(dir: &Path, bound: Bound) -> Running {
    let mut flags = ConfigFile::default();
    flags.server.http = Some(bound.http.local_addr().unwrap());
    flags.server.https = Some(bound.https.local_addr().unwrap());
    flags.server.admin = Some(bound.admin.local_addr().unwrap());
    flags.server.threads = Some(1);
    flags.log.access_log = Some(false);
    let config = Config::resolve(Some(&dir.join("config.toml")), &flags).unwrap();
    let listeners = Listeners { http: bound.http, https: Some(bound.https), admin: bound.admin };
    reveille::start(&config, listeners, reveille::docker(&config)).await.unwrap()
}

/// `reveille cert ls`'s line for certificate `name`, and its whole output.
fn cert_ls_line(etcd: &support::etcd::Etcd, name: &str) -> (String, String) {
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_reveille"))
        .args(["cert", "ls", "--etcd", &etcd.url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ls.stdout).into_owned();
    let prefix = format!("{name} ");
    let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{out}")).to_string();
    (line, out)
}

/// A fresh etcd routing web.test to a backend answering `body`, with `acme = true`.
async fn etcd_with_web(body: &'static str) -> (support::etcd::Etcd, Backend) {
    let etcd = support::etcd::Etcd::start().await;
    let backend = Backend::fixed(body).await;
    etcd.put("/reveille/services/web", &format!("{{\"backends\": [\"{}\"], \"acme\": true}}", backend.addr)).await;
    etcd.put("/reveille/routes/web.test", "{\"service\": \"web\"}").await;
    (etcd, backend)
}

/// A reveille with a routes file and a certificates directory (the ACME store without etcd), `[acme]` for
/// `pebble` plus `acme_extra`.
async fn start_with_dir(pebble: &Pebble, bound: Bound, routes: &str, acme_extra: &str) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    let config =
        format!("[server]\nroutes = \"routes.toml\"\n[tls]\ncerts = \"certs\"\n{}", acme_section(pebble, acme_extra));
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let running = start(dir.path(), bound).await;
    (dir, running)
}

/// The `[acme]` section for `pebble`, plus `extra` lines.
fn acme_section(pebble: &Pebble, extra: &str) -> String {
    format!(
        "[acme]\ndirectory = \"{}\"\nca_roots = \"{}\"\nemail = \"ops@example.com\"\nretry_after = \"1s\"\n{extra}\n",
        pebble.directory,
        pebble.api_roots.display()
    )
}

/// A handshake for `host` that verifies against Pebble's root: the leaf's DER.
async fn verified(pebble: &Pebble, https: SocketAddr, host: &str) -> std::io::Result<Vec<u8>> {
    let tls = support::tls::connect(&pebble.client(), https, Some(host)).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec())
}

/// Waits until `host` is served a certificate that verifies against Pebble's root.
async fn until_verified(pebble: &Pebble, https: SocketAddr, host: &str) -> Vec<u8> {
    let deadline = Instant::now() + LONG;
    loop {
        match verified(pebble, https, host).await {
            Ok(der) => return der,
            Err(e) => assert!(Instant::now() < deadline, "no valid certificate for {host}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request over TLS to `host`: the response's body.
async fn get_tls(pebble: &Pebble, https: SocketAddr, host: &str, path: &str) -> String {
    let mut tls = support::tls::connect(&pebble.client(), https, Some(host)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(text)
}

/// One sample of /metrics on `admin` (`name{labels}` as exposed), or 0.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let r = support::send(admin, http::Request::get("/metrics").header("host", "admin").body(full("")).unwrap()).await;
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A key's value in etcd, if it exists.
async fn etcd_get(etcd: &support::etcd::Etcd, key: &str) -> Option<String> {
    let mut client = etcd.client().await;
    let got = client.get(key, None).await.unwrap();
    got.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// The sum of the /metrics samples whose series starts with `prefix` and contains `with`.
async fn sum_of(admin: SocketAddr, prefix: &str, with: &str) -> f64 {
    let r = support::send(admin, http::Request::get("/metrics").header("host", "admin").body(full("")).unwrap()).await;
    r.text
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(with))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Certificates issued to this replica, whatever started the order (a scan, a handshake, a renewal).
async fn issued_any(admin: SocketAddr) -> f64 {
    sum_of(admin, "reveille_acme_orders_total{", "result=\"issued\"").await
}

fn issued(kind: &str) -> String {
    format!("reveille_acme_orders_total{{kind=\"{kind}\",result=\"issued\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_for_a_flagged_route_kept_in_the_certificates_directory() {
    let backend = Backend::fixed("hello from web").await;
    let bound = Bound::new().await;
    let pebble = Pebble::start(Bound::port(&bound.http), Bound::port(&bound.https)).await;
    let routes = format!(
        "[services.web]\nbackends = [\"{0}\"]\nacme = true\n[services.plain]\nbackends = [\"{0}\"]\n\
         [routes]\n\"web.test\" = \"web\"\n\"plain.test\" = \"plain\"\n\"*.wild.test\" = \"web\"\n",
        backend.addr
    );
    let (dir, running) =
        start_with_dir(&pebble, bound, &routes, "challenge = \"http-01\"\ncheck_interval = \"1s\"").await;
    let https = running.https_addr.unwrap();

    let leaf = until_verified(&pebble, https, "web.test").await;
    assert!(!leaf.is_empty());
    assert_eq!(get_tls(&pebble, https, "web.test", "/").await, "hello from web");
    assert_eq!(issued_any(running.admin_addr).await, 1.0);
    assert!(
        metric(running.admin_addr, "reveille_acme_challenges_total{kind=\"http-01\",result=\"answered\"}").await >= 1.0
    );
    // Kept where the directory source loads it, readable by its owner only (it holds the key).
    let file = dir.path().join("certs/acme-web.test.pem");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE") && text.contains("PRIVATE KEY"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(dir.path().join("certs/.acme/account.json").is_file(), "the account is kept for the next start");

    // A route without `acme`, a wildcard route and a name without a route: no order, no certificate.
    for host in ["plain.test", "a.wild.test", "nowhere.test"] {
        assert!(verified(&pebble, https, host).await.is_err(), "{host} has no certificate");
    }
    let orders = sum_of(running.admin_addr, "reveille_acme_orders_total{", "").await;
    assert_eq!(orders, 1.0, "one order in all");
    // Counted once when the scan first met the wildcard route, and once for the handshake for a.wild.test.
    assert_eq!(metric(running.admin_addr, "reveille_acme_refused_total{reason=\"wildcard\"}").await, 2.0);
    // Tokens reveille did not publish are the tenant's business: forwarded.
    let got = support::get(running.http_addr, "web.test", "/.well-known/acme-challenge/made-up").await;
    assert_eq!(got.text, "hello from web");
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_on_demand_at_the_first_handshake_kept_in_etcd() {
    let (etcd, _backend) = etcd_with_web("hello over alpn").await;
    let bound = Bound::new().await;
    let pebble = Pebble::start(Bound::port(&bound.http), Bound::port(&bound.https)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{}",
        etcd.url,
        acme_section(&pebble, "challenge = \"tls-alpn-01\"\neager = false\ncheck_interval = \"1h\"")
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let running = start(dir.path(), bound).await;
    let https = running.https_addr.unwrap();
    // The route has loaded (plain HTTP reaches the backend); nothing was ordered ahead of the first handshake.
    support::eventually(LONG, "the route loaded", || async {
        support::get(running.http_addr, "web.test", "/").await.text == "hello over alpn"
    })
    .await;
    assert!(etcd_get(&etcd, "/reveille/certs/acme-web.test").await.is_none());

    // The first handshake waits for its certificate and gets it.
    let began = Instant::now();
    let first = verified(&pebble, https, "web.test").await;
    let took = began.elapsed();
    assert!(first.is_ok(), "the first handshake got a valid certificate: {first:?}");
    eprintln!("first handshake for a new route -> valid certificate (on demand, TLS-ALPN-01): {} ms", took.as_millis());
    assert_eq!(metric(running.admin_addr, &issued("on_demand")).await, 1.0);
    assert!(
        metric(running.admin_addr, "reveille_acme_challenges_total{kind=\"tls-alpn-01\",result=\"answered\"}").await
            >= 1.0
    );
    let stored = etcd_get(&etcd, "/reveille/certs/acme-web.test").await.expect("stored in etcd");
    let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(value["acme"]["directory"], pebble.directory.as_str());
    assert!(value["cert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert!(etcd_get(&etcd, "/reveille/acme/account").await.is_some(), "the account is shared through etcd");
    assert_eq!(get_tls(&pebble, https, "web.test", "/").await, "hello over alpn");
    // Operators see which certificates ACME manages, and when each renews.
    let (line, out) = cert_ls_line(&etcd, "acme-web.test");
    assert!(line.contains("acme, renews") && line.ends_with("web.test"), "{out}");

    // The next handshakes find it in memory: no order, no wait.
    let began = Instant::now();
    for _ in 0..20 {
        verified(&pebble, https, "web.test").await.unwrap();
    }
    eprintln!("handshake with the stored certificate: {} us each", began.elapsed().as_micros() / 20);
    assert_eq!(metric(running.admin_addr, &issued("on_demand")).await, 1.0);
    // A name without a route never causes an order, even on demand.
    assert!(verified(&pebble, https, "stranger.test").await.is_err());
    running.shutdown();

    // A failing renewal shows with its certificate: `cert ls` reads the failures the replicas record in etcd
    // (the record itself is checked in `a_failed_name_backs_off_on_every_replica`).
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let record = format!("{{\"failures\": 3, \"until\": {until}, \"reason\": \"ca_unreachable\"}}");
    etcd.put("/reveille/acme/failures/web.test", &record).await;
    let (line, out) = cert_ls_line(&etcd, "acme-web.test");
    assert!(line.contains("failing: ca_unreachable (3x)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_etcd_order_once_and_all_serve_it() {
    let (etcd, _backend) = etcd_with_web("shared").await;
    let bounds = [Bound::new().await, Bound::new().await, Bound::new().await];
    // The CA reaches the first replica only: whichever replica orders, the token must be answered there.
    let pebble = Pebble::start(Bound::port(&bounds[0].http), Bound::port(&bounds[0].https)).await;
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for (i, bound) in bounds.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[etcd]\nendpoints = [\"{}\"]\n[cluster]\nnode = \"r{i}\"\n{}",
            etcd.url,
            acme_section(&pebble, "challenge = \"http-01\"\ncheck_interval = \"1s\"")
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        replicas.push(start(dir.path(), bound).await);
        dirs.push(dir);
    }
    let mut leaves = Vec::new();
    for r in &replicas {
        leaves.push(until_verified(&pebble, r.https_addr.unwrap(), "web.test").await);
    }
    assert!(leaves.iter().all(|l| *l == leaves[0]), "every replica serves the same certificate");
    let mut issued_total = 0.0;
    for r in &replicas {
        issued_total += issued_any(r.admin_addr).await;
    }
    assert_eq!(issued_total, 1.0, "one order across the cluster");
    for r in &replicas {
        r.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_and_a_ca_outage_keeps_the_current_one() {
    let backend = Backend::fixed("renewed").await;
    let bound = Bound::new().await;
    let mut pebble = Pebble::start(Bound::port(&bound.http), Bound::port(&bound.https)).await;
    let routes =
        format!("[services.web]\nbackends = [\"{}\"]\nacme = true\n[routes]\n\"web.test\" = \"web\"\n", backend.addr);
    // Pebble's certificates last years: a renewal window longer than that makes every certificate due at once.
    let (_dir, running) =
        start_with_dir(&pebble, bound, &routes, "check_interval = \"1s\"\nrenew_before = \"100000d\"").await;
    let https = running.https_addr.unwrap();
    let first = until_verified(&pebble, https, "web.test").await;
    support::eventually(LONG, "a renewal issued", || async {
        metric(running.admin_addr, &issued("renewal")).await >= 1.0
    })
    .await;
    let deadline = Instant::now() + LONG;
    let renewed = loop {
        let leaf = until_verified(&pebble, https, "web.test").await;
        if leaf != first {
            break leaf;
        }
        assert!(Instant::now() < deadline, "the renewed certificate is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The CA goes away: renewals fail, are counted and retried, and the current certificate stays in force.
    pebble.stop();
    let failed = "reveille_acme_orders_total{kind=\"renewal\",result=\"ca_unreachable\"}";
    support::eventually(LONG, "renewals failing", || async { metric(running.admin_addr, failed).await >= 2.0 }).await;
    let served = verified(&pebble, https, "web.test").await.expect("still served");
    let issued_renewals = metric(running.admin_addr, &issued("renewal")).await;
    assert!(issued_renewals >= 1.0);
    // Still one of the certificates reveille obtained (the latest one it has): never the fallback.
    assert!(served != first || renewed == first);
    assert!(metric(running.admin_addr, "reveille_acme_renewals_due").await >= 1.0);
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_budget_refuses_the_order_past_it_with_its_reason() {
    let backend = Backend::fixed("budget").await;
    let bound = Bound::new().await;
    let pebble = Pebble::start(Bound::port(&bound.http), Bound::port(&bound.https)).await;
    let mut routes = format!("[services.web]\nbackends = [\"{}\"]\nacme = true\n[routes]\n", backend.addr);
    for host in ["a.shop.test", "b.shop.test", "c.shop.test", "other.test"] {
        routes.push_str(&format!("\"{host}\" = \"web\"\n"));
    }
    // Two new certificates per registered domain per week; the third name of shop.test must wait.
    let (dir, running) = start_with_dir(&pebble, bound, &routes, "max_per_domain = 2\ncheck_interval = \"1s\"").await;
    let https = running.https_addr.unwrap();
    let refused = "reveille_acme_refused_total{reason=\"budget_domain\"}";
    support::eventually(LONG, "the third order of shop.test refused", || async {
        metric(running.admin_addr, refused).await >= 1.0
    })
    .await;
    until_verified(&pebble, https, "other.test").await;
    // The refusal can come while the two orders it counted are still being validated.
    let served = || async {
        let mut served = 0;
        for host in ["a.shop.test", "b.shop.test", "c.shop.test"] {
            if verified(&pebble, https, host).await.is_ok() {
                served += 1;
            }
        }
        served
    };
    support::eventually(LONG, "two of shop.test's names served", || async { served().await >= 2 }).await;
    assert_eq!(served().await, 2, "two of shop.test's names have certificates, the third none");
    assert_eq!(issued_any(running.admin_addr).await, 3.0, "two for shop.test, one for other.test");
    assert!(
        metric(running.admin_addr, "reveille_acme_orders_total{kind=\"new\",result=\"budget_domain\"}").await >= 1.0
    );
    let ledger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("certs/.acme/ledger.json")).unwrap()).unwrap();
    let domains: Vec<&str> = ledger.as_array().unwrap().iter().map(|e| e["domain"].as_str().unwrap()).collect();
    assert_eq!(domains.iter().filter(|d| **d == "shop.test").count(), 2, "{ledger}");
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_name_backs_off_on_every_replica() {
    let (etcd, _backend) = etcd_with_web("unreachable ca").await;
    // A CA nobody answers for: every order fails at once.
    let dead = support::dead_addr().await;
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[etcd]\nendpoints = [\"{}\"]\n[cluster]\nnode = \"r{i}\"\n[acme]\ndirectory = \"https://{dead}/dir\"\n\
             check_interval = \"200ms\"\nretry_after = \"1h\"\n",
            etcd.url
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        replicas.push(start(dir.path(), Bound::new().await).await);
        dirs.push(dir);
    }
    let failed = "reveille_acme_orders_total{kind=\"new\",result=\"ca_unreachable\"}";
    let total = || async {
        let mut n = 0.0;
        for r in &replicas {
            n += metric(r.admin_addr, failed).await;
        }
        n
    };
    support::eventually(LONG, "the first order failed", || async { total().await >= 1.0 }).await;
    let record = etcd_get(&etcd, "/reveille/acme/failures/web.test").await.expect("the failure is shared");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["failures"], 1);
    assert_eq!(record["reason"], "ca_unreachable");
    // Many scans later, on both replicas: still one failed order in the cluster; the other replica waits too.
    support::eventually(LONG, "both replicas backing off", || async {
        let mut each = true;
        for r in &replicas {
            each &= metric(r.admin_addr, "reveille_acme_refused_total{reason=\"backoff\"}").await >= 1.0;
        }
        each
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(total().await, 1.0, "one attempt in the cluster within the backoff");
    for r in &replicas {
        r.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_requires_external_account_binding() {
    let backend = Backend::fixed("bound").await;
    let bound = Bound::new().await;
    // Pebble's own example key: the HMAC key, base64url, as CAs hand them out.
    let (kid, key) = ("kid-1", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W");
    let pebble = Pebble::start_with(Bound::port(&bound.http), Bound::port(&bound.https), &[], Some((kid, key))).await;
    let routes =
        format!("[services.web]\nbackends = [\"{}\"]\nacme = true\n[routes]\n\"web.test\" = \"web\"\n", backend.addr);
    let eab = format!("eab = {{ kid = \"{kid}\", hmac_key = \"{key}\" }}");
    let (_dir, running) = start_with_dir(&pebble, bound, &routes, &eab).await;
    until_verified(&pebble, running.https_addr.unwrap(), "web.test").await;
    assert_eq!(issued_any(running.admin_addr).await, 1.0);
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_falls_back_to_the_default_certificate_and_respects_opt_outs() {
    let backend = Backend::fixed("fallback").await;
    let bound = Bound::new().await;
    let dead = support::dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = support::tls::TestCa::new();
    let fallback = ca.issue(&["fallback.test"]);
    fallback.write_pair(&certs, "fallback");
    std::fs::write(
        dir.path().join("routes.toml"),
        format!(
            "[services.web]\nbackends = [\"{0}\"]\n[services.own]\nbackends = [\"{0}\"]\nacme = false\n\
             [routes]\n\"web.test\" = \"web\"\n\"own.test\" = \"own\"\n",
            backend.addr
        ),
    )
    .unwrap();
    // Every service's hosts are ACME's but own.test's; only on demand; the CA is unreachable.
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nroutes = \"routes.toml\"\n[tls]\ncerts = \"certs\"\ndefault_cert = \"fallback\"\n\
             [acme]\ndirectory = \"https://{dead}/dir\"\nhosts = \"all\"\neager = false\non_demand_wait = \"5s\"\n"
        ),
    )
    .unwrap();
    let running = start(dir.path(), bound).await;
    let https = running.https_addr.unwrap();
    let served = |host: &'static str| async move {
        let tls = support::tls::connect(&support::tls::any_cert_client(), https, Some(host)).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
    };
    // The order fails (no CA): the handshake goes on with the default certificate, within the wait's bound.
    let began = Instant::now();
    assert_eq!(served("web.test").await, fallback.der);
    assert!(began.elapsed() < Duration::from_secs(8), "within the wait bound: {:?}", began.elapsed());
    assert_eq!(
        metric(running.admin_addr, "reveille_acme_orders_total{kind=\"on_demand\",result=\"ca_unreachable\"}").await,
        1.0
    );
    // Again: the name backs off, so no second order, and no wait.
    let began = Instant::now();
    assert_eq!(served("web.test").await, fallback.der);
    assert!(began.elapsed() < Duration::from_secs(4), "did not wait out on_demand_wait: {:?}", began.elapsed());
    // A service that opted out: no order at all.
    assert_eq!(served("own.test").await, fallback.der);
    assert_eq!(metric(running.admin_addr, "reveille_acme_refused_total{reason=\"opted_out\"}").await, 1.0);
    assert_eq!(sum_of(running.admin_addr, "reveille_acme_orders_total{", "").await, 1.0);
    running.shutdown();
}

/// A TLS handshake for `host` from the client address `from` (another loopback address), with `connector`.
async fn handshake_from(
    from: [u8; 4],
    connector: &tokio_rustls::TlsConnector,
    https: SocketAddr,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let tcp = socket.connect(https).await?;
    connector.connect(rustls_pki_types::ServerName::try_from(host.to_string()).unwrap(), tcp).await
}

/// How many orders the cluster's ledger holds (every order placed with the CA, whoever placed it).
async fn ledger_len(etcd: &support::etcd::Etcd) -> usize {
    let mut client = etcd.client().await;
    let options = etcd_client::GetOptions::new().with_prefix().with_count_only();
    client.get("/reveille/acme/ledger/", Some(options)).await.unwrap().count() as usize
}

/// The captured log's lines that contain every one of `words`.
fn log_lines(log: &std::sync::Mutex<Vec<u8>>, words: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    text.lines().filter(|l| words.iter().all(|w| l.contains(w))).map(str::to_string).collect()
}

/// With `eager = false` and the default on-demand limits, one client address makes a handshake for each of
/// many routed names, within a minute: before, each started an order until the domain's budget was gone for
/// everyone (4 of 4 here, 40 of 40 by default), and an eager order then got nothing. Now its orders stop at the
/// per-client limit (5 a minute) and at the on-demand share of the budget (half: 2 of 4), each refusal counted
/// by reason and logged with the name, the limit and the address, a flood of them in a few lines; another
/// address still gets its certificate; and a replica with `eager = true` sharing the budget through etcd
/// orders the rest of the budget and gets its certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_spends_only_the_on_demand_share_and_an_eager_order_still_gets_its_certificate() {
    let log = support::log::text();
    let etcd = support::etcd::Etcd::start().await;
    let backend = Backend::fixed("flooded").await;
    etcd.put("/reveille/services/web", &format!("{{\"backends\": [\"{}\"], \"acme\": true}}", backend.addr)).await;
    let names: Vec<String> = (0..8).map(|i| format!("n{i}.shop.test")).collect();
    for host in names.iter().map(String::as_str).chain(["other.test"]) {
        etcd.put(&format!("/reveille/routes/{host}"), "{\"service\": \"web\"}").await;
    }
    let (bound_a, bound_b) = (Bound::new().await, Bound::new().await);
    // The CA reaches replica a only; it answers b's challenges too (through etcd).
    let pebble = Pebble::start(Bound::port(&bound_a.http), Bound::port(&bound_a.https)).await;
    let config = |node: &str, acme: &str| {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[etcd]\nendpoints = [\"{}\"]\n[cluster]\nnode = \"{node}\"\n{}",
            etcd.url,
            acme_section(&pebble, &format!("challenge = \"http-01\"\nmax_per_domain = 4\n{acme}"))
        );
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        dir
    };
    // Replica a orders only on demand; shop.test may have 4 new certificates a week.
    let dir_a = config("a", "eager = false\ncheck_interval = \"1h\"");
    let a = start(dir_a.path(), bound_a).await;
    let https = a.https_addr.unwrap();
    // Ready: the routes and the certificates loaded (before, a handshake orders nothing).
    support::eventually(LONG, "replica a ready", || async {
        support::get(a.admin_addr, "admin", "/readyz").await.status == http::StatusCode::OK
    })
    .await;
    assert_eq!(support::get(a.http_addr, "n7.shop.test", "/").await.text, "flooded");

    // The hostile client, 127.0.0.2: one handshake per name.
    let any = support::tls::any_cert_client();
    let began = Instant::now();
    for host in &names {
        let _ = handshake_from([127, 0, 0, 2], &any, https, host).await;
    }
    let took = began.elapsed();
    let orders = ledger_len(&etcd).await;
    eprintln!("one client address, {} handshakes for new names in {took:?}: {orders} orders", names.len());
    assert!(took < Duration::from_secs(50), "all within the per-client limit's minute: {took:?}");
    assert_eq!(orders, 2, "the on-demand share of shop.test's budget: 2 of 4");
    let admin = a.admin_addr;
    assert_eq!(metric(admin, &issued("on_demand")).await, 2.0);
    let refused = |reason: &'static str| async move {
        metric(admin, &format!("reveille_acme_on_demand_refused_total{{reason=\"{reason}\"}}")).await
    };
    assert_eq!(refused("on_demand_domain").await, 3.0, "5 admitted by the per-client limit, 2 ordered");
    assert_eq!(refused("per_client").await, 3.0, "the 6th to 8th handshakes");
    // Each limit is said in the log: which name, which limit, which client.
    let per_client = log_lines(&log, &["on-demand certificate order for n5.shop.test", "127.0.0.2", "per_client"]);
    assert_eq!(per_client.len(), 1, "{per_client:?}");
    assert!(per_client[0].contains("on_demand_per_client = 5"), "{}", per_client[0]);
    let share = log_lines(&log, &["on-demand certificate order for n2.shop.test", "127.0.0.2", "on_demand_domain"]);
    assert_eq!(share.len(), 1, "{share:?}");
    assert!(share[0].contains("on-demand share 2 of its budget of 4"), "{}", share[0]);

    // A flood of refused handshakes (for the names without a certificate): every one counted, a line every ten
    // seconds at most.
    let flood = Instant::now();
    for i in 0..200 {
        let _ = handshake_from([127, 0, 0, 2], &any, https, &names[2 + i % 6]).await;
    }
    let lines = log_lines(&log, &["on-demand certificate order for", "127.0.0.2"]).len();
    let allowed = 2 + 2 * (1 + flood.elapsed().as_secs() as usize / 10);
    eprintln!("200 more refused handshakes in {:?}: {lines} log lines in all", flood.elapsed());
    assert!(lines <= allowed, "{lines} lines, at most {allowed}");
    assert_eq!(refused("per_client").await, 203.0);
    assert_eq!(ledger_len(&etcd).await, 2, "no more orders");

    // Another address, another domain: its handshake is not the hostile client's to refuse.
    let got = handshake_from([127, 0, 0, 3], &pebble.client(), https, "other.test").await;
    assert!(got.is_ok(), "127.0.0.3 got a valid certificate for other.test on demand: {got:?}");

    // A replica with eager ordering, sharing the budget: it orders the names still without a certificate, up to
    // the budget: the 2 the share kept.
    let dir_b = config("b", "check_interval = \"1s\"");
    let b = start(dir_b.path(), bound_b).await;
    support::eventually(LONG, "b's eager orders issued", || async {
        metric(b.admin_addr, &issued("new")).await >= 2.0
    })
    .await;
    let served_b = b.https_addr.unwrap();
    let mut valid = 0;
    for host in &names {
        if verified(&pebble, served_b, host).await.is_ok() {
            valid += 1;
        }
    }
    assert_eq!(valid, 4, "2 on demand, 2 eager: shop.test's budget, and no more");
    assert_eq!(metric(b.admin_addr, &issued("new")).await, 2.0);
    a.shutdown();
    b.shutdown();
}

/// The overall per-minute limit on on-demand orders: three addresses' handshakes order (the CA is unreachable
/// here: they fail, which costs as much), a fourth's is refused at once, falling back to the default
/// certificate, and said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_orders_per_minute_are_limited_whatever_the_address() {
    let log = support::log::text();
    let backend = Backend::fixed("limited").await;
    let dead = support::dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = support::tls::TestCa::new();
    let fallback = ca.issue(&["fallback.test"]);
    fallback.write_pair(&certs, "fallback");
    let mut routes = format!("[services.web]\nbackends = [\"{}\"]\n[routes]\n", backend.addr);
    for i in 0..4 {
        routes.push_str(&format!("\"m{i}.minute.test\" = \"web\"\n"));
    }
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nroutes = \"routes.toml\"\n[tls]\ncerts = \"certs\"\ndefault_cert = \"fallback\"\n\
             [acme]\ndirectory = \"https://{dead}/dir\"\nhosts = \"all\"\neager = false\n\
             on_demand_per_minute = 3\non_demand_per_client = 0\n"
        ),
    )
    .unwrap();
    let running = start(dir.path(), Bound::new().await).await;
    let https = running.https_addr.unwrap();
    support::eventually(LONG, "ready", || async {
        support::get(running.admin_addr, "admin", "/readyz").await.status == http::StatusCode::OK
    })
    .await;
    let any = support::tls::any_cert_client();
    for i in 0..4u8 {
        let tls = handshake_from([127, 0, 0, 10 + i], &any, https, &format!("m{i}.minute.test")).await.unwrap();
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(), fallback.der.as_slice());
    }
    let admin = running.admin_addr;
    assert_eq!(sum_of(admin, "reveille_acme_orders_total{", "kind=\"on_demand\"").await, 3.0);
    assert_eq!(metric(admin, "reveille_acme_on_demand_refused_total{reason=\"per_minute\"}").await, 1.0);
    assert_eq!(metric(admin, "reveille_acme_refused_total{reason=\"per_minute\"}").await, 1.0);
    let lines = log_lines(&log, &["m3.minute.test from 127.0.0.13 refused (per_minute)", "on_demand_per_minute = 3"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_path_routes_alone_gets_one_certificate_by_http01() {
    let backend = Backend::fixed("hello from the api").await;
    let bound = Bound::new().await;
    let pebble = Pebble::start(Bound::port(&bound.http), Bound::port(&bound.https)).await;
    // Two path routes and no host route for shop.test: certificates are per host, so one order, one name.
    let routes = format!(
        "[services.api]\nbackends = [\"{0}\"]\nacme = true\n[services.docs]\nbackends = [\"{0}\"]\nacme = true\n\
         [routes]\n\"shop.test/api/\" = \"api\"\n\"shop.test/docs/\" = \"docs\"\n",
        backend.addr
    );
    let (_dir, running) =
        start_with_dir(&pebble, bound, &routes, "challenge = \"http-01\"\ncheck_interval = \"1s\"").await;
    let https = running.https_addr.unwrap();
    until_verified(&pebble, https, "shop.test").await;
    assert_eq!(get_tls(&pebble, https, "shop.test", "/api/x").await, "hello from the api");
    assert!(
        metric(running.admin_addr, "reveille_acme_challenges_total{kind=\"http-01\",result=\"answered\"}").await >= 1.0
    );
    assert_eq!(sum_of(running.admin_addr, "reveille_acme_orders_total{", "").await, 1.0, "one order in all");
    // Its other paths are still no route, challenge tokens reveille did not publish included.
    let got = support::get(running.http_addr, "shop.test", "/.well-known/acme-challenge/made-up").await;
    assert_eq!(got.status, http::StatusCode::NOT_FOUND);
    running.shutdown();
}
