//! Workspace telemetry through the API over real HTTPS: an agent's report is stored,
//! its owner (and an admin) reads it back and watches it live over Server-Sent
//! Events; another user gets the 404 of a missing workspace; hostile reports are
//! refused with typed codes and store nothing.

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::api::*;

async fn agent_token(p: &Plane, user: &str, workspace: &str) -> String {
    let r: NewTokenResponse = p
        .client
        .post(
            &format!("/api/v1/workspaces/{workspace}/agent-tokens"),
            Some(user),
            &CreateTokenRequest {
                name: "agent".into(),
                ttl_secs: None,
            },
        )
        .await
        .unwrap();
    r.token
}

fn stats(cpu: f64) -> WorkspaceStats {
    WorkspaceStats {
        cpu_percent: cpu,
        mem_used_bytes: 300 << 20,
        mem_limit_bytes: 2 << 30,
        disk_used_bytes: 7 << 30,
        disk_total_bytes: 20 << 30,
        load: [0.25, 0.5, 0.75],
        uptime_secs: 4242,
        source: StatsSource::Cgroup,
    }
}

fn report(cpu: f64, branch: &str) -> AgentMetadataRequest {
    AgentMetadataRequest {
        items: vec![
            MetadataItem {
                key: "branch".into(),
                value: branch.into(),
                name: Some("Git branch".into()),
                error: None,
            },
            MetadataItem {
                key: "tests".into(),
                value: String::new(),
                name: None,
                error: Some("timed out after 5 s".into()),
            },
        ],
        stats: Some(stats(cpu)),
    }
}

const REPORT: &str = "/api/v1/agents/metadata";
const READ: &str = "/api/v1/workspaces/demo--alice/telemetry";

#[tokio::test]
async fn readings_are_stored_and_only_the_owner_or_an_admin_reads_them() {
    let p = Plane::start("telemetry-read").await;
    let alice = p.user("alice").await;
    let bob = p.user("bob").await;
    p.workspace(&alice, "demo").await;
    let agent = agent_token(&p, &alice, "demo--alice").await;

    let empty: WorkspaceTelemetryResponse = p.client.get(READ, Some(&alice)).await.unwrap();
    assert_eq!(empty.latest, None);
    assert!(empty.history.is_empty() && empty.items.is_empty());

    let () = p
        .client
        .post(REPORT, Some(&agent), &report(12.5, "main"))
        .await
        .unwrap();
    let got: WorkspaceTelemetryResponse = p.client.get(READ, Some(&alice)).await.unwrap();
    assert_eq!(got.workspace, "demo--alice");
    let latest = got.latest.clone().expect("a latest reading");
    assert_eq!(latest.stats, stats(12.5));
    assert!(latest.at_ms > 0);
    assert_eq!(got.history, vec![latest.clone()]);
    let items: Vec<(&str, Option<&str>, &str, Option<&str>)> = got
        .items
        .iter()
        .map(|i| {
            (
                i.key.as_str(),
                i.name.as_deref(),
                i.value.as_str(),
                i.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        items,
        vec![
            ("branch", Some("Git branch"), "main", None),
            ("tests", None, "", Some("timed out after 5 s")),
        ]
    );
    // The items read the same through the plain metadata endpoint.
    let md: WorkspaceMetadataResponse = p
        .client
        .get("/api/v1/workspaces/demo--alice/metadata", Some(&alice))
        .await
        .unwrap();
    assert_eq!(md.items, got.items);
    // An admin reads it; `since_ms` after the reading leaves the history empty but
    // still names the latest.
    let later: WorkspaceTelemetryResponse = p
        .client
        .get(&format!("{READ}?since_ms={}", latest.at_ms + 1), p.admin())
        .await
        .unwrap();
    assert!(later.history.is_empty());
    assert_eq!(later.latest, Some(latest));

    // Bob gets exactly what a missing workspace gets, on every telemetry route.
    for path in [READ, "/api/v1/workspaces/nope--alice/telemetry"] {
        let r = p
            .client
            .get::<WorkspaceTelemetryResponse>(path, Some(&bob))
            .await;
        assert_eq!(code(r), (404, "unknown_workspace".into()), "{path}");
    }
    let (status, stream) =
        EventStream::open(&p.url, &p.ca_pem, &format!("{READ}/events"), &bob).await;
    assert_eq!(status, 404);
    assert!(stream.is_none());
    let r = p
        .client
        .get::<WorkspaceTelemetryResponse>(&format!("{READ}?since_ms=soon"), Some(&alice))
        .await;
    assert_eq!(code(r), (400, "bad_request".into()));
    p.stop().await;
}

#[tokio::test]
async fn hostile_reports_get_typed_errors_and_store_nothing() {
    let p = Plane::start("telemetry-hostile").await;
    let alice = p.user("alice").await;
    p.workspace(&alice, "demo").await;
    let agent = agent_token(&p, &alice, "demo--alice").await;
    let mut cases: Vec<(AgentMetadataRequest, &str)> = Vec::new();
    let mut hot = report(1.0, "main");
    hot.stats.as_mut().unwrap().cpu_percent = 250.0;
    cases.push((hot, "bad_request"));
    let mut huge = report(1.0, "main");
    huge.stats.as_mut().unwrap().disk_total_bytes = u64::MAX;
    cases.push((huge, "bad_request"));
    let mut named = report(1.0, "main");
    named.items[0].name = Some("n".repeat(MAX_METADATA_NAME_LEN + 1));
    cases.push((named, "bad_request"));
    let mut twice = report(1.0, "main");
    twice.items[1].key = "branch".into();
    cases.push((twice, "bad_request"));
    let crowd = AgentMetadataRequest {
        items: (0..=MAX_METADATA_KEYS)
            .map(|i| MetadataItem {
                key: format!("k{i}"),
                ..Default::default()
            })
            .collect(),
        stats: Some(stats(1.0)),
    };
    cases.push((crowd, "too_many_keys"));
    for (req, want) in cases {
        let r = p.client.post::<_, ()>(REPORT, Some(&agent), &req).await;
        assert_eq!(code(r), (400, want.to_string()), "{req:?}");
    }
    for body in [
        &b"{\"stats\":{\"cpu_percent\":1e999}}"[..],
        b"{\"items\":[{\"key\":\"a\",\"value\":\"1\"}",
        b"{\"stats\":{\"cpu_percent\":\"lots\"}}",
    ] {
        let (status, json) = raw_post(
            &p.url,
            &p.ca_pem,
            REPORT,
            Some(&agent),
            "application/json",
            body.to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(json["error"]["code"], "bad_request");
    }
    let got: WorkspaceTelemetryResponse = p.client.get(READ, Some(&alice)).await.unwrap();
    assert_eq!(got.latest, None, "a refused report stored a reading");
    assert!(got.items.is_empty(), "a refused report stored items");
    p.stop().await;
}

#[tokio::test]
async fn the_event_stream_sends_a_snapshot_then_each_new_reading() {
    let p = Plane::start("telemetry-events").await;
    let alice = p.user("alice").await;
    p.workspace(&alice, "demo").await;
    let agent = agent_token(&p, &alice, "demo--alice").await;
    let () = p
        .client
        .post(REPORT, Some(&agent), &report(10.0, "main"))
        .await
        .unwrap();
    let (status, stream) =
        EventStream::open(&p.url, &p.ca_pem, &format!("{READ}/events"), &alice).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let (name, data) = stream
        .next(Duration::from_secs(10))
        .await
        .expect("a snapshot");
    assert_eq!(name, "snapshot");
    let first: WorkspaceTelemetryResponse = serde_json::from_str(&data).unwrap();
    assert_eq!(first.history.len(), 1);
    assert_eq!(first.latest.as_ref().unwrap().stats.cpu_percent, 10.0);
    let first_at = first.latest.unwrap().at_ms;

    // A new reading arrives as an update that carries only what is new.
    let () = p
        .client
        .post(REPORT, Some(&agent), &report(55.5, "feature"))
        .await
        .unwrap();
    let (name, data) = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an update within a few polls");
    assert_eq!(name, "update");
    let update: WorkspaceTelemetryResponse = serde_json::from_str(&data).unwrap();
    assert!(
        update.history.iter().all(|pt| pt.at_ms > first_at),
        "{update:?}"
    );
    assert_eq!(update.latest.unwrap().stats.cpu_percent, 55.5);
    assert!(update
        .items
        .iter()
        .any(|i| i.key == "branch" && i.value == "feature"));
    p.stop().await;
}
