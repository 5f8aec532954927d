//! `ferry dev`: one command, a whole network; Ctrl-C stops all of it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_dev_starts_a_network_the_cli_can_use_and_stops_on_ctrl_c() -> anyhow::Result<()> {
    let dir = TempDir::new("dev");
    let ready = dir.0.join("ready.json");
    let config = dir.0.join("config.toml");
    let mut dev = Command::new(FERRY)
        .args([
            "dev",
            "--control-port",
            "0",
            "--echo-port",
            "0",
            "--http-port",
            "0",
            "--relays-per-region",
            "2",
            "--data-dir",
        ])
        .arg(dir.0.join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .env("FERRY_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let info = wait_for_json(&ready, Duration::from_secs(30)).await?;
    let echo = info["echo_port"].as_u64().unwrap().to_string();
    let relays: Vec<String> = info["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(relays.len(), 4, "two regions by default, two relays each");

    // The mesh: the workspace answers through every relay, whichever holds its agent.
    for relay in &relays {
        let out = Command::new(FERRY)
            .args(["tcp", "demo", &echo, "--relay", relay])
            .env("FERRY_CONFIG", &config)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = tokio::time::timeout(Duration::from_secs(30), out.wait_with_output()).await??;
        assert!(
            out.status.success(),
            "via {relay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The CLI uses the config dev wrote, with no flags at all.
    let mut child = Command::new(FERRY)
        .args(["tcp", "demo", &echo])
        .env("FERRY_CONFIG", &config)
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through ferry dev").await?;
    drop(stdin);
    let out = child;
    let out = tokio::time::timeout(Duration::from_secs(30), out.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"through ferry dev");

    // The demo's HTTP app in a browser: the app address it printed, signed in as `dev`
    // with the password it wrote, through the app-auth redirects.
    let app_url = info["app_url"].as_str().unwrap();
    let control_url = info["control_url"].as_str().unwrap();
    let ca = std::fs::read_to_string(info["ca_file"].as_str().unwrap())?;
    let password = std::fs::read_to_string(dir.0.join("data/dev.password"))?;
    let login: ferry_proto::api::NewTokenResponse =
        ferry_transport::ControlClient::new(control_url, &ca)?
            .post(
                "/api/v1/login",
                None,
                &ferry_proto::api::LoginRequest {
                    user: "dev".into(),
                    password: password.trim().into(),
                },
            )
            .await?;
    let browser = web::WebClient::new(&ca, &[b"h2", b"http/1.1"]);
    browser.sign_in(control_url, &login.token).await?;
    let pages = browser.get_following(app_url).await?;
    let last = pages.last().unwrap();
    assert_eq!(last.status, 200, "{last:?}");
    assert!(
        last.text().starts_with("hello from workspace demo--dev"),
        "{}",
        last.text()
    );
    assert!(info["terminal_url"]
        .as_str()
        .unwrap()
        .starts_with("https://terminal--demo--dev.apps.eu.localhost:"));
    // Every part has an admin port; one process, so each serves the whole network's
    // metrics, relays told apart by their label.
    let relay_admin: std::net::SocketAddr =
        info["relays"][0]["admin_addr"].as_str().unwrap().parse()?;
    for key in ["control_admin_addr", "agent_admin_addr"] {
        let addr: std::net::SocketAddr = info[key].as_str().unwrap().parse()?;
        assert_eq!(http_get(addr, "/readyz").await?.0, 200, "{key}");
    }
    let metrics = scrape(relay_admin).await?;
    let through: f64 = relays
        .iter()
        .map(|r| {
            metrics.sum(
                "ferry_relay_streams_opened_total",
                &[("relay", r), ("kind", "port")],
            )
        })
        .sum();
    assert_eq!(
        through, 6.0,
        "one stream per relay, then one more, then the web app's request"
    );
    assert!(metrics.has("ferry_agent_relay_connections", &[]));
    assert!(metrics.has("ferry_control_http_requests_total", &[]));

    // Ctrl-C: everything stops, cleanly and promptly.
    let pid = dev.id().unwrap() as i32;
    // Send SIGINT with kill(1), as a terminal's Ctrl-C would, without a libc dependency.
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), dev.wait()).await??;
    assert!(exit.success(), "ferry dev exited with {exit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_dev_with_a_topology_puts_relays_behind_the_emulator() -> anyhow::Result<()> {
    let dir = TempDir::new("dev-topology");
    let ready = dir.0.join("ready.json");
    let config = dir.0.join("config.toml");
    let topology = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../netbench/topologies/three-regions.toml");
    let mut dev = Command::new(FERRY)
        .args([
            "dev",
            "--control-port",
            "0",
            "--echo-port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--topology")
        .arg(&topology)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .env("FERRY_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let info = wait_for_json(&ready, Duration::from_secs(30)).await?;
    let regions: Vec<&str> = info["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["ap", "eu", "us"], "every location but home");

    // Each relay's HTTPS (apps, terminal, the browser's RTT probe) is behind the
    // emulator too, on its advertised port: ap's answer takes its emulated 150 ms.
    let ap = &info["relays"][0];
    let web_port = ap["web_port"].as_u64().context("web_port")?;
    let ca = std::fs::read_to_string(dir.0.join("data").join("ca.pem"))?;
    let web = web::WebClient::new(&ca, &[b"http/1.1"]);
    let started = std::time::Instant::now();
    let ping = web
        .send(
            web.request(
                hyper::Method::GET,
                &format!("https://127.0.0.1:{web_port}/.ferry/ping"),
            )?
            .body(web::empty())?,
        )
        .await?;
    assert_eq!(ping.status, 204);
    let took = started.elapsed();
    let rtt = ap["rtt_from_home_ms"].as_f64().context("rtt")?;
    assert!(
        took.as_secs_f64() * 1000.0 >= rtt,
        "ap's HTTPS answered in {took:?}, under its emulated {rtt} ms RTT"
    );

    // The CLI, at home, sees eu (10 ms) as the nearest and the path goes there.
    let ping = Command::new(FERRY)
        .args(["ping", "--json", "-c", "3"])
        .env("FERRY_CONFIG", &config)
        .env_remove("FERRY_TOKEN")
        .output();
    let ping = tokio::time::timeout(Duration::from_secs(30), ping).await??;
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ping.stdout)?;
    assert_eq!(v["chosen"], "eu", "{v}");
    let eu_rtt = v["regions"][0]["rtt_us"].as_u64().unwrap_or(0);
    assert!(
        eu_rtt >= 8_000,
        "eu answered in {eu_rtt} us, under the emulated 10 ms"
    );

    let status = Command::new(FERRY)
        .args(["status", "demo", "--json"])
        .env("FERRY_CONFIG", &config)
        .env_remove("FERRY_TOKEN")
        .output();
    let status = tokio::time::timeout(Duration::from_secs(30), status).await??;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let hops = v["hops"].as_array().unwrap();
    assert_eq!(hops[0]["from"], "client");
    assert_eq!(hops[0]["to"], "relay:eu-1", "{v}");
    assert_eq!(hops.last().unwrap()["to"], "agent:demo--dev", "{v}");

    // Mesh links between regions cross the emulator's 1500-byte MTU: MTU discovery
    // settles at internet sizes there, not at the jumbo packets loopback would carry.
    // (One process: any relay's admin port shows every relay's links.)
    let admin: std::net::SocketAddr = info["relays"][0]["admin_addr"]
        .as_str()
        .context("admin_addr")?
        .parse()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let links: Vec<(String, f64)> = scrape(admin)
            .await?
            .series
            .into_iter()
            .filter(|(name, _, _)| name == "ferry_relay_mesh_udp_payload_bytes")
            .map(|(_, labels, size)| (format!("{labels:?}"), size))
            .collect();
        let too_big: Vec<_> = links.iter().filter(|(_, size)| *size > 1472.0).collect();
        assert!(
            too_big.is_empty(),
            "mesh packets past the emulated MTU: {too_big:?}"
        );
        // Until discovery has climbed past QUIC's 1200-byte start on every link, a
        // missing MTU limit would not show yet.
        if links.len() >= 2 && links.iter().all(|(_, size)| *size >= 1400.0) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "mesh MTU discovery did not settle in 30 s: {links:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pid = dev.id().unwrap() as i32;
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), dev.wait()).await??;
    assert!(exit.success(), "ferry dev exited with {exit}");
    Ok(())
}
