//! Child processes (ferry, sshd, ssh, socat) that cannot outlive the benchmark: each is killed
//! when its handle is dropped (error paths, Ctrl-C) and killed and reaped explicitly on
//! the normal path. Their output goes to a log file whose tail explains a failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, ChildStdout, Command};

pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout unless `pipe_stdout`) appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, pipe_stdout: bool) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails (with the end of the log) if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Polls until this process has written the JSON file `path` (ferry's
    /// `--ready-file`, written atomically), failing early if the process exits.
    pub async fn wait_for_json(
        &mut self,
        path: &std::path::Path,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                return serde_json::from_str(&text)
                    .with_context(|| format!("parsing {} from {}", path.display(), self.name));
            }
            self.ensure_running()?;
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} was not ready after {timeout:?}{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the log, formatted to append to an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; its output ended with:\n  {tail}")
        }
    }

    /// Kills the process and waits until it is reaped.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "warning: {} (pid {:?}) did not exit after SIGKILL",
                self.name,
                self.child.id()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // kill_on_drop does the same; being explicit costs nothing and survives refactors.
        let _ = self.child.start_kill();
    }
}

/// Finds an executable by name on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port that was free a moment ago (for programs that cannot report the
/// port they bound, like sshd and ssh -L). The small race is acceptable here.
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
