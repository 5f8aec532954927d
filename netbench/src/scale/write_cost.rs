//! What the agents' telemetry reports cost the control plane, from its own metrics
//! (its admin port's `/metrics`, read before and after the traffic phase): reports
//! and rows written a second, the store time per report, and the share of wall time
//! the store spent on them (summed over concurrent writes, so it can pass 100 %).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The control plane's counters that matter here, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ControlWrites {
    pub reports: f64,
    pub rows: f64,
    pub store_seconds: f64,
    pub store_count: f64,
    /// The report endpoint's request handling time (auth and checks included).
    pub request_seconds: f64,
    pub request_count: f64,
}

/// The cost over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct WriteCost {
    pub reports_per_sec: f64,
    pub rows_per_sec: f64,
    /// Mean time of one report's store transaction.
    pub store_ms_mean: f64,
    /// Mean handling time of one report request on the control plane.
    pub request_ms_mean: f64,
    /// Store transaction time over wall time, in percent.
    pub store_busy_percent: f64,
}

impl WriteCost {
    pub fn between(before: &ControlWrites, after: &ControlWrites, secs: f64) -> WriteCost {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        let per = |sum: f64, n: f64| if n > 0.0 { sum / n * 1000.0 } else { 0.0 };
        let secs = secs.max(1e-9);
        WriteCost {
            reports_per_sec: d(after.reports, before.reports) / secs,
            rows_per_sec: d(after.rows, before.rows) / secs,
            store_ms_mean: per(
                d(after.store_seconds, before.store_seconds),
                d(after.store_count, before.store_count),
            ),
            request_ms_mean: per(
                d(after.request_seconds, before.request_seconds),
                d(after.request_count, before.request_count),
            ),
            store_busy_percent: d(after.store_seconds, before.store_seconds) / secs * 100.0,
        }
    }
}

/// Sums every series of `name` (all label sets) in a Prometheus text exposition.
fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            if bare != name || label.is_some_and(|want| !series.contains(want)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The counters in a `/metrics` page.
pub fn parse(text: &str) -> ControlWrites {
    const ROUTE: &str = "route=\"/api/v1/agents/metadata\"";
    ControlWrites {
        reports: sum(text, "ferry_control_telemetry_reports_total", None),
        rows: sum(text, "ferry_control_telemetry_rows_written_total", None),
        store_seconds: sum(text, "ferry_control_telemetry_write_seconds_sum", None),
        store_count: sum(text, "ferry_control_telemetry_write_seconds_count", None),
        request_seconds: sum(
            text,
            "ferry_control_http_request_duration_seconds_sum",
            Some(ROUTE),
        ),
        request_count: sum(
            text,
            "ferry_control_http_request_duration_seconds_count",
            Some(ROUTE),
        ),
    }
}

/// Reads `http://admin/metrics` (plain HTTP/1.0: the admin port closes after it).
pub async fn scrape(admin: SocketAddr) -> Result<ControlWrites> {
    let mut tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("connecting to the control plane's admin port {admin}"))?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.take(16 << 20).read_to_end(&mut body),
    )
    .await
    .context("the admin port did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        anyhow::bail!("/metrics answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP ferry_control_telemetry_reports_total x
# TYPE ferry_control_telemetry_reports_total counter
ferry_control_telemetry_reports_total 2000
ferry_control_telemetry_rows_written_total 6000
ferry_control_telemetry_write_seconds_bucket{le="0.001"} 1500
ferry_control_telemetry_write_seconds_sum 4
ferry_control_telemetry_write_seconds_count 2000
ferry_control_http_request_duration_seconds_sum{route="/api/v1/agents/metadata",method="POST"} 10
ferry_control_http_request_duration_seconds_count{route="/api/v1/agents/metadata",method="POST"} 2000
ferry_control_http_request_duration_seconds_sum{route="/api/v1/regions",method="GET"} 99
"#;

    #[test]
    fn the_cost_is_the_difference_over_the_phase() {
        let after = parse(PAGE);
        assert_eq!(after.reports, 2000.0);
        assert_eq!(after.request_seconds, 10.0, "only the report route counts");
        let before = ControlWrites::default();
        let cost = WriteCost::between(&before, &after, 10.0);
        assert_eq!(cost.reports_per_sec, 200.0);
        assert_eq!(cost.rows_per_sec, 600.0);
        assert_eq!(cost.store_ms_mean, 2.0);
        assert_eq!(cost.request_ms_mean, 5.0);
        assert_eq!(cost.store_busy_percent, 40.0);
    }
}
