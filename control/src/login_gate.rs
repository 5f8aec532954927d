//! How many password checks run at once. argon2id is built to be slow (tens of
//! milliseconds of a core each), so a login flood spends the control plane's CPU
//! before any failure is recorded: [`crate::limiter`] counts failures only once a
//! check has finished, and a burst of concurrent attempts all pass it. The gate bounds
//! the checks in flight in all (about one per core) and per source address, and how
//! many may queue; the rest are answered at once (429 `rate_limited` for one busy
//! address, 503 `overloaded` when the queue is full), so other users' logins wait
//! behind a few checks at most, never behind the flood.
//!
//! No task lives here: a [`LoginPass`] is held by the request while it checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Checks one source address may have running or queued at once. A person types one
/// password at a time; two allow for a shared address (NAT, an office) without letting
/// one address hold both cores of a small control plane for long.
pub const PER_ADDRESS: usize = 2;
/// Checks that may wait for a free core, beyond those running.
pub const MAX_QUEUED: usize = 64;
/// How long a check may wait for a free core before the login is answered `overloaded`.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Why a login was turned away before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// The address already has [`PER_ADDRESS`] checks in flight.
    #[error("logins from this address are already being checked; try again in a moment")]
    AddressBusy,
    /// The queue of checks is full, or the wait too long.
    #[error("the control plane is checking too many logins at once; try again in a few seconds")]
    Overloaded,
}

/// A password check waiting for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run password checks. argon2id takes 19 MiB a check;
/// on tokio's blocking pool every new thread (and its malloc arena) kept its own copy,
/// and a flood grew the control plane by 160 MiB. A few long-lived threads reuse
/// theirs. They end when the gate (their only sender) is dropped.
struct Hashers {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

impl Hashers {
    fn new(threads: usize) -> Hashers {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-hash-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Hashers {
            jobs: Mutex::new(tx),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .ok()?;
        rx.await.ok()
    }
}

/// The control plane's password-check gate.
pub struct LoginGate {
    hashers: Hashers,
    cores: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    by_address: Arc<Mutex<HashMap<String, usize>>>,
    per_address: usize,
    max_queued: usize,
}

impl Default for LoginGate {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginGate::new(cores, PER_ADDRESS, MAX_QUEUED)
    }
}

impl LoginPass {
    /// Runs the check `f` on one of the gate's hashing threads; `None` if it could not run.
    pub async fn check<T: Send + 'static>(
        &self,
        gate: &LoginGate,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        gate.hashers.run(f).await
    }
}

/// A login's right to run its password check; gives its place back on drop.
pub struct LoginPass {
    _permit: OwnedSemaphorePermit,
    _address: AddressTurn,
}

struct AddressTurn {
    by_address: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for AddressTurn {
    fn drop(&mut self) {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One queued check, counted until it runs or gives up.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoginGate {
    pub fn new(running: usize, per_address: usize, max_queued: usize) -> LoginGate {
        LoginGate {
            hashers: Hashers::new(running),
            cores: Arc::new(Semaphore::new(running.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            by_address: Default::default(),
            per_address: per_address.max(1),
            max_queued,
        }
    }

    /// Waits for a turn to check a password for a login from `address`.
    pub async fn enter(&self, address: &str) -> Result<LoginPass, GateRefusal> {
        let turn = {
            let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(address.to_string()).or_default();
            if *n >= self.per_address {
                return Err(GateRefusal::AddressBusy);
            }
            *n += 1;
            AddressTurn {
                by_address: self.by_address.clone(),
                key: address.to_string(),
            }
        };
        if let Ok(permit) = self.cores.clone().try_acquire_owned() {
            return Ok(LoginPass {
                _permit: permit,
                _address: turn,
            });
        }
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_queued).then_some(n + 1)
            })
            .map_err(|_| GateRefusal::Overloaded)?;
        let _queued = Queued(self.queued.clone());
        match tokio::time::timeout(MAX_WAIT, self.cores.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(LoginPass {
                _permit: permit,
                _address: turn,
            }),
            _ => Err(GateRefusal::Overloaded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_run_on_the_hashing_threads() {
        let gate = LoginGate::new(2, 2, 2);
        let pass = gate.enter("ip:a").await.unwrap();
        let name = pass
            .check(&gate, || std::thread::current().name().map(str::to_string))
            .await;
        assert_eq!(
            name.flatten()
                .as_deref()
                .map(|n| n.starts_with("ferry-hash-")),
            Some(true)
        );
    }

    #[tokio::test]
    async fn one_address_cannot_hold_every_check() {
        let gate = LoginGate::new(4, 2, 8);
        let a1 = gate.enter("ip:a").await.expect("first from a");
        let _a2 = gate.enter("ip:a").await.expect("second from a");
        assert_eq!(
            gate.enter("ip:a").await.err(),
            Some(GateRefusal::AddressBusy)
        );
        let _b = gate
            .enter("ip:b")
            .await
            .expect("another address is unaffected");
        drop(a1);
        assert!(
            gate.enter("ip:a").await.is_ok(),
            "a finished check frees its turn"
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_overloaded_at_once() {
        let gate = Arc::new(LoginGate::new(1, 10, 1));
        let running = gate.enter("ip:a").await.expect("the only core");
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("ip:b").await.is_ok() }
        });
        while gate.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.enter("ip:c").await.err(),
            Some(GateRefusal::Overloaded),
            "no room to queue: refused without waiting"
        );
        assert!(
            gate.by_address.lock().unwrap().get("ip:c").is_none(),
            "a refused login leaves no count behind"
        );
        drop(running);
        assert!(
            waiter.await.unwrap(),
            "the queued check runs once the core is free"
        );
    }
}
