//! The relay's HTTPS side, for browsers: TLS 1.3 on the TCP port with the same number
//! as the QUIC (UDP) port, HTTP/2 and HTTP/1.1 by ALPN.
//!
//! - `/.ferry/ping` on every host: an empty 204 any page may fetch, for measuring the
//!   browser's round trip to this relay.
//! - `PORT--NAME--OWNER.APPS_DOMAIN`: the HTTP app on PORT in the workspace, proxied
//!   through the agent (see [`proxy`]), once the browser holds an app cookie for that
//!   host (see [`auth`]).
//! - `terminal--NAME--OWNER.APPS_DOMAIN`: the web terminal (see [`terminal`]).
//!
//! [`serve`] accepts connections until `stop` fires; connections are tasks in a
//! `JoinSet` it owns, and the tasks a request leaves behind (an upstream connection
//! finishing a streamed body, a WebSocket) are tracked in [`Web::tasks`] and stopped on
//! the same token.

mod auth;
pub(crate) mod limits;
mod pages;
mod proxy;
mod strict;
mod terminal;
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use ferry_proto::app_host::{self, AppHost, AppTarget};

use crate::server::Shared;

/// Errors inside a proxied body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the relay sends: a page, or an app's streamed body.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// What the HTTPS side knows beyond [`Shared`].
pub(crate) struct Web {
    /// Web apps are served under this domain; none: only `/.ferry/ping`.
    pub apps_domain: Option<String>,
    /// The app cookie's name, unique to the apps domain.
    pub cookie_name: String,
    /// The control plane's URL as browsers reach it (for the app-auth redirect).
    pub control_url: String,
    /// Tasks that outlive the request that started them.
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
    /// Connections held, per address and in all; timeouts and HTTP/2 limits.
    pub limits: limits::WebLimits,
}

/// A slot for a new HTTPS connection, or `None` (counted) when `peer` or the relay
/// holds too many: the connection is then closed at once, before its TLS handshake.
fn admit(shared: &Shared, web: &Web, peer: SocketAddr) -> Option<limits::ConnectionSlot> {
    match web.limits.admit(peer) {
        Ok(slot) => Some(slot),
        Err(why) => {
            shared.metrics.https_refused(why);
            tracing::debug!(%peer, reason = why.as_str(), "HTTPS connection refused");
            None
        }
    }
}

/// Accepts HTTPS connections until `stop` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    web: Arc<Web>,
    listener: TcpListener,
    tls: TlsAcceptor,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = web.stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let Some(slot) = admit(&shared, &web, peer) else { continue };
                let _ = tcp.set_nodelay(true);
                let (shared, web, tls) = (shared.clone(), web.clone(), tls.clone());
                conns.spawn(async move {
                    let _slot = slot;
                    let Ok(Ok(stream)) = tokio::time::timeout(web.limits.config.tls_timeout, tls.accept(tcp)).await else {
                        tracing::debug!(%peer, "TLS handshake failed");
                        return;
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(ferry_proto::alpn::TUNNEL) {
                        // UDP is blocked where this client is: its QUIC comes this way.
                        if let Err(e) = shared.tunnels.serve_tls(stream, peer).await {
                            tracing::debug!(%peer, error = %e, "tunnel ended with an error");
                        }
                        return;
                    }
                    let (builder, head_timeout) = (web.limits.builder(), web.limits.config.header_timeout);
                    let first = limits::FirstRequest::default();
                    let service = hyper::service::service_fn({
                        let first = first.clone();
                        move |req| {
                            first.arrived();
                            handle(shared.clone(), web.clone(), peer, req)
                        }
                    });
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let served = first.deadline(head_timeout, async {
                        if h2 {
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                        } else {
                            // HTTP/1.1 request heads are watched for ambiguous lengths.
                            let stream = strict::StrictHttp1::new(stream);
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                        }
                    }).await;
                    let Some(served) = served else {
                        tracing::debug!(%peer, "no request within the header timeout; closed");
                        return;
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                    }
                });
            }
        }
    }
    conns.shutdown().await;
    web.tasks.close();
}

/// A page or short text as a response body.
pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The request's authority: the URI's (HTTP/2, absolute form), else the `Host` header.
fn authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Request smuggling: a message whose length two headers disagree on (or could) is
/// refused, whatever the HTTP library made of it.
fn ambiguous_length(req: &Request<Incoming>) -> bool {
    if req.headers().contains_key(strict::MARKER) {
        return true;
    }
    let lengths = req.headers().get_all(header::CONTENT_LENGTH).iter().count();
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    lengths > 1 || (lengths > 0 && chunked)
}

async fn handle(
    shared: Arc<Shared>,
    web: Arc<Web>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if ambiguous_length(&req) {
        let mut resp = pages::bad_request("conflicting message length headers");
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    if req.uri().path() == "/.ferry/ping" {
        return Ok(ping(req.method()));
    }
    if req.uri().path() == ferry_proto::tunnel::PATH {
        // On every host name: an L7 proxy in front may send its own.
        return Ok(tunnel::upgrade(&shared, &web, peer, req));
    }
    let Some(authority) = authority(&req) else {
        return Ok(pages::bad_request("the request names no host"));
    };
    let app = app_host::split_authority(&authority).and_then(|(hostname, _)| {
        let domain = web.apps_domain.as_deref()?;
        AppHost::parse(&hostname, domain)
            .ok()
            .map(|app| (hostname, app))
    });
    let Some((hostname, app)) = app else {
        return Ok(pages::not_found());
    };
    if req.uri().path() == auth::AUTH_PATH {
        return Ok(auth::complete(&shared, &web, &hostname, &req));
    }
    let Some(claims) = auth::app_claims(&shared, &web, req.headers(), &hostname) else {
        return Ok(auth::redirect_to_control(&web, &authority, &req));
    };
    tracing::debug!(user = %claims.sub, host = %hostname, method = %req.method(), path = %req.uri().path(), "web request");
    let resp = match app.target {
        AppTarget::Port(port) => {
            let forwarded = proxy::Forwarded {
                peer,
                authority: &authority,
                token_id: &claims.jti,
            };
            proxy::forward(&shared, &web, &app.workspace, port, forwarded, req).await
        }
        AppTarget::Terminal => {
            terminal::serve(&shared, &web, &app.workspace, &authority, &claims.jti, req).await
        }
    };
    Ok(resp)
}

/// `/.ferry/ping`: no content, never cached, readable (and timeable) from any page.
fn ping(method: &Method) -> Response<Body> {
    let status = if method == Method::GET || method == Method::HEAD {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert("timing-allow-origin", HeaderValue::from_static("*"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
