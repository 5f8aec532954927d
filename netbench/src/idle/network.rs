//! The network under test for `idle` and `scale`: a `ferry control` and one `ferry relay`, each its
//! own process (so the relay's memory and CPU are its alone), started with
//! `--ready-file` on loopback port 0, and the agent tokens the simulated agents use,
//! minted through the control plane's API. Both processes die with this value.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::api::{MintTokenRequest, MintTokenResponse};
use ferry_proto::token::TokenKind;
use ferry_transport::ControlClient;
use tokio::task::JoinSet;

use crate::paths::ferry_command;
use crate::procs::Proc;
use crate::tmp::TempDir;

/// The name relays' certificates carry here; agents check it in the TLS handshake.
pub const RELAY_SERVER_NAME: &str = "127.0.0.1";

pub struct Network {
    pub ca_pem: String,
    pub relay_addr: SocketAddr,
    pub control_url: String,
    /// The control plane's plain-HTTP admin port (`/metrics`).
    pub control_admin: SocketAddr,
    control_client: ControlClient,
    admin_token: String,
    control: Proc,
    relay: Proc,
    // Declared last: removed after the processes using it are gone.
    _tmp: TempDir,
}

impl Network {
    pub async fn start(ferry: &Path) -> Result<Network> {
        let tmp = TempDir::new("ferry-netbench-idle")?;
        let no_config = tmp.path().join("no-config.toml");
        let ready = tmp.path().join("control.json");
        let mut cmd = ferry_command(ferry, &no_config);
        cmd.arg("control")
            .arg("--data-dir")
            .arg(tmp.path().join("control"))
            .args(["--listen", "127.0.0.1:0", "--name", "127.0.0.1"])
            .arg("--ready-file")
            .arg(&ready);
        let mut control = Proc::spawn("ferry control", cmd, tmp.path().join("control.log"), false)?;
        let info = control
            .wait_for_json(&ready, Duration::from_secs(20))
            .await?;
        let field = |name: &str| {
            info[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("the control plane's ready file has no `{name}`"))
        };
        let url = field("url")?;
        let ca_file = field("ca_file")?;
        let ca_pem = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("reading the CA {ca_file}"))?;
        let admin_token = std::fs::read_to_string(field("admin_token_file")?)
            .context("reading the admin token")?
            .trim()
            .to_string();
        let control_client = ControlClient::new(&url, &ca_pem)?;
        let control_admin: SocketAddr = field("admin_addr")?
            .parse()
            .context("the control plane's admin address")?;

        let relay_token = mint(&control_client, &admin_token, TokenKind::Relay, "idle-1").await?;
        let ready = tmp.path().join("relay.json");
        let mut cmd = ferry_command(ferry, &no_config);
        cmd.args([
            "relay",
            "--name",
            "idle-1",
            "--region",
            "bench",
            "--listen",
            "127.0.0.1:0",
            "--control",
            &url,
            "--ca",
            &ca_file,
            "--cert-name",
            RELAY_SERVER_NAME,
            "--ready-file",
        ])
        .arg(&ready)
        .env("FERRY_RELAY_TOKEN", relay_token);
        let mut relay = Proc::spawn("ferry relay", cmd, tmp.path().join("relay.log"), false)?;
        let info = relay.wait_for_json(&ready, Duration::from_secs(20)).await?;
        let relay_addr: SocketAddr = info["addr"]
            .as_str()
            .context("the relay's ready file has no `addr`")?
            .parse()
            .context("the relay's address")?;
        Ok(Network {
            ca_pem,
            relay_addr,
            control_url: url,
            control_admin,
            control_client,
            admin_token,
            control,
            relay,
            _tmp: tmp,
        })
    }

    pub fn control_pid(&self) -> Option<u32> {
        self.control.pid()
    }

    pub fn relay_pid(&self) -> Option<u32> {
        self.relay.pid()
    }

    /// Fails (with its log) if the relay died: numbers of a dead relay mean nothing.
    pub fn ensure_relay_running(&mut self) -> Result<()> {
        self.relay.ensure_running()
    }

    /// Fails (with its log) if the control plane died.
    pub fn ensure_control_running(&mut self) -> Result<()> {
        self.control.ensure_running()
    }

    pub fn control_client(&self) -> &ControlClient {
        &self.control_client
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Lines logged at ERROR level so far by the control plane and the relay.
    pub fn error_lines(&self) -> Vec<String> {
        [self.control.log_path(), self.relay.log_path()]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter(|l| l.contains(" ERROR "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Agent tokens for `subjects` (NAME--OWNER), `concurrency` requests at a time.
    pub async fn mint_agents(
        &self,
        subjects: &[String],
        concurrency: usize,
    ) -> Result<Vec<String>> {
        let client = Arc::new(self.control_client.clone());
        let admin = Arc::new(self.admin_token.clone());
        let mut tokens = vec![String::new(); subjects.len()];
        let mut set = JoinSet::new();
        let mut next = 0;
        loop {
            while set.len() < concurrency.max(1) && next < subjects.len() {
                let (client, admin, subject) =
                    (client.clone(), admin.clone(), subjects[next].clone());
                let i = next;
                set.spawn(async move {
                    let token = mint(&client, &admin, TokenKind::Agent, &subject).await?;
                    anyhow::Ok((i, token))
                });
                next += 1;
            }
            match set.join_next().await {
                Some(done) => {
                    let (i, token) = done.context("minting task panicked")??;
                    tokens[i] = token;
                }
                None => break,
            }
        }
        Ok(tokens)
    }

    pub async fn stop(self) {
        self.relay.stop().await;
        self.control.stop().await;
    }
}

async fn mint(
    client: &ControlClient,
    admin: &str,
    kind: TokenKind,
    subject: &str,
) -> Result<String> {
    let resp: MintTokenResponse = client
        .post(
            "/api/v1/tokens",
            Some(admin),
            &MintTokenRequest {
                kind,
                subject: subject.to_string(),
                ttl_secs: None,
            },
        )
        .await
        .with_context(|| format!("minting a {kind:?} token for {subject}"))?;
    Ok(resp.token)
}
