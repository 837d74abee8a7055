//! The operator CLI: `reveille route|service set|rm|ls` against a real etcd, and `reveille check` of files.

use std::process::Command;

use crate::support::etcd::Etcd;

const BIN: &str = env!("CARGO_BIN_EXE_reveille");

/// `reveille ARGS --etcd ETCD`: its exit code, stdout and stderr.
pub(crate) fn reveille(etcd: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).args(["--etcd", etcd]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON value at `key`, if any.
pub(crate) async fn value(etcd: &Etcd, key: &str) -> Option<serde_json::Value> {
    let resp = etcd.client().await.get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_service_commands() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();

    // A route to a service that does not exist is refused, unless forced.
    let (code, _, err) = reveille(url, &["route", "set", "acme.example.com", "acme"]);
    assert_eq!(code, 1);
    assert!(err.contains("service \"acme\" does not exist"), "{err}");
    assert_eq!(value(&etcd, "/reveille/routes/acme.example.com").await, None);

    // Bad input never reaches etcd.
    let (code, _, err) = reveille(url, &["service", "set", "acme", "--backend", "10.0.0.5"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing port"), "{err}");
    let (code, _, err) = reveille(url, &["route", "set", "bad host", "acme"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid hostname"), "{err}");
    assert_eq!(value(&etcd, "/reveille/services/acme").await, None);

    let (code, out, err) =
        reveille(url, &["service", "set", "acme", "--backend", "10.0.0.5:8080", "--backend", "http://10.0.0.6:8080"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("service acme: 10.0.0.5:8080, http://10.0.0.6:8080 (new)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/services/acme").await.unwrap(),
        serde_json::json!({"backends": ["10.0.0.5:8080", "http://10.0.0.6:8080"]})
    );

    let (code, out, _) = reveille(url, &["route", "set", "Acme.Example.com", "acme"]);
    assert_eq!(code, 0);
    assert!(out.contains("route acme.example.com -> acme (new)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/routes/acme.example.com").await.unwrap(),
        serde_json::json!({"service": "acme"})
    );
    let (code, _, _) = reveille(url, &["route", "set", "*.acme.example.com", "acme"]);
    assert_eq!(code, 0);
    let (code, out, _) = reveille(url, &["route", "set", "ghost.example.com", "ghost", "--force"]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = reveille(url, &["route", "ls"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with("*.acme.example.com") && lines[1].ends_with("acme"), "{out}");
    assert!(lines[3].starts_with("ghost.example.com") && lines[3].contains("not defined"), "{out}");
    let (_, out, _) = reveille(url, &["service", "ls"]);
    assert!(out.lines().any(|l| l.starts_with("acme") && l.contains(" 2 ") && l.contains("10.0.0.5:8080")), "{out}");

    // Fields another tool wrote survive a `set`.
    etcd.put("/reveille/services/acme", r#"{"backends": ["10.0.0.5:8080"], "container": "acme-app"}"#).await;
    let (code, out, _) = reveille(url, &["service", "set", "acme", "--backend", "10.0.0.7:8080"]);
    assert_eq!(code, 0);
    assert!(out.contains("(updated)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/services/acme").await.unwrap(),
        serde_json::json!({"backends": ["10.0.0.7:8080"], "container": "acme-app"})
    );

    // A passivated service: container fields are validated and merged like the rest.
    let args = ["service", "set", "web", "--container", "web-1", "--port", "8080", "--idle-timeout", "5m"];
    let (code, out, err) = reveille(url, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("container web-1") && out.contains("(new)"), "{out}");
    let (code, _, err) = reveille(url, &["service", "set", "web", "--stop-timeout", "2s"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = reveille(url, &["service", "set", "web", "--idle-timeout", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid value") && err.contains("soon"), "{err}");
    let (code, _, err) = reveille(url, &["service", "set", "web", "--health-path", "health"]);
    assert_eq!(code, 1);
    assert!(err.contains("health_path"), "{err}");
    assert_eq!(
        value(&etcd, "/reveille/services/web").await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080, "idle_timeout": "5m", "stop_timeout": "2s"}),
        "a refused change writes nothing"
    );
    let (_, out, _) = reveille(url, &["service", "ls"]);
    assert!(out.lines().any(|l| l.starts_with("web") && l.contains("[container web-1:8080]")), "{out}");

    // Fields can be removed: a fixed backend added, then the container's timeouts, then the backends again.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--backend", "10.0.0.9:8080"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        reveille(url, &["service", "set", "web", "--unset", "stop_timeout", "--unset", "idle_timeout"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        value(&etcd, "/reveille/services/web").await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080, "backends": ["10.0.0.9:8080"]})
    );
    let (code, out, err) = reveille(url, &["service", "set", "web", "--unset", "backends"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("service web: container web-1 (updated)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/services/web").await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080})
    );
    // A removal that leaves an invalid service is refused, and writes nothing.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--unset", "container", "--unset", "port"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        value(&etcd, "/reveille/services/web").await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080})
    );
    let (code, _, err) = reveille(url, &["service", "set", "web", "--unset", "colour"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'colour'"), "{err}");

    // A service in use is not removed without --force.
    let (code, _, err) = reveille(url, &["service", "rm", "acme"]);
    assert_eq!(code, 1);
    assert!(err.contains("used by 2 route(s)"), "{err}");
    assert!(value(&etcd, "/reveille/services/acme").await.is_some());

    let (code, out, _) = reveille(url, &["route", "rm", "acme.example.com"]);
    assert_eq!((code, out.trim()), (0, "route acme.example.com removed"));
    let (code, _, err) = reveille(url, &["route", "rm", "acme.example.com"]);
    assert_eq!(code, 1);
    assert!(err.contains("no route for acme.example.com"), "{err}");
    let (code, _, _) = reveille(url, &["service", "rm", "acme", "--force"]);
    assert_eq!(code, 0);
    assert_eq!(value(&etcd, "/reveille/services/acme").await, None);

    // A custom prefix keeps things apart.
    let (code, _, _) = reveille(url, &["service", "set", "x", "--backend", "127.0.0.1:1", "--etcd-prefix", "/other"]);
    assert_eq!(code, 0);
    assert!(value(&etcd, "/other/services/x").await.is_some());
}

#[test]
fn unreachable_etcd_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, _, err) = reveille(&format!("http://127.0.0.1:{port}"), &["route", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot reach etcd at http://127.0.0.1:{port}")), "{err}");
    // Said for a person: what failed and why, not the gRPC client's debug dump of the status.
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("MetadataMap") && !err.contains("details: ["), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_set_docker_host_is_checked_against_the_config() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reveille.toml");
    std::fs::write(&config, "[docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n").unwrap();
    let config = config.to_str().unwrap();

    let args = ["service", "set", "web", "--container", "web-1", "--port", "8080", "--docker-host", "second"];
    let (code, out, err) = reveille(url, &[&args[..], &["--config", config]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("container web-1 on runtime second (new)"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/services/web").await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080, "docker_host": "second"})
    );

    // A host the config does not define is refused, and nothing is written.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--docker-host", "third", "--config", config]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown `docker_host` \"third\" (configured: default, second)"), "{err}");
    let (code, _, err) = reveille(url, &["service", "set", "web", "--docker-host", "a b"]);
    assert_eq!(code, 1);
    assert!(err.contains("docker host name \"a b\""), "{err}");
    assert_eq!(value(&etcd, "/reveille/services/web").await.unwrap()["docker_host"], "second");
    let (_, out, _) = reveille(url, &["service", "ls"]);
    assert!(out.lines().any(|l| l.starts_with("web") && l.contains("[container web-1:8080 on second]")), "{out}");

    // Without --config, any well-formed name: the proxies check it against their own config.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--docker-host", "third"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(value(&etcd, "/reveille/services/web").await.unwrap()["docker_host"], "third");
    // `docker_host` needs a container.
    let (code, _, err) =
        reveille(url, &["service", "set", "api", "--backend", "127.0.0.1:1", "--docker-host", "second"]);
    assert_eq!(code, 1);
    assert!(err.contains("`docker_host` needs `container`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_set_depends_on() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    let args = ["service", "set", "shop", "--container", "shop-1", "--port", "8080"];
    let deps = ["--depends-on", "shop-db", "--depends-on", "cache:6379"];
    let (code, out, err) = reveille(url, &[&args[..], &deps[..]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("service shop: container shop-1 after shop-db, cache (new)"), "{out}");
    let (_, out, _) = reveille(url, &["service", "ls"]);
    assert!(out.contains("[container shop-1:8080 after shop-db, cache]"), "{out}");
    assert_eq!(
        value(&etcd, "/reveille/services/shop").await.unwrap()["depends_on"],
        serde_json::json!(["shop-db", {"container": "cache", "port": 6379}])
    );
    // Bad entries name the field; nothing is written.
    let (code, _, err) = reveille(url, &["service", "set", "shop", "--depends-on", "cache:x"]);
    assert_eq!(code, 2, "clap refuses it: {err}");
    assert!(err.contains("--depends-on") && err.contains("the port after ':' must be 1-65535"), "{err}");
    let (code, _, err) = reveille(url, &["service", "set", "shop", "--depends-on", "shop-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("`depends_on[0]`: \"shop-1\" is the service's own container"), "{err}");
    let (code, _, err) = reveille(url, &["service", "set", "shop", "--depends-on", "a b"]);
    assert_eq!(code, 1);
    assert!(err.contains("`depends_on[0]`: invalid container name \"a b\""), "{err}");
    assert_eq!(value(&etcd, "/reveille/services/shop").await.unwrap()["depends_on"][0], "shop-db");
    let (code, _, err) = reveille(url, &["service", "set", "shop", "--unset", "depends_on"]);
    assert_eq!(code, 0, "{err}");
    assert!(value(&etcd, "/reveille/services/shop").await.unwrap().get("depends_on").is_none());
}

#[test]
fn version_names_the_revision_and_completions_and_man_page_are_generated() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reveille")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    let revision = version.trim().rsplit_once(" (").map(|(_, r)| r.trim_end_matches(')')).unwrap_or("");
    assert!(version.starts_with(&format!("reveille {} (", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(
        revision == "unknown" || revision.trim_end_matches("-dirty").chars().all(|c| c.is_ascii_hexdigit()),
        "a git revision: {version}"
    );
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("_reveille()") && bash.contains("serve") && bash.contains("--https"), "bash completion");
    assert!(run(&["completions", "zsh"]).starts_with("#compdef reveille"));
    let man = run(&["manpage"]);
    assert!(man.contains(".TH reveille 1") && man.contains("multi\\-tenant"), "{man}");
}

#[test]
fn check_shows_unknown_keys_and_help_is_grouped_by_concern() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[services.web]\nbackend = [\"127.0.0.1:1\"]\nbackends = [\"127.0.0.1:2\"]\n[routes]\n\"a.test\" = \"web\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--routes"]).arg(&routes).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // An unknown key fails the check (serving ignores it: a setting the operator believes in force is not).
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("line 2: service \"web\": unknown field `backend` (did you mean `backends`?)"), "{text}");

    let help = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for heading in ["Listeners:", "TLS:", "etcd:", "Client limits:", "Backends:", "Passivation and cluster:"] {
        assert!(help.lines().any(|l| l == heading), "{heading} in serve --help:\n{help}");
    }
    let help = Command::new(BIN).args(["service", "set", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let etcd = help.find("\netcd:").expect("etcd flags under their own heading");
    assert!(help[..etcd].contains("--container") && help[etcd..].contains("--etcd-prefix"), "{help}");
}

fn check(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(BIN).arg("check").args(args).output().unwrap();
    assert!(out.stderr.is_empty(), "check prints to stdout: {}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first hour's typos (issue 26): each is refused by `check`, every one in one pass, each said so that the
/// operator knows what to write instead.
#[test]
fn check_refuses_typos_and_says_every_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let flag = std::ffi::OsStr::new("--routes");

    // A typo that silently turned passivation off: the service still has a backend, so it was valid.
    std::fs::write(
        &routes,
        "[services.web]\nbackends = [\"127.0.0.1:1\"]\ncontaner = \"x\"\nidle_timout = \"5m\"\n\
         [routes]\n\"a.test\" = \"web\"\n",
    )
    .unwrap();
    let (code, out) = check(&[flag, routes.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 3: service \"web\": unknown field `contaner` (did you mean `container`?)"), "{out}");
    assert!(
        out.contains("line 4: service \"web\": unknown field `idle_timout` (did you mean `idle_timeout`?)"),
        "{out}"
    );

    // Every error at once, each with its line; a warning is shown with them.
    std::fs::write(
        &routes,
        "[services.a]\ncontainer = \"a\"\nport = \"x\"\nidle_timeout = \"5\"\n\
         [services.b]\nbackends = [\"127.0.0.1:99999\"]\n\
         [services.c]\nbackends = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let (code, out) = check(&[flag, routes.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    for said in [
        "line 3: service \"a\": `port`: invalid type: string \"x\", expected u16",
        "line 4: service \"a\": `idle_timeout` \"5\" has no unit: write a duration with one, for example 5s or 5m",
        "line 6: invalid backend address \"127.0.0.1:99999\": port out of range (1-65535)",
        "warning: the routes file defines no routes",
    ] {
        assert!(out.contains(said), "{said}:\n{out}");
    }

    // A service defined but invalid is not "undefined", and does not hide a duplicate route to it.
    std::fs::write(&routes, "[services.a]\nbackends = [\"nope\"]\n[routes]\n\"a.test\" = \"a\"\n\"A.test\" = \"a\"\n")
        .unwrap();
    let (code, out) = check(&[flag, routes.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 2: invalid backend address \"nope\": missing port"), "{out}");
    assert!(out.contains("points to service \"a\", which is invalid") && !out.contains("undefined"), "{out}");
    assert!(out.contains("line 5: route \"a.test\" is defined twice"), "{out}");

    // The config file says which key was meant too, and what a duration looks like.
    let config = dir.path().join("reveille.toml");
    std::fs::write(&config, "[passivation]\nidle_timout = \"5m\"\n").unwrap();
    let (code, out) = check(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown field `idle_timout`") && out.contains("(did you mean `idle_timeout`?)"), "{out}");
    std::fs::write(&config, "[passivation]\nidle_timeout = \"5\"\n").unwrap();
    let (code, out) = check(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("for example \"5s\" or \"5m\""), "{out}");
}
