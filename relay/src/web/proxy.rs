//! Proxying one browser request to an HTTP app in a workspace.
//!
//! Each request opens a stream to the workspace's agent (`Target::Port`), routed like a
//! client's stream (locally or over the mesh), and speaks HTTP/1.1 to the app over it.
//! Bodies stream both ways as they come, never buffered whole and never capped. The
//! app sees no ferry cookie or token, and `X-Forwarded-*` set by us alone. WebSocket
//! (and other) upgrades are spliced once both sides have switched protocols.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use ferry_proto::{ErrorCode, StreamHeader, Target, WorkspaceLabel};

use super::{auth, pages, Body, Web};
use crate::server::Shared;

/// Who asked, as the app is told in `X-Forwarded-*`.
pub(crate) struct Forwarded<'a> {
    pub peer: SocketAddr,
    /// The host (and port) the browser asked for.
    pub authority: &'a str,
    /// The id of the app token that let the request in (an upgraded connection ends
    /// when it is revoked).
    pub token_id: &'a str,
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and
/// routing headers a client must not be able to set for the app.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const ROUTING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Removes hop-by-hop headers, those the `Connection` header names included.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Whether the request asks to switch to WebSocket (HTTP/1.1 `Upgrade`).
fn wants_websocket(req: &Request<Incoming>) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Forwards `req` to `port` in `workspace`; answers 404 for an app that is not there
/// (like any unknown app) and 502 when the way to it failed.
pub(crate) async fn forward(
    shared: &std::sync::Arc<Shared>,
    web: &Web,
    workspace: &WorkspaceLabel,
    port: u16,
    who: Forwarded<'_>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let websocket = wants_websocket(&req);
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // The message as the app will see it: HTTP/1.1, origin-form, our headers.
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    parts.uri = path
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    for name in ROUTING {
        headers.remove(*name);
    }
    if let Some(cookies) = auth::app_cookies(headers, &web.cookie_name) {
        headers.insert(header::COOKIE, cookies);
    } else {
        headers.remove(header::COOKIE);
    }
    if headers
        .get(header::AUTHORIZATION)
        .is_some_and(auth::is_ferry_authorization)
    {
        headers.remove(header::AUTHORIZATION);
    }
    if let Ok(host) = HeaderValue::from_str(who.authority) {
        headers.insert(header::HOST, host.clone());
        headers.insert("x-forwarded-host", host);
    }
    if let Ok(ip) = HeaderValue::from_str(&who.peer.ip().to_string()) {
        headers.insert("x-forwarded-for", ip);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let upstream_req = Request::from_parts(parts, body);

    let guard = shared.drain.stream();
    let header = StreamHeader::new(workspace.clone(), Target::Port(port));
    let (send, recv, stream_guard) = match crate::routing::open_for_web(shared, &header).await {
        Ok(streams) => streams,
        Err(frame) => {
            tracing::debug!(%workspace, port, code = %frame.code, reason = %frame.message, "app unreachable");
            return match frame.code {
                ErrorCode::UnknownWorkspace
                | ErrorCode::AgentNotConnected
                | ErrorCode::TargetUnreachable
                | ErrorCode::PortNotAllowed => pages::not_found(),
                _ => pages::bad_gateway(&frame.message),
            };
        }
    };
    let io = TokioIo::new(tokio::io::join(recv, send));
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(io)
        .await
    {
        Ok(pair) => pair,
        Err(e) => return pages::bad_gateway(&format!("talking to the app: {e}")),
    };
    // The connection carries the response body after we return: a tracked task that
    // also keeps the relay's drain waiting for it.
    let stop = web.stop.clone();
    web.tasks.spawn(async move {
        let _open = (guard, stream_guard);
        tokio::select! {
            _ = stop.cancelled() => {}
            result = conn.with_upgrades() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "app connection ended with an error");
                }
            }
        }
    });
    let mut resp = match sender.send_request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => return pages::bad_gateway(&format!("the app closed the connection: {e}")),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return pages::bad_gateway("the app switched protocols unasked");
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let stop = web.stop.clone();
        let guard = shared.drain.stream();
        let shared = shared.clone();
        let token_id = who.token_id.to_string();
        web.tasks.spawn(async move {
            let _open = guard;
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = auth::revoked_later(&shared, &token_id) => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, super::full(""));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}
