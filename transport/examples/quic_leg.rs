//! What one QUIC leg costs, isolated from the rest of ferry: CPU time per byte of a
//! one-stream bulk transfer between endpoints built as relays build theirs, on
//! loopback, all in this process (one tokio runtime, two workers).
//!
//! ```sh
//! cargo run --release -p ferry-transport --example quic_leg [-- <MiB> <trials>]
//! ```
//!
//! Three paths, measured in turns within one run:
//! - *internet leg*: client or agent to relay, 1452-byte packets;
//! - *mesh leg*: relay to relay, jumbo packets ([`MESH_MAX_UDP_PAYLOAD`]);
//! - *hop*: an internet leg into a relay that splices each stream onto a mesh leg, as
//!   the relay a client entered does on a mesh path.
//!
//! `ferry-netbench throughput` measures whole paths (client, relays, agent); this
//! tells how much of a mesh hop's cost is the QUIC leg itself. CPU is what this
//! process's threads spent on the CPU (/proc/self/task/*/schedstat), so the two
//! sides of each leg count together.

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

#[derive(Clone, Copy, PartialEq)]
enum Path {
    InternetLeg,
    MeshLeg,
    Hop,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::InternetLeg => "internet leg",
            Path::MeshLeg => "mesh leg",
            Path::Hop => "hop (internet leg, splice, mesh leg)",
        }
    }
}

/// One transfer of `bytes`: (Gbit/s, CPU ns per byte).
async fn transfer(path: Path, bytes: u64) -> (f64, f64) {
    let ca = ferry_certs::Ca::create().expect("CA");
    let relay = Limits::mesh();
    let (a, b, c) = (
        endpoint(&ca, &relay),
        endpoint(&ca, &relay),
        endpoint(&ca, &relay),
    );
    let first = if path == Path::MeshLeg {
        Limits::mesh()
    } else {
        Limits::default()
    };
    let (ab, ba) = link(&ca, &a, &b, &first).await;
    let (bc, cb) = link(&ca, &b, &c, &Limits::mesh()).await;
    let sink = if path == Path::Hop { cb } else { ba.clone() };
    let receiver = tokio::spawn(async move {
        let (_send, mut recv) = sink.accept_bi().await.expect("stream");
        let mut n = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
            n += chunk.bytes.len() as u64;
        }
        n
    });
    if path == Path::Hop {
        // The relay keeps its mesh connection after the stream ends (dropping the last
        // handle would close it before the receiver has everything).
        let bc = bc.clone();
        tokio::spawn(async move {
            let (_back, from) = ba.accept_bi().await.expect("stream");
            let (to, _back) = bc.open_bi().await.expect("stream");
            ferry_transport::splice::quic_to_quic(from, to).await
        });
    }
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let (started, cpu_before) = (Instant::now(), cpu_ns());
    let (mut send, _recv) = ab.open_bi().await.expect("stream");
    let mut sent = 0;
    while sent < bytes {
        send.write_chunk(chunk.clone()).await.expect("write");
        sent += chunk.len() as u64;
    }
    send.finish().expect("finish");
    let got = receiver.await.expect("receiver");
    drop(bc);
    assert_eq!(got, sent, "every byte arrives");
    let secs = started.elapsed().as_secs_f64();
    let cpu = (cpu_ns() - cpu_before) as f64;
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
    let paths = [Path::InternetLeg, Path::MeshLeg, Path::Hop];
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); paths.len()];
    for trial in 1..=trials {
        for (i, &path) in paths.iter().enumerate() {
            let (gbit, ns) =
                tokio::time::timeout(Duration::from_secs(300), transfer(path, mib << 20))
                    .await
                    .expect("transfer within 5 minutes");
            println!(
                "trial {trial}/{trials}  {:<38} {gbit:6.2} Gbit/s  {ns:.3} ns/B",
                path.label()
            );
            results[i].0.push(gbit);
            results[i].1.push(ns);
        }
    }
    println!("\n{mib} MiB per transfer, median of {trials}; mesh packets up to {MESH_MAX_UDP_PAYLOAD} bytes");
    let ns: Vec<f64> = results.iter().map(|(_, ns)| median(ns.clone())).collect();
    for (i, path) in paths.iter().enumerate() {
        println!(
            "{:<38} {:6.2} Gbit/s  {:.3} ns/B",
            path.label(),
            median(results[i].0.clone()),
            ns[i]
        );
    }
    println!(
        "mesh leg / internet leg, CPU per byte: {:.2}x",
        ns[1] / ns[0]
    );
    println!(
        "what the splice and mesh leg add to an internet leg: {:.3} ns/B",
        ns[2] - ns[0]
    );
}
