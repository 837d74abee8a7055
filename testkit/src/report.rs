//! A lab's report: its heading, its tables, where it goes, and how it shows the logs of the processes it ran.

use std::fmt;
use std::path::PathBuf;

use crate::machine::workspace_root;
use crate::stats::{format_us, median, percentile};

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

/// The columns of [`timing_row`]'s numbers, after the one that says what was timed.
pub const TIMING_COLUMNS: &str = "n | median | p90 | min | max";
/// [`TIMING_COLUMNS`]'s alignments.
pub const TIMING_ALIGN: &str = "rrrrr";

/// A row of a table of timings: `what`, then how many, the median, p90, min and max of `us` (µs).
pub fn timing_row(what: &str, us: &[f64]) -> [String; 6] {
    [
        what.to_string(),
        us.len().to_string(),
        format_us(median(us)),
        format_us(percentile(us, 90.0)),
        format_us(percentile(us, 0.0)),
        format_us(percentile(us, 100.0)),
    ]
}

/// A markdown table: a header, how each column is aligned, and rows of cells. Every lab's tables are built with
/// it, so a cell cannot break a row (a `|` in a cell is written `/`) and a row has as many cells as the header.
pub struct Table {
    header: Vec<String>,
    /// `l` (left) or `r` (right) per column.
    align: Vec<char>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with the columns `header` names, as in markdown (`proxy | req/s | p99`); `align` has a letter
    /// per column: `l` left, `r` right (numbers).
    pub fn new(header: &str, align: &str) -> Self {
        let header: Vec<String> = header.split('|').map(|h| h.trim().to_string()).collect();
        let align: Vec<char> = align.chars().collect();
        assert_eq!(header.len(), align.len(), "a table needs an alignment per column: {header:?}");
        assert!(align.iter().all(|a| matches!(a, 'l' | 'r')), "alignments are l or r: {align:?}");
        Self { header, align, rows: Vec::new() }
    }

    /// Adds a row; missing cells are left empty.
    pub fn row<C: ToString>(&mut self, cells: impl IntoIterator<Item = C>) {
        let mut row: Vec<String> = cells.into_iter().map(|c| c.to_string().replace('|', "/")).collect();
        assert!(
            row.len() <= self.header.len(),
            "a row of {} cells in a table of {} columns",
            row.len(),
            self.header.len()
        );
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    /// The header line, the alignment line and a line per row, each ending with a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| {} |", self.header.join(" | "))?;
        let rule: Vec<&str> = self.align.iter().map(|a| if *a == 'r' { "---:" } else { "---" }).collect();
        writeln!(f, "|{}|", rule.join("|"))?;
        for row in &self.rows {
            writeln!(f, "| {} |", row.join(" | "))?;
        }
        Ok(())
    }
}
