//! Opening a TCP connection to `host:port`: directly (racing the given addresses), or
//! through an HTTP proxy with `CONNECT`.
//!
//! The proxy's response head is read one byte at a time: it is a few dozen bytes,
//! once per connection, and reading exactly up to its end means no byte of the
//! tunnel is ever swallowed, so the caller gets a plain `TcpStream`.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{authority, ProxyError, ProxySettings, ProxyUrl};
use std::net::SocketAddr;

/// How long reaching the proxy and its answer to `CONNECT` may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest response head we read from a proxy (a real one is a few hundred bytes).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// How long a direct connection (every address raced) may take.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a tunnel to `host:port` through the HTTP proxy `proxy`: TCP to the proxy,
/// `CONNECT host:port HTTP/1.1` (with `Proxy-Authorization: Basic` when the URL
/// carries credentials), and the proxy's `2xx` answer. The stream returned carries
/// the tunnel from its first byte.
pub async fn connect_via(proxy: &ProxyUrl, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    if proxy.scheme() != "http" {
        return Err(ProxyError::UnsupportedScheme {
            scheme: proxy.scheme().to_string(),
        });
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let target = authority(host, port);
    if !valid_target_host(host) {
        return Err(ProxyError::BadTarget {
            target: target.chars().take(200).collect(),
        });
    }
    let proxy_name = proxy.authority();
    let tunnel = async {
        let mut stream = TcpStream::connect((proxy.host(), proxy.port()))
            .await
            .map_err(|e| ProxyError::Connect {
                proxy: proxy_name.clone(),
                reason: e.to_string(),
            })?;
        // The TLS handshake that follows is many small writes.
        let _ = stream.set_nodelay(true);
        let malformed = |reason: String| ProxyError::Malformed {
            proxy: proxy_name.clone(),
            target: target.clone(),
            reason,
        };
        stream
            .write_all(connect_request(&target, proxy.credentials()).as_bytes())
            .await
            .map_err(|e| malformed(format!("writing CONNECT: {e}")))?;
        let head = read_head(&mut stream).await.map_err(malformed)?;
        let (status, reason) = parse_status(&head).map_err(|e| malformed(e.to_string()))?;
        match status {
            200..=299 => Ok(stream),
            // 407 is the standard answer; some proxies (tinyproxy) answer wrong
            // credentials with 401, which for CONNECT can only be the proxy's too.
            401 | 407 => Err(ProxyError::AuthRequired {
                proxy: proxy_name.clone(),
                had_credentials: proxy.credentials().is_some(),
            }),
            _ => Err(ProxyError::Refused {
                proxy: proxy_name.clone(),
                target: target.clone(),
                status,
                reason,
            }),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, tunnel)
        .await
        .map_err(|_| ProxyError::Timeout {
            proxy: proxy_name.clone(),
            target: target.clone(),
        })?
}

/// A TCP connection to `host:port`: through the proxy `settings` names for it, or
/// directly to `addrs` (raced, RFC 8305; when empty, `host` is resolved by the
/// system). Returns the proxy used, if any.
pub async fn tcp_connect(
    settings: &ProxySettings,
    host: &str,
    port: u16,
    addrs: &[SocketAddr],
) -> Result<(TcpStream, Option<ProxyUrl>), ProxyError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Some(proxy) = settings.route(host, port)? {
        tracing::debug!(%proxy, target = %authority(host, port), "connecting through the proxy");
        let stream = connect_via(proxy, host, port).await?;
        return Ok((stream, Some(proxy.clone())));
    }
    let target = authority(host, port);
    let direct = async {
        if addrs.is_empty() {
            return TcpStream::connect((host, port))
                .await
                .map_err(|e| e.to_string());
        }
        crate::race::race(
            addrs.to_vec(),
            crate::race::CONNECTION_ATTEMPT_DELAY,
            TcpStream::connect,
        )
        .await
        .map(|(_, stream)| stream)
        .map_err(|errors| {
            errors
                .iter()
                .map(|(addr, e)| format!("{addr}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    };
    let stream = tokio::time::timeout(DIRECT_TIMEOUT, direct)
        .await
        .map_err(|_| format!("no answer within {DIRECT_TIMEOUT:?}"))
        .and_then(|r| r)
        .map_err(|reason| ProxyError::Direct {
            target: target.clone(),
            reason,
        })?;
    Ok((stream, None))
}

/// Letters, digits, `-._` and `:` (IPv6): nothing that could end the request line.
fn valid_target_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
}

/// The `CONNECT` request for `target` (`host:port`).
pub(crate) fn connect_request(target: &str, credentials: Option<(&str, &str)>) -> String {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str(concat!(
        "User-Agent: ferry/",
        env!("CARGO_PKG_VERSION"),
        "\r\n\r\n"
    ));
    request
}

/// Reads up to and including the blank line ending the response head, and not a
/// byte further.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(256);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(if head.is_empty() {
                    "it closed the connection without answering".into()
                } else {
                    "it closed the connection in the middle of its answer".into()
                });
            }
            Err(e) => return Err(format!("reading its answer: {e}")),
        };
        head.push(byte);
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            ));
        }
    }
}

/// The status code and reason phrase of an HTTP/1.x response head.
pub(crate) fn parse_status(head: &[u8]) -> Result<(u16, String), &'static str> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| "the status line is not text")?
        .trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1.x response");
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or("no valid status code")?;
    let reason = parts
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Ok((status, reason))
}
