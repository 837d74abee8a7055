//! `reveille manpage`: one page per command and subcommand, each naming the flags its `--help` lists, and each a
//! page that `man` renders (where `man` is installed).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_reveille");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands that `--help` lists under "Commands:", clap's own `help` left out.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Every `--flag` that a help text names.
fn flags(help: &str) -> Vec<String> {
    let mut found: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.len() > 2 && w.starts_with("--") && w.as_bytes()[2].is_ascii_alphabetic())
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Every command as the words that name it: [], ["serve"], ["route"], ["route", "set"], ...
fn commands(path: Vec<String>, into: &mut Vec<Vec<String>>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    for sub in subcommands(&run(&args)) {
        let mut child = path.clone();
        child.push(sub);
        commands(child, into);
    }
    into.push(path);
}

#[test]
fn manpage_writes_a_page_per_subcommand_naming_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let listed = run(&["manpage", "--dir", pages.to_str().unwrap()]);

    let mut all = Vec::new();
    commands(Vec::new(), &mut all);
    assert!(all.len() > 10, "the commands found in --help: {all:?}");
    let man = which("man");
    for path in &all {
        let name = std::iter::once("reveille").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
        let file = pages.join(format!("{name}.1"));
        assert!(listed.lines().any(|l| Path::new(l) == file), "{} listed in:\n{listed}", file.display());
        let page = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // clap_mangen opens with the definition of a quote string (`.ie`/`.el`), then the title.
        let title = page.lines().find(|l| !l.starts_with(".ie ") && !l.starts_with(".el ")).unwrap_or("");
        assert!(title.starts_with(&format!(".TH {name} 1 ")), "{name}.1 starts with .TH:\n{page}");
        assert!(title.contains(&format!("\"reveille {}", env!("CARGO_PKG_VERSION"))), "{name}.1's footer: {title}");
        // roff writes a hyphen as `\-`.
        let text = page.replace("\\-", "-");
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        for flag in flags(&run(&args)) {
            assert!(text.contains(&flag), "{name}.1 names {flag}:\n{page}");
        }
        if man {
            let out = Command::new("man").args(["-l", "-P", "cat"]).arg(&file).env("MANWIDTH", "100").output().unwrap();
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "man -l {name}.1: {}", String::from_utf8_lossy(&out.stderr));
            assert!(shown.contains("NAME") && shown.contains(&name), "man -l {name}.1:\n{shown}");
        }
    }
    // Nothing but the pages of the commands found.
    assert_eq!(std::fs::read_dir(&pages).unwrap().count(), all.len(), "{listed}");

    // Without --dir: the main page on stdout, the same as reveille.1.
    assert_eq!(run(&["manpage"]), std::fs::read_to_string(pages.join("reveille.1")).unwrap());
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}
