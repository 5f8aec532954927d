use super::*;
use crate::store::series::SeriesFilter;
use crate::testing;

/// A scratch directory removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every backend this environment offers, each with a fresh database.
async fn stores(test: &str) -> (Vec<Store>, Scratch) {
    let dir = Scratch(testing::scratch_dir(test));
    let mut stores = vec![testing::sqlite_store(&dir.0).await.expect("sqlite store")];
    if let Some(url) = testing::postgres_url(test) {
        let options = testing::fresh_postgres_database(&url)
            .await
            .expect("fresh PostgreSQL database");
        stores.push(Store::open_postgres(options).await.expect("postgres store"));
    }
    (stores, dir)
}

fn token(jti: &str, kind: &str, subject: &str, exp: i64) -> TokenRow {
    TokenRow {
        jti: jti.into(),
        kind: kind.into(),
        subject: subject.into(),
        name: "t".into(),
        kid: "k1".into(),
        created_at: 100,
        expires_at: exp,
        revoked_at: None,
    }
}

#[tokio::test]
async fn users_and_workspaces_round_trip_and_duplicates_conflict() {
    let (all, _dir) = stores("users_and_workspaces").await;
    for store in all {
        let b = store.backend_name();
        store
            .create_user("alice", Some("$argon2id$x"), 10)
            .await
            .unwrap();
        assert!(
            matches!(
                store.create_user("alice", None, 11).await,
                Err(StoreError::Conflict { .. })
            ),
            "{b}"
        );
        store.ensure_user("alice", 12).await.unwrap();
        store.ensure_user("bob", 12).await.unwrap();
        let alice = store.user("alice").await.unwrap().unwrap();
        assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$x"), "{b}");
        assert!(store.set_password("bob", "h").await.unwrap());
        assert!(!store.set_password("carol", "h").await.unwrap());
        assert_eq!(store.users().await.unwrap().len(), 2, "{b}");
        assert_eq!(store.user("nobody").await.unwrap(), None);

        let ws = WorkspaceRow {
            label: "demo--alice".into(),
            name: "demo".into(),
            owner: "alice".into(),
            created_at: 20,
        };
        store.create_workspace(&ws).await.unwrap();
        assert!(
            matches!(
                store.create_workspace(&ws).await,
                Err(StoreError::Conflict { .. })
            ),
            "{b}"
        );
        assert_eq!(
            store.workspace("demo--alice").await.unwrap(),
            Some(ws.clone())
        );
        assert_eq!(
            store.workspaces(Some("alice")).await.unwrap(),
            vec![ws.clone()]
        );
        assert!(store.workspaces(Some("bob")).await.unwrap().is_empty());
        assert_eq!(store.workspaces(None).await.unwrap().len(), 1);
        assert!(store.delete_workspace("demo--alice").await.unwrap());
        assert!(!store.delete_workspace("demo--alice").await.unwrap());
        store.close().await;
    }
}

#[tokio::test]
async fn revoked_tokens_are_listed_until_they_expire() {
    let (all, _dir) = stores("revocations").await;
    for store in all {
        let b = store.backend_name();
        store
            .record_token(&token("a", "agent", "w--x", 1000))
            .await
            .unwrap();
        store
            .record_token(&token("b", "agent", "w--x", 50))
            .await
            .unwrap();
        store
            .record_token(&token("c", "user", "x", 1000))
            .await
            .unwrap();
        assert!(matches!(
            store.record_token(&token("a", "agent", "w--x", 1000)).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.tokens("agent", "w--x").await.unwrap().len(), 2, "{b}");
        assert!(store.revoke_token("a", 200).await.unwrap());
        assert!(
            !store.revoke_token("a", 201).await.unwrap(),
            "{b}: revoked twice"
        );
        assert!(store.revoke_token("b", 200).await.unwrap());
        assert!(!store.revoke_token("zzz", 200).await.unwrap());
        assert!(store.is_revoked("a").await.unwrap());
        assert!(!store.is_revoked("c").await.unwrap());
        // `b` expired at 50: no verifier needs to hear about it any more.
        assert_eq!(
            store.revocations(100).await.unwrap(),
            vec![("a".to_string(), 1000)],
            "{b}"
        );
        assert_eq!(
            store.token("a").await.unwrap().unwrap().revoked_at,
            Some(200)
        );
        assert_eq!(store.last_expiry_signed_by("k1").await.unwrap(), Some(1000));
        assert_eq!(store.last_expiry_signed_by("k9").await.unwrap(), None);
        assert_eq!(store.prune_expired_tokens(100).await.unwrap(), 1, "{b}");
        assert_eq!(store.token("b").await.unwrap(), None);
        assert!(store.token("a").await.unwrap().is_some());
        store.close().await;
    }
}

#[tokio::test]
async fn keys_relays_and_directory() {
    let (all, _dir) = stores("keys_relays").await;
    for store in all {
        let b = store.backend_name();
        for (kid, at) in [("k1", 1), ("k2", 2)] {
            store
                .insert_key(&KeyRow {
                    kid: kid.into(),
                    pkcs8_b64: "AAAA".into(),
                    created_at: at,
                    retired_at: None,
                    dropped_at: None,
                })
                .await
                .unwrap();
        }
        store.retire_keys_except("k2", 5).await.unwrap();
        let keys = store.keys().await.unwrap();
        assert_eq!(keys[0].retired_at, Some(5), "{b}");
        assert_eq!(keys[1].retired_at, None, "{b}");
        store.drop_keys_except("k2", 6).await.unwrap();
        let keys = store.keys().await.unwrap();
        assert_eq!(
            (keys[0].retired_at, keys[0].dropped_at),
            (Some(5), Some(6)),
            "{b}"
        );
        assert_eq!(keys[1].dropped_at, None, "{b}");

        let mut relay = RelayRow {
            name: "eu-1".into(),
            region: "eu".into(),
            quic_addr: "127.0.0.1:1".into(),
            server_name: "127.0.0.1".into(),
            registered_at: 1,
            last_heartbeat: 1,
            incarnation: 1,
            draining: false,
            https_url: "https://127.0.0.1:1".into(),
            apps_domain: "apps.eu.localhost".into(),
        };
        store.upsert_relay(&relay).await.unwrap();
        relay.quic_addr = "127.0.0.1:2".into();
        store.upsert_relay(&relay).await.unwrap();
        assert!(store.heartbeat("eu-1", 9, false).await.unwrap());
        assert!(!store.heartbeat("us-1", 9, false).await.unwrap());
        let got = store.relay("eu-1").await.unwrap().unwrap();
        assert_eq!(
            (got.quic_addr.as_str(), got.last_heartbeat),
            ("127.0.0.1:2", 9),
            "{b}"
        );
        assert_eq!(store.relays().await.unwrap().len(), 1);

        // Draining sticks until the relay registers again (a new process).
        assert!(store.heartbeat("eu-1", 10, true).await.unwrap());
        assert!(store.heartbeat("eu-1", 11, false).await.unwrap());
        assert!(store.relay("eu-1").await.unwrap().unwrap().draining, "{b}");
        relay.incarnation = 2;
        store.upsert_relay(&relay).await.unwrap();
        let got = store.relay("eu-1").await.unwrap().unwrap();
        assert!(!got.draining, "{b}");
        assert_eq!(got.incarnation, 2, "{b}");

        let dir = |v: Vec<String>| v;
        // An agent holds its owner and a standby; the owner comes first.
        store.set_directory("w--x", "eu-2", true, 3).await.unwrap();
        store.set_directory("w--x", "eu-1", false, 4).await.unwrap();
        assert_eq!(
            dir(store.directory("w--x").await.unwrap()),
            ["eu-1", "eu-2"],
            "{b}"
        );
        // Each relay's "left" clears only its own entry.
        store.clear_directory("w--x", "eu-1").await.unwrap();
        assert_eq!(store.directory("w--x").await.unwrap(), ["eu-2"], "{b}");
        store.clear_directory("w--x", "eu-2").await.unwrap();
        assert!(store.directory("w--x").await.unwrap().is_empty());

        // A relay's snapshot replaces its own entries only.
        store.set_directory("a--x", "eu-1", false, 5).await.unwrap();
        store.set_directory("b--x", "eu-2", false, 5).await.unwrap();
        store
            .replace_directory("eu-1", &["c--x".into(), "b--x".into()], &[], 6)
            .await
            .unwrap();
        assert!(store.directory("a--x").await.unwrap().is_empty(), "{b}");
        assert_eq!(
            store.directory("b--x").await.unwrap(),
            ["eu-1", "eu-2"],
            "{b}"
        );
        assert_eq!(store.directory("c--x").await.unwrap(), ["eu-1"], "{b}");
        assert_eq!(store.directory_all().await.unwrap().len(), 3, "{b}");
        // A claim of ownership demotes the owner before it: never two owners.
        store.set_directory("b--x", "eu-2", false, 7).await.unwrap();
        assert_eq!(
            store.directory("b--x").await.unwrap(),
            ["eu-2", "eu-1"],
            "{b}"
        );
        // Only differences are written: the same snapshot again changes nothing; a
        // role that changed is rewritten, and claiming ownership demotes the owner.
        let snapshot = ["c--x".to_string(), "b--x".to_string()];
        let standby = ["b--x".to_string()];
        assert_eq!(
            store
                .replace_directory("eu-1", &snapshot, &standby, 7)
                .await
                .unwrap(),
            0,
            "{b}"
        );
        assert_eq!(
            store
                .replace_directory("eu-1", &snapshot, &[], 7)
                .await
                .unwrap(),
            1,
            "{b}"
        );
        assert_eq!(
            store.directory("b--x").await.unwrap(),
            ["eu-1", "eu-2"],
            "{b}"
        );
        assert_eq!(
            store.replace_directory("eu-1", &[], &[], 7).await.unwrap(),
            2,
            "{b}"
        );
        assert!(store.directory("c--x").await.unwrap().is_empty());
        assert_eq!(store.directory("b--x").await.unwrap(), ["eu-2"], "{b}");

        // Claims racing from many relays (as from two control-plane replicas): one
        // owner at the end, every relay listed.
        let mut claims = tokio::task::JoinSet::new();
        for i in 0..8 {
            let store = store.clone();
            claims.spawn(async move {
                store
                    .set_directory("r--x", &format!("r-{i}"), false, 8)
                    .await
            });
        }
        while let Some(claim) = claims.join_next().await {
            claim.unwrap().unwrap();
        }
        let rows: Vec<_> = store
            .directory_all()
            .await
            .unwrap()
            .into_iter()
            .filter(|(w, _, _)| w == "r--x")
            .collect();
        assert_eq!(rows.len(), 8, "{b}");
        assert_eq!(
            rows.iter().filter(|(_, _, standby)| !standby).count(),
            1,
            "{b}: {rows:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn reopening_a_sqlite_file_keeps_the_data_and_migrates_once() {
    let dir = testing::scratch_dir("reopen");
    let store = testing::sqlite_store(&dir).await.unwrap();
    store.ensure_user("alice", 1).await.unwrap();
    store.close().await;
    let again = testing::sqlite_store(&dir).await.unwrap();
    assert!(again.user("alice").await.unwrap().is_some());
    again.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn database_urls_are_redacted_in_messages() {
    assert_eq!(
        redact("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact("postgres://h/db"), "postgres://h/db");
}

fn sample(source: &str, target: &str, at_ms: i64, rtt_us: i64) -> MeasurementRow {
    MeasurementRow {
        source: source.into(),
        target: target.into(),
        at_ms,
        rtt_us,
        jitter_us: 7,
        loss_ppm: 0,
    }
}

#[tokio::test]
async fn latency_series_are_filtered_rolled_up_and_pruned() {
    use crate::measurements::{MINUTE_MS, RAW_RETENTION_MS, ROLLUP_DELAY_MS};
    let (all, _dir) = stores("series").await;
    let minute = MINUTE_MS as i64;
    // A fixed "now" on a minute boundary, an hour and a bit of samples before it.
    let now = 30_000 * minute;
    for store in all {
        let b = store.backend_name();
        let mut rows = Vec::new();
        for i in 0..70 {
            let at = now - (70 - i) * minute + 5_000;
            rows.push(sample("relay:eu-1", "relay:us-1", at, 80_000 + i));
            rows.push(sample("relay:eu-1", "relay:us-1", at + 10_000, 90_000 + i));
            rows.push(sample("client:al_ice", "relay:eu-1", at, 1_000));
        }
        rows.push(sample("relay:us-1", "relay:eu-1", now - 1_000, 81_000));
        rows.push(sample("relay:us-1", "relay:eu-1", now - 2_000, 82_000));
        store.insert_measurements(&rows).await.unwrap();

        let since = now - 5 * minute;
        let pair = SeriesFilter {
            source: Some("relay:eu-1"),
            target: Some("relay:us-1"),
            ..Default::default()
        };
        let got = store.measurements(pair, since).await.unwrap();
        assert_eq!(got.len(), 10, "{b}: two samples a minute for five minutes");
        assert!(got.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "{b}");
        let relays_only = SeriesFilter {
            source_prefix: Some("relay:"),
            ..Default::default()
        };
        let got = store.measurements(relays_only, since).await.unwrap();
        assert!(got.iter().all(|r| r.source.starts_with("relay:")), "{b}");
        let mesh = SeriesFilter {
            source_prefix: Some("relay:"),
            target_prefix: Some("relay:"),
            ..Default::default()
        };
        assert_eq!(
            store.measurements(mesh, since).await.unwrap().len(),
            12,
            "{b}"
        );
        let to_agents = SeriesFilter {
            target_prefix: Some("agent:"),
            ..Default::default()
        };
        assert!(store
            .measurements(to_agents, since)
            .await
            .unwrap()
            .is_empty());
        // `_` in a prefix is a literal, not a LIKE wildcard.
        let odd = SeriesFilter {
            source_prefix: Some("client:al_"),
            ..Default::default()
        };
        assert_eq!(
            store.measurements(odd, since).await.unwrap().len(),
            5,
            "{b}"
        );
        let odd = SeriesFilter {
            source_prefix: Some("client:alx"),
            ..Default::default()
        };
        assert!(
            store.measurements(odd, since).await.unwrap().is_empty(),
            "{b}"
        );

        // The newest sample of each mesh pair.
        let latest = store.latest_mesh(now - 2 * minute).await.unwrap();
        assert_eq!(latest.len(), 2, "{b}");
        assert_eq!(latest[1].rtt_us, 81_000, "{b}");

        // Rollup: every minute in raw retention up to the delay, once.
        let stored = crate::store::rollup(&store, now).await.unwrap();
        let minutes = RAW_RETENTION_MS as i64 / minute - ROLLUP_DELAY_MS as i64 / minute;
        // Two pairs with a sample every minute of that window.
        assert_eq!(stored as i64, 2 * minutes, "{b}");
        assert_eq!(
            crate::store::rollup(&store, now).await.unwrap(),
            0,
            "{b}: idempotent"
        );
        let buckets = store.minutes(pair, 0).await.unwrap();
        let first = &buckets[0];
        assert_eq!(first.samples, 2, "{b}");
        assert_eq!(
            first.max_us - first.p50_us,
            10_000,
            "{b}: median is the lower middle"
        );
        assert_eq!(
            store.last_rolled_minute().await.unwrap(),
            Some(now - ROLLUP_DELAY_MS as i64 - minute),
            "{b}"
        );
        // A minute later, one more minute per pair.
        assert_eq!(
            crate::store::rollup(&store, now + minute).await.unwrap(),
            2,
            "{b}"
        );

        store
            .insert_relay_load(&RelayLoadRow {
                relay: "eu-1".into(),
                at_ms: now - 10,
                agents: 3,
                streams: 1,
                bytes: 1 << 40,
            })
            .await
            .unwrap();
        let load = store.relay_load(now - 1000).await.unwrap();
        assert_eq!((load.len(), load[0].bytes), (1, 1 << 40), "{b}");

        let pruned = store
            .prune_series(now - 30 * minute, now - 60 * minute, now)
            .await
            .unwrap();
        assert!(pruned > 0, "{b}");
        assert!(store
            .measurements(SeriesFilter::default(), 0)
            .await
            .unwrap()
            .iter()
            .all(|r| r.at_ms >= now - 30 * minute));
        assert!(store.relay_load(0).await.unwrap().is_empty(), "{b}");
        store.close().await;
    }
}

fn reading(at_ms: i64, cpu_bp: i64) -> StatsRow {
    StatsRow {
        workspace: "demo--alice".into(),
        at_ms,
        cpu_bp,
        mem_used: 100,
        mem_limit: 1000,
        disk_used: 5,
        disk_total: 50,
        load_milli: [1, 2, 3],
        uptime_secs: 60,
        source: "cgroup".into(),
    }
}

fn item_row(key: &str, value: &str, at_ms: i64) -> MetadataRow {
    MetadataRow {
        key: key.into(),
        name: None,
        value: value.into(),
        error: None,
        updated_ms: at_ms,
    }
}

#[tokio::test]
async fn telemetry_keeps_one_reading_per_bucket_and_prunes_in_bulk() {
    let (all, _dir) = stores("telemetry_buckets").await;
    for store in all {
        let b = store.backend_name();
        let ws = "demo--alice";
        // Two readings in one 5 s bucket: the later replaces the earlier.
        for (at, cpu) in [(10_000, 100), (12_000, 200), (15_000, 300), (21_000, 400)] {
            store
                .record_telemetry(ws, Some(&reading(at, cpu)), 5_000, &[], 32)
                .await
                .unwrap();
        }
        let got: Vec<(i64, i64)> = store
            .stats_since(ws, 0)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.at_ms, r.cpu_bp))
            .collect();
        assert_eq!(
            got,
            vec![(12_000, 200), (15_000, 300), (21_000, 400)],
            "{b}"
        );
        assert_eq!(
            store.latest_stats(ws).await.unwrap().unwrap().at_ms,
            21_000,
            "{b}"
        );
        assert_eq!(store.stats_since(ws, 15_001).await.unwrap().len(), 1, "{b}");
        assert_eq!(store.latest_stats("other--bob").await.unwrap(), None, "{b}");
        let marks = store.telemetry_marks(ws).await.unwrap();
        assert_eq!(
            (marks.stats_ms, marks.metadata_ms),
            (Some(21_000), None),
            "{b}"
        );

        // Bulk pruning by time: readings before 15 s, items untouched since 20 s.
        store
            .record_telemetry(
                ws,
                None,
                5_000,
                &[item_row("old", "1", 1_000), item_row("new", "2", 30_000)],
                32,
            )
            .await
            .unwrap();
        let pruned = store.prune_telemetry(15_000, 20_000).await.unwrap();
        assert_eq!(pruned, 2, "{b}: one reading and one item");
        assert_eq!(store.stats_since(ws, 0).await.unwrap().len(), 2, "{b}");
        let keys: Vec<String> = store
            .workspace_metadata(ws)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["new"], "{b}");

        store.delete_telemetry(ws).await.unwrap();
        assert_eq!(
            store.telemetry_marks(ws).await.unwrap(),
            TelemetryMarks::default(),
            "{b}"
        );
    }
}

#[tokio::test]
async fn telemetry_over_the_key_bound_stores_nothing() {
    let (all, _dir) = stores("telemetry_bound").await;
    for store in all {
        let b = store.backend_name();
        let ws = "demo--alice";
        let three: Vec<MetadataRow> = ["a", "b", "c"]
            .iter()
            .map(|k| item_row(k, "1", 5))
            .collect();
        store
            .record_telemetry(ws, None, 5_000, &three, 3)
            .await
            .unwrap();
        // Rewriting the same keys never counts against the bound.
        let rewrite: Vec<MetadataRow> = ["a", "b", "c"]
            .iter()
            .map(|k| item_row(k, "2", 6))
            .collect();
        store
            .record_telemetry(ws, None, 5_000, &rewrite, 3)
            .await
            .unwrap();
        // A fourth key is refused, and the reading sent with it is not kept either.
        let err = store
            .record_telemetry(
                ws,
                Some(&reading(9_000, 1)),
                5_000,
                &[item_row("d", "x", 9), item_row("a", "3", 9)],
                3,
            )
            .await;
        assert!(
            matches!(
                err,
                Err(StoreError::TooMany {
                    count: 4,
                    max: 3,
                    ..
                })
            ),
            "{b}: {err:?}"
        );
        let items = store.workspace_metadata(ws).await.unwrap();
        let values: Vec<(&str, &str)> = items
            .iter()
            .map(|m| (m.key.as_str(), m.value.as_str()))
            .collect();
        assert_eq!(values, vec![("a", "2"), ("b", "2"), ("c", "2")], "{b}");
        assert_eq!(store.latest_stats(ws).await.unwrap(), None, "{b}");
        // Another workspace has its own bound.
        store
            .record_telemetry("x--bob", None, 5_000, &three, 3)
            .await
            .unwrap();
    }
}
