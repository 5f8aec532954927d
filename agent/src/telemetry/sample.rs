//! Taking a reading: reads the kernel files [`parse`] understands and the workspace
//! directory's file system, and turns two CPU counters into a percentage.
//!
//! Container-aware: when the agent's cgroup (v2) is a container's (the cgroup
//! namespace's root, or a cgroup with a CPU or memory limit), CPU and memory come from
//! the cgroup, against its limits; otherwise from `/proc`, against the host. Load and
//! uptime are the host's either way (the kernel has no per-cgroup figures for them).
//!
//! Where the files live is a [`Sources`], so tests point it at captured files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_proto::api::{StatsSource, WorkspaceStats};

use super::parse::{self, HostCpu, ParseError};

/// Where the readings come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/proc`.
    pub proc_dir: PathBuf,
    /// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// The directory whose file system's use is reported.
    pub workspace_dir: PathBuf,
}

impl Sources {
    /// The running system's files, reporting the disk of `workspace_dir`.
    pub fn system(workspace_dir: PathBuf) -> Self {
        Sources {
            proc_dir: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            workspace_dir,
        }
    }
}

/// Why a reading could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("file system of {path}: {source}")]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A CPU counter, to be compared with the next one.
#[derive(Debug, Clone, Copy)]
enum CpuCounter {
    Host(HostCpu),
    /// The cgroup's `usage_usec` at a moment.
    Cgroup {
        usage_usec: u64,
        at: Instant,
    },
}

/// Takes readings, remembering the last CPU counter.
#[derive(Debug)]
pub struct Sampler {
    sources: Sources,
    /// The agent's cgroup directory, when its figures are the workspace's.
    cgroup: Option<PathBuf>,
    /// CPUs the cgroup may use (its quota, else every CPU the agent may run on).
    cpus: f64,
    last: Option<CpuCounter>,
}

fn read(path: &Path) -> Result<String, SampleError> {
    std::fs::read_to_string(path).map_err(|source| SampleError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Sampler {
    /// Looks at the agent's own cgroup to choose where readings come from.
    pub fn new(sources: Sources) -> Self {
        let cgroup = container_cgroup(&sources);
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let cpus = cgroup
            .as_ref()
            .and_then(|dir| read(&dir.join("cpu.max")).ok())
            .and_then(|t| parse::cpu_max(&t).ok().flatten())
            .map_or(host_cpus, |quota| quota.min(host_cpus));
        Sampler {
            sources,
            cgroup,
            cpus,
            last: None,
        }
    }

    /// Where CPU and memory figures come from.
    pub fn source(&self) -> StatsSource {
        if self.cgroup.is_some() {
            StatsSource::Cgroup
        } else {
            StatsSource::Host
        }
    }

    /// A reading at `now`. CPU use is since the previous call (0 on the first).
    pub fn sample(&mut self, now: Instant) -> Result<WorkspaceStats, SampleError> {
        let proc_dir = &self.sources.proc_dir;
        let host_memory = parse::meminfo(&read(&proc_dir.join("meminfo"))?)?;
        let (counter, mem_used, mem_limit) = match &self.cgroup {
            Some(dir) => {
                let usage_usec = parse::cpu_stat_usage_usec(&read(&dir.join("cpu.stat"))?)?;
                let current = parse::bytes("memory.current", &read(&dir.join("memory.current"))?)?;
                // Without memory.stat (an old kernel), the page cache counts as used.
                let inactive = read(&dir.join("memory.stat"))
                    .ok()
                    .and_then(|t| parse::memory_stat_inactive_file(&t).ok())
                    .unwrap_or(0);
                let limit = parse::memory_max(&read(&dir.join("memory.max"))?)?
                    .map_or(host_memory.total, |l| l.min(host_memory.total));
                (
                    CpuCounter::Cgroup {
                        usage_usec,
                        at: now,
                    },
                    parse::working_set(current, inactive),
                    limit,
                )
            }
            None => (
                CpuCounter::Host(parse::proc_stat(&read(&proc_dir.join("stat"))?)?),
                host_memory.total.saturating_sub(host_memory.available),
                host_memory.total,
            ),
        };
        let cpu_percent = match (self.last, counter) {
            (Some(CpuCounter::Host(before)), CpuCounter::Host(after)) => {
                parse::host_cpu_percent(before, after)
            }
            (
                Some(CpuCounter::Cgroup {
                    usage_usec: before,
                    at: then,
                }),
                CpuCounter::Cgroup { usage_usec, at },
            ) => {
                let wall = at.saturating_duration_since(then).as_micros();
                parse::cgroup_cpu_percent(
                    usage_usec.saturating_sub(before),
                    u64::try_from(wall).unwrap_or(u64::MAX),
                    self.cpus,
                )
            }
            _ => 0.0,
        };
        self.last = Some(counter);
        let (disk_used, disk_total) = disk_usage(&self.sources.workspace_dir)?;
        Ok(WorkspaceStats {
            cpu_percent,
            mem_used_bytes: mem_used,
            mem_limit_bytes: mem_limit,
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            load: parse::loadavg(&read(&proc_dir.join("loadavg"))?)?,
            uptime_secs: parse::uptime(&read(&proc_dir.join("uptime"))?)?,
            source: self.source(),
        })
    }
}

/// The agent's cgroup directory if its figures are a container's: the cgroup
/// namespace's root (`0::/`, what a container sees) or a cgroup with a CPU or memory
/// limit. A host's session scope without limits is not: `/proc` describes the
/// machine the workspace has better.
fn container_cgroup(sources: &Sources) -> Option<PathBuf> {
    let own = read(&sources.proc_dir.join("self/cgroup")).ok()?;
    let path = parse::cgroup_v2_path(&own)?;
    let dir = sources.cgroup_root.join(path.trim_start_matches('/'));
    // The host's root cgroup has no memory.current; nor does a v1 hierarchy.
    if !dir.join("memory.current").is_file() {
        return None;
    }
    let limited_memory = read(&dir.join("memory.max"))
        .ok()
        .and_then(|t| parse::memory_max(&t).ok().flatten())
        .is_some();
    let limited_cpu = read(&dir.join("cpu.max"))
        .ok()
        .and_then(|t| parse::cpu_max(&t).ok().flatten())
        .is_some();
    (path == "/" || limited_memory || limited_cpu).then_some(dir)
}

/// Used and total bytes of the file system holding `dir`, as `df` counts them.
fn disk_usage(dir: &Path) -> Result<(u64, u64), SampleError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |source| SampleError::Disk {
        path: dir.to_path_buf(),
        source,
    };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: statvfs only writes into the zeroed struct we pass, and reads the
    // NUL-terminated path that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let free = (st.f_bfree as u64).saturating_mul(frsize);
    Ok((total.saturating_sub(free), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fake system: `/proc` from the captured host files, and a cgroup tree whose
    /// files the test writes.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(name: &str, own_cgroup: &str) -> Fake {
            let root = std::env::temp_dir()
                .join(format!("ferry-agent-sample-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
            std::fs::create_dir_all(root.join("proc/self")).unwrap();
            for f in ["stat", "meminfo", "loadavg", "uptime"] {
                std::fs::copy(testdata.join("host").join(f), root.join("proc").join(f)).unwrap();
            }
            std::fs::write(root.join("proc/self/cgroup"), own_cgroup).unwrap();
            std::fs::create_dir_all(root.join("cgroup")).unwrap();
            Fake { root }
        }

        fn cgroup_from(&self, dir: &str, captured: &str) {
            let to = self.root.join("cgroup").join(dir.trim_start_matches('/'));
            std::fs::create_dir_all(&to).unwrap();
            let from = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata")
                .join(captured);
            for f in [
                "cpu.stat",
                "cpu.max",
                "memory.max",
                "memory.current",
                "memory.stat",
            ] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }

        fn sources(&self) -> Sources {
            Sources {
                proc_dir: self.root.join("proc"),
                cgroup_root: self.root.join("cgroup"),
                workspace_dir: self.root.clone(),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn a_container_is_read_from_its_cgroup_against_its_limits() {
        let fake = Fake::new("container", "0::/\n");
        fake.cgroup_from("/", "cgroup-limited");
        let mut sampler = Sampler::new(fake.sources());
        assert_eq!(sampler.source(), StatsSource::Cgroup);
        let t0 = Instant::now();
        let first = sampler.sample(t0).unwrap();
        assert_eq!(
            first.cpu_percent, 0.0,
            "no CPU figure before a second counter"
        );
        assert_eq!(first.mem_used_bytes, 734003200 - 157286400);
        assert_eq!(first.mem_limit_bytes, 2147483648);
        assert_eq!(first.load, [8.41, 6.02, 2.93]);
        assert_eq!(first.uptime_secs, 7268);
        assert!(first.disk_total_bytes > 0 && first.disk_used_bytes <= first.disk_total_bytes);

        // 0.75 s more CPU time in 1 s, on a 1.5-CPU quota (or fewer CPUs): 50 %+.
        let stat = fake.root.join("cgroup/cpu.stat");
        let text = std::fs::read_to_string(&stat).unwrap();
        std::fs::write(
            &stat,
            text.replace("usage_usec 48213677", "usage_usec 48963677"),
        )
        .unwrap();
        let second = sampler.sample(t0 + Duration::from_secs(1)).unwrap();
        let expected = 75.0 / sampler.cpus;
        assert!(
            (second.cpu_percent - expected.min(100.0)).abs() < 1e-9,
            "{} vs {expected}",
            second.cpu_percent
        );
    }

    #[test]
    fn a_session_scope_without_limits_is_read_from_proc() {
        let scope = "/user.slice/user-1000.slice/session-3.scope";
        let fake = Fake::new("scope", &format!("0::{scope}\n"));
        fake.cgroup_from(scope, "cgroup-unlimited");
        let mut sampler = Sampler::new(fake.sources());
        assert_eq!(sampler.source(), StatsSource::Host);
        let r = sampler.sample(Instant::now()).unwrap();
        assert_eq!(r.mem_limit_bytes, 24683792 * 1024);
        assert_eq!(r.mem_used_bytes, (24683792 - 22805068) * 1024);
        assert_eq!(r.source, StatsSource::Host);
    }

    #[test]
    fn a_cgroup_v1_host_is_read_from_proc_and_a_missing_file_is_an_error() {
        let fake = Fake::new("v1", "4:memory:/docker/abc\n1:cpu:/\n");
        let mut sampler = Sampler::new(fake.sources());
        assert_eq!(sampler.source(), StatsSource::Host);
        assert!(sampler.sample(Instant::now()).is_ok());
        std::fs::remove_file(fake.root.join("proc/loadavg")).unwrap();
        assert!(matches!(
            sampler.sample(Instant::now()),
            Err(SampleError::Read { .. })
        ));
    }
}
