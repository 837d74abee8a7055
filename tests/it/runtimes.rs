//! Named runtimes as an operator writes them (`[runtimes.<name>]`, a service's `runtime`, its older name
//! `docker_host`), through the binary: `service set --runtime` against etcd, `check` and `serve` of a config.
//! Waking tenants on a Podman runtime is `podman.rs`.

use std::process::Command;

use crate::cli::{reveille, value};
use crate::support::etcd::Etcd;

const BIN: &str = env!("CARGO_BIN_EXE_reveille");

/// `reveille ARGS` without etcd: its exit code and stdout and stderr together.
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

const RUNTIMES: &str = "[runtimes.pod]\nkind = \"podman\"\nendpoint = \"unix:///run/podman/podman.sock\"\n\
                        [docker.hosts.second]\nendpoint = \"tcp://127.0.0.1:2375\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_set_runtime_is_checked_against_the_config_and_replaces_docker_host() {
    let etcd = Etcd::start().await;
    let url = etcd.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reveille.toml");
    std::fs::write(&config, RUNTIMES).unwrap();
    let config = config.to_str().unwrap();
    let key = "/reveille/services/web";

    let args = ["service", "set", "web", "--container", "web-1", "--port", "8080", "--docker-host", "second"];
    let (code, _, err) = reveille(url, &[&args[..], &["--config", config]].concat());
    assert_eq!(code, 0, "{err}");
    // `--runtime` replaces the older name: one setting, written once.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--runtime", "pod", "--config", config]);
    assert_eq!(code, 0, "{err}");
    let want = serde_json::json!({"container": "web-1", "port": 8080, "runtime": "pod"});
    assert_eq!(value(&etcd, key).await.unwrap(), want);
    let (_, out, _) = reveille(url, &["service", "ls"]);
    assert!(out.lines().any(|l| l.starts_with("web") && l.contains("[container web-1:8080 on pod]")), "{out}");

    // A runtime the config does not define is refused, naming the field and the runtimes; nothing is written.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--runtime", "nope", "--config", config]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown `runtime` \"nope\" (configured: default, pod, second)"), "{err}");
    assert_eq!(value(&etcd, key).await.unwrap(), want);
    // Both flags at once: refused by the command line itself.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--runtime", "pod", "--docker-host", "second"]);
    assert_ne!(code, 0);
    assert!(err.contains("--runtime") && err.contains("--docker-host"), "{err}");
    // Back to the older name: `runtime` goes.
    let (code, _, err) = reveille(url, &["service", "set", "web", "--docker-host", "second", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        value(&etcd, key).await.unwrap(),
        serde_json::json!({"container": "web-1", "port": 8080, "docker_host": "second"})
    );

    // A value written by hand with both names is invalid, and says why.
    let both = r#"{"container": "web-1", "port": 8080, "runtime": "pod", "docker_host": "second"}"#;
    etcd.client().await.put(key, both, None).await.unwrap();
    let (code, _, err) = reveille(url, &["service", "set", "web", "--port", "8081"]);
    assert_eq!(code, 1);
    assert!(err.contains("`runtime` and `docker_host` both name the runtime"), "{err}");
}

#[test]
fn check_and_serve_read_runtimes_and_refuse_what_they_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reveille.toml");
    let routes = dir.path().join("routes.toml");
    let config_arg = config.to_str().unwrap();
    std::fs::write(&config, format!("[server]\nroutes = \"routes.toml\"\n{RUNTIMES}")).unwrap();
    let service = |runtime: &str| {
        let text = format!(
            "[services.web]\ncontainer = \"web-1\"\nport = 8080\nruntime = \"{runtime}\"\n[routes]\n\"a.test\" = \"web\"\n"
        );
        std::fs::write(&routes, text).unwrap();
    };

    service("pod");
    let (code, out) = run(&["check", "--config", config_arg]);
    assert_eq!(code, 0, "{out}");
    service("second");
    assert_eq!(run(&["check", "--config", config_arg]).0, 0, "a [docker.hosts] name is a runtime too");
    service("nope");
    let (code, out) = run(&["check", "--config", config_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown `runtime` \"nope\" (configured: default, pod, second)"), "{out}");

    // Swarm is parsed but not built in this version: refused by `check` and by `serve`, saying so.
    service("pod");
    let swarm = "[runtimes.sw]\nkind = \"swarm\"\nendpoint = \"unix:///var/run/docker.sock\"\n";
    std::fs::write(&config, format!("[server]\nroutes = \"routes.toml\"\n{RUNTIMES}{swarm}")).unwrap();
    let said = "[runtimes.sw] kind: runtime kind \"swarm\" is not built in this version";
    let (code, out) = run(&["check", "--config", config_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(said), "{out}");
    let (code, out) = run(&["serve", "--config", config_arg, "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(said), "{out}");

    // A name in both tables, and an unknown kind, name the table.
    let twice = "[runtimes.second]\nkind = \"docker\"\nendpoint = \"tcp://127.0.0.1:2376\"\n";
    std::fs::write(&config, format!("{RUNTIMES}{twice}")).unwrap();
    let (code, out) = run(&["check", "--config", config_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[runtimes.second] and [docker.hosts.second] both define runtime \"second\""), "{out}");
    std::fs::write(&config, "[runtimes.k]\nkind = \"kubernetes\"\nendpoint = \"tcp://127.0.0.1:1\"\n").unwrap();
    let (code, out) = run(&["check", "--config", config_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown variant `kubernetes`, expected one of `docker`, `podman`, `swarm`"), "{out}");
}
