-- ferry control plane schema, version 1.
-- Portable between SQLite and PostgreSQL: only TEXT and BIGINT columns (times are
-- seconds since the Unix epoch, binary keys are base64 text), so one set of
-- migrations serves both backends.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    -- PHC string (argon2id); NULL for a user who can only use minted tokens.
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE workspaces (
    label      TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL REFERENCES users (name),
    created_at BIGINT NOT NULL,
    UNIQUE (owner, name)
);

-- Every token the control plane minted, so that it can be listed and revoked by id.
CREATE TABLE tokens (
    jti        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    -- A human label: `session`, a personal token's name, an agent token's name.
    name       TEXT NOT NULL,
    kid        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_by_subject ON tokens (kind, subject);
CREATE INDEX tokens_revoked ON tokens (revoked_at);
-- The keyring asks how long each retired key's tokens live.
CREATE INDEX tokens_by_kid ON tokens (kid, expires_at);
-- Pruning deletes by expiry.
CREATE INDEX tokens_by_expiry ON tokens (expires_at);

-- Ed25519 signing keys. The newest unretired key signs; retired keys stay published
-- until the last token they signed has expired.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8_b64  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    -- Set when a rotation drops the key at once (it may be compromised): its tokens
    -- stop verifying everywhere within a relay sync.
    dropped_at BIGINT
);

CREATE TABLE relays (
    name           TEXT PRIMARY KEY,
    region         TEXT NOT NULL,
    quic_addr      TEXT NOT NULL,
    server_name    TEXT NOT NULL,
    registered_at  BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    -- Changes with every registration (nanoseconds): tells a restarted relay apart.
    incarnation    BIGINT NOT NULL DEFAULT 0,
    -- 1 once the relay said it is draining; a new registration clears it.
    draining       BIGINT NOT NULL DEFAULT 0
);

-- Which relay each connected agent is on, as relays report it.
-- An agent holds a connection to its ring owner and one to a standby relay.
CREATE TABLE directory (
    workspace  TEXT NOT NULL,
    relay      TEXT NOT NULL,
    standby    BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, relay)
);
