//! The scale benchmark's printed summary: one table of operations per phase, one of
//! resources per phase, the agent API latency against the reference, the verdict.

use super::{Phase, Settings, Verdict, REFERENCE_AGENTS, REFERENCE_P90_MS, REFERENCE_P95_MS};
use crate::report::Table;

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// The phase tables, the agent API line against the reference, and the verdict.
pub(super) fn tables(settings: &Settings, phases: &[Phase], verdict: &Verdict) {
    println!();
    println!(
        "scale: {} users, workspaces and agents on one relay and one control plane, {} s of traffic; latencies in ms",
        settings.agents, settings.traffic_secs
    );
    let mut table = Table::new(&[
        "phase / operation",
        "ok",
        "errors",
        "p50",
        "p90",
        "p95",
        "p99",
        "max",
    ]);
    for phase in phases {
        for s in &phase.series {
            if s.ok == 0 && s.errors == 0 {
                continue;
            }
            table.row(vec![
                format!("{} / {}", phase.name, s.name),
                s.ok.to_string(),
                s.errors.to_string(),
                ms(s.p50_ms),
                ms(s.p90_ms),
                ms(s.p95_ms),
                ms(s.p99_ms),
                ms(s.max_ms),
            ]);
        }
    }
    table.print();
    println!();
    let mut table = Table::new(&[
        "phase",
        "secs",
        "relay CPU %",
        "control CPU %",
        "netbench CPU %",
        "relay PSS MiB (peak)",
        "control PSS MiB (peak)",
    ]);
    for phase in phases {
        let u = &phase.usage;
        table.row(vec![
            phase.name.to_string(),
            format!("{:.1}", u.secs),
            format!("{:.1}", u.relay_cpu_percent),
            format!("{:.1}", u.control_cpu_percent),
            format!("{:.1}", u.netbench_cpu_percent),
            format!(
                "{:.1} ({:.1})",
                u.relay_pss_kib as f64 / 1024.0,
                u.relay_pss_peak_kib as f64 / 1024.0
            ),
            format!(
                "{:.1} ({:.1})",
                u.control_pss_kib as f64 / 1024.0,
                u.control_pss_peak_kib as f64 / 1024.0
            ),
        ]);
    }
    table.print();
    if let Some(api) = phases
        .iter()
        .flat_map(|p| &p.series)
        .find(|s| s.name.starts_with("agent metadata"))
    {
        println!(
            "agent API latency ({} agents, one report of two readings every {} s each): p90 {} ms, p95 {} ms; reference ({REFERENCE_AGENTS} agents, far larger machines): p90 {REFERENCE_P90_MS} ms, p95 {REFERENCE_P95_MS} ms",
            settings.agents,
            settings.metadata_interval_secs,
            ms(api.p90_ms),
            ms(api.p95_ms)
        );
    }
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "pass criteria: no interrupted session: {}; no process restart: {}; no internal error: {}; (ours) no failed operation: {} => {}",
        yes(verdict.no_interrupted_session),
        yes(verdict.no_process_restart),
        yes(verdict.no_internal_error),
        yes(verdict.no_failed_operation),
        if verdict.passed { "PASSED" } else { "FAILED" }
    );
    for note in &verdict.notes {
        println!("  {note}");
    }
    for phase in phases {
        for s in &phase.series {
            for e in &s.error_examples {
                println!("  {} / {}: {e}", phase.name, s.name);
            }
        }
    }
}

/// The control plane's cost of the agents' telemetry reports.
pub fn write_cost(settings: &Settings, cost: &super::WriteCost) {
    println!(
        "telemetry write cost on the control plane ({} agents, a report every {} s each): {:.0} reports/s, {:.0} rows/s upserted; {:.2} ms in the store per report (store busy {:.1} % of wall time), {:.2} ms per request in all",
        settings.agents,
        settings.metadata_interval_secs,
        cost.reports_per_sec,
        cost.rows_per_sec,
        cost.store_ms_mean,
        cost.store_busy_percent,
        cost.request_ms_mean
    );
}
