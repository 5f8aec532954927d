//! A ferry network made of real processes on loopback, for whole-system tests:
//! `ferry control`, `ferry relay` and `ferry agent` as child processes (killed when
//! the test ends), services the test runs itself, and helpers to drive the CLI.
#![allow(dead_code)]

pub mod browser;
pub mod victim;
pub mod web;
pub mod web_app;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_proto::api::{
    CreateTokenRequest, CreateUserRequest, CreateWorkspaceRequest, DirectoryRecord,
    DirectoryResponse, MintTokenRequest, MintTokenResponse, NewTokenResponse, RouteResponse,
    UserInfo, WorkspaceInfo,
};
use ferry_proto::token::TokenKind;
use ferry_transport::ControlClient;
use ferry_transport::ControlError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // FERRY_TEST_KEEP=1 keeps the processes' logs for a post-mortem.
        if std::env::var_os("FERRY_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `ferry control` on `listen` with its data in `dir/control`; waits until ready.
async fn spawn_control(dir: &Path, listen: &str) -> Result<(Child, serde_json::Value)> {
    let ready = dir.join("control.json");
    let _ = std::fs::remove_file(&ready);
    let data = dir.join("control");
    let control = spawn_ferry(
        dir,
        "control",
        &[
            "control",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            listen,
            "--name",
            "127.0.0.1",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &[],
    );
    let info = wait_for_json(&ready, Duration::from_secs(20)).await?;
    Ok((control, info))
}

/// Polls until `path` exists and parses as JSON.
pub async fn wait_for_json(path: &Path, timeout: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `ferry ARGS` with logs going to a file in `dir`.
pub fn spawn_ferry(dir: &Path, log_name: &str, args: &[&str], envs: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{log_name}.log"))).expect("log file");
    spawn_ferry_logging(dir, log, args, envs)
}

/// Like [`spawn_ferry`], appending to the log (a restarted process keeps one log).
pub fn spawn_ferry_appending(
    dir: &Path,
    log_name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{log_name}.log")))
        .expect("log file");
    spawn_ferry_logging(dir, log, args, envs)
}

fn spawn_ferry_logging(
    dir: &Path,
    log: std::fs::File,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Child {
    spawn_ferry_as(dir, log, args, envs, None)
}

/// The user sandboxed agents and clients run as (see [`Network::sandbox_clients`]).
pub const SANDBOX_UID: u32 = 65534;

/// Like [`spawn_ferry`], as user `uid` when given.
pub fn spawn_ferry_as(
    dir: &Path,
    log: std::fs::File,
    args: &[&str],
    envs: &[(&str, &str)],
    uid: Option<u32>,
) -> Child {
    let mut cmd = Command::new(FERRY);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.args(args)
        .env("FERRY_LOG", "debug")
        .env("FERRY_CONFIG", dir.join("no-such-config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn ferry")
}

pub struct Relay {
    pub name: String,
    pub region: String,
    pub addr: SocketAddr,
    pub token: String,
    /// The plain-HTTP admin port (/healthz, /readyz).
    pub admin: SocketAddr,
    pub child: Child,
}

/// How often test relays and agents refresh the region map and directory: fast, so
/// that churn settles within a test's patience.
pub const TEST_RELAY_REFRESH_MS: &str = "250";
pub const TEST_AGENT_REFRESH_MS: &str = "500";

/// A control plane and its helpers.
pub struct Network {
    pub dir: TempDir,
    pub control_url: String,
    pub ca_file: PathBuf,
    pub admin_token: String,
    /// The control plane's plain-HTTP admin port (/healthz, /readyz, /metrics).
    pub control_admin: SocketAddr,
    pub control: Child,
    pub relays: Vec<Relay>,
    pub agents: Vec<Child>,
    /// Agents and client commands run as this user when set ([`Network::sandbox_clients`]),
    /// so that firewall rules matching it cut them alone off from the relays.
    pub client_uid: Option<u32>,
    /// Extra environment for the relays started from now on (e.g. `FERRY_DNS_SERVER`).
    pub relay_env: Vec<(String, String)>,
    /// Extra environment for agents and client commands started from now on (e.g.
    /// `HTTPS_PROXY`, `FERRY_DNS_SERVER`).
    pub client_extra_env: Vec<(String, String)>,
}

impl Network {
    pub async fn start(name: &str) -> Result<Network> {
        let dir = TempDir::new(name);
        let (control, info) = spawn_control(&dir.0, "127.0.0.1:0").await?;
        let admin_file = info["admin_token_file"]
            .as_str()
            .context("admin token file")?;
        Ok(Network {
            control_admin: info["admin_addr"].as_str().context("admin")?.parse()?,
            control_url: info["url"].as_str().context("url")?.to_string(),
            ca_file: PathBuf::from(info["ca_file"].as_str().context("ca")?),
            admin_token: std::fs::read_to_string(admin_file)?.trim().to_string(),
            dir,
            control,
            relays: Vec::new(),
            agents: Vec::new(),
            client_uid: None,
            relay_env: Vec::new(),
            client_extra_env: Vec::new(),
        })
    }

    /// From now on, agents and client commands run as `nobody` ([`SANDBOX_UID`]), with
    /// a CA file and a config directory that user can read and write.
    pub fn sandbox_clients(&mut self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let public = self.dir.0.join("ca-public.pem");
        std::fs::copy(&self.ca_file, &public)?;
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(&self.dir.0, std::fs::Permissions::from_mode(0o755))?;
        let home = self.dir.0.join("client-home");
        std::fs::create_dir_all(&home)?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777))?;
        self.ca_file = public;
        self.client_uid = Some(SANDBOX_UID);
        Ok(())
    }

    /// Where client commands keep their config and caches.
    pub fn client_config_path(&self) -> PathBuf {
        match self.client_uid {
            Some(_) => self.dir.0.join("client-home/config.toml"),
            None => self.dir.0.join("no-such-config.toml"),
        }
    }

    /// Starts the control plane again, on the same port and data directory, after the
    /// test stopped it.
    pub async fn restart_control(&mut self) -> Result<()> {
        let port = self
            .control_url
            .rsplit(':')
            .next()
            .context("control URL port")?
            .to_string();
        let (child, info) = spawn_control(&self.dir.0, &format!("127.0.0.1:{port}")).await?;
        anyhow::ensure!(info["url"] == self.control_url.as_str(), "moved: {info}");
        self.control = child;
        self.control_admin = info["admin_addr"].as_str().context("admin")?.parse()?;
        self.admin_token = std::fs::read_to_string(self.dir.0.join("control/admin.token"))?
            .trim()
            .to_string();
        Ok(())
    }

    pub fn control_client(&self) -> ControlClient {
        let ca = std::fs::read_to_string(&self.ca_file).expect("CA file");
        ControlClient::new(&self.control_url, &ca).expect("control client")
    }

    pub async fn mint(
        &self,
        kind: TokenKind,
        subject: &str,
        ttl_secs: Option<u64>,
    ) -> Result<String> {
        let resp: MintTokenResponse = self
            .control_client()
            .post(
                "/api/v1/tokens",
                Some(&self.admin_token),
                &MintTokenRequest {
                    kind,
                    subject: subject.to_string(),
                    ttl_secs,
                },
            )
            .await?;
        Ok(resp.token)
    }

    /// Starts a relay process on `listen` (use port 0 for any) and waits until it listens.
    pub async fn start_relay(
        &mut self,
        name: &str,
        region: &str,
        listen: &str,
    ) -> Result<SocketAddr> {
        self.start_relay_with(name, region, listen, &[]).await
    }

    /// Like [`Network::start_relay`], with extra flags (e.g. `--drain-grace`).
    pub async fn start_relay_with(
        &mut self,
        name: &str,
        region: &str,
        listen: &str,
        extra: &[&str],
    ) -> Result<SocketAddr> {
        let token = self.mint(TokenKind::Relay, name, None).await?;
        self.start_relay_with_token(name, region, listen, &token, extra)
            .await
    }

    /// Starts a relay process with a given token (no control-plane call of our own,
    /// so it works while the control plane is down).
    pub async fn start_relay_with_token(
        &mut self,
        name: &str,
        region: &str,
        listen: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<SocketAddr> {
        let ready = self.dir.0.join(format!("relay-{name}.json"));
        let _ = std::fs::remove_file(&ready);
        // A restarted relay appends to its log, so one file tells the whole story.
        let log_name = format!("relay-{name}");
        let cache = self.dir.0.join("relay-cache");
        let mut args = vec![
            "relay",
            "--name",
            name,
            "--region",
            region,
            "--listen",
            listen,
            "--control",
            &self.control_url,
            "--ca",
            self.ca_file.to_str().unwrap(),
            "--cert-name",
            "127.0.0.1",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            "--refresh-ms",
            TEST_RELAY_REFRESH_MS,
        ];
        args.extend_from_slice(extra);
        let mut envs = vec![("FERRY_RELAY_TOKEN", token)];
        envs.extend(self.relay_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = spawn_ferry_appending(&self.dir.0, &log_name, &args, &envs);
        let info = wait_for_json(&ready, Duration::from_secs(20)).await?;
        let addr: SocketAddr = info["addr"].as_str().context("addr")?.parse()?;
        let admin: SocketAddr = info["admin_addr"].as_str().context("admin")?.parse()?;
        self.relays.retain(|r| r.name != name);
        self.relays.push(Relay {
            name: name.to_string(),
            region: region.to_string(),
            addr,
            token: token.to_string(),
            admin,
            child,
        });
        Ok(addr)
    }

    /// Creates the owner and the workspace `label` (NAME--OWNER) unless they exist,
    /// as an admin would.
    pub async fn ensure_workspace(&self, label: &str) -> Result<()> {
        let label = ferry_proto::WorkspaceLabel::parse(label)?;
        let client = self.control_client();
        let admin = Some(self.admin_token.as_str());
        let user: Result<UserInfo, _> = client
            .post(
                "/api/v1/users",
                admin,
                &CreateUserRequest {
                    name: label.owner().to_string(),
                    password: None,
                },
            )
            .await;
        match user {
            Ok(_) => {}
            Err(ControlError::Api { status: 409, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let ws: Result<WorkspaceInfo, _> = client
            .post(
                "/api/v1/workspaces",
                admin,
                &CreateWorkspaceRequest {
                    name: label.name().to_string(),
                    owner: Some(label.owner().to_string()),
                },
            )
            .await;
        match ws {
            Ok(_) => Ok(()),
            Err(ControlError::Api { status: 409, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A new agent token for `workspace`, creating the workspace if needed.
    pub async fn agent_token(&self, workspace: &str) -> Result<NewTokenResponse> {
        self.ensure_workspace(workspace).await?;
        Ok(self
            .control_client()
            .post(
                &format!("/api/v1/workspaces/{workspace}/agent-tokens"),
                Some(&self.admin_token),
                &CreateTokenRequest {
                    name: "test agent".into(),
                    ttl_secs: None,
                },
            )
            .await?)
    }

    pub fn relay(&self, name: &str) -> &Relay {
        self.relays
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no relay {name}"))
    }

    /// Takes a relay out of the network's list (to kill or signal it).
    pub fn take_relay(&mut self, name: &str) -> Relay {
        let i = self
            .relays
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no relay {name}"));
        self.relays.remove(i)
    }

    /// The control plane's directory (admin view).
    pub async fn directory(&self) -> Result<Vec<DirectoryRecord>> {
        let resp: DirectoryResponse = self
            .control_client()
            .get("/api/v1/directory", Some(&self.admin_token))
            .await?;
        Ok(resp.workspaces)
    }

    /// Polls the directory until `workspace`'s agent is connected to exactly `relays`
    /// (in any order).
    pub async fn wait_for_placement(&self, workspace: &str, relays: &[&str]) -> Result<()> {
        let mut want: Vec<&str> = relays.to_vec();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dir = self.directory().await.unwrap_or_default();
            let mut got: Vec<String> = dir
                .iter()
                .find(|r| r.workspace == workspace)
                .map(|r| r.relays.clone())
                .unwrap_or_default();
            got.sort();
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                // The agent's log says which links it tried and why they failed; the
                // missing relays' logs say whether they saw it and reported it.
                let mut logs = vec![self.log_tail(&format!("agent-{workspace}"), 30)];
                for relay in want.iter().filter(|r| !got.iter().any(|g| g == *r)) {
                    logs.push(self.log_tail(&format!("relay-{relay}"), 30));
                }
                bail!(
                    "{workspace} is on {got:?}, expected {want:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls the directory until `owner` serves `workspace` as its owner. Relays claim
    /// and yield ownership as soon as they see the ring change; the 10 s allowed here
    /// stays under the slower repairs (snapshots every 30 s, agents reconnecting), so
    /// that a relay that does not reassess its role fails the test.
    pub async fn wait_for_owner(&self, workspace: &str, owner: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dir = self.directory().await.unwrap_or_default();
            let record = dir.iter().find(|r| r.workspace == workspace);
            if record.and_then(|r| r.owner.as_deref()) == Some(owner) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{workspace}'s owner is not {owner}: {record:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs `ferry tcp` through the named relay first (`--relay`).
    pub async fn ferry_tcp_via(
        &self,
        relay: &str,
        token: &str,
        workspace: &str,
        target: &str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>, String)> {
        self.ferry_tcp_env(token, workspace, target, input, &[("FERRY_RELAY", relay)])
            .await
    }

    /// Starts an agent process for `workspace` (NAME--OWNER), creating the workspace.
    pub async fn start_agent(&mut self, workspace: &str, extra: &[&str]) -> Result<()> {
        let token = self.agent_token(workspace).await?.token;
        let mut args = vec![
            "agent",
            "--control",
            &self.control_url,
            "--ca",
            self.ca_file.to_str().unwrap(),
        ];
        if !extra.contains(&"--refresh-ms") {
            args.extend_from_slice(&["--refresh-ms", TEST_AGENT_REFRESH_MS]);
        }
        args.extend_from_slice(extra);
        let log = std::fs::File::create(self.dir.0.join(format!("agent-{workspace}.log")))?;
        let child = spawn_ferry_as(
            &self.dir.0,
            log,
            &args,
            &[("FERRY_AGENT_TOKEN", token.as_str())]
                .into_iter()
                .chain(
                    self.client_extra_env
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .collect::<Vec<_>>(),
            self.client_uid,
        );
        self.agents.push(child);
        Ok(())
    }

    /// Like [`Network::start_agent`], waiting for the agent's admin port; returns it.
    pub async fn start_agent_with_admin(
        &mut self,
        workspace: &str,
        extra: &[&str],
    ) -> Result<SocketAddr> {
        let ready = self.dir.0.join(format!("agent-{workspace}.json"));
        let _ = std::fs::remove_file(&ready);
        let mut args: Vec<&str> = vec!["--ready-file", ready.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.start_agent(workspace, &args).await?;
        let info = wait_for_json(&ready, Duration::from_secs(20)).await?;
        Ok(info["admin_addr"].as_str().context("admin")?.parse()?)
    }

    /// The last `lines` lines of process `name`'s log (`NAME.log` in the test's
    /// directory), headed by its path: failures quote it, since the directory is
    /// removed when the test ends.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = self.dir.0.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.reverse();
        format!("{}:\n{}", log.display(), tail.join("\n"))
    }

    /// Polls the control plane until `workspace` has a connected agent.
    pub async fn wait_for_agent(&self, workspace: &str, user_token: &str) -> Result<RouteResponse> {
        let client = self.control_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let route = client
                .get::<RouteResponse>(
                    &format!("/api/v1/workspaces/{workspace}/route"),
                    Some(user_token),
                )
                .await;
            match route {
                Ok(route) => return Ok(route),
                Err(e) if Instant::now() > deadline => {
                    // Agents started by tests log to `agent-WORKSPACE.log`: its end says
                    // why (no relay answered, token refused, ...), and the directory
                    // is gone once the test fails.
                    bail!(
                        "agent for {workspace} never connected: {e}\n{}",
                        self.log_tail(&format!("agent-{workspace}"), 20)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Environment for client commands run as `token`'s user.
    pub fn client_env(&self, token: &str) -> Vec<(String, String)> {
        vec![
            ("FERRY_CONTROL_URL".into(), self.control_url.clone()),
            (
                "FERRY_CA".into(),
                self.ca_file.to_string_lossy().into_owned(),
            ),
            ("FERRY_TOKEN".into(), token.to_string()),
            (
                "FERRY_CONFIG".into(),
                self.client_config_path().to_string_lossy().into_owned(),
            ),
        ]
        .into_iter()
        .chain(self.client_extra_env.iter().cloned())
        .collect()
    }

    /// Runs `ferry tcp WORKSPACE TARGET` with `input` on stdin; returns (success, stdout, stderr).
    pub async fn ferry_tcp(
        &self,
        token: &str,
        workspace: &str,
        target: &str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>, String)> {
        self.ferry_tcp_env(token, workspace, target, input, &[])
            .await
    }

    pub async fn ferry_tcp_env(
        &self,
        token: &str,
        workspace: &str,
        target: &str,
        input: &[u8],
        envs: &[(&str, &str)],
    ) -> Result<(bool, Vec<u8>, String)> {
        let mut cmd = Command::new(FERRY);
        if let Some(uid) = self.client_uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.args(["tcp", workspace, target])
            .envs(self.client_env(token))
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        });
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .context("ferry tcp did not finish within 60s")??;
        let _ = writer.await;
        Ok((
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts `ferry port-forward WORKSPACE 0:PORT`; returns the child and the local address.
    pub async fn port_forward(
        &self,
        token: &str,
        workspace: &str,
        port: u16,
    ) -> Result<(Child, SocketAddr)> {
        self.port_forward_env(token, workspace, port, &[]).await
    }

    pub async fn port_forward_env(
        &self,
        token: &str,
        workspace: &str,
        port: u16,
        envs: &[(&str, &str)],
    ) -> Result<(Child, SocketAddr)> {
        let mut cmd = Command::new(FERRY);
        if let Some(uid) = self.client_uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.args(["port-forward", workspace, &format!("0:{port}")])
            .envs(self.client_env(token))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    bail!("port-forward exited: {}", String::from_utf8_lossy(&seen));
                }
                seen.extend_from_slice(&buf[..n]);
                if let Some(pos) = seen.iter().position(|&b| b == b'\n') {
                    return Ok(String::from_utf8_lossy(&seen[..pos]).into_owned());
                }
            }
        })
        .await
        .context("port-forward did not start within 20s")??;
        // "Forwarding 127.0.0.1:PORT -> ..."
        let addr = line
            .split_whitespace()
            .nth(1)
            .context("unexpected port-forward output")?
            .parse()?;
        Ok((child, addr))
    }
}

/// A TCP echo server on loopback; returns its port.
pub async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// A server that reads until EOF, then answers `got N bytes` and closes: it only
/// answers after the client half-closed.
pub async fn count_after_eof_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tcp.read_to_end(&mut sink).await;
                let _ = tcp
                    .write_all(format!("got {} bytes", sink.len()).as_bytes())
                    .await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    port
}

/// A network with one relay in region `eu`, one agent for `demo--dev` and the user's token.
pub async fn one_relay_network(name: &str) -> Result<(Network, String)> {
    let mut net = Network::start(name).await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    net.start_agent("demo--dev", &[]).await?;
    let user = net.mint(TokenKind::User, "dev", None).await?;
    net.wait_for_agent("demo--dev", &user).await?;
    Ok((net, user))
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// `GET path` on a plain-HTTP admin port; returns the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let code = text
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    Ok(code)
}

/// Random bytes for payload checks.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    (0..len).map(|_| rng.u8(..)).collect()
}

/// `GET path` on a plain-HTTP admin port; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// One series of a scrape: its name, labels and value.
pub type Series = (String, Vec<(String, String)>, f64);

/// One Prometheus scrape, parsed.
pub struct Scrape {
    pub text: String,
    pub series: Vec<Series>,
}

impl Scrape {
    /// The sum of every series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, have, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether any series of `name` with these labels exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.series.iter().any(|(n, have, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        })
    }

    /// The metric names in the scrape.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        ferry_telemetry::metric_names(&self.text)
    }
}

/// Scrapes `/metrics` on an admin port.
pub async fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let (status, text) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics on {addr}: {status}");
    let series = ferry_telemetry::parse_text(&text)
        .into_iter()
        .map(|(series, value)| {
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or(rest);
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series, Vec::new()),
            };
            (name, labels, value)
        })
        .collect();
    Ok(Scrape { text, series })
}

/// The WAN emulator (ferry-wan) in the test process: relays started with
/// [`Network::start_relay_behind`] listen on their region's loopback address and
/// advertise a front on the emulator, so every client and agent reaches them over the
/// link from its own location (by its source address; 127.0.0.1 is `home` in the
/// checked-in topologies).
pub struct Wan {
    pub emulator: ferry_wan::Emulator,
    /// Each relay's advertised front (UDP, for QUIC), by relay name.
    pub fronts: std::collections::HashMap<String, ferry_wan::Front>,
    /// The TCP twin of each front, on the same port number, for the relay's HTTPS.
    pub https_fronts: std::collections::HashMap<String, ferry_wan::Front>,
    cancel: tokio_util::sync::CancellationToken,
}

impl Wan {
    pub fn new(topology_toml: &str) -> Result<Wan> {
        let cancel = tokio_util::sync::CancellationToken::new();
        let topology = ferry_wan::Topology::parse(topology_toml)?;
        Ok(Wan {
            emulator: ferry_wan::Emulator::new(topology, cancel.clone()),
            fronts: Default::default(),
            https_fronts: Default::default(),
            cancel,
        })
    }

    /// The checked-in topology `netbench/topologies/NAME.toml`.
    pub fn checked_in(name: &str) -> Result<Wan> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../netbench/topologies")
            .join(format!("{name}.toml"));
        Wan::new(&std::fs::read_to_string(&path).with_context(|| path.display().to_string())?)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Network {
    /// Starts relay `name` of `region` behind the emulator (the region is a location
    /// of its topology); returns the front address it advertises.
    pub async fn start_relay_behind(
        &mut self,
        wan: &mut Wan,
        name: &str,
        region: &str,
        extra: &[&str],
    ) -> Result<SocketAddr> {
        let ip = wan
            .emulator
            .topology()
            .address_of(region)
            .with_context(|| format!("region {region} is not in the topology"))?;
        let front = match wan.fronts.get(name) {
            Some(f) => f.clone(),
            None => {
                // As in `ferry dev --topology`: the relay's HTTPS is on the TCP port
                // numbered like its QUIC port, so the advertised port serves both.
                let (f, https) = wan
                    .emulator
                    .twin_fronts(region, [127, 0, 0, 1].into())
                    .await?;
                wan.fronts.insert(name.to_string(), f.clone());
                wan.https_fronts.insert(name.to_string(), https);
                f
            }
        };
        let advertise = front.local_addr().to_string();
        let mut args = vec!["--advertise", advertise.as_str()];
        args.extend_from_slice(extra);
        let real = self
            .start_relay_with(name, region, &format!("{ip}:0"), &args)
            .await?;
        front.set_upstream(real);
        wan.https_fronts[name].set_upstream(real);
        Ok(front.local_addr())
    }

    /// Runs a client command (`ferry ARGS`) as `token`'s user with `envs`; returns
    /// (success, stdout, stderr).
    pub async fn ferry_client(
        &self,
        token: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<(bool, String, String)> {
        let mut cmd = Command::new(FERRY);
        cmd.args(args)
            .envs(self.client_env(token))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("ferry {args:?} did not finish within 60s"))??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Polls a process log until it contains `needle`.
pub async fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{} has no `{needle}` after {timeout:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Agents and clients on `relay` by transport (`quic`, `tcp`, `websocket`), as the
/// relay counts them; 0 when it cannot be scraped.
pub async fn on_transport(relay: &Relay, role: &str, transport: &str) -> f64 {
    scrape(relay.admin)
        .await
        .map(|s| {
            s.sum(
                "ferry_relay_connections_by_transport",
                &[("role", role), ("transport", transport)],
            )
        })
        .unwrap_or(0.0)
}

/// Packet-filter rules of one test (an nftables table of its own, on the output hook),
/// removed when dropped. Rules name the test's own ports (and, for sandboxed clients,
/// [`SANDBOX_UID`]), so concurrent tests and the rest of the machine are untouched.
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// `None`, after a loud SKIPPED, where nft is missing or not permitted (outside
    /// CI; under CI that fails the test: `.ci/run` installs nftables).
    pub fn new(test: &str) -> Option<Firewall> {
        static N: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "ferry_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let made = nft(&["add", "table", "inet", &table]).and_then(|()| {
            for (chain, hook) in [("out", "output"), ("in", "input")] {
                nft(&[
                    "add",
                    "chain",
                    "inet",
                    &table,
                    chain,
                    &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
                ])?;
            }
            Ok(())
        });
        match made {
            Ok(()) => Some(Firewall { table }),
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: nftables is not usable ({e:#}), and CI must run this test"
                );
                eprintln!("SKIPPED {test}: nftables is not usable: {e:#}");
                None
            }
        }
    }

    /// Adds a rule to the output chain, e.g. `udp dport 4433 reject` (the sender's
    /// `send` fails at once: a dropped or rejected packet on the output path is EPERM).
    pub fn rule(&self, rule: &str) -> Result<()> {
        self.add("out", rule)
    }

    /// Adds a rule to the input chain.
    pub fn rule_in(&self, rule: &str) -> Result<()> {
        self.add("in", rule)
    }

    fn add(&self, chain: &str, rule: &str) -> Result<()> {
        let mut args = vec!["add", "rule", "inet", &self.table, chain];
        args.extend(rule.split_whitespace());
        nft(&args)
    }

    /// UDP to `port` (from `uid`'s sockets alone, when given) vanishes without a word,
    /// as on a network that blackholes UDP: the send succeeds, the packet is dropped on
    /// its way in. (Marked on the output path, where the sending user is known.)
    pub fn blackhole_udp(&self, port: u16, uid: Option<u32>) -> Result<()> {
        let who = uid.map(|u| format!("meta skuid {u} ")).unwrap_or_default();
        self.rule(&format!("{who}udp dport {port} meta mark set 0x7e"))?;
        self.rule_in(&format!("meta mark 0x7e udp dport {port} drop"))
    }

    /// Removes every rule: the network lets everything through again.
    pub fn clear(&self) -> Result<()> {
        nft(&["flush", "chain", "inet", &self.table, "out"])?;
        nft(&["flush", "chain", "inet", &self.table, "in"])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}

fn nft(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .context("running nft")?;
    anyhow::ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
