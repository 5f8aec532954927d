//! `ferry ping`: RTT, jitter and loss to every region and which one is chosen and why;
//! `ferry status WORKSPACE`: the path to a workspace with each hop's RTT.

use std::time::Duration;

use anyhow::{bail, Result};
use ferry_proto::api::RelayInfo;

use crate::client::{in_service, region_map, WorkspaceConnection};
use crate::config::ClientArgs;
use crate::latency::{self, Selection};

#[derive(Debug, clap::Args)]
pub struct PingArgs {
    /// Probe rounds (each probes every relay once)
    #[arg(long, short = 'c', default_value_t = 5)]
    pub count: u32,
    /// Milliseconds between rounds
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn ping(args: PingArgs) -> Result<()> {
    let settings = args.client.settings()?;
    let regions = in_service(region_map(&settings).await?);
    let relays: Vec<RelayInfo> = regions.iter().flat_map(|r| r.relays.clone()).collect();
    if relays.is_empty() {
        bail!("no relays are registered with the control plane");
    }
    let mut selection = Selection::load(&settings, &regions);
    let mut last_round = Vec::new();
    let mut methods: std::collections::BTreeMap<String, String> = Default::default();
    for round in 0..args.count.max(1) {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let probes = latency::probe_round(&settings, &relays, false).await?;
        for p in &probes {
            if let Some((_, method)) = p.answer {
                methods.insert(p.relay.region.clone(), method.to_string());
            }
        }
        selection.record(&probes);
        last_round = probes;
    }
    let choice = selection.choose_and_save(&settings);
    let body = latency::measurements(&settings, &selection, &last_round);
    latency::report(&settings, &body, Duration::from_secs(2)).await;

    let rows = selection.selector.rows();
    // How each region's first relay is reached (QUIC, or the TCP tunnel where UDP is
    // blocked), and why: one real connection per region.
    let mut transports: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for region in &regions {
        if let Some(relay) = region.relays.first() {
            let seen = match crate::client::transport_to(&settings, relay).await {
                Ok((t, why)) => (t.to_string(), why),
                Err(e) => ("none".to_string(), format!("{e:#}")),
            };
            transports.insert(region.name.clone(), seen);
        }
    }
    if args.json {
        let regions: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "region": r.name,
                    "rtt_us": r.rtt.map(|d| d.as_micros() as u64),
                    "jitter_us": r.jitter.as_micros() as u64,
                    "loss": r.loss,
                    "up": r.up,
                    "probes": r.samples,
                    "via": methods.get(&r.name),
                    "transport": transports.get(&r.name).map(|t| &t.0),
                    "transport_reason": transports.get(&r.name).map(|t| &t.1),
                })
            })
            .collect();
        let out = serde_json::json!({
            "chosen": choice.region,
            "reason": choice.reason.to_string(),
            "regions": regions,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<12} {:>10} {:>10} {:>6} {:>7}  {:<5}",
        "REGION", "RTT", "JITTER", "LOSS", "PROBES", "VIA"
    );
    for r in &rows {
        let mark = if choice.region.as_deref() == Some(r.name.as_str()) {
            "  <- chosen"
        } else {
            ""
        };
        println!(
            "{:<12} {:>10} {:>10} {:>5.0}% {:>7}  {:<5}{mark}",
            r.name,
            match (r.up, r.rtt) {
                (true, Some(rtt)) => ms(rtt),
                _ => "down".to_string(),
            },
            ms(r.jitter),
            r.loss * 100.0,
            r.samples,
            methods.get(&r.name).map(String::as_str).unwrap_or("-"),
        );
    }
    match &choice.region {
        Some(region) => println!("\nchosen: {region} ({})", choice.reason),
        None => println!("\nchosen: none ({})", choice.reason),
    }
    println!();
    for (region, (transport, why)) in &transports {
        println!("transport to {region}: {transport} ({why})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Workspace: NAME (yours) or NAME--OWNER
    pub workspace: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let settings = args.client.settings()?;
    let conn = WorkspaceConnection::connect(&settings, &args.workspace).await?;
    let traced = conn.trace().await;
    let transport = conn.transport().await;
    let workspace = conn.workspace.to_string();
    conn.close().await;
    let (relay, rtt, report) = traced?;
    let mut hops = vec![(
        "client".to_string(),
        format!("relay:{relay}"),
        rtt.as_micros() as u64,
    )];
    hops.extend(
        report
            .hops
            .into_iter()
            .map(|h| (h.from, h.to, u64::from(h.rtt_us))),
    );
    let total: u64 = hops.iter().map(|h| h.2).sum();
    if args.json {
        let out = serde_json::json!({
            "workspace": workspace,
            "hops": hops.iter().map(|(from, to, rtt_us)| serde_json::json!({
                "from": from, "to": to, "rtt_us": rtt_us,
            })).collect::<Vec<_>>(),
            "total_rtt_us": total,
            "transport": transport.as_ref().map(|t| t.0.to_string()),
            "transport_reason": transport.as_ref().map(|t| t.1.clone()),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let show = |s: &str| s.replacen(':', " ", 1);
    println!("workspace {workspace}");
    if let Some((transport, why)) = &transport {
        println!("  transport to the relay: {transport} ({why})");
    }
    for (from, to, rtt_us) in &hops {
        println!(
            "  {:<24} -> {:<28} {:>10}",
            show(from),
            show(to),
            ms(Duration::from_micros(*rtt_us))
        );
    }
    println!(
        "  {:<24}    {:<28} {:>10}",
        "total",
        "",
        ms(Duration::from_micros(total))
    );
    Ok(())
}
