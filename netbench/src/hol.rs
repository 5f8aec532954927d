//! `hol`: head-of-line blocking. 64-byte echoes sent at a fixed open-loop rate on one
//! connection per path, measured twice in alternating trials: unloaded, and while a
//! bulk download runs on another connection through the same path. For ferry both go
//! through the same `ferry port-forward` (one QUIC connection to the relay, one
//! relay→agent connection: two streams of one workspace); for `ssh -L`, through the
//! same ssh connection (one TCP stream, so the echo waits behind the bulk data in
//! flight). Direct TCP shows what the shared CPU alone costs.
//!
//! Open loop: each echo leaves at its scheduled time whether or not earlier ones came
//! back, so a stall shows up in every echo it delays instead of hiding as one slow
//! sample (coordinated omission in a closed request-reply loop).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::paths::{Paths, State};
use crate::report::{self, fmt_opt, Report, Table};
use crate::server::{BUF, MODE_ECHO, MODE_SOURCE};
use crate::stats::{self, Latency};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Echoes per second.
    pub rate: u32,
    /// Length of one trial, each phase.
    pub secs: f64,
    /// Trials per phase; medians are reported.
    pub trials: usize,
    pub size: usize,
}

/// One phase of one path, over all its trials.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// Median over trials of each trial's percentiles.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: usize,
    /// The latency distribution of all trials together, for CDF charts.
    pub cdf: Vec<stats::CdfPoint>,
    /// Median bulk download speed while the echoes ran (loaded phase only).
    pub bulk_gbps: Option<f64>,
    /// UDP datagrams the kernel dropped for a full receive buffer during the phase's
    /// trials, machine-wide (other programs' too): a lost QUIC packet waits for a
    /// probe timeout, tens of milliseconds. None where /proc/net/snmp is unreadable.
    pub udp_rcvbuf_drops: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PathResult {
    pub unloaded: Phase,
    pub loaded: Phase,
    /// Loaded p99 over unloaded p99: how much the bulk stream delays the echoes.
    pub p99_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub ferry_p99_ratio: Option<f64>,
    pub ssh_p99_ratio: Option<f64>,
    pub direct_p99_ratio: Option<f64>,
}

/// One trial's echo latencies (a trial with an echo missing fails instead).
struct Trial {
    samples: Vec<Duration>,
}

/// Sends `rate` echoes per second for `secs` on a new connection and collects each
/// round trip, timed from the moment its write began.
async fn open_loop(addr: SocketAddr, settings: &Settings) -> Result<Trial> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_u8(MODE_ECHO).await?;
    let size = settings.size;
    let interval = Duration::from_secs_f64(1.0 / f64::from(settings.rate.max(1)));
    let total = ((settings.secs * f64::from(settings.rate)).ceil() as u64).max(1);
    let start = Instant::now();
    // Nanoseconds after `start` at which each echo's write began. Tokio's timer wakes
    // up to a millisecond late, which is not the path's fault, so the clock starts at
    // the write; a write held up by a full socket still counts (it would block the
    // next echoes too, and they are timed from their own writes).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());

    let writer = {
        let sent = sent.clone();
        async move {
            let mut msg = vec![0x5Au8; size];
            for seq in 0..total {
                tokio::time::sleep_until((start + interval * seq as u32).into()).await;
                msg[..8].copy_from_slice(&seq.to_be_bytes());
                sent[seq as usize].store(start.elapsed().as_nanos() as u64, Ordering::Release);
                wr.write_all(&msg).await.context("sending an echo")?;
            }
            anyhow::Ok(wr)
        }
    };
    let reader = async {
        let mut samples = Vec::with_capacity(total as usize);
        let mut back = vec![0u8; size];
        for expected in 0..total {
            rd.read_exact(&mut back).await.context("reading an echo")?;
            let now = start.elapsed();
            let seq = u64::from_be_bytes(back[..8].try_into().expect("8 bytes"));
            ensure!(
                seq == expected,
                "echo #{seq} came back where #{expected} was due"
            );
            let at = Duration::from_nanos(sent[seq as usize].load(Ordering::Acquire));
            samples.push(now.saturating_sub(at));
        }
        anyhow::Ok(samples)
    };
    // Echoes still out at the end get a grace time; then the trial fails.
    let grace = Duration::from_secs_f64(settings.secs) + Duration::from_secs(10);
    let both = async { tokio::try_join!(writer, reader) };
    match tokio::time::timeout(grace, both).await {
        Ok(Ok((_wr, samples))) => Ok(Trial { samples }),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("echoes still missing {grace:?} after the trial started"),
    }
}

/// A bulk download through `addr` until `stop` is set, counting into `bytes`.
async fn bulk(addr: SocketAddr, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) -> Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("bulk: connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut request = vec![MODE_SOURCE];
    // Far more than any trial can move: the stream is cut when the trial ends.
    request.extend_from_slice(&(1u64 << 50).to_be_bytes());
    stream.write_all(&request).await?;
    let mut buf = vec![0u8; BUF];
    while !stop.load(Ordering::Relaxed) {
        let n = stream.read(&mut buf).await.context("bulk: reading")?;
        ensure!(n > 0, "bulk: the source ended early");
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        // Let the echo tasks run between reads (see the bench server's source mode).
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// One loaded trial: the bulk download starts, gets a moment to fill the pipes, then
/// the echoes run beside it. Returns the echoes and the bulk speed during them.
async fn loaded_trial(addr: SocketAddr, settings: &Settings) -> Result<(Trial, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut bulk_task = tokio::spawn(bulk(addr, stop.clone(), bytes.clone()));
    tokio::select! {
        r = &mut bulk_task => {
            r.context("bulk task panicked")??;
            bail!("the bulk download ended before the echoes started");
        }
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    let before = bytes.load(Ordering::Relaxed);
    let started = Instant::now();
    let trial = open_loop(addr, settings).await;
    let moved = bytes.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Dropping the connection mid-transfer is how the bulk stream ends.
    bulk_task.abort();
    let trial = trial?;
    if bulk_task.is_finished() {
        if let Ok(Err(e)) = bulk_task.await {
            return Err(e.context("the bulk download failed during the trial"));
        }
    }
    Ok((trial, stats::gbps(moved, elapsed)))
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (IPv4 and
/// IPv6), from /proc/net/snmp and /proc/net/snmp6.
fn udp_rcvbuf_errors() -> Option<u64> {
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = v4.lines().filter(|l| l.starts_with("Udp:"));
    let (header, values) = (lines.next()?, lines.next()?);
    let col = header
        .split_whitespace()
        .position(|c| c == "RcvbufErrors")?;
    let mut total: u64 = values.split_whitespace().nth(col)?.parse().ok()?;
    if let Ok(v6) = std::fs::read_to_string("/proc/net/snmp6") {
        total += v6
            .lines()
            .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

fn phase(trials: &[Trial], bulk: &[f64], drops: Option<u64>) -> Phase {
    let per_trial: Vec<Latency> = trials
        .iter()
        .map(|t| Latency::from_samples(&t.samples))
        .collect();
    let all: Vec<Duration> = trials
        .iter()
        .flat_map(|t| t.samples.iter().copied())
        .collect();
    let med =
        |pick: fn(&Latency) -> f64| stats::median(&per_trial.iter().map(pick).collect::<Vec<_>>());
    Phase {
        p50_us: med(|l| l.p50_us),
        p99_us: med(|l| l.p99_us),
        p999_us: med(|l| l.p999_us),
        max_us: per_trial.iter().map(|l| l.max_us).fold(f64::NAN, f64::max),
        samples: all.len(),
        cdf: stats::cdf(&all),
        bulk_gbps: (!bulk.is_empty()).then(|| stats::median(bulk)),
        udp_rcvbuf_drops: drops,
    }
}

async fn measure(addr: SocketAddr, settings: &Settings) -> Result<PathResult> {
    let (mut unloaded, mut loaded, mut speeds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut quiet_drops, mut loaded_drops) = (Some(0u64), Some(0u64));
    let add = |sum: &mut Option<u64>, before: Option<u64>| {
        *sum = sum
            .zip(before.zip(udp_rcvbuf_errors()))
            .map(|(s, (b, a))| s + a.saturating_sub(b));
    };
    // Alternate the phases so that a noisy minute on the shared machine hits both.
    for _ in 0..settings.trials {
        let before = udp_rcvbuf_errors();
        unloaded.push(open_loop(addr, settings).await.context("unloaded echoes")?);
        add(&mut quiet_drops, before);
        let before = udp_rcvbuf_errors();
        let (trial, gbps) = loaded_trial(addr, settings)
            .await
            .context("echoes beside a bulk download")?;
        add(&mut loaded_drops, before);
        loaded.push(trial);
        speeds.push(gbps);
    }
    let unloaded = phase(&unloaded, &[], quiet_drops);
    let loaded = phase(&loaded, &speeds, loaded_drops);
    Ok(PathResult {
        p99_ratio: loaded.p99_us / unloaded.p99_us,
        unloaded,
        loaded,
    })
}

pub async fn run(
    paths: &Paths,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let mut results: BTreeMap<&str, PathResult> = BTreeMap::new();
    for path in &paths.list {
        let State::Ready(addr) = path.state else {
            continue;
        };
        let r = measure(addr, settings)
            .await
            .with_context(|| path.label.to_string())?;
        eprintln!(
            "{:<10} p99 unloaded {:9.1} µs  loaded {:9.1} µs  ({:.1}x), bulk {} Gbit/s",
            path.label,
            r.unloaded.p99_us,
            r.loaded.p99_us,
            r.p99_ratio,
            fmt_opt(r.loaded.bulk_gbps, 2)
        );
        results.insert(path.key, r);
    }
    let ratio = |key: &str| results.get(key).map(|r| r.p99_ratio);
    let comparison = Comparison {
        ferry_p99_ratio: ratio("ferry"),
        ssh_p99_ratio: ratio("ssh"),
        direct_p99_ratio: ratio("direct"),
    };

    println!();
    println!(
        "hol: {}-byte echoes at {}/s open loop, {} trial(s) of {} s per phase, µs (medians over trials)",
        settings.size, settings.rate, settings.trials, settings.secs
    );
    let mut table = Table::new(&[
        "path",
        "p50",
        "p99",
        "p99.9",
        "+bulk p50",
        "+bulk p99",
        "+bulk p99.9",
        "p99 ratio",
        "bulk Gbit/s",
        "UDP drops",
    ]);
    for path in &paths.list {
        if let Some(r) = results.get(path.key) {
            table.row(vec![
                path.label.to_string(),
                format!("{:.1}", r.unloaded.p50_us),
                format!("{:.1}", r.unloaded.p99_us),
                format!("{:.1}", r.unloaded.p999_us),
                format!("{:.1}", r.loaded.p50_us),
                format!("{:.1}", r.loaded.p99_us),
                format!("{:.1}", r.loaded.p999_us),
                format!("{:.1}x", r.p99_ratio),
                fmt_opt(r.loaded.bulk_gbps, 2),
                r.loaded
                    .udp_rcvbuf_drops
                    .map_or_else(|| "-".into(), |d| d.to_string()),
            ]);
        }
    }
    table.print();
    println!("UDP drops: datagrams dropped for full receive buffers during the loaded trials, machine-wide");
    report::print_unmeasured(paths);

    Report::for_paths(
        "hol",
        time,
        smoke,
        settings.clone(),
        paths,
        results,
        comparison,
    )
    .save(json)
}
