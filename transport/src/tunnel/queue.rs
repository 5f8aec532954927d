//! A bounded queue of datagrams between quinn (which must never wait on one slow
//! tunnel) and the task that writes them into the tunnel's byte stream.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a datagram was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its limit: the datagram is dropped, as a full router queue
    /// would drop it (QUIC's loss recovery and congestion control take it from there).
    Full,
    /// The tunnel has ended.
    Closed,
}

/// One tunnel's outgoing datagrams. One producer side (quinn's sends) and one
/// consumer (the tunnel's writer task).
pub(crate) struct DatagramQueue {
    state: Mutex<QueueState>,
    readable: Notify,
    limit: usize,
}

struct QueueState {
    items: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
    /// The sender waiting for room (the client's single-tunnel socket waits; the relay
    /// never does).
    writable: Option<Waker>,
}

impl std::fmt::Debug for DatagramQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("DatagramQueue")
            .field("bytes", &state.bytes)
            .field("closed", &state.closed)
            .finish()
    }
}

impl DatagramQueue {
    /// A queue holding up to `limit` bytes.
    pub fn new(limit: usize) -> DatagramQueue {
        DatagramQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                writable: None,
            }),
            readable: Notify::new(),
            limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, datagram: Bytes) -> Result<(), PushError> {
        let mut state = self.state();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.bytes + datagram.len() > self.limit && !state.items.is_empty() {
            return Err(PushError::Full);
        }
        state.bytes += datagram.len();
        state.items.push_back(datagram);
        drop(state);
        // One consumer: a stored permit covers a push that lands before it waits.
        self.readable.notify_one();
        Ok(())
    }

    /// Ready once the queue has room for a datagram again (or has closed).
    pub fn poll_space(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state();
        if state.closed || state.bytes < self.limit {
            return Poll::Ready(());
        }
        state.writable = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for datagrams and moves up to about `max_bytes` of them into `out`.
    /// `false` once the queue is closed and empty.
    pub async fn pop_into(&self, out: &mut Vec<Bytes>, max_bytes: usize) -> bool {
        loop {
            {
                let mut state = self.state();
                if !state.items.is_empty() {
                    let mut taken = 0;
                    while let Some(d) = state.items.pop_front() {
                        taken += d.len();
                        out.push(d);
                        if taken >= max_bytes {
                            break;
                        }
                    }
                    state.bytes -= taken;
                    if let Some(waker) = state.writable.take() {
                        waker.wake();
                    }
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            self.readable.notified().await;
        }
    }

    /// Ends the queue: pushes fail, the consumer drains what is left and stops, and
    /// a waiting sender is woken.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let waker = state.writable.take();
        drop(state);
        self.readable.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_until_drained_then_wakes_the_sender() {
        let q = std::sync::Arc::new(DatagramQueue::new(10));
        q.push(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"abc")), Err(PushError::Full));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { std::future::poll_fn(|cx| q.poll_space(cx)).await }
        });
        tokio::task::yield_now().await;
        let mut out = Vec::new();
        assert!(q.pop_into(&mut out, 1 << 20).await);
        assert_eq!(out, vec![Bytes::from_static(b"12345678")]);
        tokio::time::timeout(std::time::Duration::from_secs(2), waiting)
            .await
            .expect("the sender is woken once there is room")
            .unwrap();
        q.push(Bytes::from_static(b"abc")).unwrap();
        q.close();
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        out.clear();
        assert!(
            q.pop_into(&mut out, 1 << 20).await,
            "what was queued still drains"
        );
        assert!(!q.pop_into(&mut out, 1 << 20).await);
    }

    /// One datagram larger than the whole limit still passes an empty queue, or a
    /// large packet could never be sent at all.
    #[test]
    fn an_empty_queue_takes_any_datagram() {
        let q = DatagramQueue::new(4);
        q.push(Bytes::from(vec![0u8; 100])).unwrap();
    }
}
