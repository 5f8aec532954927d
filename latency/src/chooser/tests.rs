use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{Estimator, Sample};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn views(estimators: &[(&str, &Estimator)]) -> Vec<RegionView> {
    estimators
        .iter()
        .map(|(n, e)| RegionView::new(*n, e))
        .collect()
}

fn steady(rtt: u64, n: usize) -> Estimator {
    let mut e = Estimator::default();
    for _ in 0..n {
        e.record(Sample::Rtt(ms(rtt)));
    }
    e
}

#[test]
fn the_first_choice_is_the_nearest() {
    let (eu, us, ap) = (steady(10, 3), steady(60, 3), steady(150, 3));
    let mut c = Chooser::new(Policy::default(), None);
    let choice = c.choose(&views(&[("us", &us), ("eu", &eu), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::Nearest);
    assert!(choice.changed);
}

#[test]
fn a_small_gain_does_not_switch_but_a_clear_one_does() {
    let mut c = Chooser::new(Policy::default(), None).with_current(Some("us".into()));
    // 55 vs 60: under 10 ms better.
    let choice = c.choose(&views(&[("us", &steady(60, 5)), ("eu", &steady(55, 5))]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    assert!(matches!(choice.reason, Reason::Stayed { .. }));
    // 85 vs 100: 15 ms better, but not under two thirds.
    let choice = c.choose(&views(&[("us", &steady(100, 5)), ("eu", &steady(85, 5))]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    // 10 vs 60: clearly better.
    let choice = c.choose(&views(&[("us", &steady(60, 5)), ("eu", &steady(10, 5))]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::Switched { from: "us".into() });
    assert!(choice.changed);
}

#[test]
fn two_thirds_alone_is_not_enough_on_a_short_path() {
    // 1 ms vs 4 ms: a fraction of the RTT but under the 10 ms floor.
    let mut c = Chooser::new(Policy::default(), None).with_current(Some("a".into()));
    let choice = c.choose(&views(&[("a", &steady(4, 5)), ("b", &steady(1, 5))]));
    assert_eq!(choice.region.as_deref(), Some("a"));
}

#[test]
fn a_candidate_needs_enough_samples() {
    let mut c = Chooser::new(Policy::default(), None).with_current(Some("us".into()));
    let choice = c.choose(&views(&[("us", &steady(60, 5)), ("eu", &steady(10, 1))]));
    assert_eq!(choice.region.as_deref(), Some("us"));
}

#[test]
fn a_down_current_region_moves_to_the_nearest_other_and_comes_back_when_clearly_better() {
    let mut eu = steady(10, 5);
    let us = steady(60, 5);
    let ap = steady(150, 5);
    let mut c = Chooser::new(Policy::default(), None);
    assert_eq!(
        c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]))
            .region
            .as_deref(),
        Some("eu")
    );
    for _ in 0..3 {
        eu.record(Sample::Lost);
    }
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    assert_eq!(choice.reason, Reason::CurrentDown { from: "eu".into() });
    // Back: one answer makes it up, but we wait for enough samples before moving.
    eu.record(Sample::Rtt(ms(10)));
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    eu.record(Sample::Rtt(ms(10)));
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    // The third answer in a row: trusted again, and clearly better.
    eu.record(Sample::Rtt(ms(10)));
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::Switched { from: "us".into() });
}

#[test]
fn a_pin_wins_while_up_and_falls_back_while_down() {
    let mut us = steady(60, 5);
    let eu = steady(10, 5);
    let ap = steady(150, 5);
    let mut c = Chooser::new(Policy::default(), Some("us".into()));
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    assert_eq!(choice.reason, Reason::Pinned);
    for _ in 0..3 {
        us.record(Sample::Lost);
    }
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::PinDown { pin: "us".into() });
    us.record(Sample::Rtt(ms(60)));
    let choice = c.choose(&views(&[("eu", &eu), ("us", &us), ("ap", &ap)]));
    assert_eq!(choice.region.as_deref(), Some("us"));
    assert_eq!(choice.reason, Reason::Pinned);
}

#[test]
fn a_pin_that_never_answered_falls_back() {
    let mut c = Chooser::new(Policy::default(), Some("mars".into()));
    let choice = c.choose(&views(&[("eu", &steady(10, 3))]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::PinDown { pin: "mars".into() });
}

#[test]
fn nothing_up_keeps_the_previous_choice() {
    let mut c = Chooser::new(Policy::default(), None).with_current(Some("eu".into()));
    let mut eu = Estimator::default();
    for _ in 0..3 {
        eu.record(Sample::Lost);
    }
    let choice = c.choose(&views(&[("eu", &eu)]));
    assert_eq!(choice.region.as_deref(), Some("eu"));
    assert_eq!(choice.reason, Reason::NoneUp);
    assert!(!choice.changed);
}

/// Feeds jittered samples of two regions and counts switches after the first choice.
fn switches(base_a: u64, base_b: u64, jitter_pct: u64, seed: u64, rounds: usize) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut jittered = |base: u64| {
        let spread = base * jitter_pct / 100;
        let low = base - spread;
        ms(rng.u64(low..=base + spread))
    };
    let (mut a, mut b) = (Estimator::default(), Estimator::default());
    let mut c = Chooser::new(Policy::default(), None);
    let mut changes = 0;
    for round in 0..rounds {
        a.record(Sample::Rtt(jittered(base_a)));
        b.record(Sample::Rtt(jittered(base_b)));
        let choice = c.choose(&views(&[("a", &a), ("b", &b)]));
        if choice.changed && round > 0 {
            changes += 1;
        }
    }
    changes
}

proptest! {
    /// Two regions within 20% of each other, each jittering by up to 10%: no sample
    /// pair can be under two thirds of the other, so the choice never moves.
    #[test]
    fn no_flapping_between_similar_regions_under_jitter(
        base in 5u64..300,
        other_pct in 100u64..=120,
        jitter_pct in 0u64..=10,
        seed in any::<u64>(),
    ) {
        let other = base * other_pct / 100;
        prop_assert_eq!(switches(base, other, jitter_pct, seed, 200), 0);
        prop_assert_eq!(switches(other, base, jitter_pct, seed, 200), 0);
    }

    /// Short paths jittering by several milliseconds never gain the 10 ms floor.
    #[test]
    fn no_flapping_on_short_paths_under_jitter(
        base in 5u64..=20,
        seed in any::<u64>(),
    ) {
        // Up to ±20% of at most 20 ms: no two samples differ by 10 ms.
        prop_assert_eq!(switches(base, base, 20, seed, 200), 0);
    }
}
