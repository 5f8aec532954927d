//! Choosing the nearest region, free of I/O: a windowed estimate of each region's
//! round-trip time, jitter and loss ([`Estimator`]), and a [`Chooser`] that picks a
//! region with hysteresis, honours a pin with fallback, and says why.
//!
//! The agent and the CLI feed it probe results (QUIC handshakes, or HTTPS when UDP is
//! blocked; see `ferry_transport::probe`) with the time passed in, so the rules can be
//! tested with scripted samples. The rules:
//! - a region is *up* while at least one of its last [`DOWN_AFTER`] probes answered;
//! - with no current region (or when it is down), the nearest up region wins;
//! - otherwise the current region stays unless a candidate, measured at least
//!   [`Policy::min_samples`] times, is better by at least [`Policy::min_gain`] *and*
//!   under [`Policy::ratio`] of the current RTT: jitter alone never moves us;
//! - a pinned region is used whenever it is up; while it is down the rules above pick
//!   among the others, and the pin wins again as soon as it answers.

mod chooser;
mod estimator;
mod selector;

pub use chooser::{Choice, Chooser, Policy, Reason, RegionView};
pub use estimator::{Estimator, Sample, DOWN_AFTER};
pub use selector::{RegionRow, SavedState, Selector};
