//! The dashboard in a real headless Chromium, against a real `ferry dev`: it signs in
//! with the link `ferry dev` prints, draws the relays and the mesh heat map from the
//! relays' reports, measures the browser's own RTT to every relay's `/.ferry/ping` and
//! marks the region it would pick; and the workspace view charts the demo agent's
//! telemetry as the control plane pushes it.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::browser::Browser;
use common::*;
use ferry_proto::api::{LatencyMatrixResponse, MeasurementsSeriesResponse, RegionsResponse};
use ferry_transport::ControlClient;
use serde_json::Value;

/// `12.3 ms`, `0.84 ms`, `105 ms`.
fn is_millis(text: &str) -> bool {
    text.strip_suffix(" ms")
        .is_some_and(|n| n.parse::<f64>().is_ok_and(|v| v > 0.0))
}

/// What the "your latency" panel shows, read from the page.
const LATENCY_PANEL: &str = "(() => {
    const p = document.querySelector('#your-latency');
    return {
        state: p.dataset.state,
        chosen: p.dataset.chosen || '',
        rows: [...p.querySelectorAll('tr.region-row')].map((r) => ({
            region: r.dataset.region,
            text: r.querySelector('td.rtt').textContent,
            rtt_us: Number(r.dataset.rttUs || 0),
            chosen: r.classList.contains('chosen'),
            mark: r.querySelector('td.mark').textContent,
        })),
    };
})()";

/// The heat map's cells and the relays' rows.
const NETWORK_PANELS: &str = "(() => ({
    cells: [...document.querySelectorAll('#heatmap g.cell')].map((g) => ({
        from: g.dataset.from, to: g.dataset.to, text: g.querySelector('text').textContent,
    })),
    relays: [...document.querySelectorAll('#relays tr[data-relay]')].map((r) => ({
        relay: r.dataset.relay, health: r.querySelector('.badge').textContent,
    })),
}))()";

async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_the_network_and_measures_your_latency_in_chromium() -> Result<()> {
    let test = "dashboard_draws_the_network_and_measures_your_latency_in_chromium";
    let dir = TempDir::new("dashboard");
    let Some(mut browser) = Browser::launch(test, &dir.0.join("chromium-profile")).await? else {
        return Ok(());
    };
    let ready = dir.0.join("ready.json");
    let data = dir.0.join("data");
    let _dev = spawn_ferry(
        &dir.0,
        "dev",
        &[
            "dev",
            "--control-port",
            "0",
            "--echo-port",
            "0",
            "--http-port",
            "0",
            "--no-config",
            "--data-dir",
            data.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &[],
    );
    let info = wait_for_json(&ready, Duration::from_secs(60)).await?;
    let url = info["dashboard_url"]
        .as_str()
        .context("the ready file names the dashboard URL")?
        .to_string();
    let control_url = info["control_url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{control_url}/dashboard#token=")));
    let ca = std::fs::read_to_string(data.join("ca.pem"))?;
    let admin = std::fs::read_to_string(data.join("admin.token"))?;
    let admin = admin.trim();
    let control = ControlClient::new(&control_url, &ca)?;

    // The relays report their mesh RTTs (every 3 s in `ferry dev`): wait for both
    // directions between the two regions.
    let matrix = poll(
        "the relays did not report mesh RTTs both ways",
        Duration::from_secs(30),
        || async {
            let m: LatencyMatrixResponse = control
                .get("/api/v1/measurements/matrix", Some(admin))
                .await?;
            let both = ["eu", "us"].iter().all(|from| {
                m.cells
                    .iter()
                    .any(|c| c.from == *from && c.to != *from && c.rtt_us > 0)
            });
            Ok(both.then_some(m))
        },
    )
    .await?;
    assert_eq!(matrix.regions, ["eu", "us"]);

    // "Your latency" needs every relay's HTTPS origin (its `/.ferry/ping`).
    let regions = poll(
        "relays published no HTTPS origin (RelayInfo.https_url, filled by the relay's HTTPS module)",
        Duration::from_secs(30),
        || async {
            let r: RegionsResponse = control.get("/api/v1/regions", Some(admin)).await?;
            let all = r
                .regions
                .iter()
                .flat_map(|g| g.relays.iter())
                .all(|relay| relay.https_url.is_some());
            Ok(all.then_some(r))
        },
    )
    .await?;

    // The sign-in link: the page trades the fragment for a session and drops it.
    browser.navigate(&url).await?;
    browser
        .wait_for(
            "document.querySelector('#your-latency').dataset.state === 'done'",
            Duration::from_secs(60),
        )
        .await?;
    let address = browser.eval("location.href").await?;
    assert!(
        !address.as_str().unwrap_or_default().contains("token="),
        "the token stays in the address bar: {address}"
    );
    let who = browser
        .eval("document.querySelector('#who').textContent")
        .await?;
    assert_eq!(who, "signed in as dev");

    // Every region shows a number; the one marked is the lowest median.
    let panel = browser.eval(LATENCY_PANEL).await?;
    let rows = panel["rows"].as_array().context("rows")?;
    assert_eq!(
        rows.len(),
        regions.regions.len(),
        "one row per region: {panel}"
    );
    for region in &regions.regions {
        let row = rows
            .iter()
            .find(|r| r["region"] == region.name.as_str())
            .with_context(|| format!("no row for region {}: {panel}", region.name))?;
        let text = row["text"].as_str().unwrap_or_default();
        assert!(
            is_millis(text),
            "region {}: `{text}` is not an RTT",
            region.name
        );
    }
    let lowest = rows
        .iter()
        .min_by_key(|r| r["rtt_us"].as_u64().unwrap_or(u64::MAX))
        .and_then(|r| r["region"].as_str())
        .unwrap();
    let chosen: Vec<&Value> = rows.iter().filter(|r| r["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1, "exactly one region is marked: {panel}");
    assert_eq!(
        chosen[0]["region"], lowest,
        "the lowest median is picked: {panel}"
    );
    assert!(chosen[0]["mark"]
        .as_str()
        .unwrap_or_default()
        .contains("would pick"));
    assert_eq!(panel["chosen"], lowest);

    // The heat map shows the mesh RTTs the relays reported, the relays their health.
    let network = browser.eval(NETWORK_PANELS).await?;
    for (from, to) in [("eu", "us"), ("us", "eu")] {
        let cell = network["cells"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["from"] == from && c["to"] == to)
            .with_context(|| format!("no heat map cell {from}→{to}: {network}"))?;
        assert!(
            is_millis(cell["text"].as_str().unwrap_or_default()),
            "{cell}"
        );
    }
    for relay in regions.regions.iter().flat_map(|g| g.relays.iter()) {
        let row = network["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["relay"] == relay.name.as_str())
            .with_context(|| format!("relay {} is not listed: {network}", relay.name))?;
        assert_eq!(row["health"], "ok", "relay {}", relay.name);
    }

    // The page reported what it measured as the dev user's browser samples.
    let relays = regions
        .regions
        .iter()
        .map(|g| g.relays.len())
        .sum::<usize>();
    poll(
        "the page did not report a browser:dev sample for every relay",
        Duration::from_secs(10),
        || async {
            let browser: MeasurementsSeriesResponse = control
                .get("/api/v1/measurements?from=browser:dev", Some(admin))
                .await?;
            Ok((browser.series.len() == relays).then_some(()))
        },
    )
    .await?;

    // The whole dashboard in one picture.
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({ "width": 1400, "height": 1500, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await?;
    let shot = browser.screenshot(&dir.0.join("dashboard.png")).await?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the screenshot is not a picture of a page"
    );
    let errors: Vec<&String> = browser
        .console
        .iter()
        .filter(|l| l.starts_with("exception") || l.starts_with("console.error"))
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    Ok(())
}

/// The workspace view's state, read from the page.
const TELEMETRY_PANEL: &str = "(() => {
    const p = document.querySelector('#telemetry');
    const path = p.querySelector('[data-chart=cpu] path');
    return {
        stream: p.dataset.stream,
        points: Number(p.dataset.points || 0),
        last_at: Number(p.dataset.lastAt || 0),
        cpu_path: path ? path.getAttribute('d') : '',
        memory_chart: !!p.querySelector('[data-chart=memory] path'),
        tiles: Object.fromEntries([...p.querySelectorAll('.tile')].map((t) => [t.dataset.tile, t.querySelector('.value').textContent])),
        items: Object.fromEntries([...p.querySelectorAll('tr[data-key]')].map((r) => [r.dataset.key, r.children[1].textContent])),
        polled: performance.getEntriesByType('resource').filter((e) => /\\/telemetry(\\?|$)/.test(new URL(e.name).pathname)).length,
    };
})()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_view_charts_live_telemetry_in_chromium() -> Result<()> {
    let test = "the_workspace_view_charts_live_telemetry_in_chromium";
    let dir = TempDir::new("dashboard-telemetry");
    let Some(mut browser) = Browser::launch(test, &dir.0.join("chromium-profile")).await? else {
        return Ok(());
    };
    let ready = dir.0.join("ready.json");
    let data = dir.0.join("data");
    let _dev = spawn_ferry(
        &dir.0,
        "dev",
        &[
            "dev",
            "--control-port",
            "0",
            "--echo-port",
            "0",
            "--http-port",
            "0",
            "--no-config",
            "--data-dir",
            data.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &[],
    );
    let info = wait_for_json(&ready, Duration::from_secs(60)).await?;
    let url = info["dashboard_url"]
        .as_str()
        .context("the ready file names the dashboard URL")?
        .to_string();
    browser.navigate(&url).await?;

    // The demo agent reports every 2 s: the chart gets a second point, then moves on.
    let first = browser
        .wait_for(
            &format!("(() => {{ const s = {TELEMETRY_PANEL}; return s.stream === 'open' && s.points >= 2 && s; }})()"),
            Duration::from_secs(60),
        )
        .await?;
    let cpu_path = first["cpu_path"].as_str().unwrap_or_default().to_string();
    assert!(cpu_path.starts_with('M'), "no CPU line drawn: {first}");
    assert_eq!(first["memory_chart"], true, "no memory line drawn: {first}");
    let last_at = first["last_at"].as_u64().unwrap_or(0);
    let moved = browser
        .wait_for(
            &format!(
                "(() => {{ const s = {TELEMETRY_PANEL}; return s.last_at > {last_at} && s.cpu_path !== {cpu:?} && s; }})()",
                cpu = cpu_path
            ),
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        moved["points"].as_u64().unwrap_or(0) > first["points"].as_u64().unwrap_or(0),
        "a new reading adds a point: {first} then {moved}"
    );
    // Pushed, not polled: the page never fetched the telemetry document itself.
    assert_eq!(moved["polled"], 0, "the page polled /telemetry: {moved}");
    for tile in ["cpu", "memory", "disk", "load", "uptime"] {
        let text = moved["tiles"][tile].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "tile {tile} is empty: {moved}");
    }
    assert!(
        moved["tiles"]["cpu"]
            .as_str()
            .unwrap_or_default()
            .ends_with(" %"),
        "{moved}"
    );
    // The demo's two metadata items: a command's output and a file's contents.
    let processes = moved["items"]["processes"].as_str().unwrap_or_default();
    assert!(
        processes.parse::<u32>().is_ok_and(|n| n > 0),
        "processes: `{processes}` in {moved}"
    );
    let kernel = moved["items"]["kernel"].as_str().unwrap_or_default();
    assert_eq!(
        kernel,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "{moved}"
    );
    let errors: Vec<&String> = browser
        .console
        .iter()
        .filter(|l| l.starts_with("exception") || l.starts_with("console.error"))
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    Ok(())
}
