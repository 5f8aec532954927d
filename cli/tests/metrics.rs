//! `/metrics` on every process's admin port: real traffic through real processes
//! moves the counters by exactly what was sent, and the Grafana dashboard in
//! `deploy/grafana/ferry.json` queries only metrics the processes export.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::*;
use ferry_proto::token::TokenKind;

/// Polls `addr`'s metrics until `check` holds (counters that move after the CLI exits,
/// gauges sampled on a timer); fails with the last scrape's value otherwise.
async fn wait_metric(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&Scrape) -> Option<String>,
) -> Result<Scrape> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = scrape(addr).await?;
        match check(&s) {
            None => return Ok(s),
            Some(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Some(why) => bail!("{what} on {addr}: {why}"),
        }
    }
}

/// Every `ferry_*` metric name in a dashboard's queries.
fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(dashboard, &mut queries);
    let mut names = BTreeSet::new();
    for q in queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("ferry_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// A histogram's family name from one of its series names.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic_and_the_dashboard_queries_only_exported_metrics() -> Result<()>
{
    let mut net = Network::start("metrics").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    net.start_relay("eu-2", "eu", "127.0.0.1:0").await?;
    let echo = echo_server().await.to_string();
    let agent = net
        .start_agent_with_admin("demo--dev", &["--allow-port", &echo])
        .await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    net.wait_for_placement("demo--dev", &["eu-1", "eu-2"])
        .await?;
    let (eu1, eu2, control) = (
        net.relay("eu-1").admin,
        net.relay("eu-2").admin,
        net.control_admin,
    );

    // Every admin port has the same shape.
    for addr in [eu1, eu2, agent, control] {
        assert_eq!(http_get(addr, "/healthz").await?.0, 200, "{addr}");
        assert_eq!(http_get(addr, "/readyz").await?.0, 200, "{addr}");
    }

    // Connections by role, and the mesh gauges (sampled on the refresh loop). On
    // loopback, MTU discovery on mesh links finds packets past internet sizes, both on
    // the link a relay dialed and on the one it accepted (the relay's server side).
    for (addr, peer) in [(eu1, "eu-2"), (eu2, "eu-1")] {
        wait_metric(addr, "connections and mesh RTT", |s| {
            let agents = s.sum("ferry_relay_connections", &[("role", "agent")]);
            let mesh = s.sum("ferry_relay_connections", &[("role", "mesh")]);
            let rtt = s.sum("ferry_relay_mesh_rtt_seconds", &[("peer", peer)]);
            let payload = ["dialed", "accepted"].map(|side| {
                s.sum(
                    "ferry_relay_mesh_udp_payload_bytes",
                    &[("peer", peer), ("side", side)],
                )
            });
            (agents != 1.0 || mesh != 1.0 || rtt <= 0.0 || payload.iter().any(|p| *p <= 4000.0))
                .then(|| {
                    format!(
                        "agent connections {agents}, mesh {mesh}, rtt to {peer} {rtt}, \
                         UDP payload to {peer} (dialed, accepted) {payload:?}"
                    )
                })
        })
        .await?;
    }
    wait_metric(agent, "agent relay connections and RTT", |s| {
        let up = s.sum("ferry_agent_relay_connections", &[]);
        let rtts =
            ["eu-1", "eu-2"].map(|r| s.sum("ferry_agent_relay_rtt_seconds", &[("relay", r)]));
        (up != 2.0 || rtts.iter().any(|r| *r <= 0.0))
            .then(|| format!("{up} connections, RTTs {rtts:?}"))
    })
    .await?;
    wait_metric(control, "relays by health", |s| {
        let ok = s.sum("ferry_control_relays", &[("health", "ok")]);
        (ok != 2.0).then(|| format!("{ok} healthy relays"))
    })
    .await?;

    let before = [
        scrape(eu1).await?,
        scrape(agent).await?,
        scrape(control).await?,
    ];
    const STREAMS: usize = 3;
    let payload = random_bytes(256 * 1024);
    for _ in 0..STREAMS {
        let (ok, out, err) = net
            .ferry_tcp_via("eu-1", &user, "demo--dev", &echo, &payload)
            .await?;
        assert!(ok, "{err}");
        assert!(out == payload, "echo came back wrong ({} bytes)", out.len());
    }
    let (ok, _, err) = net
        .ferry_tcp_via("eu-1", &user, "demo--dev", "1", b"")
        .await?;
    assert!(!ok && err.contains("port_not_allowed"), "{err}");
    let sent = (STREAMS * payload.len()) as f64;

    // The entry relay: every stream opened, set up, and its bytes, counted exactly.
    let [b_relay, b_agent, b_control] = &before;
    let delta = |after: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.sum(name, labels) - b_relay.sum(name, labels)
    };
    let relay = wait_metric(eu1, "relay counters", |s| {
        let active = s.sum("ferry_relay_streams_active", &[]);
        let up = delta(
            s,
            "ferry_relay_forwarded_bytes_total",
            &[("direction", "up")],
        );
        let down = delta(
            s,
            "ferry_relay_forwarded_bytes_total",
            &[("direction", "down")],
        );
        (active != 0.0 || up != sent || down != sent).then(|| {
            format!("{active} streams still active, {up} bytes up and {down} down of {sent}")
        })
    })
    .await?;
    let n = STREAMS as f64;
    assert_eq!(
        delta(
            &relay,
            "ferry_relay_streams_opened_total",
            &[("kind", "port")]
        ),
        n + 1.0
    );
    assert_eq!(
        delta(
            &relay,
            "ferry_relay_stream_setup_duration_seconds_count",
            &[]
        ),
        n,
        "only streams the agent accepted were set up"
    );
    assert_eq!(
        delta(
            &relay,
            "ferry_relay_refusals_total",
            &[("scope", "stream"), ("reason", "port_not_allowed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &relay,
            "ferry_relay_connections_accepted_total",
            &[("role", "client")]
        ),
        n + 1.0,
        "one connection per `ferry tcp`"
    );
    assert_eq!(
        delta(
            &relay,
            "ferry_relay_handshake_duration_seconds_count",
            &[("role", "client")]
        ),
        n + 1.0
    );

    // The agent: streams by target, the refusal, the dials and the bytes.
    let agent_after = wait_metric(agent, "agent counters", |s| {
        let up = s.sum("ferry_agent_bytes_total", &[("direction", "up")])
            - b_agent.sum("ferry_agent_bytes_total", &[("direction", "up")]);
        let active = s.sum("ferry_agent_streams_active", &[]);
        (up != sent || active != 0.0).then(|| format!("{up} bytes up of {sent}, {active} active"))
    })
    .await?;
    let agent_delta = |name: &str, labels: &[(&str, &str)]| {
        agent_after.sum(name, labels) - b_agent.sum(name, labels)
    };
    assert_eq!(
        agent_delta("ferry_agent_streams_total", &[("target", "port")]),
        n + 1.0
    );
    assert_eq!(
        agent_delta(
            "ferry_agent_stream_refusals_total",
            &[("reason", "port_not_allowed")]
        ),
        1.0
    );
    assert_eq!(
        agent_delta(
            "ferry_agent_dial_duration_seconds_count",
            &[("target", "port")]
        ),
        n
    );
    assert_eq!(
        agent_delta("ferry_agent_bytes_total", &[("direction", "down")]),
        sent
    );

    // The control plane: each `ferry tcp` fetched the region map; relays beat.
    // A path that matches no route counts under one label, whatever the path.
    let nope = net
        .control_client()
        .get::<serde_json::Value>("/api/v1/no-such-route-demo--dev", Some(&user))
        .await;
    assert!(nope.is_err());
    // Heartbeats come every few seconds (a long poll), so wait for the next one; and
    // for the agent's first telemetry report (about a second after it starts), before
    // which the write-time histogram has no sample to export.
    let control_after = wait_metric(control, "heartbeats and a telemetry report", |s| {
        let beats = s.sum("ferry_control_heartbeats_total", &[]);
        let before = b_control.sum("ferry_control_heartbeats_total", &[]);
        if beats <= before {
            return Some(format!("{beats} heartbeats, {before} before"));
        }
        (!s.has("ferry_control_telemetry_write_seconds_count", &[]))
            .then(|| "no telemetry report stored yet".to_string())
    })
    .await?;
    let regions = [
        ("route", "/api/v1/regions"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert!(
        control_after.sum("ferry_control_http_requests_total", &regions)
            - b_control.sum("ferry_control_http_requests_total", &regions)
            >= n + 1.0
    );
    assert!(
        control_after.has(
            "ferry_control_http_request_duration_seconds_bucket",
            &[("route", "/api/v1/workspaces/{label}/route")]
        ),
        "requests are labelled by route template, not by workspace"
    );
    assert!(
        control_after.sum(
            "ferry_control_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        !control_after.text.contains("demo--dev"),
        "no workspace in any label"
    );

    // The dashboard queries exported metrics only, and every exported family has a panel.
    let exported: BTreeSet<String> = [
        relay.names(),
        scrape(eu2).await?.names(),
        agent_after.names(),
        control_after.names(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/ferry.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let queried = dashboard_metric_names(&dashboard);
    let unknown: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics no process exports: {unknown:?}"
    );
    let queried_families: BTreeSet<&str> = queried.iter().map(|n| family(n)).collect();
    let missing: Vec<&str> = exported
        .iter()
        .map(|n| family(n))
        .filter(|f| f.starts_with("ferry_") && !queried_families.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "exported metrics without a dashboard panel: {missing:?}"
    );
    Ok(())
}
