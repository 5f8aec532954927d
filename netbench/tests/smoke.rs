//! Runs every benchmark in smoke mode against the real `ferry` binary and checks the
//! JSON they write. It checks that every path works and reports numbers, never how big
//! the numbers are (that depends on the machine).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `ferry` binary from the same target directory, built first if it is missing.
fn ferry_binary() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_ferry-netbench"));
    let profile_dir = bench.parent().expect("the binary lives in a directory");
    let ferry = profile_dir.join("ferry");
    if !ferry.exists() {
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "ferry", "--target-dir"])
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p ferry");
        assert!(status.success(), "cargo build -p ferry failed");
    }
    assert!(
        ferry.exists(),
        "{} still missing after building",
        ferry.display()
    );
    ferry
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ferry-netbench-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one benchmark in smoke mode and returns its JSON report.
fn run(bench: &str, dir: &Path) -> serde_json::Value {
    let json = dir.join(format!("{bench}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-netbench"))
        .arg(bench)
        .arg("--smoke")
        .arg("--ferry")
        .arg(ferry_binary())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running ferry-netbench");
    assert!(
        out.status.success(),
        "ferry-netbench {bench} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn positive(value: &serde_json::Value, what: &str) -> f64 {
    let n = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(n > 0.0 && n.is_finite(), "{what} = {n}");
    n
}

#[test]
fn throughput_and_latency_smoke() {
    let dir = scratch("smoke");

    let report = run("throughput", &dir);
    assert_eq!(report["bench"], "throughput");
    for path in ["direct", "ferry"] {
        let entry = &report["paths"][path];
        assert_eq!(entry["status"], "ok", "{path}: {entry}");
        positive(&entry["upload_gbps"]["median"], &format!("{path} upload"));
        positive(
            &entry["download_gbps"]["median"],
            &format!("{path} download"),
        );
    }
    // 8 parallel streams, and the CPU cost of ferry's own processes.
    let ferry = &report["paths"]["ferry"];
    assert_eq!(ferry["parallel"]["streams"], 8, "{ferry}");
    positive(
        &ferry["parallel"]["upload_gbps"]["median"],
        "ferry x8 upload",
    );
    positive(
        &ferry["parallel"]["download_gbps"]["median"],
        "ferry x8 download",
    );
    for key in ["upload_ns_per_byte", "download_ns_per_byte"] {
        // CPU is counted in clock ticks (10 ms): a smoke transfer may cost less than one.
        let v = ferry["cpu"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("ferry cpu {key}"));
        assert!(v >= 0.0 && v.is_finite(), "ferry cpu {key} = {v}");
    }
    assert!(report["paths"]["direct"]["cpu"]["upload_ns_per_byte"].is_null());
    // ssh and socat are either measured or plainly skipped; a failure would have failed
    // the run. rathole and bore are skipped unless installed.
    for key in ["ssh", "socat", "rathole", "bore"] {
        let entry = &report["paths"][key];
        assert!(
            entry["status"] == "ok" || entry["status"] == "skipped",
            "{key}: {entry}"
        );
    }
    assert!(report["comparison"]["ferry_over"]["direct"]["upload"].is_f64());

    let report = run("latency", &dir);
    assert_eq!(report["bench"], "latency");
    for path in ["direct", "ferry"] {
        let entry = &report["paths"][path];
        assert_eq!(entry["status"], "ok", "{path}: {entry}");
        let p50 = positive(&entry["p50_us"], &format!("{path} p50"));
        let p99 = positive(&entry["p99_us"], &format!("{path} p99"));
        assert!(p99 >= p50, "{path}: p99 {p99} < p50 {p50}");
        assert!(
            entry["cdf"].as_array().is_some_and(|c| c.len() > 100),
            "{path} cdf"
        );
    }

    let report = run("hol", &dir);
    assert_eq!(report["bench"], "hol");
    for path in ["direct", "ferry"] {
        let entry = &report["paths"][path];
        assert_eq!(entry["status"], "ok", "{path}: {entry}");
        for phase in ["unloaded", "loaded"] {
            let p50 = positive(&entry[phase]["p50_us"], &format!("{path} {phase} p50"));
            let p99 = positive(&entry[phase]["p99_us"], &format!("{path} {phase} p99"));
            assert!(p99 >= p50, "{path} {phase}: p99 {p99} < p50 {p50}");
            // Every echo of a 1 s trial at 1000/s came back.
            assert_eq!(entry[phase]["samples"], 1000, "{path} {phase}");
        }
        positive(&entry["loaded"]["bulk_gbps"], &format!("{path} bulk"));
        assert!(entry["unloaded"]["bulk_gbps"].is_null());
        positive(&entry["p99_ratio"], &format!("{path} p99 ratio"));
    }
    assert!(report["comparison"]["ferry_p99_ratio"].is_f64());

    // The report renders every run of this directory, charts included.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-netbench"))
        .arg("report")
        .arg(&dir)
        .output()
        .expect("running ferry-netbench report");
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    for heading in ["## Throughput", "## Latency", "## Head-of-line blocking"] {
        assert!(
            md.contains(heading),
            "{heading} missing from report.md:\n{md}"
        );
    }
    assert!(md.contains("| ferry |"), "{md}");
    assert!(
        html.contains("Throughput against peers"),
        "no throughput chart"
    );
    assert!(
        html.contains("Echo latency by percentile"),
        "no latency CDF"
    );
    assert!(html.contains("ferry + bulk"), "no loaded ferry series");
    assert!(html.matches("<svg").count() >= 3);
    // Self-contained: no script, nothing fetched (the SVG namespace is only a name).
    assert!(!html.contains("<script"));
    assert!(!html
        .replace("http://www.w3.org/2000/svg", "")
        .contains("http"));

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn setup_smoke() {
    let dir = scratch("setup");
    let report = run("setup", &dir);
    assert_eq!(report["bench"], "setup");
    for path in ["direct", "ferry"] {
        let entry = &report["paths"][path];
        assert_eq!(entry["status"], "ok", "{path}: {entry}");
        let p50 = positive(&entry["ttfb"]["p50_us"], &format!("{path} first byte p50"));
        let p90 = positive(&entry["ttfb"]["p90_us"], &format!("{path} first byte p90"));
        assert!(p90 >= p50, "{path}: p90 {p90} < p50 {p50}");
        positive(&entry["streams_per_sec"], &format!("{path} streams/s"));
    }
    let cold = &report["comparison"]["cold"];
    assert_eq!(cold["ferry"]["status"], "ok", "{cold}");
    let first = positive(
        &cold["ferry"]["first_byte"]["p50_us"],
        "cold ferry first byte",
    );
    let exit = positive(&cold["ferry"]["exit"]["p50_us"], "cold ferry exit");
    assert!(exit >= first, "exit {exit} before first byte {first}");
    let ssh = &cold["ssh"];
    assert!(
        ssh["status"] == "ok" || ssh["status"] == "skipped",
        "ssh: {ssh}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn idle_smoke() {
    let dir = scratch("idle");
    let report = run("idle", &dir);
    assert_eq!(report["bench"], "idle");
    positive(
        &report["relay_pss_kib_no_agents"],
        "relay PSS with no agents",
    );
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{steps:?}");
    for (step, agents) in steps.iter().zip([100, 200]) {
        assert_eq!(step["agents"], agents, "{step}");
        assert_eq!(step["dropped"], 0, "{step}");
        positive(&step["relay_pss_kib"], "relay PSS");
        let cpu = step["idle_cpu_percent"].as_f64().expect("idle CPU");
        assert!(cpu >= 0.0 && cpu.is_finite(), "idle CPU {cpu}");
    }
    assert!(report["kib_per_agent"].is_f64(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_smoke() {
    let dir = scratch("scale");
    let report = run("scale", &dir);
    assert_eq!(report["bench"], "scale");
    assert_eq!(report["verdict"]["passed"], true, "{}", report["verdict"]);
    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["create", "connect", "traffic", "cleanup"]);
    let series = |phase: &str, name: &str| -> serde_json::Value {
        phases
            .iter()
            .find(|p| p["name"] == phase)
            .and_then(|p| p["series"].as_array())
            .and_then(|s| {
                s.iter()
                    .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {phase} / {name}"))
    };
    // Smoke size: 20 of everything; every operation of every kind happened and succeeded.
    for (phase, name, at_least) in [
        ("create", "create user", 20),
        ("create", "create workspace", 20),
        ("create", "agent token", 20),
        ("connect", "agent connect", 20),
        ("traffic", "agent metadata", 20),
        ("traffic", "echo round trip", 2),
        ("traffic", "terminal command", 1),
        ("traffic", "app HTTP request", 2),
        ("traffic", "dashboard load", 1),
        ("cleanup", "delete workspace", 20),
    ] {
        let s = series(phase, name);
        assert_eq!(s["errors"], 0, "{phase} / {name}: {s}");
        let ok = s["ok"].as_u64().unwrap_or(0);
        assert!(ok >= at_least, "{phase} / {name}: {ok} < {at_least}");
        let p50 = positive(&s["p50_ms"], &format!("{name} p50"));
        let p99 = positive(&s["p99_ms"], &format!("{name} p99"));
        assert!(p99 >= p50, "{name}: p99 {p99} < p50 {p50}");
    }
    let usage = &phases[2]["usage"];
    positive(&usage["relay_pss_kib"], "relay PSS");
    positive(&usage["control_pss_kib"], "control PSS");
    assert!(usage["relay_cpu_percent"]
        .as_f64()
        .is_some_and(|c| c >= 0.0));
    assert!(
        report["agent_api"]["p95_ms"].is_f64(),
        "{}",
        report["agent_api"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
