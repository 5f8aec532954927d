//! Abuse on the relay's HTTPS port, with real processes on loopback: slowloris
//! (connections that trickle a request head), and HTTP/2 rapid reset, CONTINUATION and
//! SETTINGS floods written as raw frames (an HTTP/2 library would refuse to send such
//! sequences). In each, a legitimate user's echo and app requests keep working and the
//! relay's memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::victim::{Victim, APPS, ATTACKER_IP};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

async fn connect_tls(
    config: Arc<rustls::ClientConfig>,
    https: SocketAddr,
) -> Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ATTACKER_IP.parse()?, 0))?;
    let tcp = socket.connect(https).await?;
    let name = rustls::pki_types::ServerName::try_from(format!("x.{APPS}"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_capped_per_address_and_cut_at_the_header_timeout() -> Result<()> {
    let mut v = Victim::start(
        "abuse-slowloris",
        &[
            "--https-max-connections-per-address",
            "16",
            "--https-header-timeout-ms",
            "2000",
        ],
    )
    .await?;
    let admin = v.net.relay("eu-1").admin;
    let ca = std::fs::read_to_string(&v.net.ca_file)?;
    let config = Arc::new(ferry_certs::client_config(&ca, &[b"http/1.1"])?);
    let https = v.https_addr();
    let attack = async move {
        // 64 connections at once, half of them trickling a never-ending request head
        // (a byte every 100 ms), until the relay closes them (or 8 s).
        let mut conns = tokio::task::JoinSet::new();
        for i in 0..64 {
            let config = config.clone();
            conns.spawn(async move {
                let Ok(mut tls) = connect_tls(config, https).await else {
                    return None;
                };
                let start = Instant::now();
                // Every other one says nothing at all after TLS (hyper's own header
                // timeout does not start before the first byte).
                let trickle = i % 2 == 0;
                if trickle && tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
                    return Some(start.elapsed());
                }
                let mut buf = [0u8; 1024];
                while start.elapsed() < Duration::from_secs(8) {
                    let closed = tokio::select! {
                        r = tls.read(&mut buf) => !matches!(r, Ok(n) if n > 0),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            trickle && (tls.write_all(b"x").await.is_err() || tls.flush().await.is_err())
                        }
                    };
                    if closed {
                        return Some(start.elapsed());
                    }
                }
                Some(Duration::MAX)
            });
        }
        let mut held = Vec::new();
        let mut refused = 0;
        while let Some(r) = conns.join_next().await {
            match r? {
                Some(took) => held.push(took),
                None => refused += 1,
            }
        }
        Ok::<_, anyhow::Error>((held, refused))
    };
    let ((held, refused), watch) = v.during(attack).await?;
    eprintln!(
        "slowloris: {} held (closed after {held:?}), {refused} refused",
        held.len()
    );
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);
    assert!(
        held.len() <= 16,
        "one address held {} connections",
        held.len()
    );
    assert!(refused >= 48, "{refused}");
    let slowest = held.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(5),
        "silent and trickling connections were cut at the 2 s header timeout: {slowest:?}"
    );
    let after = scrape(admin).await?;
    assert!(
        after.sum(
            "ferry_relay_refusals_total",
            &[("scope", "https"), ("reason", "address_limit")]
        ) >= refused as f64
    );
    Ok(())
}

/// Raw HTTP/2 frames (RFC 9113 §4.1): 24-bit length, type, flags, 31-bit stream id.
mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK for `GET https://HOST/.ferry/ping`: static-table entries, and literals
    /// without indexing (so that no dynamic table state is involved).
    pub fn request_block(host: &str) -> Vec<u8> {
        let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
        literal_indexed_name(&mut b, 4, "/.ferry/ping"); // :path
        literal_indexed_name(&mut b, 1, host); // :authority
        b
    }

    fn literal_indexed_name(b: &mut Vec<u8>, index: u8, value: &str) {
        b.push(index); // 0000 + 4-bit index: literal without indexing
        b.push(value.len() as u8); // no Huffman, 7-bit length (values here are short)
        b.extend_from_slice(value.as_bytes());
    }

    /// A literal header with a new name, for CONTINUATION payloads.
    pub fn junk_header(n: u32) -> Vec<u8> {
        let name = format!("x-junk-{n}");
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(8);
        b.extend_from_slice(b"aaaaaaaa");
        b
    }
}

/// Reads frames until GOAWAY or EOF; resolves to what ended it.
async fn read_until_goaway(mut rd: impl AsyncReadExt + Unpin) -> &'static str {
    let mut head = [0u8; 9];
    loop {
        if rd.read_exact(&mut head).await.is_err() {
            return "eof";
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            return "eof";
        }
        if head[3] == h2::GOAWAY {
            return "goaway";
        }
    }
}

/// An HTTP/2 connection from the attacker past its preface and first SETTINGS.
async fn attacker_h2(
    config: Arc<rustls::ClientConfig>,
    https: SocketAddr,
) -> Result<TlsStream<TcpStream>> {
    let mut tls = connect_tls(config, https).await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the relay did not pick h2"
    );
    tls.write_all(h2::PREFACE).await?;
    tls.write_all(&h2::frame(h2::SETTINGS, 0, 0, &[])).await?;
    Ok(tls)
}

fn h2_config(net: &Network) -> Result<Arc<rustls::ClientConfig>> {
    let ca = std::fs::read_to_string(&net.ca_file)?;
    Ok(Arc::new(ferry_certs::client_config(&ca, &[b"h2"])?))
}

/// One CONTINUATION flood on a new connection: HEADERS without END_HEADERS, then
/// CONTINUATION frames that never end the block (a server that buffers them grows
/// without bound). Returns the frames sent and how the connection ended.
async fn continuation_flood(
    config: Arc<rustls::ClientConfig>,
    https: SocketAddr,
) -> Result<(u32, &'static str)> {
    let tls = attacker_h2(config, https).await?;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut ended = tokio::spawn(read_until_goaway(rd));
    let host = format!("x.{APPS}");
    let block = h2::request_block(&host);
    wr.write_all(&h2::frame(h2::HEADERS, h2::END_STREAM, 1, &block))
        .await?;
    let start = Instant::now();
    let mut sent = 0u32;
    while sent < 5000 && start.elapsed() < Duration::from_secs(5) {
        tokio::select! {
            how = &mut ended => return Ok((sent, how?)),
            r = async {
                wr.write_all(&h2::frame(h2::CONTINUATION, 0, 1, &h2::junk_header(sent))).await?;
                wr.flush().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, std::io::Error>(())
            } => {
                if r.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    let how = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .map_or("still open", |r| r.unwrap_or("eof"));
    Ok((sent, how))
}

/// One rapid-reset run on a new connection: HEADERS then RST_STREAM(CANCEL), on new
/// streams, as fast as the connection takes them, until the relay ends it (or 20 000
/// streams, or `until`). Returns the streams opened and how the connection ended.
async fn rapid_reset(
    config: Arc<rustls::ClientConfig>,
    https: SocketAddr,
    until: Instant,
) -> Result<(u32, &'static str)> {
    let tls = attacker_h2(config, https).await?;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut ended = tokio::spawn(read_until_goaway(rd));
    let host = format!("x.{APPS}");
    let block = h2::request_block(&host);
    let mut streams = 0u32;
    let mut batch = Vec::new();
    while streams < 20_000 && Instant::now() < until && !ended.is_finished() {
        batch.clear();
        for _ in 0..50 {
            let id = 1 + 2 * streams;
            let both = h2::END_HEADERS | h2::END_STREAM;
            batch.extend(h2::frame(h2::HEADERS, both, id, &block));
            batch.extend(h2::frame(h2::RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
            streams += 1;
        }
        if wr.write_all(&batch).await.is_err() {
            break;
        }
    }
    let how = tokio::time::timeout(Duration::from_secs(2), &mut ended)
        .await
        .map_or("still open", |r| r.unwrap_or("eof"));
    Ok((streams, how))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_after_a_bounded_header_block() -> Result<()> {
    let mut v = Victim::start("abuse-h2-continuation", &[]).await?;
    let (config, https) = (h2_config(&v.net)?, v.https_addr());
    // Flood after flood, a new connection each time the relay cuts one, for 3 s.
    let attack = async move {
        let until = Instant::now() + Duration::from_secs(3);
        let mut rounds = Vec::new();
        while Instant::now() < until {
            rounds.push(continuation_flood(config.clone(), https).await?);
        }
        Ok::<_, anyhow::Error>(rounds)
    };
    let (rounds, watch) = v.during(attack).await?;
    let most = rounds.iter().map(|(sent, _)| *sent).max().unwrap_or(0);
    eprintln!(
        "CONTINUATION floods: {} connections, at most {most} frames on one",
        rounds.len()
    );
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);
    assert!(
        rounds.iter().all(|(_, how)| *how != "still open"),
        "the relay let an endless header block run: {rounds:?}"
    );
    assert!(
        most < 1000,
        "{most} CONTINUATION frames went by before a cut"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_and_settings_floods_leave_others_unharmed() -> Result<()> {
    let mut v = Victim::start("abuse-h2-reset", &[]).await?;
    let (config, https) = (h2_config(&v.net)?, v.https_addr());

    // Rapid reset for 4 s, on a new connection each time the relay ends one.
    let attack = {
        let config = config.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(4);
            let mut rounds = Vec::new();
            while Instant::now() < until {
                rounds.push(rapid_reset(config.clone(), https, until).await?);
            }
            Ok::<_, anyhow::Error>(rounds)
        }
    };
    let (rounds, watch) = v.during(attack).await?;
    let streams: u32 = rounds.iter().map(|(n, _)| n).sum();
    eprintln!(
        "rapid reset: {streams} streams opened and reset on {} connections: {rounds:?}",
        rounds.len()
    );
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);

    // SETTINGS flood: SETTINGS frames as fast as they go, never reading the ACKs, for
    // 3 s. The relay must stop reading (its ACKs back up) or close, not queue ACKs
    // without bound.
    let tls = attacker_h2(config, https).await?;
    let attack = async move {
        let (_rd, mut wr) = tokio::io::split(tls);
        // SETTINGS_MAX_CONCURRENT_STREAMS = 100, 10 times per frame.
        let mut payload = Vec::new();
        for _ in 0..10 {
            payload.extend_from_slice(&[0x00, 0x03, 0, 0, 0, 100]);
        }
        let frame = h2::frame(h2::SETTINGS, 0, 0, &payload);
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 100)
            .collect();
        let start = Instant::now();
        let mut written = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(Duration::from_millis(500), wr.write_all(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                // Closed, or stalled (the relay stopped reading): either bounds it.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok::<_, anyhow::Error>(written)
    };
    let (written, watch) = v.during(attack).await?;
    eprintln!("SETTINGS flood: {written} bytes taken before the relay pushed back");
    watch.assert_unharmed(Duration::from_secs(2), Duration::from_secs(5), 64 * 1024);
    assert!(
        written < 32 * 1024 * 1024,
        "the relay took {written} bytes of SETTINGS without pushing back"
    );
    Ok(())
}
