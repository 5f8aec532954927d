//! `ferry-netbench`: how fast and how much slower than plain TCP (and than `ssh -L`)
//! is a connection through ferry, measured on this machine over loopback.
//! This file holds the flags and the run order: start the bench server, set up every
//! path, run one benchmark, write the report, and tear everything down on every exit.

mod client;
mod cpu;
mod hol;
mod idle;
mod latency;
mod paths;
mod procs;
mod report;
mod scale;
mod server;
mod setup;
mod stats;
mod summary;
mod throughput;
mod tmp;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::paths::{Paths, State};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-netbench",
    about = "Throughput, latency, setup and idle cost of ferry vs direct TCP, ssh -L and socat"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// The ferry binary [default: `ferry` next to this program, else target/{release,debug}/ferry]
    #[arg(long, global = true)]
    ferry: Option<PathBuf>,
    /// Where to write the JSON results [default: netbench/results/<bench>-<unix time>.json]
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Tiny sizes, for CI: checks that everything works, in seconds
    #[arg(long, global = true)]
    smoke: bool,
    /// Do not compare with ssh -L
    #[arg(long, global = true)]
    skip_ssh: bool,
    /// Put ferry's relays behind the WAN emulator with this topology (as `ferry dev
    /// --topology`); ssh -L and socat, which would not cross it, are then skipped
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Markdown summary and a self-contained HTML page with charts from the JSON of runs
    Report {
        /// JSON reports, or directories holding them (e.g. netbench/results)
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write report.md and report.html [default: the first input's directory]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Many users, workspaces and agents with sessions, app traffic and dashboards at once (one relay, one control plane)
    Scale {
        /// Users, workspaces and agents [default: 2000, smoke 20]
        #[arg(long)]
        agents: Option<usize>,
        /// Seconds of traffic [default: 60, smoke 3]
        #[arg(long)]
        secs: Option<u64>,
        /// Concurrent echo sessions (SSH-like, 64 B every 100 ms) [default: 100, smoke 2]
        #[arg(long)]
        echo_sessions: Option<usize>,
        /// Concurrent terminal sessions (a shell each, a command every second) [default: 10, smoke 1]
        #[arg(long)]
        terminals: Option<usize>,
        /// Concurrent app clients (an HTTP request on a new stream every 100 ms) [default: 20, smoke 2]
        #[arg(long)]
        app_clients: Option<usize>,
        /// Concurrent dashboard users (a page load every 2 s) [default: 10, smoke 1]
        #[arg(long)]
        dashboards: Option<usize>,
        /// Seconds between an agent's metadata reports [default: 10, smoke 1]
        #[arg(long)]
        metadata_interval: Option<f64>,
        /// Seconds between an agent's region map fetches
        #[arg(long, default_value_t = 30)]
        map_refresh: u64,
        /// API calls in flight while creating and deleting
        #[arg(long, default_value_t = 8)]
        api_concurrency: usize,
        /// Agents coming up at once
        #[arg(long, default_value_t = 32)]
        connect_concurrency: usize,
    },
    /// Bulk transfer speed in Gbit/s, both directions
    Throughput {
        /// Bytes per transfer (suffixes K, M, G, KiB, MiB, GiB) [default: 1GiB, smoke 8MiB]
        #[arg(long, value_parser = parse_size)]
        bytes: Option<u64>,
        /// Transfers per path and direction; the median is reported [default: 3, smoke 1]
        #[arg(long)]
        trials: Option<usize>,
        /// Only measure client → server
        #[arg(long)]
        no_download: bool,
        /// Parallel streams of the second mode, which shares --bytes among them (1: single stream only)
        #[arg(long, default_value_t = 8)]
        streams: usize,
    },
    /// Echo round-trip times on one connection, in microseconds
    Latency {
        /// Measured round trips per path [default: 20000, smoke 500]
        #[arg(long)]
        count: Option<usize>,
        /// Unrecorded round trips first [default: 1000, smoke 50]
        #[arg(long)]
        warmup: Option<usize>,
        /// Message size in bytes
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Head-of-line blocking: open-loop echo latency, unloaded and beside a bulk download on the same path
    Hol {
        /// Echoes per second
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds per trial and phase [default: 5, smoke 1]
        #[arg(long)]
        secs: Option<f64>,
        /// Trials per phase, alternating unloaded and loaded; medians are reported [default: 3, smoke 1]
        #[arg(long)]
        trials: Option<usize>,
        /// Message size in bytes
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Cost of a new stream on a warm port-forward, and of a cold client process
    Setup {
        /// Sequential new connections per path for time to first byte [default: 1000, smoke 30]
        #[arg(long)]
        trials: Option<usize>,
        /// New connections per path for the streams/s rate [default: 5000, smoke 100]
        #[arg(long)]
        rate_count: Option<usize>,
        /// Concurrent workers for the rate
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Cold client processes per client (ferry tcp, ssh -W) [default: 30, smoke 3]
        #[arg(long)]
        cold_trials: Option<usize>,
    },
    /// Relay memory and CPU per idle agent (agents simulated here, one relay process)
    Idle {
        /// Connected agents at each step [default: 1000,5000,10000, smoke 100,200]
        #[arg(long, value_delimiter = ',')]
        agents: Vec<usize>,
        /// Client UDP endpoints the agents share
        #[arg(long, default_value_t = 64)]
        endpoints: usize,
        /// Agent handshakes in flight while connecting
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of idle CPU measurement per step [default: 10, smoke 2]
        #[arg(long)]
        cpu_window: Option<u64>,
        /// Longest wait, in seconds, for the relay to settle after a step [default: 120, smoke 15]
        #[arg(long)]
        settle_max: Option<u64>,
    },
}

/// `1048576`, `8M`, `8MiB`, `1G`, `1GiB` (K/M/G are binary here, as for buffers).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number of bytes"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G)")),
    };
    match num.checked_mul(mult) {
        Some(0) | None => Err(format!("`{s}`: must be between 1 byte and 2^64")),
        Some(n) => Ok(n),
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Bench::Report { inputs, out } = &cli.bench {
        let out = out.clone().unwrap_or_else(|| {
            let first = &inputs[0];
            if first.is_dir() {
                first.clone()
            } else {
                first
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
            }
        });
        let (md, html) = summary::write(inputs, &out)?;
        println!("wrote {} and {}", md.display(), html.display());
        return Ok(());
    }
    let ferry_bin = paths::locate_ferry(cli.ferry.clone())?;
    if let Bench::Idle {
        agents,
        endpoints,
        concurrency,
        cpu_window,
        settle_max,
    } = &cli.bench
    {
        // No bench server and no paths: only a control plane and a relay.
        let mut agents = if agents.is_empty() {
            if cli.smoke {
                vec![100, 200]
            } else {
                vec![1000, 5000, 10000]
            }
        } else {
            agents.clone()
        };
        agents.retain(|&n| n > 0);
        agents.sort_unstable();
        agents.dedup();
        let settings = idle::Settings {
            agents,
            endpoints: (*endpoints).max(1),
            concurrency: (*concurrency).max(1),
            cpu_window_secs: cpu_window.unwrap_or(if cli.smoke { 2 } else { 10 }).max(1),
            settle_max_secs: settle_max.unwrap_or(if cli.smoke { 15 } else { 120 }),
        };
        let time = report::unix_time();
        let json = cli
            .json
            .clone()
            .unwrap_or_else(|| report::default_json_path("idle", time));
        return idle::run(&ferry_bin, &settings, cli.smoke, &json, time).await;
    }
    if let Bench::Scale {
        agents,
        secs,
        echo_sessions,
        terminals,
        app_clients,
        dashboards,
        metadata_interval,
        map_refresh,
        api_concurrency,
        connect_concurrency,
    } = &cli.bench
    {
        let smoke = cli.smoke;
        let pick = |v: Option<usize>, full: usize, tiny: usize| {
            v.unwrap_or(if smoke { tiny } else { full })
        };
        let settings = scale::Settings {
            agents: pick(*agents, 2000, 20).max(1),
            api_concurrency: (*api_concurrency).max(1),
            connect_concurrency: (*connect_concurrency).max(1),
            map_refresh_secs: (*map_refresh).max(1),
            settle_max_secs: if smoke { 10 } else { 60 },
            metadata_interval_secs: metadata_interval
                .unwrap_or(if smoke { 1.0 } else { 10.0 })
                .clamp(0.1, 3600.0),
            traffic_secs: secs.unwrap_or(if smoke { 3 } else { 60 }).max(1),
            echo_sessions: pick(*echo_sessions, 100, 2),
            echo_interval_ms: 100,
            terminals: pick(*terminals, 10, 1),
            terminal_interval_ms: 1000,
            app_clients: pick(*app_clients, 20, 2),
            app_interval_ms: 100,
            dashboards: pick(*dashboards, 10, 1),
            dashboard_interval_ms: 2000,
        };
        let time = report::unix_time();
        let json = cli
            .json
            .clone()
            .unwrap_or_else(|| report::default_json_path("scale", time));
        return scale::run(&ferry_bin, &settings, cli.smoke, &json, time).await;
    }
    let server = server::Server::start()?;
    let opts = paths::Options {
        ferry_bin,
        skip_ssh: cli.skip_ssh,
        topology: cli.topology.clone(),
    };
    let paths = Paths::setup(&opts, server.addr()).await?;
    let result = bench(&cli, &paths).await;
    let failed: Vec<&str> = paths
        .list
        .iter()
        .filter(|p| matches!(p.state, State::Failed(_)))
        .map(|p| p.label)
        .collect();
    paths.shutdown().await;
    result?;
    if !failed.is_empty() {
        bail!("could not set up: {} (see above)", failed.join(", "));
    }
    Ok(())
}

async fn bench(cli: &Cli, paths: &Paths) -> Result<()> {
    let time = report::unix_time();
    let json = |name: &str| {
        cli.json
            .clone()
            .unwrap_or_else(|| report::default_json_path(name, time))
    };
    match cli.bench {
        Bench::Throughput {
            bytes,
            trials,
            no_download,
            streams,
        } => {
            let settings = throughput::Settings {
                bytes: bytes.unwrap_or(if cli.smoke { 8 << 20 } else { 1 << 30 }),
                trials: trials.unwrap_or(if cli.smoke { 1 } else { 3 }).max(1),
                download: !no_download,
                streams: streams.max(1),
            };
            throughput::run(paths, &settings, cli.smoke, &json("throughput"), time).await
        }
        Bench::Latency {
            count,
            warmup,
            size,
        } => {
            let settings = latency::Settings {
                count: count.unwrap_or(if cli.smoke { 500 } else { 20_000 }).max(1),
                warmup: warmup.unwrap_or(if cli.smoke { 50 } else { 1_000 }),
                size: size.max(8),
            };
            latency::run(paths, &settings, cli.smoke, &json("latency"), time).await
        }
        Bench::Hol {
            rate,
            secs,
            trials,
            size,
        } => {
            let settings = hol::Settings {
                rate: rate.max(1),
                secs: secs
                    .unwrap_or(if cli.smoke { 1.0 } else { 5.0 })
                    .clamp(0.1, 3600.0),
                trials: trials.unwrap_or(if cli.smoke { 1 } else { 3 }).max(1),
                size: size.max(8),
            };
            hol::run(paths, &settings, cli.smoke, &json("hol"), time).await
        }
        Bench::Setup {
            trials,
            rate_count,
            workers,
            cold_trials,
        } => {
            let settings = setup::Settings {
                trials: trials.unwrap_or(if cli.smoke { 30 } else { 1000 }).max(1),
                rate_count: rate_count
                    .unwrap_or(if cli.smoke { 100 } else { 5000 })
                    .max(1),
                workers: workers.max(1),
                cold_trials: cold_trials.unwrap_or(if cli.smoke { 3 } else { 30 }).max(1),
            };
            setup::run(paths, &settings, cli.smoke, &json("setup"), time).await
        }
        Bench::Idle { .. } | Bench::Scale { .. } | Bench::Report { .. } => {
            bail!("idle, scale and report run without the paths (see `run`)")
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn interrupted() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-netbench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a signal the benchmark future is dropped, and with it every child process
    // handle, which kills the child: nothing is left running.
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            r = interrupted() => r.and_then(|()| bail!("interrupted")),
        }
    });
    drop(runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-netbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
