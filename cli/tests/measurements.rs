//! Relays report what QUIC measures: the mesh RTT matrix, each agent's RTT, and their
//! load (agents, open streams, bytes relayed), all readable from the control plane.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::*;
use ferry_proto::api::{Hop, LatencyMatrixResponse, RelayLoadResponse, WorkspaceLatencyResponse};
use ferry_proto::token::TokenKind;

async fn poll<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} within 30s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_report_mesh_and_agent_rtts_and_their_load() -> Result<()> {
    let mut net = Network::start("measurements").await?;
    for (relay, region) in [("eu-1", "eu"), ("us-1", "us")] {
        net.start_relay_with(relay, region, "127.0.0.1:0", &["--report-ms", "300"])
            .await?;
    }
    net.start_agent("demo--dev", &["--region", "eu"]).await?;
    net.wait_for_placement("demo--dev", &["eu-1"]).await?;
    let control = net.control_client();
    let admin = net.admin_token.clone();
    let user = net.mint(TokenKind::User, "dev", None).await?;

    // The mesh matrix, both ways (each relay keeps a warm link to the other region).
    let matrix = poll("no mesh RTTs both ways", || async {
        let m: LatencyMatrixResponse = control
            .get("/api/v1/measurements/matrix", Some(&user))
            .await?;
        let ok = [("eu", "us"), ("us", "eu")].iter().all(|(f, t)| {
            m.cells
                .iter()
                .any(|c| c.from == *f && c.to == *t && c.rtt_us > 0)
        });
        Ok(ok.then_some(m))
    })
    .await?;
    let link = matrix
        .links
        .iter()
        .find(|l| l.from == "eu-1" && l.to == "us-1")
        .unwrap();
    // Loopback: well under the minute the control plane would refuse.
    assert!(link.rtt_us > 0 && link.rtt_us < 1_000_000, "{link:?}");

    // The relay's RTT to the workspace's agent, for its owner.
    let hops = poll("no relay-to-agent RTT", || async {
        let w: WorkspaceLatencyResponse = control
            .get("/api/v1/workspaces/demo--dev/latency", Some(&user))
            .await?;
        let ok = w.hops.iter().any(|h| {
            h.hop == Hop::Agent && h.series.from == "relay:eu-1" && !h.series.points.is_empty()
        });
        Ok(ok.then_some(w))
    })
    .await?;
    assert_eq!(hops.relays, ["eu-1"]);

    // Bytes through the relay show up in its load once the stream has ended.
    let port = echo_server().await;
    let payload = random_bytes(300_000);
    let (ok, out, err) = net
        .ferry_tcp_via("eu-1", &user, "demo", &port.to_string(), &payload)
        .await?;
    assert!(ok && out == payload, "{err}");
    let load = poll(
        "the relay's load does not count the stream's bytes",
        || async {
            let l: RelayLoadResponse = control.get("/api/v1/relays/load", Some(&admin)).await?;
            let eu = l.relays.iter().find(|r| r.relay == "eu-1").cloned();
            Ok(eu.filter(|r| {
                r.points
                    .last()
                    .is_some_and(|p| p.bytes >= 2 * payload.len() as u64)
            }))
        },
    )
    .await?;
    let last = load.points.last().unwrap();
    assert_eq!(last.agents, 1, "{load:?}");
    assert_eq!(load.region, "eu");
    Ok(())
}
