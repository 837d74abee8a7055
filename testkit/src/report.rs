//! Where a lab's report goes, and how it shows the logs of the processes it ran.

use std::path::PathBuf;

use crate::machine::workspace_root;

/// A report's start: its heading (`### <title>, <date>`) and a blank line.
pub fn heading(title: &str, date: &str) -> String {
    format!("### {title}, {date}\n\n")
}

/// Prints `title`, how many non-blank lines `log` has, and the first 10 of them.
pub fn print_log(title: &str, log: &str) {
    let lines: Vec<_> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        println!("{title}: empty");
        return;
    }
    println!("{title}: {} line(s); the first ones:", lines.len());
    for line in lines.iter().take(10) {
        println!("    {line}");
    }
}

/// Writes the report to `target/<file_name>` (or under `CARGO_TARGET_DIR`) and says where.
pub fn write_report(file_name: &str, report: &str) {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join(file_name);
    match std::fs::write(&path, report) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}
