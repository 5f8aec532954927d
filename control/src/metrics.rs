//! The control plane's metrics (Prometheus, on its admin port; see `ferry-telemetry`).
//!
//! Requests are counted by route *template* (`/api/v1/workspaces/{label}`, never the
//! label itself), method and status; requests that match no route count under
//! `unmatched`. Relays by health are read from the store when scraped.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::Unit;

use crate::state::State;

pub const HTTP_REQUESTS: &str = "ferry_control_http_requests_total";
pub const HTTP_DURATION: &str = "ferry_control_http_request_duration_seconds";
pub const HEARTBEATS: &str = "ferry_control_heartbeats_total";
pub const RELAYS: &str = "ferry_control_relays";
pub const STORE_ERRORS: &str = "ferry_control_store_errors_total";
pub const TELEMETRY_REPORTS: &str = "ferry_control_telemetry_reports_total";
pub const TELEMETRY_ROWS: &str = "ferry_control_telemetry_rows_written_total";
pub const TELEMETRY_WRITE: &str = "ferry_control_telemetry_write_seconds";

/// The health values relays are counted by (every one is exported, at zero if empty).
const HEALTHS: [&str; 4] = ["ok", "unhealthy", "unreachable", "draining"];

/// Registers descriptions (after the recorder is installed) and the series that
/// should read zero before anything happens.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "API requests by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "API request handling time by route template and method (long polls included)."
    );
    describe_counter!(HEARTBEATS, Unit::Count, "Relay heartbeats received.");
    describe_gauge!(
        RELAYS,
        Unit::Count,
        "Registered relays by health (ok, unhealthy, unreachable, draining)."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Requests and upkeep that failed on the store (database)."
    );
    describe_counter!(
        TELEMETRY_REPORTS,
        Unit::Count,
        "Agents' telemetry reports stored (resource readings and metadata items)."
    );
    describe_counter!(
        TELEMETRY_ROWS,
        Unit::Count,
        "Rows the telemetry reports upserted: one per reading, one per metadata item."
    );
    describe_histogram!(
        TELEMETRY_WRITE,
        Unit::Seconds,
        "Time one telemetry report spent in the store (its transaction)."
    );
    metrics::counter!(TELEMETRY_REPORTS).increment(0);
    metrics::counter!(TELEMETRY_ROWS).increment(0);
    // Registering (not resetting: a second plane in one process shares the series).
    metrics::counter!(HEARTBEATS).increment(0);
    metrics::counter!(STORE_ERRORS).increment(0);
}

/// Middleware: counts and times every request.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // HTTP allows any token as a method: only the standard ones become label values,
    // so that a client cannot grow the series without bound.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    resp
}

pub(crate) fn heartbeat() {
    metrics::counter!(HEARTBEATS).increment(1);
}

/// One telemetry report stored in `took`: a reading (if `stats`) and `items` items.
pub(crate) fn telemetry_written(took: std::time::Duration, stats: bool, items: usize) {
    metrics::counter!(TELEMETRY_REPORTS).increment(1);
    metrics::counter!(TELEMETRY_ROWS).increment(u64::from(stats) + items as u64);
    metrics::histogram!(TELEMETRY_WRITE).record(took.as_secs_f64());
}

pub(crate) fn store_error() {
    metrics::counter!(STORE_ERRORS).increment(1);
}

/// Sets the relays-by-health gauges from the store (run before each scrape).
pub(crate) async fn refresh_relays(state: Arc<State>) {
    let regions = match state.regions().await {
        Ok(r) => r,
        Err(e) => {
            store_error();
            tracing::warn!(error = %e, "cannot count relays for metrics");
            return;
        }
    };
    let mut counts = [0u32; 4];
    for relay in regions.iter().flat_map(|r| &r.relays) {
        let i = match relay.health {
            Some(ferry_proto::api::RelayHealth::Ok) | None => 0,
            Some(ferry_proto::api::RelayHealth::Unhealthy) => 1,
            Some(ferry_proto::api::RelayHealth::Unreachable) => 2,
            Some(ferry_proto::api::RelayHealth::Draining) => 3,
        };
        counts[i] += 1;
    }
    for (health, n) in HEALTHS.iter().zip(counts) {
        metrics::gauge!(RELAYS, "health" => *health).set(f64::from(n));
    }
}
