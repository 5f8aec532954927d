//! The paths under comparison, all ending at the bench server: `direct` (plain
//! loopback TCP), `ferry` (through `ferry port-forward` and a local `ferry dev`
//! network), `ssh` (through `ssh -L` and a private sshd), `socat` (a plain TCP relay),
//! and `rathole`/`bore` (reported as skipped unless installed). Each path is just a
//! loopback address to connect to plus the processes that carry it; setting them up
//! and tearing them down lives here.

mod ferry;
mod socat;
mod ssh;

pub use ferry::{command as ferry_command, locate as locate_ferry};

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::tmp::TempDir;

/// A client program that connects its stdin and stdout to the bench server through a
/// path, started anew for each use (a cold start: new connection, new handshake).
#[derive(Debug, Clone)]
pub struct ColdClient {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub envs: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub env_remove: Vec<&'static str>,
}

impl ColdClient {
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        for var in &self.env_remove {
            cmd.env_remove(var);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

pub struct Options {
    pub ferry_bin: PathBuf,
    pub skip_ssh: bool,
    /// The WAN emulator's topology for ferry's relays, if any.
    pub topology: Option<PathBuf>,
}

/// Whether a path can be measured.
pub enum State {
    Ready(SocketAddr),
    /// Not measured by choice or because tools are missing (not an error).
    Skipped(String),
    /// Should have worked and did not: reported, and the run exits non-zero.
    Failed(String),
}

pub struct Path {
    /// Key in the JSON output.
    pub key: &'static str,
    /// Name in the printed table.
    pub label: &'static str,
    pub state: State,
}

/// Every path plus the processes behind them.
pub struct Paths {
    pub list: Vec<Path>,
    /// Which relay the ferry forward went through.
    pub ferry_relay: String,
    /// `ssh -V`, when ssh was used.
    pub ssh_version: Option<String>,
    /// The WAN emulator topology ferry's relays are behind, if any.
    pub topology: Option<PathBuf>,
    ferry: Option<ferry::Forward>,
    ssh: Option<ssh::Forward>,
    socat: Option<socat::Forward>,
    // Declared last so that it is removed after the processes using it are gone.
    _tmp: TempDir,
}

impl Paths {
    /// Starts every path to `server`. A ferry that does not come up is an error; ssh
    /// problems are recorded on the ssh path so the other numbers are still reported.
    pub async fn setup(opts: &Options, server: SocketAddr) -> Result<Paths> {
        let tmp = TempDir::new("ferry-netbench")?;
        let mut list = vec![Path {
            key: "direct",
            label: "direct",
            state: State::Ready(server),
        }];

        eprintln!("starting ferry dev and ferry port-forward...");
        let forward = ferry::start(
            &opts.ferry_bin,
            tmp.path(),
            server.port(),
            opts.topology.as_deref(),
        )
        .await
        .context("setting up the ferry path")?;
        crate::client::check(forward.addr)
            .await
            .context("first echo through ferry port-forward")?;
        list.push(Path {
            key: "ferry",
            label: "ferry",
            state: State::Ready(forward.addr),
        });
        let ferry_relay = forward.relay.clone();
        crate::client::check(forward.tcp.1)
            .await
            .context("first echo through the forward on the TCP tunnel")?;
        list.push(Path {
            key: "ferry_tcp",
            label: "ferry over TCP",
            state: State::Ready(forward.tcp.1),
        });
        list.push(Path {
            key: "ferry_mesh",
            label: "ferry mesh",
            state: match &forward.mesh {
                Some((_, addr, _)) => {
                    crate::client::check(*addr)
                        .await
                        .context("first echo through the mesh forward")?;
                    State::Ready(*addr)
                }
                None => State::Skipped("skipped (ferry dev has a single region)".into()),
            },
        });

        let mut ssh_version = None;
        let behind_emulator = "skipped (--topology: only ferry crosses the WAN emulator)";
        let (ssh_state, ssh) = if opts.skip_ssh {
            (State::Skipped("skipped (--skip-ssh)".into()), None)
        } else if opts.topology.is_some() {
            (State::Skipped(behind_emulator.into()), None)
        } else if let Some(tools) = ssh::Tools::find() {
            eprintln!("starting sshd and ssh -L...");
            ssh_version = tools.version();
            match ssh::start(&tools, tmp.path(), server.port()).await {
                Ok(fwd) => (State::Ready(fwd.addr), Some(fwd)),
                Err(e) => (State::Failed(format!("{e:#}")), None),
            }
        } else {
            (
                State::Skipped("skipped (ssh/sshd not installed)".into()),
                None,
            )
        };
        list.push(Path {
            key: "ssh",
            label: "ssh -L",
            state: ssh_state,
        });

        let (socat_state, socat) = match socat::find() {
            _ if opts.topology.is_some() => (State::Skipped(behind_emulator.into()), None),
            None => (State::Skipped("skipped (socat not installed)".into()), None),
            Some(bin) => {
                eprintln!("starting socat...");
                match socat::start(&bin, tmp.path(), server.port()).await {
                    Ok(fwd) => (State::Ready(fwd.addr), Some(fwd)),
                    Err(e) => (State::Failed(format!("{e:#}")), None),
                }
            }
        };
        list.push(Path {
            key: "socat",
            label: "socat",
            state: socat_state,
        });
        for (key, bin) in [("rathole", "rathole"), ("bore", "bore")] {
            let reason = match crate::procs::which(bin) {
                None => "skipped (not installed; `cargo install rathole bore-cli`)".to_string(),
                Some(path) => format!(
                    "skipped ({} is installed, but netbench does not drive it yet)",
                    path.display()
                ),
            };
            list.push(Path {
                key,
                label: key,
                state: State::Skipped(reason),
            });
        }

        Ok(Paths {
            list,
            ferry_relay,
            ssh_version,
            topology: opts.topology.clone(),
            ferry: Some(forward),
            ssh,
            socat,
            _tmp: tmp,
        })
    }

    /// The processes that carry path `key` (their CPU is the path's cost); empty for
    /// `direct`, which has none.
    pub fn pids(&self, key: &str) -> Vec<u32> {
        match key {
            // The same processes: the mesh path adds a hop inside `ferry dev`.
            "ferry" | "ferry_mesh" | "ferry_tcp" => {
                self.ferry.as_ref().map(|f| f.pids()).unwrap_or_default()
            }
            "ssh" => self.ssh.as_ref().map(|f| f.pids()).unwrap_or_default(),
            "socat" => self
                .socat
                .as_ref()
                .and_then(|f| f.socat.pid())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// How to run a cold `ferry tcp` client to the bench server (for `setup`).
    pub fn ferry_cold(&self) -> Option<ColdClient> {
        self.ferry.as_ref().map(|f| f.cold_client())
    }

    /// How to run a cold `ssh -W` client to the bench server, when ssh is set up.
    pub fn ssh_cold(&self) -> Option<ColdClient> {
        self.ssh.as_ref().map(|f| f.cold_client())
    }

    /// Kills and reaps every process (clients before the servers they use).
    pub async fn shutdown(mut self) {
        if let Some(socat) = self.socat.take() {
            socat.stop().await;
        }
        if let Some(ssh) = self.ssh.take() {
            ssh.stop().await;
        }
        if let Some(ferry) = self.ferry.take() {
            ferry.stop().await;
        }
    }
}
