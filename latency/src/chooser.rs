//! Picking a region from the estimates, with hysteresis and an optional pin.

use std::fmt;
use std::time::Duration;

use crate::Estimator;

/// When a candidate is *clearly* better than the current region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The candidate's RTT must be lower by at least this much...
    pub min_gain: Duration,
    /// ...and under this fraction of the current region's RTT.
    pub ratio: f64,
    /// A candidate needs this many answered probes in a row before we move to it (one
    /// lucky probe is not a trend, and a region back from an outage must prove itself).
    pub min_samples: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_gain: Duration::from_millis(10),
            ratio: 2.0 / 3.0,
            min_samples: 3,
        }
    }
}

impl Policy {
    /// Whether `candidate` is clearly better than `current`.
    pub fn clearly_better(&self, candidate: Duration, current: Duration) -> bool {
        candidate + self.min_gain <= current
            && candidate.as_secs_f64() < current.as_secs_f64() * self.ratio
    }
}

/// One region as the chooser sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionView {
    pub name: String,
    pub rtt: Option<Duration>,
    pub up: bool,
    /// Answered probes in a row, latest first.
    pub streak: usize,
}

impl RegionView {
    pub fn new(name: impl Into<String>, estimator: &Estimator) -> RegionView {
        RegionView {
            name: name.into(),
            rtt: estimator.rtt(),
            up: estimator.is_up(),
            streak: estimator.streak(),
        }
    }
}

/// Why a region was chosen (shown by `ferry ping` and in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No current region yet: the nearest one that answers.
    Nearest,
    /// The only region that answers.
    Only,
    /// The pinned region answers.
    Pinned,
    /// The pinned region does not answer: the others are chosen from.
    PinDown { pin: String },
    /// The current region stopped answering.
    CurrentDown { from: String },
    /// A candidate was clearly better than the previous region.
    Switched { from: String },
    /// The current region is the nearest.
    StillNearest,
    /// A nearer candidate exists but is not clearly better (or not measured enough).
    Stayed { nearer: String, gain: Duration },
    /// No region answers; the previous choice (if any) is kept.
    NoneUp,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Nearest => f.write_str("nearest region"),
            Reason::Only => f.write_str("the only region that answers"),
            Reason::Pinned => f.write_str("pinned"),
            Reason::PinDown { pin } => {
                write!(f, "pinned region `{pin}` does not answer; nearest other")
            }
            Reason::CurrentDown { from } => {
                write!(f, "`{from}` stopped answering; nearest other")
            }
            Reason::Switched { from } => write!(f, "clearly nearer than `{from}`"),
            Reason::StillNearest => f.write_str("nearest region"),
            Reason::Stayed { nearer, gain } => write!(
                f,
                "current region; `{nearer}` is only {:.1} ms nearer (not clearly better)",
                gain.as_secs_f64() * 1000.0
            ),
            Reason::NoneUp => f.write_str("no region answers"),
        }
    }
}

/// The outcome of one [`Chooser::choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The chosen region; `None` only when no region has ever answered.
    pub region: Option<String>,
    pub reason: Reason,
    /// Whether the choice differs from the previous one.
    pub changed: bool,
}

/// Chooses a region from estimates, remembering the current one (hysteresis).
#[derive(Debug, Clone)]
pub struct Chooser {
    policy: Policy,
    pin: Option<String>,
    current: Option<String>,
}

impl Chooser {
    pub fn new(policy: Policy, pin: Option<String>) -> Chooser {
        Chooser {
            policy,
            pin,
            current: None,
        }
    }

    /// Starts from a region chosen earlier (e.g. the CLI's cache on disk).
    pub fn with_current(mut self, current: Option<String>) -> Chooser {
        self.current = current;
        self
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn pin(&self) -> Option<&str> {
        self.pin.as_deref()
    }

    /// Chooses from `regions` and makes the result current.
    pub fn choose(&mut self, regions: &[RegionView]) -> Choice {
        let previous = self.current.clone();
        let (region, reason) = self.decide(regions);
        self.current = region.clone();
        Choice {
            changed: region != previous,
            region,
            reason,
        }
    }

    fn decide(&self, regions: &[RegionView]) -> (Option<String>, Reason) {
        let up: Vec<(&RegionView, Duration)> = regions
            .iter()
            .filter(|r| r.up)
            .filter_map(|r| r.rtt.map(|rtt| (r, rtt)))
            .collect();
        // Ties go to the name, so that every process breaks them alike.
        let Some(&(nearest, nearest_rtt)) = up
            .iter()
            .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.name.cmp(&b.0.name)))
        else {
            return (self.current.clone(), Reason::NoneUp);
        };
        if let Some(pin) = &self.pin {
            if up.iter().any(|(r, _)| &r.name == pin) {
                return (Some(pin.clone()), Reason::Pinned);
            }
        }
        let current = self
            .current
            .as_ref()
            .and_then(|c| up.iter().find(|(r, _)| &r.name == c));
        let Some(&(current, current_rtt)) = current else {
            let reason = match (&self.pin, &self.current) {
                (Some(pin), _) => Reason::PinDown { pin: pin.clone() },
                (None, Some(from)) => Reason::CurrentDown { from: from.clone() },
                (None, None) if up.len() == 1 => Reason::Only,
                (None, None) => Reason::Nearest,
            };
            return (Some(nearest.name.clone()), reason);
        };
        if nearest.name == current.name {
            return (Some(current.name.clone()), Reason::StillNearest);
        }
        if nearest.streak >= self.policy.min_samples
            && self.policy.clearly_better(nearest_rtt, current_rtt)
        {
            return (
                Some(nearest.name.clone()),
                Reason::Switched {
                    from: current.name.clone(),
                },
            );
        }
        (
            Some(current.name.clone()),
            Reason::Stayed {
                nearer: nearest.name.clone(),
                gain: current_rtt.saturating_sub(nearest_rtt),
            },
        )
    }
}

#[cfg(test)]
mod tests;
