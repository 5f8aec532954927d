//! A legitimate user watched while an attack runs: an echo session held open through
//! `ferry port-forward` (round trips every 100 ms), an app request through the relay's
//! HTTPS side every second, and the relay's resident memory. Abuse tests start one,
//! run a bounded attack from another loopback address, and assert on [`Watch`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ferry_proto::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use super::web::WebClient;
use super::web_app::app_server;
use super::{echo_server, Network};

pub const APPS: &str = "apps.eu.localhost";

/// The attacker's source address: loopback, but not the victim's 127.0.0.1, so that
/// per-address limits tell them apart as they would two hosts.
pub const ATTACKER_IP: &str = "127.0.0.2";

/// A network with one web relay `eu-1`, an agent for `demo--dev`, and user `dev`
/// with an echo session open through the relay and a signed-in browser.
pub struct Victim {
    pub net: Network,
    pub relay: SocketAddr,
    pub user: String,
    pub echo_port: u16,
    app_url: String,
    browser: WebClient,
    _forward: Child,
    held: TcpStream,
}

/// What the legitimate user saw during an attack.
#[derive(Debug, Default)]
pub struct Watch {
    pub echoes: usize,
    pub slowest_echo: Duration,
    pub app_requests: usize,
    pub slowest_app: Duration,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
}

impl Watch {
    /// Fails unless every round trip and app request stayed under its bound and the
    /// relay grew by at most `max_growth_kib` of resident memory.
    pub fn assert_unharmed(&self, echo_bound: Duration, app_bound: Duration, max_growth_kib: u64) {
        assert!(self.echoes >= 5, "too few echoes to judge: {self:?}");
        assert!(
            self.app_requests >= 1,
            "no app request during the attack: {self:?}"
        );
        assert!(
            self.slowest_echo < echo_bound,
            "echo too slow during the attack: {self:?}"
        );
        assert!(
            self.slowest_app < app_bound,
            "app request too slow during the attack: {self:?}"
        );
        let growth = self.rss_peak_kib.saturating_sub(self.rss_before_kib);
        assert!(
            growth <= max_growth_kib,
            "the relay grew by {growth} KiB (limit {max_growth_kib}): {self:?}"
        );
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

impl Victim {
    pub async fn start(name: &str, relay_flags: &[&str]) -> Result<Victim> {
        let mut net = Network::start(name).await?;
        let mut flags = vec!["--apps-domain", APPS];
        flags.extend_from_slice(relay_flags);
        let relay = net
            .start_relay_with("eu-1", "eu", "127.0.0.1:0", &flags)
            .await?;
        net.start_agent("demo--dev", &[]).await?;
        let user = net.mint(TokenKind::User, "dev", None).await?;
        net.wait_for_agent("demo--dev", &user).await?;
        let app_port = app_server().await;
        let ca = std::fs::read_to_string(&net.ca_file)?;
        let browser = WebClient::new(&ca, &[b"h2", b"http/1.1"]);
        browser.sign_in(&net.control_url, &user).await?;
        let app_url = format!(
            "https://{app_port}--demo--dev.{APPS}:{}/hello",
            relay.port()
        );
        let echo_port = echo_server().await;
        let (forward, local) = net
            .port_forward_env(&user, "demo--dev", echo_port, &[("FERRY_RELAY", "eu-1")])
            .await?;
        let held = TcpStream::connect(local).await?;
        let mut victim = Victim {
            net,
            relay,
            user,
            echo_port,
            app_url,
            browser,
            _forward: forward,
            held,
        };
        victim.echo().await.context("first echo")?;
        victim.app_request().await.context("first app request")?;
        Ok(victim)
    }

    pub fn relay_pid(&self) -> u32 {
        self.net.relay("eu-1").child.id().expect("the relay runs")
    }

    pub fn https_addr(&self) -> SocketAddr {
        // The HTTPS side listens on the TCP port numbered like the QUIC port.
        self.relay
    }

    /// One 16-byte round trip on the held echo session.
    pub async fn echo(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let msg = fastrand::u128(..).to_le_bytes();
        let mut back = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(10), async {
            self.held.write_all(&msg).await?;
            self.held.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .context("no echo within 10 s")??;
        ensure!(back == msg, "the echo came back changed");
        Ok(start.elapsed())
    }

    /// One GET of the app through the relay's HTTPS side (cookie already held).
    pub async fn app_request(&self) -> Result<Duration> {
        let start = Instant::now();
        let pages = tokio::time::timeout(
            Duration::from_secs(15),
            self.browser.get_following(&self.app_url),
        )
        .await
        .context("no app response within 15 s")??;
        let last = pages.last().context("no page")?;
        if last.status != hyper::StatusCode::OK {
            bail!("app answered {}: {}", last.status, last.text());
        }
        Ok(start.elapsed())
    }

    /// A new `ferry tcp` session of the user's through `eu-1` (a new QUIC handshake,
    /// hello and stream), as a future that owns what it needs, so that an attack can
    /// run it while it still holds its connections.
    pub fn new_session(
        &self,
        payload: &'static [u8],
    ) -> impl std::future::Future<Output = Result<Duration>> + Send + 'static {
        let envs = self.net.client_env(&self.user);
        let target = self.echo_port.to_string();
        async move {
            use std::process::Stdio;
            let start = Instant::now();
            let mut child = tokio::process::Command::new(super::FERRY)
                .args(["tcp", "demo--dev", &target])
                .envs(envs)
                .env("FERRY_RELAY", "eu-1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(payload).await?;
            drop(stdin);
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .context("ferry tcp did not finish within 30 s")??;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(out.status.success(), "ferry tcp failed: {err}");
            ensure!(
                out.stdout == payload,
                "ferry tcp echoed {:?}: {err}",
                out.stdout
            );
            Ok(start.elapsed())
        }
    }

    /// Runs `attack` to its end while watching the user's echo, app and the relay's
    /// memory; returns the attack's result and what was seen.
    pub async fn during<T: Send + 'static>(
        &mut self,
        attack: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<(T, Watch)> {
        let pid = self.relay_pid();
        let mut watch = Watch {
            rss_before_kib: rss_kib(pid)?,
            ..Default::default()
        };
        watch.rss_peak_kib = watch.rss_before_kib;
        let attack = tokio::spawn(attack);
        // An app request at once, then about every second.
        let mut app_due = Instant::now();
        while !attack.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            watch.rss_peak_kib = watch.rss_peak_kib.max(rss_kib(pid)?);
            let took = self.echo().await.context("echo during the attack")?;
            watch.echoes += 1;
            watch.slowest_echo = watch.slowest_echo.max(took);
            if Instant::now() >= app_due {
                app_due = Instant::now() + Duration::from_secs(1);
                let took = self
                    .app_request()
                    .await
                    .context("app request during the attack")?;
                watch.app_requests += 1;
                watch.slowest_app = watch.slowest_app.max(took);
            }
        }
        let outcome = attack.await.context("the attack panicked")??;
        watch.rss_peak_kib = watch.rss_peak_kib.max(rss_kib(pid)?);
        eprintln!("during the attack: {watch:?}");
        Ok((outcome, watch))
    }
}
