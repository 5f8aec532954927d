//! Workspace telemetry between the API's types and the store's rows: scaling readings
//! to the integer columns and back, and assembling what a reader sees. No tasks; the
//! store's upkeep (pruning) runs in the server's `series_upkeep`.

use ferry_proto::api::{
    MetadataItem, MetadataReading, StatsPoint, StatsSource, WorkspaceStats,
    WorkspaceTelemetryResponse, STATS_HISTORY_MS,
};

use crate::store::{MetadataRow, StatsRow, Store, StoreError};

/// Items not reported for this long are dropped (the operator removed them).
pub const METADATA_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// `stats` as the store keeps it, received at `at_ms`. `stats` has passed
/// [`WorkspaceStats::check`], so every figure fits.
pub fn stats_row(workspace: &str, at_ms: i64, stats: &WorkspaceStats) -> StatsRow {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // Rounded, not truncated: 12.345 % is stored as 1235 hundredths.
    let scaled = |v: f64, by: f64| (v * by).round() as i64;
    StatsRow {
        workspace: workspace.to_string(),
        at_ms,
        cpu_bp: scaled(stats.cpu_percent, 100.0),
        mem_used: int(stats.mem_used_bytes),
        mem_limit: int(stats.mem_limit_bytes),
        disk_used: int(stats.disk_used_bytes),
        disk_total: int(stats.disk_total_bytes),
        load_milli: stats.load.map(|l| scaled(l, 1000.0)),
        uptime_secs: int(stats.uptime_secs),
        source: stats.source.as_str().to_string(),
    }
}

/// A stored row as readers see it.
pub fn stats_point(row: &StatsRow) -> StatsPoint {
    let uint = |v: i64| u64::try_from(v).unwrap_or(0);
    StatsPoint {
        at_ms: row.at_ms,
        stats: WorkspaceStats {
            cpu_percent: row.cpu_bp as f64 / 100.0,
            mem_used_bytes: uint(row.mem_used),
            mem_limit_bytes: uint(row.mem_limit),
            disk_used_bytes: uint(row.disk_used),
            disk_total_bytes: uint(row.disk_total),
            load: row.load_milli.map(|l| l as f64 / 1000.0),
            uptime_secs: uint(row.uptime_secs),
            source: StatsSource::parse(&row.source),
        },
    }
}

/// An agent's item as the store keeps it, received at `at_ms`.
pub fn metadata_row(item: MetadataItem, at_ms: i64) -> MetadataRow {
    MetadataRow {
        key: item.key,
        // An empty display name says nothing: the key stands in for it.
        name: item.name.filter(|n| !n.is_empty()),
        value: item.value,
        error: item.error,
        updated_ms: at_ms,
    }
}

/// A stored item as readers see it.
pub fn reading(row: MetadataRow) -> MetadataReading {
    MetadataReading {
        key: row.key,
        value: row.value,
        updated_at: row.updated_ms.div_euclid(1000),
        name: row.name,
        error: row.error,
    }
}

/// What the workspace's reader sees at `now_ms`: the latest reading, the history
/// received since `since_ms` (no older than [`STATS_HISTORY_MS`]) and the items.
pub async fn snapshot(
    store: &Store,
    workspace: &str,
    since_ms: i64,
    now_ms: i64,
) -> Result<WorkspaceTelemetryResponse, StoreError> {
    let since = since_ms.max(now_ms - STATS_HISTORY_MS);
    let history: Vec<StatsPoint> = store
        .stats_since(workspace, since)
        .await?
        .iter()
        .map(stats_point)
        .collect();
    let latest = match history.last() {
        Some(last) => Some(last.clone()),
        // Nothing new since `since_ms`: the newest reading is still the latest.
        None => store
            .latest_stats(workspace)
            .await?
            .as_ref()
            .map(stats_point),
    };
    let items = store
        .workspace_metadata(workspace)
        .await?
        .into_iter()
        .map(reading)
        .collect();
    Ok(WorkspaceTelemetryResponse {
        workspace: workspace.to_string(),
        latest,
        history,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_survive_the_integer_columns() {
        let stats = WorkspaceStats {
            cpu_percent: 12.345,
            mem_used_bytes: 123_456_789,
            mem_limit_bytes: 1 << 32,
            disk_used_bytes: 5,
            disk_total_bytes: 10,
            load: [0.5, 1.25, 3.0004],
            uptime_secs: 99,
            source: StatsSource::Cgroup,
        };
        let row = stats_row("w--a", 1_000, &stats);
        assert_eq!(row.cpu_bp, 1235);
        assert_eq!(row.load_milli, [500, 1250, 3000]);
        let back = stats_point(&row);
        assert_eq!(back.at_ms, 1_000);
        assert_eq!(back.stats.cpu_percent, 12.35);
        assert_eq!(back.stats.load, [0.5, 1.25, 3.0]);
        assert_eq!(back.stats.mem_used_bytes, 123_456_789);
        assert_eq!(back.stats.source, StatsSource::Cgroup);
    }

    #[test]
    fn item_times_read_in_seconds_and_empty_names_fall_back_to_the_key() {
        let row = metadata_row(
            MetadataItem {
                key: "k".into(),
                value: "v".into(),
                name: Some(String::new()),
                error: None,
            },
            12_999,
        );
        assert_eq!(row.name, None);
        let r = reading(row);
        assert_eq!(r.updated_at, 12);
    }
}
