//! `report`: turns the JSON files of benchmark runs into `report.md` (tables) and
//! `report.html` (the same tables with charts: throughput bars against the peers,
//! latency CDFs, relay memory per agent against the number of agents). Reads only
//! what the benchmarks wrote; a value that is missing is shown as missing.

mod svg;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use svg::{Lines, Scale};

/// Paths in the order the benchmarks list them, with their display names.
const PATHS: &[(&str, &str)] = &[
    ("direct", "direct"),
    ("ferry", "ferry"),
    ("ferry_mesh", "ferry mesh"),
    ("ferry_tcp", "ferry over TCP"),
    ("ssh", "ssh -L"),
    ("socat", "socat"),
    ("rathole", "rathole"),
    ("bore", "bore"),
];

/// One run's JSON, by file.
struct Run {
    file: PathBuf,
    json: Value,
}

/// The JSON files named, directories expanded to the `*.json` files in them.
fn collect(inputs: &[PathBuf]) -> Result<Vec<Run>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    let mut runs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        if json["bench"].is_string() {
            runs.push(Run { file, json });
        } else {
            eprintln!("{}: not a ferry-netbench report, skipped", file.display());
        }
    }
    if runs.is_empty() {
        bail!("no ferry-netbench JSON reports among the inputs");
    }
    // Oldest first, so that a later run of the same benchmark comes later.
    runs.sort_by_key(|r| r.json["unix_time"].as_u64().unwrap_or(0));
    Ok(runs)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

/// Markdown and HTML built side by side.
#[derive(Default)]
struct Doc {
    md: String,
    html: String,
}

impl Doc {
    fn heading(&mut self, text: &str) {
        let _ = writeln!(self.md, "\n## {text}\n");
        let _ = writeln!(self.html, "<h2>{}</h2>", svg::escape(text));
    }

    fn para(&mut self, text: &str) {
        let _ = writeln!(self.md, "{text}\n");
        let _ = writeln!(self.html, "<p>{}</p>", svg::escape(text));
    }

    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.md, "| {} |", header.join(" | "));
        let _ = writeln!(self.md, "|{}", " --- |".repeat(header.len()));
        for row in rows {
            let _ = writeln!(self.md, "| {} |", row.join(" | "));
        }
        self.md.push('\n');
        self.html.push_str("<table><tr>");
        for h in header {
            let _ = write!(self.html, "<th>{}</th>", svg::escape(h));
        }
        self.html.push_str("</tr>");
        for row in rows {
            self.html.push_str("<tr>");
            for c in row {
                let _ = write!(self.html, "<td>{}</td>", svg::escape(c));
            }
            self.html.push_str("</tr>");
        }
        self.html.push_str("</table>\n");
    }

    fn chart(&mut self, svg: String) {
        let _ = writeln!(self.html, "<figure>{svg}</figure>");
    }
}

/// Status of a path entry when it was not measured: "skipped (...)".
fn unmeasured(entry: &Value) -> Option<String> {
    match entry["status"].as_str() {
        Some("ok") | None => None,
        Some(status) => {
            let reason = entry["reason"].as_str().unwrap_or("no reason given");
            // The benchmarks' reasons usually say "skipped (...)" already.
            Some(if reason.starts_with(status) {
                reason.to_string()
            } else {
                format!("{status}: {reason}")
            })
        }
    }
}

fn source_line(doc: &mut Doc, run: &Run) {
    let smoke = if run.json["smoke"].as_bool() == Some(true) {
        " (smoke mode: tiny sizes, not a measurement)"
    } else {
        ""
    };
    doc.para(&format!(
        "From {} (unix time {}){smoke}.",
        run.file.display(),
        run.json["unix_time"]
    ));
}

fn notes(doc: &mut Doc, paths: &Value) {
    let skipped: Vec<String> = PATHS
        .iter()
        .filter_map(|(key, label)| Some(format!("{label}: {}", unmeasured(&paths[*key])?)))
        .collect();
    if !skipped.is_empty() {
        doc.para(&format!("Not measured: {}.", skipped.join("; ")));
    }
}

fn throughput(doc: &mut Doc, run: &Run) {
    let paths = &run.json["paths"];
    doc.heading("Throughput (Gbit/s, median of trials)");
    source_line(doc, run);
    let mut rows = Vec::new();
    let mut cats = Vec::new();
    let (mut up, mut down, mut pup, mut pdown) = (vec![], vec![], vec![], vec![]);
    for (key, label) in PATHS {
        let e = &paths[*key];
        if e["status"] != "ok" {
            continue;
        }
        let u = num(&e["upload_gbps"]["median"]);
        let d = num(&e["download_gbps"]["median"]);
        let pu = num(&e["parallel"]["upload_gbps"]["median"]);
        let pd = num(&e["parallel"]["download_gbps"]["median"]);
        rows.push(vec![
            label.to_string(),
            cell(u, 2),
            cell(d, 2),
            cell(pu, 2),
            cell(pd, 2),
            cell(num(&e["cpu"]["upload_ns_per_byte"]), 2),
        ]);
        cats.push(label.to_string());
        up.push(u);
        down.push(d);
        pup.push(pu);
        pdown.push(pd);
    }
    let streams = run.json["settings"]["streams"].as_u64().unwrap_or(0);
    let par_up = format!("x{streams} upload");
    let par_down = format!("x{streams} download");
    doc.table(
        &[
            "path",
            "upload",
            "download",
            &par_up,
            &par_down,
            "CPU ns/B (upload)",
        ],
        &rows,
    );
    notes(doc, paths);
    doc.chart(svg::bars(
        "Throughput against peers",
        "Gbit/s",
        &cats,
        &[
            ("upload".into(), up),
            ("download".into(), down),
            (par_up.clone(), pup),
            (par_down.clone(), pdown),
        ],
    ));
}

fn cdf_points(cdf: &Value, scale_to_us: f64) -> Vec<(f64, f64)> {
    cdf.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                svg::nines(num(&p["percent"])?),
                num(&p["us"])? * scale_to_us,
            ))
        })
        .collect()
}

fn nines_ticks() -> Vec<(f64, String)> {
    [0.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|p| (svg::nines(*p), format!("p{p}")))
        .collect()
}

fn latency(doc: &mut Doc, run: &Run) {
    let paths = &run.json["paths"];
    let size = run.json["settings"]["size"].as_u64().unwrap_or(0);
    doc.heading(&format!("Latency ({size}-byte echo, µs)"));
    source_line(doc, run);
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (key, label) in PATHS {
        let e = &paths[*key];
        if e["status"] != "ok" {
            continue;
        }
        rows.push(vec![
            label.to_string(),
            cell(num(&e["p50_us"]), 1),
            cell(num(&e["p99_us"]), 1),
            cell(num(&e["p999_us"]), 1),
        ]);
        series.push((label.to_string(), cdf_points(&e["cdf"], 1.0)));
    }
    doc.table(&["path", "p50", "p99", "p99.9"], &rows);
    notes(doc, paths);
    doc.chart(
        Lines {
            title: "Echo latency by percentile",
            x_label: "percentile",
            y_label: "µs",
            y_scale: Scale::Log,
            x_ticks: nines_ticks(),
            series,
            paired: false,
        }
        .render(),
    );
}

fn hol(doc: &mut Doc, run: &Run) {
    let paths = &run.json["paths"];
    let s = &run.json["settings"];
    doc.heading("Head-of-line blocking (echo latency beside a bulk download, µs)");
    source_line(doc, run);
    doc.para(&format!(
        "{}-byte echoes at {}/s, open loop; {} trial(s) of {} s per phase; medians over trials.",
        s["size"], s["rate"], s["trials"], s["secs"]
    ));
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (key, label) in PATHS {
        let e = &paths[*key];
        if e["status"] != "ok" {
            continue;
        }
        rows.push(vec![
            label.to_string(),
            cell(num(&e["unloaded"]["p50_us"]), 1),
            cell(num(&e["unloaded"]["p99_us"]), 1),
            cell(num(&e["loaded"]["p50_us"]), 1),
            cell(num(&e["loaded"]["p99_us"]), 1),
            cell(num(&e["loaded"]["p999_us"]), 1),
            format!("{}x", cell(num(&e["p99_ratio"]), 1)),
            cell(num(&e["loaded"]["bulk_gbps"]), 2),
            e["loaded"]["udp_rcvbuf_drops"]
                .as_u64()
                .map_or_else(|| "–".into(), |d| d.to_string()),
        ]);
        series.push((
            format!("{label} unloaded"),
            cdf_points(&e["unloaded"]["cdf"], 1.0),
        ));
        series.push((
            format!("{label} + bulk"),
            cdf_points(&e["loaded"]["cdf"], 1.0),
        ));
    }
    doc.table(
        &[
            "path",
            "p50",
            "p99",
            "+bulk p50",
            "+bulk p99",
            "+bulk p99.9",
            "p99 ratio",
            "bulk Gbit/s",
            "UDP drops",
        ],
        &rows,
    );
    notes(doc, paths);
    doc.chart(
        Lines {
            title: "Echo latency, unloaded and beside a bulk download",
            x_label: "percentile",
            y_label: "µs",
            y_scale: Scale::Log,
            x_ticks: nines_ticks(),
            series,
            paired: true,
        }
        .render(),
    );
}

fn setup(doc: &mut Doc, run: &Run) {
    let paths = &run.json["paths"];
    doc.heading("Setup");
    source_line(doc, run);
    let mut rows = Vec::new();
    for (key, label) in PATHS {
        let e = &paths[*key];
        if e["status"] != "ok" {
            continue;
        }
        rows.push(vec![
            label.to_string(),
            cell(num(&e["ttfb"]["p50_us"]), 0),
            cell(num(&e["ttfb"]["p90_us"]), 0),
            cell(num(&e["streams_per_sec"]), 0),
        ]);
    }
    doc.table(
        &[
            "path",
            "new stream, first byte p50 µs",
            "p90 µs",
            "new streams/s",
        ],
        &rows,
    );
    let cold = &run.json["comparison"]["cold"];
    let cold_rows: Vec<Vec<String>> = ["ferry", "ssh"]
        .iter()
        .filter(|k| cold[**k]["status"] == "ok")
        .map(|k| {
            vec![
                cold[*k]["client"].as_str().unwrap_or(k).to_string(),
                cell(num(&cold[*k]["first_byte"]["p50_us"]).map(|u| u / 1e3), 1),
                cell(num(&cold[*k]["exit"]["p50_us"]).map(|u| u / 1e3), 1),
            ]
        })
        .collect();
    if !cold_rows.is_empty() {
        doc.table(
            &["cold client", "first byte p50 ms", "exit p50 ms"],
            &cold_rows,
        );
    }
    notes(doc, paths);
}

fn idle(doc: &mut Doc, run: &Run) {
    doc.heading("Idle agents on one relay");
    source_line(doc, run);
    let base = num(&run.json["relay_pss_kib_no_agents"]);
    let mut rows = vec![vec![
        "0".to_string(),
        cell(base.map(|k| k / 1024.0), 1),
        "–".into(),
        "–".into(),
        "–".into(),
    ]];
    let (mut slope, mut average) = (Vec::new(), Vec::new());
    for step in run.json["steps"].as_array().into_iter().flatten() {
        let agents = num(&step["agents"]).unwrap_or(0.0);
        let pss = num(&step["relay_pss_kib"]);
        let per = num(&step["kib_per_agent"]);
        rows.push(vec![
            format!("{agents:.0}"),
            cell(pss.map(|k| k / 1024.0), 1),
            cell(per, 1),
            cell(
                pss.zip(base)
                    .filter(|_| agents > 0.0)
                    .map(|(p, b)| (p - b) / agents),
                1,
            ),
            cell(num(&step["idle_cpu_percent"]), 1),
        ]);
        if let Some(per) = per {
            slope.push((agents, per));
        }
        if let (Some(p), Some(b)) = (pss, base) {
            if agents > 0.0 {
                average.push((agents, (p - b) / agents));
            }
        }
    }
    doc.table(
        &[
            "agents",
            "relay PSS MiB",
            "KiB/agent (since previous step)",
            "KiB/agent (since no agents)",
            "idle CPU % of a core",
        ],
        &rows,
    );
    if let Some(target) = num(&run.json["target_kib_per_agent"]) {
        doc.para(&format!("Target: under {target} KiB per idle agent."));
    }
    let x_ticks: Vec<(f64, String)> = slope.iter().map(|(n, _)| (*n, format!("{n:.0}"))).collect();
    doc.chart(
        Lines {
            title: "Relay memory per idle agent against the number of agents",
            x_label: "agents",
            y_label: "KiB per agent",
            y_scale: Scale::Linear,
            x_ticks,
            series: vec![
                ("since previous step".into(), slope),
                ("since no agents".into(), average),
            ],
            paired: false,
        }
        .render(),
    );
}

fn scale(doc: &mut Doc, run: &Run) {
    let s = &run.json["settings"];
    doc.heading(&format!(
        "Scale: {} users, workspaces and agents, {} s of traffic (ms)",
        s["agents"], s["traffic_secs"]
    ));
    source_line(doc, run);
    let mut rows = Vec::new();
    let mut usage_rows = Vec::new();
    let mut series = Vec::new();
    for phase in run.json["phases"].as_array().into_iter().flatten() {
        let name = phase["name"].as_str().unwrap_or("?");
        for sr in phase["series"].as_array().into_iter().flatten() {
            let ok = sr["ok"].as_u64().unwrap_or(0);
            let errors = sr["errors"].as_u64().unwrap_or(0);
            if ok == 0 && errors == 0 {
                continue;
            }
            let op = sr["name"].as_str().unwrap_or("?");
            rows.push(vec![
                format!("{name} / {op}"),
                ok.to_string(),
                errors.to_string(),
                cell(num(&sr["p50_ms"]), 1),
                cell(num(&sr["p90_ms"]), 1),
                cell(num(&sr["p95_ms"]), 1),
                cell(num(&sr["p99_ms"]), 1),
            ]);
            if name == "traffic" && ok > 0 {
                // CDF points are in µs; the chart is in ms.
                series.push((op.to_string(), cdf_points(&sr["cdf"], 1e-3)));
            }
        }
        let u = &phase["usage"];
        usage_rows.push(vec![
            name.to_string(),
            cell(num(&u["secs"]), 1),
            cell(num(&u["relay_cpu_percent"]), 1),
            cell(num(&u["control_cpu_percent"]), 1),
            cell(num(&u["netbench_cpu_percent"]), 1),
            cell(num(&u["relay_pss_peak_kib"]).map(|k| k / 1024.0), 1),
            cell(num(&u["control_pss_peak_kib"]).map(|k| k / 1024.0), 1),
        ]);
    }
    doc.table(
        &[
            "phase / operation",
            "ok",
            "errors",
            "p50",
            "p90",
            "p95",
            "p99",
        ],
        &rows,
    );
    doc.table(
        &[
            "phase",
            "s",
            "relay CPU %",
            "control CPU %",
            "load generator CPU %",
            "relay PSS peak MiB",
            "control PSS peak MiB",
        ],
        &usage_rows,
    );
    let api = &run.json["agent_api"];
    let r = &run.json["reference"];
    doc.para(&format!(
        "Agent API latency (metadata reports): p90 {} ms, p95 {} ms on {} core(s); published reference for {} agents: p90 {} ms, p95 {} ms.",
        cell(num(&api["p90_ms"]), 1),
        cell(num(&api["p95_ms"]), 1),
        run.json["cores"],
        r["agents"],
        r["p90_ms"],
        r["p95_ms"]
    ));
    let v = &run.json["verdict"];
    let yes = |k: &str| if v[k] == true { "yes" } else { "NO" };
    doc.para(&format!(
        "Pass criteria: no interrupted session: {}; no process restart: {}; no internal error: {}; no failed operation: {}. {}",
        yes("no_interrupted_session"),
        yes("no_process_restart"),
        yes("no_internal_error"),
        yes("no_failed_operation"),
        if v["passed"] == true { "PASSED" } else { "FAILED" }
    ));
    doc.chart(
        Lines {
            title: "Traffic phase latency by percentile",
            x_label: "percentile",
            y_label: "ms",
            y_scale: Scale::Log,
            x_ticks: nines_ticks(),
            series,
            paired: false,
        }
        .render(),
    );
}

const STYLE: &str = "body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}\
th:first-child,td:first-child{text-align:left}figure{margin:1rem 0}";

/// Writes `report.md` and `report.html` into `out`; returns their paths.
pub fn write(inputs: &[PathBuf], out: &Path) -> Result<(PathBuf, PathBuf)> {
    let runs = collect(inputs)?;
    let mut doc = Doc::default();
    for run in &runs {
        match run.json["bench"].as_str().unwrap_or("") {
            "throughput" => throughput(&mut doc, run),
            "latency" => latency(&mut doc, run),
            "hol" => hol(&mut doc, run),
            "setup" => setup(&mut doc, run),
            "idle" => idle(&mut doc, run),
            "scale" => scale(&mut doc, run),
            other => eprintln!(
                "{}: unknown benchmark `{other}`, skipped",
                run.file.display()
            ),
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let md_path = out.join("report.md");
    let html_path = out.join("report.html");
    let md = format!("# ferry-netbench report\n{}", doc.md);
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferry-netbench report</title><style>{STYLE}</style></head><body><h1>ferry-netbench report</h1>\n{}</body></html>\n",
        doc.html
    );
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    Ok((md_path, html_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_shows_measured_paths_and_says_which_were_skipped() {
        let dir = std::env::temp_dir().join(format!("netbench-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({
            "bench": "latency", "unix_time": 1, "smoke": false,
            "settings": {"size": 64},
            "paths": {
                "direct": {"status": "ok", "p50_us": 20.0, "p99_us": 30.0, "p999_us": 40.0,
                           "cdf": [{"percent": 50.0, "us": 20.0}, {"percent": 99.0, "us": 30.0}]},
                "ssh": {"status": "skipped", "reason": "ssh not installed"}
            }
        });
        std::fs::write(dir.join("latency-1.json"), json.to_string()).unwrap();
        std::fs::write(dir.join("other.json"), "{\"x\": 1}").unwrap();
        let (md, html) = write(std::slice::from_ref(&dir), &dir.join("out")).unwrap();
        let md = std::fs::read_to_string(md).unwrap();
        let html = std::fs::read_to_string(html).unwrap();
        assert!(md.contains("| direct | 20.0 | 30.0 | 40.0 |"), "{md}");
        assert!(md.contains("ssh -L: skipped: ssh not installed"), "{md}");
        assert!(md.contains("Not measured: ssh -L"), "{md}");
        assert!(
            html.contains("<svg") && html.contains("<polyline"),
            "{html}"
        );
        assert!(!html.contains("<script"));
        assert!(write(&[dir.join("missing.json")], &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
