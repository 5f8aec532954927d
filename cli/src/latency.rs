//! The CLI's side of region selection: probe the relays of every region (QUIC, else
//! HTTPS), keep the estimates in a cache file beside the config, and order regions
//! nearest first with the same chooser (and hysteresis) as the agent.
//!
//! A command that dials a workspace probes only when the cache is older than
//! [`FRESH_FOR`], and then stops waiting shortly after the first answer (the nearest
//! region answers first; slower ones are measured next time or by `ferry ping`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_latency::{Choice, Policy, Sample, SavedState, Selector};
use ferry_proto::api::{Measurement, MeasurementsRequest, Region, RelayInfo};
use ferry_transport::probe::{ProbeMethod, Prober};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::config::ClientSettings;

/// Cached estimates younger than this are used without probing.
pub const FRESH_FOR: Duration = Duration::from_secs(60);
/// A probe without an answer in this long counts as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes kept per region.
const WINDOW: usize = 10;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    /// Estimates of one network only.
    control_url: String,
    saved_at_ms: u64,
    state: SavedState,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One probe's result.
#[derive(Debug, Clone)]
pub struct Probe {
    pub relay: RelayInfo,
    /// `None`: no answer (lost).
    pub answer: Option<(Duration, ProbeMethod)>,
}

/// The selector with its cache.
pub struct Selection {
    pub selector: Selector,
    /// When the cached estimates were saved (`None`: no usable cache).
    cached_at_ms: Option<u64>,
}

impl Selection {
    /// The selector as the last run left it, following `regions`.
    pub fn load(settings: &ClientSettings, regions: &[Region]) -> Selection {
        let cached = std::fs::read(&settings.latency_cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
            .filter(|c| c.control_url == settings.control_url);
        let mut selector = Selector::new(Policy::default(), settings.region.clone(), WINDOW);
        let mut cached_at_ms = None;
        if let Some(c) = cached {
            selector = selector.restore(c.state);
            cached_at_ms = Some(c.saved_at_ms);
        }
        selector.set_regions(
            regions
                .iter()
                .filter(|r| !r.relays.is_empty())
                .map(|r| r.name.as_str()),
        );
        Selection {
            selector,
            cached_at_ms,
        }
    }

    /// Whether the cache answers without probing: recent, and every region measured.
    pub fn is_fresh(&self) -> bool {
        let recent = self
            .cached_at_ms
            .is_some_and(|at| now_ms().saturating_sub(at) < FRESH_FOR.as_millis() as u64);
        recent && self.selector.rows().iter().all(|r| r.samples > 0)
    }

    /// Records a round: per region the best answer of its relays, lost when every
    /// relay probed in it failed. Regions not probed (cut off) get no sample.
    pub fn record(&mut self, probes: &[Probe]) {
        let mut per_region: BTreeMap<&str, Option<Duration>> = BTreeMap::new();
        for p in probes {
            let best = per_region.entry(p.relay.region.as_str()).or_default();
            if let Some((rtt, _)) = p.answer {
                *best = Some(best.map_or(rtt, |b| b.min(rtt)));
            }
        }
        for (region, best) in per_region {
            self.selector
                .record(region, best.map_or(Sample::Lost, Sample::Rtt));
        }
    }

    /// Chooses and saves the cache (best effort: a read-only config dir only costs
    /// a probe next time).
    pub fn choose_and_save(&mut self, settings: &ClientSettings) -> Choice {
        let choice = self.selector.choose();
        let file = CacheFile {
            control_url: settings.control_url.clone(),
            saved_at_ms: now_ms(),
            state: self.selector.saved(),
        };
        if let Ok(json) = serde_json::to_vec(&file) {
            if let Some(dir) = settings.latency_cache.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = settings.latency_cache.with_extension("tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &settings.latency_cache);
            }
        }
        choice
    }

    /// Region names, the chosen one first, then by estimated RTT.
    pub fn order(&self, choice: &Choice) -> Vec<String> {
        let mut out: Vec<String> = choice.region.iter().cloned().collect();
        for row in self.selector.rows() {
            if !out.contains(&row.name) {
                out.push(row.name);
            }
        }
        out
    }
}

/// Probes every relay once, concurrently. `quick`: stop waiting shortly after the
/// first answer instead of waiting for every probe.
pub async fn probe_round(
    settings: &ClientSettings,
    relays: &[RelayInfo],
    quick: bool,
) -> Result<Vec<Probe>> {
    let prober = std::sync::Arc::new(Prober::new(
        &settings.ca_pem,
        settings.local_ip,
        PROBE_TIMEOUT,
    )?);
    let mut probes = JoinSet::new();
    for relay in relays {
        let prober = prober.clone();
        let relay = relay.clone();
        probes.spawn(async move {
            let answer = match prober.probe(&relay).await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::debug!(relay = %relay.name, error = %e, "probe lost");
                    None
                }
            };
            Probe { relay, answer }
        });
    }
    let started = Instant::now();
    // Every probe ends by itself within two timeouts (QUIC, then HTTPS).
    let mut deadline = tokio::time::Instant::now() + PROBE_TIMEOUT * 2 + Duration::from_millis(100);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            done = probes.join_next() => match done {
                None => break,
                Some(Ok(probe)) => {
                    if quick && probe.answer.is_some() && out.iter().all(|p: &Probe| p.answer.is_none()) {
                        // Regions a little farther than the first still count; much
                        // farther ones cannot be chosen over it anyway.
                        let first = started.elapsed();
                        let grace = (first * 2).max(Duration::from_millis(50));
                        deadline = deadline.min(tokio::time::Instant::now() + grace);
                    }
                    out.push(probe);
                }
                Some(Err(_)) => {}
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    probes.abort_all();
    Ok(out)
}

/// The measurements of a round, for the control plane.
pub fn measurements(
    settings: &ClientSettings,
    selection: &Selection,
    probes: &[Probe],
) -> MeasurementsRequest {
    let at_ms = Some(now_ms());
    MeasurementsRequest {
        samples: probes
            .iter()
            .filter_map(|p| {
                let (rtt, _) = p.answer?;
                let region = selection.selector.estimator(&p.relay.region);
                Some(Measurement {
                    from: format!("client:{}", settings.user),
                    to: format!("relay:{}", p.relay.name),
                    rtt_us: rtt.as_micros() as u64,
                    jitter_us: region.map_or(0, |e| e.jitter().as_micros() as u64),
                    loss: region.map_or(0.0, |e| e.loss()),
                    at_ms,
                })
            })
            .collect(),
    }
}

/// Sends measurements to the control plane, waiting at most `patience`; a control
/// plane without the endpoint (404) or that is down changes nothing.
pub async fn report(settings: &ClientSettings, body: &MeasurementsRequest, patience: Duration) {
    if body.samples.is_empty() {
        return;
    }
    let Ok(control) = ferry_transport::ControlClient::new(&settings.control_url, &settings.ca_pem)
    else {
        return;
    };
    let sent = tokio::time::timeout(
        patience,
        control.post::<_, serde_json::Value>("/api/v1/measurements", Some(&settings.token), body),
    )
    .await;
    if let Ok(Err(e)) = sent {
        tracing::debug!(error = %e, "measurements not accepted");
    }
}

/// Makes the next command probe again (keeping the estimates and the current choice
/// for hysteresis): called when the chosen region's relays did not answer a dial.
pub fn mark_stale(settings: &ClientSettings) {
    let Some(mut cache) = std::fs::read(&settings.latency_cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
    else {
        return;
    };
    cache.saved_at_ms = 0;
    if let Ok(json) = serde_json::to_vec(&cache) {
        let _ = std::fs::write(&settings.latency_cache, json);
    }
}

/// The regions in the order a command should try them: probing first when the
/// cache is stale.
pub async fn nearest_first(settings: &ClientSettings, regions: &[Region]) -> Vec<String> {
    let mut selection = Selection::load(settings, regions);
    let with_relays = regions.iter().filter(|r| !r.relays.is_empty()).count();
    if with_relays > 1 && !selection.is_fresh() {
        let relays: Vec<RelayInfo> = regions.iter().flat_map(|r| r.relays.clone()).collect();
        match probe_round(settings, &relays, true).await {
            Ok(probes) => selection.record(&probes),
            Err(e) => tracing::debug!(error = %e, "cannot probe regions"),
        }
    }
    let choice = selection.choose_and_save(settings);
    tracing::debug!(region = ?choice.region, reason = %choice.reason, "region chosen");
    selection.order(&choice)
}
