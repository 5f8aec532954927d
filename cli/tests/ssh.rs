//! SSH through ferry with real OpenSSH: a private `sshd` on a loopback port inside the
//! "workspace", the system's `ssh` and `scp` on the developer's side.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

const SSHD: &str = "/usr/sbin/sshd";

/// Whether OpenSSH is here; in CI its absence is a failure, locally a loud skip.
fn openssh_or_skip(test: &str) -> bool {
    let present = Path::new(SSHD).exists() && which("ssh") && which("scp") && which("ssh-keygen");
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: OpenSSH (openssh-server, openssh-client) is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED {test}: OpenSSH is not installed (apt-get install openssh-server openssh-client)");
    }
    present
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn current_user() -> String {
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A private sshd with a fresh host key, accepting one fresh client key.
struct Sshd {
    port: u16,
    client_key: PathBuf,
    _child: Child,
}

async fn keygen(path: &Path) -> Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "ssh-keygen failed");
    Ok(())
}

async fn start_sshd(dir: &Path) -> Result<Sshd> {
    keygen(&dir.join("host_key")).await?;
    let client_key = dir.join("id_ed25519");
    keygen(&client_key).await?;
    std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))?;
    // sshd's privilege separation directory; absent on a machine where sshd never ran.
    let _ = std::fs::create_dir_all("/run/sshd");
    // sshd cannot bind port 0 and report it; take a free port from the kernel and
    // retry on the rare race where someone else takes it first.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 Subsystem sftp internal-sftp\n",
                dir = dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting sshd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Sshd {
                    port,
                    client_key,
                    _child: child,
                });
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    bail!(
        "sshd did not start: {}",
        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    )
}

fn ssh_options(key: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
    ]
}

async fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{what} did not finish within 120s"))??;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_scp_and_config_ssh_work_through_ferry_with_real_openssh() -> Result<()> {
    if !openssh_or_skip("ssh_scp_and_config_ssh_work_through_ferry_with_real_openssh") {
        return Ok(());
    }
    let mut net = Network::start("ssh").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    let sshd = start_sshd(&net.dir.0).await?;
    let target = format!("127.0.0.1:{}", sshd.port);
    net.start_agent("demo--dev", &["--ssh-target", &target])
        .await?;
    let user = net
        .mint(ferry_proto::token::TokenKind::User, "dev", None)
        .await?;
    net.wait_for_agent("demo--dev", &user).await?;
    let login = current_user();
    let options = ssh_options(&sshd.client_key);

    // ferry ssh WORKSPACE -- COMMAND
    let mut cmd = Command::new(FERRY);
    cmd.args(["ssh", "-l", &login])
        .args(&options)
        .args(["demo", "--", "echo", "ok", "from", "$((6*7))"])
        .envs(net.client_env(&user));
    let out = run(cmd, "ferry ssh").await?;
    assert_eq!(String::from_utf8_lossy(&out), "ok from 42\n");

    // scp a 32 MiB file with ferry as ProxyCommand, then check it byte for byte.
    let mut data = vec![0u8; 32 * 1024 * 1024];
    fastrand::Rng::with_seed(32).fill(&mut data);
    let src = net.dir.0.join("upload.bin");
    let dst = net.dir.0.join("arrived.bin");
    std::fs::write(&src, &data)?;
    let mut cmd = Command::new("scp");
    cmd.args([
        "-q",
        "-o",
        &format!("ProxyCommand={FERRY} ssh --stdio demo"),
    ])
    .args(&options)
    .arg(&src)
    .arg(format!("{login}@demo.ferry:{}", dst.display()))
    .envs(net.client_env(&user));
    run(cmd, "scp").await?;
    let arrived = std::fs::read(&dst)?;
    assert_eq!(arrived.len(), data.len(), "scp size");
    assert_eq!(
        Sha256::digest(&arrived),
        Sha256::digest(&data),
        "scp checksum"
    );

    // config-ssh writes a block after which plain `ssh demo.ferry` works.
    let ssh_config = net.dir.0.join("ssh_config");
    std::fs::write(&ssh_config, "Host other\n    User nobody\n")?;
    for _ in 0..2 {
        let mut cmd = Command::new(FERRY);
        cmd.args(["config-ssh", "--ssh-config"]).arg(&ssh_config);
        run(cmd, "ferry config-ssh").await?;
    }
    let text = std::fs::read_to_string(&ssh_config)?;
    assert_eq!(text.matches("Host *.ferry").count(), 1, "{text}");
    assert!(text.ends_with("Host other\n    User nobody\n"), "{text}");
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg(&ssh_config)
        .args(&options)
        .args(["-l", &login, "demo.ferry", "echo", "via-config"])
        .envs(net.client_env(&user));
    let out = run(cmd, "ssh demo.ferry").await?;
    assert_eq!(String::from_utf8_lossy(&out), "via-config\n");
    Ok(())
}

/// Where UDP to the relay vanishes, `ferry ssh` still works: the CLI and the agent
/// reach the relay through the TCP tunnel on its HTTPS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_ssh_works_through_the_tcp_tunnel_when_udp_is_dropped() -> Result<()> {
    let test = "ferry_ssh_works_through_the_tcp_tunnel_when_udp_is_dropped";
    if !openssh_or_skip(test) {
        return Ok(());
    }
    let Some(firewall) = Firewall::new(test) else {
        return Ok(());
    };
    let mut net = Network::start("ssh-tunnel").await?;
    let relay = net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    firewall.blackhole_udp(relay.port(), None)?;
    let sshd = start_sshd(&net.dir.0).await?;
    let target = format!("127.0.0.1:{}", sshd.port);
    net.start_agent("demo--dev", &["--ssh-target", &target])
        .await?;
    let user = net
        .mint(ferry_proto::token::TokenKind::User, "dev", None)
        .await?;
    net.wait_for_agent("demo--dev", &user).await?;
    let mut cmd = Command::new(FERRY);
    cmd.args(["ssh", "-l", &current_user()])
        .args(ssh_options(&sshd.client_key))
        .args(["demo", "--", "echo", "tunnelled", "$((6*7))"])
        .envs(net.client_env(&user))
        .env("FERRY_LOG", "ferry=debug,ferry_transport=debug")
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .context("ferry ssh did not finish")??;
    let log = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "ferry ssh failed: {log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tunnelled 42\n");
    assert!(
        log.contains("transport=tcp"),
        "the CLI did not go through the tunnel: {log}"
    );
    Ok(())
}
