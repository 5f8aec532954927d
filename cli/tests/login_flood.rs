//! A login flood on the control plane, with real processes on loopback: hundreds of
//! wrong-password logins at once from one address are answered early with 429
//! `rate_limited` (only a handful reach the CPU- and memory-heavy argon2 check), and
//! another user's login from another address keeps working, with bounded latency,
//! while the control plane's memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::victim::{rss_kib, ATTACKER_IP};
use common::*;
use ferry_proto::api::{CreateUserRequest, LoginRequest, NewTokenResponse, UserInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const PASSWORD: &str = "correct horse battery staple";

/// `POST /api/v1/login` from the attacker's address, on a connection of its own (as
/// a flood would); returns the status and the body.
async fn login_from_attacker(
    tls: Arc<rustls::ClientConfig>,
    control: SocketAddr,
    user: &str,
    password: &str,
) -> Result<(u16, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ATTACKER_IP.parse()?, 0))?;
    let tcp = socket.connect(control).await?;
    let name = rustls::pki_types::ServerName::try_from(control.ip().to_string())?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let body = serde_json::to_string(&LoginRequest {
        user: user.into(),
        password: password.into(),
    })?;
    let request = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {control}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A server that closes without close_notify is fine here: what came is enough.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_turned_away_early_and_other_users_still_log_in() -> Result<()> {
    let net = Network::start("login-flood").await?;
    let client = net.control_client();
    for name in ["alice", "bob"] {
        let _: UserInfo = client
            .post(
                "/api/v1/users",
                Some(&net.admin_token),
                &CreateUserRequest {
                    name: name.into(),
                    password: Some(PASSWORD.into()),
                },
            )
            .await?;
    }
    let bob_login = || async {
        let start = Instant::now();
        let _: NewTokenResponse = client
            .post(
                "/api/v1/login",
                None,
                &LoginRequest {
                    user: "bob".into(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .context("bob's login")?;
        Ok::<_, anyhow::Error>(start.elapsed())
    };
    let alone = bob_login().await?;
    let pid = net.control.id().context("control plane pid")?;
    let rss_before = rss_kib(pid)?;

    let control: SocketAddr = net
        .control_url
        .trim_start_matches("https://")
        .parse()
        .context("control URL")?;
    let ca = std::fs::read_to_string(&net.ca_file)?;
    let tls = Arc::new(ferry_certs::client_config(&ca, &[b"http/1.1"])?);
    // 300 wrong-password logins for alice, 100 in flight at a time.
    let attack = tokio::spawn(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(100));
        let mut logins = tokio::task::JoinSet::new();
        for i in 0..300 {
            let permit = gate.clone().acquire_owned().await?;
            let tls = tls.clone();
            logins.spawn(async move {
                let r =
                    login_from_attacker(tls, control, "alice", &format!("guess number {i}")).await;
                drop(permit);
                r
            });
        }
        let mut answers = Vec::new();
        while let Some(r) = logins.join_next().await {
            answers.push(r??);
        }
        Ok::<_, anyhow::Error>(answers)
    });
    let mut bob = Vec::new();
    let mut rss_peak = rss_before;
    while !attack.is_finished() {
        bob.push(bob_login().await?);
        rss_peak = rss_peak.max(rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answers = attack.await??;
    rss_peak = rss_peak.max(rss_kib(pid)?);
    let count = |status: u16| answers.iter().filter(|(s, _)| *s == status).count();
    let (checked, limited, overloaded) = (count(401), count(429), count(503));
    let slowest_bob = bob.iter().max().copied().unwrap_or_default();
    eprintln!(
        "login flood: {checked} checked (401), {limited} rate limited (429), {overloaded} overloaded (503); \
         bob alone {alone:?}, during the flood {} logins, slowest {slowest_bob:?}; control RSS {rss_before} -> peak {rss_peak} KiB",
        bob.len()
    );
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|(s, _)| ![401, 429, 503].contains(s))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == 429)
            .all(|(_, body)| body.contains("rate_limited")),
        "429s carry the typed code"
    );
    // The account's failure limit (5) and the address's checks in flight (2) bound
    // the argon2 checks the flood got; without the gate, all 100 in flight would pass
    // the failure count before any had failed.
    assert!(checked <= 24, "{checked} wrong passwords were checked");
    assert!(limited >= 250, "{limited}");
    assert!(!bob.is_empty(), "bob logged in during the flood");
    assert!(
        slowest_bob < Duration::from_secs(5).max(alone * 10),
        "bob's login slowed to {slowest_bob:?} (alone {alone:?})"
    );
    // Measured: 100-140 MiB (a second hashing thread's 19 MiB of argon2 memory, and
    // the flood's 300 TLS connections). Without the gate the 100 checks in flight
    // would take 19 MiB each, about 1.9 GiB.
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < 256 * 1024,
        "the control plane grew by {growth} KiB"
    );
    Ok(())
}
