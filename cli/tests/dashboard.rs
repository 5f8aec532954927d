//! The dashboard in a real headless Chromium, against a real `ferry dev`: it signs in
//! with the link `ferry dev` prints, draws the relays and the mesh heat map from the
//! relays' reports, measures the browser's own RTT to every relay's `/.ferry/ping` and
//! marks the region it would pick.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use ferry_proto::api::{LatencyMatrixResponse, MeasurementsSeriesResponse, RegionsResponse};
use ferry_transport::ControlClient;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Chromium is here; in CI its absence is a failure, locally a loud skip.
fn have_chromium(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: Chromium is not installed (apt-get install chromium), and CI must run this test"
    );
    eprintln!("SKIPPED {test}: Chromium is not installed (apt-get install chromium)");
    false
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom` or `--screenshot=...`),
/// giving the page's scripts `budget` of virtual time (network waits do not use it up).
async fn chromium(dir: &Path, url: &str, action: &str, budget: Duration) -> Result<String> {
    let profile = dir.join(format!("chromium-profile-{}", fastrand::u32(..)));
    let out = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            // Root in a container has no user namespace for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // The dev network's certificates come from its own CA.
            "--ignore-certificate-errors",
            "--window-size=1400,1500",
            &format!("--virtual-time-budget={}", budget.as_millis()),
            &format!("--user-data-dir={}", profile.display()),
            action,
            url,
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .context("chromium did not finish within 90s")??;
    if !out.status.success() {
        bail!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The opening tags `<tag ...>` in `html` whose attributes include `needle`, with the
/// text up to the tag's end (enough for one table row).
fn elements<'a>(html: &'a str, tag: &str, needle: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let from = &rest[start..];
        let tag_end = from.find('>').unwrap_or(from.len());
        let end = from.find(&close).map_or(from.len(), |e| e + close.len());
        if from[..tag_end].contains(needle) {
            out.push(&from[..end]);
        }
        rest = &from[tag_end.min(from.len())..];
    }
    out
}

/// An attribute's value in an element's opening tag.
fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let tag = &element[..element.find('>')?];
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// The text of the first `<td class="CLASS">` in `element`.
fn cell_text<'a>(element: &'a str, class: &str) -> Option<&'a str> {
    let key = format!("<td class=\"{class}\">");
    let start = element.find(&key)? + key.len();
    let len = element[start..].find('<')?;
    Some(&element[start..start + len])
}

/// `12.3 ms`, `0.84 ms`, `105 ms`.
fn is_millis(text: &str) -> bool {
    text.strip_suffix(" ms")
        .is_some_and(|n| n.parse::<f64>().is_ok_and(|v| v > 0.0))
}

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
    if !have_chromium(test) {
        return Ok(());
    }
    let dir = TempDir::new("dashboard");
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

    let dom = chromium(&dir.0, &url, "--dump-dom", Duration::from_secs(20)).await?;
    std::fs::write(dir.0.join("dashboard.html"), &dom)?;
    let panel = elements(&dom, "section", "id=\"your-latency\"");
    let panel = panel.first().context("the page has the latency panel")?;
    assert_eq!(
        attr(panel, "data-state"),
        Some("done"),
        "the latency panel did not finish measuring (page dumped to dashboard.html)"
    );

    // Every region shows a number; the chosen one is marked and has the lowest.
    let rows = elements(panel, "tr", "region-row");
    assert_eq!(rows.len(), regions.regions.len(), "one row per region");
    let mut lowest: Option<(u64, String)> = None;
    for region in &regions.regions {
        let row = rows
            .iter()
            .find(|r| attr(r, "data-region") == Some(region.name.as_str()))
            .with_context(|| format!("no row for region {}", region.name))?;
        let text = cell_text(row, "rtt").unwrap_or_default();
        assert!(
            is_millis(text),
            "region {}: `{text}` is not an RTT",
            region.name
        );
        let rtt: u64 = attr(row, "data-rtt-us").unwrap_or_default().parse()?;
        if lowest.as_ref().map_or(true, |(l, _)| rtt < *l) {
            lowest = Some((rtt, region.name.clone()));
        }
    }
    let chosen: Vec<&str> = rows
        .iter()
        .filter(|r| attr(r, "class").is_some_and(|c| c.split(' ').any(|c| c == "chosen")))
        .filter_map(|r| attr(r, "data-region"))
        .collect();
    let (_, lowest) = lowest.unwrap();
    assert_eq!(
        chosen,
        [lowest.as_str()],
        "the lowest median is the region picked"
    );
    assert_eq!(attr(panel, "data-chosen"), Some(lowest.as_str()));

    // The heat map shows the mesh RTTs the relays reported.
    for (from, to) in [("eu", "us"), ("us", "eu")] {
        let cell = elements(&dom, "g", &format!("data-from=\"{from}\" data-to=\"{to}\""));
        let cell = cell
            .first()
            .with_context(|| format!("no heat map cell {from}→{to}"))?;
        assert!(cell.contains(" ms</text>"), "heat map {from}→{to}: {cell}");
    }
    // The relays' panel lists every relay with its health.
    for relay in regions.regions.iter().flat_map(|g| g.relays.iter()) {
        let row = elements(&dom, "tr", &format!("data-relay=\"{}\"", relay.name));
        assert!(
            row.first().is_some_and(|r| r.contains("badge ok")),
            "relay {} is not shown healthy",
            relay.name
        );
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

    let shot = dir.0.join("dashboard.png");
    chromium(
        &dir.0,
        &url,
        &format!("--screenshot={}", shot.display()),
        Duration::from_secs(20),
    )
    .await?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the screenshot is not a picture of a page"
    );
    Ok(())
}
