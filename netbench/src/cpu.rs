//! CPU time of processes from /proc: what a path's relays (ferry, ssh and sshd, socat)
//! spend to move the benchmark's bytes. A path is a set of root processes; each counts
//! with all its descendants, living (utime + stime) and reaped (cutime + cstime), so
//! sshd's per-connection children and socat's forked children are included.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Clock ticks per second for /proc times; `getconf CLK_TCK`, else Linux's usual 100.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// One process's line of /proc/PID/stat: (ppid, utime + stime, cutime + cstime).
fn parse_stat(text: &str) -> Option<(u32, u64, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces: split after
    // the last `)`. Fields from 3 on: state ppid ... utime(14) stime(15) cutime(16) cstime(17).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(4)?).ok()?;
    Some((ppid, num(14)? + num(15)?, num(16)? + num(17)?))
}

/// Total CPU of `roots` and their descendants so far.
pub fn tree_cpu(roots: &[u32], ticks_per_sec: u64) -> Duration {
    let mut procs: HashMap<u32, (u32, u64, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                procs.insert(pid, stat);
            }
        }
    }
    let mut members: HashSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| procs.contains_key(p))
        .collect();
    // Grow the set until no process has a parent in it (trees are shallow: a few passes).
    loop {
        let before = members.len();
        for (pid, (ppid, _, _)) in &procs {
            if members.contains(ppid) {
                members.insert(*pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    let ticks: u64 = members
        .iter()
        .filter_map(|pid| procs.get(pid))
        .map(|(_, own, reaped)| own + reaped)
        .sum();
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_sec.max(1))
}

/// Resident memory of one process in KiB: PSS from smaps_rollup (shared pages split
/// among their users), or RSS where smaps_rollup is missing.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let field = |file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    field("smaps_rollup", "Pss:").or_else(|| field("status", "VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (my (odd) proc) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some((77, 300, 10)));
    }

    #[test]
    fn our_own_cpu_is_visible() {
        let me = std::process::id();
        let t0 = tree_cpu(&[me], clock_ticks());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(tree_cpu(&[me], clock_ticks()) > t0);
        assert!(pss_kib(me).is_some_and(|k| k > 0));
    }
}
