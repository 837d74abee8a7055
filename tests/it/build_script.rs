//! build.rs, the script that names the git revision in `reveille --version`, reruns on a commit but not on a
//! plain `git status` after a touch (which rewrites git's index: watching the index cost a rebuild of minutes).
//! Checked on a crate of its own in a fresh repository (reveille's build.rs, a main that prints the revision),
//! so the check builds in seconds and leaves reveille's own checkout alone.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `cargo build -v` of the probe crate: whether it ran the build script, and the revision the binary prints.
fn build(dir: &Path) -> (bool, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "-v", "--offline"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .expect("cargo runs");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cargo build:\n{log}");
    let ran = log.lines().any(|l| l.contains("Running") && l.contains("build-script-build"));
    let printed = Command::new(dir.join("target/debug/probe")).output().unwrap();
    (ran, String::from_utf8(printed.stdout).unwrap().trim().to_string())
}

#[test]
fn git_status_after_a_touch_does_not_rerun_build_rs_and_a_commit_does() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs"), dir.join("build.rs")).unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() { println!(\"{}\", env!(\"REVEILLE_GIT_REVISION\")); }\n")
        .unwrap();
    std::fs::write(dir.join("notes.txt"), "a tracked file\n").unwrap();
    std::fs::write(dir.join(".gitignore"), "/target\n").unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    for (key, value) in [("user.name", "test"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")] {
        git(dir, &["config", key, value]);
    }
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    let first = git(dir, &["rev-parse", "--short=12", "HEAD"]);

    let (ran, revision) = build(dir);
    assert!(ran, "the first build runs build.rs");
    assert_eq!(revision, first.trim());

    // A touch, then a plain `git status`: git refreshes the file's stat data in the index and writes it.
    let index = dir.join(".git/index");
    let before = std::fs::metadata(&index).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let notes = std::fs::File::options().append(true).open(dir.join("notes.txt")).unwrap();
    notes.set_modified(std::time::SystemTime::now()).unwrap();
    drop(notes);
    git(dir, &["status"]);
    let after = std::fs::metadata(&index).unwrap().modified().unwrap();
    assert!(after > before, "git status rewrote the index (else this test shows nothing)");
    let (ran, revision) = build(dir);
    assert!(!ran, "git status after a touch reran build.rs");
    assert_eq!(revision, first.trim());

    // A commit changes the revision: build.rs runs again and the binary names the new one.
    git(dir, &["commit", "-q", "--allow-empty", "-m", "second"]);
    let second = git(dir, &["rev-parse", "--short=12", "HEAD"]);
    let (ran, revision) = build(dir);
    assert!(ran, "a commit reruns build.rs");
    assert_eq!(revision, second.trim());
}
