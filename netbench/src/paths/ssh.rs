//! The ssh path, for reference: a private sshd on a free loopback port (own host key,
//! own authorized key, own config; nothing of the system's sshd is used) and `ssh -N
//! -L` to the bench server (and `ssh -W` to it, for cold starts). ssh picks its default
//! cipher, as it would for a user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::procs::{free_port, is_executable, which, Proc};

pub struct Tools {
    ssh: PathBuf,
    sshd: PathBuf,
    keygen: PathBuf,
}

impl Tools {
    pub fn find() -> Option<Tools> {
        // sshd is rarely on a user's PATH; its usual home first.
        let sshd = Some(PathBuf::from("/usr/sbin/sshd"))
            .filter(|p| is_executable(p))
            .or_else(|| which("sshd"))?;
        Some(Tools {
            ssh: which("ssh")?,
            sshd,
            keygen: which("ssh-keygen")?,
        })
    }

    pub fn version(&self) -> Option<String> {
        let out = std::process::Command::new(&self.ssh)
            .arg("-V")
            .output()
            .ok()?;
        // ssh -V prints on stderr.
        let text = String::from_utf8_lossy(if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        })
        .trim()
        .to_string();
        Some(text).filter(|t| !t.is_empty())
    }
}

pub struct Forward {
    pub addr: SocketAddr,
    /// `ssh -W` to the bench server with the same key and sshd: a cold client.
    cold: super::ColdClient,
    sshd: Proc,
    ssh: Proc,
}

impl Forward {
    /// sshd (with its per-connection children) and ssh.
    pub fn pids(&self) -> Vec<u32> {
        [self.sshd.pid(), self.ssh.pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn cold_client(&self) -> super::ColdClient {
        self.cold.clone()
    }

    pub async fn stop(self) {
        self.ssh.stop().await;
        self.sshd.stop().await;
    }
}

async fn keygen(tools: &Tools, path: &Path) -> Result<()> {
    let out = Command::new(&tools.keygen)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ferry-netbench",
            "-f",
        ])
        .arg(path)
        .output()
        .await
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn current_user() -> Result<String> {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .context("running `id -un`")?;
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if user.is_empty() {
        bail!("cannot tell the current user name");
    }
    Ok(user)
}

pub async fn start(tools: &Tools, tmp: &Path, target_port: u16) -> Result<Forward> {
    let dir = tmp.join("ssh");
    std::fs::create_dir(&dir)?;
    let host_key = dir.join("host_key");
    let client_key = dir.join("client_key");
    keygen(tools, &host_key).await?;
    keygen(tools, &client_key).await?;
    let authorized = dir.join("authorized_keys");
    std::fs::copy(client_key.with_extension("pub"), &authorized)?;

    // Debian's sshd refuses to start without its privilege separation directory, which
    // only the packaged service creates. Creating the empty directory is what that
    // service does too.
    let privsep = Path::new("/run/sshd");
    if !privsep.exists() {
        std::fs::create_dir_all(privsep)
            .context("creating /run/sshd, which sshd needs (run as root?)")?;
    }

    let user = current_user()?;
    let sshd_port = free_port()?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {sshd_port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {auth}\n\
             AllowUsers {user}\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             AllowTcpForwarding local\n\
             PermitOpen 127.0.0.1:{target_port}\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             UseDNS no\n\
             LogLevel INFO\n",
            host = host_key.display(),
            pid = dir.join("sshd.pid").display(),
            auth = authorized.display(),
        ),
    )?;
    let mut sshd_cmd = Command::new(&tools.sshd);
    // sshd re-executes itself and so needs an absolute path; `-e` logs to our file.
    sshd_cmd.arg("-D").arg("-e").arg("-f").arg(&config);
    let mut sshd = Proc::spawn("sshd", sshd_cmd, dir.join("sshd.log"), false)?;
    let sshd_addr = SocketAddr::from(([127, 0, 0, 1], sshd_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(sshd_addr).await.is_err() {
        sshd.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "sshd did not listen on {sshd_addr} within 10s{}",
                sshd.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let local_port = free_port()?;
    let common: Vec<std::ffi::OsString> = [
        "-F",
        "/dev/null",
        "-i",
        &client_key.to_string_lossy(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &sshd_port.to_string(),
    ]
    .iter()
    .map(|s| s.into())
    .collect();
    let mut ssh_cmd = Command::new(&tools.ssh);
    ssh_cmd
        .args(["-N", "-L"])
        .arg(format!("127.0.0.1:{local_port}:127.0.0.1:{target_port}"))
        .args(&common)
        .arg(format!("{user}@127.0.0.1"));
    let mut cold_args = vec!["-W".into(), format!("127.0.0.1:{target_port}").into()];
    cold_args.extend(common.iter().cloned());
    cold_args.push(format!("{user}@127.0.0.1").into());
    let cold = super::ColdClient {
        program: tools.ssh.clone(),
        args: cold_args,
        envs: Vec::new(),
        env_remove: Vec::new(),
    };
    let mut ssh = Proc::spawn("ssh -L", ssh_cmd, dir.join("ssh.log"), false)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], local_port));
    // The forward is usable once ssh listens and one echo makes it to the server and back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = crate::client::check(addr).await;
        if attempt.is_ok() {
            break;
        }
        ssh.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "ssh -L on {addr} not working after 20s: {:#}{}",
                attempt.unwrap_err(),
                ssh.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Forward {
        addr,
        cold,
        sshd,
        ssh,
    })
}
