//! Reports agents arriving and leaving to the control plane's directory.
//!
//! Updates go through a bounded queue to one task, so a slow or absent control plane
//! never stalls an agent's connection; when the queue is full the update is dropped
//! and counted, and the next change for that workspace corrects the directory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::DirectoryUpdate;
use ferry_transport::ControlClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 4096;
const RETRIES: u32 = 5;

enum Message {
    Update(DirectoryUpdate),
    /// Answered once every update queued before it has been sent (or given up on).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side, held by connection tasks.
#[derive(Clone)]
pub struct DirectoryReporter {
    tx: mpsc::Sender<Message>,
    pub dropped: Arc<AtomicU64>,
}

impl DirectoryReporter {
    pub fn report(&self, workspace: &str, connected: bool, standby: bool) {
        let update = DirectoryUpdate {
            workspace: workspace.to_string(),
            connected,
            standby,
        };
        if self.tx.try_send(Message::Update(update)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(workspace, "directory update queue full; update dropped");
        }
    }

    /// Waits until every update queued so far has been sent: a relay that is about to
    /// exit must not leave its agents in the directory.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Creates the reporter and the task that drains it.
pub fn reporter(
    control: ControlClient,
    token: String,
    cancel: CancellationToken,
) -> (DirectoryReporter, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let task = async move {
        loop {
            let update = tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m {
                    Some(Message::Update(u)) => u,
                    Some(Message::Flush(done)) => {
                        let _ = done.send(());
                        continue;
                    }
                    None => return,
                },
            };
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=RETRIES {
                match control
                    .post::<_, ()>("/api/v1/directory", Some(&token), &update)
                    .await
                {
                    Ok(()) => break,
                    Err(e) if attempt == RETRIES => {
                        tracing::warn!(workspace = %update.workspace, error = %e, "directory update failed");
                    }
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
    };
    (
        DirectoryReporter {
            tx,
            dropped: Arc::default(),
        },
        task,
    )
}
