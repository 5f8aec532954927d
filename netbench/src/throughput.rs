//! `throughput`: bulk transfers through every path, upload (client → sink, checked by
//! the sink's count) and download (source → client, counted to EOF), on one stream and
//! on N parallel streams (each its own TCP connection, so through ferry N QUIC streams
//! on one connection), in rounds so that a slow moment of the machine hits every path
//! alike. Reports medians in Gbit/s, and the CPU time the path's own processes spent
//! per byte moved (from /proc, see `cpu.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client;
use crate::cpu;
use crate::paths::{Paths, State};
use crate::report::{self, fmt_opt, ratio, Report, Table};
use crate::stats::{gbps, median};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub bytes: u64,
    pub trials: usize,
    pub download: bool,
    /// Parallel streams of the second mode (1: single stream only).
    pub streams: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Series {
    pub median: f64,
    pub trials: Vec<f64>,
}

/// CPU time of the path's processes per byte moved, all trials pooled; absent for a
/// path without processes of its own (direct).
#[derive(Debug, Default, Serialize)]
pub struct CpuPerByte {
    pub upload_ns_per_byte: Option<f64>,
    pub download_ns_per_byte: Option<f64>,
}

/// One mode (single or parallel streams) of one path.
#[derive(Debug, Default, Serialize)]
pub struct ModeResult {
    pub upload_gbps: Series,
    pub download_gbps: Option<Series>,
    pub cpu: CpuPerByte,
}

#[derive(Debug, Serialize)]
pub struct PathResult {
    /// One stream.
    #[serde(flatten)]
    pub single: ModeResult,
    /// `streams` parallel streams, when more than one.
    pub parallel: Option<Parallel>,
}

#[derive(Debug, Serialize)]
pub struct Parallel {
    pub streams: usize,
    #[serde(flatten)]
    pub result: ModeResult,
}

/// Speed of ferry over another path (above 1: ferry is faster) and CPU per byte of a
/// path over ssh -L's (below 1: cheaper than ssh).
#[derive(Debug, Default, Serialize)]
pub struct Comparison {
    pub ferry_over: BTreeMap<&'static str, Ratios>,
    pub cpu_over_ssh: BTreeMap<&'static str, Ratios>,
    /// What one mesh hop costs: the mesh path over the owner relay's, in speed and in
    /// CPU per byte (issue 4's target: speed at least 0.85x).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_hop: Option<MeshHop>,
}

#[derive(Debug, Default, Serialize)]
pub struct MeshHop {
    pub speed: Ratios,
    pub cpu: Ratios,
}

#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    pub upload: Option<f64>,
    pub download: Option<f64>,
    pub parallel_upload: Option<f64>,
    pub parallel_download: Option<f64>,
}

/// Generous: only a stuck path should ever hit it (60 s plus 10 MB/s).
fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(bytes as f64 / 10e6)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    Upload,
    Download,
}

/// `bytes` in total over `streams` connections at once; the time until the last ends.
async fn transfer(
    addr: SocketAddr,
    direction: Direction,
    streams: usize,
    per_stream: u64,
) -> Result<Duration> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..streams {
        set.spawn(async move {
            match direction {
                Direction::Upload => client::upload(addr, per_stream).await,
                Direction::Download => client::download(addr, per_stream).await,
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.context("transfer task panicked")??;
    }
    Ok(start.elapsed())
}

/// CPU and bytes accumulated for one path, mode and direction.
#[derive(Default)]
struct CpuTally {
    cpu: Duration,
    bytes: u64,
}

impl CpuTally {
    fn ns_per_byte(&self, measured: bool) -> Option<f64> {
        (measured && self.bytes > 0).then(|| self.cpu.as_nanos() as f64 / self.bytes as f64)
    }
}

struct Measured {
    gbps: Vec<f64>,
    cpu: CpuTally,
}

pub async fn run(
    paths: &Paths,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let ticks = cpu::clock_ticks();
    let ready: Vec<(&str, &str, SocketAddr)> = paths
        .list
        .iter()
        .filter_map(|p| match p.state {
            State::Ready(addr) => Some((p.key, p.label, addr)),
            _ => None,
        })
        .collect();
    let mut modes = vec![1usize];
    if settings.streams > 1 {
        modes.push(settings.streams);
    }
    let mut directions = vec![Direction::Upload];
    if settings.download {
        directions.push(Direction::Download);
    }
    // (path, streams, direction) → measurements
    let mut data: BTreeMap<(&str, usize, bool), Measured> = BTreeMap::new();

    for trial in 1..=settings.trials {
        for (key, label, addr) in &ready {
            let pids = paths.pids(key);
            for &streams in &modes {
                let per_stream = (settings.bytes / streams as u64).max(1);
                let total = per_stream * streams as u64;
                let mut line = format!(
                    "trial {trial}/{}  {label:<7} x{streams:<2}",
                    settings.trials
                );
                for &direction in &directions {
                    let what = match direction {
                        Direction::Upload => "upload",
                        Direction::Download => "download",
                    };
                    let before = cpu::tree_cpu(&pids, ticks);
                    let elapsed = tokio::time::timeout(
                        transfer_timeout(total),
                        transfer(*addr, direction, streams, per_stream),
                    )
                    .await
                    .with_context(|| format!("{label} {what} x{streams}: timed out"))?
                    .with_context(|| format!("{label} {what} x{streams}"))?;
                    let used = cpu::tree_cpu(&pids, ticks).saturating_sub(before);
                    let speed = gbps(total, elapsed);
                    let entry = data
                        .entry((key, streams, direction == Direction::Upload))
                        .or_insert_with(|| Measured {
                            gbps: Vec::new(),
                            cpu: CpuTally::default(),
                        });
                    entry.gbps.push(speed);
                    entry.cpu.cpu += used;
                    entry.cpu.bytes += total;
                    line.push_str(&format!("  {what} {speed:7.2} Gbit/s"));
                }
                eprintln!("{line}");
            }
        }
    }

    let mut results: BTreeMap<&str, PathResult> = BTreeMap::new();
    for (key, _, _) in &ready {
        let has_procs = !paths.pids(key).is_empty();
        let mut mode = |streams: usize| {
            let series = |m: Option<Measured>| {
                m.map(|m| {
                    (
                        Series {
                            median: median(&m.gbps),
                            trials: m.gbps,
                        },
                        m.cpu.ns_per_byte(has_procs),
                    )
                })
            };
            let (upload_gbps, up_cpu) =
                series(data.remove(&(*key, streams, true))).unwrap_or_default();
            let down = series(data.remove(&(*key, streams, false)));
            ModeResult {
                upload_gbps,
                cpu: CpuPerByte {
                    upload_ns_per_byte: up_cpu,
                    download_ns_per_byte: down.as_ref().and_then(|d| d.1),
                },
                download_gbps: down.map(|d| d.0),
            }
        };
        let single = mode(1);
        let parallel = (settings.streams > 1).then(|| Parallel {
            streams: settings.streams,
            result: mode(settings.streams),
        });
        results.insert(key, PathResult { single, parallel });
    }

    let comparison = compare(&results);
    print(paths, settings, &results, &comparison);

    Report::for_paths(
        "throughput",
        time,
        smoke,
        settings.clone(),
        paths,
        results,
        comparison,
    )
    .save(json)?;
    Ok(())
}

/// Picks one number of every mode and direction of a path.
fn ratios(
    results: &BTreeMap<&str, PathResult>,
    a: &str,
    b: &str,
    pick: fn(&ModeResult, bool) -> Option<f64>,
) -> Ratios {
    let get = |key: &str, parallel: bool, up: bool| {
        let r = results.get(key)?;
        let mode = if parallel {
            &r.parallel.as_ref()?.result
        } else {
            &r.single
        };
        pick(mode, up)
    };
    Ratios {
        upload: ratio(get(a, false, true), get(b, false, true)),
        download: ratio(get(a, false, false), get(b, false, false)),
        parallel_upload: ratio(get(a, true, true), get(b, true, true)),
        parallel_download: ratio(get(a, true, false), get(b, true, false)),
    }
}

fn speed(mode: &ModeResult, up: bool) -> Option<f64> {
    if up {
        Some(mode.upload_gbps.median)
    } else {
        mode.download_gbps.as_ref().map(|s| s.median)
    }
}

fn cpu_cost(mode: &ModeResult, up: bool) -> Option<f64> {
    if up {
        mode.cpu.upload_ns_per_byte
    } else {
        mode.cpu.download_ns_per_byte
    }
}

fn compare(results: &BTreeMap<&str, PathResult>) -> Comparison {
    let mut comparison = Comparison::default();
    for key in ["direct", "ssh", "socat"] {
        if results.contains_key(key) && results.contains_key("ferry") {
            comparison
                .ferry_over
                .insert(key, ratios(results, "ferry", key, speed));
        }
    }
    if results.contains_key("ferry_mesh") && results.contains_key("ferry") {
        comparison.mesh_hop = Some(MeshHop {
            speed: ratios(results, "ferry_mesh", "ferry", speed),
            cpu: ratios(results, "ferry_mesh", "ferry", cpu_cost),
        });
    }
    if results.contains_key("ssh") {
        for key in ["ferry", "socat"] {
            if results.contains_key(key) {
                comparison
                    .cpu_over_ssh
                    .insert(key, ratios(results, key, "ssh", cpu_cost));
            }
        }
    }
    comparison
}

fn print(
    paths: &Paths,
    settings: &Settings,
    results: &BTreeMap<&str, PathResult>,
    comparison: &Comparison,
) {
    let n = settings.streams;
    println!();
    println!(
        "throughput: {} per transfer (split over the streams), median of {} trial(s), Gbit/s",
        human_bytes(settings.bytes),
        settings.trials
    );
    let mut header = vec!["path", "upload", "download"];
    let par_up = format!("upload x{n}");
    let par_down = format!("download x{n}");
    if n > 1 {
        header.push(&par_up);
        header.push(&par_down);
    }
    header.push("upload trials");
    let mut table = Table::new(&header);
    let mut cpu_table = Table::new(&[
        "path",
        "upload ns/B",
        "download ns/B",
        &format!("upload x{n} ns/B"),
        &format!("download x{n} ns/B"),
    ]);
    for path in &paths.list {
        let Some(r) = results.get(path.key) else {
            continue;
        };
        let trials: Vec<String> = r
            .single
            .upload_gbps
            .trials
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        let mut row = vec![
            path.label.to_string(),
            format!("{:.2}", r.single.upload_gbps.median),
            fmt_opt(speed(&r.single, false), 2),
        ];
        if let Some(p) = &r.parallel {
            row.push(format!("{:.2}", p.result.upload_gbps.median));
            row.push(fmt_opt(speed(&p.result, false), 2));
        }
        row.push(trials.join(" "));
        table.row(row);
        if r.single.cpu.upload_ns_per_byte.is_some() {
            let par = r.parallel.as_ref().map(|p| &p.result);
            cpu_table.row(vec![
                path.label.to_string(),
                fmt_opt(cpu_cost(&r.single, true), 2),
                fmt_opt(cpu_cost(&r.single, false), 2),
                fmt_opt(par.and_then(|m| cpu_cost(m, true)), 2),
                fmt_opt(par.and_then(|m| cpu_cost(m, false)), 2),
            ]);
        }
    }
    table.print();
    let line = |r: &Ratios| {
        let mut s = format!(
            "upload {}x, download {}x",
            fmt_opt(r.upload, 3),
            fmt_opt(r.download, 3)
        );
        if n > 1 {
            s.push_str(&format!(
                "; x{n}: upload {}x, download {}x",
                fmt_opt(r.parallel_upload, 3),
                fmt_opt(r.parallel_download, 3)
            ));
        }
        s
    };
    for (key, r) in &comparison.ferry_over {
        println!("ferry speed / {key}: {}", line(r));
    }
    if let Some(hop) = &comparison.mesh_hop {
        println!("one mesh hop, speed / owner relay's: {}", line(&hop.speed));
    }
    println!();
    println!("CPU of each path's processes per byte moved (ns/B; ferry: dev + port-forward, ssh: ssh + sshd, socat: socat and its children):");
    cpu_table.print();
    for (key, r) in &comparison.cpu_over_ssh {
        println!("{key} CPU / ssh -L CPU: {}", line(r));
    }
    if let Some(hop) = &comparison.mesh_hop {
        println!(
            "one mesh hop, CPU per byte / owner relay's: {}",
            line(&hop.cpu)
        );
    }
    report::print_unmeasured(paths);
}

fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            return format!("{:.2} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} B")
}
