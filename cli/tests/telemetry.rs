//! Workspace telemetry end to end with real processes: a `ferry agent` with metadata
//! items from flags and from a TOML file reports its workspace's readings to a real
//! `ferry control`; the API serves them to the owner (404 to anyone else), a command
//! that hangs shows as an error value at its timeout, and `ferry workspace show`
//! prints them.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use ferry_proto::api::WorkspaceTelemetryResponse;
use ferry_proto::token::TokenKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_agent_reports_readings_and_items_that_workspace_show_prints() -> Result<()> {
    let mut net = Network::start("telemetry").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    let items = net.dir.0.join("metadata.toml");
    std::fs::write(
        &items,
        r#"
[[item]]
key = "hangs"
name = "Hangs forever"
command = "sleep 600; echo never"
interval_secs = 1
timeout_secs = 0.5

[[item]]
key = "marker"
file = "marker.txt"
"#
        .replace("marker.txt", net.dir.0.join("marker.txt").to_str().unwrap()),
    )?;
    std::fs::write(net.dir.0.join("marker.txt"), "from a file\n")?;
    let workspace_dir = net.dir.0.to_str().unwrap().to_string();
    net.start_agent(
        "demo--dev",
        &[
            "--telemetry-interval",
            "0.5",
            "--workspace-dir",
            &workspace_dir,
            "--metadata",
            "greeting=echo hello from $((40 + 2))",
            "--metadata-file",
            items.to_str().unwrap(),
        ],
    )
    .await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;

    // Readings arrive, and keep arriving: the latest moves on.
    let control = net.control_client();
    let path = "/api/v1/workspaces/demo--dev/telemetry";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first_at = None;
    let got = loop {
        let t: WorkspaceTelemetryResponse = control.get(path, Some(&user)).await?;
        let complete = t.items.len() == 3
            && t.items
                .iter()
                .all(|i| i.key != "hangs" || i.error.is_some());
        match (&t.latest, first_at) {
            (Some(l), None) => first_at = Some(l.at_ms),
            (Some(l), Some(first)) if l.at_ms > first && complete => break t,
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "no moving readings with all three items within 30 s (last: {t:?})\n{}",
                net.log_tail("agent-demo--dev", 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats = &got.latest.as_ref().unwrap().stats;
    assert!(
        stats.mem_limit_bytes > 0 && stats.mem_used_bytes <= stats.mem_limit_bytes,
        "{stats:?}"
    );
    assert!(
        stats.disk_total_bytes > 0 && stats.disk_used_bytes <= stats.disk_total_bytes,
        "{stats:?}"
    );
    assert!((0.0..=100.0).contains(&stats.cpu_percent), "{stats:?}");
    assert!(stats.uptime_secs > 0, "{stats:?}");
    let item = |key: &str| got.items.iter().find(|i| i.key == key).unwrap();
    assert_eq!(item("greeting").value, "hello from 42");
    assert_eq!(item("marker").value, "from a file");
    let hangs = item("hangs");
    assert_eq!(hangs.name.as_deref(), Some("Hangs forever"));
    assert_eq!(hangs.value, "");
    assert_eq!(
        hangs.error.as_deref(),
        Some("the command did not finish within 0.5 s")
    );
    // The hanging command was killed with its child, not left behind: once it has run
    // a few times (its time moved 2 s on), at most the current run's `sleep` lives.
    let since = hangs.updated_at;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t: WorkspaceTelemetryResponse = control.get(path, Some(&user)).await?;
        if t.items
            .iter()
            .any(|i| i.key == "hangs" && i.updated_at >= since + 2)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hanging item was not read again within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sleepers = count_processes("sleep 600");
    assert!(
        sleepers <= 1,
        "{sleepers} `sleep 600` processes outlived their timeout"
    );

    // Another user reads nothing, exactly as if the workspace did not exist.
    let other = net.mint(TokenKind::User, "mallory", None).await?;
    for p in [path, "/api/v1/workspaces/nothing--dev/telemetry"] {
        let r = control
            .get::<WorkspaceTelemetryResponse>(p, Some(&other))
            .await;
        match r {
            Err(ferry_transport::ControlError::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (404, "unknown_workspace"), "{p}")
            }
            other => panic!("{p}: expected a 404, got {other:?}"),
        }
    }

    // The CLI prints them.
    let (ok, out, err) = net
        .ferry_client(&user, &["workspace", "show", "demo"], &[])
        .await?;
    assert!(ok, "ferry workspace show failed: {err}");
    for want in [
        "workspace  demo--dev",
        "agent      connected to relay eu-1 (region eu)",
        "  cpu      ",
        "  memory   ",
        "  disk     ",
        "hello from 42",
        "Hangs forever (hangs)  error: the command did not finish within 0.5 s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (ok, _, err) = net
        .ferry_client(&other, &["workspace", "show", "demo--dev"], &[])
        .await?;
    assert!(!ok);
    assert!(err.contains("does not exist or is not yours"), "{err}");
    Ok(())
}

#[tokio::test]
async fn bad_metadata_flags_stop_the_agent_with_the_reason() -> Result<()> {
    let dir = TempDir::new("telemetry-flags");
    let out = tokio::process::Command::new(FERRY)
        .args([
            "agent",
            "--control",
            "https://127.0.0.1:1",
            "--ca",
            "/nonexistent/ca.pem",
            "--token",
            "x",
            "--metadata",
            "Bad Key=true",
        ])
        .env("FERRY_CONFIG", dir.0.join("none.toml"))
        .output()
        .await
        .context("run ferry agent")?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metadata `Bad Key`"), "{err}");
    assert!(err.contains("a-z 0-9 _ . -"), "{err}");
    Ok(())
}

/// Processes whose command line contains `needle` (from /proc).
fn count_processes(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let line: Vec<u8> = c.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
            String::from_utf8_lossy(&line).trim_end() == needle
        })
        .count()
}
