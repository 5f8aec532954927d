//! Drain state: whether the relay is draining (readiness false, new client streams
//! refused, agents told to move) and how many streams are still open, so that the
//! relay can exit as soon as the last one finishes.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Shared by every connection and stream task.
pub(crate) struct Drain {
    started: CancellationToken,
    open: watch::Sender<usize>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            started: CancellationToken::new(),
            open: watch::channel(0).0,
        }
    }
}

impl Drain {
    pub fn begin(&self) {
        self.started.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once draining begins.
    pub async fn started(&self) {
        self.started.cancelled().await
    }

    /// Counts one open stream until the guard drops.
    pub fn stream(&self) -> StreamGuard {
        self.open.send_modify(|n| *n += 1);
        StreamGuard {
            open: self.open.clone(),
        }
    }

    pub fn open_streams(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves when no stream is open.
    pub async fn idle(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One open stream.
pub(crate) struct StreamGuard {
    open: watch::Sender<usize>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}
