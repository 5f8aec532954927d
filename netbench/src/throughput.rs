//! `throughput`: bulk transfers through every path, upload (client → sink, checked by
//! the sink's count) and download (source → client, counted to EOF), in rounds so that
//! a slow moment of the machine hits every path alike. Reports medians in Gbit/s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::client;
use crate::paths::{Paths, State};
use crate::report::{self, fmt_opt, ratio, Entry, Report, Table};
use crate::stats::{gbps, median};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub bytes: u64,
    pub trials: usize,
    pub download: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Series {
    pub median: f64,
    pub trials: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct PathResult {
    pub upload_gbps: Series,
    pub download_gbps: Option<Series>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub ferry_over_direct_upload: Option<f64>,
    pub ferry_over_direct_download: Option<f64>,
    pub ferry_over_ssh_upload: Option<f64>,
    pub ferry_over_ssh_download: Option<f64>,
}

/// Generous: only a stuck path should ever hit it (60 s plus 10 MB/s).
fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(bytes as f64 / 10e6)
}

async fn timed(
    what: &str,
    label: &str,
    bytes: u64,
    fut: impl std::future::Future<Output = Result<Duration>>,
) -> Result<f64> {
    let elapsed = tokio::time::timeout(transfer_timeout(bytes), fut)
        .await
        .with_context(|| format!("{label} {what}: timed out"))?
        .with_context(|| format!("{label} {what}"))?;
    Ok(gbps(bytes, elapsed))
}

pub async fn run(
    paths: &Paths,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let ready: Vec<(&str, &str, SocketAddr)> = paths
        .list
        .iter()
        .filter_map(|p| match p.state {
            State::Ready(addr) => Some((p.key, p.label, addr)),
            _ => None,
        })
        .collect();
    let mut results: BTreeMap<&str, PathResult> = ready
        .iter()
        .map(|(k, _, _)| (*k, PathResult::default()))
        .collect();

    for trial in 1..=settings.trials {
        for (key, label, addr) in &ready {
            let result = results.get_mut(key).expect("one result per ready path");
            let up = timed(
                "upload",
                label,
                settings.bytes,
                client::upload(*addr, settings.bytes),
            )
            .await?;
            result.upload_gbps.trials.push(up);
            let mut line = format!(
                "trial {trial}/{}  {label:<7} upload {up:8.2} Gbit/s",
                settings.trials
            );
            if settings.download {
                let down = timed(
                    "download",
                    label,
                    settings.bytes,
                    client::download(*addr, settings.bytes),
                )
                .await?;
                result
                    .download_gbps
                    .get_or_insert_with(Series::default)
                    .trials
                    .push(down);
                line.push_str(&format!("   download {down:8.2} Gbit/s"));
            }
            eprintln!("{line}");
        }
    }
    for result in results.values_mut() {
        result.upload_gbps.median = median(&result.upload_gbps.trials);
        if let Some(down) = result.download_gbps.as_mut() {
            down.median = median(&down.trials);
        }
    }

    let up = |key: &str| results.get(key).map(|r| r.upload_gbps.median);
    let down = |key: &str| {
        results
            .get(key)
            .and_then(|r| r.download_gbps.as_ref())
            .map(|s| s.median)
    };
    let comparison = Comparison {
        ferry_over_direct_upload: ratio(up("ferry"), up("direct")),
        ferry_over_direct_download: ratio(down("ferry"), down("direct")),
        ferry_over_ssh_upload: ratio(up("ferry"), up("ssh")),
        ferry_over_ssh_download: ratio(down("ferry"), down("ssh")),
    };

    println!();
    println!(
        "throughput: {} per transfer, median of {} trial(s), Gbit/s",
        human_bytes(settings.bytes),
        settings.trials
    );
    let mut table = Table::new(&["path", "upload", "download", "upload trials"]);
    for path in &paths.list {
        if let Some(r) = results.get(path.key) {
            let trials: Vec<String> = r
                .upload_gbps
                .trials
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect();
            table.row(vec![
                path.label.to_string(),
                format!("{:.2}", r.upload_gbps.median),
                fmt_opt(r.download_gbps.as_ref().map(|s| s.median), 2),
                trials.join(" "),
            ]);
        }
    }
    table.print();
    println!(
        "ferry / direct: upload {}x, download {}x",
        fmt_opt(comparison.ferry_over_direct_upload, 3),
        fmt_opt(comparison.ferry_over_direct_download, 3)
    );
    if comparison.ferry_over_ssh_upload.is_some() {
        println!(
            "ferry / ssh -L: upload {}x, download {}x",
            fmt_opt(comparison.ferry_over_ssh_upload, 3),
            fmt_opt(comparison.ferry_over_ssh_download, 3)
        );
    }
    report::print_unmeasured(paths);

    let mut entries = BTreeMap::new();
    for path in &paths.list {
        let entry = match report::unmeasured(&path.state) {
            Some(entry) => entry,
            None => Entry::Ok(results.remove(path.key).expect("measured")),
        };
        entries.insert(path.key, entry);
    }
    let report = Report {
        bench: "throughput",
        unix_time: time,
        smoke,
        settings: settings.clone(),
        ferry_relay: paths.ferry_relay.clone(),
        ssh_version: paths.ssh_version.clone(),
        paths: entries,
        comparison,
    };
    report::write_json(json, &report)?;
    println!("results written to {}", json.display());
    Ok(())
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
