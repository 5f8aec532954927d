//! Two control-plane replicas on one PostgreSQL database serve one consistent API.
//! Skipped loudly without `FERRY_TEST_DATABASE_URL` (and failing under CI).

mod common;

use common::*;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;

#[tokio::test]
async fn two_replicas_on_one_postgres_serve_the_same_api() {
    let Some(url) = ferry_control::testing::postgres_url("two_replicas_on_one_postgres") else {
        return;
    };
    let options = ferry_control::testing::fresh_postgres_database(&url)
        .await
        .expect("fresh database");
    let db_url = format!(
        "{}/{}",
        url.rsplit_once('/').unwrap().0,
        options.get_database().unwrap()
    );
    // The replicas share the CA (as they would share a secret volume) and the database.
    let dir = ferry_control::testing::scratch_dir("replicas");
    let (a, b) = tokio::join!(
        Plane::start_with(dir.clone(), Some(db_url.clone())),
        Plane::start_with(dir.clone(), Some(db_url.clone()))
    );
    assert_eq!(a.state.store().backend_name(), "postgres");

    // A user created on A logs in on B; a workspace made on B is listed on A.
    let alice = a.user("alice").await;
    let on_b: NewTokenResponse = b
        .client
        .post(
            "/api/v1/login",
            None,
            &LoginRequest {
                user: "alice".into(),
                password: "alice-password".into(),
            },
        )
        .await
        .unwrap();
    b.workspace(&on_b.token, "demo").await;
    let listed: WorkspacesResponse = a
        .client
        .get("/api/v1/workspaces", Some(&alice))
        .await
        .unwrap();
    assert_eq!(listed.workspaces.len(), 1);
    assert_eq!(listed.workspaces[0].label, "demo--alice");
    let dup = a
        .client
        .post::<_, WorkspaceInfo>(
            "/api/v1/workspaces",
            Some(&alice),
            &CreateWorkspaceRequest {
                name: "demo".into(),
                owner: None,
            },
        )
        .await;
    assert_eq!(code(dup), (409, "workspace_exists".into()));

    // Keys rotated on B: A signs with the new key and verifies old and new tokens.
    let rotated: RotateKeysResponse = b
        .client
        .post("/api/v1/keys/rotate", b.admin(), &serde_json::json!({}))
        .await
        .unwrap();
    let keys_on_a: KeysResponse = a.client.get("/api/v1/keys", None).await.unwrap();
    assert!(keys_on_a.keys.iter().any(|k| k.kid == rotated.kid));
    let fresh = a.mint(TokenKind::User, "alice").await;
    let me: MeResponse = b.client.get("/api/v1/me", Some(&fresh)).await.unwrap();
    assert_eq!(me.user, "alice");
    let me: MeResponse = b.client.get("/api/v1/me", Some(&alice)).await.unwrap();
    assert_eq!(me.user, "alice");

    // Revoked on A, refused on B; a relay long-polling B hears of it within seconds.
    let relay = a.mint(TokenKind::Relay, "eu-1").await;
    let _: RegisterRelayResponse = a
        .client
        .post(
            "/api/v1/relays/register",
            Some(&relay),
            &RegisterRelayRequest {
                region: "eu".into(),
                quic_addr: "127.0.0.1:4433".into(),
                names: vec!["127.0.0.1".into()],
                https_url: None,
                apps_domain: None,
            },
        )
        .await
        .unwrap();
    let current: HeartbeatResponse = b
        .client
        .post(
            "/api/v1/relays/heartbeat",
            Some(&relay),
            &HeartbeatRequest::default(),
        )
        .await
        .unwrap();
    let held = HeartbeatRequest {
        known: Some(current.digest.clone()),
        wait_secs: 30,
        ..Default::default()
    };
    let poll =
        b.client
            .post::<_, HeartbeatResponse>("/api/v1/relays/heartbeat", Some(&relay), &held);
    let jti = ferry_proto::token::peek_claims(&fresh).unwrap().jti;
    let path = format!("/api/v1/tokens/{jti}");
    let revoke = a.client.delete(&path, a.admin());
    let (polled, revoked) = tokio::join!(poll, revoke);
    revoked.unwrap();
    assert!(polled.unwrap().revoked.iter().any(|r| r.jti == jti));
    let r = b.client.get::<MeResponse>("/api/v1/me", Some(&fresh)).await;
    assert_eq!(code(r), (401, "token_revoked".into()));

    // The directory a relay reports to A routes on B.
    let _: serde_json::Value = a
        .client
        .post(
            "/api/v1/directory",
            Some(&relay),
            &DirectoryUpdate {
                workspace: "demo--alice".into(),
                connected: true,
                standby: false,
            },
        )
        .await
        .unwrap();
    let route: RouteResponse = b
        .client
        .get("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await
        .unwrap();
    assert_eq!(route.relay.name, "eu-1");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_api_works_the_same_on_postgres() {
    let Some(url) = ferry_control::testing::postgres_url("the_api_works_the_same_on_postgres")
    else {
        return;
    };
    let options = ferry_control::testing::fresh_postgres_database(&url)
        .await
        .expect("fresh database");
    let db_url = format!(
        "{}/{}",
        url.rsplit_once('/').unwrap().0,
        options.get_database().unwrap()
    );
    let p = Plane::start_with(ferry_control::testing::scratch_dir("pg-api"), Some(db_url)).await;
    let alice = p.user("alice").await;
    p.workspace(&alice, "demo").await;
    let dup = p
        .client
        .post::<_, UserInfo>(
            "/api/v1/users",
            p.admin(),
            &CreateUserRequest {
                name: "alice".into(),
                password: None,
            },
        )
        .await;
    assert_eq!(code(dup), (409, "user_exists".into()));
    let r = p
        .client
        .get::<RouteResponse>("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await;
    assert_eq!(code(r), (404, "agent_not_connected".into()));
    p.stop().await;
}

#[tokio::test]
async fn a_reading_written_through_one_replica_is_served_live_by_both() {
    let Some(url) = ferry_control::testing::postgres_url("telemetry_on_two_replicas") else {
        return;
    };
    let options = ferry_control::testing::fresh_postgres_database(&url)
        .await
        .expect("fresh database");
    let db_url = format!(
        "{}/{}",
        url.rsplit_once('/').unwrap().0,
        options.get_database().unwrap()
    );
    let dir = ferry_control::testing::scratch_dir("replicas-telemetry");
    let (a, b) = tokio::join!(
        Plane::start_with(dir.clone(), Some(db_url.clone())),
        Plane::start_with(dir.clone(), Some(db_url.clone()))
    );
    let alice = a.user("alice").await;
    a.workspace(&alice, "demo").await;
    let agent: NewTokenResponse = b
        .client
        .post(
            "/api/v1/workspaces/demo--alice/agent-tokens",
            Some(&alice),
            &CreateTokenRequest {
                name: "agent".into(),
                ttl_secs: None,
            },
        )
        .await
        .unwrap();
    let reading = |cpu: f64| AgentMetadataRequest {
        items: vec![MetadataItem {
            key: "branch".into(),
            value: format!("at-{cpu}"),
            ..Default::default()
        }],
        stats: Some(WorkspaceStats {
            cpu_percent: cpu,
            mem_used_bytes: 1 << 20,
            mem_limit_bytes: 1 << 30,
            ..Default::default()
        }),
    };
    // Written through A, read through both.
    let () = a
        .client
        .post(
            "/api/v1/agents/metadata",
            Some(&agent.token),
            &reading(21.0),
        )
        .await
        .unwrap();
    let path = "/api/v1/workspaces/demo--alice/telemetry";
    for (replica, plane) in [("A", &a), ("B", &b)] {
        let got: WorkspaceTelemetryResponse = plane.client.get(path, Some(&alice)).await.unwrap();
        let latest = got
            .latest
            .unwrap_or_else(|| panic!("{replica} has no reading"));
        assert_eq!(latest.stats.cpu_percent, 21.0, "{replica}");
        assert_eq!(got.items[0].value, "at-21", "{replica}");
    }
    // A live view on B hears of a reading written through A.
    let (status, stream) =
        EventStream::open(&b.url, &b.ca_pem, &format!("{path}/events"), &alice).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let (name, _) = stream
        .next(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(name, "snapshot");
    let () = a
        .client
        .post(
            "/api/v1/agents/metadata",
            Some(&agent.token),
            &reading(64.0),
        )
        .await
        .unwrap();
    let (name, data) = stream
        .next(std::time::Duration::from_secs(10))
        .await
        .expect("B pushes the reading A stored");
    assert_eq!(name, "update");
    let update: WorkspaceTelemetryResponse = serde_json::from_str(&data).unwrap();
    assert_eq!(update.latest.unwrap().stats.cpu_percent, 64.0);
    drop(stream);
    a.stop().await;
    b.stop().await;
}
