-- ferry control plane schema, version 5: workspace telemetry (agents' readings).
-- Same portability rules as version 1 (TEXT and BIGINT only). Kept in the store, not
-- in one replica's memory, so that every replica serves what any of them received.

-- Resource readings, at most one row per workspace per 5-second bucket (a later
-- reading in the same bucket replaces the row): the newest row is the latest reading,
-- the others the dashboard's 15-minute history. Rows past 15 minutes are pruned in
-- bulk every minute, so the table holds at most ~180 rows per reporting workspace.
-- Fractions are scaled to integers: CPU in hundredths of a percent, load in
-- thousandths.
CREATE TABLE workspace_stats (
    workspace    TEXT NOT NULL,
    bucket_ms    BIGINT NOT NULL,
    at_ms        BIGINT NOT NULL,
    cpu_bp       BIGINT NOT NULL,
    mem_used     BIGINT NOT NULL,
    mem_limit    BIGINT NOT NULL,
    disk_used    BIGINT NOT NULL,
    disk_total   BIGINT NOT NULL,
    load1_milli  BIGINT NOT NULL,
    load5_milli  BIGINT NOT NULL,
    load15_milli BIGINT NOT NULL,
    uptime_secs  BIGINT NOT NULL,
    source       TEXT NOT NULL,
    PRIMARY KEY (workspace, bucket_ms)
);
-- Pruning deletes by time.
CREATE INDEX workspace_stats_by_time ON workspace_stats (bucket_ms);

-- The latest value of each custom metadata item (at most 32 keys a workspace).
-- Items not reported for a day are pruned (an operator removed them).
CREATE TABLE workspace_metadata (
    workspace  TEXT NOT NULL,
    item_key   TEXT NOT NULL,
    item_name  TEXT,
    item_value TEXT NOT NULL,
    item_error TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (workspace, item_key)
);
CREATE INDEX workspace_metadata_by_time ON workspace_metadata (updated_ms);
