//! Congestion control that keeps queues short.
//!
//! quinn's CUBIC reacts to loss only. On a path whose bottleneck is a busy receiver
//! (a relay decrypting and re-encrypting at line rate) the UDP receive buffer is deep,
//! nothing is dropped, and CUBIC's window grows until it fills that buffer. An SSH
//! keystroke sharing the connection with a download then waits behind ~20 ms of bulk
//! data at every hop, although the stream scheduler would send it first.
//!
//! [`QueueCeiling`] watches the smallest round-trip sample in each round. When that
//! minimum stands above the path's base RTT by more than a small target, there is a
//! standing queue of our own making, and it lowers a ceiling on the window in
//! proportion; while the queue stays under the target and the sender is window-bound,
//! the ceiling rises again. CUBIC still runs underneath and handles loss: the window
//! quinn uses is the smaller of the two. The minimum of a round, not the mean, is the
//! signal, so delayed ACKs and scheduling jitter on a busy host do not look like a
//! queue.
//!
//! Delay alone cannot tell a queue from jitter. On a long path through networks nobody
//! here controls (Wi-Fi, cellular), chasing jitter collapsed a download (85 → 8
//! Mbit/s over an emulated 30 ms link with ±10 ms each way), so by default the ceiling
//! acts only on paths whose base RTT is at most [`QueueConfig::max_base`] (3 ms): one
//! host, one datacenter, one region, where a busy relay's socket buffer is the queue.
//! Longer paths keep plain CUBIC unless `FERRY_QUEUE_CEILING=all`.
//!
//! The price is the one every delay-based controller pays: beside loss-based flows that
//! fill a shared bottleneck buffer, this one backs off first. The ceiling never drops
//! below [`QueueConfig::floor_packets`] packets, and `FERRY_QUEUE_CEILING=off`
//! ([`crate::Limits::queue_ceiling`] of `None`) leaves plain CUBIC everywhere.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{Controller, ControllerFactory, Cubic, CubicConfig};
use quinn_proto::RttEstimator;

/// Counter of ceiling cuts, one per round that found a standing queue of our own
/// making: how often bulk traffic would otherwise have queued interactive traffic.
pub const CUTS: &str = "ferry_quic_queue_ceiling_cuts_total";

/// Describes this module's metrics; processes that export metrics call it once.
pub fn describe_metrics() {
    metrics::describe_counter!(
        CUTS,
        metrics::Unit::Count,
        "Times a QUIC sender found a standing queue of its own making and lowered its window (transport/src/congestion.rs)."
    );
}

/// Tuning of the queue ceiling.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The standing queue allowed before the ceiling comes down is a quarter of the
    /// base RTT, within these bounds: a long path needs some queue to keep its
    /// bottleneck busy through jitter, a short one needs almost none.
    pub min_target: Duration,
    pub max_target: Duration,
    /// Paths with a longer base RTT keep plain CUBIC. They cross networks nobody here
    /// controls, whose jitter (Wi-Fi, cellular) delay alone cannot tell from a queue:
    /// over an emulated 30 ms link with ±10 ms of jitter each way, chasing it brought
    /// a download from 85 to 8 Mbit/s. Short paths (one host, one datacenter, one
    /// region) are where a busy relay's socket buffer queues, and where this is safe.
    /// `FERRY_QUEUE_CEILING=all` lifts the limit for links known to be steady.
    pub max_base: Duration,
    /// The base RTT is the smallest sample over this window, so that a path that got
    /// longer (a re-route) is learned within this long.
    pub base_window: Duration,
    /// The ceiling never goes below this many packets.
    pub floor_packets: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            // Measured with `ferry-netbench hol` on loopback: 1 ms left the echo's p50
            // beside a download at 7 ms, 100 µs brings it to about 1.2 ms (14 ms with
            // plain CUBIC). The price, on a 2-core host that every process of the path
            // shares: scheduling delay reads as queue, the window sits near the floor,
            // and one stream runs about a tenth slower. 300 µs, or a floor of 128
            // packets, gave back most of that for twice the echo's wait. BENCHMARKS.md
            // ("The queue ceiling's price") has the numbers.
            min_target: Duration::from_micros(100),
            max_target: Duration::from_millis(5),
            max_base: Duration::from_millis(3),
            base_window: Duration::from_secs(10),
            floor_packets: 32,
        }
    }
}

impl QueueConfig {
    /// The default (short paths only), unless `FERRY_QUEUE_CEILING` says `off` (quinn's
    /// plain CUBIC everywhere: for operators whose bulk traffic competes with
    /// loss-based flows, and for comparing the two in benchmarks) or `all` (long paths
    /// too, for links known to be free of jitter).
    pub fn from_env() -> Option<QueueConfig> {
        match std::env::var("FERRY_QUEUE_CEILING").as_deref() {
            Ok("off") => None,
            Ok("all") => Some(QueueConfig {
                max_base: Duration::MAX,
                ..QueueConfig::default()
            }),
            _ => Some(QueueConfig::default()),
        }
    }

    fn target(&self, base: Duration) -> Duration {
        (base / 4).clamp(self.min_target, self.max_target)
    }
}

/// Builds a [`QueueCeiling`] over quinn's CUBIC for every connection.
#[derive(Debug, Clone)]
pub struct QueueCeilingFactory {
    config: QueueConfig,
}

impl QueueCeilingFactory {
    pub fn new(config: QueueConfig) -> Arc<QueueCeilingFactory> {
        Arc::new(QueueCeilingFactory { config })
    }
}

impl ControllerFactory for QueueCeilingFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let cubic = Cubic::new(Arc::new(CubicConfig::default()), now, current_mtu);
        Box::new(QueueCeiling {
            inner: Box::new(cubic),
            ceiling: Ceiling::new(self.config.clone(), current_mtu, now),
        })
    }
}

/// CUBIC with a delay-driven ceiling on its window; see the module documentation.
pub struct QueueCeiling {
    inner: Box<dyn Controller>,
    ceiling: Ceiling,
}

impl Controller for QueueCeiling {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.ceiling.on_ack(now, sent);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.ceiling
            .on_end_acks(now, in_flight, !app_limited, self.inner.window());
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
        self.ceiling.mtu = u64::from(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.ceiling.value)
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(QueueCeiling {
            inner: self.inner.clone_box(),
            ceiling: self.ceiling.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The ceiling's state machine, free of quinn types so that tests can drive it.
#[derive(Debug, Clone)]
pub struct Ceiling {
    config: QueueConfig,
    mtu: u64,
    /// Current ceiling in bytes; `u64::MAX` while it does not bind.
    value: u64,
    base: WindowedMin,
    round: Round,
    /// After a cut, the next round still sees the queue that the cut is draining; it
    /// only observes, or the ceiling would be cut twice for one queue.
    skip_next_round: bool,
}

/// One round trip: from its start until a packet sent after that start is acknowledged.
#[derive(Debug, Clone)]
struct Round {
    started: Instant,
    complete: bool,
    min_sample: Option<Duration>,
    max_in_flight: u64,
    /// Whether any batch of ACKs in this round found the sender window-bound.
    window_bound: bool,
}

impl Round {
    fn starting(now: Instant) -> Round {
        Round {
            started: now,
            complete: false,
            min_sample: None,
            max_in_flight: 0,
            window_bound: false,
        }
    }
}

impl Ceiling {
    pub fn new(config: QueueConfig, mtu: u16, now: Instant) -> Ceiling {
        Ceiling {
            base: WindowedMin::new(config.base_window),
            config,
            mtu: u64::from(mtu),
            value: u64::MAX,
            round: Round::starting(now),
            skip_next_round: false,
        }
    }

    /// The ceiling in bytes, `u64::MAX` when it does not bind.
    pub fn value(&self) -> u64 {
        self.value
    }

    fn floor(&self) -> u64 {
        self.config.floor_packets * self.mtu
    }

    /// A packet sent at `sent` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant) {
        let sample = now.saturating_duration_since(sent);
        if sample.is_zero() {
            // quinn reads the clock once per batch of work; a packet sent and
            // acknowledged within one batch carries no information about the path.
            return;
        }
        self.base.update(now, sample);
        let round = &mut self.round;
        round.min_sample = Some(round.min_sample.map_or(sample, |m| m.min(sample)));
        if sent >= round.started {
            round.complete = true;
        }
    }

    /// The end of a batch of ACKs. `window_bound` is quinn's `!app_limited`: the sender
    /// had data and was held back by the window. `inner_window` is CUBIC's.
    pub fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        window_bound: bool,
        inner_window: u64,
    ) {
        let round = &mut self.round;
        round.max_in_flight = round.max_in_flight.max(in_flight);
        round.window_bound |= window_bound;
        if !round.complete {
            return;
        }
        let round = std::mem::replace(&mut self.round, Round::starting(now));
        let skip = std::mem::take(&mut self.skip_next_round);
        tracing::trace!(
            skip,
            window_bound = round.window_bound,
            min_sample = ?round.min_sample,
            base = ?self.base.get(),
            in_flight = round.max_in_flight,
            inner_window,
            ceiling = self.value,
            "queue ceiling round"
        );
        if skip || !round.window_bound {
            return;
        }
        let (Some(base), Some(min_sample)) = (self.base.get(), round.min_sample) else {
            return;
        };
        if base > self.config.max_base {
            self.value = u64::MAX;
            return;
        }
        let standing = min_sample.saturating_sub(base);
        let target = self.config.target(base);

        if standing > target {
            // The window that keeps `target` queued at the rate the path delivers now:
            // in flight / (base + standing) is that rate.
            let ratio = (base + target).as_secs_f64() / (base + standing).as_secs_f64();
            let reference = self
                .value
                .min(inner_window)
                .min(round.max_in_flight.max(self.floor()));
            self.value = ((reference as f64 * ratio.max(0.2)) as u64).max(self.floor());
            self.skip_next_round = true;
            metrics::counter!(CUTS).increment(1);
        } else if self.value != u64::MAX {
            // An eighth per round: doubling (as slow start would) overshoots into a
            // queue every few rounds, which the echo benchmark's p50 shows at once.
            self.value = self.value.saturating_add((self.value / 8).max(self.mtu));
            if self.value >= inner_window {
                self.value = u64::MAX;
            }
        }
    }
}

/// The minimum over a sliding window, kept in two halves: cheap, and a stale minimum
/// ages out within one and a half windows.
#[derive(Debug, Clone)]
struct WindowedMin {
    half: Duration,
    current: Option<(Instant, Duration)>,
    previous: Option<Duration>,
}

impl WindowedMin {
    fn new(window: Duration) -> WindowedMin {
        WindowedMin {
            half: window / 2,
            current: None,
            previous: None,
        }
    }

    fn update(&mut self, now: Instant, sample: Duration) {
        match &mut self.current {
            Some((started, min)) if now.saturating_duration_since(*started) < self.half => {
                *min = (*min).min(sample);
            }
            current => {
                self.previous = current.map(|(_, min)| min);
                *current = Some((now, sample));
            }
        }
    }

    fn get(&self) -> Option<Duration> {
        match (self.current.map(|(_, m)| m), self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const CUBIC_WINDOW: u64 = 64 * 1024 * 1024;

    /// Drives a ceiling round by round: one packet sent at the start of each round is
    /// acknowledged `rtt` later, and the batch of ACKs ends there.
    struct Path {
        ceiling: Ceiling,
        now: Instant,
    }

    impl Path {
        fn new() -> Path {
            Path::with(QueueConfig::default())
        }

        fn with(config: QueueConfig) -> Path {
            let now = Instant::now();
            Path {
                ceiling: Ceiling::new(config, MTU, now),
                now,
            }
        }

        fn round(&mut self, rtt: Duration, in_flight: u64, window_bound: bool) -> u64 {
            let sent = self.now;
            self.now += rtt;
            self.ceiling.on_ack(self.now, sent);
            self.ceiling
                .on_end_acks(self.now, in_flight, window_bound, CUBIC_WINDOW);
            self.ceiling.value()
        }
    }

    const BASE: Duration = Duration::from_millis(2);

    #[test]
    fn no_queue_leaves_cubic_alone() {
        let mut path = Path::new();
        for _ in 0..100 {
            assert_eq!(path.round(BASE, 4_000_000, true), u64::MAX);
        }
    }

    #[test]
    fn a_standing_queue_brings_the_window_down_in_proportion() {
        let mut path = Path::new();
        for _ in 0..10 {
            path.round(BASE, 4_000_000, true);
        }
        // 8 ms of queue above a 2 ms base: the target is 500 µs (base / 4), so the
        // window that keeps only the target queued is (2 + 0.5) / (2 + 8) of it.
        let cut = path.round(BASE + Duration::from_millis(8), 4_000_000, true);
        assert_eq!(cut, 1_000_000);
        // The next round still sees the queue being drained and must not cut again.
        assert_eq!(
            path.round(BASE + Duration::from_millis(4), 1_000_000, true),
            cut
        );
        // A queue under the target lets it grow again, by an eighth per round.
        assert_eq!(path.round(BASE, 1_000_000, true), cut + cut / 8);
    }

    #[test]
    fn a_cut_never_goes_below_a_fifth_or_the_floor() {
        let mut path = Path::new();
        path.round(BASE, 4_000_000, true);
        path.round(BASE, 4_000_000, true);
        let cut = path.round(Duration::from_millis(500), 4_000_000, true);
        assert_eq!(cut, 800_000, "one round cuts to a fifth at most");
        let mut value = cut;
        // Eight rounds of 500 ms: within the 10 s over which the 2 ms base is kept.
        for _ in 0..8 {
            value = path.round(Duration::from_millis(500), value, true);
        }
        assert_eq!(value, 32 * u64::from(MTU));
    }

    #[test]
    fn the_ceiling_is_lifted_once_it_reaches_cubics_window() {
        let mut path = Path::new();
        path.round(BASE, 4_000_000, true);
        let mut value = path.round(BASE * 10, 4_000_000, true);
        assert!(value < u64::MAX);
        for _ in 0..200 {
            value = path.round(BASE, value.min(CUBIC_WINDOW), true);
            if value == u64::MAX {
                return;
            }
        }
        panic!("the ceiling stayed at {value}");
    }

    #[test]
    fn an_application_limited_sender_is_not_cut() {
        // Interactive traffic: few packets, and ACKs held back by the peer's ACK delay
        // make the RTT look long. That is not a queue of our making.
        let mut path = Path::new();
        path.round(BASE, 10_000, false);
        for _ in 0..20 {
            assert_eq!(
                path.round(BASE + Duration::from_millis(25), 2_000, false),
                u64::MAX
            );
        }
    }

    #[test]
    fn a_longer_path_becomes_the_new_base() {
        let mut path = Path::with(QueueConfig {
            max_base: Duration::MAX,
            ..QueueConfig::default()
        });
        path.round(BASE, 4_000_000, true);
        // The route changed: every sample is now 30 ms. At first that reads as a queue
        // and the ceiling comes down; once the old minimum has aged out (10 s window)
        // it is the base, there is no queue, and the ceiling lifts again.
        let longer = Duration::from_millis(30);
        let mut value = path.round(longer, 4_000_000, true);
        assert!(value < 4_000_000);
        for _ in 0..1000 {
            value = path.round(longer, value.min(4_000_000), true);
        }
        assert_eq!(value, u64::MAX);
    }

    #[test]
    fn a_long_path_keeps_plain_cubic() {
        // 30 ms of base and delay that moves by 20: on a path like that, jitter and a
        // queue look alike, so the ceiling stays out of the way.
        let mut path = Path::new();
        path.round(Duration::from_millis(30), 4_000_000, true);
        for _ in 0..50 {
            let rtt = Duration::from_millis(50);
            assert_eq!(path.round(rtt, 4_000_000, true), u64::MAX);
        }
        // The same path, with the limit lifted (`FERRY_QUEUE_CEILING=all`), is cut.
        let mut path = Path::with(QueueConfig {
            max_base: Duration::MAX,
            ..QueueConfig::default()
        });
        path.round(Duration::from_millis(30), 4_000_000, true);
        assert!(path.round(Duration::from_millis(50), 4_000_000, true) < 4_000_000);
    }

    #[test]
    fn a_round_lasts_until_a_packet_sent_inside_it_is_acknowledged() {
        let mut path = Path::new();
        path.round(BASE, 4_000_000, true);
        let started = path.now;
        // ACKs for packets sent before this round (long queued ones) do not end it.
        path.now += Duration::from_millis(20);
        path.ceiling
            .on_ack(path.now, started - Duration::from_millis(1));
        path.ceiling
            .on_end_acks(path.now, 4_000_000, true, CUBIC_WINDOW);
        assert_eq!(path.ceiling.value(), u64::MAX);
        // The first ACK of a packet sent within it does, and the round's smallest
        // sample (the 21 ms one) is what counts.
        path.ceiling.on_ack(path.now, started);
        path.ceiling
            .on_end_acks(path.now, 4_000_000, true, CUBIC_WINDOW);
        assert!(path.ceiling.value() < 4_000_000);
    }
}
