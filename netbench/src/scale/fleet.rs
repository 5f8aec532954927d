//! The fleet: N users, each with one workspace and its agent, created through the
//! control plane's API as an admin would, and the agents run in this process with
//! the real agent library (`ferry-agent`: region map, QUIC link to the relay, ports
//! and terminals served), so that sessions reach real shells and real sockets. The
//! agents report telemetry through the agent's own path (`ferry_agent::telemetry`):
//! resource readings and two metadata items every interval, which this process times
//! through the reporter's observer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_agent::telemetry::{ItemSource, ItemSpec, ReportObserver};
use ferry_agent::{Agent, AgentConfig, AgentStatus, PortPolicy, TerminalPolicy};
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;
use ferry_transport::ControlClient;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::record::Series;

/// One user and their workspace.
#[derive(Debug, Clone)]
pub struct Member {
    pub workspace: String,
    pub agent_token: String,
    /// Minted only for the users who open sessions or dashboards.
    pub user_token: Option<String>,
}

pub fn user_name(i: usize) -> String {
    format!("u{i:05}")
}

/// Runs `op(i)` for i in 0..n, `concurrency` at a time, timing each into `series`.
/// Returns the successful results by index.
pub async fn each<T, F, Fut>(n: usize, concurrency: usize, series: &Series, op: F) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    loop {
        while set.len() < concurrency.max(1) && next < n {
            let fut = op(next);
            let series = series.clone();
            let i = next;
            set.spawn(async move {
                let start = Instant::now();
                let r = fut.await;
                series.record(start.elapsed(), &r);
                (i, r.ok())
            });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok((i, r))) => out[i] = r,
            Some(Err(e)) => series.fail(false, format!("task failed: {e}")),
            None => break,
        }
    }
    out
}

pub async fn create_user(client: ControlClient, admin: String, name: String) -> Result<()> {
    let _: UserInfo = client
        .post(
            "/api/v1/users",
            Some(&admin),
            &CreateUserRequest {
                name: name.clone(),
                password: None,
            },
        )
        .await
        .with_context(|| format!("creating user {name}"))?;
    Ok(())
}

pub async fn create_workspace(
    client: ControlClient,
    admin: String,
    owner: String,
) -> Result<String> {
    let ws: WorkspaceInfo = client
        .post(
            "/api/v1/workspaces",
            Some(&admin),
            &CreateWorkspaceRequest {
                name: "ws".into(),
                owner: Some(owner.clone()),
            },
        )
        .await
        .with_context(|| format!("creating the workspace of {owner}"))?;
    Ok(ws.label)
}

pub async fn agent_token(client: ControlClient, admin: String, label: String) -> Result<String> {
    let t: NewTokenResponse = client
        .post(
            &format!("/api/v1/workspaces/{label}/agent-tokens"),
            Some(&admin),
            &CreateTokenRequest {
                name: "scale".into(),
                ttl_secs: None,
            },
        )
        .await
        .with_context(|| format!("an agent token for {label}"))?;
    Ok(t.token)
}

pub async fn user_token(client: ControlClient, admin: String, user: String) -> Result<String> {
    let t: MintTokenResponse = client
        .post(
            "/api/v1/tokens",
            Some(&admin),
            &MintTokenRequest {
                kind: TokenKind::User,
                subject: user.clone(),
                ttl_secs: None,
            },
        )
        .await
        .with_context(|| format!("a user token for {user}"))?;
    Ok(t.token)
}

pub async fn delete_workspace(client: ControlClient, admin: String, label: String) -> Result<()> {
    client
        .delete(&format!("/api/v1/workspaces/{label}"), Some(&admin))
        .await
        .with_context(|| format!("deleting {label}"))
}

/// How the fleet's agents report telemetry, and where their reports are timed.
#[derive(Clone)]
pub struct Telemetry {
    pub interval: Duration,
    /// Reports are timed into `series` while this is set (the traffic phase).
    pub recording: Arc<AtomicBool>,
    pub series: Series,
}

impl Telemetry {
    /// An agent's telemetry settings: the readings and two metadata items from files
    /// (a command each would measure this machine's fork rate, not the control plane:
    /// at 2000 agents that is 400 processes a second).
    fn config(&self) -> ferry_agent::TelemetryConfig {
        let item = |key: &str, file: &str| ItemSpec {
            key: key.into(),
            name: None,
            source: ItemSource::File(file.into()),
            interval: self.interval,
            timeout: Duration::from_secs(1),
        };
        let (recording, series) = (self.recording.clone(), self.series.clone());
        ferry_agent::TelemetryConfig {
            interval: Some(self.interval),
            sources: ferry_agent::telemetry::Sources::system(std::env::temp_dir()),
            items: vec![
                item("load", "/proc/loadavg"),
                item("kernel", "/proc/sys/kernel/osrelease"),
            ],
            observer: Some(ReportObserver(Arc::new(move |took, stored| {
                if !recording.load(Ordering::Relaxed) {
                    return;
                }
                if stored {
                    series.ok(took);
                } else {
                    series.fail(false, "a telemetry report failed".into());
                }
            }))),
        }
    }
}

/// The running agents.
pub struct Agents {
    tasks: JoinSet<(usize, Result<(), ferry_agent::AgentError>)>,
    /// One per connected agent, counting its drops into `disconnects`.
    watchers: JoinSet<()>,
    cancel: CancellationToken,
    /// Times an agent left the Connected state after first reaching it.
    pub disconnects: Arc<AtomicU64>,
    pub connected: usize,
}

impl Agents {
    /// Starts one agent per member, `concurrency` coming up at a time; each counts
    /// from its start to its first Connected status into `series`.
    pub async fn start(
        members: &[Member],
        control_url: &str,
        ca_pem: &str,
        map_refresh: Duration,
        concurrency: usize,
        series: &Series,
        telemetry: &Telemetry,
    ) -> Result<Agents> {
        let cancel = CancellationToken::new();
        let disconnects = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let mut pending = JoinSet::new();
        let mut watchers = JoinSet::new();
        let mut connected = 0;
        let mut next = 0;
        loop {
            while pending.len() < concurrency.max(1) && next < members.len() {
                let mut config = AgentConfig::new(
                    control_url.to_string(),
                    ca_pem.to_string(),
                    members[next].agent_token.clone(),
                );
                config.ports = PortPolicy::AnyLoopback;
                config.terminal = TerminalPolicy::Shell("/bin/sh".into());
                config.map_refresh = map_refresh;
                config.telemetry = telemetry.config();
                let agent = Agent::new(config).context("an agent's configuration")?;
                let mut status = agent.status();
                let started = Instant::now();
                let i = next;
                let run_cancel = cancel.child_token();
                tasks.spawn(async move { (i, agent.run(run_cancel).await) });
                pending.spawn(async move {
                    let wait = async {
                        status
                            .wait_for(|s| matches!(s, AgentStatus::Connected { .. }))
                            .await
                            .map(drop)
                    };
                    let up = tokio::time::timeout(Duration::from_secs(60), wait).await;
                    let took = started.elapsed();
                    match up {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => bail!("agent #{i} stopped before it connected"),
                        Err(_) => bail!("agent #{i} not connected after 60 s"),
                    }
                    Ok((took, status))
                });
                next += 1;
            }
            match pending.join_next().await {
                Some(Ok(Ok((took, mut status)))) => {
                    series.ok(took);
                    connected += 1;
                    // Watched for the rest of the run: every drop is counted.
                    let (disconnects, stop) = (disconnects.clone(), cancel.clone());
                    watchers.spawn(async move {
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                changed = status.changed() => if changed.is_err() { return },
                            }
                            let up = matches!(*status.borrow(), AgentStatus::Connected { .. });
                            if !up {
                                disconnects.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                Some(Ok(Err(e))) => series.fail(false, format!("{e:#}")),
                Some(Err(e)) => series.fail(false, format!("task failed: {e}")),
                None => break,
            }
        }
        Ok(Agents {
            tasks,
            watchers,
            cancel,
            disconnects,
            connected,
        })
    }

    /// Agents whose run ended on its own (a fatal error: refused token...), so far.
    pub fn failed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(done) = self.tasks.try_join_next() {
            match done {
                Ok((i, Ok(()))) => out.push(format!("agent #{i} stopped")),
                Ok((i, Err(e))) => out.push(format!("agent #{i}: {e}")),
                Err(e) => out.push(format!("agent task failed: {e}")),
            }
        }
        out
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.watchers.abort_all();
    }
}
