//! Probes against real servers on loopback: a QUIC endpoint, and an HTTPS server for
//! the fallback when the QUIC address does not answer.

use std::net::SocketAddr;

use ferry_certs::{Ca, Usage};
use ferry_proto::api::RelayInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn relay(quic_addr: SocketAddr, https_url: Option<String>) -> RelayInfo {
    RelayInfo {
        name: "eu-1".into(),
        region: "eu".into(),
        quic_addr: quic_addr.to_string(),
        server_name: "127.0.0.1".into(),
        health: None,
        incarnation: 1,
        https_url,
    }
}

fn ca_and_leaf() -> (Ca, ferry_certs::IssuedCert) {
    let ca = Ca::create().unwrap();
    let leaf = ca.issue(&["127.0.0.1".into()], Usage::Server).unwrap();
    (ca, leaf)
}

#[tokio::test]
async fn a_quic_probe_measures_a_handshake() {
    let (ca, leaf) = ca_and_leaf();
    let tls = ferry_certs::server_config(&leaf, &[ferry_proto::alpn::CLIENT]).unwrap();
    let socket = crate::quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let server =
        crate::quic::server_endpoint(socket, tls, &Limits::default(), b"probe test").unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        // The prober closes without opening a stream.
        let reason = conn.closed().await;
        (server, reason)
    });
    let prober = Prober::new(ca.cert_pem(), None, Duration::from_secs(5)).unwrap();
    let (rtt, method) = prober.probe(&relay(addr, None)).await.unwrap();
    assert_eq!(method, ProbeMethod::Quic);
    assert!(rtt < Duration::from_secs(5));
    let (_server, reason) = accept.await.unwrap();
    assert!(matches!(
        reason,
        quinn::ConnectionError::ApplicationClosed(_)
    ));
}

#[tokio::test]
async fn a_relay_advertised_by_name_is_resolved_and_its_live_address_probed() {
    let (ca, leaf) = ca_and_leaf();
    let tls = ferry_certs::server_config(&leaf, &[ferry_proto::alpn::CLIENT]).unwrap();
    let socket = crate::quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let server =
        crate::quic::server_endpoint(socket, tls, &Limits::default(), b"probe test").unwrap();
    let port = server.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        conn.closed().await;
        server
    });
    let dns = crate::test_dns::TestDns::start(60).await.unwrap();
    // ::1 first (IPv6 is raced first), where nothing listens on the port.
    dns.set(
        "relay.ferry.test",
        vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    );
    let prober = Prober::new(ca.cert_pem(), None, Duration::from_secs(5))
        .unwrap()
        .with_resolver(crate::resolve::Resolver::with_servers(&[dns.addr()]).unwrap());
    let mut info = relay("127.0.0.1:1".parse().unwrap(), None);
    info.quic_addr = format!("relay.ferry.test:{port}");
    let (_, method) = prober.probe(&info).await.unwrap();
    assert_eq!(method, ProbeMethod::Quic);
    accept.await.unwrap();

    info.quic_addr = format!("nothing.ferry.test:{port}");
    let err = prober.probe(&info).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "relay eu-1: relay name `nothing.ferry.test` has no A or AAAA record"
    );
}

/// A minimal HTTPS server answering every request on a connection with 200.
async fn https_ping_server(leaf: &ferry_certs::IssuedCert) -> SocketAddr {
    let tls = ferry_certs::server_config(leaf, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        let status = if head.starts_with("GET /.ferry/ping ") {
                            "200 OK"
                        } else {
                            "404 Not Found"
                        };
                        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                        if tls.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn without_a_quic_answer_the_probe_falls_back_to_https() {
    let (ca, leaf) = ca_and_leaf();
    let https = https_ping_server(&leaf).await;
    // A UDP socket that swallows everything, like a firewall dropping UDP.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic_addr = silent.local_addr().unwrap();
    let prober = Prober::new(ca.cert_pem(), None, Duration::from_millis(300)).unwrap();
    let url = format!("https://127.0.0.1:{}", https.port());
    let (rtt, method) = prober.probe(&relay(quic_addr, Some(url))).await.unwrap();
    assert_eq!(method, ProbeMethod::Https);
    assert!(rtt < Duration::from_millis(300));
    // Without an HTTPS origin the probe fails and says why.
    let err = prober.probe(&relay(quic_addr, None)).await.unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
}
