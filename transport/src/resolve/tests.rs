use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::test_dns::TestDns;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn server(ttl: u32) -> (TestDns, Resolver) {
    let dns = TestDns::start(ttl).await.unwrap();
    let resolver = Resolver::with_servers(&[dns.addr()]).unwrap();
    (dns, resolver)
}

#[tokio::test]
async fn ip_literals_are_returned_without_asking_the_dns() {
    let (dns, resolver) = server(60).await;
    assert_eq!(
        resolver.resolve("127.0.0.1:4433").await.unwrap(),
        vec!["127.0.0.1:4433".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        resolver.resolve("[::1]:4433").await.unwrap(),
        vec!["[::1]:4433".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(dns.queries(), 0);
}

#[tokio::test]
async fn a_name_resolves_to_both_families_ipv6_first_then_alternating() {
    let (dns, resolver) = server(60).await;
    dns.set(
        "relay.ferry.test",
        vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("::1"), ip("::2")],
    );
    let addrs = resolver.resolve("Relay.Ferry.Test:4433").await.unwrap();
    let want: Vec<SocketAddr> = [
        "[::1]:4433",
        "127.0.0.2:4433",
        "[::2]:4433",
        "127.0.0.3:4433",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(addrs, want);
    assert_eq!(dns.queries(), 2, "one A and one AAAA query");
}

#[tokio::test]
async fn answers_are_reused_until_their_ttl_runs_out() {
    let (dns, resolver) = server(1).await;
    dns.set("relay.ferry.test", vec![ip("127.0.0.2")]);
    let first = Instant::now();
    resolver.resolve("relay.ferry.test:1").await.unwrap();
    assert_eq!(dns.queries(), 2);
    // A clone shares the cache.
    resolver
        .clone()
        .resolve("relay.ferry.test:1")
        .await
        .unwrap();
    assert_eq!(
        dns.queries(),
        2,
        "a second resolve within the TTL asked the DNS"
    );
    let mut asked_again = None;
    for _ in 0..50 {
        resolver.resolve("relay.ferry.test:1").await.unwrap();
        if dns.queries() > 2 {
            asked_again = Some(first.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = asked_again.expect("the DNS was never asked again after the TTL");
    assert!(
        after >= Duration::from_millis(900),
        "asked again after {after:?}, within the 1 s TTL"
    );
}

#[tokio::test]
async fn forget_makes_the_next_resolve_ask_again() {
    let (dns, resolver) = server(3600).await;
    dns.set("relay.ferry.test", vec![ip("127.0.0.2")]);
    resolver.resolve("relay.ferry.test:1").await.unwrap();
    dns.set("relay.ferry.test", vec![ip("127.0.0.3")]);
    assert_eq!(
        resolver.resolve("relay.ferry.test:1").await.unwrap(),
        vec!["127.0.0.2:1".parse::<SocketAddr>().unwrap()],
        "cached for an hour"
    );
    resolver.forget("relay.ferry.test:1");
    assert_eq!(
        resolver.resolve("relay.ferry.test:1").await.unwrap(),
        vec!["127.0.0.3:1".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(dns.queries(), 4);
}

#[tokio::test]
async fn a_name_without_address_records_gives_a_clear_error() {
    let (dns, resolver) = server(60).await;
    dns.set("empty.ferry.test", vec![]);
    for name in ["nowhere.ferry.test", "empty.ferry.test"] {
        let err = resolver.resolve(&format!("{name}:443")).await.unwrap_err();
        assert!(matches!(err, ResolveError::NoRecords { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("relay name `{name}` has no A or AAAA record")
        );
    }
}

#[tokio::test]
async fn a_bad_address_is_refused_before_any_query() {
    let (dns, resolver) = server(60).await;
    let err = resolver.resolve("relay.ferry.test").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot parse `relay.ferry.test` as host:port"),
        "{err}"
    );
    assert_eq!(dns.queries(), 0);
}

#[tokio::test]
async fn a_silent_dns_server_gives_a_lookup_error_naming_the_relay() {
    // Bound, never answering.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = Resolver::with_servers(&[silent.local_addr().unwrap()]).unwrap();
    let err = resolver.resolve("relay.ferry.test:443").await.unwrap_err();
    assert!(matches!(err, ResolveError::Lookup { .. }), "{err:?}");
    assert!(err.to_string().contains("relay.ferry.test"), "{err}");
}

#[tokio::test]
async fn a_name_with_a_dead_and_a_live_address_connects_through_the_live_one_over_ipv6() {
    let (dns, resolver) = server(60).await;
    let live = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let port = live.local_addr().unwrap().port();
    // The dead address: 127.0.0.1 on the same port, bound but not listening, so that
    // a connection there is refused and nothing else can take the port meanwhile.
    let dead = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    dead.bind(&SocketAddr::new(ip("127.0.0.1"), port).into())
        .unwrap();
    dns.set("relay.ferry.test", vec![ip("127.0.0.1"), ip("::1")]);
    let addrs = resolver
        .resolve(&format!("relay.ferry.test:{port}"))
        .await
        .unwrap();
    assert_eq!(addrs[0], SocketAddr::new(ip("::1"), port), "IPv6 first");
    let accept = tokio::spawn(async move { live.accept().await.map(|(_, peer)| peer) });
    // Reversed, so that the dead IPv4 address is tried first, and fails at once.
    let order: Vec<SocketAddr> = addrs.into_iter().rev().collect();
    let started = Instant::now();
    let (winner, _stream) = crate::race::race(order, Duration::from_secs(5), |a| {
        tokio::net::TcpStream::connect(a)
    })
    .await
    .unwrap();
    assert_eq!(winner, SocketAddr::new(ip("::1"), port));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited out the stagger"
    );
    assert!(accept.await.unwrap().unwrap().is_ipv6());
}

#[test]
fn dns_server_list_parses_ip_port_and_bare_ip() {
    assert_eq!(
        parse_servers("127.0.0.1:5353, [::1]:53,10.0.0.1").unwrap(),
        vec![
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.1:53".parse().unwrap()
        ]
    );
    let err = parse_servers("dns.example.com:53").unwrap_err().to_string();
    assert!(err.contains("`dns.example.com:53` is not IP:PORT"), "{err}");
}

#[test]
fn interleaving_alternates_families_starting_with_the_first() {
    let v6 = vec![ip("::1"), ip("::2"), ip("::3")];
    let v4 = vec![ip("10.0.0.1")];
    assert_eq!(
        interleave(v6.clone(), v4.clone()),
        vec![ip("::1"), ip("10.0.0.1"), ip("::2"), ip("::3")]
    );
    assert_eq!(interleave(vec![], v4.clone()), v4);
}
