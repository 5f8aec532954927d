//! `ferry login USER`: password login; the session token goes into the CLI config,
//! with the control plane's URL and CA, so later commands need no flags.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ferry_proto::api::{LoginRequest, NewTokenResponse};
use ferry_transport::ControlClient;

use crate::cmd_servers::read_ca;
use crate::config::{self, CliConfig};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// User name
    pub user: String,
    /// Read the password from standard input (one line) instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// Control plane URL [default: from the config file]
    #[arg(long = "control", env = "FERRY_CONTROL_URL")]
    pub control_url: Option<String>,
    /// CA certificate (PEM) [default: from the config file]
    #[arg(long = "ca", env = "FERRY_CA")]
    pub ca_file: Option<PathBuf>,
}

/// Reads a password from the terminal without echo, or a line from stdin.
pub fn read_password(prompt: &str, from_stdin: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let tty = !from_stdin && stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        // No echo while typing; restored below whatever happens.
        let _ = std::process::Command::new("stty").arg("-echo").status();
    } else if !from_stdin {
        bail!("no terminal to ask for a password: use --password-stdin");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    read.context("reading the password")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

pub async fn run(args: LoginArgs) -> Result<()> {
    let path = config::default_path();
    let mut file = CliConfig::load(&path)?;
    let hint = "pass --control and --ca (or FERRY_CONTROL_URL and FERRY_CA)";
    let url = args
        .control_url
        .or(file.control_url.clone())
        .context(format!("no control plane configured: {hint}"))?;
    let ca_file = args
        .ca_file
        .or(file.ca_file.clone())
        .context(format!("no CA certificate configured: {hint}"))?;
    let ca_file = std::path::absolute(&ca_file).unwrap_or(ca_file);
    let control = ControlClient::new(&url, &read_ca(&ca_file)?)?;
    let password = read_password(
        &format!("password for {} at {url}: ", args.user),
        args.password_stdin,
    )?;
    let resp: NewTokenResponse = control
        .post(
            "/api/v1/login",
            None,
            &LoginRequest {
                user: args.user.clone(),
                password,
            },
        )
        .await
        .map_err(crate::client::api_error)?;
    file.control_url = Some(url);
    file.ca_file = Some(ca_file);
    file.token = Some(resp.token);
    file.save(&path)?;
    println!(
        "logged in as {} (token saved in {})",
        args.user,
        path.display()
    );
    Ok(())
}
