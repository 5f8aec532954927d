//! Workspace telemetry in the store: agents' resource readings (latest plus a short
//! history, one row per workspace per bucket) and the latest value of each custom
//! metadata item. Times are Unix milliseconds of the control plane's clock.
//!
//! Write cost is what matters here (every agent reports every 10 s): one report is
//! one transaction of at most three statements, an upsert of the bucket's reading,
//! one multi-row upsert of the items and a count of the workspace's keys (to hold the
//! bound); history is pruned in bulk by time, never row by row.

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// One stored resource reading, as the columns hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRow {
    pub workspace: String,
    pub at_ms: i64,
    /// CPU in hundredths of a percent (0 to 10000).
    pub cpu_bp: i64,
    pub mem_used: i64,
    pub mem_limit: i64,
    pub disk_used: i64,
    pub disk_total: i64,
    /// Load averages in thousandths.
    pub load_milli: [i64; 3],
    pub uptime_secs: i64,
    /// `cgroup` or `host`.
    pub source: String,
}

/// The latest value of one metadata item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRow {
    pub key: String,
    pub name: Option<String>,
    pub value: String,
    pub error: Option<String>,
    pub updated_ms: i64,
}

/// When a workspace's telemetry last changed: its newest reading and newest item
/// update. Cheap to read (two index lookups), so live views poll it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetryMarks {
    pub stats_ms: Option<i64>,
    pub metadata_ms: Option<i64>,
}

/// At most this many readings answer one query (the history is ~180 rows anyway).
const MAX_STATS_ROWS: i64 = 2_000;

const STATS_COLUMNS: &str =
    "workspace, at_ms, cpu_bp, mem_used, mem_limit, disk_used, disk_total, \
     load1_milli, load5_milli, load15_milli, uptime_secs, source";

macro_rules! stats_row {
    ($r:expr) => {
        StatsRow {
            workspace: $r.try_get("workspace")?,
            at_ms: $r.try_get("at_ms")?,
            cpu_bp: $r.try_get("cpu_bp")?,
            mem_used: $r.try_get("mem_used")?,
            mem_limit: $r.try_get("mem_limit")?,
            disk_used: $r.try_get("disk_used")?,
            disk_total: $r.try_get("disk_total")?,
            load_milli: [
                $r.try_get("load1_milli")?,
                $r.try_get("load5_milli")?,
                $r.try_get("load15_milli")?,
            ],
            uptime_secs: $r.try_get("uptime_secs")?,
            source: $r.try_get("source")?,
        }
    };
}

impl Store {
    /// Stores one agent report for `workspace`: the reading (in the bucket of
    /// `bucket_ms` its time falls in) and the items, all or nothing. Refuses with
    /// [`StoreError::TooMany`] when the workspace would hold more than `max_keys` keys.
    pub async fn record_telemetry(
        &self,
        workspace: &str,
        stats: Option<&StatsRow>,
        bucket_ms: i64,
        items: &[MetadataRow],
        max_keys: usize,
    ) -> Result<(), StoreError> {
        let keys = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(s) = stats {
                let bucket = s.at_ms - s.at_ms.rem_euclid(bucket_ms.max(1));
                sqlx::query(&format!(
                    "INSERT INTO workspace_stats (bucket_ms, {STATS_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (workspace, bucket_ms) DO UPDATE SET at_ms = excluded.at_ms, \
                     cpu_bp = excluded.cpu_bp, mem_used = excluded.mem_used, mem_limit = excluded.mem_limit, \
                     disk_used = excluded.disk_used, disk_total = excluded.disk_total, \
                     load1_milli = excluded.load1_milli, load5_milli = excluded.load5_milli, \
                     load15_milli = excluded.load15_milli, uptime_secs = excluded.uptime_secs, \
                     source = excluded.source"))
                    .bind(bucket).bind(workspace).bind(s.at_ms).bind(s.cpu_bp)
                    .bind(s.mem_used).bind(s.mem_limit).bind(s.disk_used).bind(s.disk_total)
                    .bind(s.load_milli[0]).bind(s.load_milli[1]).bind(s.load_milli[2])
                    .bind(s.uptime_secs).bind(&s.source)
                    .execute(&mut *tx).await?;
            }
            let mut keys = 0usize;
            if !items.is_empty() {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO workspace_metadata (workspace, item_key, item_name, item_value, item_error, updated_ms) ");
                q.push_values(items, |mut b, m| {
                    b.push_bind(workspace).push_bind(&m.key).push_bind(&m.name)
                        .push_bind(&m.value).push_bind(&m.error).push_bind(m.updated_ms);
                });
                q.push(" ON CONFLICT (workspace, item_key) DO UPDATE SET item_name = excluded.item_name, \
                        item_value = excluded.item_value, item_error = excluded.item_error, \
                        updated_ms = excluded.updated_ms");
                q.build().execute(&mut *tx).await?;
                // Counted inside the transaction: over the bound, nothing is kept.
                let row = sqlx::query("SELECT COUNT(*) AS n FROM workspace_metadata WHERE workspace = $1")
                    .bind(workspace).fetch_one(&mut *tx).await?;
                keys = usize::try_from(row.try_get::<i64, _>("n")?).unwrap_or(usize::MAX);
            }
            if keys > max_keys {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            keys
        });
        if keys > max_keys {
            return Err(StoreError::TooMany {
                what: format!("metadata keys of workspace `{workspace}`"),
                count: keys,
                max: max_keys,
            });
        }
        Ok(())
    }

    /// `workspace`'s readings received since `since_ms`, oldest first.
    pub async fn stats_since(
        &self,
        workspace: &str,
        since_ms: i64,
    ) -> Result<Vec<StatsRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {STATS_COLUMNS} FROM workspace_stats WHERE workspace = $1 AND at_ms >= $2 \
                 ORDER BY bucket_ms LIMIT {MAX_STATS_ROWS}"))
                .bind(workspace).bind(since_ms).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(stats_row!(r))).collect()
        })
    }

    /// `workspace`'s newest reading, if it has one.
    pub async fn latest_stats(&self, workspace: &str) -> Result<Option<StatsRow>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(&format!(
                "SELECT {STATS_COLUMNS} FROM workspace_stats WHERE workspace = $1 \
                 ORDER BY bucket_ms DESC LIMIT 1"))
                .bind(workspace).fetch_optional(pool).await?;
            Ok(match row { Some(r) => Some(stats_row!(r)), None => None })
        })
    }

    /// `workspace`'s metadata items, by key.
    pub async fn workspace_metadata(
        &self,
        workspace: &str,
    ) -> Result<Vec<MetadataRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT item_key, item_name, item_value, item_error, updated_ms FROM workspace_metadata \
                 WHERE workspace = $1 ORDER BY item_key")
                .bind(workspace).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(MetadataRow {
                key: r.try_get("item_key")?,
                name: r.try_get("item_name")?,
                value: r.try_get("item_value")?,
                error: r.try_get("item_error")?,
                updated_ms: r.try_get("updated_ms")?,
            })).collect()
        })
    }

    /// When `workspace`'s telemetry last changed.
    pub async fn telemetry_marks(&self, workspace: &str) -> Result<TelemetryMarks, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT (SELECT MAX(at_ms) FROM workspace_stats WHERE workspace = $1) AS s, \
                        (SELECT MAX(updated_ms) FROM workspace_metadata WHERE workspace = $1) AS m")
                .bind(workspace).fetch_one(pool).await?;
            Ok(TelemetryMarks {
                stats_ms: row.try_get("s")?,
                metadata_ms: row.try_get("m")?,
            })
        })
    }

    /// Drops readings received before `stats_before_ms` and items not updated since
    /// `metadata_before_ms`; returns how many rows went.
    pub async fn prune_telemetry(
        &self,
        stats_before_ms: i64,
        metadata_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (sql, before) in [
            (
                "DELETE FROM workspace_stats WHERE bucket_ms < $1",
                stats_before_ms,
            ),
            (
                "DELETE FROM workspace_metadata WHERE updated_ms < $1",
                metadata_before_ms,
            ),
        ] {
            n += with_pool!(self, pool => sqlx::query(sql).bind(before).execute(pool).await?.rows_affected());
        }
        Ok(n)
    }

    /// Forgets everything `workspace`'s agent reported (the workspace is deleted).
    pub async fn delete_telemetry(&self, workspace: &str) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM workspace_stats WHERE workspace = $1",
            "DELETE FROM workspace_metadata WHERE workspace = $1",
        ] {
            with_pool!(self, pool => { sqlx::query(sql).bind(workspace).execute(pool).await?; });
        }
        Ok(())
    }
}
