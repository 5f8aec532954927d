//! The web terminal: on `terminal--NAME--OWNER.APPS_DOMAIN`, `/` is a page with
//! xterm.js (vendored in `relay/assets/xterm/`, embedded in the binary), and
//! `/.ferry/terminal?cols=C&rows=R` a WebSocket bridged to a `Target::Terminal` stream
//! to the agent: binary messages carry terminal bytes both ways, a text message
//! `{"cols":C,"rows":R}` from the page resizes the PTY, and a text message
//! `{"error":"..."}` to the page says why the agent refused (terminals disabled, no
//! agent, ...).

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use ferry_proto::terminal::TerminalFrame;
use ferry_proto::{StreamHeader, Target, WorkspaceLabel};

use super::{full, pages, Body, Web};
use crate::server::Shared;

const PAGE: &[u8] = include_bytes!("../../assets/terminal.html");
const XTERM_JS: &[u8] = include_bytes!("../../assets/xterm/xterm.js");
const XTERM_CSS: &[u8] = include_bytes!("../../assets/xterm/xterm.css");
const FIT_JS: &[u8] = include_bytes!("../../assets/xterm/addon-fit.js");

/// Where the page opens its WebSocket.
const SOCKET_PATH: &str = "/.ferry/terminal";

fn asset(body: &'static [u8], content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub(crate) async fn serve(
    shared: &std::sync::Arc<Shared>,
    web: &Web,
    workspace: &WorkspaceLabel,
    authority: &str,
    token_id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return pages::not_found();
    }
    match req.uri().path() {
        "/" => {
            let mut resp = asset(PAGE, "text/html; charset=utf-8");
            // Only our own scripts, and sockets to this origin.
            resp.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'",
                ),
            );
            resp
        }
        "/.ferry/xterm.js" => asset(XTERM_JS, "text/javascript; charset=utf-8"),
        "/.ferry/xterm.css" => asset(XTERM_CSS, "text/css; charset=utf-8"),
        "/.ferry/addon-fit.js" => asset(FIT_JS, "text/javascript; charset=utf-8"),
        SOCKET_PATH => socket(shared, web, workspace, authority, token_id, req),
        _ => pages::not_found(),
    }
}

/// The size asked for in the query, within sane bounds.
fn size(query: &str) -> (u16, u16) {
    let get = |name: &str, default: u16| {
        ferry_proto::app_host::query_param(query, name)
            .and_then(|v| v.parse::<u16>().ok())
            .map(|v| v.clamp(1, 1000))
            .unwrap_or(default)
    };
    (get("cols", 80), get("rows", 24))
}

/// A resize message from the page: `{"cols":C,"rows":R}`.
fn resize(text: &str) -> Option<TerminalFrame> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let dim = |name: &str| {
        v.get(name)?
            .as_u64()
            .and_then(|n| u16::try_from(n.clamp(1, 1000)).ok())
    };
    Some(TerminalFrame::Resize {
        cols: dim("cols")?,
        rows: dim("rows")?,
    })
}

fn socket(
    shared: &std::sync::Arc<Shared>,
    web: &Web,
    workspace: &WorkspaceLabel,
    authority: &str,
    token_id: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let headers = req.headers();
    // A page of another origin must not drive this terminal with the user's cookie.
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.eq_ignore_ascii_case(&format!("https://{authority}")));
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, true, Some(key)) = (origin_ok, upgrade_ok, key) else {
        return pages::bad_request("a WebSocket from this terminal's own page is expected here");
    };
    let (cols, rows) = size(req.uri().query().unwrap_or(""));
    let upgrade = hyper::upgrade::on(&mut req);
    let header = StreamHeader::new(workspace.clone(), Target::Terminal { cols, rows });
    let shared = shared.clone();
    let stop = web.stop.clone();
    let guard = shared.drain.stream();
    let label = workspace.clone();
    let token_id = token_id.to_string();
    web.tasks.spawn(async move {
        let _open = guard;
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = super::auth::revoked_later(&shared, &token_id) => {}
            _ = bridge(&shared, &header, ws) => {}
        }
        tracing::debug!(workspace = %label, "web terminal closed");
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

async fn bridge(
    shared: &Shared,
    header: &StreamHeader,
    mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let (mut send, mut recv, _stream_guard) =
        match crate::routing::open_for_web(shared, header).await {
            Ok(streams) => streams,
            Err(frame) => {
                let message = serde_json::json!({ "error": frame.message }).to_string();
                let _ = ws.send(Message::Text(message)).await;
                let _ = ws.close(None).await;
                return;
            }
        };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let input = async {
        let mut out = BytesMut::new();
        while let Some(message) = ws_rx.next().await {
            match message {
                Ok(Message::Binary(data)) => TerminalFrame::encode_input(&data, &mut out),
                Ok(Message::Text(text)) => match resize(&text) {
                    Some(frame) => frame.encode(&mut out),
                    None => continue,
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            }
            if send.write_all(&out.split()).await.is_err() {
                return;
            }
        }
        // The page went away: end the shell's input, as `ferry terminal` does.
        let _ = send.finish();
        std::future::pending::<()>().await
    };
    let output = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Some(n)) = recv.read(&mut buf).await {
            if ws_tx
                .send(Message::Binary(buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = input => {}
        _ = output => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_resizes_are_bounded() {
        assert_eq!(size("cols=120&rows=40"), (120, 40));
        assert_eq!(size("cols=0&rows=99999"), (1, 24));
        assert_eq!(size(""), (80, 24));
        assert_eq!(
            resize(r#"{"cols":100,"rows":30}"#),
            Some(TerminalFrame::Resize {
                cols: 100,
                rows: 30
            })
        );
        assert_eq!(resize("hello"), None);
        assert_eq!(resize(r#"{"cols":-1,"rows":30}"#), None);
    }
}
