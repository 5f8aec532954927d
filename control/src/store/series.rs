//! Time series in the store: raw latency samples, their one-minute rollups, and the
//! relays' load. Times are Unix milliseconds.

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// One raw latency sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementRow {
    pub source: String,
    pub target: String,
    pub at_ms: i64,
    pub rtt_us: i64,
    pub jitter_us: i64,
    pub loss_ppm: i64,
}

/// One pair's samples over one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteRow {
    pub source: String,
    pub target: String,
    pub minute_ms: i64,
    pub samples: i64,
    pub p50_us: i64,
    pub max_us: i64,
    pub jitter_us: i64,
    pub loss_ppm: i64,
}

/// A relay's load at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLoadRow {
    pub relay: String,
    pub at_ms: i64,
    pub agents: i64,
    pub streams: i64,
    pub bytes: i64,
}

/// Which series a query reads; every condition given must hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeriesFilter<'a> {
    pub source: Option<&'a str>,
    pub target: Option<&'a str>,
    /// The source starts with this (e.g. `relay:`).
    pub source_prefix: Option<&'a str>,
    /// The target starts with this.
    pub target_prefix: Option<&'a str>,
}

/// At most this many rows answer one query: a day of minutes for ~200 series.
pub const MAX_ROWS: i64 = 300_000;

impl SeriesFilter<'_> {
    /// ` AND ...` conditions with placeholders from `$2` (`$1` is the start time), and
    /// the values to bind in order.
    fn sql(&self) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        let conditions = [
            ("source = ", self.source.map(str::to_string)),
            ("target = ", self.target.map(str::to_string)),
            (
                "source LIKE ",
                self.source_prefix.map(|p| format!("{}%", escape_like(p))),
            ),
            (
                "target LIKE ",
                self.target_prefix.map(|p| format!("{}%", escape_like(p))),
            ),
        ];
        for (column, value) in conditions {
            if let Some(value) = value {
                binds.push(value);
                sql.push_str(&format!(" AND {column}${}", binds.len() + 1));
                if column.ends_with("LIKE ") {
                    sql.push_str(" ESCAPE '\\'");
                }
            }
        }
        (sql, binds)
    }
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

macro_rules! measurement_row {
    ($r:expr) => {
        MeasurementRow {
            source: $r.try_get("source")?,
            target: $r.try_get("target")?,
            at_ms: $r.try_get("at_ms")?,
            rtt_us: $r.try_get("rtt_us")?,
            jitter_us: $r.try_get("jitter_us")?,
            loss_ppm: $r.try_get("loss_ppm")?,
        }
    };
}

impl Store {
    /// Stores raw samples, in one transaction.
    pub async fn insert_measurements(&self, rows: &[MeasurementRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(100) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO measurements (source, target, at_ms, rtt_us, jitter_us, loss_ppm) ");
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.source).push_bind(&r.target).push_bind(r.at_ms)
                        .push_bind(r.rtt_us).push_bind(r.jitter_us).push_bind(r.loss_ppm);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Raw samples since `since_ms`, by pair then time.
    pub async fn measurements(
        &self,
        filter: SeriesFilter<'_>,
        since_ms: i64,
    ) -> Result<Vec<MeasurementRow>, StoreError> {
        let (conditions, binds) = filter.sql();
        let sql = format!(
            "SELECT source, target, at_ms, rtt_us, jitter_us, loss_ppm FROM measurements \
             WHERE at_ms >= $1{conditions} ORDER BY source, target, at_ms LIMIT {MAX_ROWS}"
        );
        with_pool!(self, pool => {
            let mut q = sqlx::query(&sql).bind(since_ms);
            for b in &binds {
                q = q.bind(b);
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| Ok(measurement_row!(r))).collect()
        })
    }

    /// One-minute buckets from `since_ms`, by pair then time.
    pub async fn minutes(
        &self,
        filter: SeriesFilter<'_>,
        since_ms: i64,
    ) -> Result<Vec<MinuteRow>, StoreError> {
        let (conditions, binds) = filter.sql();
        let sql = format!(
            "SELECT source, target, minute_ms, samples, p50_us, max_us, jitter_us, loss_ppm \
             FROM measurement_minutes WHERE minute_ms >= $1{conditions} \
             ORDER BY source, target, minute_ms LIMIT {MAX_ROWS}"
        );
        with_pool!(self, pool => {
            let mut q = sqlx::query(&sql).bind(since_ms);
            for b in &binds {
                q = q.bind(b);
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| Ok(MinuteRow {
                source: r.try_get("source")?,
                target: r.try_get("target")?,
                minute_ms: r.try_get("minute_ms")?,
                samples: r.try_get("samples")?,
                p50_us: r.try_get("p50_us")?,
                max_us: r.try_get("max_us")?,
                jitter_us: r.try_get("jitter_us")?,
                loss_ppm: r.try_get("loss_ppm")?,
            })).collect()
        })
    }

    /// The newest sample of every relay-to-relay pair measured since `since_ms`.
    pub async fn latest_mesh(&self, since_ms: i64) -> Result<Vec<MeasurementRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT m.source, m.target, m.at_ms, m.rtt_us, m.jitter_us, m.loss_ppm \
                 FROM measurements m JOIN ( \
                   SELECT source, target, MAX(at_ms) AS last FROM measurements \
                   WHERE at_ms >= $1 AND source LIKE 'relay:%' AND target LIKE 'relay:%' \
                   GROUP BY source, target) l \
                 ON m.source = l.source AND m.target = l.target AND m.at_ms = l.last \
                 ORDER BY m.source, m.target")
                .bind(since_ms).fetch_all(pool).await?;
            let mut out: Vec<MeasurementRow> = Vec::with_capacity(rows.len());
            for r in &rows {
                let row = measurement_row!(r);
                // Two samples of a pair at the same millisecond: keep one.
                if out.last().is_some_and(|p| p.source == row.source && p.target == row.target) {
                    continue;
                }
                out.push(row);
            }
            Ok(out)
        })
    }

    /// The start of the newest stored one-minute bucket, if any.
    pub async fn last_rolled_minute(&self) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT MAX(minute_ms) AS last FROM measurement_minutes")
                .fetch_one(pool).await?;
            Ok(row.try_get::<Option<i64>, _>("last")?)
        })
    }

    /// Raw samples with `from_ms <= at_ms < until_ms`, for a rollup.
    pub async fn measurements_between(
        &self,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<MeasurementRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT source, target, at_ms, rtt_us, jitter_us, loss_ppm FROM measurements \
                 WHERE at_ms >= $1 AND at_ms < $2 ORDER BY source, target, at_ms")
                .bind(from_ms).bind(until_ms).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(measurement_row!(r))).collect()
        })
    }

    /// Stores one-minute buckets; a bucket already stored (another replica rolled the
    /// same minute up from the same samples) is kept as it is.
    pub async fn insert_minutes(&self, rows: &[MinuteRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(100) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO measurement_minutes (source, target, minute_ms, samples, p50_us, max_us, jitter_us, loss_ppm) ");
                q.push_values(chunk, |mut b, m| {
                    b.push_bind(&m.source).push_bind(&m.target).push_bind(m.minute_ms)
                        .push_bind(m.samples).push_bind(m.p50_us).push_bind(m.max_us)
                        .push_bind(m.jitter_us).push_bind(m.loss_ppm);
                });
                q.push(" ON CONFLICT (source, target, minute_ms) DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records a relay's load.
    pub async fn insert_relay_load(&self, row: &RelayLoadRow) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO relay_load (relay, at_ms, agents, streams, bytes) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (relay, at_ms) DO NOTHING")
            .bind(&row.relay).bind(row.at_ms).bind(row.agents).bind(row.streams).bind(row.bytes)
            .execute(pool).await?; });
        Ok(())
    }

    /// Every relay's load since `since_ms`, by relay then time.
    pub async fn relay_load(&self, since_ms: i64) -> Result<Vec<RelayLoadRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT relay, at_ms, agents, streams, bytes FROM relay_load WHERE at_ms >= $1 \
                 ORDER BY relay, at_ms LIMIT {MAX_ROWS}"))
                .bind(since_ms).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(RelayLoadRow {
                relay: r.try_get("relay")?,
                at_ms: r.try_get("at_ms")?,
                agents: r.try_get("agents")?,
                streams: r.try_get("streams")?,
                bytes: r.try_get("bytes")?,
            })).collect()
        })
    }

    /// Drops raw samples before `raw_before`, buckets before `minutes_before` and
    /// relay load before `load_before`; returns how many rows went.
    pub async fn prune_series(
        &self,
        raw_before: i64,
        minutes_before: i64,
        load_before: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (sql, before) in [
            ("DELETE FROM measurements WHERE at_ms < $1", raw_before),
            (
                "DELETE FROM measurement_minutes WHERE minute_ms < $1",
                minutes_before,
            ),
            ("DELETE FROM relay_load WHERE at_ms < $1", load_before),
        ] {
            n += with_pool!(self, pool => sqlx::query(sql).bind(before).execute(pool).await?.rows_affected());
        }
        Ok(n)
    }
}

/// Rolls up every complete minute that ended at least [`ROLLUP_DELAY_MS`] before
/// `now_ms` and is not stored yet (within raw retention); returns the buckets stored.
///
/// [`ROLLUP_DELAY_MS`]: crate::measurements::ROLLUP_DELAY_MS
pub async fn rollup(store: &Store, now_ms: i64) -> Result<usize, StoreError> {
    use crate::measurements::{MINUTE_MS, RAW_RETENTION_MS, ROLLUP_DELAY_MS};
    let minute = MINUTE_MS as i64;
    let floor = |t: i64| t - t.rem_euclid(minute);
    let until = floor(now_ms - ROLLUP_DELAY_MS as i64);
    let oldest = floor(now_ms - RAW_RETENTION_MS as i64);
    let from = match store.last_rolled_minute().await? {
        Some(last) => (last + minute).max(oldest),
        None => oldest,
    };
    if from >= until {
        return Ok(0);
    }
    let raw = store.measurements_between(from, until).await?;
    let buckets = crate::measurements::rollup(&raw);
    store.insert_minutes(&buckets).await?;
    Ok(buckets.len())
}
