//! What the agent and the CLI keep: an estimator per region and the chooser, with a
//! serialisable form for the CLI's cache on disk.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Choice, Chooser, Estimator, Policy, RegionView, Sample};

/// One region's line in a table (`ferry ping`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionRow {
    pub name: String,
    pub rtt: Option<Duration>,
    pub jitter: Duration,
    pub loss: f32,
    pub up: bool,
    pub samples: usize,
}

/// The estimates and the current choice, as cached between CLI runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub current: Option<String>,
    pub regions: BTreeMap<String, Estimator>,
}

/// Estimates for every region of the map and a chooser over them.
#[derive(Debug, Clone)]
pub struct Selector {
    window: usize,
    estimators: BTreeMap<String, Estimator>,
    chooser: Chooser,
}

impl Selector {
    /// `window` probes are kept per region.
    pub fn new(policy: Policy, pin: Option<String>, window: usize) -> Selector {
        Selector {
            window,
            estimators: BTreeMap::new(),
            chooser: Chooser::new(policy, pin),
        }
    }

    /// Continues from a saved state (its windows keep their own length).
    pub fn restore(mut self, state: SavedState) -> Selector {
        self.estimators = state.regions;
        self.chooser = self.chooser.with_current(state.current);
        self
    }

    pub fn saved(&self) -> SavedState {
        SavedState {
            current: self.chooser.current().map(str::to_string),
            regions: self.estimators.clone(),
        }
    }

    /// Follows the region map: regions no longer in it are forgotten (a region whose
    /// relays all left is down), new ones start empty.
    pub fn set_regions<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let names: Vec<&str> = names.into_iter().collect();
        self.estimators.retain(|n, _| names.contains(&n.as_str()));
        for name in names {
            self.estimators
                .entry(name.to_string())
                .or_insert_with(|| Estimator::new(self.window));
        }
    }

    /// Records a probe of `region` (ignored for a region not in the map).
    pub fn record(&mut self, region: &str, sample: Sample) {
        if let Some(e) = self.estimators.get_mut(region) {
            e.record(sample);
        }
    }

    pub fn choose(&mut self) -> Choice {
        let views: Vec<RegionView> = self
            .estimators
            .iter()
            .map(|(n, e)| RegionView::new(n.clone(), e))
            .collect();
        self.chooser.choose(&views)
    }

    pub fn current(&self) -> Option<&str> {
        self.chooser.current()
    }

    pub fn estimator(&self, region: &str) -> Option<&Estimator> {
        self.estimators.get(region)
    }

    /// Every region, nearest first (regions that do not answer last).
    pub fn rows(&self) -> Vec<RegionRow> {
        let mut rows: Vec<RegionRow> = self
            .estimators
            .iter()
            .map(|(name, e)| RegionRow {
                name: name.clone(),
                rtt: e.rtt(),
                jitter: e.jitter(),
                loss: e.loss(),
                up: e.is_up(),
                samples: e.len(),
            })
            .collect();
        rows.sort_by(|a, b| {
            (!a.up, a.rtt.unwrap_or(Duration::MAX), &a.name).cmp(&(
                !b.up,
                b.rtt.unwrap_or(Duration::MAX),
                &b.name,
            ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_and_keeps_the_current_choice() {
        let mut s = Selector::new(Policy::default(), None, 5);
        s.set_regions(["eu", "us"]);
        s.record("eu", Sample::Rtt(Duration::from_millis(60)));
        s.record("us", Sample::Rtt(Duration::from_millis(70)));
        assert_eq!(s.choose().region.as_deref(), Some("eu"));
        let json = serde_json::to_string(&s.saved()).unwrap();
        let state: SavedState = serde_json::from_str(&json).unwrap();
        let mut again = Selector::new(Policy::default(), None, 5).restore(state);
        // us got a little nearer, not clearly: the restored choice holds.
        for _ in 0..3 {
            again.record("us", Sample::Rtt(Duration::from_millis(55)));
        }
        let choice = again.choose();
        assert_eq!(choice.region.as_deref(), Some("eu"));
        assert!(!choice.changed);
    }

    #[test]
    fn regions_that_leave_the_map_are_forgotten() {
        let mut s = Selector::new(Policy::default(), None, 5);
        s.set_regions(["eu", "us"]);
        s.record("eu", Sample::Rtt(Duration::from_millis(10)));
        s.record("us", Sample::Rtt(Duration::from_millis(60)));
        assert_eq!(s.choose().region.as_deref(), Some("eu"));
        s.set_regions(["us"]);
        let choice = s.choose();
        assert_eq!(choice.region.as_deref(), Some("us"));
        assert_eq!(s.rows().len(), 1);
        s.record("eu", Sample::Rtt(Duration::from_millis(1)));
        assert!(s.estimator("eu").is_none());
    }
}
