//! Latency measurements and relay load: reports in, series out.
//!
//! Reports (`POST /api/v1/measurements`) come from agents, relays and users (their CLI
//! or the dashboard page), each only about itself. Reads are for users and admins; a
//! user sees the relays' own series and those naming them or their workspaces, and a
//! workspace that is not theirs answers `unknown_workspace`, like everywhere else.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::HeaderMap;
use axum::Json;
use ferry_proto::api::*;
use ferry_proto::token::{Claims, TokenKind};

use super::{authorize, body, ApiError, ApiResult};
use crate::measurements::{self as m, Checked, Reporter, Viewer};
use crate::state::State;
use crate::store::{RelayLoadRow, SeriesFilter};

/// A report's body: [`m::MAX_BATCH`] samples of ~150 bytes each, with room to spare.
pub const MAX_REPORT_BODY: usize = 256 * 1024;

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn viewer(claims: &Claims) -> Viewer {
    match claims.kind {
        TokenKind::Admin => Viewer::Admin,
        _ => Viewer::User(claims.sub.clone()),
    }
}

const READERS: &[TokenKind] = &[TokenKind::User, TokenKind::Admin];

/// `POST /api/v1/measurements`.
pub(crate) async fn report(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    req: Result<Json<MeasurementsRequest>, JsonRejection>,
) -> ApiResult<MeasurementsResponse> {
    let claims = authorize(
        &state,
        &headers,
        &[TokenKind::Agent, TokenKind::Relay, TokenKind::User],
    )
    .await?;
    let req = body(req)?;
    let Some(reporter) = Reporter::new(claims.kind, &claims.sub) else {
        return Err(ApiError::forbidden(
            "this token kind reports no measurements",
        ));
    };
    if req.samples.len() > m::MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "samples: at most {} per report, got {}; send several reports",
            m::MAX_BATCH,
            req.samples.len()
        )));
    }
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let mut rows = Vec::with_capacity(req.samples.len());
    let mut stale = 0u32;
    for (i, sample) in req.samples.iter().enumerate() {
        match m::check_sample(&reporter, sample, now) {
            Ok(Checked::Store(row)) => rows.push(row),
            Ok(Checked::Stale) => stale += 1,
            Err(why) => return Err(ApiError::bad_request(format!("samples[{i}].{why}"))),
        }
    }
    // Towards a relay the network does not know: a typo or a removed relay.
    let known: std::collections::HashSet<String> = state
        .store()
        .relays()
        .await?
        .into_iter()
        .map(|r| format!("relay:{}", r.name))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        for end in [&row.source, &row.target] {
            if end.starts_with("relay:") && !known.contains(end) {
                return Err(ApiError::bad_request(format!(
                    "samples[{i}]: `{end}` is not a relay of this network"
                )));
            }
        }
    }
    state.store().insert_measurements(&rows).await?;
    Ok(Json(MeasurementsResponse {
        stored: u32::try_from(rows.len()).unwrap_or(u32::MAX),
        stale,
    }))
}

/// Query of the series endpoints.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    /// Unix milliseconds; default an hour ago, at most a day ago.
    since: Option<i64>,
    /// `raw` or `minute`; default raw for the last hour, minute before that.
    resolution: Option<Resolution>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The start time and resolution a query asks for.
fn window(since: Option<i64>, resolution: Option<Resolution>) -> (i64, Resolution) {
    let now = now_ms();
    let since = since
        .unwrap_or(now - m::RAW_RETENTION_MS as i64)
        .max(now - m::MINUTE_RETENTION_MS as i64);
    let resolution = resolution.unwrap_or(if since >= now - m::RAW_RETENTION_MS as i64 {
        Resolution::Raw
    } else {
        Resolution::Minute
    });
    (since, resolution)
}

/// Series matching `filters` (their union), at `resolution`, that `viewer` may see.
async fn read_series(
    state: &State,
    filters: &[SeriesFilter<'_>],
    since: i64,
    resolution: Resolution,
    viewer: &Viewer,
) -> Result<Vec<LatencySeries>, ApiError> {
    let mut out = Vec::new();
    for filter in filters {
        let raw_since = match resolution {
            Resolution::Raw => since,
            // Recent minutes not rolled up yet come from the raw samples.
            Resolution::Minute => {
                since.max(now_ms() - (m::ROLLUP_DELAY_MS + 2 * m::MINUTE_MS) as i64)
            }
        };
        let mut raw = state.store().measurements(*filter, raw_since).await?;
        raw.retain(|r| viewer.may_see(&r.source, &r.target));
        let series = match resolution {
            Resolution::Raw => m::raw_series(raw),
            Resolution::Minute => {
                let mut stored = state.store().minutes(*filter, since).await?;
                stored.retain(|r| viewer.may_see(&r.source, &r.target));
                m::minute_series(stored, &raw)
            }
        };
        out.extend(series);
    }
    out.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    out.dedup_by(|a, b| a.from == b.from && a.to == b.to);
    Ok(out)
}

/// `GET /api/v1/measurements?from=&to=&since=&resolution=`.
pub(crate) async fn series(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> ApiResult<MeasurementsSeriesResponse> {
    let claims = authorize(&state, &headers, READERS).await?;
    let q = query(q)?;
    for end in [&q.from, &q.to].into_iter().flatten() {
        m::Endpoint::parse(end).map_err(ApiError::bad_request)?;
    }
    let (since, resolution) = window(q.since, q.resolution);
    let viewer = viewer(&claims);
    let mut filters = vec![SeriesFilter {
        source: q.from.as_deref(),
        target: q.to.as_deref(),
        ..Default::default()
    }];
    // A user asking for everything gets what they may see, read as such: the mesh,
    // their own clients, their workspaces' agents (not every tenant's rows, filtered).
    let mut ends: Vec<String> = Vec::new();
    if let (Viewer::User(user), None, None) = (&viewer, &q.from, &q.to) {
        ends.push(format!("client:{user}"));
        ends.push(format!("browser:{user}"));
        for ws in state.store().workspaces(Some(user)).await? {
            ends.push(format!("agent:{}", ws.label));
        }
    }
    if !ends.is_empty() {
        filters = vec![SeriesFilter {
            source_prefix: Some("relay:"),
            target_prefix: Some("relay:"),
            ..Default::default()
        }];
        for (i, end) in ends.iter().enumerate() {
            filters.push(SeriesFilter {
                source: Some(end),
                ..Default::default()
            });
            // Agents are measured by relays too.
            if i >= 2 {
                filters.push(SeriesFilter {
                    target: Some(end),
                    ..Default::default()
                });
            }
        }
    }
    let series = read_series(&state, &filters, since, resolution, &viewer).await?;
    Ok(Json(MeasurementsSeriesResponse { resolution, series }))
}

/// Each known relay's region, by relay name.
async fn region_of_relays(state: &State) -> Result<HashMap<String, String>, ApiError> {
    Ok(state
        .store()
        .relays()
        .await?
        .into_iter()
        .map(|r| (r.name, r.region))
        .collect())
}

/// `GET /api/v1/measurements/matrix`.
pub(crate) async fn matrix(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> ApiResult<LatencyMatrixResponse> {
    authorize(&state, &headers, READERS).await?;
    let region_of = region_of_relays(&state).await?;
    let latest = state
        .store()
        .latest_mesh(now_ms() - m::MATRIX_WINDOW_MS as i64)
        .await?;
    Ok(Json(m::matrix(latest, &region_of)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinceQuery {
    since: Option<i64>,
    resolution: Option<Resolution>,
}

/// `GET /api/v1/workspaces/{label}/latency?since=`: the owner's clients to relays, the
/// mesh towards the relays holding the agent, and relay ↔ agent.
pub(crate) async fn workspace_latency(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
    q: Result<Query<SinceQuery>, QueryRejection>,
) -> ApiResult<WorkspaceLatencyResponse> {
    let claims = authorize(&state, &headers, READERS).await?;
    let ws = super::workspaces::owned(&state, &claims, &label).await?;
    let q = query(q)?;
    let (since, resolution) = window(q.since, q.resolution);
    let relays = state.store().directory(&ws.label).await?;
    let agent = format!("agent:{}", ws.label);
    let client = format!("client:{}", ws.owner);
    let browser = format!("browser:{}", ws.owner);
    let relay_ends: Vec<String> = relays.iter().map(|r| format!("relay:{r}")).collect();
    let by_source = |s| SeriesFilter {
        source: Some(s),
        ..Default::default()
    };
    let mut filters = vec![
        by_source(&client),
        by_source(&browser),
        by_source(&agent),
        SeriesFilter {
            target: Some(&agent),
            ..Default::default()
        },
    ];
    for end in &relay_ends {
        filters.push(SeriesFilter {
            target: Some(end),
            source_prefix: Some("relay:"),
            ..Default::default()
        });
    }
    // The workspace's own series: an admin reads them all, the owner may see each.
    let series = read_series(&state, &filters, since, resolution, &viewer(&claims)).await?;
    let hops = series
        .into_iter()
        .map(|s| {
            let hop = if s.from == agent || s.to == agent {
                Hop::Agent
            } else if s.from.starts_with("relay:") {
                Hop::Mesh
            } else {
                Hop::Client
            };
            HopSeries { hop, series: s }
        })
        .collect();
    Ok(Json(WorkspaceLatencyResponse {
        workspace: ws.label,
        relays,
        resolution,
        hops,
    }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadQuery {
    since: Option<i64>,
}

/// `GET /api/v1/relays/load?since=`.
pub(crate) async fn relay_load(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    q: Result<Query<LoadQuery>, QueryRejection>,
) -> ApiResult<RelayLoadResponse> {
    authorize(&state, &headers, READERS).await?;
    let q = query(q)?;
    let now = now_ms();
    let since = q
        .since
        .unwrap_or(now - 15 * m::MINUTE_MS as i64)
        .max(now - m::LOAD_RETENTION_MS as i64);
    let region_of = region_of_relays(&state).await?;
    let mut relays: Vec<RelayLoad> = Vec::new();
    for row in state.store().relay_load(since).await? {
        let point = RelayLoadPoint {
            at_ms: u64::try_from(row.at_ms).unwrap_or(0),
            agents: u64::try_from(row.agents).unwrap_or(0),
            streams: u64::try_from(row.streams).unwrap_or(0),
            bytes: u64::try_from(row.bytes).unwrap_or(0),
        };
        match relays.last_mut() {
            Some(r) if r.relay == row.relay => r.points.push(point),
            _ => {
                let Some(region) = region_of.get(&row.relay) else {
                    continue;
                };
                relays.push(RelayLoad {
                    relay: row.relay,
                    region: region.clone(),
                    points: vec![point],
                })
            }
        }
    }
    Ok(Json(RelayLoadResponse { relays }))
}

/// Records a relay's load from its heartbeat: at most every [`LOAD_EVERY_MS`] per relay
/// (relays beat every couple of seconds, on two paths), or sooner when its agents or
/// streams changed, so that the charts show a change at once.
pub(crate) async fn record_load(
    state: &State,
    relay: &str,
    req: &HeartbeatRequest,
) -> Result<(), ApiError> {
    let now = now_ms();
    {
        let mut marks = state.load_marks.lock().unwrap_or_else(|p| p.into_inner());
        let counts = (req.agents, req.streams);
        if marks
            .get(relay)
            .is_some_and(|(last, seen)| now - *last < LOAD_EVERY_MS && *seen == counts)
        {
            return Ok(());
        }
        marks.insert(relay.to_string(), (now, counts));
    }
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    state
        .store()
        .insert_relay_load(&RelayLoadRow {
            relay: relay.to_string(),
            at_ms: now,
            agents: clamp(req.agents),
            streams: clamp(req.streams),
            bytes: clamp(req.bytes),
        })
        .await?;
    Ok(())
}

/// Least time between two load rows of one relay.
const LOAD_EVERY_MS: i64 = 5_000;
