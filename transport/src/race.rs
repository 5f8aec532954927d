//! Racing connection attempts to several addresses of one peer (RFC 8305, "Happy
//! Eyeballs"): attempt `i` starts once the previous one has run for `stagger` or has
//! failed, whichever comes first; the first success wins and the attempts still
//! running are dropped, which cancels them.
//!
//! No task is spawned: every attempt is a future polled by the caller's own, so an
//! attempt borrowing from the caller is fine and nothing outlives the race.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// The usual stagger between attempts (RFC 8305's "connection attempt delay").
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Tries `connect` on `candidates` in order, staggered by `stagger`, and returns the
/// first that succeeds with its address. When all fail, every address with its error,
/// in the order they failed (empty when there were no candidates).
pub async fn race<T, E, F, Fut>(
    candidates: Vec<SocketAddr>,
    stagger: Duration,
    mut connect: F,
) -> Result<(SocketAddr, T), Vec<(SocketAddr, E)>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waiting = candidates.into_iter();
    let mut running: Vec<(SocketAddr, Pin<Box<Fut>>)> = Vec::new();
    let mut errors = Vec::new();
    let next_start = tokio::time::sleep(stagger);
    tokio::pin!(next_start);
    // Each turn starts the next attempt: the first at once, later ones when the
    // stagger ran out or an attempt failed (the only ways a turn ends without
    // returning).
    loop {
        match waiting.next() {
            Some(addr) => {
                running.push((addr, Box::pin(connect(addr))));
                next_start
                    .as_mut()
                    .reset(tokio::time::Instant::now() + stagger);
            }
            None if running.is_empty() => return Err(errors),
            None => {}
        }
        let more_waiting = waiting.len() > 0;
        let finished = std::future::poll_fn(|cx| {
            for (i, (_, attempt)) in running.iter_mut().enumerate() {
                if let Poll::Ready(result) = attempt.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, result)));
                }
            }
            if more_waiting && next_start.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match finished {
            // The stagger ran out with attempts still pending: start the next too.
            None => {}
            Some((i, Ok(value))) => return Ok((running[i].0, value)),
            Some((i, Err(error))) => {
                let (addr, _) = running.swap_remove(i);
                errors.push((addr, error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    /// Counts attempts dropped before they finished (cancelled by the race).
    struct DropGuard(Arc<AtomicUsize>);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_fast_failure_starts_the_next_attempt_without_waiting_out_the_stagger() {
        let started = Instant::now();
        let result = race(addrs(2), Duration::from_secs(5), |addr| async move {
            if addr.port() == 1 {
                Err("refused")
            } else {
                Ok(addr.port())
            }
        })
        .await;
        assert_eq!(result, Ok((addrs(2)[1], 2)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_hanging_attempt_is_overtaken_after_the_stagger_and_cancelled() {
        let stagger = Duration::from_millis(100);
        let cancelled = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let result = race(addrs(3), stagger, |addr| {
            let (cancelled, starts) = (cancelled.clone(), starts.clone());
            async move {
                starts.lock().unwrap().push((addr.port(), t0.elapsed()));
                let _guard = DropGuard(cancelled);
                if addr.port() == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, ()>(addr.port())
            }
        })
        .await;
        assert_eq!(result, Ok((addrs(3)[1], 2)));
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 2, "the third never started: {starts:?}");
        assert!(starts[1].1 >= stagger, "second started early: {starts:?}");
        assert!(
            starts[1].1 < stagger * 10,
            "second started late: {starts:?}"
        );
        // Both guards dropped: the winner finished, the hanging one was cancelled.
        assert_eq!(cancelled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_first_success_wins_even_when_a_later_attempt_started_it() {
        // Attempt 1 succeeds slowly, attempt 2 (started after the stagger) quickly.
        let stagger = Duration::from_millis(50);
        let result = race(addrs(2), stagger, |addr| async move {
            let delay = if addr.port() == 1 { 2000 } else { 10 };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok::<_, ()>(addr.port())
        })
        .await;
        assert_eq!(result, Ok((addrs(2)[1], 2)));
    }

    #[tokio::test]
    async fn every_error_is_returned_when_all_attempts_fail() {
        let started = Instant::now();
        let result: Result<(SocketAddr, ()), _> =
            race(addrs(3), Duration::from_secs(5), |addr| async move {
                Err(format!("no answer from {}", addr.port()))
            })
            .await;
        let errors = result.unwrap_err();
        assert_eq!(
            errors,
            addrs(3)
                .into_iter()
                .map(|a| (a, format!("no answer from {}", a.port())))
                .collect::<Vec<_>>()
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn no_candidates_is_an_empty_failure() {
        let result: Result<(SocketAddr, ()), Vec<(SocketAddr, ())>> =
            race(Vec::new(), CONNECTION_ATTEMPT_DELAY, |_| async { Ok(()) }).await;
        assert_eq!(result, Err(Vec::new()));
    }
}
