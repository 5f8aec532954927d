//! Latency reports: every [`REPORT_EVERY`] the relay sends the control plane the
//! round-trip time of each live mesh link (the RTT matrix) and of each connected agent,
//! as QUIC measures them on those connections anyway. No probe traffic is added.
//!
//! Best effort: the task only reads connection statistics, posts in batches with a
//! timeout, and drops a round that fails; relay traffic never waits for it. It runs
//! in the relay's background set and stops with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::{Measurement, MeasurementsRequest, MeasurementsResponse};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// How often the relay reports.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The control plane's batch limit.
const BATCH: usize = 500;
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the previous round saw of one connection, to turn counters into rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Seen {
    rtt_us: u64,
    sent_packets: u64,
    lost_packets: u64,
}

/// One connection's sample from its statistics now and what the last round saw.
fn sample(from: &str, to: String, now: Seen, before: Option<Seen>, at_ms: u64) -> Measurement {
    let (jitter_us, loss) = match before {
        // Counters only grow on one connection; a smaller value is a new connection.
        Some(b) if now.sent_packets >= b.sent_packets && now.lost_packets >= b.lost_packets => {
            let sent = now.sent_packets - b.sent_packets;
            let lost = now.lost_packets - b.lost_packets;
            let loss = if sent == 0 {
                0.0
            } else {
                (lost as f32 / sent as f32).min(1.0)
            };
            (now.rtt_us.abs_diff(b.rtt_us), loss)
        }
        _ => (0, 0.0),
    };
    Measurement {
        from: from.to_string(),
        to,
        rtt_us: now.rtt_us,
        jitter_us,
        loss,
        at_ms: Some(at_ms),
    }
}

fn seen(conn: &quinn::Connection) -> Seen {
    let stats = conn.stats();
    Seen {
        rtt_us: u64::try_from(stats.path.rtt.as_micros()).unwrap_or(u64::MAX),
        sent_packets: stats.path.sent_packets,
        lost_packets: stats.path.lost_packets,
    }
}

/// Reports until `stop`.
pub(crate) async fn report_loop(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let me = format!("relay:{}", shared.name);
    let mut last: HashMap<String, Seen> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let at_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0);
        let mut current: HashMap<String, Seen> = HashMap::new();
        let mut samples = Vec::new();
        let peers = shared
            .mesh
            .live()
            .into_iter()
            .map(|(name, conn)| (format!("relay:{name}"), conn));
        let agents = shared
            .agents
            .links()
            .into_iter()
            .map(|(label, conn)| (format!("agent:{label}"), conn));
        for (to, conn) in peers.chain(agents) {
            let now = seen(&conn);
            samples.push(sample(&me, to.clone(), now, last.get(&to).copied(), at_ms));
            current.insert(to, now);
        }
        last = current;
        for batch in samples.chunks(BATCH) {
            let request = MeasurementsRequest {
                samples: batch.to_vec(),
            };
            let sent = tokio::time::timeout(
                POST_TIMEOUT,
                shared.view.control().post::<_, MeasurementsResponse>(
                    "/api/v1/measurements",
                    Some(shared.view.token()),
                    &request,
                ),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "latency report refused or lost");
                    break;
                }
                Err(_) => {
                    tracing::debug!("latency report timed out");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_and_loss_come_from_the_change_since_last_round() {
        let before = Seen {
            rtt_us: 1000,
            sent_packets: 100,
            lost_packets: 1,
        };
        let now = Seen {
            rtt_us: 1300,
            sent_packets: 200,
            lost_packets: 6,
        };
        let s = sample("relay:a", "relay:b".into(), now, Some(before), 7);
        assert_eq!((s.rtt_us, s.jitter_us, s.at_ms), (1300, 300, Some(7)));
        assert!((s.loss - 0.05).abs() < 1e-6);
        // A first sight, or a new connection (counters went back): no rates yet.
        let first = sample("relay:a", "relay:b".into(), now, None, 7);
        assert_eq!((first.jitter_us, first.loss), (0, 0.0));
        let fresh = Seen {
            rtt_us: 900,
            sent_packets: 3,
            lost_packets: 0,
        };
        let reset = sample("relay:a", "relay:b".into(), fresh, Some(now), 7);
        assert_eq!((reset.jitter_us, reset.loss), (0, 0.0));
    }
}
