-- ferry control plane schema, version 4: latency time series and relay load.
-- Same portability rules as version 1 (TEXT and BIGINT only): a loss fraction is kept
-- in parts per million.

-- Raw round-trip samples, kept for an hour. `source` and `target` are endpoints:
-- `agent:LABEL`, `relay:NAME`, `client:USER`, `browser:USER`.
CREATE TABLE measurements (
    source    TEXT NOT NULL,
    target    TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,
    rtt_us    BIGINT NOT NULL,
    jitter_us BIGINT NOT NULL,
    loss_ppm  BIGINT NOT NULL
);
CREATE INDEX measurements_by_pair ON measurements (source, target, at_ms);
CREATE INDEX measurements_by_target ON measurements (target, at_ms);
-- Rollups and pruning scan by time.
CREATE INDEX measurements_by_time ON measurements (at_ms);

-- One-minute rollups of the raw samples, kept for a day.
CREATE TABLE measurement_minutes (
    source    TEXT NOT NULL,
    target    TEXT NOT NULL,
    minute_ms BIGINT NOT NULL,
    samples   BIGINT NOT NULL,
    p50_us    BIGINT NOT NULL,
    max_us    BIGINT NOT NULL,
    jitter_us BIGINT NOT NULL,
    loss_ppm  BIGINT NOT NULL,
    PRIMARY KEY (source, target, minute_ms)
);
CREATE INDEX measurement_minutes_by_target ON measurement_minutes (target, minute_ms);
CREATE INDEX measurement_minutes_by_time ON measurement_minutes (minute_ms);

-- Relays' load from their heartbeats (one row per relay every few seconds), kept for
-- an hour, for the dashboard's throughput charts.
CREATE TABLE relay_load (
    relay   TEXT NOT NULL,
    at_ms   BIGINT NOT NULL,
    agents  BIGINT NOT NULL,
    streams BIGINT NOT NULL,
    bytes   BIGINT NOT NULL,
    PRIMARY KEY (relay, at_ms)
);
CREATE INDEX relay_load_by_time ON relay_load (at_ms);
