//! Records the git revision the binary is built from, for `reveille --version`: `0.1.0 (abc1234)`, with
//! `-dirty` when the tree had uncommitted changes, or `unknown` outside a git checkout (a source tarball,
//! `cargo install` from a registry).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let revision = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            // --no-optional-locks: a plain `git status` may rewrite the index (it does in a fresh clone), and the
            // index is watched below: the next build would run this script, and rebuild reveille, once more.
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
    // A new commit, a checkout or a change of the index changes the revision. The files are asked of git: in a
    // worktree (`git worktree add`) they are not under ./.git, and a path that does not exist would make cargo
    // run this script, and so rebuild reveille, on every build.
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = vec!["HEAD".to_string(), "index".to_string()];
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
