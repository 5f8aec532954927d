//! Reports agents arriving and leaving to the control plane's directory.
//!
//! Updates go through a bounded queue to one task, so a slow or absent control plane
//! never stalls an agent's connection. The same task sends the relay's whole directory
//! (a snapshot) when the control plane may have missed something: at start, after an
//! update was lost (the control plane unreachable, or the queue full), and when the
//! sync loop asks. One task sending one request at a time keeps updates and snapshots
//! in order: a snapshot is taken when its turn comes, so it is never older than an
//! update already sent, and no update sent after it can be older than it. (When the
//! snapshot rode on the heartbeat, an agent connecting between the snapshot and its
//! arrival was erased from the directory until the next snapshot, 30 s later.)
//!
//! While the control plane is unreachable the task stops sending single updates:
//! the snapshot it retries, with backoff, covers them all.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::{DirectorySnapshot, DirectoryUpdate};
use ferry_transport::ControlClient;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 4096;
/// Attempts per update before the directory is marked as needing a snapshot.
const RETRIES: u32 = 3;
/// Backoff between snapshot attempts while the control plane does not answer.
const RESYNC_FIRST_DELAY: Duration = Duration::from_millis(250);
const RESYNC_MAX_DELAY: Duration = Duration::from_secs(5);

enum Message {
    Update(DirectoryUpdate),
    /// Send the whole directory, as it is when this message's turn comes.
    Resync,
    /// Answered once every update queued before it has been sent (or given up on).
    Flush(oneshot::Sender<()>),
}

/// The sending side, held by connection tasks.
#[derive(Clone)]
pub struct DirectoryReporter {
    tx: mpsc::Sender<Message>,
    /// Set when an update could not be queued: the task then sends a snapshot.
    overflowed: Arc<AtomicBool>,
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
            self.overflowed.store(true, Ordering::Relaxed);
            tracing::warn!(
                workspace,
                "directory update queue full; update dropped (a snapshot will repair it)"
            );
        }
    }

    /// Asks for the whole directory to be sent, after the updates queued so far.
    pub fn resync(&self) {
        if self.tx.try_send(Message::Resync).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Waits until every update queued so far has been sent: a relay that is about to
    /// exit must not leave its agents in the directory.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where the directory goes: the control plane, or a test's recorder.
pub(crate) trait DirectorySink: Send + Sync + 'static {
    fn update(&self, update: &DirectoryUpdate) -> impl Future<Output = Result<(), String>> + Send;
    fn replace(
        &self,
        snapshot: &DirectorySnapshot,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The control plane's `/api/v1/directory`, with the relay's token.
pub(crate) struct ControlSink {
    pub control: ControlClient,
    pub token: String,
}

impl DirectorySink for ControlSink {
    async fn update(&self, update: &DirectoryUpdate) -> Result<(), String> {
        self.control
            .post::<_, ()>("/api/v1/directory", Some(&self.token), update)
            .await
            .map_err(|e| e.to_string())
    }

    async fn replace(&self, snapshot: &DirectorySnapshot) -> Result<(), String> {
        self.control
            .put("/api/v1/directory", Some(&self.token), snapshot)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The receiving side: run it, with the function that lists the relay's agents, once
/// they exist.
pub struct DirectoryTask {
    rx: mpsc::Receiver<Message>,
    overflowed: Arc<AtomicBool>,
}

/// Creates the reporter and the task that drains it.
pub fn reporter() -> (DirectoryReporter, DirectoryTask) {
    reporter_with_queue(QUEUE)
}

fn reporter_with_queue(queue: usize) -> (DirectoryReporter, DirectoryTask) {
    let (tx, rx) = mpsc::channel::<Message>(queue);
    let overflowed = Arc::new(AtomicBool::new(false));
    (
        DirectoryReporter {
            tx,
            overflowed: overflowed.clone(),
            dropped: Arc::default(),
        },
        DirectoryTask { rx, overflowed },
    )
}

impl DirectoryTask {
    /// Sends updates and snapshots (`snapshot()` lists the agents on the relay now)
    /// until `cancel`. The first thing sent is a snapshot: entries the control plane
    /// still holds from this relay's previous run are replaced.
    pub(crate) async fn run(
        mut self,
        sink: impl DirectorySink,
        snapshot: impl Fn() -> DirectorySnapshot + Send,
        cancel: CancellationToken,
    ) {
        // Whether the control plane may differ from what we hold, and when to send it
        // the whole directory next.
        let mut stale = true;
        let mut resync_at = Instant::now();
        let mut delay = RESYNC_FIRST_DELAY;
        loop {
            if self.overflowed.swap(false, Ordering::Relaxed) && !stale {
                stale = true;
                resync_at = Instant::now();
            }
            let message = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(resync_at), if stale => Message::Resync,
                m = self.rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            match message {
                // A snapshot still to come covers this update.
                Message::Update(update) if stale => {
                    tracing::debug!(workspace = %update.workspace, "directory update left to the next snapshot");
                }
                Message::Update(update) => {
                    if let Err(e) = send_update(&sink, &update).await {
                        tracing::warn!(workspace = %update.workspace, error = %e, "directory update failed; will send the whole directory");
                        stale = true;
                        resync_at = Instant::now() + delay;
                    }
                }
                Message::Resync => match sink.replace(&snapshot()).await {
                    Ok(()) => {
                        stale = false;
                        delay = RESYNC_FIRST_DELAY;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, ?delay, "directory snapshot failed; retrying");
                        stale = true;
                        resync_at = Instant::now() + delay;
                        delay = (delay * 2).min(RESYNC_MAX_DELAY);
                    }
                },
                Message::Flush(done) => {
                    // About to exit: one last try to leave the directory right.
                    if stale && sink.replace(&snapshot()).await.is_ok() {
                        stale = false;
                    }
                    let _ = done.send(());
                }
            }
        }
    }
}

async fn send_update(sink: &impl DirectorySink, update: &DirectoryUpdate) -> Result<(), String> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match sink.update(update).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == RETRIES => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A control plane in memory: applies what it receives after `latency`, fails
    /// while `down`, and records the most requests ever in flight at once.
    #[derive(Default)]
    struct Recorder {
        directory: Mutex<BTreeSet<String>>,
        latency: Duration,
        down: AtomicBool,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        snapshots: AtomicUsize,
        updates: AtomicUsize,
    }

    impl Recorder {
        async fn call(&self, apply: impl FnOnce(&mut BTreeSet<String>)) -> Result<(), String> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            let result = if self.down.load(Ordering::SeqCst) {
                Err("control plane unreachable".to_string())
            } else {
                apply(&mut self.directory.lock().unwrap());
                Ok(())
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        }

        fn directory(&self) -> BTreeSet<String> {
            self.directory.lock().unwrap().clone()
        }
    }

    impl DirectorySink for Arc<Recorder> {
        async fn update(&self, update: &DirectoryUpdate) -> Result<(), String> {
            self.updates.fetch_add(1, Ordering::SeqCst);
            self.call(|d| {
                if update.connected {
                    d.insert(update.workspace.clone());
                } else {
                    d.remove(&update.workspace);
                }
            })
            .await
        }

        async fn replace(&self, snapshot: &DirectorySnapshot) -> Result<(), String> {
            self.snapshots.fetch_add(1, Ordering::SeqCst);
            let all = snapshot.workspaces.clone();
            self.call(|d| *d = all.into_iter().collect()).await
        }
    }

    /// The relay's agents, and a reporter running against `recorder`.
    struct Relay {
        agents: Arc<Mutex<BTreeSet<String>>>,
        reporter: DirectoryReporter,
        cancel: CancellationToken,
    }

    impl Relay {
        fn start(recorder: &Arc<Recorder>, queue: usize) -> Relay {
            let agents: Arc<Mutex<BTreeSet<String>>> = Arc::default();
            let (reporter, task) = reporter_with_queue(queue);
            let cancel = CancellationToken::new();
            let listed = agents.clone();
            tokio::spawn(task.run(
                recorder.clone(),
                move || DirectorySnapshot {
                    workspaces: listed.lock().unwrap().iter().cloned().collect(),
                    standby: Vec::new(),
                },
                cancel.clone(),
            ));
            Relay {
                agents,
                reporter,
                cancel,
            }
        }

        /// An agent connects or leaves, as the relay's connection tasks do it: the
        /// table changes, then the update is queued.
        fn agent(&self, workspace: &str, connected: bool) {
            if connected {
                self.agents.lock().unwrap().insert(workspace.to_string());
            } else {
                self.agents.lock().unwrap().remove(workspace);
            }
            self.reporter.report(workspace, connected, false);
        }

        fn agents(&self) -> BTreeSet<String> {
            self.agents.lock().unwrap().clone()
        }

        async fn settle(&self, recorder: &Recorder) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while recorder.directory() != self.agents() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.reporter.flush().await;
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    #[tokio::test]
    async fn a_snapshot_never_crosses_an_update_in_flight() {
        // A slow control plane: a snapshot and the updates around it would land in
        // any order if they were sent side by side.
        let recorder = Arc::new(Recorder {
            latency: Duration::from_millis(30),
            ..Default::default()
        });
        let relay = Relay::start(&recorder, QUEUE);
        for round in 0..20 {
            relay.reporter.resync();
            relay.agent(&format!("w{round}--dev"), true);
            if round % 3 == 0 {
                relay.agent(&format!("w{}--dev", round / 2), false);
            }
        }
        relay.settle(&recorder).await;
        assert_eq!(recorder.directory(), relay.agents());
        assert_eq!(
            recorder.most_in_flight.load(Ordering::SeqCst),
            1,
            "two directory requests were in flight at once"
        );
    }

    #[tokio::test]
    async fn updates_lost_while_the_control_plane_is_down_are_repaired_by_a_snapshot() {
        let recorder = Arc::new(Recorder::default());
        let relay = Relay::start(&recorder, QUEUE);
        relay.agent("a--dev", true);
        relay.settle(&recorder).await;
        assert_eq!(recorder.directory(), relay.agents());

        let updates_before = recorder.updates.load(Ordering::SeqCst);
        recorder.down.store(true, Ordering::SeqCst);
        relay.agent("a--dev", false);
        relay.agent("b--dev", true);
        // The updates fail; the task falls back to snapshots, which fail too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorder.snapshots.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorder.down.store(false, Ordering::SeqCst);
        relay.settle(&recorder).await;
        assert_eq!(recorder.directory(), BTreeSet::from(["b--dev".to_string()]));
        // Only the first lost update was tried (with its retries): b's arrival was
        // never sent on its own, so a snapshot put it there.
        assert_eq!(
            recorder.updates.load(Ordering::SeqCst) - updates_before,
            RETRIES as usize
        );
    }

    #[tokio::test]
    async fn an_update_dropped_by_a_full_queue_is_repaired_by_a_snapshot() {
        // A queue of one behind a slow control plane: most updates cannot be queued.
        let recorder = Arc::new(Recorder {
            latency: Duration::from_millis(50),
            ..Default::default()
        });
        let relay = Relay::start(&recorder, 1);
        relay.settle(&recorder).await;
        for i in 0..10 {
            relay.agent(&format!("w{i}--dev"), true);
        }
        assert!(relay.reporter.dropped.load(Ordering::Relaxed) > 0);
        relay.settle(&recorder).await;
        assert_eq!(recorder.directory(), relay.agents());
    }

    #[tokio::test]
    async fn the_first_thing_sent_replaces_what_a_previous_run_left() {
        let recorder = Arc::new(Recorder::default());
        recorder
            .directory
            .lock()
            .unwrap()
            .insert("from-last-run--dev".into());
        let relay = Relay::start(&recorder, QUEUE);
        relay.settle(&recorder).await;
        assert!(recorder.directory().is_empty());
    }
}
