//! The CLI's own configuration: where the control plane is, which CA to trust, and the
//! user's token. Read from `$FERRY_CONFIG` or `~/.config/ferry/config.toml`, then
//! overridden by environment variables and flags.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// `https://HOST:PORT` of the control plane.
    pub control_url: Option<String>,
    /// PEM file of the CA that ferry's certificates chain to.
    pub ca_file: Option<PathBuf>,
    /// A user token.
    pub token: Option<String>,
    /// The region to use whenever it answers (a pin with fallback, like `--region`);
    /// unset: the nearest by measured RTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How to reach relays: `auto`, `quic` or `tcp` (like `--transport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

/// Where the config lives.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ferry").join("config.toml")
}

impl CliConfig {
    pub fn load(path: &Path) -> Result<CliConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("encoding the config")?;
        // The config holds the user's token.
        ferry_certs::write_private_file(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Connection settings after config, environment and flags are merged.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub control_url: String,
    pub ca_pem: String,
    pub token: String,
    /// The user the token names (for resolving short workspace names).
    pub user: String,
    /// Relay to try first, by name.
    pub relay: Option<String>,
    /// Where the last region map is kept, for when the control plane is down.
    pub regions_cache: PathBuf,
    /// Region to dial first whenever it answers (a pin with fallback).
    pub region: Option<String>,
    /// Source address for connections to relays.
    pub local_ip: Option<std::net::IpAddr>,
    /// Where recent RTT estimates per region are kept between runs.
    pub latency_cache: PathBuf,
    /// How to reach relays (`--transport`).
    pub transport: ferry_transport::reach::TransportMode,
    /// Which transport worked on which network, kept between runs.
    pub transport_cache: PathBuf,
}

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Control plane URL [default: from the config file]
    #[arg(long = "control", env = "FERRY_CONTROL_URL", global = true)]
    pub control_url: Option<String>,
    /// CA certificate (PEM) to trust [default: from the config file]
    #[arg(long = "ca", env = "FERRY_CA", global = true)]
    pub ca_file: Option<PathBuf>,
    /// User token [default: from the config file]
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Relay to connect through, by name [default: a relay of the nearest region]
    #[arg(long, env = "FERRY_RELAY", global = true)]
    pub relay: Option<String>,
    /// Region to use whenever it answers [default: the nearest by measured RTT]
    #[arg(long, env = "FERRY_REGION", global = true)]
    pub region: Option<String>,
    /// Source address for connections to relays (multi-homed hosts, the WAN emulator)
    #[arg(long, env = "FERRY_LOCAL_IP", global = true)]
    pub local_ip: Option<std::net::IpAddr>,
    /// How to reach relays: auto (QUIC, falling back to a TLS tunnel on TCP where UDP
    /// is blocked), quic, or tcp [default: from the config file, else auto]
    #[arg(long, env = "FERRY_TRANSPORT", global = true)]
    pub transport: Option<ferry_transport::reach::TransportMode>,
}

impl ClientArgs {
    pub fn settings(&self) -> Result<ClientSettings> {
        let path = default_path();
        let file = CliConfig::load(&path)?;
        let hint = "run `ferry dev` (which writes it) or pass --control, --ca and --token";
        let Some(control_url) = self.control_url.clone().or(file.control_url) else {
            bail!("no control plane configured in {}: {hint}", path.display());
        };
        let Some(ca_file) = self.ca_file.clone().or(file.ca_file) else {
            bail!("no CA certificate configured in {}: {hint}", path.display());
        };
        let Some(token) = self.token.clone().or(file.token) else {
            bail!("not logged in (no token in {}): {hint}", path.display());
        };
        let ca_pem = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("reading CA certificate {}", ca_file.display()))?;
        let Some(claims) = ferry_proto::token::peek_claims(&token) else {
            bail!("the configured token is not a ferry token; log in again");
        };
        Ok(ClientSettings {
            control_url,
            ca_pem,
            token,
            user: claims.sub,
            relay: self.relay.clone(),
            regions_cache: path.with_file_name("regions-cache.json"),
            region: self.region.clone().or(file.region).filter(|r| r != "auto"),
            local_ip: self.local_ip,
            latency_cache: path.with_file_name("latency-cache.json"),
            transport: match (self.transport, file.transport.as_deref()) {
                (Some(t), _) => t,
                (None, Some(t)) => t.parse().map_err(|e: String| {
                    anyhow::anyhow!("{e} (`transport` in {})", path.display())
                })?,
                (None, None) => Default::default(),
            },
            transport_cache: path.with_file_name("transport-cache.json"),
        })
    }
}
