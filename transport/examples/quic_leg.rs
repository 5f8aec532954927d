//! What a QUIC leg and a mesh hop cost, isolated from the rest of ferry: CPU time per
//! byte of one-stream bulk transfers between endpoints built as relays build theirs,
//! on loopback, all in this process (one tokio runtime, two workers).
//!
//! ```sh
//! cargo run --release -p ferry-transport --example quic_leg [-- <MiB> <trials>]
//! ```
//!
//! Four paths, measured in turns within one run:
//! - *internet leg*: client or agent to relay, 1452-byte packets;
//! - *mesh leg*: relay to relay, jumbo packets ([`MESH_MAX_UDP_PAYLOAD`]);
//! - *internet, relay, internet*: the QUIC part of a stream entering at its owner
//!   relay (client, relay, agent), the relay splicing one leg onto the next;
//! - *internet, relay, mesh, relay, internet*: the same entering at another relay.
//!
//! The last two give the mesh hop's cost the way `ferry-netbench throughput` does for
//! whole paths, without the TCP ends, the separate processes and the load generator
//! sharing the cores. CPU is what this process's threads spent on the CPU
//! (/proc/self/task/*/schedstat), so both sides of every leg count.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_transport::quic::{
    client_config, server_endpoint, udp_socket, Limits, MESH_MAX_UDP_PAYLOAD,
};

/// Nanoseconds this process's threads have been on a CPU.
fn cpu_ns() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("procfs");
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn endpoint(ca: &ferry_certs::Ca, limits: &Limits) -> quinn::Endpoint {
    let leaf = ca
        .issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)
        .expect("certificate");
    let tls = ferry_certs::server_config(&leaf, &[b"leg"]).expect("TLS");
    let socket = udp_socket("127.0.0.1:0".parse().expect("literal")).expect("socket");
    server_endpoint(socket, tls, limits, b"leg").expect("endpoint")
}

/// A connection from `from` to `to`, dialed with `limits`: (dialer's, acceptor's).
async fn link(
    ca: &ferry_certs::Ca,
    from: &quinn::Endpoint,
    to: &quinn::Endpoint,
    limits: &Limits,
) -> (quinn::Connection, quinn::Connection) {
    let tls = ferry_certs::client_config(ca.cert_pem(), &[b"leg"]).expect("TLS");
    let config = client_config(tls, limits).expect("config");
    let accepting = {
        let to = to.clone();
        tokio::spawn(async move { to.accept().await?.await.ok() })
    };
    let dialer = from
        .connect_with(config, to.local_addr().expect("bound"), "127.0.0.1")
        .expect("connect")
        .await
        .expect("handshake");
    let acceptor = accepting.await.expect("accept task").expect("accepted");
    (dialer, acceptor)
}

/// The paths measured: each is a chain of legs with a relay splicing between them.
#[derive(Clone, Copy)]
enum Path {
    InternetLeg,
    MeshLeg,
    /// Client, owner relay, agent: what a stream crosses when it enters at its owner.
    Direct,
    /// Client, another relay, mesh, owner relay, agent: one mesh hop more.
    Mesh,
}

impl Path {
    const ALL: [Path; 4] = [Path::InternetLeg, Path::MeshLeg, Path::Direct, Path::Mesh];

    fn label(self) -> &'static str {
        match self {
            Path::InternetLeg => "internet leg",
            Path::MeshLeg => "mesh leg",
            Path::Direct => "internet, relay, internet",
            Path::Mesh => "internet, relay, mesh, relay, internet",
        }
    }

    fn legs(self) -> Vec<Limits> {
        match self {
            Path::InternetLeg => vec![Limits::default()],
            Path::MeshLeg => vec![Limits::mesh()],
            Path::Direct => vec![Limits::default(), Limits::default()],
            Path::Mesh => vec![Limits::default(), Limits::mesh(), Limits::default()],
        }
    }
}

/// One transfer of `bytes` along `path`: (Gbit/s, CPU ns per byte).
async fn transfer(path: Path, bytes: u64) -> (f64, f64) {
    let ca = ferry_certs::Ca::create().expect("CA");
    let legs = path.legs();
    let nodes: Vec<quinn::Endpoint> = (0..=legs.len())
        .map(|_| endpoint(&ca, &Limits::mesh()))
        .collect();
    // links[i] goes from node i to node i + 1: (dialer's side, acceptor's side).
    let mut links = Vec::new();
    for (i, limits) in legs.iter().enumerate() {
        links.push(link(&ca, &nodes[i], &nodes[i + 1], limits).await);
    }
    // Each relay in between splices the stream it accepts onto its next leg. The
    // relays keep their connections after the stream ends (dropping the last handle
    // would close one before the receiver has everything): `links` outlives them.
    for window in links.windows(2) {
        let (incoming, outgoing) = (window[0].1.clone(), window[1].0.clone());
        tokio::spawn(async move {
            let (_back, from) = incoming.accept_bi().await.expect("stream");
            let (to, _back) = outgoing.open_bi().await.expect("stream");
            ferry_transport::splice::quic_to_quic(from, to).await
        });
    }
    let sink = links.last().expect("a leg").1.clone();
    let receiver = tokio::spawn(async move {
        let (_send, mut recv) = sink.accept_bi().await.expect("stream");
        let mut n = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
            n += chunk.bytes.len() as u64;
        }
        n
    });
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let (started, cpu_before) = (Instant::now(), cpu_ns());
    let (mut send, _recv) = links[0].0.open_bi().await.expect("stream");
    let mut sent = 0;
    while sent < bytes {
        send.write_chunk(chunk.clone()).await.expect("write");
        sent += chunk.len() as u64;
    }
    send.finish().expect("finish");
    let got = receiver.await.expect("receiver");
    assert_eq!(got, sent, "every byte arrives");
    let secs = started.elapsed().as_secs_f64();
    let cpu = (cpu_ns() - cpu_before) as f64;
    drop(links);
    (got as f64 * 8.0 / secs / 1e9, cpu / got as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(1024, |a| a.parse().expect("MiB"));
    let trials: usize = args.next().map_or(3, |a| a.parse().expect("trials"));
    let mut gbits = vec![Vec::new(); Path::ALL.len()];
    let mut costs = vec![Vec::new(); Path::ALL.len()];
    for trial in 1..=trials {
        for (i, &path) in Path::ALL.iter().enumerate() {
            let (gbit, ns) =
                tokio::time::timeout(Duration::from_secs(300), transfer(path, mib << 20))
                    .await
                    .expect("transfer within 5 minutes");
            println!(
                "trial {trial}/{trials}  {:<40} {gbit:6.2} Gbit/s  {ns:.3} ns/B",
                path.label()
            );
            gbits[i].push(gbit);
            costs[i].push(ns);
        }
    }
    println!("\n{mib} MiB per transfer, median of {trials}; mesh packets up to {MESH_MAX_UDP_PAYLOAD} bytes");
    let gbit: Vec<f64> = gbits.into_iter().map(median).collect();
    let ns: Vec<f64> = costs.into_iter().map(median).collect();
    for (i, path) in Path::ALL.iter().enumerate() {
        println!(
            "{:<40} {:6.2} Gbit/s  {:.3} ns/B",
            path.label(),
            gbit[i],
            ns[i]
        );
    }
    println!(
        "mesh leg / internet leg, CPU per byte: {:.2}x",
        ns[1] / ns[0]
    );
    println!(
        "one mesh hop more / entering at the owner: speed {:.2}x, CPU per byte {:.2}x ({:+.3} ns/B)",
        gbit[3] / gbit[2],
        ns[3] / ns[2],
        ns[3] - ns[2]
    );
}
