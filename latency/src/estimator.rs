//! A windowed estimate of one region's round-trip time from probe results.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A region is down once this many probes in a row went unanswered.
pub const DOWN_AFTER: usize = 3;

/// One probe's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sample {
    /// Answered after this round trip.
    Rtt(Duration),
    /// No answer within the probe's timeout.
    Lost,
}

/// The last `window` probe results of one region.
///
/// The RTT estimate is the median of the answered probes in the window: one slow
/// probe (a jitter spike, a retransmitted handshake packet) does not move it, while a
/// lasting change does once it fills half the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimator {
    window: usize,
    samples: VecDeque<Sample>,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator::new(10)
    }
}

impl Estimator {
    /// An estimator over the last `window` probes (at least [`DOWN_AFTER`]).
    pub fn new(window: usize) -> Estimator {
        Estimator {
            window: window.max(DOWN_AFTER),
            samples: VecDeque::new(),
        }
    }

    pub fn record(&mut self, sample: Sample) {
        // A window read from a damaged cache file still stays bounded.
        let window = self.window.clamp(DOWN_AFTER, 100);
        while self.samples.len() >= window {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    fn answered(&self) -> impl Iterator<Item = Duration> + '_ {
        self.samples.iter().filter_map(|s| match s {
            Sample::Rtt(d) => Some(*d),
            Sample::Lost => None,
        })
    }

    /// How many probes in the window answered.
    pub fn answered_count(&self) -> usize {
        self.answered().count()
    }

    /// The median RTT of the answered probes, if any answered.
    pub fn rtt(&self) -> Option<Duration> {
        let mut rtts: Vec<Duration> = self.answered().collect();
        if rtts.is_empty() {
            return None;
        }
        rtts.sort();
        let mid = rtts.len() / 2;
        Some(if rtts.len() % 2 == 1 {
            rtts[mid]
        } else {
            (rtts[mid - 1] + rtts[mid]) / 2
        })
    }

    /// Mean absolute deviation of the answered probes from the median.
    pub fn jitter(&self) -> Duration {
        let Some(median) = self.rtt() else {
            return Duration::ZERO;
        };
        let (sum, n) = self.answered().fold((Duration::ZERO, 0u32), |(sum, n), d| {
            (sum + d.abs_diff(median), n + 1)
        });
        if n == 0 {
            Duration::ZERO
        } else {
            sum / n
        }
    }

    /// Fraction of probes in the window that went unanswered.
    pub fn loss(&self) -> f32 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let lost = self.samples.len() - self.answered_count();
        lost as f32 / self.samples.len() as f32
    }

    /// Whether the region answers: some probe answered, and not the last
    /// [`DOWN_AFTER`] in a row were lost.
    pub fn is_up(&self) -> bool {
        if self.answered_count() == 0 {
            return false;
        }
        let recent_lost = self
            .samples
            .iter()
            .rev()
            .take_while(|s| **s == Sample::Lost)
            .count();
        recent_lost < DOWN_AFTER
    }

    /// How many of the latest probes answered in a row (a region back from an outage
    /// must answer a few times before it is trusted again).
    pub fn streak(&self) -> usize {
        self.samples
            .iter()
            .rev()
            .take_while(|s| matches!(s, Sample::Rtt(_)))
            .count()
    }

    /// How many probes the window holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether any probe was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn median_ignores_a_single_spike() {
        let mut e = Estimator::new(5);
        for d in [10, 11, 200, 9, 10] {
            e.record(Sample::Rtt(ms(d)));
        }
        assert_eq!(e.rtt(), Some(ms(10)));
        assert!(e.jitter() > Duration::ZERO);
        assert_eq!(e.loss(), 0.0);
    }

    #[test]
    fn the_window_forgets_old_samples() {
        let mut e = Estimator::new(4);
        for _ in 0..4 {
            e.record(Sample::Rtt(ms(100)));
        }
        for _ in 0..4 {
            e.record(Sample::Rtt(ms(20)));
        }
        assert_eq!(e.rtt(), Some(ms(20)));
    }

    #[test]
    fn three_losses_in_a_row_mean_down_and_one_answer_means_up() {
        let mut e = Estimator::new(10);
        assert!(!e.is_up(), "never answered");
        e.record(Sample::Rtt(ms(10)));
        e.record(Sample::Lost);
        e.record(Sample::Lost);
        assert!(e.is_up(), "two losses are not an outage");
        e.record(Sample::Lost);
        assert!(!e.is_up());
        assert!((e.loss() - 0.75).abs() < 1e-6);
        e.record(Sample::Rtt(ms(12)));
        assert!(e.is_up());
    }
}
