//! `/.ferry/tunnel`: the WebSocket form of the datagram tunnel, for agents and clients
//! that reach the relay through an L7 proxy or load balancer that terminates TLS (and
//! so cannot pass the direct `ferry-tunnel/1` ALPN). The relay's QUIC endpoint then
//! serves their connection as any other ([`ferry_transport::tunnel`]).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use ferry_proto::tunnel::WS_PROTOCOL;

use super::{full, pages, Body, Web};
use crate::server::Shared;

/// Answers the upgrade and carries the tunnel as one of the web side's tasks (stopped
/// with the relay, after the drain).
pub(super) fn upgrade(
    shared: &Arc<Shared>,
    web: &Web,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let headers = req.headers();
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let protocol_ok = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == WS_PROTOCOL);
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, true, Some(key)) = (upgrade_ok, protocol_ok, key) else {
        return pages::bad_request(&format!(
            "a WebSocket upgrade with subprotocol {WS_PROTOCOL} is expected here"
        ));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let shared = shared.clone();
    let stop = web.stop.clone();
    web.tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            _ = stop.cancelled() => {}
            ended = shared.tunnels.serve_websocket(ws, peer) => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "WebSocket tunnel ended with an error");
                }
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(WS_PROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
