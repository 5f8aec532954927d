//! `ferry dev`: a whole ferry network on this machine, in one process: the control
//! plane, relays in simulated regions, and a demo workspace with its agent. It writes
//! the CLI's config so `ferry tcp demo ...` and `ferry port-forward demo ...` work from
//! another shell. Ctrl-C stops every part through one cancellation token.
//!
//! With `--topology FILE` the relays sit behind the WAN emulator (ferry-wan): each
//! listens on its region's loopback address and advertises a front on the emulator,
//! so the CLI and the demo agent (at `127.0.0.1`, the topology's home) see each
//! region at its RTT, and the agent chooses its home region as it would on a real
//! network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_agent::{Agent, AgentConfig, AgentStatus};
use ferry_control::{ControlConfig, ControlPlane};
use ferry_proto::token::TokenKind;
use ferry_relay::{Relay, RelayConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cmd_servers::{write_ready_file, write_secret};
use crate::config::{self, CliConfig};
use crate::demo;

/// The built-in user of a dev network.
const DEV_USER: &str = "dev";
const DEMO_WORKSPACE: &str = "demo";
/// The dev user's password, in the data directory.
const DEV_PASSWORD_FILE: &str = "dev.password";

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the dev network keeps its CA, keys and tokens
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control plane port (0: any free port)
    #[arg(long, default_value_t = 7443)]
    pub control_port: u16,
    /// Regions to simulate, comma-separated [default: eu,us; with --topology, every
    /// location of the topology except the one of 127.0.0.1]
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Put the relays behind the WAN emulator with this topology (regions, RTTs,
    /// jitter, loss, rate; see netbench/topologies/three-regions.toml)
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Relays in each region
    #[arg(long, default_value_t = 1)]
    pub relays_per_region: u16,
    /// Port of the demo echo service (a free one if taken)
    #[arg(long, default_value_t = 7007)]
    pub echo_port: u16,
    /// Port of the demo HTTP app (a free one if taken)
    #[arg(long, default_value_t = 7080)]
    pub http_port: u16,
    /// Do not write the CLI config (~/.config/ferry/config.toml or $FERRY_CONFIG)
    #[arg(long)]
    pub no_config: bool,
    /// Write a JSON file describing the network once it is up
    #[arg(long, hide = true)]
    pub ready_file: Option<PathBuf>,
}

/// Creates the built-in user and its demo workspace unless a previous run did.
async fn dev_user_and_workspace(
    plane: &ControlPlane,
    workspace: &ferry_proto::WorkspaceLabel,
    data_dir: &std::path::Path,
) -> Result<()> {
    let store = plane.state().store();
    let now = i64::try_from(ferry_transport::unix_now()).unwrap_or(i64::MAX);
    store.ensure_user(DEV_USER, now).await?;
    // A password for signing in from a browser (web apps, the web terminal), made once.
    let password_file = data_dir.join(DEV_PASSWORD_FILE);
    if !password_file.exists() {
        let password: String = (0..16).map(|_| fastrand::alphanumeric()).collect();
        let hash = ferry_control::hash_password(password.clone())
            .await
            .map_err(|e| anyhow::anyhow!("hashing the dev password: {e:?}"))?;
        store.set_password(DEV_USER, &hash).await?;
        write_secret(&password_file, &password)?;
    }
    if store.workspace(workspace.as_str()).await?.is_none() {
        store
            .create_workspace(&ferry_control::store::WorkspaceRow {
                label: workspace.to_string(),
                name: workspace.name().to_string(),
                owner: DEV_USER.to_string(),
                created_at: now,
            })
            .await?;
    }
    Ok(())
}

/// Where the CLI and the demo agent are: they send from 127.0.0.1.
const HOME_ADDR: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

pub async fn run(mut args: DevArgs, cancel: CancellationToken) -> Result<()> {
    let mut wan = match &args.topology {
        Some(path) => {
            let topology = ferry_wan::Topology::load(path)?;
            let Some(home) = topology.location_of(HOME_ADDR).map(str::to_string) else {
                bail!(
                    "{}: no location has address 127.0.0.1, where the CLI and the demo agent run (add e.g. home = \"127.0.0.1\")",
                    path.display()
                );
            };
            if args.regions.is_empty() {
                args.regions = topology
                    .locations()
                    .map(|(name, _)| name.to_string())
                    .filter(|name| *name != home)
                    .collect();
            }
            for region in &args.regions {
                if region == &home || topology.address_of(region).is_none() {
                    bail!(
                        "{}: region `{region}` needs a location of its own in the topology",
                        path.display()
                    );
                }
            }
            Some((ferry_wan::Emulator::new(topology, cancel.clone()), home))
        }
        None => None,
    };
    if args.regions.is_empty() {
        args.regions = vec!["eu".into(), "us".into()];
    }
    if args.relays_per_region == 0 {
        bail!("a dev network needs at least one region with one relay");
    }
    for region in &args.regions {
        ferry_proto::label::validate_name(region).with_context(|| format!("region `{region}`"))?;
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/share/ferry/dev"))
            .unwrap_or_else(|| PathBuf::from("ferry-dev"))
    });
    let mut tasks = JoinSet::new();

    let mut plane = ControlPlane::bind(&ControlConfig {
        data_dir: data_dir.clone(),
        listen: ([127, 0, 0, 1], args.control_port).into(),
        names: vec!["127.0.0.1".into(), "localhost".into()],
        database_url: None,
    })
    .await
    .context("starting the control plane (is another `ferry dev` running? try --control-port 0)")?;
    let control_url = format!("https://127.0.0.1:{}", plane.local_addr().port());
    let loopback_any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    // One process, one metrics registry: every admin port below serves the whole dev
    // network's metrics (relay series carry a `relay` label).
    let control_admin = plane.bind_admin(loopback_any).await?;
    let ca_pem = plane.state().ca().cert_pem().to_string();
    let ca_file = ferry_certs::Ca::cert_path(&data_dir);
    let workspace = ferry_proto::WorkspaceLabel::new(DEMO_WORKSPACE, DEV_USER)?;
    dev_user_and_workspace(&plane, &workspace, &data_dir).await?;
    // The CLI is logged in as the built-in user, like after `ferry login dev`.
    let user_token = plane
        .mint(TokenKind::User, DEV_USER, "ferry dev login", 30 * 24 * 3600)
        .await?;
    let admin_token = plane
        .mint(TokenKind::Admin, "admin", "ferry dev", 30 * 24 * 3600)
        .await?;
    write_secret(&data_dir.join("admin.token"), &admin_token)?;
    let agent_token = plane
        .mint(
            TokenKind::Agent,
            workspace.as_str(),
            "ferry dev agent",
            365 * 24 * 3600,
        )
        .await?;
    let mut relay_tokens = Vec::new();
    for region in &args.regions {
        for i in 1..=args.relays_per_region {
            let name = format!("{region}-{i}");
            relay_tokens.push((
                region.clone(),
                name.clone(),
                plane
                    .mint(TokenKind::Relay, &name, "ferry dev relay", 365 * 24 * 3600)
                    .await?,
            ));
        }
    }
    tasks.spawn(plane.serve(cancel.clone()));

    let mut relays = Vec::new();
    for (region, name, token) in relay_tokens {
        let mut config = RelayConfig::new(
            name.clone(),
            region.clone(),
            control_url.clone(),
            ca_pem.clone(),
            token,
        );
        // Ctrl-C on a dev network should not wait long for streams.
        config.drain_grace = Duration::from_secs(2);
        // The dashboard's heat map fills within seconds.
        config.report_every = Duration::from_secs(3);
        config.cache_dir = Some(data_dir.join("relay-cache"));
        // Browsers resolve every *.localhost name to loopback: no DNS set-up needed.
        config.apps_domain = Some(format!("apps.{region}.localhost"));
        config.admin_listen = Some(loopback_any);
        let mut fronts = Vec::new();
        let mut rtt_from_home = None;
        if let Some((emulator, home)) = &mut wan {
            let ip = emulator
                .topology()
                .address_of(&region)
                .context("region checked above")?;
            rtt_from_home = Some(emulator.topology().link(home, &region).rtt);
            // The relay's HTTPS (web apps, the terminal, the browser's RTT probe) is
            // on the TCP port numbered like its QUIC port, so its front is too: the
            // advertised port then serves both, through the emulated link.
            let (quic, https) = emulator.twin_fronts(&region, [127, 0, 0, 1].into()).await?;
            config.listen = (ip, 0).into();
            config.advertise = Some(quic.local_addr().into());
            fronts = vec![quic, https];
        }
        let relay = Relay::start(config, cancel.clone())
            .await
            .with_context(|| format!("starting relay {name}"))?;
        for front in &fronts {
            // QUIC and HTTPS share the port number on the relay's side as well.
            front.set_upstream(relay.local_addr());
        }
        let addr = fronts
            .first()
            .map(|f| f.local_addr())
            .unwrap_or(relay.local_addr());
        relays.push(serde_json::json!({
            "name": name,
            "region": region,
            "addr": addr.to_string(),
            // HTTPS shares the advertised port (on the relay, or its fronts).
            "web_port": addr.port(),
            "apps_domain": format!("apps.{region}.localhost"),
            "admin_addr": relay.admin_addr().map(|a| a.to_string()),
            "rtt_from_home_ms": rtt_from_home.map(|d| d.as_secs_f64() * 1000.0),
        }));
        tasks.spawn(relay.run());
    }

    let echo = demo::bind_preferred(args.echo_port).await?;
    let http = demo::bind_preferred(args.http_port).await?;
    let (echo_port, http_port) = (demo::port_of(&echo), demo::port_of(&http));
    tasks.spawn(demo::echo_server(echo, cancel.clone()));
    tasks.spawn(demo::http_app(http, workspace.to_string(), cancel.clone()));

    let mut agent_config = AgentConfig::new(control_url.clone(), ca_pem.clone(), agent_token);
    // Behind the emulator the agent chooses the nearest region, as in production; on
    // plain loopback every region is equally near, so it is pinned to the first.
    if wan.is_none() {
        agent_config.region = args.regions.first().cloned();
    }
    // Telemetry often enough that the dashboard's charts move while one watches, and
    // two metadata items to show (one from a command, one from a file).
    agent_config.telemetry.interval = Some(Duration::from_secs(2));
    agent_config.telemetry.items = vec![
        ferry_agent::telemetry::ItemSpec {
            key: "processes".into(),
            name: Some("Processes".into()),
            source: ferry_agent::telemetry::ItemSource::Command(
                "ls -d /proc/[0-9]* | wc -l".into(),
            ),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        },
        ferry_agent::telemetry::ItemSpec {
            key: "kernel".into(),
            name: Some("Kernel".into()),
            source: ferry_agent::telemetry::ItemSource::File("/proc/sys/kernel/osrelease".into()),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        },
    ];
    let agent = Agent::new(agent_config)?;
    let agent_admin = crate::cmd_servers::agent_admin(loopback_any, &agent).await?;
    let agent_admin_addr = agent_admin.local_addr();
    tasks.spawn(agent_admin.serve(cancel.clone()));
    let mut status = agent.status();
    let agent_cancel = cancel.clone();
    tasks.spawn(async move {
        if let Err(e) = agent.run(agent_cancel).await {
            tracing::error!(error = %e, "demo agent stopped");
        }
    });
    let connected = tokio::time::timeout(
        Duration::from_secs(15),
        // With several relays per region, wait for the standby link too.
        status.wait_for(|s| match s {
            AgentStatus::Connected { standby, .. } => {
                standby.is_some() || args.relays_per_region < 2
            }
            _ => false,
        }),
    )
    .await;
    let agent_relay = match connected {
        Ok(Ok(s)) => match &*s {
            AgentStatus::Connected {
                relay,
                standby: Some(standby),
            } => format!("{relay}, standby {standby}"),
            AgentStatus::Connected { relay, .. } => relay.clone(),
            _ => String::new(),
        },
        _ => {
            cancel.cancel();
            while tasks.join_next().await.is_some() {}
            bail!("the demo agent did not connect within 15s");
        }
    };

    // A sign-in link: the page trades the fragment (never sent to a server) for a session.
    let dashboard_url = format!("{control_url}/dashboard#token={user_token}");
    let config_path = config::default_path();
    if !args.no_config {
        CliConfig {
            control_url: Some(control_url.clone()),
            ca_file: Some(ca_file.clone()),
            token: Some(user_token),
            // On plain loopback every region is equally near, and a client choosing by
            // noise would often enter through another region than the agent's and pay
            // a mesh hop; prefer the agent's region, as the agent is pinned to it.
            region: if wan.is_none() {
                args.regions.first().cloned()
            } else {
                None
            },
            transport: None,
        }
        .save(&config_path)?;
    }

    println!("ferry dev network is up.\n");
    println!(
        "  control plane  {control_url}   (data in {})",
        data_dir.display()
    );
    for r in &relays {
        let rtt = match r["rtt_from_home_ms"].as_f64() {
            Some(ms) => format!("   (emulated RTT from here {ms:.0} ms)"),
            None => String::new(),
        };
        println!(
            "  relay {:<8} region {:<6} quic://{}   metrics http://{}/metrics{rtt}",
            r["name"].as_str().unwrap_or(""),
            r["region"].as_str().unwrap_or(""),
            r["addr"].as_str().unwrap_or(""),
            r["admin_addr"].as_str().unwrap_or("")
        );
    }
    println!("  dashboard      {dashboard_url}");
    println!(
        "                 (signs you in as `{DEV_USER}`; the browser must trust {})",
        ca_file.display()
    );
    println!("  workspace      {workspace}  (agent on relay {agent_relay})");
    println!("    echo service 127.0.0.1:{echo_port}");
    println!("    http app     127.0.0.1:{http_port}");
    // Any relay of the agent's region serves its apps; show the first one's.
    let web_port = relays
        .first()
        .and_then(|r| r["web_port"].as_u64())
        .unwrap_or(0);
    let apps_domain = format!(
        "apps.{}.localhost",
        args.regions.first().map(String::as_str).unwrap_or("eu")
    );
    let app_url = format!("https://{http_port}--{workspace}.{apps_domain}:{web_port}/");
    let terminal_url = format!("https://terminal--{workspace}.{apps_domain}:{web_port}/");
    println!("    app URL      {app_url}");
    println!("    terminal URL {terminal_url}");
    println!(
        "                 (browser sign-in: `{DEV_USER}`, password in {}; trust the CA {})",
        data_dir.join(DEV_PASSWORD_FILE).display(),
        ca_file.display()
    );
    println!(
        "  metrics        http://{control_admin}/metrics (control plane), http://{agent_admin_addr}/metrics (agent)"
    );
    println!(
        "                 (one process: each admin port serves the whole dev network's metrics)"
    );
    if args.no_config {
        println!("\n  CLI config not written (--no-config).");
    } else {
        println!(
            "\n  CLI config written to {} (user `{DEV_USER}`).",
            config_path.display()
        );
    }
    println!("\nTry, in another shell:");
    println!("  echo hello | ferry tcp {DEMO_WORKSPACE} {echo_port}");
    println!("  ferry port-forward {DEMO_WORKSPACE} 8080:{http_port}   # then: curl http://127.0.0.1:8080/");
    if wan.is_some() {
        println!("  ferry ping                  # RTT to every region, and which one is chosen");
        println!(
            "  ferry status {DEMO_WORKSPACE}           # the path to the workspace, hop by hop"
        );
    }
    println!("\nCtrl-C stops everything.");
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "control_url": control_url,
                "dashboard_url": dashboard_url,
                "ca_file": ca_file,
                "workspace": workspace.to_string(),
                "echo_port": echo_port,
                "http_port": http_port,
                "app_url": app_url,
                "terminal_url": terminal_url,
                "relays": relays,
                "control_admin_addr": control_admin.to_string(),
                "agent_admin_addr": agent_admin_addr.to_string(),
            }),
        )?;
    }

    cancel.cancelled().await;
    println!("stopping...");
    while tasks.join_next().await.is_some() {}
    if let Some((emulator, _)) = wan {
        emulator.join().await;
    }
    Ok(())
}
