//! Tunnels over real TCP and TLS on loopback, into a relay-style endpoint that also
//! serves UDP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::*;
use crate::quic::{self, Limits};

/// A relay's two ports: QUIC on UDP (with tunnels beside it) and TLS on TCP, which
/// hands direct tunnels and WebSocket upgrades to the ingress.
struct TestRelay {
    endpoint: quinn::Endpoint,
    ingress: Ingress,
    tcp: SocketAddr,
    ca: ferry_certs::Ca,
    _accept: tokio_util::task::AbortOnDropHandle<()>,
}

async fn relay() -> TestRelay {
    let ca = ferry_certs::Ca::create().unwrap();
    let leaf = ca
        .issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)
        .unwrap();
    let quic_tls = ferry_certs::server_config(&leaf, &[b"test"]).unwrap();
    let socket = quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let limits = Limits {
        max_udp_payload: quic::MESH_MAX_UDP_PAYLOAD,
        ..Limits::default()
    };
    let (endpoint, ingress) =
        quic::server_endpoint_with_tunnels(socket, quic_tls, &limits, b"t").unwrap();
    let https_tls = ferry_certs::server_config(&leaf, &[alpn::TUNNEL, b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(https_tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    let ingress2 = ingress.clone();
    let accept = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let (acceptor, ingress) = (acceptor.clone(), ingress2.clone());
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(alpn::TUNNEL) {
                    let _ = ingress.serve_tls(tls, peer).await;
                    return;
                }
                // The handshake callback's signature is tungstenite's (a large error type).
                #[allow(clippy::result_large_err)]
                let answer = |_: &Request, mut resp: Response| {
                    resp.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static(ferry_proto::tunnel::WS_PROTOCOL),
                    );
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, answer).await {
                    let _ = ingress.serve_websocket(ws, peer).await;
                }
            });
        }
    });
    TestRelay {
        endpoint,
        ingress,
        tcp,
        ca,
        _accept: tokio_util::task::AbortOnDropHandle::new(accept),
    }
}

use ferry_proto::alpn;

/// Echoes every stream of every connection back, whole.
fn serve_echo(endpoint: quinn::Endpoint) -> tokio_util::task::AbortOnDropHandle<()> {
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(incoming) = endpoint.accept().await {
            tasks.spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut recv, &mut send).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    }))
}

async fn tunnel_to(relay: &TestRelay, alpns: &[&[u8]]) -> Tunnel {
    let tcp = TcpStream::connect(relay.tcp).await.unwrap();
    let tls = Arc::new(ferry_certs::client_config(relay.ca.cert_pem(), alpns).unwrap());
    let quic_tls = ferry_certs::client_config(relay.ca.cert_pem(), &[b"test"]).unwrap();
    let authority = relay.tcp.to_string();
    open(
        tcp,
        "127.0.0.1",
        &authority,
        tls,
        quic_tls,
        &Limits::client(),
    )
    .await
    .unwrap()
}

/// A QUIC connection to the relay's endpoint through `tunnel`.
async fn quic_through(tunnel: &Tunnel) -> quinn::Connection {
    tunnel
        .endpoint
        .connect(tunnel.remote, "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

async fn echo(conn: &quinn::Connection, bytes: usize) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let writer = async {
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
    };
    let (_, back) = tokio::join!(writer, recv.read_to_end(bytes + 1));
    let back = back.unwrap();
    assert!(back == data, "the echo came back different");
    back
}

/// Both forms carry a QUIC connection: bytes both ways, the relay's endpoint sees a
/// tunnel address and knows the form, and packets grow past internet sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_runs_through_either_form_of_tunnel() {
    let relay = relay().await;
    let _echo = serve_echo(relay.endpoint.clone());
    for (alpns, kind) in [
        (&[alpn::TUNNEL, b"http/1.1"][..], TunnelKind::Tls),
        // An L7 proxy that terminates TLS offers http/1.1 alone: WebSocket then.
        (&[&b"http/1.1"[..]][..], TunnelKind::WebSocket),
    ] {
        let tunnel = tunnel_to(&relay, alpns).await;
        assert_eq!(tunnel.kind, kind);
        let conn = quic_through(&tunnel).await;
        echo(&conn, 8 << 20).await;
        assert!(
            conn.stats().path.current_mtu > 8000,
            "{kind:?}: packets stayed at {} bytes",
            conn.stats().path.current_mtu
        );
        assert_eq!(relay.ingress.len(), 1);
        conn.close(0u32.into(), b"done");
        drop(conn);
        drop(tunnel);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !relay.ingress.is_empty() {
            assert!(Instant::now() < deadline, "the relay kept a closed tunnel");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The relay's side of the connection is told where its peer came from.
#[tokio::test]
async fn the_relay_knows_a_tunnelled_peer_and_when_its_tunnel_ends() {
    let relay = relay().await;
    let tunnel = tunnel_to(&relay, &[alpn::TUNNEL]).await;
    let accepting = relay.endpoint.clone();
    let server = tokio::spawn(async move { accepting.accept().await.unwrap().await.unwrap() });
    let conn = quic_through(&tunnel).await;
    let server_conn = server.await.unwrap();
    let remote = server_conn.remote_address();
    assert!(is_tunnel_addr(remote));
    let info = relay.ingress.tunnel(remote).expect("an open tunnel");
    assert_eq!(info.kind, TunnelKind::Tls);
    assert!(info.peer.ip().is_loopback());
    let ended = relay.ingress.ended(remote);
    assert!(!ended.is_cancelled());
    // The client goes away: the tunnel ends and the relay hears of it at once.
    conn.close(0u32.into(), b"bye");
    drop(conn);
    drop(tunnel);
    tokio::time::timeout(Duration::from_secs(5), ended.cancelled())
        .await
        .expect("the relay learns the tunnel ended");
}

/// A relay that goes away under a tunnel ends the client's connection within moments,
/// not at the idle timeout.
#[tokio::test]
async fn a_broken_tunnel_ends_the_clients_connection_at_once() {
    let relay = relay().await;
    let _echo = serve_echo(relay.endpoint.clone());
    let tunnel = tunnel_to(&relay, &[alpn::TUNNEL]).await;
    let conn = quic_through(&tunnel).await;
    echo(&conn, 1000).await;
    let started = Instant::now();
    drop(relay);
    tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .expect("the connection ends with its tunnel");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Garbage on a tunnel (a bad frame length) closes that tunnel and nothing else.
#[tokio::test]
async fn a_bad_frame_closes_only_its_own_tunnel() {
    let relay = relay().await;
    let _echo = serve_echo(relay.endpoint.clone());
    let good = tunnel_to(&relay, &[alpn::TUNNEL]).await;
    let conn = quic_through(&good).await;

    let tcp = TcpStream::connect(relay.tcp).await.unwrap();
    let tls = ferry_certs::client_config(relay.ca.cert_pem(), &[alpn::TUNNEL]).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut bad = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    bad.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    bad.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut buf = [0u8; 16];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_millis(100), bad.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => assert!(
                Instant::now() < deadline,
                "the relay kept a tunnel that sent garbage"
            ),
        }
    }
    echo(&conn, 100_000).await;
    assert_eq!(relay.ingress.len(), 1);
}
