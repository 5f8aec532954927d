//! `scale`: the methodology of a published workspace-platform scale test, on one
//! machine. A `ferry control` and one `ferry relay` run as processes; this process
//! plays everyone else:
//!
//! 1. create: N users, a workspace each and its agent token, through the API as an
//!    admin (plus user tokens for the users who will open sessions);
//! 2. connect: N agents (the real agent library, see `fleet.rs`), a few at a time,
//!    then a wait until the relay and control plane are quiet again (the relay's
//!    directory reports drained). Every agent reports its telemetry (resource
//!    readings and two metadata items) every 10 s through the real agent path, from
//!    its start; the reports are timed during the traffic phase, and the control
//!    plane's write cost for them is read from its metrics;
//! 3. traffic: for a fixed time, at once: echo sessions, terminal sessions, app HTTP
//!    requests and dashboard loads (see `traffic.rs`);
//! 4. cleanup: the agents stop and every workspace is deleted.
//!
//! Each phase reports p50/p90/p95/p99 per kind of operation, errors, and the relay's
//! and control plane's CPU and memory. The run passes when no session was
//! interrupted, neither process restarted (and no agent dropped), and no internal
//! error happened (no 5xx, no `internal` stream error, no ERROR line in their logs).

mod fleet;
mod print;
mod record;
mod traffic;
mod write_cost;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cpu;
use crate::idle::network::Network;
use crate::report;
use fleet::{Agents, Member};
use record::{Series, SeriesSummary};
use write_cost::WriteCost;

/// The published reference: agent API latency with 2000 agents.
pub const REFERENCE_AGENTS: usize = 2000;
pub const REFERENCE_P90_MS: f64 = 60.0;
pub const REFERENCE_P95_MS: f64 = 220.0;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub agents: usize,
    /// API calls in flight while creating and cleaning up.
    pub api_concurrency: usize,
    /// Agents coming up at once.
    pub connect_concurrency: usize,
    /// How often each agent fetches the region map again.
    pub map_refresh_secs: u64,
    /// Longest wait for the relay and control plane to go quiet before traffic.
    pub settle_max_secs: u64,
    pub metadata_interval_secs: f64,
    pub traffic_secs: u64,
    pub echo_sessions: usize,
    pub echo_interval_ms: u64,
    pub terminals: usize,
    pub terminal_interval_ms: u64,
    pub app_clients: usize,
    pub app_interval_ms: u64,
    pub dashboards: usize,
    pub dashboard_interval_ms: u64,
}

/// Resources over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub secs: f64,
    /// Percent of one core, averaged over the phase.
    pub relay_cpu_percent: f64,
    pub control_cpu_percent: f64,
    /// This process: load generator, agents, their shells.
    pub netbench_cpu_percent: f64,
    /// PSS at the end of the phase, and the highest seen (sampled every second).
    pub relay_pss_kib: u64,
    pub relay_pss_peak_kib: u64,
    pub control_pss_kib: u64,
    pub control_pss_peak_kib: u64,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub usage: Usage,
    pub series: Vec<SeriesSummary>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub no_interrupted_session: bool,
    pub no_process_restart: bool,
    pub no_internal_error: bool,
    /// Ours, beyond the published three: every other operation (API calls, app
    /// requests, dashboard loads, agent connections) succeeded too.
    pub no_failed_operation: bool,
    pub passed: bool,
    /// Why a criterion failed, in words.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ScaleReport<'a> {
    bench: &'static str,
    unix_time: u64,
    smoke: bool,
    settings: &'a Settings,
    cores: usize,
    phases: &'a [Phase],
    /// The agents' metadata reports during the traffic phase, against the reference.
    agent_api: Option<&'a SeriesSummary>,
    /// What those reports cost the control plane (from its metrics).
    telemetry_write_cost: Option<&'a WriteCost>,
    reference: Reference,
    verdict: &'a Verdict,
}

#[derive(Debug, Serialize)]
struct Reference {
    agents: usize,
    p90_ms: f64,
    p95_ms: f64,
}

/// Samples CPU and PSS of the relay and the control plane over a phase.
struct Meter {
    relay: u32,
    control: u32,
    ticks: u64,
    start: Instant,
    cpu0: [Duration; 3],
    peaks: Arc<std::sync::Mutex<(u64, u64)>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Meter {
    fn cpu(relay: u32, control: u32, ticks: u64) -> [Duration; 3] {
        let me = std::process::id();
        let r = cpu::tree_cpu(&[relay], ticks);
        let c = cpu::tree_cpu(&[control], ticks);
        // This process's tree includes the two servers, which are its children.
        let all = cpu::tree_cpu(&[me], ticks);
        [r, c, all.saturating_sub(r + c)]
    }

    fn start(relay: u32, control: u32, ticks: u64) -> Meter {
        let peaks = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
        let p = peaks.clone();
        let sampler = tokio::spawn(async move {
            loop {
                let r = cpu::pss_kib(relay).unwrap_or(0);
                let c = cpu::pss_kib(control).unwrap_or(0);
                if let Ok(mut peaks) = p.lock() {
                    peaks.0 = peaks.0.max(r);
                    peaks.1 = peaks.1.max(c);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Meter {
            relay,
            control,
            ticks,
            start: Instant::now(),
            cpu0: Self::cpu(relay, control, ticks),
            peaks,
            sampler,
        }
    }

    fn finish(self) -> Usage {
        let secs = self.start.elapsed().as_secs_f64();
        let cpu1 = Self::cpu(self.relay, self.control, self.ticks);
        let pct = |i: usize| cpu1[i].saturating_sub(self.cpu0[i]).as_secs_f64() / secs * 100.0;
        let relay_pss = cpu::pss_kib(self.relay).unwrap_or(0);
        let control_pss = cpu::pss_kib(self.control).unwrap_or(0);
        let (rp, cp) = self.peaks.lock().map(|p| *p).unwrap_or((0, 0));
        Usage {
            secs,
            relay_cpu_percent: pct(0),
            control_cpu_percent: pct(1),
            netbench_cpu_percent: pct(2),
            relay_pss_kib: relay_pss,
            relay_pss_peak_kib: rp.max(relay_pss),
            control_pss_kib: control_pss,
            control_pss_peak_kib: cp.max(control_pss),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// The soft limit on open files: each agent holds a UDP socket, each API call and
/// each session a TCP socket for a while.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub async fn run(
    ferry: &Path,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let needed = settings.agents as u64 * 2 + 1024;
    if let Some(limit) = open_files_limit() {
        if limit < needed {
            bail!(
                "{} agents need about {needed} open files, the limit is {limit}: raise it (`ulimit -n {needed}`) or use fewer --agents",
                settings.agents
            );
        }
    }
    eprintln!("starting ferry control and ferry relay...");
    let mut net = Network::start(ferry).await?;
    let result = measure(&mut net, settings, smoke, json, time).await;
    net.stop().await;
    result
}

async fn measure(
    net: &mut Network,
    settings: &Settings,
    smoke: bool,
    json: &Path,
    time: u64,
) -> Result<()> {
    let ticks = cpu::clock_ticks();
    let relay = net.relay_pid().context("the relay has no pid")?;
    let control = net.control_pid().context("the control plane has no pid")?;
    let client = net.control_client().clone();
    let admin = net.admin_token().to_string();
    let n = settings.agents;
    let c = settings.api_concurrency;
    let mut phases: Vec<Phase> = Vec::new();

    // 1. Create.
    eprintln!("creating {n} users, workspaces and agent tokens...");
    let meter = Meter::start(relay, control, ticks);
    let (users, workspaces, agent_tokens, user_tokens) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let created = fleet::each(n, c, &users, |i| {
        fleet::create_user(client.clone(), admin.clone(), fleet::user_name(i))
    })
    .await;
    let labels = fleet::each(n, c, &workspaces, |i| {
        fleet::create_workspace(client.clone(), admin.clone(), fleet::user_name(i))
    })
    .await;
    let label_list: Vec<String> = labels.iter().flatten().cloned().collect();
    let tokens = fleet::each(label_list.len(), c, &agent_tokens, |i| {
        fleet::agent_token(client.clone(), admin.clone(), label_list[i].clone())
    })
    .await;
    // Sessions and dashboards go to workspaces spread over the whole fleet.
    let users_needed = (settings.echo_sessions + settings.terminals + settings.app_clients)
        .max(settings.dashboards)
        .min(label_list.len());
    let spread = |k: usize| k * label_list.len() / users_needed.max(1);
    let session_tokens = fleet::each(users_needed, c, &user_tokens, |k| {
        let owner = label_list[spread(k)]
            .rsplit_once("--")
            .map(|(_, o)| o.to_string())
            .unwrap_or_default();
        fleet::user_token(client.clone(), admin.clone(), owner)
    })
    .await;
    phases.push(Phase {
        name: "create",
        usage: meter.finish(),
        series: vec![
            users.summary("create user"),
            workspaces.summary("create workspace"),
            agent_tokens.summary("agent token"),
            user_tokens.summary("user token"),
        ],
    });
    let mut members: Vec<Member> = label_list
        .iter()
        .zip(tokens)
        .filter_map(|(label, token)| {
            Some(Member {
                workspace: label.clone(),
                agent_token: token?,
                user_token: None,
            })
        })
        .collect();
    for (k, token) in session_tokens.into_iter().enumerate() {
        if let Some(m) = members.get_mut(spread(k)) {
            m.user_token = token;
        }
    }
    let creation_failed = created.iter().filter(|c| c.is_none()).count();
    if members.is_empty() {
        bail!("no workspace could be set up ({creation_failed} user creations failed)");
    }

    // 2. Connect.
    eprintln!("connecting {} agents...", members.len());
    let meter = Meter::start(relay, control, ticks);
    let connects = Series::default();
    let metadata = Series::default();
    let telemetry = fleet::Telemetry {
        interval: Duration::from_secs_f64(settings.metadata_interval_secs),
        recording: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        series: metadata.clone(),
    };
    let mut agents = Agents::start(
        &members,
        &net.control_url,
        &net.ca_pem,
        Duration::from_secs(settings.map_refresh_secs),
        settings.connect_concurrency,
        &connects,
        &telemetry,
    )
    .await?;
    eprintln!(
        "  {} agents connected; waiting for the relay and control plane to settle...",
        agents.connected
    );
    // The relay reports every new agent to the control plane; traffic starts once
    // that has drained, as it would in a fleet that came up earlier.
    let (settle_time, settled) = crate::idle::settle(
        relay,
        Some(control),
        ticks,
        Duration::from_secs(settings.settle_max_secs),
    )
    .await;
    let settling = Series::default();
    settling.ok(settle_time);
    let mut notes = Vec::new();
    if !settled {
        // Not a failure of the system under test: traffic just starts on a busier one.
        notes.push(format!(
            "the relay and control plane were still busy after {} s; traffic started anyway",
            settings.settle_max_secs
        ));
    }
    phases.push(Phase {
        name: "connect",
        usage: meter.finish(),
        series: vec![
            connects.summary("agent connect"),
            settling.summary("relay and control plane settle"),
        ],
    });

    // 3. Traffic, with the agents' metadata reports running throughout.
    eprintln!(
        "traffic for {} s: {} echo sessions, {} terminals, {} app clients, {} dashboards, metadata from {} agents...",
        settings.traffic_secs,
        settings.echo_sessions,
        settings.terminals,
        settings.app_clients,
        settings.dashboards,
        members.len()
    );
    let members = Arc::new(members);
    let stop = CancellationToken::new();
    // Every load task (and the app server) ends with the phase, or on an early error.
    let _stop_on_exit = stop.clone().drop_guard();
    let meter = Meter::start(relay, control, ticks);
    let writes_before = write_cost::scrape(net.control_admin).await;
    telemetry
        .recording
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut load: JoinSet<()> = JoinSet::new();
    let echo_server = crate::server::Server::start()?;
    let app_server = traffic::AppServer::start()?;
    let app_port = app_server.port;
    let endpoints = traffic::client_endpoints(net.relay_addr, &net.ca_pem, 8)?;
    let with_user: Vec<&Member> = members.iter().filter(|m| m.user_token.is_some()).collect();
    let handshakes = Series::default();
    let (echo_setup, echoes, term_setup, keystrokes, app, dashboards) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let relay_addr = net.relay_addr;
    let mut k = 0usize;
    let mut next_member = || {
        let m = with_user[k % with_user.len().max(1)];
        k += 1;
        (
            m.user_token.clone().unwrap_or_default(),
            m.workspace.clone(),
        )
    };
    if !with_user.is_empty() {
        for i in 0..settings.echo_sessions {
            let (token, ws) = next_member();
            load.spawn(traffic::echo_session(
                endpoints[i % endpoints.len()].clone(),
                relay_addr,
                token,
                ws,
                echo_server.addr().port(),
                Duration::from_millis(settings.echo_interval_ms),
                stop.clone(),
                handshakes.clone(),
                echo_setup.clone(),
                echoes.clone(),
            ));
        }
        for i in 0..settings.terminals {
            let (token, ws) = next_member();
            load.spawn(traffic::terminal_session(
                endpoints[i % endpoints.len()].clone(),
                relay_addr,
                token,
                ws,
                Duration::from_millis(settings.terminal_interval_ms),
                stop.clone(),
                handshakes.clone(),
                term_setup.clone(),
                keystrokes.clone(),
            ));
        }
        for i in 0..settings.app_clients {
            let (token, ws) = next_member();
            load.spawn(traffic::app_client(
                endpoints[i % endpoints.len()].clone(),
                relay_addr,
                token,
                ws,
                app_port,
                Duration::from_millis(settings.app_interval_ms),
                stop.clone(),
                handshakes.clone(),
                app.clone(),
            ));
        }
        for m in with_user.iter().take(settings.dashboards) {
            load.spawn(traffic::dashboard(
                client.clone(),
                m.user_token.clone().unwrap_or_default(),
                m.workspace.clone(),
                Duration::from_millis(settings.dashboard_interval_ms),
                stop.clone(),
                dashboards.clone(),
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(settings.traffic_secs)).await;
    telemetry
        .recording
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let write_cost = match (writes_before, write_cost::scrape(net.control_admin).await) {
        (Ok(before), Ok(after)) => Some(WriteCost::between(
            &before,
            &after,
            settings.traffic_secs as f64,
        )),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("  cannot read the control plane's metrics: {e:#}");
            None
        }
    };
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while load.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        load.abort_all();
    }
    drop(app_server);
    drop(echo_server);
    phases.push(Phase {
        name: "traffic",
        usage: meter.finish(),
        series: vec![
            metadata.summary("agent metadata (agent API)"),
            handshakes.summary("client connect (QUIC + hello)"),
            echo_setup.summary("echo session setup"),
            echoes.summary("echo round trip"),
            term_setup.summary("terminal setup"),
            keystrokes.summary("terminal command"),
            app.summary("app HTTP request"),
            dashboards.summary("dashboard load"),
        ],
    });
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }

    // Health before cleanup: processes alive, agents never dropped.
    let relay_alive = net.ensure_relay_running();
    let control_alive = net.ensure_control_running();
    for r in [&relay_alive, &control_alive] {
        if let Err(e) = r {
            notes.push(format!("{e:#}"));
        }
    }
    let disconnects = agents
        .disconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    let agent_failures = agents.failed();
    if disconnects > 0 {
        notes.push(format!("agents lost their relay {disconnects} time(s)"));
    }
    for f in agent_failures.iter().take(5) {
        notes.push(f.clone());
    }

    // 4. Cleanup.
    eprintln!("cleaning up...");
    let meter = Meter::start(relay, control, ticks);
    let stopped = Instant::now();
    agents.stop().await;
    let agents_stop = stopped.elapsed();
    let deletes = Series::default();
    let labels: Vec<String> = members.iter().map(|m| m.workspace.clone()).collect();
    fleet::each(labels.len(), c, &deletes, |i| {
        fleet::delete_workspace(client.clone(), admin.clone(), labels[i].clone())
    })
    .await;
    let stop_series = Series::default();
    stop_series.ok(agents_stop);
    phases.push(Phase {
        name: "cleanup",
        usage: meter.finish(),
        series: vec![
            stop_series.summary("stop all agents"),
            deletes.summary("delete workspace"),
        ],
    });

    // The verdict.
    let sessions_interrupted: u64 = [&echo_setup, &echoes, &term_setup, &keystrokes]
        .iter()
        .map(|s| s.errors())
        .sum();
    let internal: u64 = phases
        .iter()
        .flat_map(|p| &p.series)
        .map(|s| s.internal_errors)
        .sum();
    let error_lines = net.error_lines();
    if sessions_interrupted > 0 {
        notes.push(format!(
            "{sessions_interrupted} echo or terminal session(s) failed"
        ));
    }
    if internal > 0 {
        notes.push(format!(
            "{internal} internal error answer(s) (5xx or `internal`)"
        ));
    }
    for line in error_lines.iter().take(5) {
        notes.push(format!("logged: {line}"));
    }
    let no_process_restart = relay_alive.is_ok()
        && control_alive.is_ok()
        && disconnects == 0
        && agent_failures.is_empty()
        && agents_connected_all(&phases, members.len());
    let failed: u64 = phases
        .iter()
        .flat_map(|p| &p.series)
        .map(|s| s.errors)
        .sum();
    if failed > sessions_interrupted {
        notes.push(format!(
            "{} other operation(s) failed",
            failed - sessions_interrupted
        ));
    }
    let verdict = Verdict {
        no_failed_operation: failed == 0,
        no_interrupted_session: sessions_interrupted == 0,
        no_process_restart,
        no_internal_error: internal == 0 && error_lines.is_empty(),
        passed: false,
        notes,
    };
    let verdict = Verdict {
        passed: verdict.no_interrupted_session
            && verdict.no_process_restart
            && verdict.no_internal_error
            && verdict.no_failed_operation,
        ..verdict
    };

    print::tables(settings, &phases, &verdict);
    if let Some(cost) = &write_cost {
        print::write_cost(settings, cost);
    }
    let agent_api = phases
        .iter()
        .flat_map(|p| &p.series)
        .find(|s| s.name.starts_with("agent metadata"));
    let report = ScaleReport {
        bench: "scale",
        unix_time: time,
        smoke,
        settings,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        phases: &phases,
        agent_api,
        telemetry_write_cost: write_cost.as_ref(),
        reference: Reference {
            agents: REFERENCE_AGENTS,
            p90_ms: REFERENCE_P90_MS,
            p95_ms: REFERENCE_P95_MS,
        },
        verdict: &verdict,
    };
    report::write_json(json, &report)?;
    println!("results written to {}", json.display());
    if !verdict.passed {
        bail!("scale: the pass criteria were not met (see above)");
    }
    Ok(())
}

fn agents_connected_all(phases: &[Phase], members: usize) -> bool {
    phases
        .iter()
        .flat_map(|p| &p.series)
        .find(|s| s.name == "agent connect")
        .is_some_and(|s| s.ok == members && s.errors == 0)
}
