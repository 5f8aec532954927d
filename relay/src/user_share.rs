//! One user's share of a relay: the streams it has open at once, over all its
//! connections. A connection's own stream limit does not bound a user, who may open
//! many connections; without a share, one user opening streams as fast as it can
//! would take the relay's whole `--max-streams` and every other user would be
//! refused `overloaded`. Past its share a user's new stream is refused with
//! `rate_limited` (not retried elsewhere: the share is the same on every relay).
//!
//! Counted from the moment a stream is accepted, before its header arrives, so that
//! streams which never send one count too. No task lives here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default for [`UserShare`]'s limit (`--max-streams-per-user`).
pub const DEFAULT_MAX_STREAMS_PER_USER: usize = 1024;

/// Streams open per user.
pub(crate) struct UserShare {
    max_streams: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One stream's place in its user's share, given back on drop.
pub(crate) struct UserSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl UserShare {
    pub fn new(max_streams: usize) -> UserShare {
        UserShare {
            max_streams,
            open: Default::default(),
        }
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// A slot for one more stream of `user`, or `None` when its share is used up.
    pub fn try_stream(&self, user: &str) -> Option<UserSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.get(user).copied().unwrap_or(0);
        if n >= self.max_streams {
            return None;
        }
        open.insert(user.to_string(), n + 1);
        Some(UserSlot {
            open: self.open.clone(),
            user: user.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_past_its_share_is_refused_and_others_are_not() {
        let share = UserShare::new(2);
        let a = share.try_stream("alice").expect("first");
        let _b = share.try_stream("alice").expect("second");
        assert!(
            share.try_stream("alice").is_none(),
            "third is over the share"
        );
        assert!(share.try_stream("bob").is_some(), "bob has his own share");
        drop(a);
        assert!(
            share.try_stream("alice").is_some(),
            "a closed stream frees a slot"
        );
    }

    #[test]
    fn users_with_no_open_stream_are_forgotten() {
        let share = UserShare::new(2);
        drop(share.try_stream("alice"));
        assert!(share.open.lock().unwrap().is_empty());
    }
}
