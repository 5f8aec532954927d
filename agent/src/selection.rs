//! Choosing the agent's home region: a task that probes every region of the region map
//! (one relay each, taking turns) each `probe_interval` and whenever the map changes
//! (QUIC, falling back to HTTPS), keeps a windowed estimate per
//! region and publishes the chooser's pick (with hysteresis, honouring `--region` as
//! a pin with fallback; see `ferry-latency`). The agent's main loop places itself in
//! the chosen region, so a new pick re-homes it through the make-before-break move.
//!
//! Probe results are reported to the control plane now and then, best effort: a
//! control plane without the measurements endpoint, or one that is down, changes
//! nothing here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_latency::{Policy, Sample, Selector};
use ferry_proto::api::{Measurement, MeasurementsRequest, RelayInfo};
use ferry_transport::probe::Prober;
use ferry_transport::ControlClient;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Probes kept per region.
const WINDOW: usize = 10;
/// Rounds probed back to back before the first choice: one sample can be a stall of
/// this machine or of a relay, and the first choice sticks (hysteresis).
const WARMUP_ROUNDS: u32 = 3;

/// What the prober publishes: `None` until its first round; then the chosen region,
/// `Some(None)` when no region answered.
pub(crate) type Published = Option<Option<String>>;

pub(crate) struct SelectionSetup {
    pub ca_pem: String,
    pub token: String,
    pub workspace: String,
    pub pin: Option<String>,
    pub local_ip: Option<IpAddr>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Runs until cancelled. `relays` follows the region map (in-service relays only).
pub(crate) async fn run(
    setup: SelectionSetup,
    control: ControlClient,
    mut relays: watch::Receiver<Vec<RelayInfo>>,
    chosen: watch::Sender<Published>,
    cancel: CancellationToken,
) {
    let prober = match Prober::new(&setup.ca_pem, setup.local_ip, setup.timeout) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            // Without probes the agent keeps its pin or the first region.
            tracing::warn!(error = %e, "cannot probe regions; staying in the configured region");
            chosen.send_replace(Some(None));
            return;
        }
    };
    let mut selector = Selector::new(Policy::default(), setup.pin.clone(), WINDOW);
    let mut reports: JoinSet<()> = JoinSet::new();
    let mut rounds = 0u32;
    'rounds: loop {
        let current: Vec<RelayInfo> = relays.borrow_and_update().clone();
        if !current.is_empty() {
            let samples = probe_round(&prober, probe_plan(&current, rounds)).await;
            selector.set_regions(current.iter().map(|r| r.region.as_str()));
            let mut per_region: BTreeMap<&str, Option<Duration>> = BTreeMap::new();
            for relay in &current {
                let best = per_region.entry(relay.region.as_str()).or_default();
                if let Some(Some(rtt)) = samples.get(&relay.name) {
                    *best = Some(best.map_or(*rtt, |b: Duration| b.min(*rtt)));
                }
            }
            for (region, best) in &per_region {
                selector.record(region, best.map_or(Sample::Lost, Sample::Rtt));
            }
            rounds = rounds.saturating_add(1);
            if rounds < WARMUP_ROUNDS {
                // Straight on to the next round.
                if cancel.is_cancelled() {
                    break;
                }
                continue;
            }
            let choice = selector.choose();
            let region = choice.region.as_deref().unwrap_or("none");
            if choice.changed {
                tracing::info!(workspace = %setup.workspace, region, reason = %choice.reason, "home region chosen");
            } else {
                tracing::debug!(region, reason = %choice.reason, "home region kept");
            }
            chosen.send_if_modified(|p| {
                let next = Some(choice.region.clone());
                let changed = *p != next;
                *p = next;
                changed
            });
            if reports.is_empty() {
                let body = measurements(&setup.workspace, &current, &samples, &selector);
                reports.spawn(report(control.clone(), setup.token.clone(), body));
            }
        }
        // Agents started together should not probe in step: ±10% on each interval.
        let spread = setup.interval / 10;
        let next_round = tokio::time::Instant::now() + setup.interval - spread
            + spread.mul_f64(2.0 * fastrand::f64());
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'rounds,
                Some(_) = reports.join_next(), if !reports.is_empty() => {}
                // A new map (the first one, a region gone or back): probe at once.
                Ok(()) = relays.changed() => break,
                _ = tokio::time::sleep_until(next_round), if !current.is_empty() => break,
            }
        }
    }
    reports.shutdown().await;
}

/// Which relays a round probes, per region: one, taking turns round by round, and the
/// region's others as fallbacks in order when it does not answer. A region's relays
/// share a site, so one answer measures the region; probing all of them every round
/// cost every relay a QUIC handshake per agent and region relay each interval (at
/// 10k agents and 3 relays a region, about 700 handshakes a second per relay).
fn probe_plan(relays: &[RelayInfo], round: u32) -> BTreeMap<String, Vec<RelayInfo>> {
    let mut plan: BTreeMap<String, Vec<RelayInfo>> = BTreeMap::new();
    for relay in relays {
        plan.entry(relay.region.clone())
            .or_default()
            .push(relay.clone());
    }
    for candidates in plan.values_mut() {
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        let first = round as usize % candidates.len();
        candidates.rotate_left(first);
    }
    plan
}

/// Probes every region at once, each through the relays of its plan in turn until one
/// answers; `None` for a relay that did not answer, nothing for relays not tried.
async fn probe_round(
    prober: &Arc<Prober>,
    plan: BTreeMap<String, Vec<RelayInfo>>,
) -> BTreeMap<String, Option<Duration>> {
    let mut probes = JoinSet::new();
    for candidates in plan.into_values() {
        let prober = prober.clone();
        probes.spawn(async move {
            let mut tried = Vec::new();
            for relay in candidates {
                match prober.probe(&relay).await {
                    Ok((rtt, _)) => {
                        tried.push((relay.name, Some(rtt)));
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(relay = %relay.name, error = %e, "probe lost");
                        tried.push((relay.name, None));
                    }
                }
            }
            tried
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = probes.join_next().await {
        if let Ok(tried) = done {
            out.extend(tried);
        }
    }
    out
}

/// The round's answered probes, each with its region's jitter and loss.
fn measurements(
    workspace: &str,
    relays: &[RelayInfo],
    samples: &BTreeMap<String, Option<Duration>>,
    selector: &Selector,
) -> MeasurementsRequest {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .ok();
    MeasurementsRequest {
        samples: relays
            .iter()
            .filter_map(|relay| {
                let rtt = (*samples.get(&relay.name)?)?;
                let region = selector.estimator(&relay.region);
                Some(Measurement {
                    from: format!("agent:{workspace}"),
                    to: format!("relay:{}", relay.name),
                    rtt_us: rtt.as_micros() as u64,
                    jitter_us: region.map_or(0, |e| e.jitter().as_micros() as u64),
                    loss: region.map_or(0.0, |e| e.loss()),
                    at_ms,
                })
            })
            .collect(),
    }
}

/// Sends measurements to the control plane; failures are only logged.
async fn report(control: ControlClient, token: String, body: MeasurementsRequest) {
    if body.samples.is_empty() {
        return;
    }
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        control.post::<_, serde_json::Value>("/api/v1/measurements", Some(&token), &body),
    )
    .await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "measurements not accepted"),
        Err(_) => tracing::debug!("measurements report timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(name: &str, region: &str) -> RelayInfo {
        RelayInfo {
            name: name.into(),
            region: region.into(),
            quic_addr: "127.0.0.1:1".into(),
            server_name: "localhost".into(),
            health: None,
            incarnation: 0,
            https_url: None,
        }
    }

    #[test]
    fn each_round_probes_one_relay_per_region_taking_turns_with_the_rest_as_fallbacks() {
        let relays = [
            relay("eu-2", "eu"),
            relay("us-1", "us"),
            relay("eu-1", "eu"),
            relay("eu-3", "eu"),
        ];
        let names = |plan: &BTreeMap<String, Vec<RelayInfo>>, region: &str| -> Vec<String> {
            plan[region].iter().map(|r| r.name.clone()).collect()
        };
        let firsts: Vec<String> = (0..6)
            .map(|round| {
                let plan = probe_plan(&relays, round);
                assert_eq!(plan.len(), 2, "one entry per region");
                assert_eq!(names(&plan, "us"), ["us-1"]);
                let eu = names(&plan, "eu");
                let mut all = eu.clone();
                all.sort();
                assert_eq!(all, ["eu-1", "eu-2", "eu-3"], "every relay is a fallback");
                eu[0].clone()
            })
            .collect();
        assert_eq!(firsts, ["eu-1", "eu-2", "eu-3", "eu-1", "eu-2", "eu-3"]);
        // Fallbacks keep the ring of names: after eu-2 come eu-3, then eu-1.
        assert_eq!(
            names(&probe_plan(&relays, 1), "eu"),
            ["eu-2", "eu-3", "eu-1"]
        );
    }
}
