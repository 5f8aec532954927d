//! Workspace telemetry: the agent reads its workspace's resource use ([`sample`]) and
//! its operator's custom metadata items ([`items`]) and reports them to the control
//! plane every [`TelemetryConfig::interval`] (10 s by default), one small
//! `POST /api/v1/agents/metadata` with the agent token.
//!
//! Why the control API and not the relay connection: the agent already calls the
//! control plane every few seconds (the region map); a report over the relay would
//! need a new frame, and relays would have to batch and forward it to the control
//! plane, putting them in the API's path, which ferry keeps them out of. At 10k agents
//! a 10 s interval is 1000 small upserts a second on the store, measured by
//! `ferry-netbench scale`.
//!
//! [`run`] is one task owned by [`crate::Agent::run`]; it owns one task per metadata
//! item in a `JoinSet`, and everything stops on the agent's cancellation token.

pub mod items;
pub mod parse;
pub mod sample;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::api::{AgentMetadataRequest, MetadataItem};
use ferry_transport::ControlClient;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use items::{ItemSource, ItemSpec};

pub use sample::{Sampler, Sources};

/// Default time between reports.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default time a metadata command may run.
pub const DEFAULT_ITEM_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent reports and how often.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Time between reports; `None` turns reporting off.
    pub interval: Option<Duration>,
    /// Where readings come from (and whose disk is reported).
    pub sources: Sources,
    /// The operator's metadata items.
    pub items: Vec<ItemSpec>,
    /// Told how long each report took and whether the control plane stored it (a
    /// benchmark's view of the real agent path); `None` in the product.
    pub observer: Option<ReportObserver>,
}

/// A callback after each report: its duration, and whether it was stored.
#[derive(Clone)]
pub struct ReportObserver(pub Arc<dyn Fn(Duration, bool) + Send + Sync>);

impl std::fmt::Debug for ReportObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportObserver")
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        let dir = std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/"));
        TelemetryConfig {
            interval: Some(DEFAULT_INTERVAL),
            sources: Sources::system(dir),
            items: Vec::new(),
            observer: None,
        }
    }
}

/// Reports until `cancel` fires. Failures (the control plane away, a file gone) are
/// logged and retried at the next interval; they never stop the agent.
pub(crate) async fn run(
    config: TelemetryConfig,
    control: ControlClient,
    token: String,
    cancel: CancellationToken,
) {
    let Some(interval) = config.interval else {
        return;
    };
    crate::metrics::describe_telemetry();
    let latest: Arc<Mutex<BTreeMap<String, MetadataItem>>> = Arc::default();
    let mut readers = JoinSet::new();
    for spec in config.items.iter().cloned() {
        readers.spawn(read_item_forever(spec, latest.clone(), cancel.clone()));
    }
    let mut sampler = Sampler::new(config.sources.clone());
    tracing::info!(source = sampler.source().as_str(), every = ?interval, "reporting workspace telemetry");
    // A first counter now, so the first report has a CPU figure; that report comes
    // soon (the dashboard shows something within a second of the agent starting).
    let _ = sampler.sample(std::time::Instant::now());
    let mut next = tokio::time::Instant::now() + interval.min(Duration::from_secs(1));
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += interval;
        // Small files in /proc and one statvfs: microseconds, fine on this task.
        let stats = match sampler.sample(std::time::Instant::now()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "no resource reading this round");
                None
            }
        };
        let items: Vec<MetadataItem> = latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if stats.is_none() && items.is_empty() {
            continue;
        }
        let report = AgentMetadataRequest { items, stats };
        let started = std::time::Instant::now();
        let sent: Result<(), _> = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = control.post("/api/v1/agents/metadata", Some(&token), &report) => r,
        };
        crate::metrics::telemetry_report(sent.is_ok());
        if let Some(observer) = &config.observer {
            (observer.0)(started.elapsed(), sent.is_ok());
        }
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("telemetry reports reach the control plane again");
            }
            Ok(()) => {}
            // Said once per outage, not every 10 s.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "telemetry report failed; retrying every interval");
            }
            Err(e) => tracing::debug!(error = %e, "telemetry report failed"),
        }
        // A slow control plane must not make reports pile up: skip missed ticks.
        let now = tokio::time::Instant::now();
        if next < now {
            next = now + interval;
        }
    }
    readers.shutdown().await;
}

/// Reads one item every its interval, keeping the latest value in `latest`.
async fn read_item_forever(
    spec: ItemSpec,
    latest: Arc<Mutex<BTreeMap<String, MetadataItem>>>,
    cancel: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            item = items::read_item(&spec) => item,
        };
        if let Some(e) = &item.error {
            tracing::debug!(key = %spec.key, error = %e, "metadata item has no value");
        }
        latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.key.clone(), item);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(spec.interval) => {}
        }
    }
}
