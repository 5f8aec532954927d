//! Output: aligned text tables for people, a JSON file for tools and later comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::paths::{Paths, State};

/// One path's result: measured, skipped or failed. Never a made-up number.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Entry<T> {
    Ok(T),
    Skipped { reason: String },
    Failed { reason: String },
}

/// What every JSON report starts with.
#[derive(Debug, Serialize)]
pub struct Report<S, T, C> {
    pub bench: &'static str,
    pub unix_time: u64,
    pub smoke: bool,
    pub settings: S,
    pub ferry_relay: String,
    pub ssh_version: Option<String>,
    /// The WAN emulator topology ferry's relays were behind, if any.
    pub topology: Option<PathBuf>,
    /// Where ferry's queue ceiling acted (`FERRY_QUEUE_CEILING`, read the way ferry
    /// reads it): "off", "all paths", or the base RTT up to which it acts.
    pub queue_ceiling: String,
    /// Keyed `direct`, `ferry`, `ssh`.
    pub paths: BTreeMap<&'static str, Entry<T>>,
    pub comparison: C,
}

impl<S: Serialize, T: Serialize, C: Serialize> Report<S, T, C> {
    /// A report on every path of `paths`, with the results of those that were measured.
    #[allow(clippy::too_many_arguments)]
    pub fn for_paths(
        bench: &'static str,
        unix_time: u64,
        smoke: bool,
        settings: S,
        paths: &Paths,
        results: BTreeMap<&str, T>,
        comparison: C,
    ) -> Self {
        Report {
            bench,
            unix_time,
            smoke,
            settings,
            ferry_relay: paths.ferry_relay.clone(),
            ssh_version: paths.ssh_version.clone(),
            topology: paths.topology.clone(),
            queue_ceiling: match ferry_transport::congestion::QueueConfig::from_env() {
                None => "off".into(),
                Some(c) if c.max_base == std::time::Duration::MAX => "all paths".into(),
                Some(c) => format!("paths with a base RTT up to {:?}", c.max_base),
            },
            paths: entries(paths, results),
            comparison,
        }
    }

    /// Writes the JSON and says where.
    pub fn save(&self, json: &Path) -> Result<()> {
        write_json(json, self)?;
        println!("results written to {}", json.display());
        Ok(())
    }
}

pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `netbench/results/<name>-<unix time>.json` in the source tree this binary was built
/// from (the directory is gitignored), or under the working directory if that tree is
/// gone.
pub fn default_json_path(name: &str, time: u64) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = if crate_dir.is_dir() {
        crate_dir.join("results")
    } else {
        PathBuf::from("netbench/results")
    };
    base.join(format!("{name}-{time}.json"))
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Entries for paths that were not measured (skipped or failed at setup).
pub fn unmeasured<T>(state: &State) -> Option<Entry<T>> {
    match state {
        State::Ready(_) => None,
        State::Skipped(reason) => Some(Entry::Skipped {
            reason: reason.clone(),
        }),
        State::Failed(reason) => Some(Entry::Failed {
            reason: reason.clone(),
        }),
    }
}

/// One entry per path for the JSON report: the measured result, or why there is none.
fn entries<T>(
    paths: &Paths,
    mut results: std::collections::BTreeMap<&str, T>,
) -> std::collections::BTreeMap<&'static str, Entry<T>> {
    paths
        .list
        .iter()
        .map(|path| {
            let entry = match unmeasured(&path.state) {
                Some(entry) => entry,
                None => Entry::Ok(results.remove(path.key).expect("a ready path was measured")),
            };
            (path.key, entry)
        })
        .collect()
}

/// Prints the setup problems of paths that could not be measured, one line each.
pub fn print_unmeasured(paths: &Paths) {
    for path in &paths.list {
        match &path.state {
            State::Ready(_) => {}
            State::Skipped(reason) => println!("{}: {reason}", path.label),
            State::Failed(reason) => println!("{}: FAILED: {reason}", path.label),
        }
    }
}

/// A text table: first column left-aligned, the others right-aligned.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c == 0 {
                    line.push_str(&format!("{cell:<w$}", w = widths[c]));
                } else {
                    line.push_str(&format!("   {cell:>w$}", w = widths[c]));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// `a / b`, when both were measured.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value
        .map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}
