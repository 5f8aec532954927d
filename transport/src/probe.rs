//! Measuring the round-trip time to a relay: a QUIC handshake (the RTT quinn measured
//! on it), falling back to HTTPS (`GET {https_url}/.ferry/ping` on a warm connection)
//! when QUIC gets no answer, e.g. where UDP is blocked.
//!
//! A QUIC probe costs the relay one handshake and nothing else: the probe closes the
//! connection before saying hello. The probe reports which method answered. A relay
//! advertised by name is resolved first (not timed), and its addresses raced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::api::RelayInfo;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::quic::{client_bind_addr, client_endpoint_from, EndpointError, Limits};

/// The path every relay's HTTPS listener answers RTT probes on.
pub const PING_PATH: &str = "/.ferry/ping";

/// How a probe was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMethod {
    Quic,
    Https,
}

impl std::fmt::Display for ProbeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeMethod::Quic => "quic",
            ProbeMethod::Https => "https",
        })
    }
}

/// Why a probe got no RTT.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("relay {relay} has a bad address `{addr}`")]
    BadAddress { relay: String, addr: String },
    #[error("relay {relay}: {source}")]
    Resolve {
        relay: String,
        #[source]
        source: crate::resolve::ResolveError,
    },
    #[error("no answer from relay {relay} within {timeout:?} over QUIC{https}")]
    NoAnswer {
        relay: String,
        timeout: Duration,
        https: String,
    },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("CA certificate: {0}")]
    Tls(String),
}

/// Probes relays from one local address.
pub struct Prober {
    endpoint: quinn::Endpoint,
    https: TlsConnector,
    local_ip: Option<IpAddr>,
    timeout: Duration,
    resolver: crate::resolve::Resolver,
}

impl Prober {
    /// A prober trusting `ca_pem`, sending from `local_ip` when given; a probe that gets
    /// no answer within `timeout` (per method) counts as lost. Relay names are resolved
    /// as [`crate::resolve::Resolver::from_env`] says.
    pub fn new(
        ca_pem: &str,
        local_ip: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Prober, ProbeError> {
        let quic_tls = ferry_certs::client_config(ca_pem, &[ferry_proto::alpn::CLIENT])
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let https_tls = ferry_certs::client_config(ca_pem, &[b"http/1.1"])
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let limits = Limits {
            idle_timeout: timeout.max(Duration::from_millis(100)),
            ..Limits::default()
        };
        let v4: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let v6: SocketAddr = "[::1]:1".parse().expect("literal");
        let endpoint = match local_ip {
            Some(IpAddr::V4(_)) => client_endpoint_from(local_ip, v4, quic_tls, &limits)?,
            Some(IpAddr::V6(_)) => client_endpoint_from(local_ip, v6, quic_tls, &limits)?,
            // One dual-stack socket reaches relays of either family; a host without
            // IPv6 gets an IPv4 socket.
            None => match client_endpoint_from(None, v6, quic_tls.clone(), &limits) {
                Ok(endpoint) => endpoint,
                Err(_) => client_endpoint_from(None, v4, quic_tls, &limits)?,
            },
        };
        let resolver =
            crate::resolve::Resolver::from_env().map_err(|source| ProbeError::Resolve {
                relay: "(any)".into(),
                source,
            })?;
        Ok(Prober {
            resolver,
            endpoint,
            https: TlsConnector::from(Arc::new(https_tls)),
            local_ip,
            timeout,
        })
    }

    /// The same prober resolving relay names with `resolver`.
    pub fn with_resolver(mut self, resolver: crate::resolve::Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// One probe of `relay`: QUIC first, then HTTPS when the relay has an HTTPS origin.
    pub async fn probe(&self, relay: &RelayInfo) -> Result<(Duration, ProbeMethod), ProbeError> {
        let addr = ferry_proto::RelayAddr::parse(&relay.quic_addr).map_err(|_| {
            ProbeError::BadAddress {
                relay: relay.name.clone(),
                addr: relay.quic_addr.clone(),
            }
        })?;
        let addrs =
            self.resolver
                .resolve_addr(&addr)
                .await
                .map_err(|source| ProbeError::Resolve {
                    relay: relay.name.clone(),
                    source,
                })?;
        let quic = tokio::time::timeout(
            self.timeout,
            crate::race::race(addrs, crate::race::CONNECTION_ATTEMPT_DELAY, |addr| {
                self.quic(addr, &relay.server_name)
            }),
        )
        .await;
        let quic_error = match quic {
            Ok(Ok((_, rtt))) => return Ok((rtt, ProbeMethod::Quic)),
            Ok(Err(errors)) => errors
                .into_iter()
                .map(|(addr, e)| format!("{addr}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
            Err(_) => {
                // The relay may have moved to new addresses.
                self.resolver.forget(&relay.quic_addr);
                "timed out".to_string()
            }
        };
        tracing::debug!(relay = %relay.name, error = %quic_error, "QUIC probe failed");
        let mut https = String::new();
        if let Some(url) = &relay.https_url {
            match tokio::time::timeout(self.timeout, self.https(url)).await {
                Ok(Ok(rtt)) => return Ok((rtt, ProbeMethod::Https)),
                Ok(Err(e)) => https = format!(" or HTTPS ({e})"),
                Err(_) => https = " or HTTPS".into(),
            }
        }
        Err(ProbeError::NoAnswer {
            relay: relay.name.clone(),
            timeout: self.timeout,
            https,
        })
    }

    async fn quic(&self, addr: SocketAddr, server_name: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let conn = self
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // quinn's estimate comes from the handshake's acknowledgements; the wall time
        // also counts both sides' TLS work, so the smaller is the better measure.
        let rtt = conn.rtt().min(started.elapsed());
        conn.close(0u32.into(), b"rtt probe");
        Ok(rtt)
    }

    /// Two requests on one connection; the second, on a warm connection, takes one
    /// round trip.
    async fn https(&self, url: &str) -> Result<Duration, String> {
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("`{url}` is not an https:// URL"))?
            .trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in `{url}`"))?,
            ),
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let peer = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| format!("`{host}` has no address"))?;
        let socket = if peer.is_ipv6() {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .map_err(|e| e.to_string())?;
        if self.local_ip.is_some() {
            socket
                .bind(client_bind_addr(self.local_ip, peer))
                .map_err(|e| e.to_string())?;
        }
        let tcp = socket.connect(peer).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = self
            .https
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let result = async {
            let mut rtt = Duration::MAX;
            for _ in 0..2 {
                sender.ready().await.map_err(|e| e.to_string())?;
                let req = Request::get(PING_PATH)
                    .header(hyper::header::HOST, authority)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let started = Instant::now();
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{PING_PATH} answered HTTP {status}"));
                }
                rtt = started.elapsed();
            }
            Ok(rtt)
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"prober done");
    }
}

#[cfg(test)]
mod tests;
