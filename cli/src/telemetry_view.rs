//! How `ferry workspace show` prints a workspace's telemetry: pure formatting of the
//! API's document, given the time now, so it is tested without a control plane.

use std::fmt::Write as _;

use ferry_proto::api::{WorkspaceInfo, WorkspaceTelemetryResponse};

/// `1.5 GiB`, `300 MiB`, `12 KiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// `45 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return String::new();
    }
    format!(" ({:.1} %)", part as f64 * 100.0 / whole as f64)
}

/// The whole text of `ferry workspace show`; `route` says where its agent is
/// connected; `now_ms` is the time now, for ages.
pub fn render(
    ws: &WorkspaceInfo,
    route: &str,
    telemetry: &WorkspaceTelemetryResponse,
    now_ms: i64,
) -> String {
    let mut out = String::new();
    let ago = |at_ms: i64| duration(u64::try_from((now_ms - at_ms).max(0) / 1000).unwrap_or(0));
    let _ = writeln!(out, "workspace  {}", ws.label);
    let _ = writeln!(out, "owner      {}", ws.owner);
    let _ = writeln!(out, "agent      {route}");
    match &telemetry.latest {
        None => {
            let _ = writeln!(
                out,
                "\nresources  no readings yet (the agent reports every 10 s once connected)"
            );
        }
        Some(p) => {
            let s = &p.stats;
            let _ = writeln!(
                out,
                "\nresources  {} ago, from the {}",
                ago(p.at_ms),
                match s.source {
                    ferry_proto::api::StatsSource::Cgroup => "container's cgroup",
                    ferry_proto::api::StatsSource::Host => "host's /proc",
                }
            );
            let _ = writeln!(out, "  cpu      {:.1} %", s.cpu_percent);
            let _ = writeln!(
                out,
                "  memory   {} of {}{}",
                bytes(s.mem_used_bytes),
                bytes(s.mem_limit_bytes),
                percent(s.mem_used_bytes, s.mem_limit_bytes)
            );
            let _ = writeln!(
                out,
                "  disk     {} of {}{}",
                bytes(s.disk_used_bytes),
                bytes(s.disk_total_bytes),
                percent(s.disk_used_bytes, s.disk_total_bytes)
            );
            let _ = writeln!(
                out,
                "  load     {:.2} {:.2} {:.2}",
                s.load[0], s.load[1], s.load[2]
            );
            let _ = writeln!(out, "  uptime   {}", duration(s.uptime_secs));
            // A sparkline of CPU over the history: the trend at a glance.
            if telemetry.history.len() > 1 {
                const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
                let line: String = telemetry
                    .history
                    .iter()
                    .rev()
                    .take(60)
                    .rev()
                    .map(|p| {
                        let i = (p.stats.cpu_percent / 100.0 * 7.0).round().clamp(0.0, 7.0);
                        BARS[i as usize]
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  cpu over the last {}: {line}",
                    ago(telemetry.history[0].at_ms)
                );
            }
        }
    }
    if telemetry.items.is_empty() {
        let _ = writeln!(out, "\nmetadata   none reported");
    } else {
        let _ = writeln!(out, "\nmetadata");
        let label = |i: &ferry_proto::api::MetadataReading| -> String {
            match &i.name {
                Some(name) => format!("{name} ({})", i.key),
                None => i.key.clone(),
            }
        };
        let width = telemetry
            .items
            .iter()
            .map(|i| label(i).chars().count())
            .max()
            .unwrap_or(0);
        for i in &telemetry.items {
            let value = match &i.error {
                Some(e) => format!("error: {e}"),
                None => i.value.replace('\n', " ⏎ "),
            };
            let _ = writeln!(
                out,
                "  {:width$}  {value}  ({} ago)",
                label(i),
                ago(i.updated_at.saturating_mul(1000))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::api::*;

    #[test]
    fn units_read_like_a_person_would_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(3 * 3600 + 300), "3 h 5 min");
        assert_eq!(duration(2 * 86400 + 3600), "2 d 1 h");
    }

    #[test]
    fn show_prints_readings_history_and_items_with_errors() {
        let ws = WorkspaceInfo {
            label: "demo--alice".into(),
            name: "demo".into(),
            owner: "alice".into(),
            created_at: 0,
        };
        let point = |at_ms, cpu| StatsPoint {
            at_ms,
            stats: WorkspaceStats {
                cpu_percent: cpu,
                mem_used_bytes: 512 << 20,
                mem_limit_bytes: 2 << 30,
                disk_used_bytes: 5 << 30,
                disk_total_bytes: 20 << 30,
                load: [0.5, 0.25, 0.75],
                uptime_secs: 7200,
                source: StatsSource::Cgroup,
            },
        };
        let t = WorkspaceTelemetryResponse {
            workspace: ws.label.clone(),
            latest: Some(point(100_000, 50.0)),
            history: vec![point(40_000, 0.0), point(100_000, 100.0)],
            items: vec![
                MetadataReading {
                    key: "branch".into(),
                    value: "main".into(),
                    updated_at: 95,
                    name: Some("Git branch".into()),
                    error: None,
                },
                MetadataReading {
                    key: "tests".into(),
                    value: String::new(),
                    updated_at: 99,
                    name: None,
                    error: Some("the command did not finish within 5.0 s".into()),
                },
            ],
        };
        let text = render(&ws, "relay eu-1 (region eu)", &t, 104_000);
        for want in [
            "workspace  demo--alice",
            "agent      relay eu-1 (region eu)",
            "resources  4 s ago, from the container's cgroup",
            "  cpu      50.0 %",
            "  memory   512 MiB of 2.0 GiB (25.0 %)",
            "  disk     5.0 GiB of 20 GiB (25.0 %)",
            "  load     0.50 0.25 0.75",
            "  uptime   2 h 0 min",
            "cpu over the last 1 min: ▁█",
            "  Git branch (branch)  main  (9 s ago)",
            "  tests                error: the command did not finish within 5.0 s  (5 s ago)",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let empty = WorkspaceTelemetryResponse::default();
        let text = render(&ws, "not connected", &empty, 0);
        assert!(text.contains("no readings yet"), "{text}");
        assert!(text.contains("metadata   none reported"), "{text}");
    }
}
