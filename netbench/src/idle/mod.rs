//! `idle`: what idle agents cost a relay. Starts `ferry control` and one `ferry relay`
//! as processes, then in steps (e.g. 1000, 5000, 10000) connects simulated agents (see
//! `swarm.rs`) from this process, waits for the relay to settle (its directory updates
//! to the control plane drained, its CPU no longer falling), and measures the relay's
//! PSS and its CPU over an idle window. Memory per agent is the PSS slope between
//! steps, against the 40 KiB target. Any agent dropped while idle fails the run.

pub mod network;
mod swarm;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cpu;
use crate::report::{self, Table};
use network::Network;
use swarm::Swarm;

/// The goal: an idle agent costs the relay less than this.
pub const TARGET_KIB_PER_AGENT: f64 = 40.0;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Connected agents at each step, ascending.
    pub agents: Vec<usize>,
    /// Client UDP endpoints the agents are spread over.
    pub endpoints: usize,
    /// Handshakes in flight while connecting.
    pub concurrency: usize,
    /// Length of the idle CPU measurement.
    pub cpu_window_secs: u64,
    /// Longest wait for the relay to settle after connecting a step's agents.
    pub settle_max_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub agents: usize,
    pub connect_secs: f64,
    pub settle_secs: f64,
    /// Whether the relay settled before `settle_max_secs`.
    pub settled: bool,
    pub relay_pss_kib: u64,
    /// PSS growth per agent since the previous step (or since no agents).
    pub kib_per_agent: f64,
    /// Relay CPU over the idle window, in percent of one core.
    pub idle_cpu_percent: f64,
    /// This process's PSS (all simulated agents, client side), for scale.
    pub client_pss_kib: Option<u64>,
    pub dropped: usize,
}

#[derive(Debug, Serialize)]
struct IdleReport<'a> {
    bench: &'static str,
    unix_time: u64,
    smoke: bool,
    settings: &'a Settings,
    target_kib_per_agent: f64,
    relay_pss_kib_no_agents: u64,
    steps: &'a [Step],
    /// The slope between the two largest steps (fixed costs amortised away).
    kib_per_agent: Option<f64>,
    under_target: Option<bool>,
}

fn pss(pid: u32) -> Result<u64> {
    cpu::pss_kib(pid).with_context(|| format!("reading the memory of the relay (pid {pid})"))
}

/// CPU of `pid` over `window`, in percent of one core.
async fn cpu_percent(pid: u32, ticks: u64, window: Duration) -> f64 {
    let before = cpu::tree_cpu(&[pid], ticks);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu::tree_cpu(&[pid], ticks).saturating_sub(before);
    used.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0
}

/// Waits until the control plane is quiet (the relay's directory updates have all
/// arrived) and the relay's CPU has stopped falling, one-second windows at a time.
pub(crate) async fn settle(
    relay: u32,
    control: Option<u32>,
    ticks: u64,
    max: Duration,
) -> (Duration, bool) {
    let start = Instant::now();
    let window = Duration::from_secs(1);
    let mut previous: Option<f64> = None;
    while start.elapsed() < max {
        let (relay_cpu, control_cpu) = match control {
            Some(c) => {
                let before = cpu::tree_cpu(&[c], ticks);
                let r = cpu_percent(relay, ticks, window).await;
                let used = cpu::tree_cpu(&[c], ticks).saturating_sub(before);
                (r, used.as_secs_f64() / window.as_secs_f64() * 100.0)
            }
            None => (cpu_percent(relay, ticks, window).await, 0.0),
        };
        let stopped_falling = previous.is_some_and(|p| relay_cpu >= 0.8 * p || relay_cpu < 2.0);
        if control_cpu < 5.0 && stopped_falling {
            return (start.elapsed(), true);
        }
        previous = Some(relay_cpu);
    }
    (start.elapsed(), false)
}

pub async fn run(
    ferry: &Path,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let ticks = cpu::clock_ticks();
    let max = settings.agents.iter().copied().max().unwrap_or(0);
    eprintln!("starting ferry control and ferry relay...");
    let mut net = Network::start(ferry).await?;
    let result = measure(&mut net, settings, max, ticks, smoke, json, time).await;
    net.stop().await;
    result
}

async fn measure(
    net: &mut Network,
    settings: &Settings,
    max: usize,
    ticks: u64,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let relay = net.relay_pid().context("the relay has no pid")?;
    let control = net.control_pid();

    eprintln!("minting {max} agent tokens...");
    let started = Instant::now();
    let subjects: Vec<String> = (0..max).map(|i| format!("idle{i}--bench")).collect();
    let tokens = net.mint_agents(&subjects, 8).await?;
    eprintln!("  done in {:.1}s", started.elapsed().as_secs_f64());

    let mut swarm = Swarm::new(net.relay_addr, &net.ca_pem, settings.endpoints)?;
    // The empty relay's footprint, after it settled from start-up.
    settle(relay, control, ticks, Duration::from_secs(5)).await;
    let base = pss(relay)?;
    eprintln!("relay with no agents: PSS {base} KiB");

    let mut steps: Vec<Step> = Vec::new();
    let (mut prev_agents, mut prev_pss) = (0usize, base);
    for &n in &settings.agents {
        let connect = swarm
            .grow(&tokens[..n], settings.concurrency)
            .await
            .with_context(|| format!("connecting {n} agents"))?;
        net.ensure_relay_running()?;
        let (settle_time, settled) = settle(
            relay,
            control,
            ticks,
            Duration::from_secs(settings.settle_max_secs),
        )
        .await;
        let relay_pss = pss(relay)?;
        let idle_cpu =
            cpu_percent(relay, ticks, Duration::from_secs(settings.cpu_window_secs)).await;
        net.ensure_relay_running()?;
        let step = Step {
            agents: swarm.len(),
            connect_secs: connect.as_secs_f64(),
            settle_secs: settle_time.as_secs_f64(),
            settled,
            relay_pss_kib: relay_pss,
            kib_per_agent: (relay_pss as f64 - prev_pss as f64)
                / (swarm.len() - prev_agents).max(1) as f64,
            idle_cpu_percent: idle_cpu,
            client_pss_kib: cpu::pss_kib(std::process::id()),
            dropped: swarm.dropped(),
        };
        eprintln!(
            "{:>6} agents: connected in {:.1}s, settled in {:.1}s{}, relay PSS {} KiB ({:+.1} KiB/agent), idle CPU {:.1}%, dropped {}",
            step.agents,
            step.connect_secs,
            step.settle_secs,
            if settled { "" } else { " (not settled)" },
            step.relay_pss_kib,
            step.kib_per_agent,
            step.idle_cpu_percent,
            step.dropped
        );
        prev_agents = swarm.len();
        prev_pss = relay_pss;
        steps.push(step);
    }
    let dropped = swarm.dropped();
    swarm.close().await;

    // The slope over the largest span that excludes the fixed costs of the first step.
    let kib_per_agent = match steps.as_slice() {
        [] => None,
        [only] => Some(only.kib_per_agent),
        [.., last] => Some(last.kib_per_agent),
    };
    println!();
    println!(
        "idle: simulated agents on one relay process, over {} client endpoints; CPU over {} s",
        settings.endpoints, settings.cpu_window_secs
    );
    let mut table = Table::new(&[
        "agents",
        "relay PSS KiB",
        "KiB/agent",
        "idle CPU %",
        "connect s",
        "settle s",
        "dropped",
    ]);
    table.row(vec![
        "0".into(),
        base.to_string(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    for s in &steps {
        table.row(vec![
            s.agents.to_string(),
            s.relay_pss_kib.to_string(),
            format!("{:.1}", s.kib_per_agent),
            format!("{:.1}", s.idle_cpu_percent),
            format!("{:.1}", s.connect_secs),
            format!("{:.1}{}", s.settle_secs, if s.settled { "" } else { "*" }),
            s.dropped.to_string(),
        ]);
    }
    table.print();
    if steps.iter().any(|s| !s.settled) {
        println!(
            "* the relay had not settled within {} s",
            settings.settle_max_secs
        );
    }
    let under_target = kib_per_agent.map(|k| k < TARGET_KIB_PER_AGENT);
    if let Some(k) = kib_per_agent {
        println!(
            "memory per idle agent: {k:.1} KiB (target < {TARGET_KIB_PER_AGENT} KiB: {})",
            if k < TARGET_KIB_PER_AGENT {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    let report = IdleReport {
        bench: "idle",
        unix_time: time,
        smoke,
        settings,
        target_kib_per_agent: TARGET_KIB_PER_AGENT,
        relay_pss_kib_no_agents: base,
        steps: &steps,
        kib_per_agent,
        under_target,
    };
    report::write_json(json, &report)?;
    println!("results written to {}", json.display());
    if dropped > 0 {
        bail!("{dropped} idle agent connection(s) were dropped by the relay");
    }
    Ok(())
}
