//! The control plane's persistent store: SQLite (one file in the data directory, the
//! default) or PostgreSQL (for several control-plane replicas), behind one API.
//!
//! One code path serves both backends: the SQL is portable (only TEXT and BIGINT
//! columns, `$N` placeholders, which SQLite accepts too, and `ON CONFLICT` upserts), and
//! the [`with_pool!`] macro expands each query once per backend so that each expansion
//! is type-checked against its own driver. Migrations (`control/migrations/`) are
//! compiled into the binary and applied on open; on PostgreSQL sqlx takes an advisory
//! lock, so replicas starting together migrate once.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A row with the same key exists (a duplicate name).
    #[error("{what} already exists")]
    Conflict { what: String },
    /// Storing would take a bounded table past its bound (nothing was stored).
    #[error("{what}: {count}, at most {max}")]
    TooMany {
        what: String,
        count: usize,
        max: usize,
    },
    /// The database URL is not one we can use.
    #[error("database URL: {0}")]
    BadUrl(String),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The migrations, in order. Portable SQL for both backends.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "relay https",
        include_str!("../migrations/0002_relay_https.sql"),
    ),
    (
        3,
        "directory one owner",
        include_str!("../migrations/0003_directory_one_owner.sql"),
    ),
    (
        4,
        "measurements",
        include_str!("../migrations/0004_measurements.sql"),
    ),
    (
        5,
        "workspace telemetry",
        include_str!("../migrations/0005_workspace_telemetry.sql"),
    ),
];

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect();
    // `sqlx::migrate!` would need the `macros` feature, which builds both database
    // drivers a second time for the host; building the migrator by hand avoids that.
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool; the body is expanded (and
/// type-checked) once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub password_hash: Option<String>,
    pub created_at: i64,
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRow {
    pub label: String,
    pub name: String,
    pub owner: String,
    pub created_at: i64,
}

/// A minted token's record (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub jti: String,
    pub kind: String,
    pub subject: String,
    pub name: String,
    pub kid: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub kid: String,
    pub pkcs8_b64: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    /// Dropped keys are not published: their tokens no longer verify.
    pub dropped_at: Option<i64>,
}

/// A relay as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRow {
    pub name: String,
    pub region: String,
    pub quic_addr: String,
    pub server_name: String,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    pub incarnation: i64,
    pub draining: bool,
    /// Its HTTPS origin for browsers; empty when it serves none.
    pub https_url: String,
    /// The domain its web apps live under; empty when it serves none.
    pub apps_domain: String,
}

/// The store: a pool on one of the two backends.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

fn conflict(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let what = what.into();
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict { what },
        _ => StoreError::Db(e),
    }
}

const TOKEN_COLUMNS: &str = "jti, kind, subject, name, kid, created_at, expires_at, revoked_at";
const RELAY_COLUMNS: &str =
    "name, region, quic_addr, server_name, registered_at, last_heartbeat, incarnation, draining, https_url, apps_domain";

macro_rules! token_row {
    ($r:expr) => {
        TokenRow {
            jti: $r.try_get("jti")?,
            kind: $r.try_get("kind")?,
            subject: $r.try_get("subject")?,
            name: $r.try_get("name")?,
            kid: $r.try_get("kid")?,
            created_at: $r.try_get("created_at")?,
            expires_at: $r.try_get("expires_at")?,
            revoked_at: $r.try_get("revoked_at")?,
        }
    };
}

macro_rules! relay_row {
    ($r:expr) => {
        RelayRow {
            name: $r.try_get("name")?,
            region: $r.try_get("region")?,
            quic_addr: $r.try_get("quic_addr")?,
            server_name: $r.try_get("server_name")?,
            registered_at: $r.try_get("registered_at")?,
            last_heartbeat: $r.try_get("last_heartbeat")?,
            incarnation: $r.try_get("incarnation")?,
            draining: $r.try_get::<i64, _>("draining")? != 0,
            https_url: $r.try_get("https_url")?,
            apps_domain: $r.try_get("apps_domain")?,
        }
    };
}

macro_rules! workspace_row {
    ($r:expr) => {
        WorkspaceRow {
            label: $r.try_get("label")?,
            name: $r.try_get("name")?,
            owner: $r.try_get("owner")?,
            created_at: $r.try_get("created_at")?,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode, and
    /// applies the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// Connects to PostgreSQL and applies the migrations.
    pub async fn open_postgres(options: PgConnectOptions) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Store {
            backend: Backend::Postgres(pool),
        })
    }

    /// Opens `postgres://...` or `sqlite://PATH`.
    pub async fn open_url(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::BadUrl(format!("{}: {e}", redact(url))))?;
            Self::open_postgres(options).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Self::open_sqlite(Path::new(path)).await
        } else {
            Err(StoreError::BadUrl(format!(
                "`{}` is neither postgres://... nor sqlite://PATH",
                redact(url)
            )))
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    // ---- users ----

    pub async fn create_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name).bind(password_hash).bind(now)
            .execute(pool).await
            .map_err(conflict(format!("user `{name}`")))?; });
        Ok(())
    }

    /// Creates the user unless it exists; never touches an existing one.
    pub async fn ensure_user(&self, name: &str, now: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, NULL, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name).bind(now)
            .execute(pool).await?; });
        Ok(())
    }

    pub async fn set_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let done = with_pool!(self, pool => sqlx::query(
            "UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(hash).bind(name)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT name, password_hash, created_at FROM users WHERE name = $1")
                .bind(name).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(UserRow {
                    name: r.try_get("name")?,
                    password_hash: r.try_get("password_hash")?,
                    created_at: r.try_get("created_at")?,
                }),
                None => None,
            })
        })
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT name, password_hash, created_at FROM users ORDER BY name")
                .fetch_all(pool).await?;
            rows.iter().map(|r| Ok(UserRow {
                name: r.try_get("name")?,
                password_hash: r.try_get("password_hash")?,
                created_at: r.try_get("created_at")?,
            })).collect()
        })
    }

    // ---- workspaces ----

    pub async fn create_workspace(&self, ws: &WorkspaceRow) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO workspaces (label, name, owner, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&ws.label).bind(&ws.name).bind(&ws.owner).bind(ws.created_at)
            .execute(pool).await
            .map_err(conflict(format!("workspace `{}`", ws.label)))?; });
        Ok(())
    }

    pub async fn workspace(&self, label: &str) -> Result<Option<WorkspaceRow>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT label, name, owner, created_at FROM workspaces WHERE label = $1")
                .bind(label).fetch_optional(pool).await?;
            Ok(match row { Some(r) => Some(workspace_row!(r)), None => None })
        })
    }

    /// Workspaces of `owner`, or all of them.
    pub async fn workspaces(&self, owner: Option<&str>) -> Result<Vec<WorkspaceRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = match owner {
                Some(o) => sqlx::query("SELECT label, name, owner, created_at FROM workspaces WHERE owner = $1 ORDER BY label")
                    .bind(o).fetch_all(pool).await?,
                None => sqlx::query("SELECT label, name, owner, created_at FROM workspaces ORDER BY label")
                    .fetch_all(pool).await?,
            };
            rows.iter().map(|r| Ok(workspace_row!(r))).collect()
        })
    }

    pub async fn delete_workspace(&self, label: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => sqlx::query("DELETE FROM workspaces WHERE label = $1")
            .bind(label).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    // ---- tokens ----

    pub async fn record_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO tokens (jti, kind, subject, name, kid, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&t.jti).bind(&t.kind).bind(&t.subject).bind(&t.name).bind(&t.kid)
            .bind(t.created_at).bind(t.expires_at).bind(t.revoked_at)
            .execute(pool).await
            .map_err(conflict(format!("token `{}`", t.jti)))?; });
        Ok(())
    }

    pub async fn token(&self, jti: &str) -> Result<Option<TokenRow>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = $1"))
                .bind(jti).fetch_optional(pool).await?;
            Ok(match row { Some(r) => Some(token_row!(r)), None => None })
        })
    }

    /// Tokens of one kind for one subject, newest first.
    pub async fn tokens(&self, kind: &str, subject: &str) -> Result<Vec<TokenRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE kind = $1 AND subject = $2 ORDER BY created_at DESC, jti"))
                .bind(kind).bind(subject).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(token_row!(r))).collect()
        })
    }

    /// Marks a token revoked; false if there is no such token or it already was.
    pub async fn revoke_token(&self, jti: &str, now: i64) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE jti = $2 AND revoked_at IS NULL")
            .bind(now).bind(jti).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT revoked_at FROM tokens WHERE jti = $1 AND revoked_at IS NOT NULL")
                .bind(jti).fetch_optional(pool).await?;
            Ok(row.is_some())
        })
    }

    /// Revoked tokens that have not expired yet: (jti, expires_at).
    pub async fn revocations(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT jti, expires_at FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY jti")
                .bind(now).fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?))).collect()
        })
    }

    /// Forgets tokens that expired before `before`; returns how many. Expired tokens
    /// verify nowhere, so neither listings nor revocation lists need them.
    pub async fn prune_expired_tokens(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            with_pool!(self, pool => sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
            .bind(before).execute(pool).await?.rows_affected()),
        )
    }

    /// The latest expiry of the tokens `kid` signed, if it signed any.
    pub async fn last_expiry_signed_by(&self, kid: &str) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT MAX(expires_at) AS last FROM tokens WHERE kid = $1")
                .bind(kid).fetch_one(pool).await?;
            Ok(row.try_get::<Option<i64>, _>("last")?)
        })
    }

    // ---- signing keys ----

    pub async fn insert_key(&self, key: &KeyRow) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO signing_keys (kid, pkcs8_b64, created_at, retired_at, dropped_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&key.kid).bind(&key.pkcs8_b64).bind(key.created_at).bind(key.retired_at).bind(key.dropped_at)
            .execute(pool).await
            .map_err(conflict(format!("key `{}`", key.kid)))?; });
        Ok(())
    }

    /// All keys, oldest first.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT kid, pkcs8_b64, created_at, retired_at, dropped_at FROM signing_keys ORDER BY created_at, kid")
                .fetch_all(pool).await?;
            rows.iter().map(|r| Ok(KeyRow {
                kid: r.try_get("kid")?,
                pkcs8_b64: r.try_get("pkcs8_b64")?,
                created_at: r.try_get("created_at")?,
                retired_at: r.try_get("retired_at")?,
                dropped_at: r.try_get("dropped_at")?,
            })).collect()
        })
    }

    /// Retires every key but `keep`.
    pub async fn retire_keys_except(&self, keep: &str, now: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE kid <> $2 AND retired_at IS NULL")
            .bind(now).bind(keep).execute(pool).await?; });
        Ok(())
    }

    /// Retires and drops every key but `keep`.
    pub async fn drop_keys_except(&self, keep: &str, now: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "UPDATE signing_keys SET retired_at = COALESCE(retired_at, $1), dropped_at = $1 WHERE kid <> $2 AND dropped_at IS NULL")
            .bind(now).bind(keep).execute(pool).await?; });
        Ok(())
    }

    // ---- relays and directory ----

    /// Records a relay (enrollment); a re-enrolling relay keeps its name.
    pub async fn upsert_relay(&self, r: &RelayRow) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query(
            "INSERT INTO relays (name, region, quic_addr, server_name, registered_at, last_heartbeat, incarnation, draining, https_url, apps_domain) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9) \
             ON CONFLICT (name) DO UPDATE SET region = excluded.region, quic_addr = excluded.quic_addr, \
             server_name = excluded.server_name, registered_at = excluded.registered_at, last_heartbeat = excluded.last_heartbeat, \
             incarnation = excluded.incarnation, draining = 0, https_url = excluded.https_url, apps_domain = excluded.apps_domain")
            .bind(&r.name).bind(&r.region).bind(&r.quic_addr).bind(&r.server_name)
            .bind(r.registered_at).bind(r.last_heartbeat).bind(r.incarnation)
            .bind(&r.https_url).bind(&r.apps_domain)
            .execute(pool).await?; });
        Ok(())
    }

    /// Notes a heartbeat; false if the relay never enrolled. Draining is sticky: a
    /// draining relay never returns to service, only a new registration (a new
    /// process) clears it.
    pub async fn heartbeat(
        &self,
        name: &str,
        now: i64,
        draining: bool,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => sqlx::query(
            "UPDATE relays SET last_heartbeat = $1, draining = CASE WHEN $2 = 1 THEN 1 ELSE draining END WHERE name = $3")
            .bind(now).bind(i64::from(draining)).bind(name).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    pub async fn relays(&self) -> Result<Vec<RelayRow>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {RELAY_COLUMNS} FROM relays ORDER BY region, name"))
                .fetch_all(pool).await?;
            rows.iter().map(|r| Ok(relay_row!(r))).collect()
        })
    }

    pub async fn relay(&self, name: &str) -> Result<Option<RelayRow>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {RELAY_COLUMNS} FROM relays WHERE name = $1"))
                .bind(name).fetch_optional(pool).await?;
            Ok(match row { Some(r) => Some(relay_row!(r)), None => None })
        })
    }

    /// An agent for `workspace` is connected to `relay`, as its standby or its owner.
    /// Claiming ownership demotes the previous owner in the same transaction, so the
    /// directory never shows two; claims racing on PostgreSQL (two control-plane
    /// replicas, or concurrent requests) collide on the `directory_one_owner` index,
    /// and the losers retry (the latest claim wins, as it would have in sequence).
    pub async fn set_directory(
        &self,
        workspace: &str,
        relay: &str,
        standby: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        // Each collision means another claim committed, so a retry (after the same
        // short wait for everyone) sees it; a pile of racing claims clears in turns.
        const ATTEMPTS: u32 = 20;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt))).await;
            }
            // In an async block, so that `?` ends the attempt, not the function.
            let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
                let mut tx = pool.begin().await?;
                if !standby {
                    sqlx::query("UPDATE directory SET standby = 1 WHERE workspace = $1 AND relay <> $2 AND standby = 0")
                        .bind(workspace).bind(relay).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO directory (workspace, relay, standby, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace, relay) DO UPDATE SET standby = excluded.standby, updated_at = excluded.updated_at")
                    .bind(workspace).bind(relay).bind(i64::from(standby)).bind(now).execute(&mut *tx).await?;
                tx.commit().await
            }.await);
            match result {
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() && attempt < ATTEMPTS => {
                    continue
                }
                other => return other.map_err(StoreError::Db),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The agent left `relay`. Only the relay holding the entry may clear it: a late
    /// "left" from an old relay must not erase the agent's new home.
    pub async fn clear_directory(&self, workspace: &str, relay: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => { sqlx::query("DELETE FROM directory WHERE workspace = $1 AND relay = $2")
            .bind(workspace).bind(relay).execute(pool).await?; });
        Ok(())
    }

    /// Replaces every directory entry of `relay` with `workspaces` (a full snapshot
    /// from the relay: those in `standby` as standby, the rest as owned), in one
    /// transaction. An owner claim demotes another owner, as in [`Self::set_directory`].
    ///
    /// Only the differences are written: relays send their snapshot every 30 s as a
    /// safety net, and with thousands of agents per relay, rewriting every row each
    /// time would be most of the store's write load while nothing changed. Returns
    /// how many entries were added, changed or removed.
    pub async fn replace_directory(
        &self,
        relay: &str,
        workspaces: &[String],
        standby: &[String],
        now: i64,
    ) -> Result<usize, StoreError> {
        let standby: std::collections::HashSet<&str> = standby.iter().map(String::as_str).collect();
        let wanted: std::collections::HashMap<&str, bool> = workspaces
            .iter()
            .map(|w| (w.as_str(), standby.contains(w.as_str())))
            .collect();
        let changes = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query("SELECT workspace, standby FROM directory WHERE relay = $1")
                .bind(relay).fetch_all(&mut *tx).await?;
            let mut held = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let workspace: String = row.try_get("workspace")?;
                held.insert(workspace, row.try_get::<i64, _>("standby")? != 0);
            }
            let mut changes = 0;
            for workspace in held.keys().filter(|w| !wanted.contains_key(w.as_str())) {
                sqlx::query("DELETE FROM directory WHERE workspace = $1 AND relay = $2")
                    .bind(workspace).bind(relay).execute(&mut *tx).await?;
                changes += 1;
            }
            for (&workspace, &is_standby) in &wanted {
                if held.get(workspace) == Some(&is_standby) {
                    continue;
                }
                if !is_standby {
                    sqlx::query("UPDATE directory SET standby = 1 WHERE workspace = $1 AND standby = 0")
                        .bind(workspace).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO directory (workspace, relay, standby, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (workspace, relay) DO UPDATE SET standby = excluded.standby, updated_at = excluded.updated_at")
                    .bind(workspace).bind(relay).bind(i64::from(is_standby)).bind(now).execute(&mut *tx).await?;
                changes += 1;
            }
            tx.commit().await?;
            changes
        });
        Ok(changes)
    }

    /// The relays a workspace's agent is on, its owner (primary) first.
    pub async fn directory(&self, workspace: &str) -> Result<Vec<String>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT relay FROM directory WHERE workspace = $1 ORDER BY standby, relay")
                .bind(workspace).fetch_all(pool).await?;
            rows.iter().map(|r| Ok(r.try_get("relay")?)).collect()
        })
    }

    /// Every (workspace, relay, standby) entry, primaries first within a workspace.
    pub async fn directory_all(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT workspace, relay, standby FROM directory ORDER BY workspace, standby, relay")
                .fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get("workspace")?, r.try_get("relay")?, r.try_get::<i64, _>("standby")? != 0)))
                .collect()
        })
    }
}

/// A database URL with its password hidden, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub mod series;
pub use series::{rollup, MeasurementRow, MinuteRow, RelayLoadRow, SeriesFilter};
pub mod telemetry;
pub use telemetry::{MetadataRow, StatsRow, TelemetryMarks};

#[cfg(test)]
mod tests;
