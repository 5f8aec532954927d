//! Test support shared by this crate's unit and integration tests: a fresh store on
//! each backend the environment offers. Not part of the API.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::store::{Store, StoreError};

/// The environment variable naming a PostgreSQL server the tests may create databases on.
pub const DATABASE_URL_ENV: &str = "FERRY_TEST_DATABASE_URL";

/// The PostgreSQL URL to test against, if any. Without one the caller's tests are
/// skipped loudly, except under CI (`CI` set), where a missing URL is a failure: CI
/// must prove the PostgreSQL path.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: CI is set but {DATABASE_URL_ENV} is not: the PostgreSQL store tests must run in CI");
            }
            // Written to the stderr handle, not through `eprintln!`, which the test
            // harness captures and hides for passing tests: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: PostgreSQL store tests ({DATABASE_URL_ENV} unset) in {test}"
            );
            None
        }
    }
}

/// Creates a fresh, uniquely named database on the server at `url`; returns options
/// for connecting to it.
pub async fn fresh_postgres_database(url: &str) -> Result<PgConnectOptions, StoreError> {
    let admin = PgConnectOptions::from_str(url)?;
    let name = format!("ferry_test_{}_{}", std::process::id(), fastrand_suffix());
    let mut conn = admin.connect().await?;
    drop_stale_databases(&mut conn).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(admin.database(&name))
}

/// Drops the scratch databases of test processes that are gone (their pid is in the
/// name), so repeated runs on one server do not pile them up.
async fn drop_stale_databases(conn: &mut sqlx::PgConnection) {
    let Ok(rows) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'ferry_test_%'",
    )
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    for name in rows {
        let pid = name.split('_').nth(2).unwrap_or("");
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            // Another process may be dropping it too: ignore failures.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut *conn)
                .await;
        }
    }
}

fn fastrand_suffix() -> String {
    let mut bytes = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A store on a fresh SQLite file in `dir`.
pub async fn sqlite_store(dir: &Path) -> Result<Store, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::BadUrl(e.to_string()))?;
    Store::open_sqlite(&dir.join("ferry.db")).await
}

/// A scratch directory under the system temp dir, unique per call.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ferry-control-test-{}-{}-{name}",
        std::process::id(),
        fastrand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
