//! The long-running roles: `ferry control`, `ferry relay`, `ferry agent`, and
//! `ferry token` for minting tokens with the operator's admin token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_agent::{Agent, AgentConfig, PortPolicy, TerminalPolicy};
use ferry_control::{ControlConfig, ControlPlane};
use ferry_proto::api::{MintTokenRequest, MintTokenResponse};
use ferry_proto::token::TokenKind;
use ferry_relay::{Relay, RelayConfig, RelayError};
use ferry_transport::{ControlClient, ControlError};
use tokio_util::sync::CancellationToken;

fn default_data_dir(role: &str) -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ferry")
        .join(role)
}

/// Writes `value` as JSON to `path` atomically (write, then rename), so a reader
/// polling for the file never sees half of it.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Where the CA, the signing key and the admin token are kept
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTPS address for the API
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Host names and IPs the API certificate covers (repeatable, or comma-separated in the variable)
    #[arg(long = "name", env = "FERRY_NAMES", value_delimiter = ',', default_values = ["localhost", "127.0.0.1"])]
    pub names: Vec<String>,
    /// Plain-HTTP admin address (/healthz, /readyz, /metrics), apart from the API; port 0 picks a free port
    #[arg(long, env = "FERRY_ADMIN_LISTEN", default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// PostgreSQL URL (postgres://USER:PASSWORD@HOST/DB) [default: SQLite in the data dir]
    #[arg(long, env = "FERRY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Create the certificate authority in the data dir (unless it has one), print
    /// where its files are, and exit: the way to make one CA that several replicas
    /// share (e.g. as a Kubernetes Secret)
    #[arg(long)]
    pub init_ca: bool,
    /// Write a JSON file with the URL and file paths once listening
    #[arg(long, hide = true)]
    pub ready_file: Option<PathBuf>,
}

pub async fn control(args: ControlArgs, cancel: CancellationToken) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(|| default_data_dir("control"));
    if args.init_ca {
        ferry_certs::Ca::load_or_create(&data_dir)
            .with_context(|| format!("creating the CA in {}", data_dir.display()))?;
        println!(
            "CA certificate: {}",
            ferry_certs::Ca::cert_path(&data_dir).display()
        );
        println!(
            "CA key:         {} (keep it secret: it signs for any name)",
            ferry_certs::Ca::key_path(&data_dir).display()
        );
        return Ok(());
    }
    let config = ControlConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        names: args.names.clone(),
        database_url: args.database_url.clone(),
    };
    let mut plane = ControlPlane::bind(&config).await?;
    let admin_addr = plane
        .bind_admin(args.admin_listen)
        .await
        .context("binding the admin port")?;
    let addr = plane.local_addr();
    let admin = plane
        .mint(TokenKind::Admin, "admin", "bootstrap admin", 30 * 24 * 3600)
        .await?;
    let admin_file = data_dir.join("admin.token");
    write_secret(&admin_file, &admin)?;
    let url = format!(
        "https://{}:{}",
        args.names
            .first()
            .map(String::as_str)
            .unwrap_or("127.0.0.1"),
        addr.port()
    );
    let ca_file = ferry_certs::Ca::cert_path(&data_dir);
    println!("control plane: {url}");
    println!("  CA certificate: {}", ca_file.display());
    println!(
        "  admin token:    {} (mint tokens with `ferry token`)",
        admin_file.display()
    );
    println!("  admin port:     http://{admin_addr}/readyz, metrics http://{admin_addr}/metrics");
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "url": url,
                "ca_file": ca_file,
                "admin_token_file": admin_file,
                "admin_addr": admin_addr.to_string(),
            }),
        )?;
    }
    plane.serve(cancel).await;
    Ok(())
}

pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    ferry_certs::write_private_file(path, secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a secret given inline or as `@PATH` (a file, e.g. a mounted Kubernetes
/// Secret: the secret then never shows in the process list).
pub fn secret_arg(value: &str) -> Result<String> {
    let Some(path) = value.strip_prefix('@') else {
        return Ok(value.to_string());
    };
    let secret = std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string();
    if secret.is_empty() {
        bail!("{path} is empty: it should hold a token");
    }
    Ok(secret)
}

pub fn read_ca(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading CA certificate {}", path.display()))
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Relay name, unique in the network (the subject of its relay token)
    #[arg(long, env = "FERRY_RELAY_NAME")]
    pub name: String,
    /// Region this relay serves
    #[arg(long, env = "FERRY_REGION")]
    pub region: String,
    /// UDP address for QUIC
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// Address announced to agents, clients and other relays: IP:PORT, [IPv6]:PORT, or
    /// NAME:PORT with a DNS name they resolve (A and AAAA) [default: the bound address]
    #[arg(long, env = "FERRY_ADVERTISE")]
    pub advertise: Option<ferry_proto::RelayAddr>,
    /// Names for the relay's certificate (repeatable, or comma-separated in the
    /// variable; the first is its TLS name)
    #[arg(long = "cert-name", env = "FERRY_CERT_NAMES", value_delimiter = ',', default_values = ["localhost", "127.0.0.1"])]
    pub cert_names: Vec<String>,
    /// Control plane URL
    #[arg(long = "control", env = "FERRY_CONTROL_URL")]
    pub control_url: String,
    /// CA certificate (PEM)
    #[arg(long = "ca", env = "FERRY_CA")]
    pub ca_file: PathBuf,
    /// Relay token (or a file holding it with @PATH, which keeps it out of `ps`)
    #[arg(long, env = "FERRY_RELAY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where the relay caches its certificate, token keys and revocations, to restart
    /// while the control plane is down [default: ~/.local/share/ferry/relay]
    #[arg(long, env = "FERRY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Serve web apps and the web terminal as PORT--NAME--OWNER.DOMAIN and
    /// terminal--NAME--OWNER.DOMAIN (e.g. apps.eu.example.com, with a wildcard DNS record
    /// pointing at the relays of the region)
    #[arg(long, env = "FERRY_APPS_DOMAIN")]
    pub apps_domain: Option<String>,
    /// The HTTPS origin announced to browsers, and to agents and clients for the TCP
    /// tunnel, when an L7 proxy or load balancer fronts the relay's HTTPS port
    /// (https://HOST[:PORT]) [default: https://FIRST-CERT-NAME:PORT]
    #[arg(long, env = "FERRY_HTTPS_URL")]
    pub https_url: Option<String>,
    /// Plain-HTTP admin address (/healthz, /readyz, /metrics); port 0 picks a free port
    #[arg(long, env = "FERRY_ADMIN_LISTEN", default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Streams carried at once; more are refused with `overloaded` (clients retry elsewhere)
    #[arg(long, env = "FERRY_MAX_STREAMS", default_value_t = ferry_relay::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Agent and client connections held at once (mesh links not counted); more are refused with `overloaded`
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = ferry_relay::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Streams one user may have open at once (over all its connections); more are refused with `rate_limited`
    #[arg(long, env = "FERRY_MAX_STREAMS_PER_USER", default_value_t = ferry_relay::DEFAULT_MAX_STREAMS_PER_USER)]
    pub max_streams_per_user: usize,
    /// New QUIC handshakes accepted a second (bursts of as many); over it, peers are
    /// sent a Retry or their hello is answered with `overloaded`
    #[arg(long, env = "FERRY_HANDSHAKE_RATE", default_value_t = ferry_relay::DEFAULT_HANDSHAKE_RATE)]
    pub handshake_rate: u32,
    /// Connections in their handshake or before their hello, at most; past a quarter
    /// of it peers must validate their address with a Retry
    #[arg(long, env = "FERRY_MAX_PENDING", default_value_t = ferry_relay::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Connections one address (an IPv6 /64) may have in their handshake or before their hello
    #[arg(long, env = "FERRY_MAX_PENDING_PER_ADDRESS", default_value_t = ferry_relay::DEFAULT_MAX_PENDING_PER_ADDRESS)]
    pub max_pending_per_address: usize,
    /// HTTPS connections held at once; more are closed at accept
    #[arg(long, env = "FERRY_HTTPS_MAX_CONNECTIONS", default_value_t = ferry_relay::DEFAULT_MAX_HTTPS_CONNECTIONS)]
    pub https_max_connections: usize,
    /// HTTPS connections one address (an IPv6 /64) may hold at once
    #[arg(long, env = "FERRY_HTTPS_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = ferry_relay::DEFAULT_MAX_HTTPS_CONNECTIONS_PER_ADDRESS)]
    pub https_max_connections_per_address: usize,
    /// Milliseconds a browser may take to send an HTTP/1.1 request head
    #[arg(long, default_value_t = 30_000, hide = true)]
    pub https_header_timeout_ms: u64,
    /// Seconds open streams may run after SIGTERM before they are cut
    #[arg(long, env = "FERRY_DRAIN_GRACE", default_value_t = 30)]
    pub drain_grace: u64,
    /// Milliseconds between refreshes of the region map and directory (and heartbeats)
    #[arg(long, default_value_t = 2000, hide = true)]
    pub refresh_ms: u64,
    /// Milliseconds between reports of mesh and agent round-trip times
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub report_ms: u64,
    /// Write a JSON file with the bound address once listening
    #[arg(long, hide = true)]
    pub ready_file: Option<PathBuf>,
}

pub async fn relay(args: RelayArgs, cancel: CancellationToken) -> Result<()> {
    let mut config = RelayConfig::new(
        args.name.clone(),
        args.region.clone(),
        args.control_url.clone(),
        read_ca(&args.ca_file)?,
        secret_arg(&args.token)?,
    );
    config.listen = args.listen;
    config.advertise = args.advertise;
    config.names = args.cert_names.clone();
    if let Some(url) = &args.https_url {
        let url = url.trim_end_matches('/');
        if !url.starts_with("https://") || url["https://".len()..].contains('/') {
            bail!(
                "--https-url must be an origin like https://relay.example.com[:PORT], not `{url}`"
            );
        }
        config.https_url = Some(url.to_string());
    }
    config.admin_listen = Some(args.admin_listen);
    config.apps_domain = args
        .apps_domain
        .as_ref()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    if args.max_streams == 0 {
        bail!("--max-streams must be at least 1");
    }
    config.max_streams = args.max_streams;
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    config.max_connections = args.max_connections;
    if args.max_streams_per_user == 0 {
        bail!("--max-streams-per-user must be at least 1");
    }
    config.max_streams_per_user = args.max_streams_per_user;
    if args.handshake_rate == 0 || args.max_pending == 0 || args.max_pending_per_address == 0 {
        bail!("--handshake-rate, --max-pending and --max-pending-per-address must be at least 1");
    }
    config.admission = ferry_relay::AdmissionConfig {
        handshake_rate: args.handshake_rate,
        handshake_burst: args.handshake_rate,
        retry_above: (args.max_pending / 4).max(1),
        max_pending: args.max_pending,
        max_pending_per_address: args.max_pending_per_address,
    };
    if args.https_max_connections == 0 || args.https_max_connections_per_address == 0 {
        bail!("--https-max-connections and --https-max-connections-per-address must be at least 1");
    }
    config.web_limits = ferry_relay::WebLimitsConfig {
        max_connections: args.https_max_connections,
        max_connections_per_address: args.https_max_connections_per_address,
        header_timeout: Duration::from_millis(args.https_header_timeout_ms.max(100)),
        ..Default::default()
    };
    config.drain_grace = Duration::from_secs(args.drain_grace);
    config.refresh = Duration::from_millis(args.refresh_ms.max(50));
    config.report_every = Duration::from_millis(args.report_ms.max(100));
    config.cache_dir = Some(
        args.cache_dir
            .clone()
            .unwrap_or_else(|| default_data_dir("relay")),
    );
    // The control plane may start after us: wait for it, but fail at once on a refusal.
    let mut delay = Duration::from_millis(200);
    let relay = loop {
        match Relay::start(config.clone(), cancel.clone()).await {
            Ok(relay) => break relay,
            Err(RelayError::Register(e)) if e.is_unreachable() => {
                tracing::warn!(error = %e, "control plane unreachable; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("starting the relay"),
        }
    };
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "addr": relay.local_addr().to_string(),
                "admin_addr": relay.admin_addr().map(|a| a.to_string()),
            }),
        )?;
    }
    if let Some(admin) = relay.admin_addr() {
        println!(
            "relay {}: admin http://{admin}/readyz, metrics http://{admin}/metrics",
            args.name
        );
    }
    relay.run().await;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Control plane URL
    #[arg(long = "control", env = "FERRY_CONTROL_URL")]
    pub control_url: String,
    /// CA certificate (PEM)
    #[arg(long = "ca", env = "FERRY_CA")]
    pub ca_file: PathBuf,
    /// Agent token (names the workspace; or a file holding it with @PATH)
    #[arg(long, env = "FERRY_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Home region, pinned (with fallback to the nearest other while it does not
    /// answer) [default: auto, the nearest region by measured RTT]
    #[arg(long, env = "FERRY_REGION")]
    pub region: Option<String>,
    /// Source address for connections to relays (multi-homed hosts, the WAN emulator)
    #[arg(long, env = "FERRY_LOCAL_IP")]
    pub local_ip: Option<std::net::IpAddr>,
    /// How to reach relays: auto (QUIC, falling back to a TLS tunnel on TCP where UDP
    /// is blocked), quic, or tcp
    #[arg(long, env = "FERRY_TRANSPORT", default_value = "auto")]
    pub transport: ferry_transport::reach::TransportMode,
    /// Milliseconds between RTT probes of every relay
    #[arg(long, default_value_t = 15000, hide = true)]
    pub probe_ms: u64,
    /// Only let streams reach these loopback ports (repeatable) [default: any]
    #[arg(long = "allow-port")]
    pub allow_ports: Vec<u16>,
    /// The workspace's SSH server
    #[arg(long, default_value = "127.0.0.1:22")]
    pub ssh_target: SocketAddr,
    /// Shell for `ferry terminal` and the web terminal [default: $SHELL, else /bin/sh]
    #[arg(long)]
    pub shell: Option<PathBuf>,
    /// Refuse terminal sessions
    #[arg(long, conflicts_with = "shell")]
    pub disable_terminal: bool,
    /// Plain-HTTP admin address (/healthz, /readyz: connected to a relay, /metrics); port 0 picks a free port
    #[arg(long, env = "FERRY_ADMIN_LISTEN", default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Milliseconds between fetches of the region map
    #[arg(long, default_value_t = 3000, hide = true)]
    pub refresh_ms: u64,
    /// Write a JSON file with the admin address once listening
    #[arg(long, hide = true)]
    pub ready_file: Option<PathBuf>,
    /// Seconds between telemetry reports to the control plane (CPU, memory, disk, load,
    /// uptime and the metadata items); 0 turns them off
    #[arg(long, env = "FERRY_TELEMETRY_INTERVAL", default_value_t = 10.0)]
    pub telemetry_interval: f64,
    /// The workspace directory, whose file system's use is reported [default: $HOME]
    #[arg(long, env = "FERRY_WORKSPACE_DIR")]
    pub workspace_dir: Option<PathBuf>,
    /// A metadata item: KEY=COMMAND, run with `sh -c` every report interval with a
    /// 5 s timeout (repeatable)
    #[arg(long = "metadata", value_name = "KEY=COMMAND")]
    pub metadata: Vec<String>,
    /// A TOML file of metadata items (key, name, command or file, interval_secs,
    /// timeout_secs); see the README
    #[arg(long, env = "FERRY_METADATA_FILE")]
    pub metadata_file: Option<PathBuf>,
}

/// The agent's telemetry settings from its flags, checked.
pub fn telemetry_config(args: &AgentArgs) -> Result<ferry_agent::TelemetryConfig> {
    let mut telemetry = ferry_agent::TelemetryConfig::default();
    if !(args.telemetry_interval.is_finite() && args.telemetry_interval >= 0.0) {
        anyhow::bail!(
            "--telemetry-interval {}: use seconds, 0 to turn reports off",
            args.telemetry_interval
        );
    }
    telemetry.interval = (args.telemetry_interval > 0.0)
        .then(|| Duration::from_secs_f64(args.telemetry_interval.clamp(0.2, 86400.0)));
    if let Some(dir) = &args.workspace_dir {
        if !dir.is_dir() {
            anyhow::bail!("--workspace-dir {}: not a directory", dir.display());
        }
        telemetry.sources.workspace_dir = dir.clone();
    }
    telemetry.items = crate::agent_items::items(
        &args.metadata,
        args.metadata_file.as_deref(),
        telemetry
            .interval
            .unwrap_or(ferry_agent::telemetry::DEFAULT_INTERVAL),
    )?;
    Ok(telemetry)
}

pub async fn agent(args: AgentArgs, cancel: CancellationToken) -> Result<()> {
    let telemetry = telemetry_config(&args)?;
    let mut config = AgentConfig::new(
        args.control_url,
        read_ca(&args.ca_file)?,
        secret_arg(&args.token)?,
    );
    config.region = args.region.filter(|r| r != "auto");
    config.local_ip = args.local_ip;
    config.transport = args.transport;
    config.probe_interval = Duration::from_millis(args.probe_ms.max(50));
    config.ssh_target = args.ssh_target;
    if args.disable_terminal {
        config.terminal = TerminalPolicy::Disabled;
    } else if let Some(shell) = args.shell {
        config.terminal = TerminalPolicy::Shell(shell);
    }
    config.map_refresh = Duration::from_millis(args.refresh_ms.max(50));
    config.telemetry = telemetry;
    if !args.allow_ports.is_empty() {
        config.ports = PortPolicy::Only(args.allow_ports);
    }
    let agent = Agent::new(config)?;
    let admin = agent_admin(args.admin_listen, &agent).await?;
    let admin_addr = admin.local_addr();
    tracing::info!(workspace = %agent.workspace(), admin = %admin_addr, "agent starting");
    println!(
        "agent {}: admin http://{admin_addr}/readyz, metrics http://{admin_addr}/metrics",
        agent.workspace()
    );
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({ "admin_addr": admin_addr.to_string() }),
        )?;
    }
    let admin_stop = CancellationToken::new();
    let (result, ()) = tokio::join!(
        async {
            let result = agent.run(cancel).await;
            admin_stop.cancel();
            result
        },
        admin.serve(admin_stop.clone())
    );
    result?;
    Ok(())
}

/// The agent's admin port: ready while a relay connection is up.
pub async fn agent_admin(
    listen: SocketAddr,
    agent: &Agent,
) -> Result<ferry_telemetry::AdminServer> {
    let status = agent.status();
    Ok(ferry_telemetry::AdminServer::bind(listen)
        .await
        .with_context(|| format!("binding the admin port {listen}"))?
        .readiness(move || match &*status.borrow() {
            ferry_agent::AgentStatus::Connected { .. } => ferry_telemetry::Readiness::Ready,
            other => ferry_telemetry::Readiness::NotReady(format!("{other:?}")),
        }))
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Token kind: user, agent, relay or admin
    #[arg(long, value_parser = parse_kind)]
    pub kind: TokenKind,
    /// User name (user), NAME--OWNER (agent), or relay name (relay)
    #[arg(long)]
    pub subject: String,
    /// Lifetime in seconds [default: per kind]
    #[arg(long)]
    pub ttl_secs: Option<u64>,
    /// Control plane URL
    #[arg(long = "control", env = "FERRY_CONTROL_URL")]
    pub control_url: String,
    /// CA certificate (PEM)
    #[arg(long = "ca", env = "FERRY_CA")]
    pub ca_file: PathBuf,
    /// Admin token (or a file holding it with @PATH)
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
}

fn parse_kind(s: &str) -> Result<TokenKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("`{s}` is not a token kind (user, agent, relay, admin)"))
}

pub async fn token(args: TokenArgs) -> Result<()> {
    let admin = secret_arg(&args.admin_token)?;
    let control = ControlClient::new(&args.control_url, &read_ca(&args.ca_file)?)?;
    let resp: MintTokenResponse = control
        .post(
            "/api/v1/tokens",
            Some(&admin),
            &MintTokenRequest {
                kind: args.kind,
                subject: args.subject,
                ttl_secs: args.ttl_secs,
            },
        )
        .await
        .map_err(|e| match e {
            ControlError::Api { code, message, .. } => anyhow::anyhow!("{message} ({code})"),
            other => other.into(),
        })?;
    if resp.token.is_empty() {
        bail!("the control plane returned an empty token");
    }
    println!("{}", resp.token);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_taken_inline_or_read_from_a_file() {
        let dir = std::env::temp_dir().join(format!("ferry-secret-arg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "tok.en.sig\n").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();

        assert_eq!(secret_arg("tok.en.sig").unwrap(), "tok.en.sig");
        assert_eq!(
            secret_arg(&format!("@{}", file.display())).unwrap(),
            "tok.en.sig",
            "the file's trailing newline is not part of the token"
        );
        let missing = format!("@{}", dir.join("missing").display());
        let err = format!("{:#}", secret_arg(&missing).unwrap_err());
        assert!(err.contains("missing"), "names the file: {err}");
        let err = format!(
            "{:#}",
            secret_arg(&format!("@{}", empty.display())).unwrap_err()
        );
        assert!(err.contains("is empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
