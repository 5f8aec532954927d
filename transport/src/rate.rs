//! A token bucket, without I/O: the time is passed in, so that the relay's handshake
//! admission and the control plane's login limits are tested without sleeping.

use std::time::{Duration, Instant};

/// Allows `rate` events a second on average and bursts of up to `burst` at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of zero never refills (only the burst is ever allowed);
    /// a `burst` below one is taken as one, so that some event can always pass.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (another thread's older `now`) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token, from `now` (zero when one is there).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 || self.rate == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }

    /// Whether the bucket is full: nothing taken lately, so its owner may forget it.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)), "the burst passes at once");
        assert!(!b.try_take(t0), "the fourth waits for a refill");
        assert_eq!(b.wait(t0), Duration::from_millis(100));
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills up to the burst, never beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(later));
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }

    #[test]
    fn an_older_instant_neither_refills_nor_panics() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 1, t0 + Duration::from_secs(5));
        assert!(b.try_take(t0 + Duration::from_secs(5)));
        assert!(!b.try_take(t0), "time going backwards gives no token");
        assert!(b.try_take(t0 + Duration::from_secs(6)));
    }
}
