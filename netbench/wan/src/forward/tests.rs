//! The forwarders over real loopback sockets. Delays are large compared with loopback
//! (tens of milliseconds) and checked only from below, so a slow machine cannot fail
//! them; what must never happen (reordering a stream, crossing the wrong link) is
//! checked exactly.

use super::*;

const TOPOLOGY: &str = r#"
    [locations]
    near = "127.0.0.1"
    far = "127.0.3.1"
    server = "127.0.4.1"

    [[link]]
    between = ["near", "server"]
    rtt_ms = 2
    [[link]]
    between = ["far", "server"]
    rtt_ms = 80
    jitter_ms = 30
    [[link]]
    between = ["near", "far"]
    rtt_ms = 100
"#;

fn emulator() -> (Emulator, CancellationToken) {
    let cancel = CancellationToken::new();
    (
        Emulator::new(Topology::parse(TOPOLOGY).unwrap(), cancel.clone()),
        cancel,
    )
}

async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.4.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn udp_rtt(bind: &str, to: SocketAddr) -> Duration {
    let client = UdpSocket::bind(bind).await.unwrap();
    let mut buf = [0u8; 64];
    let start = Instant::now();
    client.send_to(b"ping", to).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("an answer through the emulator")
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
    start.elapsed()
}

#[tokio::test]
async fn udp_crosses_the_link_of_the_senders_location() {
    let (mut emu, cancel) = emulator();
    let server = udp_echo().await;
    let front = emu
        .udp_front("server", "127.0.0.1:0".parse().unwrap(), Some(server))
        .await
        .unwrap();
    let far = udp_rtt("127.0.3.1:0", front.local_addr()).await;
    let near = udp_rtt("127.0.0.1:0", front.local_addr()).await;
    // far: 80 ms ± 30 ms of jitter, never under 50 ms.
    assert!(far >= Duration::from_millis(50), "far RTT {far:?}");
    assert!(near < far, "near {near:?} vs far {far:?}");
    cancel.cancel();
    emu.join().await;
}

#[tokio::test]
async fn a_front_without_upstream_drops_until_pointed_at_its_server() {
    let (mut emu, _cancel) = emulator();
    let front = emu
        .udp_front("server", "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"lost", front.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
            .await
            .is_err()
    );
    front.set_upstream(udp_echo().await);
    let rtt = udp_rtt("127.0.0.1:0", front.local_addr()).await;
    assert!(rtt < Duration::from_secs(5));
}

#[tokio::test]
async fn unknown_locations_are_refused() {
    let (mut emu, _cancel) = emulator();
    let err = emu
        .udp_front("mars", "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, WanError::UnknownLocation(_)));
}

#[tokio::test]
async fn tcp_keeps_the_byte_stream_in_order_under_jitter_and_half_close() {
    let (mut emu, cancel) = emulator();
    // A server that echoes until EOF, then closes.
    let listener = TcpListener::bind("127.0.4.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let front = emu
        .tcp_front("server", "127.0.0.1:0".parse().unwrap(), Some(server))
        .await
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.3.1:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(front.local_addr()).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    // Many small writes: each chunk gets its own jitter, none may overtake another.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(997) {
            w.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("echo finished")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(
        got == payload,
        "the stream came back reordered or corrupted"
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    cancel.cancel();
    emu.join().await;
}

#[tokio::test]
async fn udp_loss_drops_datagrams() {
    let lossy = r#"
        [locations]
        a = "127.0.0.1"
        b = "127.0.5.1"
        [[link]]
        between = ["a", "b"]
        rtt_ms = 1
        loss = 0.5
    "#;
    let mut emu = Emulator::new(Topology::parse(lossy).unwrap(), CancellationToken::new());
    let socket = UdpSocket::bind("127.0.5.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    let front = emu
        .udp_front("b", "127.0.0.1:0".parse().unwrap(), Some(server))
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..400u32 {
        client
            .send_to(&i.to_be_bytes(), front.local_addr())
            .await
            .unwrap();
    }
    let mut received = 0;
    let mut buf = [0u8; 16];
    while tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .is_ok()
    {
        received += 1;
    }
    // Half of 400 on average; far from both 0 and 400.
    assert!((100..300).contains(&received), "{received} of 400 arrived");
}

#[tokio::test]
async fn twin_fronts_share_one_port_number_and_each_forwards_its_protocol() {
    let (mut emu, cancel) = emulator();
    let (udp, tcp) = emu
        .twin_fronts("server", [127, 0, 0, 1].into())
        .await
        .unwrap();
    assert_eq!(udp.local_addr(), tcp.local_addr());
    // A server answering both protocols on one port, as a relay does.
    let echo = udp_echo().await;
    let listener = TcpListener::bind(echo).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    udp.set_upstream(echo);
    tcp.set_upstream(echo);

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"over udp", udp.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("no UDP answer")
        .unwrap();
    assert_eq!(&buf[..n], b"over udp");

    let mut stream = TcpStream::connect(tcp.local_addr()).await.unwrap();
    stream.write_all(b"over tcp").await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("no TCP answer")
        .unwrap();
    assert_eq!(&back, b"over tcp");
    cancel.cancel();
}
