//! Runs both benchmarks in smoke mode against the real `ferry` binary and checks the
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
    // ssh is either measured or plainly skipped; a failure would have failed the run.
    let ssh = &report["paths"]["ssh"];
    assert!(
        ssh["status"] == "ok" || ssh["status"] == "skipped",
        "ssh: {ssh}"
    );

    let report = run("latency", &dir);
    assert_eq!(report["bench"], "latency");
    for path in ["direct", "ferry"] {
        let entry = &report["paths"][path];
        assert_eq!(entry["status"], "ok", "{path}: {entry}");
        let p50 = positive(&entry["p50_us"], &format!("{path} p50"));
        let p99 = positive(&entry["p99_us"], &format!("{path} p99"));
        assert!(p99 >= p50, "{path}: p99 {p99} < p50 {p50}");
    }

    let _ = std::fs::remove_dir_all(&dir);
}
