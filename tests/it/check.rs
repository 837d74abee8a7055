//! What `reveille check` finds, as a running reveille reports it (issue 26): an unknown key in the routes file
//! logged at error with the key meant while the rest is served, at start and on a reload; a fatal error said
//! once, on one log line.

use std::process::Command;
use std::time::Duration;

use crate::support::serve::{Serve, BIN};
use crate::support::*;

/// The JSON log lines of `proc` so far at `level` whose message contains `text`.
fn logged(lines: &[serde_json::Value], level: &str, text: &str) -> usize {
    lines.iter().filter(|v| v["level"] == level && v["message"].as_str().unwrap_or_default().contains(text)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_logged_at_error_and_the_rest_is_served() {
    let backend = Backend::echo("web").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let file = |typo: &str| {
        format!(
            "[services.web]\nbackends = [\"{}\"]\n{typo} = \"5m\"\n[routes]\n\"web.test\" = \"web\"\n",
            backend.addr
        )
    };
    std::fs::write(&routes, file("idle_timout")).unwrap();
    let proc = Serve::start("reveille", Serve::command().arg("--routes").arg(&routes).args(["--access-log", "false"]));
    let said = "service \"web\": unknown field `idle_timout` (did you mean `idle_timeout`?); ignored";
    assert_eq!(logged(&proc.startup, "ERROR", said), 1, "at start: {:?}", proc.startup);
    assert_eq!(get(proc.http, "web.test", "/").await.backend(), "web", "the rest is served");

    // A new version with another typo: said again, at error, and applied.
    let next = dir.path().join("next.toml");
    std::fs::write(&next, file("wake_timout")).unwrap();
    std::fs::rename(&next, &routes).unwrap();
    let log = proc.log.clone();
    eventually(Duration::from_secs(10), "the reload's unknown key at error", || {
        let lines: Vec<serde_json::Value> =
            log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let found = logged(&lines, "ERROR", "unknown field `wake_timout` (did you mean `wake_timeout`?)") == 1
            && logged(&lines, "INFO", "routes file reloaded") == 1;
        async move { found }
    })
    .await;
    assert_eq!(get(proc.http, "web.test", "/").await.backend(), "web");
}

#[test]
fn a_fatal_error_is_said_once_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "[services.a]\nbackends = [\"nope\"]\n[routes]\n\"a.test\" = \"a\"\n\"b.test\" = \"b\"\n")
        .unwrap();
    for format in ["text", "json"] {
        let out = Command::new(BIN)
            .args(["serve", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", format, "--routes"])
            .arg(&routes)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let error = format!("routes file {} is invalid", routes.display());
        assert_eq!(all.matches(&error).count(), 1, "said once ({format}):\n{all}");
        // One line holds the whole error: both of its problems, with the time and level of a log line.
        let line = all.lines().find(|l| l.contains(&error)).unwrap();
        assert!(line.contains("line 2: invalid backend address") && line.contains("line 5: route"), "{format}: {all}");
        assert!(line.contains("ERROR"), "{format}: {line}");
        assert!(all.lines().all(|l| !l.trim_start().starts_with("line ")), "no line stands alone ({format}):\n{all}");
    }
}
