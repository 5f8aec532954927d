//! The relay's load limits: how many streams it carries at once, and how many agent
//! and client connections it holds, before refusing more with the retryable
//! `overloaded` code (the CLI then retries on another relay, a relay forwarding over
//! the mesh tries the next candidate, and an agent backs off and is meanwhile served
//! through its standby). Mesh links are never refused: they carry other relays' load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts streams being routed and connections held, each up to its limit.
pub(crate) struct Load {
    streams: Arc<AtomicUsize>,
    max_streams: usize,
    connections: Arc<AtomicUsize>,
    max_connections: usize,
}

/// Takes one slot of `counter` unless it is at `max`.
fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<LoadSlot> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
    Some(LoadSlot {
        active: counter.clone(),
    })
}

impl Load {
    pub fn new(max_streams: usize, max_connections: usize) -> Load {
        Load {
            streams: Arc::new(AtomicUsize::new(0)),
            max_streams,
            connections: Arc::new(AtomicUsize::new(0)),
            max_connections,
        }
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Takes a slot for one stream, or `None` when the relay is at its limit.
    pub fn try_stream(&self) -> Option<LoadSlot> {
        take(&self.streams, self.max_streams)
    }

    /// Takes a slot for one agent or client connection, or `None` at the limit.
    pub fn try_connection(&self) -> Option<LoadSlot> {
        take(&self.connections, self.max_connections)
    }
}

/// One stream's or connection's slot, given back on drop.
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
        let load = Load::new(2, 1);
        let a = load.try_stream().expect("first slot");
        let _b = load.try_stream().expect("second slot");
        assert!(
            load.try_stream().is_none(),
            "third stream is over the limit"
        );
        drop(a);
        assert!(load.try_stream().is_some(), "a freed slot is reusable");
        let conn = load.try_connection().expect("connection slot");
        assert!(
            load.try_connection().is_none(),
            "connections have their own limit"
        );
        drop(conn);
        assert!(load.try_connection().is_some());
    }
}
