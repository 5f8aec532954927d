//! The load of the traffic phase, every kind at once until the phase ends:
//!
//! - echo sessions (SSH-like): one client QUIC connection and one stream each, to the
//!   bench echo server behind a workspace's agent, a 64-byte round trip every tick;
//! - terminal sessions: a real shell on a PTY in the agent, a command typed every
//!   second, timed until its output comes back;
//! - app traffic: HTTP requests, each on a new stream, to an HTTP server behind an
//!   agent;
//! - dashboard loads: the API reads a dashboard page makes, as the user.
//!
//! A session that fails is counted and ends: "no interrupted session" means none did.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ferry_proto::api::*;
use ferry_proto::terminal::TerminalFrame;
use ferry_proto::{alpn, StreamHeader, Target, WorkspaceLabel};
use ferry_transport::dial::{self, Session};
use ferry_transport::{ControlClient, Limits};
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::record::Series;
use crate::idle::network::RELAY_SERVER_NAME;
use crate::server::MODE_ECHO;

/// Client endpoints (UDP sockets) the sessions' connections share.
pub fn client_endpoints(relay: SocketAddr, ca_pem: &str, n: usize) -> Result<Vec<quinn::Endpoint>> {
    (0..n.max(1))
        .map(|_| {
            let tls = ferry_certs::client_config(ca_pem, &[alpn::CLIENT])?;
            Ok(ferry_transport::quic::client_endpoint(
                relay,
                tls,
                &Limits::default(),
            )?)
        })
        .collect()
}

/// A user's connection to the relay, as `ferry ssh` or `ferry port-forward` makes,
/// timed into `handshakes` (QUIC handshake and hello).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    token: &str,
    handshakes: &Series,
) -> Result<Session> {
    let start = Instant::now();
    let r = dial::connect(endpoint, relay, RELAY_SERVER_NAME, token)
        .await
        .context("connecting to the relay");
    handshakes.record(start.elapsed(), &r);
    r
}

pub async fn open(
    session: &Session,
    workspace: &str,
    target: Target,
) -> Result<(SendStream, RecvStream)> {
    let label = WorkspaceLabel::parse(workspace).context("workspace label")?;
    dial::open_stream(
        &session.conn,
        &StreamHeader::new(label, target),
        dial::STREAM_REPLY_TIMEOUT,
    )
    .await
    .with_context(|| format!("opening a stream to {workspace}"))
}

/// One echo session: connect, open the stream, then a 64-byte round trip every
/// `every` until `stop`. Setup goes into `setup`, round trips into `echoes`.
#[allow(clippy::too_many_arguments)]
pub async fn echo_session(
    endpoint: quinn::Endpoint,
    relay: SocketAddr,
    token: String,
    workspace: String,
    port: u16,
    every: Duration,
    stop: CancellationToken,
    handshakes: Series,
    setup: Series,
    echoes: Series,
) {
    let start = Instant::now();
    let opened = async {
        let session = connect(&endpoint, relay, &token, &handshakes).await?;
        let (mut send, recv) = open(&session, &workspace, Target::Port(port)).await?;
        send.write_all(&[MODE_ECHO]).await?;
        anyhow::Ok((session, send, recv))
    }
    .await;
    setup.record(start.elapsed(), &opened);
    let Ok((session, mut send, mut recv)) = opened else {
        return;
    };
    let mut msg = [0x33u8; 64];
    let mut back = [0u8; 64];
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        seq += 1;
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        let r = async {
            send.write_all(&msg).await?;
            recv.read_exact(&mut back).await?;
            ensure!(back == msg, "echo #{seq} came back different");
            anyhow::Ok(())
        }
        .await
        .with_context(|| format!("echo session to {workspace}"));
        echoes.record(t.elapsed(), &r);
        if r.is_err() {
            return;
        }
    }
    let _ = send.finish();
    session.conn.close(0u32.into(), b"done");
}

/// One terminal session: a shell in the workspace; every `every` a command is typed
/// and timed until its output is seen. Ends with `exit` and waits for the shell to go.
#[allow(clippy::too_many_arguments)]
pub async fn terminal_session(
    endpoint: quinn::Endpoint,
    relay: SocketAddr,
    token: String,
    workspace: String,
    every: Duration,
    stop: CancellationToken,
    handshakes: Series,
    setup: Series,
    keystrokes: Series,
) {
    let start = Instant::now();
    let opened = async {
        let session = connect(&endpoint, relay, &token, &handshakes).await?;
        let streams = open(
            &session,
            &workspace,
            Target::Terminal { cols: 80, rows: 24 },
        )
        .await?;
        anyhow::Ok((session, streams))
    }
    .await;
    setup.record(start.elapsed(), &opened);
    let Ok((session, (mut send, mut recv))) = opened else {
        return;
    };
    let mut output: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        // The shell computes the marker, so the echo of the typed line never matches.
        let needle = format!("M{n}X");
        let mut frame = Vec::new();
        TerminalFrame::encode_input(format!("echo M$(({n}))X\n").as_bytes(), &mut frame);
        let t = Instant::now();
        let r = async {
            send.write_all(&frame).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                if find(&output, needle.as_bytes()).is_some() {
                    output.clear();
                    return Ok(());
                }
                let got = tokio::time::timeout_at(deadline, recv.read(&mut buf))
                    .await
                    .context("no output within 15 s")??;
                match got {
                    Some(k) => output.extend_from_slice(&buf[..k]),
                    None => bail!("the terminal closed"),
                }
            }
        }
        .await
        .with_context(|| format!("terminal session in {workspace}"));
        keystrokes.record(t.elapsed(), &r);
        if r.is_err() {
            return;
        }
    }
    let mut frame = Vec::new();
    TerminalFrame::encode_input(b"exit\n", &mut frame);
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
    // The shell exits and the agent ends the stream; its output is not needed.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = recv.read(&mut buf).await {}
    })
    .await;
    session.conn.close(0u32.into(), b"done");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The app's page: 4 KiB, what a small API answer or page fragment weighs.
const APP_BODY: usize = 4096;

/// A minimal HTTP/1.1 server on 127.0.0.1 (one response per connection): the app
/// behind the agents. Like the bench server it runs on a thread and runtime of its
/// own, so that a busy load generator does not leave connections unaccepted (which
/// would count against the path). Stops when dropped.
pub struct AppServer {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AppServer {
    pub fn start() -> Result<AppServer> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the app server")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("app-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let mut conns = tokio::task::JoinSet::new();
                    let accept_loop = async {
                        loop {
                            tokio::select! {
                                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                                accepted = listener.accept() => {
                                    let Ok((stream, _)) = accepted else { continue };
                                    conns.spawn(serve_app(stream));
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = accept_loop => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(AppServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_app(mut stream: tokio::net::TcpStream) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while find(&req, b"\r\n\r\n").is_none() && req.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {APP_BODY}\r\nConnection: close\r\n\r\n"
    );
    let mut resp = head.into_bytes();
    resp.extend(std::iter::repeat_n(b'a', APP_BODY));
    let _ = stream.write_all(&resp).await;
    let _ = stream.shutdown().await;
}

/// One app client: a connection to the relay, then a request on a new stream every
/// `every` until `stop`, each timed from opening the stream to the whole response.
#[allow(clippy::too_many_arguments)]
pub async fn app_client(
    endpoint: quinn::Endpoint,
    relay: SocketAddr,
    token: String,
    workspace: String,
    port: u16,
    every: Duration,
    stop: CancellationToken,
    handshakes: Series,
    requests: Series,
) {
    let session = match connect(&endpoint, relay, &token, &handshakes).await {
        Ok(s) => s,
        // Counted in `handshakes`.
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        let r = async {
            let (mut send, mut recv) = open(&session, &workspace, Target::Port(port)).await?;
            send.write_all(
                format!("GET /app HTTP/1.1\r\nHost: {workspace}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            send.finish()?;
            let resp = recv.read_to_end(64 * 1024).await?;
            ensure!(
                resp.starts_with(b"HTTP/1.1 200 ") && resp.ends_with(&[b'a'; 16]),
                "unexpected answer from the app: {:?}",
                String::from_utf8_lossy(&resp[..resp.len().min(80)])
            );
            anyhow::Ok(())
        }
        .await
        .with_context(|| format!("app request to {workspace}"));
        requests.record(t.elapsed(), &r);
    }
    session.conn.close(0u32.into(), b"done");
}

/// One dashboard user: every `every`, the reads a dashboard page makes (who am I, my
/// workspaces, the region map, my workspace's route and metadata), one after the
/// other, timed as one page load.
pub async fn dashboard(
    client: ControlClient,
    token: String,
    workspace: String,
    every: Duration,
    stop: CancellationToken,
    loads: Series,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        let r = async {
            let auth = Some(token.as_str());
            let _: MeResponse = client.get("/api/v1/me", auth).await?;
            let ws: WorkspacesResponse = client.get("/api/v1/workspaces", auth).await?;
            ensure!(
                ws.workspaces.iter().any(|w| w.label == workspace),
                "the dashboard does not list {workspace}"
            );
            let _: RegionsResponse = client.get("/api/v1/regions", auth).await?;
            let _: RouteResponse = client
                .get(&format!("/api/v1/workspaces/{workspace}/route"), auth)
                .await?;
            let _: WorkspaceMetadataResponse = client
                .get(&format!("/api/v1/workspaces/{workspace}/metadata"), auth)
                .await?;
            anyhow::Ok(())
        }
        .await
        .context("dashboard load");
        loads.record(t.elapsed(), &r);
    }
}
