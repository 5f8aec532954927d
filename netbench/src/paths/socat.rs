//! The socat path: a plain TCP relay (`socat TCP-LISTEN:...,fork TCP:...`) with no
//! crypto and no multiplexing, the floor any user-space relay can reach on this machine.
//! `backlog=1024` because socat's default listen backlog is 5: with more concurrent
//! connects than that, SYNs are dropped and retried after a second, and `setup`
//! measured ~80 new connections/s instead of ~1400 (socat's limit, not the relay's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::process::Command;

use crate::procs::{free_port, which, Proc};

pub fn find() -> Option<PathBuf> {
    which("socat")
}

pub struct Forward {
    pub addr: SocketAddr,
    pub socat: Proc,
}

impl Forward {
    pub async fn stop(self) {
        self.socat.stop().await;
    }
}

pub async fn start(socat: &Path, tmp: &Path, target_port: u16) -> Result<Forward> {
    let port = free_port()?;
    let mut cmd = Command::new(socat);
    cmd.arg(format!(
        "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024"
    ))
    .arg(format!("TCP:127.0.0.1:{target_port}"));
    let mut proc = Proc::spawn("socat", cmd, tmp.join("socat.log"), false)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = crate::client::check(addr).await;
        if attempt.is_ok() {
            break;
        }
        proc.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "socat on {addr} not working after 10s: {:#}{}",
                attempt.unwrap_err(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Forward { addr, socat: proc })
}
