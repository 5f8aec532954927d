//! `ferry`: one binary for every role of the network and for the developer's side.
//! `main` parses flags, sets up logging, turns signals into a cancellation token, runs
//! the command and maps its error to an exit code; the work lives in the library crates.

mod agent_items;
mod client;
mod cmd_admin;
mod cmd_dev;
mod cmd_login;
mod cmd_ping;
mod cmd_port_forward;
mod cmd_servers;
mod cmd_ssh;
mod cmd_tcp;
mod cmd_terminal;
mod cmd_workspace;
mod config;
mod demo;
mod latency;
mod telemetry_view;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "A geo-distributed relay and workspace proxy network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole network on this machine: control plane, relays, a demo workspace
    Dev(cmd_dev::DevArgs),
    /// Run the control plane (API, tokens, CA)
    Control(cmd_servers::ControlArgs),
    /// Run a relay
    Relay(cmd_servers::RelayArgs),
    /// Run a workspace agent
    Agent(cmd_servers::AgentArgs),
    /// Mint a token (needs the admin token)
    Token(cmd_servers::TokenArgs),
    /// Operator commands: users, signing keys, revocation (needs the admin token)
    Admin(cmd_admin::AdminArgs),
    /// Log in with a password; the token is saved in the CLI config
    Login(cmd_login::LoginArgs),
    /// Your workspaces and their agent tokens
    Workspace(cmd_workspace::WorkspaceArgs),
    /// Forward local ports to ports in a workspace
    PortForward(cmd_port_forward::PortForwardArgs),
    /// Connect standard input and output to a port in a workspace (like nc)
    Tcp(cmd_tcp::TcpArgs),
    /// A shell in a workspace, on a real terminal (no SSH server needed)
    Terminal(cmd_terminal::TerminalArgs),
    /// SSH into a workspace with the system's OpenSSH client
    Ssh(cmd_ssh::SshArgs),
    /// RTT, jitter and loss to every region, and which one is chosen and why
    Ping(cmd_ping::PingArgs),
    /// The path to a workspace (client -> relay -> relay -> agent) with each hop's RTT
    Status(cmd_ping::StatusArgs),
    /// Add a `Host *.ferry` block to ~/.ssh/config (ssh, scp, rsync, editors)
    ConfigSsh(cmd_ssh::ConfigSshArgs),
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs in files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Cancels on the first SIGINT/SIGTERM; exits at once on the second.
fn watch_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutting down (signal again to exit at once)");
                cancel.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

fn main() {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Dev(_) | Command::Control(_) | Command::Relay(_) | Command::Agent(_)
    );
    init_tracing(if server { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        watch_signals(cancel.clone());
        match cli.command {
            Command::Dev(args) => cmd_dev::run(args, cancel).await,
            Command::Control(args) => cmd_servers::control(args, cancel).await,
            Command::Relay(args) => cmd_servers::relay(args, cancel).await,
            Command::Agent(args) => cmd_servers::agent(args, cancel).await,
            Command::Token(args) => cmd_servers::token(args).await,
            Command::Admin(args) => cmd_admin::run(args).await,
            Command::Login(args) => cmd_login::run(args).await,
            Command::Workspace(args) => cmd_workspace::run(args).await,
            Command::PortForward(args) => cmd_port_forward::run(args, cancel).await,
            Command::Tcp(args) => cmd_tcp::run(args).await,
            Command::Ssh(args) => cmd_ssh::run(args).await,
            Command::Terminal(args) => cmd_terminal::run(args).await,
            Command::ConfigSsh(args) => cmd_ssh::config_ssh(args),
            Command::Ping(args) => cmd_ping::ping(args).await,
            Command::Status(args) => cmd_ping::status(args).await,
        }
    });
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            1
        }
    };
    // Standard input is read on a blocking thread that cannot be interrupted; exit
    // without waiting for it (everything that matters has been flushed and closed).
    runtime.shutdown_background();
    std::process::exit(code);
}
