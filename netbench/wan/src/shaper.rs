//! When a packet or chunk that enters one direction of a link comes out, free of I/O:
//! serialisation at the link's rate, half the RTT, jitter, and (for datagrams) loss.

use std::time::{Duration, Instant};

use crate::LinkSpec;

/// One direction of a link.
#[derive(Debug)]
pub struct Shaper {
    one_way: Duration,
    /// Each direction varies by up to ± half the link's RTT jitter.
    jitter: Duration,
    loss: f64,
    rate: Option<u64>,
    /// Datagrams larger than this are dropped (the link's MTU); streams have none.
    max_datagram: Option<usize>,
    /// When the link's transmitter is free again (rate limiting).
    next_free: Option<Instant>,
    /// The latest delivery time handed out: nothing overtakes it.
    last_delivery: Option<Instant>,
    rng: fastrand::Rng,
}

impl Shaper {
    /// A shaper for datagrams (loss applies).
    ///
    /// Jitter never reorders, datagrams included. Real jitter is mostly queueing,
    /// which keeps a flow in order; independent per-packet delays would reorder a
    /// fast sender's packets by hundreds, which QUIC (like TCP) must read as loss, and
    /// a bulk transfer over a link with 2 ms of jitter then crawled at a few Mbit/s.
    pub fn datagrams(spec: LinkSpec, seed: u64) -> Shaper {
        Shaper {
            // IPv4 and UDP headers: every location of a topology is an IPv4 address.
            max_datagram: spec.mtu.map(|mtu| usize::from(mtu).saturating_sub(28)),
            ..Shaper::new(spec, seed)
        }
    }

    /// A shaper for a byte stream (no loss: TCP would retransmit).
    pub fn stream(spec: LinkSpec, seed: u64) -> Shaper {
        Shaper::new(LinkSpec { loss: 0.0, ..spec }, seed)
    }

    fn new(spec: LinkSpec, seed: u64) -> Shaper {
        Shaper {
            one_way: spec.rtt / 2,
            jitter: spec.jitter / 2,
            loss: spec.loss,
            rate: spec.rate,
            max_datagram: None,
            next_free: None,
            last_delivery: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// When `len` bytes entering at `now` come out, or `None` when they are lost.
    pub fn schedule(&mut self, now: Instant, len: usize) -> Option<Instant> {
        if self.max_datagram.is_some_and(|max| len > max) {
            return None;
        }
        if self.loss > 0.0 && self.rng.f64() < self.loss {
            return None;
        }
        let mut departed = now;
        if let Some(rate) = self.rate {
            let start = self.next_free.map_or(now, |free| free.max(now));
            let serialisation = Duration::from_secs_f64(len as f64 / rate as f64);
            departed = start + serialisation;
            self.next_free = Some(departed);
        }
        let mut delay = self.one_way;
        if !self.jitter.is_zero() {
            let spread = self.jitter.as_nanos() as u64;
            let offset = self.rng.u64(0..=2 * spread);
            delay = (delay + Duration::from_nanos(offset)).saturating_sub(self.jitter);
        }
        let mut delivery = departed + delay;
        if let Some(last) = self.last_delivery {
            delivery = delivery.max(last);
        }
        self.last_delivery = Some(delivery);
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rtt: u64, jitter: u64) -> LinkSpec {
        LinkSpec {
            rtt: Duration::from_millis(rtt),
            jitter: Duration::from_millis(jitter),
            ..LinkSpec::default()
        }
    }

    #[test]
    fn each_direction_takes_half_the_rtt() {
        let now = Instant::now();
        let mut s = Shaper::datagrams(spec(60, 0), 1);
        assert_eq!(s.schedule(now, 100), Some(now + Duration::from_millis(30)));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let now = Instant::now();
        let mut s = Shaper::datagrams(spec(60, 20), 7);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| s.schedule(now, 100).unwrap() - now)
            .collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(20) && *d <= Duration::from_millis(40)));
        assert!(delays.iter().min() < delays.iter().max());
    }

    #[test]
    fn jitter_reorders_neither_streams_nor_datagrams() {
        let start = Instant::now();
        for mut s in [
            Shaper::stream(spec(60, 40), 3),
            Shaper::datagrams(spec(60, 40), 3),
        ] {
            let mut last = start;
            for i in 0..1000u64 {
                let at = s
                    .schedule(start + Duration::from_micros(i * 10), 1000)
                    .unwrap();
                assert!(at >= last, "packet {i} would overtake the one before");
                last = at;
            }
        }
    }

    #[test]
    fn loss_drops_about_its_fraction_of_datagrams_but_never_stream_bytes() {
        let now = Instant::now();
        let lossy = LinkSpec {
            loss: 0.25,
            ..spec(10, 0)
        };
        let mut d = Shaper::datagrams(lossy, 11);
        let lost = (0..10_000).filter(|_| d.schedule(now, 1).is_none()).count();
        assert!((2000..3000).contains(&lost), "{lost} of 10000 lost");
        let mut s = Shaper::stream(lossy, 11);
        assert!((0..1000).all(|_| s.schedule(now, 1).is_some()));
    }

    #[test]
    fn datagrams_past_the_mtu_are_dropped_but_stream_chunks_are_not() {
        let now = Instant::now();
        let link = LinkSpec {
            mtu: Some(1500),
            ..spec(10, 0)
        };
        let mut d = Shaper::datagrams(link, 1);
        assert!(d.schedule(now, 1472).is_some());
        assert!(d.schedule(now, 1473).is_none());
        assert!(Shaper::stream(link, 1).schedule(now, 16 * 1024).is_some());
        // Inside a location (no MTU) any datagram passes, as on loopback.
        assert!(Shaper::datagrams(spec(0, 0), 1)
            .schedule(now, 65_507)
            .is_some());
    }

    #[test]
    fn the_rate_paces_back_to_back_packets() {
        let now = Instant::now();
        let paced = LinkSpec {
            rate: Some(1_000_000), // 1 MB/s: 1000 bytes take 1 ms
            ..spec(0, 0)
        };
        let mut s = Shaper::datagrams(paced, 1);
        let times: Vec<Instant> = (0..10).map(|_| s.schedule(now, 1000).unwrap()).collect();
        assert_eq!(times[0], now + Duration::from_millis(1));
        assert_eq!(times[9], now + Duration::from_millis(10));
    }
}
