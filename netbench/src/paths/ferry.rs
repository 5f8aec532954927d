//! The ferry path: `ferry dev` (control plane, relays, demo agent in one process) and
//! `ferry port-forward` to the bench server's port, both run as the real binary so the
//! numbers include everything a user's traffic goes through.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::procs::{is_executable, Proc};

pub struct Forward {
    pub addr: SocketAddr,
    pub relay: String,
    workspace: String,
    target_port: u16,
    ferry: PathBuf,
    config: PathBuf,
    dev: Proc,
    forward: Proc,
    /// The forward through another region's relay: (process, address, relay).
    pub mesh: Option<(Proc, SocketAddr, String)>,
    /// A forward whose connection to its relay runs in the TCP tunnel
    /// (`--transport tcp`, as on a network that blocks UDP): (process, address).
    pub tcp: (Proc, SocketAddr),
}

/// Variables that would point a ferry command at the user's own network.
const USER_VARS: [&str; 4] = [
    "FERRY_CONTROL_URL",
    "FERRY_CA",
    "FERRY_TOKEN",
    "FERRY_DATA_DIR",
];

impl Forward {
    /// `ferry dev` (control plane, relays, agent) and `ferry port-forward`.
    pub fn pids(&self) -> Vec<u32> {
        [
            self.dev.pid(),
            self.forward.pid(),
            self.mesh.as_ref().and_then(|(p, _, _)| p.pid()),
            self.tcp.0.pid(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// `ferry tcp WORKSPACE PORT` against the same network: a new QUIC connection and
    /// route lookup each time.
    pub fn cold_client(&self) -> super::ColdClient {
        let mut envs = vec![("FERRY_CONFIG".into(), self.config.clone().into_os_string())];
        if std::env::var_os("FERRY_LOG").is_none() {
            envs.push(("FERRY_LOG".into(), "warn".into()));
        }
        super::ColdClient {
            program: self.ferry.clone(),
            args: vec![
                "tcp".into(),
                self.workspace.clone().into(),
                self.target_port.to_string().into(),
            ],
            envs,
            env_remove: USER_VARS.to_vec(),
        }
    }

    pub async fn stop(self) {
        if let Some((mesh, _, _)) = self.mesh {
            mesh.stop().await;
        }
        self.tcp.0.stop().await;
        self.forward.stop().await;
        self.dev.stop().await;
    }
}

/// The `ferry` binary: `--ferry`, else the one next to this executable (both built
/// into the same target directory), else a `target/` build under the working directory.
pub fn locate(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = flag {
        ensure!(
            is_executable(&path),
            "--ferry {}: not an executable file",
            path.display()
        );
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        candidates.push(exe.with_file_name("ferry"));
    }
    candidates.push(PathBuf::from("target/release/ferry"));
    candidates.push(PathBuf::from("target/debug/ferry"));
    if let Some(found) = candidates.iter().find(|p| is_executable(p)) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no ferry binary found (looked at {}): build it with `cargo build --release -p ferry` or pass --ferry PATH",
        looked.join(", ")
    )
}

/// A ferry command whose settings come only from `config`, never from the user's
/// environment or their real ~/.config/ferry.
pub fn command(ferry: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(ferry);
    for var in USER_VARS {
        cmd.env_remove(var);
    }
    cmd.env("FERRY_CONFIG", config);
    // Info-level logs per connection are noise in a benchmark; keep a user's choice.
    if std::env::var_os("FERRY_LOG").is_none() {
        cmd.env("FERRY_LOG", "warn");
    }
    cmd
}

pub async fn start(
    ferry: &Path,
    tmp: &Path,
    target_port: u16,
    topology: Option<&Path>,
) -> Result<Forward> {
    let config = tmp.join("config.toml");
    let ready = tmp.join("ready.json");
    let mut dev_cmd = command(ferry, &config);
    dev_cmd
        .arg("dev")
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .args([
            "--control-port",
            "0",
            "--echo-port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--ready-file")
        .arg(&ready);
    if let Some(topology) = topology {
        dev_cmd.arg("--topology").arg(topology);
    }
    let mut dev = Proc::spawn("ferry dev", dev_cmd, tmp.join("dev.log"), false)?;

    // dev writes the ready file (atomically) once the agent is connected.
    let ready_json = dev.wait_for_json(&ready, Duration::from_secs(30)).await?;
    let workspace = ready_json["workspace"]
        .as_str()
        .context("the ready file names no workspace")?
        .to_string();

    let (forward, addr, relay) =
        spawn_forward(ferry, &config, tmp, &workspace, target_port, None, false).await?;
    let (tcp_forward, tcp_addr, _) = spawn_forward(
        ferry,
        &config,
        tmp,
        &workspace,
        target_port,
        Some(&relay),
        true,
    )
    .await?;
    // A second forward entering through a relay of another region: every stream takes
    // one mesh hop to the agent's relay, the cost the mesh adds.
    let relays: Vec<(String, String)> = ready_json["relays"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                r["region"].as_str()?.to_string(),
            ))
        })
        .collect();
    let home = relays
        .iter()
        .find(|(name, _)| *name == relay)
        .map(|(_, region)| region.clone());
    let other = relays
        .iter()
        .find(|(_, region)| Some(region) != home.as_ref())
        .map(|(name, _)| name.clone());
    let mesh = match other {
        Some(other) => {
            let (proc_, mesh_addr, mesh_relay) = spawn_forward(
                ferry,
                &config,
                tmp,
                &workspace,
                target_port,
                Some(&other),
                false,
            )
            .await?;
            ensure!(
                mesh_relay == other,
                "the mesh forward went through {mesh_relay}, not {other}"
            );
            Some((proc_, mesh_addr, mesh_relay))
        }
        None => None,
    };
    Ok(Forward {
        addr,
        relay,
        workspace,
        target_port,
        ferry: ferry.to_path_buf(),
        config,
        dev,
        forward,
        mesh,
        tcp: (tcp_forward, tcp_addr),
    })
}

/// Starts `ferry port-forward` (through `via`, when given) and reads its address and relay.
async fn spawn_forward(
    ferry: &Path,
    config: &Path,
    tmp: &Path,
    workspace: &str,
    target_port: u16,
    via: Option<&str>,
    tunnel: bool,
) -> Result<(Proc, SocketAddr, String)> {
    let mut fwd_cmd = command(ferry, config);
    if let Some(relay) = via {
        fwd_cmd.env("FERRY_RELAY", relay);
    }
    if tunnel {
        fwd_cmd.env("FERRY_TRANSPORT", "tcp");
    }
    fwd_cmd.args(["port-forward", workspace, &format!("0:{target_port}")]);
    let mut forward = Proc::spawn(
        "ferry port-forward",
        fwd_cmd,
        tmp.join(match (via, tunnel) {
            (_, true) => "port-forward-tcp.log".into(),
            (Some(r), false) => format!("port-forward-via-{r}.log"),
            (None, false) => "port-forward.log".into(),
        }),
        true,
    )?;
    let stdout = forward.take_stdout().context("no stdout pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("Forwarding ") {
                return Ok(Some(line));
            }
        }
        anyhow::Ok(None)
    })
    .await;
    let line = match line {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(_)) => bail!(
            "ferry port-forward printed no `Forwarding` line{}",
            forward.log_tail()
        ),
        Err(_) => bail!(
            "ferry port-forward did not start within 20s{}",
            forward.log_tail()
        ),
    };
    // Keep draining stdout: a closed pipe would make a later print fail in the child.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (addr, relay) = parse_forwarding(&line)?;
    Ok((forward, addr, relay))
}
/// `Forwarding 127.0.0.1:NNNNN -> demo--dev:PORT (via relay eu-1)` → address, relay.
fn parse_forwarding(line: &str) -> Result<(SocketAddr, String)> {
    let local = line
        .strip_prefix("Forwarding ")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("unexpected line from port-forward: {line}"))?;
    let addr: SocketAddr = local
        .parse()
        .with_context(|| format!("bad address in: {line}"))?;
    ensure!(
        addr.ip().is_loopback(),
        "port-forward listens on {addr}, not loopback"
    );
    let relay = line
        .rsplit_once("via relay ")
        .map(|(_, r)| r.trim_end_matches(')').to_string())
        .unwrap_or_default();
    Ok((SocketAddr::from(([127, 0, 0, 1], addr.port())), relay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forwarding_line() {
        let (addr, relay) =
            parse_forwarding("Forwarding 127.0.0.1:40123 -> demo--dev:5555 (via relay eu-1)")
                .unwrap();
        assert_eq!(addr, "127.0.0.1:40123".parse().unwrap());
        assert_eq!(relay, "eu-1");
        assert!(parse_forwarding("Forwarding 0.0.0.0:1 -> x:2").is_err());
    }
}
