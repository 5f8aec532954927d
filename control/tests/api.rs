//! Every `/api/v1` endpoint over real HTTPS on 127.0.0.1:0: the happy path and the
//! refusals, each with its typed code.

mod common;

use common::*;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;

#[tokio::test]
async fn users_log_in_with_passwords_and_manage_personal_tokens() {
    let p = Plane::start("users").await;
    let alice = p.user("alice").await;

    // Duplicates, bad names, short passwords: 4xx with a code.
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
    for (name, password) in [("Bad_Name", None), ("bob", Some("short".to_string()))] {
        let r = p
            .client
            .post::<_, UserInfo>(
                "/api/v1/users",
                p.admin(),
                &CreateUserRequest {
                    name: name.into(),
                    password,
                },
            )
            .await;
        assert_eq!(code(r), (400, "bad_request".into()), "{name}");
    }
    // Only an admin creates and lists users.
    let r = p
        .client
        .post::<_, UserInfo>(
            "/api/v1/users",
            Some(&alice),
            &CreateUserRequest {
                name: "eve".into(),
                password: None,
            },
        )
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    let users: UsersResponse = p.client.get("/api/v1/users", p.admin()).await.unwrap();
    assert_eq!(users.users.len(), 1);
    assert!(users.users[0].has_password);

    // Wrong password and unknown user: the same answer.
    for (user, password) in [("alice", "wrong-password"), ("nobody", "alice-password")] {
        let r = p
            .client
            .post::<_, NewTokenResponse>(
                "/api/v1/login",
                None,
                &LoginRequest {
                    user: user.into(),
                    password: password.into(),
                },
            )
            .await;
        assert_eq!(code(r), (401, "invalid_credentials".into()), "{user}");
    }
    let me: MeResponse = p.client.get("/api/v1/me", Some(&alice)).await.unwrap();
    assert_eq!(me.user, "alice");
    assert_eq!(
        code(p.client.get::<MeResponse>("/api/v1/me", None).await),
        (401, "unauthorized".into())
    );

    // Personal tokens: create, list, use, revoke.
    let personal: NewTokenResponse = p
        .client
        .post(
            "/api/v1/me/tokens",
            Some(&alice),
            &CreateTokenRequest {
                name: "laptop".into(),
                ttl_secs: Some(600),
            },
        )
        .await
        .unwrap();
    let listed: TokensResponse = p
        .client
        .get("/api/v1/me/tokens", Some(&alice))
        .await
        .unwrap();
    assert!(listed
        .tokens
        .iter()
        .any(|t| t.id == personal.id && t.name == "laptop" && !t.revoked));
    assert!(listed.tokens.iter().any(|t| t.name == "session"));
    let me: MeResponse = p
        .client
        .get("/api/v1/me", Some(&personal.token))
        .await
        .unwrap();
    assert_eq!(me.user, "alice");
    let bad_name = p
        .client
        .post::<_, NewTokenResponse>(
            "/api/v1/me/tokens",
            Some(&alice),
            &CreateTokenRequest::default(),
        )
        .await;
    assert_eq!(code(bad_name), (400, "bad_request".into()));

    // Bob cannot revoke alice's token: it looks missing to him.
    let bob = p.user("bob").await;
    let r = p
        .client
        .delete(&format!("/api/v1/me/tokens/{}", personal.id), Some(&bob))
        .await;
    assert_eq!(code(r), (404, "unknown_token".into()));
    p.client
        .delete(&format!("/api/v1/me/tokens/{}", personal.id), Some(&alice))
        .await
        .unwrap();
    let r = p
        .client
        .get::<MeResponse>("/api/v1/me", Some(&personal.token))
        .await;
    assert_eq!(code(r), (401, "token_revoked".into()));
    p.stop().await;
}

#[tokio::test]
async fn workspaces_belong_to_their_owner_and_others_see_nothing() {
    let p = Plane::start("workspaces").await;
    let alice = p.user("alice").await;
    let bob = p.user("bob").await;
    let ws = p.workspace(&alice, "demo").await;
    assert_eq!(ws.label, "demo--alice");
    let dup = p
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
    for (token, req, want) in [
        (&alice, ("Bad", None), (400, "bad_request")),
        (&alice, ("x", Some("bob")), (403, "forbidden")),
        (&p.admin, ("x", None), (400, "bad_request")),
        (&p.admin, ("x", Some("ghost")), (404, "unknown_user")),
    ] {
        let r = p
            .client
            .post::<_, WorkspaceInfo>(
                "/api/v1/workspaces",
                Some(token),
                &CreateWorkspaceRequest {
                    name: req.0.into(),
                    owner: req.1.map(String::from),
                },
            )
            .await;
        assert_eq!(code(r), (want.0, want.1.to_string()), "{req:?}");
    }
    // The admin may create one for bob.
    let _: WorkspaceInfo = p
        .client
        .post(
            "/api/v1/workspaces",
            p.admin(),
            &CreateWorkspaceRequest {
                name: "web".into(),
                owner: Some("bob".into()),
            },
        )
        .await
        .unwrap();

    let mine: WorkspacesResponse = p
        .client
        .get("/api/v1/workspaces", Some(&alice))
        .await
        .unwrap();
    assert_eq!(mine.workspaces, vec![ws.clone()]);
    let all: WorkspacesResponse = p.client.get("/api/v1/workspaces", p.admin()).await.unwrap();
    assert_eq!(all.workspaces.len(), 2);
    let shown: WorkspaceInfo = p
        .client
        .get("/api/v1/workspaces/demo--alice", Some(&alice))
        .await
        .unwrap();
    assert_eq!(shown, ws);

    // Bob asking for alice's workspace gets exactly what a missing one gets.
    for path in ["", "/route", "/agent-tokens"] {
        let theirs = p
            .client
            .get::<serde_json::Value>(&format!("/api/v1/workspaces/demo--alice{path}"), Some(&bob))
            .await;
        let missing = p
            .client
            .get::<serde_json::Value>(
                &format!("/api/v1/workspaces/ghost--alice{path}"),
                Some(&bob),
            )
            .await;
        let (theirs, missing) = (format!("{theirs:?}"), format!("{missing:?}"));
        assert!(theirs.contains("unknown_workspace"), "{theirs}");
        assert_eq!(theirs.replace("demo", "ghost"), missing);
    }
    // The owner's existing workspace without an agent: a different, honest answer.
    let r = p
        .client
        .get::<RouteResponse>("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await;
    assert_eq!(code(r), (404, "agent_not_connected".into()));
    let r = p
        .client
        .get::<RouteResponse>("/api/v1/workspaces/nope--alice/route", Some(&alice))
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));

    // Deleting: bob cannot, alice can; then it is gone.
    let r = p
        .client
        .delete("/api/v1/workspaces/demo--alice", Some(&bob))
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));
    p.client
        .delete("/api/v1/workspaces/demo--alice", Some(&alice))
        .await
        .unwrap();
    let r = p
        .client
        .get::<WorkspaceInfo>("/api/v1/workspaces/demo--alice", Some(&alice))
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));
    p.stop().await;
}

#[tokio::test]
async fn agent_tokens_are_created_listed_revoked_and_rotated() {
    let p = Plane::start("agent-tokens").await;
    let alice = p.user("alice").await;
    let bob = p.user("bob").await;
    p.workspace(&alice, "demo").await;
    let base = "/api/v1/workspaces/demo--alice/agent-tokens";
    let req = CreateTokenRequest {
        name: "ci".into(),
        ttl_secs: None,
    };
    let first: NewTokenResponse = p.client.post(base, Some(&alice), &req).await.unwrap();
    let claims = ferry_proto::token::peek_claims(&first.token).unwrap();
    assert_eq!(
        (claims.kind, claims.sub.as_str()),
        (TokenKind::Agent, "demo--alice")
    );
    assert_eq!(claims.jti, first.id);
    // The agent token works where agents go (the region map)...
    let _: RegionsResponse = p
        .client
        .get("/api/v1/regions", Some(&first.token))
        .await
        .unwrap();
    // ...and nowhere a user goes.
    let r = p
        .client
        .get::<MeResponse>("/api/v1/me", Some(&first.token))
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    // Bob cannot mint one for alice's workspace.
    let r = p
        .client
        .post::<_, NewTokenResponse>(base, Some(&bob), &req)
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));

    let rotated: NewTokenResponse = p
        .client
        .post(
            &format!("{base}/{}/rotate", first.id),
            Some(&alice),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_ne!(rotated.id, first.id);
    let list: TokensResponse = p.client.get(base, Some(&alice)).await.unwrap();
    assert_eq!(list.tokens.len(), 2);
    assert!(list.tokens.iter().all(|t| t.name == "ci"));
    assert!(
        list.tokens
            .iter()
            .find(|t| t.id == first.id)
            .unwrap()
            .revoked
    );
    assert!(
        !list
            .tokens
            .iter()
            .find(|t| t.id == rotated.id)
            .unwrap()
            .revoked
    );
    let r = p
        .client
        .get::<RegionsResponse>("/api/v1/regions", Some(&first.token))
        .await;
    assert_eq!(code(r), (401, "token_revoked".into()));

    p.client
        .delete(&format!("{base}/{}", rotated.id), Some(&alice))
        .await
        .unwrap();
    let revs: RevocationsResponse = p
        .client
        .get("/api/v1/revocations", p.admin())
        .await
        .unwrap();
    let ids: Vec<&str> = revs.revoked.iter().map(|r| r.jti.as_str()).collect();
    assert!(ids.contains(&first.id.as_str()) && ids.contains(&rotated.id.as_str()));
    let r = p
        .client
        .delete(&format!("{base}/not-a-token"), Some(&alice))
        .await;
    assert_eq!(code(r), (404, "unknown_token".into()));
    // A user's own personal token id is not an agent token of the workspace.
    let mine: TokensResponse = p
        .client
        .get("/api/v1/me/tokens", Some(&alice))
        .await
        .unwrap();
    let r = p
        .client
        .delete(&format!("{base}/{}", mine.tokens[0].id), Some(&alice))
        .await;
    assert_eq!(code(r), (404, "unknown_token".into()));
    p.stop().await;
}

#[tokio::test]
async fn agents_report_metadata_that_only_their_workspace_owner_reads() {
    let p = Plane::start("metadata").await;
    let alice = p.user("alice").await;
    let bob = p.user("bob").await;
    p.workspace(&alice, "demo").await;
    let agent: NewTokenResponse = p
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
    let report = |items: &[(&str, &str)]| AgentMetadataRequest {
        items: items
            .iter()
            .map(|(k, v)| MetadataItem {
                key: k.to_string(),
                value: v.to_string(),
                ..Default::default()
            })
            .collect(),
        stats: None,
    };
    let path = "/api/v1/agents/metadata";
    let () = p
        .client
        .post(
            path,
            Some(&agent.token),
            &report(&[("load", "0.5"), ("disk", "10%")]),
        )
        .await
        .unwrap();
    let () = p
        .client
        .post(path, Some(&agent.token), &report(&[("load", "0.7")]))
        .await
        .unwrap();
    let read = "/api/v1/workspaces/demo--alice/metadata";
    let got: WorkspaceMetadataResponse = p.client.get(read, Some(&alice)).await.unwrap();
    assert_eq!(got.workspace, "demo--alice");
    let pairs: Vec<(&str, &str)> = got
        .items
        .iter()
        .map(|r| (r.key.as_str(), r.value.as_str()))
        .collect();
    assert_eq!(pairs, vec![("disk", "10%"), ("load", "0.7")]);
    assert!(got.items.iter().all(|r| r.updated_at > 0));

    // Another user sees nothing, not even that it exists; a user token cannot report.
    let r = p
        .client
        .get::<WorkspaceMetadataResponse>(read, Some(&bob))
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));
    let r = p
        .client
        .post::<_, ()>(path, Some(&alice), &report(&[("x", "1")]))
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    // Bad keys, oversized values, too many keys: typed 400s, nothing stored.
    let r = p
        .client
        .post::<_, ()>(path, Some(&agent.token), &report(&[("Bad Key", "1")]))
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));
    let big = "v".repeat(MAX_METADATA_VALUE_LEN + 1);
    let r = p
        .client
        .post::<_, ()>(path, Some(&agent.token), &report(&[("big", &big)]))
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));
    let keys: Vec<String> = (0..MAX_METADATA_KEYS).map(|i| format!("k{i}")).collect();
    let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "1")).collect();
    let r = p
        .client
        .post::<_, ()>(path, Some(&agent.token), &report(&many))
        .await;
    assert_eq!(code(r), (400, "too_many_keys".into()));
    let got: WorkspaceMetadataResponse = p.client.get(read, Some(&alice)).await.unwrap();
    assert_eq!(got.items.len(), 2);

    // An agent token for a workspace that does not exist reports nowhere.
    let stray = p.mint(TokenKind::Agent, "ghost--alice").await;
    let r = p
        .client
        .post::<_, ()>(path, Some(&stray), &report(&[("x", "1")]))
        .await;
    assert_eq!(code(r), (404, "unknown_workspace".into()));
    // Deleting the workspace forgets its readings (and revokes the agent's token).
    p.client
        .delete("/api/v1/workspaces/demo--alice", Some(&alice))
        .await
        .unwrap();
    p.workspace(&alice, "demo").await;
    let got: WorkspaceMetadataResponse = p.client.get(read, Some(&alice)).await.unwrap();
    assert!(got.items.is_empty(), "{got:?}");
    p.stop().await;
}

#[tokio::test]
async fn relays_enroll_heartbeat_report_agents_and_show_their_health() {
    let p = Plane::start("relays").await;
    let relay = p.mint(TokenKind::Relay, "eu-1").await;
    let alice = p.user("alice").await;
    p.workspace(&alice, "demo").await;

    // A relay must enroll before it heartbeats.
    let r = p
        .client
        .post::<_, HeartbeatResponse>(
            "/api/v1/relays/heartbeat",
            Some(&relay),
            &HeartbeatRequest::default(),
        )
        .await;
    assert_eq!(code(r), (404, "unknown_relay".into()));
    // And before it reports its directory.
    let r = p
        .client
        .put(
            "/api/v1/directory",
            Some(&relay),
            &DirectorySnapshot::default(),
        )
        .await;
    assert_eq!(code(r), (404, "unknown_relay".into()));
    let reg = RegisterRelayRequest {
        region: "eu".into(),
        quic_addr: "127.0.0.1:4433".into(),
        names: vec!["127.0.0.1".into()],
        https_url: None,
        apps_domain: None,
    };
    let r = p
        .client
        .post::<_, RegisterRelayResponse>("/api/v1/relays/register", Some(&alice), &reg)
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    for bad in [
        RegisterRelayRequest {
            region: "EU!".into(),
            ..reg.clone()
        },
        RegisterRelayRequest {
            quic_addr: "nowhere".into(),
            ..reg.clone()
        },
        RegisterRelayRequest {
            quic_addr: "relay.example.com:0".into(),
            ..reg.clone()
        },
        RegisterRelayRequest {
            quic_addr: "relay example.com:4433".into(),
            ..reg.clone()
        },
        RegisterRelayRequest {
            names: vec![],
            ..reg.clone()
        },
    ] {
        let r = p
            .client
            .post::<_, RegisterRelayResponse>("/api/v1/relays/register", Some(&relay), &bad)
            .await;
        assert_eq!(code(r), (400, "bad_request".into()), "{bad:?}");
    }
    let enrolled: RegisterRelayResponse = p
        .client
        .post("/api/v1/relays/register", Some(&relay), &reg)
        .await
        .unwrap();
    assert!(enrolled.cert_pem.contains("CERTIFICATE") && !enrolled.keys.is_empty());
    let beat: HeartbeatResponse = p
        .client
        .post(
            "/api/v1/relays/heartbeat",
            Some(&relay),
            &HeartbeatRequest {
                agents: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(beat.keys, enrolled.keys);
    let map: RegionsResponse = p.client.get("/api/v1/regions", Some(&alice)).await.unwrap();
    assert_eq!(map.regions.len(), 1);
    assert_eq!(map.regions[0].relays[0].health, Some(RelayHealth::Ok));
    // A relay may advertise a DNS name: published as registered, in canonical form.
    let named = RegisterRelayRequest {
        quic_addr: "Relay-1.EU.Example.com.:4433".into(),
        ..reg.clone()
    };
    let _: RegisterRelayResponse = p
        .client
        .post("/api/v1/relays/register", Some(&relay), &named)
        .await
        .unwrap();
    let map: RegionsResponse = p.client.get("/api/v1/regions", Some(&alice)).await.unwrap();
    assert_eq!(
        map.regions[0].relays[0].quic_addr,
        "relay-1.eu.example.com:4433"
    );
    let _: RegisterRelayResponse = p
        .client
        .post("/api/v1/relays/register", Some(&relay), &reg)
        .await
        .unwrap();
    assert_eq!(
        code(
            p.client
                .get::<RegionsResponse>("/api/v1/regions", None)
                .await
        ),
        (401, "unauthorized".into())
    );

    // The directory: the relay reports alice's agent, and the route finds it.
    let _: serde_json::Value = p
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
    let route: RouteResponse = p
        .client
        .get("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await
        .unwrap();
    assert_eq!(route.relay.name, "eu-1");
    let r = p
        .client
        .post::<_, serde_json::Value>(
            "/api/v1/directory",
            Some(&relay),
            &DirectoryUpdate {
                workspace: "no-owner".into(),
                connected: true,
                standby: false,
            },
        )
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));
    let r = p
        .client
        .post::<_, serde_json::Value>(
            "/api/v1/directory",
            Some(&alice),
            &DirectoryUpdate {
                workspace: "demo--alice".into(),
                connected: false,
                standby: false,
            },
        )
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));

    // A directory snapshot replaces the relay's entries.
    p.client
        .put(
            "/api/v1/directory",
            Some(&relay),
            &DirectorySnapshot::default(),
        )
        .await
        .unwrap();
    let r = p
        .client
        .get::<RouteResponse>("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await;
    assert_eq!(code(r), (404, "agent_not_connected".into()));
    p.client
        .put(
            "/api/v1/directory",
            Some(&relay),
            &DirectorySnapshot {
                workspaces: vec!["demo--alice".into()],
                standby: vec![],
            },
        )
        .await
        .unwrap();
    let route: RouteResponse = p
        .client
        .get("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await
        .unwrap();
    assert_eq!(route.relay.name, "eu-1");
    for bad in [
        DirectorySnapshot {
            workspaces: vec!["not a label".into()],
            standby: vec![],
        },
        DirectorySnapshot {
            workspaces: vec![],
            standby: vec!["not a label".into()],
        },
    ] {
        let r = p.client.put("/api/v1/directory", Some(&relay), &bad).await;
        assert_eq!(code(r), (400, "bad_request".into()), "{bad:?}");
    }
    let r = p
        .client
        .put(
            "/api/v1/directory",
            Some(&alice),
            &DirectorySnapshot::default(),
        )
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    // The old place of the snapshot is refused, not silently ignored.
    let r = p
        .client
        .post::<_, HeartbeatResponse>(
            "/api/v1/relays/heartbeat",
            Some(&relay),
            &serde_json::json!({"agents": 1, "workspaces": ["demo--alice"]}),
        )
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));

    // A relay silent for long is not offered: the route says why.
    let stale = ferry_transport::unix_now() as i64 - ferry_control::UNREACHABLE_SECS - 5;
    assert!(p
        .state
        .store()
        .heartbeat("eu-1", stale, false)
        .await
        .unwrap());
    let r = p
        .client
        .get::<RouteResponse>("/api/v1/workspaces/demo--alice/route", Some(&alice))
        .await;
    match r {
        Err(ferry_transport::ControlError::Api { code, message, .. }) => {
            assert_eq!(code, "agent_not_connected");
            assert!(
                message.contains("eu-1") && message.contains("unreachable"),
                "{message}"
            );
        }
        other => panic!("routed to a silent relay: {other:?}"),
    }
    let map: RegionsResponse = p.client.get("/api/v1/regions", Some(&alice)).await.unwrap();
    assert_eq!(
        map.regions[0].relays[0].health,
        Some(RelayHealth::Unreachable)
    );

    // The long poll: an up-to-date relay's heartbeat is held until something changes.
    let current: HeartbeatResponse = p
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
        wait_secs: 1,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let same: HeartbeatResponse = p
        .client
        .post("/api/v1/relays/heartbeat", Some(&relay), &held)
        .await
        .unwrap();
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(900),
        "not held"
    );
    assert_eq!(same.digest, current.digest);
    let held = HeartbeatRequest {
        wait_secs: 30,
        ..held
    };
    let poll =
        p.client
            .post::<_, HeartbeatResponse>("/api/v1/relays/heartbeat", Some(&relay), &held);
    let revoke = async {
        let doomed = p.mint(TokenKind::User, "alice").await;
        let jti = ferry_proto::token::peek_claims(&doomed).unwrap().jti;
        p.client
            .delete(&format!("/api/v1/tokens/{jti}"), p.admin())
            .await
            .unwrap();
        jti
    };
    let t = std::time::Instant::now();
    let (changed, jti) = tokio::join!(poll, revoke);
    let changed = changed.unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "the change did not end the wait"
    );
    assert_ne!(changed.digest, current.digest);
    assert!(changed.revoked.iter().any(|r| r.jti == jti));

    // Health by heartbeat age.
    use ferry_control::{health, HEALTHY_SECS, UNREACHABLE_SECS};
    assert_eq!(health(100, 100 + HEALTHY_SECS), RelayHealth::Ok);
    assert_eq!(health(100, 101 + HEALTHY_SECS), RelayHealth::Unhealthy);
    assert_eq!(
        health(100, 101 + UNREACHABLE_SECS),
        RelayHealth::Unreachable
    );
    p.stop().await;
}

#[tokio::test]
async fn admin_tokens_mint_and_revoke_and_revocations_reach_relays() {
    let p = Plane::start("revocations").await;
    let alice = p.user("alice").await;
    let relay = p.mint(TokenKind::Relay, "eu-1").await;
    let minted = p.mint(TokenKind::User, "alice").await;
    let jti = ferry_proto::token::peek_claims(&minted).unwrap().jti;
    for (kind, subject) in [
        (TokenKind::Agent, "no-owner"),
        (TokenKind::User, "Bad Name"),
    ] {
        let r = p
            .client
            .post::<_, MintTokenResponse>(
                "/api/v1/tokens",
                p.admin(),
                &MintTokenRequest {
                    kind,
                    subject: subject.into(),
                    ttl_secs: None,
                },
            )
            .await;
        assert_eq!(code(r), (400, "bad_request".into()), "{subject}");
    }
    let r = p
        .client
        .post::<_, MintTokenResponse>(
            "/api/v1/tokens",
            Some(&alice),
            &MintTokenRequest {
                kind: TokenKind::Admin,
                subject: "alice".into(),
                ttl_secs: None,
            },
        )
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));

    let before: RevocationsResponse = p
        .client
        .get("/api/v1/revocations", Some(&relay))
        .await
        .unwrap();
    assert!(before.revoked.is_empty());
    assert_eq!(
        code(
            p.client
                .get::<RevocationsResponse>("/api/v1/revocations", Some(&alice))
                .await
        ),
        (403, "wrong_token_kind".into())
    );
    p.client
        .delete(&format!("/api/v1/tokens/{jti}"), p.admin())
        .await
        .unwrap();
    // Revoking twice is fine; an unknown id is not.
    p.client
        .delete(&format!("/api/v1/tokens/{jti}"), p.admin())
        .await
        .unwrap();
    assert_eq!(
        code(p.client.delete("/api/v1/tokens/nope", p.admin()).await),
        (404, "unknown_token".into())
    );
    let after: RevocationsResponse = p
        .client
        .get("/api/v1/revocations", Some(&relay))
        .await
        .unwrap();
    assert_eq!(after.revoked.len(), 1);
    assert_eq!(after.revoked[0].jti, jti);
    p.stop().await;
}

#[tokio::test]
async fn rotated_keys_overlap_so_old_tokens_keep_working() {
    let p = Plane::start("rotation").await;
    let alice = p.user("alice").await;
    let old_kid = p.state.key_set().to_public_keys()[0].kid.clone();
    let r = p
        .client
        .post::<_, RotateKeysResponse>("/api/v1/keys/rotate", Some(&alice), &serde_json::json!({}))
        .await;
    assert_eq!(code(r), (403, "wrong_token_kind".into()));
    let rotated: RotateKeysResponse = p
        .client
        .post("/api/v1/keys/rotate", p.admin(), &serde_json::json!({}))
        .await
        .unwrap();
    assert_ne!(rotated.kid, old_kid);
    let keys: KeysResponse = p.client.get("/api/v1/keys", None).await.unwrap();
    let kids: Vec<&str> = keys.keys.iter().map(|k| k.kid.as_str()).collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&rotated.kid.as_str()),
        "{kids:?}"
    );
    // A token signed before the rotation still works; new ones use the new key.
    let me: MeResponse = p.client.get("/api/v1/me", Some(&alice)).await.unwrap();
    assert_eq!(me.user, "alice");
    let fresh = p.mint(TokenKind::User, "alice").await;
    let header = fresh.split('.').next().unwrap();
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    assert!(String::from_utf8(header).unwrap().contains(&rotated.kid));
    assert!(rotated.admin_token.is_none());
    let r = p
        .client
        .post::<_, RotateKeysResponse>(
            "/api/v1/keys/rotate",
            p.admin(),
            &serde_json::json!({"drop_old": true, "extra": 1}),
        )
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));

    // Dropping the old keys (a leak): every earlier token dies, the caller gets a new
    // admin token.
    let dropped: RotateKeysResponse = p
        .client
        .post(
            "/api/v1/keys/rotate",
            p.admin(),
            &RotateKeysRequest { drop_old: true },
        )
        .await
        .unwrap();
    assert_eq!(dropped.keys.len(), 1);
    for old in [&alice, &fresh, &p.admin] {
        let r = p
            .client
            .get::<UsersResponse>("/api/v1/users", Some(old))
            .await;
        assert_eq!(code(r).0, 401);
    }
    let admin = dropped.admin_token.expect("a new admin token");
    let _: UsersResponse = p.client.get("/api/v1/users", Some(&admin)).await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn tokens_signed_before_the_store_existed_survive_the_upgrade_and_a_rotation() {
    // A data directory of the first, storeless control plane: a key in files.
    let dir = ferry_control::testing::scratch_dir("legacy");
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = ferry_proto::token::SigningKey::generate("k-legacy").unwrap();
    std::fs::write(dir.join("signing-key.pk8"), legacy.pkcs8()).unwrap();
    std::fs::write(dir.join("signing-key.kid"), legacy.kid()).unwrap();
    let old = legacy.sign(&ferry_proto::token::new_claims(
        TokenKind::User,
        "alice",
        ferry_proto::token::AUDIENCE_FERRY,
        ferry_transport::unix_now(),
        3600,
    ));
    // No token minted after the upgrade may keep the old key published: use the
    // state directly rather than a server, which mints its admin token at start.
    let state = ferry_control::State::open(&dir, None).await.unwrap();
    assert_eq!(
        state.verify(&old, TokenKind::User).await.unwrap().sub,
        "alice"
    );
    state.rotate_keys(false).await.unwrap();
    assert_eq!(
        state.verify(&old, TokenKind::User).await.unwrap().sub,
        "alice"
    );
    state.store().close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_held_heartbeats() {
    let p = Plane::start("held-shutdown").await;
    let relay = p.mint(TokenKind::Relay, "eu-1").await;
    let _: RegisterRelayResponse = p
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
    let current: HeartbeatResponse = p
        .client
        .post(
            "/api/v1/relays/heartbeat",
            Some(&relay),
            &HeartbeatRequest::default(),
        )
        .await
        .unwrap();
    let held = HeartbeatRequest {
        known: Some(current.digest),
        wait_secs: 30,
        ..Default::default()
    };
    let client = p.client.clone();
    let poll = tokio::spawn(async move {
        client
            .post::<_, HeartbeatResponse>("/api/v1/relays/heartbeat", Some(&relay), &held)
            .await
    });
    // Let the request arrive and be held, then stop.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    p.stop().await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "shutdown waited {:?} for a held heartbeat",
        t.elapsed()
    );
    assert!(
        poll.await.unwrap().is_ok(),
        "the held heartbeat was answered"
    );
}

#[tokio::test]
async fn a_session_cookie_authorizes_pages_but_not_cross_site_writes() {
    let p = Plane::start("session").await;
    let alice = p.user("alice").await;
    let bearer = format!("Bearer {alice}");
    let (status, headers, _) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/session",
        &[("authorization", &bearer)],
        vec![],
    )
    .await;
    assert_eq!(status, 204);
    let set_cookie = headers["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap();
    assert_eq!(cookie, format!("ferry_session={alice}"));

    // Reads with the cookie alone are alice's.
    let (status, _, me) = raw_request(
        &p.url,
        &p.ca_pem,
        "GET",
        "/api/v1/me",
        &[("cookie", cookie)],
        vec![],
    )
    .await;
    assert_eq!((status, me["user"].as_str()), (200, Some("alice")));

    // A write with the cookie: refused without our Origin, accepted with it.
    let create = br#"{"name":"dev"}"#.to_vec();
    let json = ("content-type", "application/json");
    for origin in [None, Some("https://evil.example")] {
        let mut headers = vec![("cookie", cookie), json];
        headers.extend(origin.map(|o| ("origin", o)));
        let (status, _, body) = raw_request(
            &p.url,
            &p.ca_pem,
            "POST",
            "/api/v1/workspaces",
            &headers,
            create.clone(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{origin:?}"
        );
    }
    let own = p.url.clone();
    let (status, _, ws) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/workspaces",
        &[("cookie", cookie), json, ("origin", &own)],
        create,
    )
    .await;
    assert_eq!((status, ws["label"].as_str()), (201, Some("dev--alice")));

    // Only people's tokens become sessions; a forged cookie is just unauthorized.
    let agent = p.mint(TokenKind::Agent, "dev--alice").await;
    let agent_bearer = format!("Bearer {agent}");
    let (status, _, body) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/session",
        &[("authorization", &agent_bearer)],
        vec![],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("wrong_token_kind"))
    );
    let (status, _, _) = raw_request(
        &p.url,
        &p.ca_pem,
        "GET",
        "/api/v1/me",
        &[("cookie", "ferry_session=not.a.token")],
        vec![],
    )
    .await;
    assert_eq!(status, 401);

    // Logging out clears the cookie.
    let (status, headers, _) =
        raw_request(&p.url, &p.ca_pem, "DELETE", "/api/v1/session", &[], vec![]).await;
    assert_eq!(status, 204);
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    p.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_unknown_input_gets_typed_4xx_never_500() {
    let p = Plane::start("bad-input").await;
    let admin = Some(p.admin.as_str());
    let json = "application/json";
    // (path, token, content type, body, status, code)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/api/v1/users",
            admin,
            json,
            b"{not json".to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/v1/users",
            admin,
            json,
            br#"{"name":"a","extra":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/v1/users",
            admin,
            json,
            br#"{"name":7}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/v1/users",
            admin,
            "text/plain",
            br#"{"name":"a"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/api/v1/users",
            admin,
            json,
            format!(r#"{{"name":"{}"}}"#, "a".repeat(ferry_control::MAX_BODY)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "/api/v1/users",
            None,
            json,
            br#"{"name":"a"}"#.to_vec(),
            401,
            "unauthorized",
        ),
        (
            "/api/v1/users",
            Some("garbage"),
            json,
            br#"{"name":"a"}"#.to_vec(),
            401,
            "unauthorized",
        ),
        (
            "/api/v1/login",
            None,
            json,
            br#"{"user":"a"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/api/v1/login",
            None,
            json,
            br#"[1,2,3]"#.to_vec(),
            400,
            "bad_request",
        ),
        ("/api/v1/nope", None, json, b"{}".to_vec(), 404, "not_found"),
        (
            "/api/v1/keys",
            None,
            json,
            b"{}".to_vec(),
            405,
            "method_not_allowed",
        ),
    ];
    for (path, token, ctype, body, status, want) in cases {
        let (got, json) = raw_post(&p.url, &p.ca_pem, path, token, ctype, body).await;
        assert_eq!(got, status, "{path} {want}: {json}");
        assert_eq!(json["error"]["code"], want, "{path}: {json}");
        assert!(json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    p.stop().await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_account_and_per_address() {
    let p = Plane::start("rate-limit").await;
    p.user("alice").await;
    p.user("bob").await;
    let login = |user: &str, password: &str| LoginRequest {
        user: user.into(),
        password: password.into(),
    };
    for _ in 0..5 {
        let r = p
            .client
            .post::<_, NewTokenResponse>("/api/v1/login", None, &login("alice", "wrong-password"))
            .await;
        assert_eq!(code(r), (401, "invalid_credentials".into()));
    }
    // Even the right password waits now, for this account only.
    let r = p
        .client
        .post::<_, NewTokenResponse>("/api/v1/login", None, &login("alice", "alice-password"))
        .await;
    assert_eq!(code(r), (429, "rate_limited".into()));
    let _: NewTokenResponse = p
        .client
        .post("/api/v1/login", None, &login("bob", "bob-password"))
        .await
        .unwrap();
    // Many accounts from one address: the address is limited too.
    for i in 0..20 {
        let _ = p
            .client
            .post::<_, NewTokenResponse>(
                "/api/v1/login",
                None,
                &login(&format!("u{i}"), "whatever-pw"),
            )
            .await;
    }
    let r = p
        .client
        .post::<_, NewTokenResponse>("/api/v1/login", None, &login("bob", "bob-password"))
        .await;
    assert_eq!(code(r), (429, "rate_limited".into()));
    p.stop().await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let p = Plane::start("openapi").await;
    let doc: serde_json::Value = p.client.get("/api/v1/openapi.json", None).await.unwrap();
    let checked_in: serde_json::Value = serde_json::from_str(ferry_control::OPENAPI).unwrap();
    assert_eq!(doc, checked_in);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in ferry_control::ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is served but not documented in control/openapi.json"
        );
    }
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                ferry_control::ROUTES.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not served"
            );
        }
    }
    // Every listed route is really served: none falls through to the catch-alls.
    for (method, path) in ferry_control::ROUTES {
        let path = path.replace("{label}", "x--y").replace("{id}", "z");
        let r = match *method {
            "get" => p.client.get::<serde_json::Value>(&path, None).await,
            "post" => {
                p.client
                    .post::<_, serde_json::Value>(&path, None, &serde_json::json!({}))
                    .await
            }
            "put" => p
                .client
                .put(&path, None, &serde_json::json!({}))
                .await
                .map(|()| serde_json::Value::Null),
            "delete" => p
                .client
                .delete(&path, None)
                .await
                .map(|()| serde_json::Value::Null),
            other => panic!("unexpected method {other}"),
        };
        if let Err(ferry_transport::ControlError::Api { code, .. }) = r {
            assert!(
                code != "not_found" && code != "method_not_allowed",
                "{method} {path} is listed in ROUTES but not routed"
            );
        }
    }
    p.stop().await;
}
