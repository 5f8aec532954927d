//! Reading a workspace's telemetry: `GET /api/v1/workspaces/{label}/telemetry` (one
//! document) and `GET .../telemetry/events` (Server-Sent Events, for the dashboard).
//!
//! Live push across replicas: each event stream polls the store for the workspace's
//! change marks every [`POLL`] (two index lookups) and sends an event only when they
//! moved. A reading written through any replica therefore reaches viewers on every
//! replica within a second, on SQLite and PostgreSQL alike, at a cost bounded by the
//! number of open viewers ([`MAX_STREAMS`] a replica), not by the number of agents.
//! (PostgreSQL LISTEN/NOTIFY would save the polls but needs a connection held per
//! replica, a second code path for SQLite, and a NOTIFY on every agent write: at 10k
//! agents that is 1000 notifications a second that nobody may be watching.)
//!
//! A stream ends when the server stops (`State::stopping`), when the client goes, or
//! after [`MAX_STREAM_AGE`]: the browser's `EventSource` reconnects by itself, which
//! checks the session again (a revoked session or a deleted workspace stops there).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use ferry_proto::api::WorkspaceTelemetryResponse;
use ferry_proto::token::TokenKind;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::workspaces::owned;
use super::{authorize, now_ms, ApiError, ApiResult};
use crate::state::State;
use crate::store::{Store, TelemetryMarks};
use crate::telemetry::snapshot;

/// How often an open event stream looks at the store for news.
pub const POLL: Duration = Duration::from_secs(1);
/// Event streams a replica holds open at once; more are refused with 503.
pub const MAX_STREAMS: usize = 1024;
/// A stream ends after this long; the browser reconnects (and is authorized again).
pub const MAX_STREAM_AGE: Duration = Duration::from_secs(300);
/// The browser's reconnect delay after a stream ends.
const RETRY: Duration = Duration::from_secs(1);

const USER_OR_ADMIN: &[TokenKind] = &[TokenKind::User, TokenKind::Admin];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryQuery {
    /// Only readings received at or after this Unix ms time (at most 15 minutes ago).
    since_ms: Option<i64>,
}

pub(crate) async fn telemetry(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
    query: Result<Query<TelemetryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<WorkspaceTelemetryResponse> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ws = owned(&state, &claims, &label).await?;
    let now = now_ms();
    let doc = snapshot(
        state.store(),
        &ws.label,
        query.since_ms.unwrap_or(i64::MIN),
        now,
    )
    .await?;
    Ok(Json(doc))
}

pub(crate) async fn events(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let claims = authorize(&state, &headers, USER_OR_ADMIN).await?;
    let ws = owned(&state, &claims, &label).await?;
    let permit = state
        .telemetry_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "this control plane serves {MAX_STREAMS} live views at most; try again shortly"
                ),
            )
        })?;
    let watch = Watch {
        store: state.store().clone(),
        workspace: ws.label,
        stopping: state.stopping.clone(),
        ends_at: tokio::time::Instant::now() + MAX_STREAM_AGE,
        marks: None,
        last_at_ms: None,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<_, Infallible>(event), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One open event stream: what it sent last, so it sends only news.
struct Watch {
    store: Store,
    workspace: String,
    stopping: CancellationToken,
    ends_at: tokio::time::Instant,
    /// The change marks at the last event; `None` before the first.
    marks: Option<TelemetryMarks>,
    /// The newest reading sent, so later events carry only newer points.
    last_at_ms: Option<i64>,
    /// Holds one of the replica's [`MAX_STREAMS`] places while the stream is open.
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    /// The next event: a `snapshot` at once, then an `update` whenever the store has
    /// news; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.marks.is_some() {
                tokio::select! {
                    _ = self.stopping.cancelled() => return None,
                    _ = tokio::time::sleep_until(self.ends_at) => return None,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            let marks = match self.store.telemetry_marks(&self.workspace).await {
                Ok(m) => m,
                Err(e) => {
                    // The database may be back at the next poll; the viewer just
                    // sees no news meanwhile.
                    crate::metrics::store_error();
                    tracing::warn!(workspace = %self.workspace, error = %e, "telemetry stream: reading the store failed");
                    // Before the first event, a failed read ends the stream.
                    self.marks?;
                    continue;
                }
            };
            let first = self.marks.is_none();
            if !first && self.marks == Some(marks) {
                continue;
            }
            let since = self.last_at_ms.map_or(i64::MIN, |t| t + 1);
            let doc = match snapshot(&self.store, &self.workspace, since, now_ms()).await {
                Ok(doc) => doc,
                Err(e) => {
                    crate::metrics::store_error();
                    tracing::warn!(workspace = %self.workspace, error = %e, "telemetry stream: reading the store failed");
                    if first {
                        return None;
                    }
                    continue;
                }
            };
            self.marks = Some(marks);
            if let Some(last) = doc.history.last() {
                self.last_at_ms = Some(last.at_ms);
            }
            let event = Event::default()
                .event(if first { "snapshot" } else { "update" })
                .json_data(&doc)
                .ok()?;
            return Some(if first { event.retry(RETRY) } else { event });
        }
    }
}
