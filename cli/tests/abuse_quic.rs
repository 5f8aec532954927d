//! Abuse and overload on the relay's QUIC port, with real processes on loopback: a
//! flood of connections that never say hello, a stampede of new connections past the
//! handshake rate, and one user opening streams as fast as it can. In each, a
//! legitimate user's echo and app requests keep working, the agent keeps its
//! connection, and the relay's memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::victim::{Victim, ATTACKER_IP};
use common::*;
use ferry_proto::token::TokenKind;
use ferry_proto::{alpn, ErrorCode, Reply};
use ferry_transport::Limits;

/// The name the relay's certificate is issued for in tests (its address).
const SERVER_NAME: &str = "127.0.0.1";

/// A client endpoint on the attacker's address.
fn attacker_endpoint(net: &Network, relay: SocketAddr) -> Result<quinn::Endpoint> {
    let ca = std::fs::read_to_string(&net.ca_file)?;
    let tls = ferry_certs::client_config(&ca, &[alpn::CLIENT])?;
    Ok(ferry_transport::quic::client_endpoint_from(
        Some(ATTACKER_IP.parse()?),
        relay,
        tls,
        &Limits::client(),
    )?)
}

fn agent_connects(s: &Scrape) -> f64 {
    s.sum(
        "ferry_relay_connections_accepted_total",
        &[("role", "agent")],
    )
}

#[derive(Debug, Default)]
struct Flood {
    attempts: AtomicUsize,
    established: AtomicUsize,
    refused: AtomicUsize,
    other: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_that_never_say_hello_leaves_others_unharmed() -> Result<()> {
    // A quarter of --max-pending (16) is where unvalidated peers get a Retry.
    let mut v = Victim::start(
        "abuse-no-hello",
        &["--max-pending-per-address", "32", "--max-pending", "64"],
    )
    .await?;
    let admin = v.net.relay("eu-1").admin;
    let before = scrape(admin).await?;
    let endpoint = attacker_endpoint(&v.net, v.relay)?;
    let flood = Arc::new(Flood::default());
    let new_session = v.new_session(b"new session");
    let attack = {
        let (flood, relay) = (flood.clone(), v.relay);
        async move {
            // 16 dialers for 6 s or 3000 attempts; every established connection is
            // kept, silent, until the end.
            let deadline = Instant::now() + Duration::from_secs(6);
            let held = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut dialers = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let (endpoint, flood, held) = (endpoint.clone(), flood.clone(), held.clone());
                dialers.spawn(async move {
                    while Instant::now() < deadline
                        && flood.attempts.fetch_add(1, Ordering::Relaxed) < 3000
                    {
                        let Ok(connecting) = endpoint.connect(relay, SERVER_NAME) else {
                            flood.other.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        match tokio::time::timeout(Duration::from_secs(3), connecting).await {
                            Ok(Ok(conn)) => {
                                flood.established.fetch_add(1, Ordering::Relaxed);
                                held.lock().unwrap().push(conn);
                            }
                            Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                                if c.error_code
                                    == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                            {
                                flood.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                flood.other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            while dialers.join_next().await.is_some() {}
            // A new session from the victim's address while the attacker still holds
            // its pending connections: it gets in (through a Retry: 32 pending is past 16).
            let took = new_session
                .await
                .context("a new session during the flood")?;
            let open = held.lock().unwrap().len();
            Ok::<_, anyhow::Error>((open, took))
        }
    };
    let ((held_at_end, session_took), watch) = v.during(attack).await?;
    eprintln!(
        "flood: {flood:?}, held at the end: {held_at_end}, new session took {session_took:?}"
    );
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);

    // The attacker's address never had more than its share pending.
    assert!(
        flood.established.load(Ordering::Relaxed) <= 32,
        "more connections than --max-pending-per-address were let in: {flood:?}"
    );
    assert!(flood.refused.load(Ordering::Relaxed) > 0, "{flood:?}");
    let after = scrape(admin).await?;
    let turned_away = |reason| {
        after.sum(
            "ferry_relay_refusals_total",
            &[("scope", "handshake"), ("reason", reason)],
        )
    };
    assert!(
        turned_away("address_limit") >= flood.refused.load(Ordering::Relaxed) as f64,
        "refusals are counted by reason: {}",
        after.text
    );
    assert!(
        turned_away("retry") > 0.0,
        "unvalidated peers were sent a Retry"
    );
    assert_eq!(
        agent_connects(&after),
        agent_connects(&before),
        "the agent kept its connection through the flood"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_past_the_handshake_rate_hears_overloaded_at_once() -> Result<()> {
    let mut v = Victim::start("abuse-stampede", &["--handshake-rate", "5"]).await?;
    let admin = v.net.relay("eu-1").admin;
    let before = scrape(admin).await?;
    let endpoint = attacker_endpoint(&v.net, v.relay)?;
    let token = v.net.mint(TokenKind::User, "crowd", None).await?;
    let relay = v.relay;
    let attack = async move {
        // Waves of 60 clients at once, every half second for 3 s, as after a relay
        // loss: each is answered (in, or `overloaded`) well before a client's 10 s
        // hello timeout.
        let mut dials = tokio::task::JoinSet::new();
        for _wave in 0..6 {
            for _ in 0..60 {
                let (endpoint, token) = (endpoint.clone(), token.clone());
                dials.spawn(async move {
                    let start = Instant::now();
                    let r =
                        ferry_transport::dial::connect(&endpoint, relay, SERVER_NAME, &token).await;
                    (
                        start.elapsed(),
                        r.map(|s| s.conn).map_err(|e| (e.code(), e.to_string())),
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut outcomes = Vec::new();
        while let Some(done) = dials.join_next().await {
            outcomes.push(done?);
        }
        Ok::<_, anyhow::Error>(outcomes)
    };
    let (outcomes, watch) = v.during(attack).await?;
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);
    let admitted = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
    let overloaded = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err((Some(ErrorCode::Overloaded), _))))
        .count();
    let slowest = outcomes.iter().map(|(t, _)| *t).max().unwrap_or_default();
    let others: Vec<_> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .filter(|(code, _)| *code != Some(ErrorCode::Overloaded))
        .collect();
    eprintln!("stampede: {admitted} admitted, {overloaded} overloaded, slowest {slowest:?}");
    assert!(
        others.is_empty(),
        "every refusal is a typed `overloaded`: {others:?}"
    );
    assert!(admitted >= 5, "the burst is admitted: {admitted}");
    // 5 a second for about 3 s, after a burst of 5: about 20 of 360 admitted.
    assert!(admitted <= 40, "the rate held: {admitted} admitted");
    assert!(
        overloaded >= 300,
        "most of the stampede is refused: {overloaded}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "answered early, not left to time out: {slowest:?}"
    );
    let after = scrape(admin).await?;
    assert!(
        after.sum(
            "ferry_relay_refusals_total",
            &[("scope", "connection"), ("reason", "overloaded")]
        ) >= overloaded as f64
    );
    assert_eq!(
        agent_connects(&after),
        agent_connects(&before),
        "the agent kept its connection through the stampede"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_opening_streams_as_fast_as_it_can_gets_only_its_share() -> Result<()> {
    let mut v = Victim::start("abuse-streams", &["--max-streams-per-user", "8"]).await?;
    let admin = v.net.relay("eu-1").admin;
    let endpoint = attacker_endpoint(&v.net, v.relay)?;
    let token = v.net.mint(TokenKind::User, "mallory", None).await?;
    let relay = v.relay;
    let new_session = v.new_session(b"still here");
    let attack = async move {
        // 4 connections of one user, 150 streams each as fast as they open; each
        // stream sends one byte of a header and waits, holding its slot if it got one.
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (endpoint, token) = (endpoint.clone(), token.clone());
            conns.spawn(async move {
                let session = ferry_transport::dial::connect(&endpoint, relay, SERVER_NAME, &token)
                    .await
                    .context("mallory connects")?;
                let mut streams = tokio::task::JoinSet::new();
                for _ in 0..150 {
                    let (mut send, mut recv) = session.conn.open_bi().await?;
                    send.write_all(&[0]).await?;
                    streams.spawn(async move {
                        let reply = tokio::time::timeout(
                            Duration::from_secs(3),
                            ferry_transport::frame_io::read_frame::<Reply>(&mut recv),
                        )
                        .await;
                        drop(send);
                        matches!(reply, Ok(Ok(Reply::Error(f))) if f.code == ErrorCode::RateLimited)
                    });
                }
                let mut limited = 0;
                while let Some(r) = streams.join_next().await {
                    limited += usize::from(r?);
                }
                Ok::<_, anyhow::Error>(limited)
            });
        }
        // The victim (another user) opens a new stream meanwhile.
        let took = new_session
            .await
            .context("a new session during the flood")?;
        let mut limited = 0;
        while let Some(r) = conns.join_next().await {
            limited += r??;
        }
        Ok::<_, anyhow::Error>((limited, took))
    };
    let ((limited, session_took), watch) = v.during(attack).await?;
    eprintln!(
        "streams refused with rate_limited: {limited} of 600; new session took {session_took:?}"
    );
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);
    assert!(
        limited >= 600 - 8,
        "all but the user's 8 streams were refused `rate_limited`: {limited}"
    );
    let after = scrape(admin).await?;
    assert!(
        after.sum(
            "ferry_relay_refusals_total",
            &[("scope", "stream"), ("reason", "rate_limited")]
        ) >= limited as f64
    );
    Ok(())
}
