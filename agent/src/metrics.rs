//! The agent's metrics (Prometheus, on the admin port of `ferry agent --admin-listen`).
//!
//! Labels are small fixed sets: `target` (port, ssh, terminal), `reason` (an error
//! code's `as_str`), `direction` (up: into the workspace, down: back to the client)
//! and `relay` (a relay's name; an agent holds two or three). No workspace label: one
//! agent serves one workspace, and the scrape target already says which.

use std::time::Duration;

use ferry_proto::{ErrorCode, Target};
use metrics::{Gauge, Unit};

pub const RELAY_CONNECTIONS: &str = "ferry_agent_relay_connections";
pub const RELAY_CONNECT_DURATION: &str = "ferry_agent_relay_connect_duration_seconds";
pub const RELAY_CONNECT_FAILURES: &str = "ferry_agent_relay_connect_failures_total";
pub const RELAY_RTT: &str = "ferry_agent_relay_rtt_seconds";
pub const STREAMS: &str = "ferry_agent_streams_total";
pub const STREAMS_ACTIVE: &str = "ferry_agent_streams_active";
pub const DIAL_DURATION: &str = "ferry_agent_dial_duration_seconds";
pub const REFUSALS: &str = "ferry_agent_stream_refusals_total";
pub const BYTES: &str = "ferry_agent_bytes_total";
pub const TELEMETRY_REPORTS: &str = "ferry_agent_telemetry_reports_total";

const TARGETS: [&str; 3] = ["port", "ssh", "terminal"];

/// Registers descriptions and the series that read zero before anything happens;
/// call once the recorder is installed (metrics recorded before it are lost).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    ferry_transport::congestion::describe_metrics();
    describe_gauge!(
        RELAY_CONNECTIONS,
        Unit::Count,
        "Relay connections up (owner and standby)."
    );
    describe_histogram!(
        RELAY_CONNECT_DURATION,
        Unit::Seconds,
        "Time to connect to a relay: QUIC handshake and hello."
    );
    describe_counter!(
        RELAY_CONNECT_FAILURES,
        Unit::Count,
        "Failed attempts to connect to a relay."
    );
    describe_gauge!(
        RELAY_RTT,
        Unit::Seconds,
        "Smoothed QUIC RTT to each connected relay."
    );
    describe_counter!(
        STREAMS,
        Unit::Count,
        "Streams relays opened to this agent (refused ones included), by target (port, ssh, terminal)."
    );
    describe_gauge!(STREAMS_ACTIVE, Unit::Count, "Streams open now, by target.");
    describe_histogram!(
        DIAL_DURATION,
        Unit::Seconds,
        "Time to connect to the target inside the workspace, by target."
    );
    describe_counter!(
        REFUSALS,
        Unit::Count,
        "Streams the agent refused, by error code."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes spliced, by direction (up: into the workspace, down: back out)."
    );
    // Registering, not resetting: adding zero leaves what another agent in this
    // process (tests, benchmarks) recorded.
    metrics::gauge!(RELAY_CONNECTIONS).increment(0.0);
    metrics::counter!(RELAY_CONNECT_FAILURES).increment(0);
    for target in TARGETS {
        metrics::counter!(STREAMS, "target" => target).increment(0);
        metrics::gauge!(STREAMS_ACTIVE, "target" => target).increment(0.0);
    }
    for direction in ["up", "down"] {
        metrics::counter!(BYTES, "direction" => direction).increment(0);
    }
}

fn target_label(target: &Target) -> &'static str {
    match target {
        Target::Port(_) => "port",
        Target::Ssh => "ssh",
        Target::Terminal { .. } => "terminal",
        Target::Trace => "trace",
    }
}

pub(crate) fn relay_connected_in(took: Duration) {
    metrics::histogram!(RELAY_CONNECT_DURATION).record(took.as_secs_f64());
}

/// A relay connection is up until the guard drops.
pub(crate) fn relay_up() -> GaugeGuard {
    let up = metrics::gauge!(RELAY_CONNECTIONS);
    up.increment(1.0);
    GaugeGuard(up)
}

pub(crate) fn relay_connect_failed() {
    metrics::counter!(RELAY_CONNECT_FAILURES).increment(1);
}

pub(crate) fn relay_rtt(relay: &str, rtt: Duration) {
    metrics::gauge!(RELAY_RTT, "relay" => relay.to_string()).set(rtt.as_secs_f64());
}

/// A stream to `target` is being served until the guard drops.
pub(crate) fn stream(target: &Target) -> GaugeGuard {
    let label = target_label(target);
    metrics::counter!(STREAMS, "target" => label).increment(1);
    let active = metrics::gauge!(STREAMS_ACTIVE, "target" => label);
    active.increment(1.0);
    GaugeGuard(active)
}

pub(crate) fn dialed(target: &Target, took: Duration) {
    metrics::histogram!(DIAL_DURATION, "target" => target_label(target)).record(took.as_secs_f64());
}

pub(crate) fn refused(code: ErrorCode) {
    metrics::counter!(REFUSALS, "reason" => code.as_str()).increment(1);
}

pub(crate) fn spliced(up: u64, down: u64) {
    metrics::counter!(BYTES, "direction" => "up").increment(up);
    metrics::counter!(BYTES, "direction" => "down").increment(down);
}

/// Decrements a gauge on drop.
pub(crate) struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Registers the telemetry reports' description and zero series (reporting is on).
pub fn describe_telemetry() {
    metrics::describe_counter!(
        TELEMETRY_REPORTS,
        Unit::Count,
        "Telemetry reports sent to the control plane, by result (ok, error)."
    );
    for result in ["ok", "error"] {
        metrics::counter!(TELEMETRY_REPORTS, "result" => result).increment(0);
    }
}

/// One telemetry report sent (`ok`) or failed.
pub fn telemetry_report(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(TELEMETRY_REPORTS, "result" => result).increment(1);
}
