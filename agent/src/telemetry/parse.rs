//! Parsers for the kernel files the agent's readings come from: `/proc` (the host)
//! and cgroup v2 interface files (the agent's container). Pure functions of the
//! files' text, tested on captured contents in `agent/testdata/`.
//!
//! The kernel's formats are stable, but a file may be cut short (a read racing an
//! update) or come from an older kernel without a field: every parser answers a
//! [`ParseError`] instead of panicking, and the caller leaves that reading out.

/// Why a file's text could not be read as expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The field is not in the file.
    #[error("{file}: no `{field}`")]
    Missing {
        file: &'static str,
        field: &'static str,
    },
    /// A field is there but is not a number.
    #[error("{file}: `{text}` is not a number")]
    NotANumber { file: &'static str, text: String },
}

fn number<T: std::str::FromStr>(file: &'static str, text: &str) -> Result<T, ParseError> {
    text.trim().parse().map_err(|_| ParseError::NotANumber {
        file,
        text: text.chars().take(40).collect(),
    })
}

/// CPU time from the `cpu` line of `/proc/stat`, in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCpu {
    /// Every tick spent: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
    /// Ticks spent idle or waiting for I/O.
    pub idle: u64,
}

/// The all-CPUs line of `/proc/stat`. Guest time is already counted in user time,
/// so it is not added again.
pub fn proc_stat(text: &str) -> Result<HostCpu, ParseError> {
    const FILE: &str = "/proc/stat";
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .ok_or(ParseError::Missing {
            file: FILE,
            field: "cpu",
        })?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| number(FILE, f))
        .collect::<Result<_, _>>()?;
    // Kernels before 2.6.11 had no steal column; before 2.5.41, no iowait and later.
    if fields.len() < 4 {
        return Err(ParseError::Missing {
            file: FILE,
            field: "cpu idle",
        });
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok(HostCpu {
        total: fields.iter().sum(),
        idle,
    })
}

/// CPU use in percent between two `/proc/stat` readings (0 when no tick passed).
pub fn host_cpu_percent(before: HostCpu, after: HostCpu) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    if total == 0 {
        return 0.0;
    }
    (total.saturating_sub(idle) as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// `/proc/meminfo`'s total and available memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    pub available: u64,
}

pub fn meminfo(text: &str) -> Result<HostMemory, ParseError> {
    const FILE: &str = "/proc/meminfo";
    let field = |name: &'static str| -> Result<u64, ParseError> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .ok_or(ParseError::Missing {
                file: FILE,
                field: name,
            })?;
        let kib: u64 = number(FILE, line.trim().trim_end_matches("kB"))?;
        Ok(kib.saturating_mul(1024))
    };
    let total = field("MemTotal")?;
    // MemAvailable exists since Linux 3.14; before it, free memory is the best guess.
    let available = field("MemAvailable").or_else(|_| field("MemFree"))?;
    Ok(HostMemory { total, available })
}

/// The three load averages of `/proc/loadavg`.
pub fn loadavg(text: &str) -> Result<[f64; 3], ParseError> {
    const FILE: &str = "/proc/loadavg";
    let mut fields = text.split_whitespace();
    let mut out = [0.0; 3];
    for (slot, name) in out.iter_mut().zip(["load 1m", "load 5m", "load 15m"]) {
        let f = fields.next().ok_or(ParseError::Missing {
            file: FILE,
            field: name,
        })?;
        let v: f64 = number(FILE, f)?;
        *slot = if v.is_finite() { v.max(0.0) } else { 0.0 };
    }
    Ok(out)
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "/proc/uptime";
    let first = text.split_whitespace().next().ok_or(ParseError::Missing {
        file: FILE,
        field: "uptime",
    })?;
    let secs: f64 = number(FILE, first)?;
    Ok(if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    })
}

/// The cgroup v2 path of a process, from `/proc/PID/cgroup` (the `0::PATH` line);
/// `None` on a cgroup v1-only host.
pub fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| p.starts_with('/'))
}

/// `usage_usec` of a cgroup's `cpu.stat`: CPU time its processes used, in µs.
pub fn cpu_stat_usage_usec(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "cpu.stat";
    let v = stat_field(text, "usage_usec").ok_or(ParseError::Missing {
        file: FILE,
        field: "usage_usec",
    })?;
    number(FILE, v)
}

/// CPUs a cgroup may use from `cpu.max` (`QUOTA PERIOD`, or `max PERIOD` for no
/// limit: then `None`).
pub fn cpu_max(text: &str) -> Result<Option<f64>, ParseError> {
    const FILE: &str = "cpu.max";
    let mut fields = text.split_whitespace();
    let quota = fields.next().ok_or(ParseError::Missing {
        file: FILE,
        field: "quota",
    })?;
    if quota == "max" {
        return Ok(None);
    }
    let quota: u64 = number(FILE, quota)?;
    let period: u64 = number(FILE, fields.next().unwrap_or("100000"))?;
    if quota == 0 || period == 0 {
        return Ok(None);
    }
    Ok(Some(quota as f64 / period as f64))
}

/// A byte count file such as `memory.current`.
pub fn bytes(file: &'static str, text: &str) -> Result<u64, ParseError> {
    number(file, text)
}

/// `memory.max`: the limit in bytes, or `None` for `max` (no limit).
pub fn memory_max(text: &str) -> Result<Option<u64>, ParseError> {
    if text.trim() == "max" {
        return Ok(None);
    }
    number("memory.max", text).map(Some)
}

/// `inactive_file` of `memory.stat`: page cache the kernel reclaims first.
pub fn memory_stat_inactive_file(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "memory.stat";
    let v = stat_field(text, "inactive_file").ok_or(ParseError::Missing {
        file: FILE,
        field: "inactive_file",
    })?;
    number(FILE, v)
}

/// A cgroup's working set, as `docker stats` and the kubelet count it: what it uses
/// less the inactive page cache it would give back under pressure.
pub fn working_set(current: u64, inactive_file: u64) -> u64 {
    current.saturating_sub(inactive_file)
}

/// CPU use in percent of `cpus` CPUs, from `used_usec` of CPU time over `wall_usec`.
pub fn cgroup_cpu_percent(used_usec: u64, wall_usec: u64, cpus: f64) -> f64 {
    if wall_usec == 0 || cpus.is_nan() || cpus <= 0.0 {
        return 0.0;
    }
    (used_usec as f64 * 100.0 / (wall_usec as f64 * cpus)).clamp(0.0, 100.0)
}

/// The value of `name` in a `KEY VALUE` per line file.
fn stat_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(name)).then(|| f.next()).flatten()
    })
}

#[cfg(test)]
mod tests;
