//! Readings from `/proc` (and `ss`): a process's memory, CPU time and open files, a CPU's busy time, the
//! host's listen-queue overflows.

use std::process::Command;

use crate::machine::first_line;

/// `/proc/<pid>/status`; empty if it cannot be read (the process is gone).
pub fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// A `kB` field of [`proc_status`], such as `"VmRSS:"`, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// User + system CPU time so far of a process and all of its descendants (nginx's master and its workers), in
/// clock ticks; `None` if `pid` itself cannot be read. Children are found by scanning `/proc` for their parent
/// pid; a child that exits during a measurement takes its ticks with it.
pub fn tree_cpu_ticks(pid: u32) -> Option<u64> {
    let own = cpu_ticks(pid)?;
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_pid(child) {
            parents.push((child, ppid));
        }
    }
    let mut total = own;
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == parent {
                total += cpu_ticks(child).unwrap_or(0);
                frontier.push(child);
            }
        }
    }
    Some(total)
}

/// The parent pid of a process, from `/proc/<pid>/stat`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, ppid, ...
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// The calling thread's Linux thread id (from `/proc/thread-self`), if known.
pub fn thread_id() -> Option<u32> {
    // "<pid>/task/<tid>"
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
pub fn clock_ticks_per_sec() -> f64 {
    first_line(Command::new("getconf").arg("CLK_TCK")).parse().unwrap_or(100.0)
}

/// User + system CPU time of a process so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    Some(cpu_ticks(pid)? as f64 / clock_ticks_per_sec())
}

/// `(busy, total)` clock ticks of one CPU since boot, from `/proc/stat` (idle and iowait count as not busy).
pub fn cpu_times(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0)).collect();
    let total: u64 = ticks.iter().take(8).sum(); // user nice system idle iowait irq softirq steal
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// How busy a CPU was between two [`cpu_times`], in percent; NaN if unknown.
pub fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => f64::NAN,
    }
}

/// The soft `Max open files` of a process, from `/proc/<pid>/limits` (`self` for this one).
pub fn nofile_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Open file descriptors of a process (`self` for this one).
pub fn open_fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `TcpExt: ListenOverflows` of this network namespace (loopback included): connections dropped because a
/// listen queue was full.
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The backlog of the socket listening on 127.0.0.1:`port` (`Send-Q` of `ss -ltn`).
pub fn listen_backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().ok()?;
    // "LISTEN 0 128 127.0.0.1:39111 0.0.0.0:*"
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2)?.parse().ok()
}

/// TCP connections in this network namespace whose local end is 127.0.0.1:`port` and that are established
/// (`/proc/net/tcp`): a server's accepted connections and those waiting in its listen backlog alike.
pub fn established_to(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    // "  0: 0100007F:1F90 0100007F:A2B4 01 ...": local address, remote address, state (01 = ESTABLISHED).
    Some(
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let mut fields = l.split_whitespace().skip(1);
                fields.next() == Some(local.as_str()) && fields.nth(1) == Some("01")
            })
            .count(),
    )
}
