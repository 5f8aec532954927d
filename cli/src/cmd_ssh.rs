//! `ferry ssh` and `ferry config-ssh`: SSH through ferry with the system's OpenSSH
//! client, so that keys, agents, `scp`, `rsync` and editors' remote-SSH all work as
//! they always do. ferry is only the ProxyCommand: `ferry ssh --stdio WORKSPACE`
//! connects standard input and output to the workspace's SSH server.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::ClientArgs;

/// Host names ending in this suffix go through ferry (`ssh demo.ferry`).
pub const HOST_SUFFIX: &str = ".ferry";

#[derive(Debug, clap::Args)]
pub struct SshArgs {
    /// Workspace name (yours), NAME--OWNER, or WORKSPACE.ferry
    pub workspace: String,
    /// Command to run instead of a login shell (after `--`)
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Act as SSH's ProxyCommand: connect stdin/stdout to the workspace's SSH server
    #[arg(long)]
    pub stdio: bool,
    /// Remote user name
    #[arg(short = 'l', long = "user")]
    pub user: Option<String>,
    /// Identity file passed to ssh
    #[arg(short = 'i', long = "identity")]
    pub identity: Option<PathBuf>,
    /// Options passed to ssh as `-o OPTION` (repeatable)
    #[arg(short = 'o', long = "ssh-option")]
    pub options: Vec<String>,
    /// The ssh program to run
    #[arg(long, env = "FERRY_SSH", default_value = "ssh")]
    pub ssh: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `demo.ferry` → `demo`; anything else as it is.
pub fn workspace_from_host(host: &str) -> &str {
    host.strip_suffix(HOST_SUFFIX).unwrap_or(host)
}

pub async fn run(args: SshArgs) -> Result<()> {
    let workspace = workspace_from_host(&args.workspace).to_string();
    if args.stdio {
        return crate::cmd_tcp::run(crate::cmd_tcp::TcpArgs {
            workspace,
            port: "ssh".into(),
            client: args.client,
        })
        .await;
    }
    let ferry = std::env::current_exe().context("locating the ferry binary")?;
    // Check the login now, so that a missing config fails with ferry's message rather
    // than as a cryptic ProxyCommand failure inside ssh.
    let settings = args.client.settings()?;
    let label = ferry_proto::WorkspaceLabel::resolve(&workspace, &settings.user)
        .with_context(|| format!("`{workspace}` is not a workspace name"))?;
    let mut cmd = std::process::Command::new(&args.ssh);
    cmd.arg("-o")
        .arg(format!(
            "ProxyCommand={} ssh --stdio {}",
            shell_quote(&ferry.to_string_lossy()),
            label
        ))
        // Known-hosts entries are keyed by the ferry name, not by 127.0.0.1.
        .arg("-o")
        .arg(format!("HostKeyAlias={label}{HOST_SUFFIX}"));
    if let Some(user) = &args.user {
        cmd.arg("-l").arg(user);
    }
    if let Some(identity) = &args.identity {
        cmd.arg("-i").arg(identity);
    }
    for option in &args.options {
        cmd.arg("-o").arg(option);
    }
    cmd.arg(format!("{label}{HOST_SUFFIX}"));
    cmd.args(&args.command);
    // The ProxyCommand child inherits our environment, flags included.
    if let Some(url) = &args.client.control_url {
        cmd.env("FERRY_CONTROL_URL", url);
    }
    if let Some(ca) = &args.client.ca_file {
        cmd.env("FERRY_CA", ca);
    }
    if let Some(token) = &args.client.token {
        cmd.env("FERRY_TOKEN", token);
    }
    if let Some(relay) = &args.client.relay {
        cmd.env("FERRY_RELAY", relay);
    }
    if let Some(region) = &args.client.region {
        cmd.env("FERRY_REGION", region);
    }
    if let Some(ip) = &args.client.local_ip {
        cmd.env("FERRY_LOCAL_IP", ip.to_string());
    }
    let status = cmd
        .status()
        .with_context(|| format!("running `{}` (is OpenSSH installed?)", args.ssh))?;
    match status.code() {
        Some(0) => Ok(()),
        // ssh's own exit code (or the remote command's) is the user's answer.
        Some(code) => std::process::exit(code),
        None => bail!("ssh was killed by a signal"),
    }
}

/// Quotes a path for the shell that ssh runs ProxyCommand with.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

const BEGIN: &str =
    "# --- BEGIN ferry managed block: `ferry config-ssh` rewrites it; edits are lost ---";
const END: &str = "# --- END ferry managed block ---";

#[derive(Debug, clap::Args)]
pub struct ConfigSshArgs {
    /// The SSH config file to update
    #[arg(long, default_value = "~/.ssh/config")]
    pub ssh_config: String,
    /// Print the new file instead of writing it
    #[arg(long)]
    pub dry_run: bool,
}

/// The managed block for the given ferry binary.
pub fn managed_block(ferry: &Path) -> String {
    format!(
        "{BEGIN}\n\
         Host *{HOST_SUFFIX}\n\
         \x20   ProxyCommand {} ssh --stdio %n\n\
         \x20   HostKeyAlias %n\n\
         \x20   ServerAliveInterval 15\n\
         {END}\n",
        shell_quote(&ferry.to_string_lossy())
    )
}

/// Replaces the managed block in `existing` (or appends one), leaving every other line
/// exactly as it was.
pub fn update_config(existing: &str, block: &str) -> Result<String> {
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let begin = lines.iter().position(|l| l.trim_end() == BEGIN);
    let end = lines.iter().position(|l| l.trim_end() == END);
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            let mut out: String = lines[..b].concat();
            out.push_str(block);
            out.push_str(&lines[e + 1..].concat());
            Ok(out)
        }
        (None, None) => {
            // ssh uses the first value it finds, and a `Host *` section at the end
            // would shadow ours if we appended after it: put the block first.
            let mut out = String::from(block);
            if !existing.is_empty() {
                out.push('\n');
                out.push_str(existing);
            }
            Ok(out)
        }
        _ => bail!("the ferry block in the SSH config is damaged (one marker without the other); fix or remove it by hand"),
    }
}

fn expand_home(path: &str) -> Result<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Ok(PathBuf::from(home).join(rest))
        }
        None => Ok(PathBuf::from(path)),
    }
}

pub fn config_ssh(args: ConfigSshArgs) -> Result<()> {
    let path = expand_home(&args.ssh_config)?;
    let ferry = std::env::current_exe().context("locating the ferry binary")?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = update_config(&existing, &managed_block(&ferry))?;
    if args.dry_run {
        print!("{updated}");
        return Ok(());
    }
    if updated == existing {
        println!("{} is up to date", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !existing.is_empty() {
        let backup = path.with_extension("ferry-backup");
        std::fs::write(&backup, &existing)
            .with_context(|| format!("writing {}", backup.display()))?;
        println!("backup of the previous file: {}", backup.display());
    }
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(&tmp, &updated).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "updated {}: `ssh WORKSPACE{HOST_SUFFIX}` now goes through ferry",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_block_is_added_once_and_other_lines_are_kept() {
        let block = managed_block(Path::new("/usr/bin/ferry"));
        let user = "Host work\n    User me\n\nHost *\n    ForwardAgent no\n";
        let once = update_config(user, &block).unwrap();
        assert!(once.starts_with(BEGIN));
        assert!(once.ends_with(user), "user lines changed: {once}");
        let twice = update_config(&once, &block).unwrap();
        assert_eq!(once, twice, "a second run changed the file");
        let moved =
            update_config(&once, &managed_block(Path::new("/opt/ferry bin/ferry"))).unwrap();
        assert!(moved.contains("ProxyCommand '/opt/ferry bin/ferry' ssh --stdio %n"));
        assert!(moved.ends_with(user));
        assert_eq!(moved.matches(BEGIN).count(), 1);
    }

    #[test]
    fn a_damaged_block_is_refused_not_guessed() {
        let half = format!("Host a\n{BEGIN}\nHost *.ferry\n");
        assert!(update_config(&half, "x").is_err());
    }

    #[test]
    fn ferry_host_names_map_to_workspaces() {
        assert_eq!(workspace_from_host("demo.ferry"), "demo");
        assert_eq!(workspace_from_host("web--alice.ferry"), "web--alice");
        assert_eq!(workspace_from_host("demo"), "demo");
    }
}
