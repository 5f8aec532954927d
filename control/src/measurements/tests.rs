use super::*;

fn sample(from: &str, to: &str, rtt_us: u64, at_ms: Option<u64>) -> Measurement {
    Measurement {
        from: from.into(),
        to: to.into(),
        rtt_us,
        jitter_us: 10,
        loss: 0.0,
        at_ms,
    }
}

const NOW: u64 = 1_800_000_000_000;

#[test]
fn reporters_may_only_speak_for_themselves() {
    let agent = Reporter::Agent("web--alice".into());
    let relay = Reporter::Relay("eu-1".into());
    let user = Reporter::User("alice".into());
    let ok = |r: &Reporter, from: &str, to: &str| {
        matches!(
            check_sample(r, &sample(from, to, 1000, None), NOW),
            Ok(Checked::Store(_))
        )
    };
    assert!(ok(&agent, "agent:web--alice", "relay:eu-1"));
    assert!(!ok(&agent, "agent:web--bob", "relay:eu-1"));
    assert!(!ok(&agent, "relay:eu-1", "relay:us-1"));
    assert!(ok(&relay, "relay:eu-1", "relay:us-1"));
    assert!(ok(&relay, "relay:eu-1", "agent:web--alice"));
    assert!(!ok(&relay, "relay:us-1", "relay:eu-1"));
    assert!(!ok(&relay, "relay:eu-1", "relay:eu-1"), "a relay to itself");
    assert!(ok(&user, "client:alice", "relay:eu-1"));
    assert!(ok(&user, "browser:alice", "relay:eu-1"));
    assert!(!ok(&user, "client:bob", "relay:eu-1"));
    // Only relays measure agents; nobody measures clients.
    assert!(!ok(&user, "client:alice", "agent:web--alice"));
    assert!(!ok(&agent, "agent:web--alice", "client:alice"));
    let err = check_sample(&user, &sample("client:bob", "relay:eu-1", 1, None), NOW).unwrap_err();
    assert!(err.contains("`client:alice` or `browser:alice`"), "{err}");
}

#[test]
fn bad_samples_are_refused_with_a_reason() {
    let user = Reporter::User("alice".into());
    let check = |s: Measurement| check_sample(&user, &s, NOW);
    assert!(check(sample("client:alice", "nope", 1, None))
        .unwrap_err()
        .starts_with("to:"));
    assert!(check(sample("client:alice", "relay:EU", 1, None)).is_err());
    assert!(check(sample("alice", "relay:eu-1", 1, None)).is_err());
    assert!(check(sample("client:alice", "relay:eu-1", MAX_RTT_US + 1, None)).is_err());
    let mut lossy = sample("client:alice", "relay:eu-1", 1, None);
    lossy.loss = 1.5;
    assert!(check(lossy.clone()).is_err());
    lossy.loss = f32::NAN;
    assert!(check(lossy).is_err());
    let future = check(sample("client:alice", "relay:eu-1", 1, Some(NOW + 120_000)));
    assert!(future.unwrap_err().contains("future"));
    // A little skew is fine (stored at receipt time); old samples are stale.
    match check(sample("client:alice", "relay:eu-1", 1, Some(NOW + 5_000))) {
        Ok(Checked::Store(row)) => assert_eq!(row.at_ms, NOW as i64),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        check(sample(
            "client:alice",
            "relay:eu-1",
            1,
            Some(NOW - MAX_SAMPLE_AGE_MS - 1)
        )),
        Ok(Checked::Stale)
    );
}

#[test]
fn users_see_relays_and_their_own_series_only() {
    let alice = Viewer::User("alice".into());
    assert!(alice.may_see("relay:eu-1", "relay:us-1"));
    assert!(alice.may_see("client:alice", "relay:us-1"));
    assert!(alice.may_see("relay:eu-1", "agent:web--alice"));
    assert!(alice.may_see("agent:web--alice", "relay:eu-1"));
    assert!(!alice.may_see("relay:eu-1", "agent:web--bob"));
    assert!(!alice.may_see("browser:bob", "relay:eu-1"));
    assert!(!alice.may_see("garbage", "relay:eu-1"));
    assert!(Viewer::Admin.may_see("browser:bob", "relay:eu-1"));
}

fn row(source: &str, target: &str, at_ms: i64, rtt_us: i64) -> MeasurementRow {
    MeasurementRow {
        source: source.into(),
        target: target.into(),
        at_ms,
        rtt_us,
        jitter_us: 100,
        loss_ppm: 0,
    }
}

#[test]
fn rollup_keeps_median_max_and_count_per_pair_and_minute() {
    let m = MINUTE_MS as i64;
    let rows = vec![
        row("relay:a", "relay:b", 10 * m, 300),
        row("relay:a", "relay:b", 10 * m + 1, 100),
        row("relay:a", "relay:b", 10 * m + 2, 200),
        row("relay:a", "relay:b", 10 * m + 3, 900),
        row("relay:a", "relay:b", 11 * m, 50),
        row("relay:b", "relay:a", 10 * m + 5, 70),
    ];
    let buckets = rollup(&rows);
    assert_eq!(buckets.len(), 3);
    let first = &buckets[0];
    assert_eq!(
        (first.minute_ms, first.samples, first.p50_us, first.max_us),
        (10 * m, 4, 200, 900)
    );
    assert_eq!((buckets[1].minute_ms, buckets[1].p50_us), (11 * m, 50));
    assert_eq!(buckets[2].source, "relay:b");

    // Stored buckets win over ones rolled up again from raw samples.
    let mut stored = first.clone();
    stored.p50_us = 222;
    let series = minute_series(vec![stored], &rows);
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].points.len(), 2);
    assert_eq!(series[0].points[0].rtt_us, 222);
    assert_eq!(series[0].points[1].rtt_us, 50);
}

#[test]
fn matrix_takes_the_median_link_between_regions() {
    let regions: HashMap<String, String> = [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]
        .iter()
        .map(|(r, g)| (r.to_string(), g.to_string()))
        .collect();
    let latest = vec![
        row("relay:eu-1", "relay:us-1", 5, 80_000),
        row("relay:eu-2", "relay:us-1", 5, 90_000),
        row("relay:eu-1", "relay:eu-2", 5, 300),
        row("relay:gone", "relay:us-1", 5, 1),
    ];
    let m = matrix(latest, &regions);
    assert_eq!(m.regions, ["eu", "us"]);
    assert_eq!(m.links.len(), 3, "the removed relay is left out");
    let cell = |from: &str, to: &str| {
        m.cells
            .iter()
            .find(|c| c.from == from && c.to == to)
            .map(|c| (c.rtt_us, c.links))
    };
    assert_eq!(cell("eu", "us"), Some((80_000, 2)));
    assert_eq!(cell("eu", "eu"), Some((300, 1)));
    assert_eq!(cell("us", "eu"), None);
}
