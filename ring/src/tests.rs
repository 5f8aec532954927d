use super::*;
use proptest::prelude::*;

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn keys(count: usize, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| format!("ws{}x{seed}--user{}", i, i % 97))
        .collect()
}

#[test]
fn owner_and_standby_are_distinct_and_agree_with_successors() {
    let relays = names(3, "eu");
    let ring = Ring::new(relays.iter().map(String::as_str));
    for key in keys(500, 1) {
        let (owner, standby) = ring.placement(&key).unwrap();
        let standby = standby.unwrap();
        assert_ne!(owner, standby, "{key}");
        assert_eq!(ring.owner(&key).unwrap(), owner, "{key}");
        let all = ring.successors(&key);
        assert_eq!(all.len(), 3);
        assert_eq!((&all[0], &all[1]), (&owner, &standby));
    }
}

#[test]
fn a_single_relay_owns_everything_and_has_no_standby() {
    let ring = Ring::new(["only"]);
    assert_eq!(ring.placement("a--b"), Some((Arc::from("only"), None)));
    assert_eq!(Ring::default().placement("a--b"), None);
}

#[test]
fn rings_built_in_any_order_agree() {
    // Every process must compute the same owner from the same relay set.
    let a = Ring::new(["eu-1", "eu-2", "eu-3"]);
    let b = Ring::new(["eu-3", "eu-1", "eu-2", "eu-1"]);
    for key in keys(1000, 2) {
        assert_eq!(a.successors(&key), b.successors(&key), "{key}");
    }
}

#[test]
fn keys_spread_roughly_evenly() {
    let relays = names(4, "us");
    let ring = Ring::new(relays.iter().map(String::as_str));
    let mut counts = std::collections::HashMap::new();
    let keys = keys(10_000, 3);
    for k in &keys {
        *counts.entry(ring.owner(k).unwrap()).or_insert(0usize) += 1;
    }
    for (relay, n) in counts {
        // An even share is 2500; virtual nodes keep each within ±40%.
        assert!((1500..3500).contains(&n), "{relay} owns {n} of 10000");
    }
}

#[test]
fn region_map_places_in_the_named_region_only() {
    let relay = |name: &str, region: &str| RelayInfo {
        name: name.into(),
        region: region.into(),
        quic_addr: "127.0.0.1:1".into(),
        server_name: "127.0.0.1".into(),
        health: None,
        incarnation: 1,
        https_url: None,
    };
    let map = RegionMap::new(&[
        Region {
            name: "eu".into(),
            relays: vec![relay("eu-1", "eu"), relay("eu-2", "eu")],
        },
        Region {
            name: "us".into(),
            relays: vec![relay("us-1", "us")],
        },
    ]);
    assert_eq!(map.first_region(), Some("eu"));
    let p = map.placement("eu", "demo--dev").unwrap();
    assert!(p.owner.region == "eu" && p.standby.as_ref().unwrap().region == "eu");
    let p = map.placement("us", "demo--dev").unwrap();
    assert_eq!((p.owner.name.as_str(), p.standby), ("us-1", None));
    assert!(map.placement("ap", "demo--dev").is_none());
    let without = map.without(std::slice::from_ref(&p.owner.name));
    assert!(without.placement("us", "demo--dev").is_none());
    assert_eq!(without.first_region(), Some("eu"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Adding one relay to N moves about 1/(N+1) of the keys, and only to the new relay.
    #[test]
    fn adding_a_relay_moves_only_its_share_of_keys(n in 2usize..8, seed in any::<u64>()) {
        let relays = names(n, &format!("r{seed}"));
        let before = Ring::new(relays.iter().map(String::as_str));
        let mut after = before.clone();
        let new = format!("new{seed}");
        after.add(&new);
        let keys = keys(10_000, seed);
        let mut moved = 0usize;
        for k in &keys {
            let (a, b) = (before.owner(k).unwrap(), after.owner(k).unwrap());
            if a != b {
                prop_assert_eq!(&*b, new.as_str(), "key {} moved between old relays", k);
                moved += 1;
            }
        }
        let bound = 2.0 / (n + 1) as f64;
        let fraction = moved as f64 / keys.len() as f64;
        prop_assert!(fraction < bound, "{} of keys moved adding 1 to {} (bound {})", fraction, n, bound);
        prop_assert!(moved > 0);
    }

    /// Removing one of N relays moves exactly the keys it owned, about 1/N of them.
    #[test]
    fn removing_a_relay_moves_only_its_keys(n in 3usize..8, gone in 0usize..8, seed in any::<u64>()) {
        let relays = names(n, &format!("r{seed}"));
        let gone = &relays[gone % n];
        let before = Ring::new(relays.iter().map(String::as_str));
        let mut after = before.clone();
        after.remove(gone);
        let keys = keys(10_000, seed);
        let mut moved = 0usize;
        for k in &keys {
            let (a, b) = (before.owner(k).unwrap(), after.owner(k).unwrap());
            if a != b {
                prop_assert_eq!(&*a, gone.as_str(), "key {} moved off a relay that stayed", k);
                moved += 1;
            } else {
                prop_assert_ne!(&*a, gone.as_str());
            }
        }
        let bound = 2.0 / n as f64;
        let fraction = moved as f64 / keys.len() as f64;
        prop_assert!(fraction < bound, "{} of keys moved removing 1 of {} (bound {})", fraction, n, bound);
    }

    /// A relay leaving hands its keys to their standby: the agent's standby connection
    /// is already where the key goes next.
    #[test]
    fn a_removed_owners_keys_go_to_their_standby(n in 2usize..6, seed in any::<u64>()) {
        let relays = names(n, &format!("s{seed}"));
        let before = Ring::new(relays.iter().map(String::as_str));
        for k in keys(300, seed) {
            let (owner, standby) = before.placement(&k).unwrap();
            let mut after = before.clone();
            after.remove(&owner);
            prop_assert_eq!(after.owner(&k), standby);
        }
    }
}

#[test]
fn relays_out_of_service_own_nothing() {
    use ferry_proto::api::RelayHealth;
    let relay = |name: &str, health| RelayInfo {
        name: name.into(),
        region: "eu".into(),
        quic_addr: "127.0.0.1:1".into(),
        server_name: "127.0.0.1".into(),
        health,
        incarnation: 1,
        https_url: None,
    };
    let map = RegionMap::new(&[Region {
        name: "eu".into(),
        relays: vec![
            relay("eu-1", Some(RelayHealth::Ok)),
            relay("eu-2", Some(RelayHealth::Draining)),
            relay("eu-3", Some(RelayHealth::Unreachable)),
            relay("eu-4", None),
        ],
    }]);
    for i in 0..200 {
        let key = format!("w{i}--x");
        let owner = map.successors("eu", &key).first().map(|r| r.name.clone());
        assert!(
            matches!(owner.as_deref(), Some("eu-1") | Some("eu-4")),
            "{key} owned by {owner:?}"
        );
    }
}
