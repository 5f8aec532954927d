//! Latency measurements without I/O: who may report which sample, the one-minute
//! rollup, which series a caller may see, and the region-by-region matrix.
//!
//! Retention: raw samples live [`RAW_RETENTION_MS`] (an hour), one-minute buckets
//! (median, maximum, count) [`MINUTE_RETENTION_MS`] (a day). The maintenance task in
//! [`crate::server`] rolls minutes up once they are [`ROLLUP_DELAY_MS`] old and prunes
//! both; a sample older than [`MAX_SAMPLE_AGE_MS`] could land in a minute already
//! rolled up, so it is dropped (and counted as stale) rather than stored.

use std::collections::{BTreeMap, HashMap};

use ferry_proto::api::{
    LatencyMatrixResponse, LatencyPoint, LatencySeries, Measurement, MeshLink, RegionLatency,
};
use ferry_proto::token::TokenKind;
use ferry_proto::WorkspaceLabel;

use crate::store::{MeasurementRow, MinuteRow};

/// Samples one report may carry.
pub const MAX_BATCH: usize = 500;
/// Round-trip times above a minute are not latency but an outage.
pub const MAX_RTT_US: u64 = 60_000_000;
/// How far in the future a sample's clock may be.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
pub const MINUTE_MS: u64 = 60_000;
pub const RAW_RETENTION_MS: u64 = 3600 * 1000;
pub const MINUTE_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// A minute is rolled up once it ended this long ago.
pub const ROLLUP_DELAY_MS: u64 = 3 * MINUTE_MS;
/// Older samples are stale: their minute may already be rolled up.
pub const MAX_SAMPLE_AGE_MS: u64 = 2 * MINUTE_MS;
/// Mesh links measured longer ago than this are left out of the matrix.
pub const MATRIX_WINDOW_MS: u64 = 2 * MINUTE_MS;
/// Relay load history is kept this long.
pub const LOAD_RETENTION_MS: u64 = RAW_RETENTION_MS;

/// One end of a measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Agent(WorkspaceLabel),
    Relay(String),
    Client(String),
    Browser(String),
}

impl Endpoint {
    /// Parses `agent:LABEL`, `relay:NAME`, `client:USER` or `browser:USER`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let shown: String = s.chars().take(80).collect();
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("`{shown}` is not KIND:NAME (agent:, relay:, client:, browser:)")
        })?;
        let name = |rest: &str| {
            ferry_proto::label::validate_name(rest)
                .map(|_| rest.to_string())
                .map_err(|e| format!("`{shown}`: {e}"))
        };
        match kind {
            "agent" => WorkspaceLabel::parse(rest)
                .map(Endpoint::Agent)
                .map_err(|e| format!("`{shown}`: {e}")),
            "relay" => name(rest).map(Endpoint::Relay),
            "client" => name(rest).map(Endpoint::Client),
            "browser" => name(rest).map(Endpoint::Browser),
            _ => Err(format!(
                "`{shown}`: unknown kind `{kind}` (agent:, relay:, client:, browser:)"
            )),
        }
    }

    /// The user this endpoint belongs to; none for the network's own relays.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Endpoint::Agent(label) => Some(label.owner()),
            Endpoint::Relay(_) => None,
            Endpoint::Client(user) | Endpoint::Browser(user) => Some(user),
        }
    }
}

/// Who sends a report, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reporter {
    Agent(String),
    Relay(String),
    User(String),
}

impl Reporter {
    pub fn new(kind: TokenKind, subject: &str) -> Option<Reporter> {
        match kind {
            TokenKind::Agent => Some(Reporter::Agent(subject.to_string())),
            TokenKind::Relay => Some(Reporter::Relay(subject.to_string())),
            TokenKind::User => Some(Reporter::User(subject.to_string())),
            _ => None,
        }
    }

    fn may_report_from(&self, from: &Endpoint) -> bool {
        match (self, from) {
            (Reporter::Agent(me), Endpoint::Agent(label)) => label.as_str() == me,
            (Reporter::Relay(me), Endpoint::Relay(name)) => name == me,
            (Reporter::User(me), Endpoint::Client(user) | Endpoint::Browser(user)) => user == me,
            _ => false,
        }
    }

    fn allowed_from(&self) -> String {
        match self {
            Reporter::Agent(me) => format!("`agent:{me}`"),
            Reporter::Relay(me) => format!("`relay:{me}`"),
            Reporter::User(me) => format!("`client:{me}` or `browser:{me}`"),
        }
    }
}

/// What became of one reported sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Store(MeasurementRow),
    /// Too old to store (see [`MAX_SAMPLE_AGE_MS`]).
    Stale,
}

/// Checks one sample of a report from `reporter`, received at `now_ms`. The error
/// says what is wrong with it, for a 400.
pub fn check_sample(
    reporter: &Reporter,
    sample: &Measurement,
    now_ms: u64,
) -> Result<Checked, String> {
    let from = Endpoint::parse(&sample.from).map_err(|e| format!("from: {e}"))?;
    if !reporter.may_report_from(&from) {
        return Err(format!(
            "from: this token may only report samples from {}",
            reporter.allowed_from()
        ));
    }
    let to = Endpoint::parse(&sample.to).map_err(|e| format!("to: {e}"))?;
    match (&from, &to) {
        (_, Endpoint::Relay(_)) => {}
        (Endpoint::Relay(_), Endpoint::Agent(_)) => {}
        _ => {
            return Err(
                "to: samples are towards a relay (`relay:NAME`), or from a relay to an agent"
                    .into(),
            )
        }
    }
    if from == to {
        return Err("to: a sample from an endpoint to itself".into());
    }
    if sample.rtt_us > MAX_RTT_US || sample.jitter_us > MAX_RTT_US {
        return Err(format!(
            "rtt_us and jitter_us must be at most {MAX_RTT_US} (a minute)"
        ));
    }
    if !(0.0..=1.0).contains(&sample.loss) {
        return Err("loss must be a fraction between 0 and 1".into());
    }
    let at_ms = sample.at_ms.unwrap_or(now_ms);
    if at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(format!(
            "at_ms {at_ms} is more than a minute in the future (control plane time {now_ms}); check the reporter's clock"
        ));
    }
    if at_ms < now_ms.saturating_sub(MAX_SAMPLE_AGE_MS) {
        return Ok(Checked::Stale);
    }
    Ok(Checked::Store(MeasurementRow {
        source: sample.from.clone(),
        target: sample.to.clone(),
        at_ms: clamp_i64(at_ms.min(now_ms)),
        rtt_us: clamp_i64(sample.rtt_us),
        jitter_us: clamp_i64(sample.jitter_us),
        loss_ppm: (f64::from(sample.loss) * 1e6).round() as i64,
    }))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Who reads series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Admin,
    User(String),
}

impl Viewer {
    /// Whether the series between `source` and `target` may be shown: an admin sees
    /// everything, a user the relays' own series and those naming them or their
    /// workspaces, never another tenant's.
    pub fn may_see(&self, source: &str, target: &str) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(me) => [source, target].iter().all(|end| {
                match Endpoint::parse(end) {
                    Ok(e) => e.tenant().is_none_or(|owner| owner == me),
                    // Only checked endpoints are stored; refuse anything else.
                    Err(_) => false,
                }
            }),
        }
    }
}

/// Rolls raw samples up into one-minute buckets: median (the lower middle sample),
/// maximum, count, and mean jitter and loss, per pair and minute.
pub fn rollup(rows: &[MeasurementRow]) -> Vec<MinuteRow> {
    let mut groups: BTreeMap<(&str, &str, i64), Vec<&MeasurementRow>> = BTreeMap::new();
    for row in rows {
        let minute = row.at_ms - row.at_ms.rem_euclid(MINUTE_MS as i64);
        groups
            .entry((&row.source, &row.target, minute))
            .or_default()
            .push(row);
    }
    groups
        .into_iter()
        .map(|((source, target, minute_ms), samples)| {
            let mut rtts: Vec<i64> = samples.iter().map(|s| s.rtt_us).collect();
            rtts.sort_unstable();
            let n = samples.len() as i64;
            MinuteRow {
                source: source.to_string(),
                target: target.to_string(),
                minute_ms,
                samples: n,
                p50_us: rtts[(rtts.len() - 1) / 2],
                max_us: rtts[rtts.len() - 1],
                jitter_us: samples.iter().map(|s| s.jitter_us).sum::<i64>() / n,
                loss_ppm: samples.iter().map(|s| s.loss_ppm).sum::<i64>() / n,
            }
        })
        .collect()
}

/// Raw samples (sorted by pair and time) as series.
pub fn raw_series(rows: Vec<MeasurementRow>) -> Vec<LatencySeries> {
    let mut series: Vec<LatencySeries> = Vec::new();
    for row in rows {
        let point = LatencyPoint {
            at_ms: u64_of(row.at_ms),
            rtt_us: u64_of(row.rtt_us),
            max_us: u64_of(row.rtt_us),
            samples: 1,
            jitter_us: u64_of(row.jitter_us),
            loss: row.loss_ppm as f32 / 1e6,
        };
        push_point(&mut series, &row.source, &row.target, point);
    }
    series
}

/// One-minute series: stored buckets, and buckets rolled up from raw samples for the
/// minutes not stored yet (the last few).
pub fn minute_series(stored: Vec<MinuteRow>, recent_raw: &[MeasurementRow]) -> Vec<LatencySeries> {
    let mut buckets: BTreeMap<(String, String, i64), MinuteRow> = stored
        .into_iter()
        .map(|m| ((m.source.clone(), m.target.clone(), m.minute_ms), m))
        .collect();
    for m in rollup(recent_raw) {
        buckets
            .entry((m.source.clone(), m.target.clone(), m.minute_ms))
            .or_insert(m);
    }
    let mut series = Vec::new();
    for ((source, target, _), m) in buckets {
        let point = LatencyPoint {
            at_ms: u64_of(m.minute_ms),
            rtt_us: u64_of(m.p50_us),
            max_us: u64_of(m.max_us),
            samples: u32::try_from(m.samples).unwrap_or(u32::MAX),
            jitter_us: u64_of(m.jitter_us),
            loss: m.loss_ppm as f32 / 1e6,
        };
        push_point(&mut series, &source, &target, point);
    }
    series
}

fn push_point(series: &mut Vec<LatencySeries>, source: &str, target: &str, point: LatencyPoint) {
    match series.last_mut() {
        Some(s) if s.from == source && s.to == target => s.points.push(point),
        _ => series.push(LatencySeries {
            from: source.to_string(),
            to: target.to_string(),
            points: vec![point],
        }),
    }
}

/// The latest mesh samples as a matrix. `region_of` maps relay names to regions;
/// links between relays it does not know (since removed) are left out.
pub fn matrix(
    latest: Vec<MeasurementRow>,
    region_of: &HashMap<String, String>,
) -> LatencyMatrixResponse {
    let mut regions: Vec<String> = region_of.values().cloned().collect();
    regions.sort();
    regions.dedup();
    let mut links = Vec::new();
    for row in latest {
        let (Some(from), Some(to)) = (
            row.source.strip_prefix("relay:"),
            row.target.strip_prefix("relay:"),
        ) else {
            continue;
        };
        let (Some(from_region), Some(to_region)) = (region_of.get(from), region_of.get(to)) else {
            continue;
        };
        links.push(MeshLink {
            from: from.to_string(),
            to: to.to_string(),
            from_region: from_region.clone(),
            to_region: to_region.clone(),
            rtt_us: u64_of(row.rtt_us),
            at_ms: u64_of(row.at_ms),
        });
    }
    links.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    let mut by_regions: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for link in &links {
        by_regions
            .entry((&link.from_region, &link.to_region))
            .or_default()
            .push(link.rtt_us);
    }
    let cells = by_regions
        .into_iter()
        .map(|((from, to), mut rtts)| {
            rtts.sort_unstable();
            RegionLatency {
                from: from.to_string(),
                to: to.to_string(),
                rtt_us: rtts[(rtts.len() - 1) / 2],
                links: u32::try_from(rtts.len()).unwrap_or(u32::MAX),
            }
        })
        .collect();
    LatencyMatrixResponse {
        regions,
        cells,
        links,
    }
}

#[cfg(test)]
mod tests;
