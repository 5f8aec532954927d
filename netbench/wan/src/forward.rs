//! The forwarders: UDP fronts (one upstream socket per client flow) and TCP fronts
//! (one upstream connection per accepted one), each direction shaped by the link
//! between the client's location (from its source address) and the front's.
//!
//! Tasks: the [`Emulator`] owns one task per front in a `JoinSet`; a front owns its
//! flows' (or connections') tasks in its own `JoinSet`. Everything stops when the
//! emulator's cancellation token fires or the emulator is dropped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{LinkSpec, Shaper, Topology};

/// A UDP flow with no datagram either way for this long is forgotten.
const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Datagrams in flight per flow direction; more are dropped (a full router queue).
const DATAGRAM_QUEUE: usize = 4096;
/// Chunks in flight per TCP direction; more wait (backpressure to the sender).
const STREAM_QUEUE: usize = 256;
const MAX_DATAGRAM: usize = 65_535;

/// Why a front could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WanError {
    #[error("unknown location `{0}` (not in the topology)")]
    UnknownLocation(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A port on the emulator standing for a server in some location.
#[derive(Debug, Clone)]
pub struct Front {
    addr: SocketAddr,
    location: String,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

impl Front {
    /// Where clients send to reach the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Points the front at the server's real address (a front can exist before its
    /// server, so that the server can advertise it). Until then traffic is dropped.
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    fn upstream(&self) -> Option<SocketAddr> {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running emulator: a topology and the fronts made from it.
pub struct Emulator {
    topology: Arc<Topology>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Emulator {
    pub fn new(topology: Topology, cancel: CancellationToken) -> Emulator {
        Emulator {
            topology: Arc::new(topology),
            cancel,
            tasks: JoinSet::new(),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn front(&self, location: &str, addr: SocketAddr) -> Result<Front, WanError> {
        if self.topology.address_of(location).is_none() {
            return Err(WanError::UnknownLocation(location.to_string()));
        }
        Ok(Front {
            addr,
            location: location.to_string(),
            upstream: Arc::new(Mutex::new(None)),
        })
    }

    /// A UDP front for a server in `location`, bound to `bind` (port 0: any).
    pub async fn udp_front(
        &mut self,
        location: &str,
        bind: SocketAddr,
        upstream: Option<SocketAddr>,
    ) -> Result<Front, WanError> {
        let (socket, addr) = bind_udp(bind).await?;
        let front = self.front(location, addr)?;
        if let Some(up) = upstream {
            front.set_upstream(up);
        }
        self.serve_udp(socket, &front);
        Ok(front)
    }

    /// A TCP front for a server in `location`, bound to `bind` (port 0: any).
    pub async fn tcp_front(
        &mut self,
        location: &str,
        bind: SocketAddr,
        upstream: Option<SocketAddr>,
    ) -> Result<Front, WanError> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| WanError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WanError::Bind { addr: bind, source })?;
        let front = self.front(location, addr)?;
        if let Some(up) = upstream {
            front.set_upstream(up);
        }
        self.serve_tcp(listener, &front);
        Ok(front)
    }

    /// A UDP front and a TCP front on the same port number of `ip`, for a server that
    /// answers QUIC and HTTPS on one port (a relay): its one advertised address then
    /// reaches both through the emulated link. When another program holds the TCP
    /// port of the UDP port the kernel picked, another port is tried.
    pub async fn twin_fronts(
        &mut self,
        location: &str,
        ip: IpAddr,
    ) -> Result<(Front, Front), WanError> {
        let bind = SocketAddr::new(ip, 0);
        let mut attempts = 0;
        loop {
            let (socket, addr) = bind_udp(bind).await?;
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let udp = self.front(location, addr)?;
                    let tcp = self.front(location, addr)?;
                    self.serve_udp(socket, &udp);
                    self.serve_tcp(listener, &tcp);
                    return Ok((udp, tcp));
                }
                Err(_) if attempts < 20 => attempts += 1,
                Err(source) => return Err(WanError::Bind { addr, source }),
            }
        }
    }

    fn serve_udp(&mut self, socket: UdpSocket, front: &Front) {
        self.tasks.spawn(run_udp_front(
            Arc::new(socket),
            front.clone(),
            self.topology.clone(),
            self.cancel.clone(),
        ));
    }

    fn serve_tcp(&mut self, listener: TcpListener, front: &Front) {
        self.tasks.spawn(run_tcp_front(
            listener,
            front.clone(),
            self.topology.clone(),
            self.cancel.clone(),
        ));
    }

    /// Waits until every front has stopped (after the cancellation token fired).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The link a client at `peer` crosses to reach `front`.
fn link_for(topology: &Topology, front: &Front, peer: SocketAddr) -> LinkSpec {
    match topology.location_of(peer.ip()) {
        Some(from) => topology.link(from, &front.location),
        None => {
            tracing::warn!(%peer, front = %front.addr, "source address is in no location of the topology: forwarded without delay");
            LinkSpec::default()
        }
    }
}

fn seed() -> u64 {
    fastrand::u64(..)
}

struct Flow {
    /// The server address the flow was opened to (a restarted server may be elsewhere).
    server: SocketAddr,
    to_server: Shaper,
    queue: mpsc::Sender<(Instant, Vec<u8>)>,
    task: tokio::task::AbortHandle,
}

async fn run_udp_front(
    socket: Arc<UdpSocket>,
    front: Front,
    topology: Arc<Topology>,
    cancel: CancellationToken,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut tasks: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(peer) = done {
                    // Only if the entry is the flow that ended, not a newer one.
                    if flows.get(&peer).is_some_and(|f| f.task.is_finished()) {
                        flows.remove(&peer);
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                let Some(server) = front.upstream() else { continue };
                if let Some(stale) = flows.get(&peer).filter(|f| f.server != server) {
                    // The front was pointed elsewhere: this flow's socket leads nowhere.
                    stale.task.abort();
                    flows.remove(&peer);
                }
                let flow = match flows.entry(peer) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        match open_flow(&socket, &front, &topology, peer, server, &mut tasks, &cancel).await {
                            Some(flow) => e.insert(flow),
                            None => continue,
                        }
                    }
                };
                if let Some(at) = flow.to_server.schedule(Instant::now(), len) {
                    // A full queue drops the datagram, like a router's.
                    let _ = flow.queue.try_send((at, buf[..len].to_vec()));
                }
            }
        }
    }
    tasks.shutdown().await;
}

/// Opens the upstream socket of a new flow and starts its tasks: the delay line
/// towards the server and the reader of the server's answers.
async fn open_flow(
    front_socket: &Arc<UdpSocket>,
    front: &Front,
    topology: &Topology,
    peer: SocketAddr,
    server: SocketAddr,
    tasks: &mut JoinSet<SocketAddr>,
    cancel: &CancellationToken,
) -> Option<Flow> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::1]:0".parse().expect("literal")
    } else {
        "127.0.0.1:0".parse().expect("literal")
    };
    let upstream = match UdpSocket::bind(bind).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open an upstream socket");
            return None;
        }
    };
    if let Err(e) = upstream.connect(server).await {
        tracing::warn!(error = %e, %server, "cannot reach the server");
        return None;
    }
    let link = link_for(topology, front, peer);
    let (to_server_tx, to_server_rx) = mpsc::channel(DATAGRAM_QUEUE);
    let (to_client_tx, to_client_rx) = mpsc::channel(DATAGRAM_QUEUE);
    let front_socket = front_socket.clone();
    let cancel = cancel.clone();
    let task = tasks.spawn(async move {
        let mut parts = JoinSet::new();
        parts.spawn(datagram_delay_line(to_server_rx, upstream.clone(), None));
        parts.spawn(datagram_delay_line(to_client_rx, front_socket, Some(peer)));
        let mut from_server = Shaper::datagrams(link, seed());
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(FLOW_IDLE, upstream.recv(&mut buf)) => r,
            };
            match received {
                Ok(Ok(len)) => {
                    if let Some(at) = from_server.schedule(Instant::now(), len) {
                        let _ = to_client_tx.try_send((at, buf[..len].to_vec()));
                    }
                }
                // An ICMP error (server not listening yet) is not the end of the flow.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_idle) => break,
            }
        }
        parts.shutdown().await;
        peer
    });
    Some(Flow {
        server,
        to_server: Shaper::datagrams(link, seed()),
        queue: to_server_tx,
        task,
    })
}

/// A UDP socket bound to `bind`, and the address it got.
async fn bind_udp(bind: SocketAddr) -> Result<(UdpSocket, SocketAddr), WanError> {
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|source| WanError::Bind { addr: bind, source })?;
    let addr = socket
        .local_addr()
        .map_err(|source| WanError::Bind { addr: bind, source })?;
    Ok((socket, addr))
}

/// Sends each datagram at its time (the shaper hands out times in order; the heap
/// keeps that order for equal times too).
async fn datagram_delay_line(
    mut queue: mpsc::Receiver<(Instant, Vec<u8>)>,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let next = heap.peek().map(|Reverse((at, _, _))| *at);
        if !open && next.is_none() {
            return;
        }
        tokio::select! {
            item = queue.recv(), if open => match item {
                Some((at, bytes)) => {
                    heap.push(Reverse((at, seq, bytes)));
                    seq += 1;
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next.unwrap_or_else(Instant::now))), if next.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                    let Some(Reverse((_, _, bytes))) = heap.pop() else { break };
                    let _ = match to {
                        Some(addr) => socket.send_to(&bytes, addr).await,
                        None => socket.send(&bytes).await,
                    };
                }
            }
        }
    }
}

async fn run_tcp_front(
    listener: TcpListener,
    front: Front,
    topology: Arc<Topology>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, peer)) = accepted else { continue };
                let Some(server) = front.upstream() else { continue };
                let link = link_for(&topology, &front, peer);
                connections.spawn(tcp_connection(client, server, link));
            }
        }
    }
    connections.shutdown().await;
}

/// Forwards one TCP connection, each direction through its own shaper and delay line,
/// end of stream (half-close) included.
async fn tcp_connection(client: TcpStream, server: SocketAddr, link: LinkSpec) {
    let upstream = match TcpStream::connect(server).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, %server, "upstream connect failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    let mut parts = JoinSet::new();
    parts.spawn(stream_direction(client_read, server_write, link));
    parts.spawn(stream_direction(server_read, client_write, link));
    while parts.join_next().await.is_some() {}
}

async fn stream_direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: LinkSpec,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(STREAM_QUEUE);
    let writer = async move {
        // In order: the shaper never hands out a time earlier than the last one.
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    let reader = async move {
        let mut shaper = Shaper::stream(link, seed());
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let at = shaper
                .schedule(Instant::now(), n.max(1))
                .unwrap_or_else(Instant::now);
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((at, chunk)).await.is_err() || n == 0 {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests;
