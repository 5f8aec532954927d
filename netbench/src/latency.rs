//! `latency`: sequential echo round trips on one connection per path (write a small
//! message, read it back), after a warmup that is not recorded. Reports percentiles in
//! microseconds and how much ferry adds over plain loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::client::Echo;
use crate::paths::{Paths, State};
use crate::report::{self, fmt_opt, Report, Table};
use crate::stats::{self, Latency};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub count: usize,
    pub warmup: usize,
    pub size: usize,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub ferry_added_p50_us: Option<f64>,
    pub ferry_added_p99_us: Option<f64>,
    pub ssh_added_p50_us: Option<f64>,
    pub ssh_added_p99_us: Option<f64>,
}

/// One path's round trips: the percentiles, and the distribution for CDF charts.
#[derive(Debug, Serialize)]
pub struct EchoResult {
    #[serde(flatten)]
    pub latency: Latency,
    pub cdf: Vec<stats::CdfPoint>,
}

async fn measure(addr: SocketAddr, settings: &Settings) -> Result<EchoResult> {
    let mut echo = Echo::open(addr, settings.size).await?;
    for _ in 0..settings.warmup {
        echo.round_trip().await?;
    }
    let mut samples = Vec::with_capacity(settings.count);
    for _ in 0..settings.count {
        samples.push(echo.round_trip().await?);
    }
    Ok(EchoResult {
        latency: Latency::from_samples(&samples),
        cdf: stats::cdf(&samples),
    })
}

pub async fn run(
    paths: &Paths,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let mut results: BTreeMap<&str, EchoResult> = BTreeMap::new();
    for path in &paths.list {
        let State::Ready(addr) = path.state else {
            continue;
        };
        // One timeout for the whole series: a per-echo timer would add to what we measure.
        let budget = Duration::from_secs(60)
            + Duration::from_millis(10) * (settings.count + settings.warmup) as u32;
        let result = tokio::time::timeout(budget, measure(addr, settings))
            .await
            .with_context(|| format!("{} echo: timed out", path.label))?
            .with_context(|| format!("{} echo", path.label))?;
        let latency = &result.latency;
        eprintln!(
            "{:<7} p50 {:8.1} µs  p99 {:8.1} µs",
            path.label, latency.p50_us, latency.p99_us
        );
        results.insert(path.key, result);
    }

    let added =
        |key: &str, pick: fn(&Latency) -> f64| match (results.get(key), results.get("direct")) {
            (Some(a), Some(d)) => Some(pick(&a.latency) - pick(&d.latency)),
            _ => None,
        };
    let comparison = Comparison {
        ferry_added_p50_us: added("ferry", |l| l.p50_us),
        ferry_added_p99_us: added("ferry", |l| l.p99_us),
        ssh_added_p50_us: added("ssh", |l| l.p50_us),
        ssh_added_p99_us: added("ssh", |l| l.p99_us),
    };

    println!();
    println!(
        "latency: {}-byte echo round trips, {} after {} warmup, µs",
        settings.size, settings.count, settings.warmup
    );
    let mut table = Table::new(&["path", "p50", "p99", "p99.9", "mean", "min", "max"]);
    for path in &paths.list {
        if let Some(l) = results.get(path.key).map(|r| &r.latency) {
            table.row(vec![
                path.label.to_string(),
                format!("{:.1}", l.p50_us),
                format!("{:.1}", l.p99_us),
                format!("{:.1}", l.p999_us),
                format!("{:.1}", l.mean_us),
                format!("{:.1}", l.min_us),
                format!("{:.1}", l.max_us),
            ]);
        }
    }
    table.print();
    println!(
        "ferry adds (p50): {} µs over direct",
        fmt_opt(comparison.ferry_added_p50_us, 1)
    );
    if comparison.ssh_added_p50_us.is_some() {
        println!(
            "ssh -L adds (p50): {} µs over direct",
            fmt_opt(comparison.ssh_added_p50_us, 1)
        );
    }
    report::print_unmeasured(paths);

    Report::for_paths(
        "latency",
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
