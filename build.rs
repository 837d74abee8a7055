//! Records the git revision the binary is built from, for `reveille --version`: `0.1.0 (abc1234)`, with
//! `-dirty` when the tree had uncommitted changes, or `unknown` outside a git checkout (a source tarball,
//! `cargo install` from a registry).
//!
//! Cargo reruns this script, and so rebuilds reveille, when a file it watches changes. It watches what names the
//! revision: HEAD, its reflog, the branch HEAD points to, and packed-refs (where a branch's commit lives once
//! packed). Not the index: git rewrites it on a plain `git status` after any file is touched, and each rewrite
//! cost a silent rebuild of several minutes. So `-dirty` is as of the last time this script ran: editing a file
//! (a source file rebuilds reveille, but does not rerun this) or reverting every change leaves it stale until
//! the next commit or checkout. tests/it/build_script.rs checks that a `git status` after a touch does not rerun
//! this script, and that a commit does.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let revision = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            // --no-optional-locks: a plain `git status` may rewrite the index (it does in a fresh clone); a build
            // should not write to the user's repository.
            let dirty = git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=REVEILLE_GIT_REVISION={revision}");
    // A new commit or a checkout changes the revision. The files are asked of git: in a worktree (`git worktree
    // add`) they are not under ./.git, and a path that does not exist would make cargo run this script, and so
    // rebuild reveille, on every build.
    println!("cargo:rerun-if-changed=build.rs");
    // logs/HEAD, this worktree's reflog, is appended to by every commit, checkout and reset here: it catches a
    // commit whose branch is only in packed-refs (no loose ref file to watch until then).
    let mut watched = vec!["HEAD".to_string(), "logs/HEAD".to_string()];
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head);
        watched.push("packed-refs".to_string());
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
