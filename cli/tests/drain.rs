//! SIGTERM on relays: readiness turns false at once, agents move make-before-break,
//! new streams are refused with `draining` and retried elsewhere by the CLI, open
//! streams finish within the grace period; and a rolling restart of a whole region
//! under load loses nothing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferry_proto::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKSPACE: &str = "demo--dev";
const EU: [&str; 3] = ["eu-1", "eu-2", "eu-3"];

fn placement(relays: &[&str], workspace: &str) -> Vec<String> {
    let ring = ferry_ring::Ring::new(relays.iter().copied());
    ring.successors(workspace)
        .iter()
        .map(|r| r.to_string())
        .collect()
}

async fn eu_network(name: &str, grace: &str) -> anyhow::Result<(Network, String)> {
    let mut net = Network::start(name).await?;
    for relay in EU {
        net.start_relay_with(relay, "eu", "127.0.0.1:0", &["--drain-grace", grace])
            .await?;
    }
    net.start_agent(WORKSPACE, &["--region", "eu"]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    let order = placement(&EU, WORKSPACE);
    net.wait_for_placement(WORKSPACE, &[&order[0], &order[1]])
        .await?;
    Ok((net, user))
}

async fn wait_for_status(addr: SocketAddr, path: &str, want: u16) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if http_status(addr, path).await.ok() == Some(want) {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_relay_and_finishes_open_streams() -> anyhow::Result<()> {
    let (mut net, user) = eu_network("drain", "20").await?;
    let echo = echo_server().await;
    let order = placement(&EU, WORKSPACE);
    let owner = order[0].clone();
    let admin = net.relay(&owner).admin;
    assert_eq!(http_status(admin, "/readyz").await?, 200);
    assert_eq!(http_status(admin, "/healthz").await?, 200);
    // The relay never serves (or proxies) the control plane's API or dashboard.
    for path in [
        "/api/v1/keys",
        "/api/v1/regions",
        "/api/v1/openapi.json",
        "/",
    ] {
        assert_eq!(http_status(admin, path).await?, 404, "{path}");
    }

    // A port-forward connected through the owner, with a stream open before the drain.
    let (mut forward_child, forward) = net
        .port_forward_env(&user, "demo", echo, &[("FERRY_RELAY", &owner)])
        .await?;
    let tcp = tokio::net::TcpStream::connect(forward).await?;
    let (mut stdout, mut stdin) = tcp.into_split();
    let first = random_bytes(64 * 1024);
    stdin.write_all(&first).await?;
    let mut got = vec![0u8; first.len()];
    stdout.read_exact(&mut got).await?;
    assert!(got == first, "first half corrupted");

    let relay = net.take_relay(&owner);
    let mut child = relay.child;
    sigterm(&child);
    let not_ready = wait_for_status(admin, "/readyz", 503).await?;
    println!("/readyz turned 503 {not_ready:?} after SIGTERM");

    // A new stream on the port-forward's connection to the draining relay is refused
    // with `draining`, and the CLI retries it on another relay.
    let payload = random_bytes(32 * 1024);
    let mut fresh = tokio::net::TcpStream::connect(forward).await?;
    fresh.write_all(&payload).await?;
    fresh.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), fresh.read_to_end(&mut out)).await??;
    assert!(
        out == payload,
        "new stream during the drain: {} bytes back",
        out.len()
    );
    // A new client asking for the draining relay is sent elsewhere.
    let (ok, out, err) = net
        .ferry_tcp_via(&owner, &user, "demo", &echo.to_string(), &payload)
        .await?;
    assert!(ok && out == payload, "new client during the drain: {err}");

    // The agent moved to the ring without the draining relay, make-before-break.
    let rest: Vec<&str> = EU.iter().copied().filter(|r| *r != owner).collect();
    let next = placement(&rest, WORKSPACE);
    // (The old link stays until our open stream on it ends.)
    net.wait_for_placement(WORKSPACE, &[&owner, &next[0], &next[1]])
        .await?;

    // The open stream still works, and the relay is still waiting for it.
    assert!(
        child.try_wait()?.is_none(),
        "relay exited with a stream open"
    );
    let second = random_bytes(64 * 1024);
    stdin.write_all(&second).await?;
    let mut got = vec![0u8; second.len()];
    stdout.read_exact(&mut got).await?;
    assert!(got == second, "second half corrupted");
    stdin.shutdown().await?;
    let mut rest_out = Vec::new();
    stdout.read_to_end(&mut rest_out).await?;
    assert!(rest_out.is_empty());

    // With its last stream done, the relay exits well before the grace period.
    let t0 = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    println!("relay exited {:?} after its last stream", t0.elapsed());
    assert!(exit.success(), "relay exited with {exit}");
    net.wait_for_placement(WORKSPACE, &[&next[0], &next[1]])
        .await?;
    forward_child.kill().await?;
    Ok(())
}

/// One worker's loop: open a connection through the port-forward, send a payload in
/// chunks over about a second while reading the echo, check it, and again.
async fn traffic_worker(
    forward: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let payload = random_bytes(24 * 1024);
            let tcp = tokio::net::TcpStream::connect(forward).await?;
            let (mut r, mut w) = tcp.into_split();
            let sent = payload.clone();
            let writer = async move {
                for chunk in sent.chunks(4096) {
                    w.write_all(chunk).await?;
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                w.shutdown().await?;
                anyhow::Ok(())
            };
            let reader = async move {
                let mut back = Vec::new();
                r.read_to_end(&mut back).await?;
                anyhow::Ok(back)
            };
            let (w, back) = tokio::join!(writer, reader);
            w?;
            let back = back?;
            anyhow::ensure!(
                back == payload,
                "{} bytes back of {}, or corrupted",
                back.len(),
                payload.len()
            );
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(30), result).await {
            Ok(Ok(())) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => errors.lock().unwrap().push(format!("{e:#}")),
            Err(_) => errors.lock().unwrap().push("stream hung for 30s".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_a_region_under_load_loses_no_stream() -> anyhow::Result<()> {
    let (mut net, user) = eu_network("rolling", "20").await?;
    let echo = echo_server().await;
    let (mut forward_child, forward) = net.port_forward(&user, "demo", echo).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        workers.spawn(traffic_worker(
            forward,
            stop.clone(),
            done.clone(),
            errors.clone(),
        ));
    }
    // Let traffic flow before the first restart.
    let t0 = Instant::now();
    while done.load(Ordering::Relaxed) < 50 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "no traffic flowing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let order = placement(&EU, WORKSPACE);
    for name in EU {
        let relay = net.take_relay(name);
        let t = Instant::now();
        sigterm(&relay.child);
        let mut child = relay.child;
        let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        assert!(exit.success(), "{name} exited with {exit}");
        println!("{name} drained and exited in {:?}", t.elapsed());
        net.start_relay_with(
            name,
            "eu",
            &relay.addr.to_string(),
            &["--drain-grace", "20"],
        )
        .await?;
        // Back to the full ring before the next relay goes.
        net.wait_for_placement(WORKSPACE, &[&order[0], &order[1]])
            .await?;
        let before = done.load(Ordering::Relaxed);
        let t = Instant::now();
        while done.load(Ordering::Relaxed) < before + 25 {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "traffic stalled after restarting {name}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let errors = errors.lock().unwrap().clone();
    println!(
        "rolling restart: {} streams completed, {} failed",
        done.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(errors.is_empty(), "streams failed: {errors:#?}");
    forward_child.kill().await?;
    Ok(())
}
