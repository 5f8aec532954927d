//! The relay's load limit: how many streams it carries at once before refusing new
//! ones with the retryable `overloaded` code (the CLI then retries on another relay,
//! and a relay forwarding over the mesh tries the next candidate).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts the streams being routed, up to a limit.
pub(crate) struct Load {
    active: Arc<AtomicUsize>,
    max_streams: usize,
}

impl Load {
    pub fn new(max_streams: usize) -> Load {
        Load {
            active: Arc::new(AtomicUsize::new(0)),
            max_streams,
        }
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Takes a slot for one stream, or `None` when the relay is at its limit.
    pub fn try_stream(&self) -> Option<LoadSlot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .ok()?;
        Some(LoadSlot {
            active: self.active.clone(),
        })
    }
}

/// One stream's slot, given back on drop.
pub(crate) struct LoadSlot {
    active: Arc<AtomicUsize>,
}

impl Drop for LoadSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_limit_and_come_back_on_drop() {
        let load = Load::new(2);
        let a = load.try_stream().expect("first slot");
        let _b = load.try_stream().expect("second slot");
        assert!(
            load.try_stream().is_none(),
            "third stream is over the limit"
        );
        drop(a);
        assert!(load.try_stream().is_some(), "a freed slot is reusable");
    }
}
