//! The latency measurement API over real HTTPS: who may report what, and who sees it.

mod common;

use common::*;
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;

async fn enroll(p: &Plane, name: &str, region: &str) -> String {
    let token = p.mint(TokenKind::Relay, name).await;
    let reg = RegisterRelayRequest {
        region: region.into(),
        quic_addr: "127.0.0.1:9".into(),
        names: vec!["127.0.0.1".into()],
        https_url: None,
        apps_domain: None,
    };
    let _: RegisterRelayResponse = p
        .client
        .post("/api/v1/relays/register", Some(&token), &reg)
        .await
        .unwrap();
    token
}

fn sample(from: &str, to: &str, rtt_us: u64) -> Measurement {
    Measurement {
        from: from.into(),
        to: to.into(),
        rtt_us,
        jitter_us: 0,
        loss: 0.0,
        at_ms: None,
    }
}

async fn report(
    p: &Plane,
    token: &str,
    samples: Vec<Measurement>,
) -> Result<MeasurementsResponse, ferry_transport::ControlError> {
    p.client
        .post(
            "/api/v1/measurements",
            Some(token),
            &MeasurementsRequest { samples },
        )
        .await
}

#[tokio::test]
async fn reports_are_checked_and_series_stay_within_their_tenant() {
    let p = Plane::start("measurements").await;
    let eu = enroll(&p, "eu-1", "eu").await;
    let us = enroll(&p, "us-1", "us").await;
    let alice = p.user("alice").await;
    let bob = p.user("bob").await;
    p.workspace(&alice, "web").await;
    p.workspace(&bob, "web").await;
    let alice_agent = p.mint(TokenKind::Agent, "web--alice").await;

    // Each reporter about itself.
    let stored = report(
        &p,
        &eu,
        vec![
            sample("relay:eu-1", "relay:us-1", 80_000),
            sample("relay:eu-1", "agent:web--alice", 2_000),
            sample("relay:eu-1", "agent:web--bob", 3_000),
        ],
    )
    .await
    .unwrap();
    assert_eq!(stored.stored, 3);
    report(&p, &us, vec![sample("relay:us-1", "relay:eu-1", 81_000)])
        .await
        .unwrap();
    report(
        &p,
        &alice_agent,
        vec![sample("agent:web--alice", "relay:eu-1", 2_100)],
    )
    .await
    .unwrap();
    report(
        &p,
        &alice,
        vec![
            sample("client:alice", "relay:eu-1", 5_000),
            sample("browser:alice", "relay:us-1", 90_000),
        ],
    )
    .await
    .unwrap();
    report(&p, &bob, vec![sample("browser:bob", "relay:eu-1", 7_000)])
        .await
        .unwrap();

    // ...and nothing else.
    let refused = [
        (&alice, sample("client:bob", "relay:eu-1", 1)),
        (&alice_agent, sample("agent:web--bob", "relay:eu-1", 1)),
        (&eu, sample("relay:us-1", "relay:eu-1", 1)),
        (&alice, sample("client:alice", "relay:mars-1", 1)),
        (&alice, sample("client:alice", "agent:web--alice", 1)),
        (&alice, sample("client:alice", "relay:eu-1", 61_000_000)),
    ];
    for (token, s) in refused {
        let r = report(&p, token, vec![s.clone()]).await;
        assert_eq!(code(r), (400, "bad_request".into()), "{s:?}");
    }
    let too_many = vec![sample("client:alice", "relay:eu-1", 1); 501];
    assert_eq!(
        code(report(&p, &alice, too_many).await),
        (400, "bad_request".into())
    );
    let admin = p.admin.clone();
    assert_eq!(
        code(report(&p, &admin, vec![sample("client:admin", "relay:eu-1", 1)]).await),
        (403, "wrong_token_kind".into())
    );
    // A stale sample is dropped and counted.
    let mut old = sample("client:alice", "relay:eu-1", 1);
    old.at_ms = Some(ferry_transport::unix_now() * 1000 - 3_600_000);
    let r = report(&p, &alice, vec![old]).await.unwrap();
    assert_eq!((r.stored, r.stale), (0, 1));

    // Alice sees the mesh and her own series, never Bob's.
    let all: MeasurementsSeriesResponse = p
        .client
        .get("/api/v1/measurements", Some(&alice))
        .await
        .unwrap();
    assert_eq!(all.resolution, Resolution::Raw);
    let pairs: Vec<(String, String)> = all
        .series
        .iter()
        .map(|s| (s.from.clone(), s.to.clone()))
        .collect();
    assert!(
        pairs.contains(&("relay:eu-1".into(), "relay:us-1".into())),
        "{pairs:?}"
    );
    assert!(pairs.contains(&("browser:alice".into(), "relay:us-1".into())));
    assert!(pairs.contains(&("relay:eu-1".into(), "agent:web--alice".into())));
    assert!(
        !pairs
            .iter()
            .any(|(f, t)| f.contains("bob") || t.contains("bob")),
        "{pairs:?}"
    );
    let one: MeasurementsSeriesResponse = p
        .client
        .get(
            "/api/v1/measurements?from=relay:eu-1&to=relay:us-1&resolution=minute",
            Some(&alice),
        )
        .await
        .unwrap();
    assert_eq!(one.resolution, Resolution::Minute);
    assert_eq!(one.series.len(), 1);
    assert_eq!(one.series[0].points[0].rtt_us, 80_000);
    let bad = p
        .client
        .get::<MeasurementsSeriesResponse>("/api/v1/measurements?from=nobody", Some(&alice))
        .await;
    assert_eq!(code(bad), (400, "bad_request".into()));
    let bad = p
        .client
        .get::<MeasurementsSeriesResponse>("/api/v1/measurements?since=soon", Some(&alice))
        .await;
    assert_eq!(code(bad), (400, "bad_request".into()));
    let admin_view: MeasurementsSeriesResponse = p
        .client
        .get("/api/v1/measurements", p.admin())
        .await
        .unwrap();
    assert!(admin_view.series.iter().any(|s| s.from == "browser:bob"));

    // The region matrix.
    let matrix: LatencyMatrixResponse = p
        .client
        .get("/api/v1/measurements/matrix", Some(&alice))
        .await
        .unwrap();
    assert_eq!(matrix.regions, ["eu", "us"]);
    let cell = |from: &str, to: &str| {
        matrix
            .cells
            .iter()
            .find(|c| c.from == from && c.to == to)
            .map(|c| c.rtt_us)
    };
    assert_eq!(cell("eu", "us"), Some(80_000));
    assert_eq!(cell("us", "eu"), Some(81_000));

    // Hop by hop for Alice's workspace, and nothing about it for Bob.
    p.state
        .update_directory("eu-1", "web--alice", true, false)
        .await
        .unwrap();
    let hops: WorkspaceLatencyResponse = p
        .client
        .get("/api/v1/workspaces/web--alice/latency", Some(&alice))
        .await
        .unwrap();
    assert_eq!(hops.relays, ["eu-1"]);
    let kinds: Vec<(Hop, &str, &str)> = hops
        .hops
        .iter()
        .map(|h| (h.hop, h.series.from.as_str(), h.series.to.as_str()))
        .collect();
    assert!(
        kinds.contains(&(Hop::Agent, "relay:eu-1", "agent:web--alice")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&(Hop::Agent, "agent:web--alice", "relay:eu-1")));
    assert!(kinds.contains(&(Hop::Client, "client:alice", "relay:eu-1")));
    assert!(kinds.contains(&(Hop::Mesh, "relay:us-1", "relay:eu-1")));
    assert!(!kinds
        .iter()
        .any(|(_, f, t)| f.contains("bob") || t.contains("bob")));
    for label in ["web--alice", "nope--alice", "BAD"] {
        let r = p
            .client
            .get::<WorkspaceLatencyResponse>(
                &format!("/api/v1/workspaces/{label}/latency"),
                Some(&bob),
            )
            .await;
        assert_eq!(code(r), (404, "unknown_workspace".into()), "{label}");
    }

    // Relay load from heartbeats.
    let _: HeartbeatResponse = p
        .client
        .post(
            "/api/v1/relays/heartbeat",
            Some(&eu),
            &HeartbeatRequest {
                agents: 2,
                streams: 3,
                bytes: 12345,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let load: RelayLoadResponse = p
        .client
        .get("/api/v1/relays/load", Some(&alice))
        .await
        .unwrap();
    let eu_load = load.relays.iter().find(|r| r.relay == "eu-1").unwrap();
    assert_eq!(eu_load.region, "eu");
    let last = eu_load.points.last().unwrap();
    assert_eq!((last.agents, last.streams, last.bytes), (2, 3, 12345));
    p.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_reports_through_the_session() {
    let p = Plane::start("dashboard").await;
    let alice = p.user("alice").await;
    enroll(&p, "eu-1", "eu").await;

    let (status, headers, _) = raw_get_text(&p.url, &p.ca_pem, "/", &[]).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/dashboard");

    let (status, headers, page) = raw_get_text(&p.url, &p.ca_pem, "/dashboard", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-"), "{csp}");
    assert!(page.contains("src=\"/dashboard/app.js\"") && page.contains("id=\"your-latency\""));
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let (status, headers, body) = raw_get_text(&p.url, &p.ca_pem, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        assert!(body.len() > 1000, "{path}");
    }

    // The page's own report: the session cookie, from our origin only.
    let (status, headers, _) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/session",
        &[("authorization", &format!("Bearer {alice}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 204);
    let cookie = headers["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let body = serde_json::to_vec(&MeasurementsRequest {
        samples: vec![sample("browser:alice", "relay:eu-1", 4_000)],
    })
    .unwrap();
    let origin = p.url.clone();
    let (status, _, json) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/measurements",
        &[
            ("cookie", &cookie),
            ("origin", &origin),
            ("content-type", "application/json"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!((status, json["stored"].as_u64()), (200, Some(1)), "{json}");
    let (status, _, json) = raw_request(
        &p.url,
        &p.ca_pem,
        "POST",
        "/api/v1/measurements",
        &[
            ("cookie", &cookie),
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    p.stop().await;
}
