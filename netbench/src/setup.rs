//! `setup`: what it costs to start talking.
//!
//! - **warm**: a new TCP connection to each path's local port, one echoed byte, close.
//!   Through a running `ferry port-forward` each connection is one new QUIC stream on
//!   the existing connection (relay, then agent, then the agent's TCP connect to the
//!   server). Measured as time to first byte (sequential, one at a time) and as new
//!   streams per second (several workers opening connections back to back).
//! - **cold**: a whole client process per trial, `ferry tcp WORKSPACE PORT` (config,
//!   route lookup at the control plane, QUIC handshake, stream) against `ssh -W`
//!   (TCP, SSH handshake, key authentication, channel), time until the first echoed
//!   byte reaches its stdout, and until it has exited after its stdin closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::paths::{ColdClient, Paths, State};
use crate::report::{self, fmt_opt, ratio, Entry, Report, Table};
use crate::server::MODE_ECHO;
use crate::stats::Latency;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Sequential new connections per path for time to first byte.
    pub trials: usize,
    /// New connections per path for the rate, spread over `workers`.
    pub rate_count: usize,
    pub workers: usize,
    /// Cold client processes per client.
    pub cold_trials: usize,
}

#[derive(Debug, Serialize)]
pub struct WarmResult {
    pub ttfb: Latency,
    pub streams_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct ColdResult {
    pub client: String,
    pub first_byte: Latency,
    /// Until the process exited after its input closed.
    pub exit: Latency,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    /// ferry's warm time to first byte (p50) over direct's.
    pub ferry_over_direct_ttfb_p50: Option<f64>,
    pub ferry_over_ssh_ttfb_p50: Option<f64>,
    pub ferry_over_direct_streams_per_sec: Option<f64>,
    pub ferry_over_ssh_streams_per_sec: Option<f64>,
    /// Cold `ferry tcp` first byte (p50) over cold `ssh -W`'s.
    pub ferry_over_ssh_cold_p50: Option<f64>,
}

/// The setup report: warm results per path (the common `paths` map) plus cold clients.
#[derive(Debug, Serialize)]
pub struct SetupComparison {
    pub cold: BTreeMap<&'static str, Entry<ColdResult>>,
    #[serde(flatten)]
    pub ratios: Comparison,
}

const ONE_TIMEOUT: Duration = Duration::from_secs(20);

/// Connect, send the echo mode and one byte, read it back: the time that took.
async fn first_byte(addr: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(&[MODE_ECHO, b'x']).await?;
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .await
        .context("reading the echoed byte")?;
    let elapsed = start.elapsed();
    ensure!(byte[0] == b'x', "the echo sent back {:?}", byte[0]);
    Ok(elapsed)
}

async fn first_byte_timed(addr: SocketAddr) -> Result<Duration> {
    tokio::time::timeout(ONE_TIMEOUT, first_byte(addr))
        .await
        .context("no echo within 20s")?
}

async fn warm(addr: SocketAddr, settings: &Settings) -> Result<WarmResult> {
    let mut samples = Vec::with_capacity(settings.trials);
    for _ in 0..settings.trials {
        samples.push(first_byte_timed(addr).await?);
    }
    // Workers take connection numbers from a shared counter until all are done.
    let next = Arc::new(AtomicUsize::new(0));
    let count = settings.rate_count;
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..settings.workers.max(1) {
        let next = next.clone();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                first_byte_timed(addr).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("worker panicked")??;
    }
    let elapsed = start.elapsed();
    Ok(WarmResult {
        ttfb: Latency::from_samples(&samples),
        streams_per_sec: count as f64 / elapsed.as_secs_f64(),
    })
}

/// One cold client run: (first byte, exit).
async fn cold_once(client: &ColdClient) -> Result<(Duration, Duration)> {
    let mut cmd = client.command();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", client.program.display()))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let run = async {
        stdin.write_all(&[MODE_ECHO, b'x']).await?;
        stdin.flush().await?;
        let mut byte = [0u8; 1];
        let n = stdout.read(&mut byte).await?;
        let first = start.elapsed();
        if n == 0 {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            bail!("no echo (the client printed: {})", err.trim());
        }
        ensure!(byte[0] == b'x', "the echo sent back {:?}", byte[0]);
        drop(stdin);
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await?;
        let status = child.wait().await?;
        let exit = start.elapsed();
        if !status.success() {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            bail!("exited with {status}: {}", err.trim());
        }
        Ok((first, exit))
    };
    tokio::time::timeout(ONE_TIMEOUT, run)
        .await
        .context("did not finish within 20s")?
}

async fn cold(client: &ColdClient, trials: usize) -> Result<ColdResult> {
    let mut first = Vec::with_capacity(trials);
    let mut exit = Vec::with_capacity(trials);
    for _ in 0..trials {
        let (f, e) = cold_once(client).await?;
        first.push(f);
        exit.push(e);
    }
    Ok(ColdResult {
        client: format!(
            "{} {}",
            client.program.display(),
            client
                .args
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        first_byte: Latency::from_samples(&first),
        exit: Latency::from_samples(&exit),
    })
}

pub async fn run(
    paths: &Paths,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let mut results: BTreeMap<&str, WarmResult> = BTreeMap::new();
    for path in &paths.list {
        let State::Ready(addr) = path.state else {
            continue;
        };
        let r = warm(addr, settings)
            .await
            .with_context(|| format!("{} warm setup", path.label))?;
        eprintln!(
            "warm {:<7} first byte p50 {:8.1} µs  p99 {:8.1} µs  {:8.0} streams/s",
            path.label, r.ttfb.p50_us, r.ttfb.p99_us, r.streams_per_sec
        );
        results.insert(path.key, r);
    }

    let mut cold_results: BTreeMap<&'static str, Entry<ColdResult>> = BTreeMap::new();
    let ferry_cold = paths.ferry_cold().context("the ferry path is not set up")?;
    let r = cold(&ferry_cold, settings.cold_trials)
        .await
        .context("cold ferry tcp")?;
    eprintln!(
        "cold ferry tcp  first byte p50 {:8.1} ms",
        r.first_byte.p50_us / 1e3
    );
    cold_results.insert("ferry", Entry::Ok(r));
    let ssh_state = paths.list.iter().find(|p| p.key == "ssh").map(|p| &p.state);
    match (paths.ssh_cold(), ssh_state) {
        (Some(client), _) => {
            let r = cold(&client, settings.cold_trials)
                .await
                .context("cold ssh -W")?;
            eprintln!(
                "cold ssh -W     first byte p50 {:8.1} ms",
                r.first_byte.p50_us / 1e3
            );
            cold_results.insert("ssh", Entry::Ok(r));
        }
        (None, Some(state)) => {
            if let Some(entry) = report::unmeasured(state) {
                cold_results.insert("ssh", entry);
            }
        }
        (None, None) => {}
    }

    let warm_pick = |key: &str, f: fn(&WarmResult) -> f64| results.get(key).map(f);
    let cold_p50 = |key: &str| match cold_results.get(key) {
        Some(Entry::Ok(r)) => Some(r.first_byte.p50_us),
        _ => None,
    };
    let ratios = Comparison {
        ferry_over_direct_ttfb_p50: ratio(
            warm_pick("ferry", |r| r.ttfb.p50_us),
            warm_pick("direct", |r| r.ttfb.p50_us),
        ),
        ferry_over_ssh_ttfb_p50: ratio(
            warm_pick("ferry", |r| r.ttfb.p50_us),
            warm_pick("ssh", |r| r.ttfb.p50_us),
        ),
        ferry_over_direct_streams_per_sec: ratio(
            warm_pick("ferry", |r| r.streams_per_sec),
            warm_pick("direct", |r| r.streams_per_sec),
        ),
        ferry_over_ssh_streams_per_sec: ratio(
            warm_pick("ferry", |r| r.streams_per_sec),
            warm_pick("ssh", |r| r.streams_per_sec),
        ),
        ferry_over_ssh_cold_p50: ratio(cold_p50("ferry"), cold_p50("ssh")),
    };

    println!();
    println!(
        "setup, warm: new connection + 1 echoed byte, {} sequential (µs) and {} over {} workers (streams/s)",
        settings.trials, settings.rate_count, settings.workers
    );
    let mut table = Table::new(&["path", "p50", "p90", "p99", "streams/s"]);
    for path in &paths.list {
        if let Some(r) = results.get(path.key) {
            table.row(vec![
                path.label.to_string(),
                format!("{:.1}", r.ttfb.p50_us),
                format!("{:.1}", r.ttfb.p90_us),
                format!("{:.1}", r.ttfb.p99_us),
                format!("{:.0}", r.streams_per_sec),
            ]);
        }
    }
    table.print();
    println!(
        "ferry / direct: first byte p50 {}x, streams/s {}x",
        fmt_opt(ratios.ferry_over_direct_ttfb_p50, 2),
        fmt_opt(ratios.ferry_over_direct_streams_per_sec, 3)
    );
    println!();
    println!(
        "setup, cold: a new client process per trial, {} trials (ms)",
        settings.cold_trials
    );
    let mut table = Table::new(&["client", "first byte p50", "p90", "p99", "exit p50"]);
    for (key, entry) in &cold_results {
        match entry {
            Entry::Ok(r) => table.row(vec![
                if *key == "ferry" {
                    "ferry tcp"
                } else {
                    "ssh -W"
                }
                .to_string(),
                format!("{:.1}", r.first_byte.p50_us / 1e3),
                format!("{:.1}", r.first_byte.p90_us / 1e3),
                format!("{:.1}", r.first_byte.p99_us / 1e3),
                format!("{:.1}", r.exit.p50_us / 1e3),
            ]),
            Entry::Skipped { reason } | Entry::Failed { reason } => {
                println!("cold {key}: {reason}")
            }
        }
    }
    table.print();
    if ratios.ferry_over_ssh_cold_p50.is_some() {
        println!(
            "cold ferry tcp / ssh -W: first byte p50 {}x",
            fmt_opt(ratios.ferry_over_ssh_cold_p50, 2)
        );
    }
    report::print_unmeasured(paths);

    Report::for_paths(
        "setup",
        time,
        smoke,
        settings.clone(),
        paths,
        results,
        SetupComparison {
            cold: cold_results,
            ratios,
        },
    )
    .save(json)?;
    Ok(())
}
