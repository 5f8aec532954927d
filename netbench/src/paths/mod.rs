//! The paths under comparison, all ending at the bench server: `direct` (plain
//! loopback TCP), `ferry` (through `ferry port-forward` and a local `ferry dev`
//! network) and `ssh` (through `ssh -L` and a private sshd). Each path is just a
//! loopback address to connect to; setting it up and tearing it down lives here.

mod ferry;
mod ssh;

pub use ferry::locate as locate_ferry;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::tmp::TempDir;

pub struct Options {
    pub ferry_bin: PathBuf,
    pub skip_ssh: bool,
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
    ferry: Option<ferry::Forward>,
    ssh: Option<ssh::Forward>,
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
        let forward = ferry::start(&opts.ferry_bin, tmp.path(), server.port())
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

        let mut ssh_version = None;
        let (ssh_state, ssh) = if opts.skip_ssh {
            (State::Skipped("skipped (--skip-ssh)".into()), None)
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

        Ok(Paths {
            list,
            ferry_relay,
            ssh_version,
            ferry: Some(forward),
            ssh,
            _tmp: tmp,
        })
    }

    /// Kills and reaps every process (clients before the servers they use).
    pub async fn shutdown(mut self) {
        if let Some(ssh) = self.ssh.take() {
            ssh.stop().await;
        }
        if let Some(ferry) = self.ferry.take() {
            ferry.stop().await;
        }
    }
}
