//! Login rate limiting: failed attempts per account and per source address in a
//! sliding window, kept in memory. Each replica counts its own attempts, which bounds
//! guessing to (replicas × limit) per window: good enough against online guessing,
//! and it needs no write to the store per attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per account in [`WINDOW`].
pub const PER_ACCOUNT: usize = 5;
/// Failed logins allowed per source address in [`WINDOW`].
pub const PER_ADDRESS: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Beyond this many tracked keys the oldest are forgotten, so a flood of addresses
/// cannot grow the map without bound.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// Seconds to wait if `key` has used up `limit` failures, else `None`.
    pub fn blocked(&self, key: &str, limit: usize, now: Instant) -> Option<u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get_mut(key)?;
        while entry
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            entry.pop_front();
        }
        if entry.len() >= limit {
            let oldest = entry.front().copied().unwrap_or(now);
            Some(
                (WINDOW.saturating_sub(now.duration_since(oldest)))
                    .as_secs()
                    .max(1),
            )
        } else {
            None
        }
    }

    pub fn record_failure(&self, key: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let entry = map.entry(key.to_string()).or_default();
        entry.push_back(now);
        // Only the last `PER_ADDRESS` matter for any limit.
        while entry.len() > PER_ADDRESS {
            entry.pop_front();
        }
    }

    pub fn record_success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_forgets_after_the_window() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..PER_ACCOUNT {
            assert_eq!(l.blocked("user:a", PER_ACCOUNT, t0), None);
            l.record_failure("user:a", t0);
        }
        assert!(l.blocked("user:a", PER_ACCOUNT, t0).is_some());
        assert_eq!(l.blocked("user:b", PER_ACCOUNT, t0), None);
        assert_eq!(l.blocked("user:a", PER_ACCOUNT, t0 + WINDOW), None);
    }
}
