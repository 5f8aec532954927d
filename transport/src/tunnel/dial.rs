//! Opening a tunnel from an agent or a CLI: TLS over a TCP stream that is already
//! connected (to the relay's HTTPS port, directly or through an HTTPS proxy, or to an
//! L7 proxy in front of it), then the direct form when the far end speaks it, else a
//! WebSocket upgrade; then a QUIC endpoint on the tunnel, ready for `dial::connect`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::alpn;
use ferry_proto::tunnel::{PATH, WS_PROTOCOL};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::queue::DatagramQueue;
use super::socket::TunnelSocket;
use super::{pipe, TunnelKind, CLIENT_TUNNEL_QUEUE};
use crate::quic::{EndpointError, Limits};

/// TLS and, if needed, the WebSocket upgrade must be done within this long.
pub const TUNNEL_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{authority} refused the tunnel's WebSocket upgrade on {PATH}: {source}")]
    Upgrade {
        authority: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("no TLS and tunnel set-up with {authority} within {TUNNEL_SETUP_TIMEOUT:?}")]
    Timeout { authority: String },
    #[error("`{0}` is not a TLS server name")]
    ServerName(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// An open tunnel: a QUIC endpoint whose only peer is the relay at `remote`.
pub struct Tunnel {
    pub endpoint: quinn::Endpoint,
    /// The address to dial the relay's QUIC endpoint at, through the tunnel.
    pub remote: SocketAddr,
    pub kind: TunnelKind,
}

/// The TLS configuration for tunnels: ferry's CA, and ALPN `ferry-tunnel/1` with
/// `http/1.1` behind it for an L7 proxy that terminates TLS and knows only HTTP.
/// TLS 1.2 is allowed here (unlike everywhere else in ferry): load balancers in front
/// of relays may stop there, and what the tunnel carries is end-to-end QUIC, encrypted
/// with TLS 1.3 between the client and the relay whatever the outer layer is.
pub fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, ferry_certs::CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ferry_certs::parse_certs(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn::TUNNEL.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a tunnel over `tcp`. `tls_name` is the name the far end's certificate must
/// hold; `authority` (`host:port`) is what the WebSocket request names. `quic` is the
/// client configuration the QUIC connection through the tunnel will use (its ALPN
/// says agent or client) and `limits` its limits.
pub async fn open(
    tcp: TcpStream,
    tls_name: &str,
    authority: &str,
    tls: Arc<rustls::ClientConfig>,
    quic_tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<Tunnel, TunnelError> {
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(tls_name.to_string())
        .map_err(|_| TunnelError::ServerName(tls_name.to_string()))?;
    let set_up = async {
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| TunnelError::Tls {
                authority: authority.to_string(),
                source,
            })?;
        let direct = stream.get_ref().1.alpn_protocol() == Some(alpn::TUNNEL);
        if direct {
            return Ok(Carrier::Tls(Box::new(stream)));
        }
        let upgrade_err = |source| TunnelError::Upgrade {
            authority: authority.to_string(),
            source: Box::new(source),
        };
        let mut request = format!("wss://{authority}{PATH}")
            .into_client_request()
            .map_err(upgrade_err)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(WS_PROTOCOL),
        );
        let (ws, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(upgrade_err)?;
        Ok::<_, TunnelError>(Carrier::WebSocket(Box::new(ws)))
    };
    let carrier = tokio::time::timeout(TUNNEL_SETUP_TIMEOUT, set_up)
        .await
        .map_err(|_| TunnelError::Timeout {
            authority: authority.to_string(),
        })??;

    let remote = super::tunnel_addr(1);
    let outbound = Arc::new(DatagramQueue::new(CLIENT_TUNNEL_QUEUE));
    let (inbound_tx, inbound_rx) = mpsc::channel(super::INBOUND_QUEUE);
    let kind = carrier.kind();
    let pipe_queue = outbound.clone();
    let authority_log = authority.to_string();
    let pipe = tokio::spawn(async move {
        let ended = match carrier {
            Carrier::Tls(s) => pipe::run_stream(*s, remote, inbound_tx, pipe_queue).await,
            Carrier::WebSocket(ws) => {
                pipe::run_websocket(*ws, remote, inbound_tx, pipe_queue).await
            }
        };
        match ended {
            Ok(()) => tracing::debug!(authority = %authority_log, "tunnel closed"),
            Err(e) => tracing::debug!(authority = %authority_log, error = %e, "tunnel broke"),
        }
    });
    let socket = TunnelSocket::new(remote, outbound, inbound_rx, pipe);
    let endpoint = crate::quic::tunnel_client_endpoint(socket, quic_tls, limits)?;
    Ok(Tunnel {
        endpoint,
        remote,
        kind,
    })
}

enum Carrier {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    WebSocket(Box<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Carrier {
    fn kind(&self) -> TunnelKind {
        match self {
            Carrier::Tls(_) => TunnelKind::Tls,
            Carrier::WebSocket(_) => TunnelKind::WebSocket,
        }
    }
}
