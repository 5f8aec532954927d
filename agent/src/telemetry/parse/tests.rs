//! The parsers on files captured from real systems (`agent/testdata/host`: a Linux
//! host's `/proc`; `agent/testdata/cgroup-*`: cgroup v2 interface files in the
//! kernel's format, one container with limits and one session scope without).

use super::*;

const HOST_STAT: &str = include_str!("../../../testdata/host/stat");
const HOST_MEMINFO: &str = include_str!("../../../testdata/host/meminfo");
const HOST_LOADAVG: &str = include_str!("../../../testdata/host/loadavg");
const HOST_UPTIME: &str = include_str!("../../../testdata/host/uptime");
const LIMITED_CPU_STAT: &str = include_str!("../../../testdata/cgroup-limited/cpu.stat");
const LIMITED_CPU_MAX: &str = include_str!("../../../testdata/cgroup-limited/cpu.max");
const LIMITED_MEMORY_MAX: &str = include_str!("../../../testdata/cgroup-limited/memory.max");
const LIMITED_MEMORY_CURRENT: &str =
    include_str!("../../../testdata/cgroup-limited/memory.current");
const LIMITED_MEMORY_STAT: &str = include_str!("../../../testdata/cgroup-limited/memory.stat");
const LIMITED_SELF: &str = include_str!("../../../testdata/cgroup-limited/self-cgroup");
const UNLIMITED_CPU_MAX: &str = include_str!("../../../testdata/cgroup-unlimited/cpu.max");
const UNLIMITED_MEMORY_MAX: &str = include_str!("../../../testdata/cgroup-unlimited/memory.max");
const UNLIMITED_SELF: &str = include_str!("../../../testdata/cgroup-unlimited/self-cgroup");

#[test]
fn proc_stat_sums_every_cpu_column_and_counts_iowait_as_idle() {
    let cpu = proc_stat(HOST_STAT).unwrap();
    // cpu  76398 43958 8643 1321043 532 0 164 1281 0 0
    assert_eq!(cpu.total, 76398 + 43958 + 8643 + 1321043 + 532 + 164 + 1281);
    assert_eq!(cpu.idle, 1321043 + 532);
    // An old kernel's four columns still parse; a line cut short does not.
    let old = proc_stat("cpu  10 0 5 85\n").unwrap();
    assert_eq!((old.total, old.idle), (100, 85));
    assert!(proc_stat("cpu  10 0\n").is_err());
    assert!(
        proc_stat("cpu0 1 2 3 4\n").is_err(),
        "per-CPU lines are not the total"
    );
    assert!(matches!(
        proc_stat("cpu  1 x 3 4"),
        Err(ParseError::NotANumber { .. })
    ));
}

#[test]
fn host_cpu_percent_is_busy_ticks_over_all_ticks() {
    let a = HostCpu {
        total: 1000,
        idle: 800,
    };
    let b = HostCpu {
        total: 1400,
        idle: 1100,
    };
    assert_eq!(host_cpu_percent(a, b), 25.0);
    assert_eq!(host_cpu_percent(a, a), 0.0);
    // Counters that went backwards (a container checkpoint restored) read as idle.
    assert_eq!(host_cpu_percent(b, a), 0.0);
}

#[test]
fn meminfo_reads_total_and_available_in_bytes() {
    let m = meminfo(HOST_MEMINFO).unwrap();
    assert_eq!(m.total, 24683792 * 1024);
    assert_eq!(m.available, 22805068 * 1024);
    let old = meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").unwrap();
    assert_eq!(
        old.available,
        40 * 1024,
        "MemFree stands in for MemAvailable"
    );
    assert!(meminfo("MemFree: 40 kB\n").is_err());
}

#[test]
fn loadavg_and_uptime_parse_the_captured_files() {
    assert_eq!(loadavg(HOST_LOADAVG).unwrap(), [8.41, 6.02, 2.93]);
    assert_eq!(uptime(HOST_UPTIME).unwrap(), 7268);
    assert!(loadavg("0.1 0.2").is_err());
    assert!(uptime("").is_err());
    assert_eq!(uptime("-5 3").unwrap(), 0);
}

#[test]
fn cgroup_files_of_a_limited_container() {
    assert_eq!(cgroup_v2_path(LIMITED_SELF).as_deref(), Some("/"));
    assert_eq!(cpu_stat_usage_usec(LIMITED_CPU_STAT).unwrap(), 48213677);
    assert_eq!(cpu_max(LIMITED_CPU_MAX).unwrap(), Some(1.5));
    assert_eq!(memory_max(LIMITED_MEMORY_MAX).unwrap(), Some(2147483648));
    let current = bytes("memory.current", LIMITED_MEMORY_CURRENT).unwrap();
    assert_eq!(current, 734003200);
    let inactive = memory_stat_inactive_file(LIMITED_MEMORY_STAT).unwrap();
    assert_eq!(inactive, 157286400);
    assert_eq!(working_set(current, inactive), 734003200 - 157286400);
}

#[test]
fn cgroup_files_without_limits_say_none() {
    assert_eq!(
        cgroup_v2_path(UNLIMITED_SELF).as_deref(),
        Some("/user.slice/user-1000.slice/session-3.scope")
    );
    assert_eq!(cpu_max(UNLIMITED_CPU_MAX).unwrap(), None);
    assert_eq!(memory_max(UNLIMITED_MEMORY_MAX).unwrap(), None);
    // A cgroup v1 host has no `0::` line.
    assert_eq!(cgroup_v2_path("4:memory:/docker/abc\n1:cpu:/\n"), None);
    assert!(cpu_stat_usage_usec("user_usec 5\n").is_err());
    assert!(memory_max("lots\n").is_err());
}

#[test]
fn cgroup_cpu_percent_is_of_the_cpus_the_cgroup_may_use() {
    // 1.5 s of CPU in 1 s of wall time, of a 1.5-CPU quota: 100 %.
    assert_eq!(cgroup_cpu_percent(1_500_000, 1_000_000, 1.5), 100.0);
    assert_eq!(cgroup_cpu_percent(300_000, 1_000_000, 2.0), 15.0);
    assert_eq!(cgroup_cpu_percent(5, 0, 2.0), 0.0);
    assert_eq!(cgroup_cpu_percent(9_000_000, 1_000_000, 1.0), 100.0);
}
