//! What one browser, or one attacker, may hold of the HTTPS side: connections in all
//! and per address (slowloris holds many connections open with requests that never
//! finish), how long a TLS handshake and a request head may take, and the HTTP/2
//! limits against rapid reset (HEADERS then RST_STREAM, in a loop), CONTINUATION
//! floods (a header block that never ends) and SETTINGS floods.
//!
//! hyper's `header_read_timeout` bounds an HTTP/1.1 head; HTTP/2 has no such timer, so
//! an HTTP/2 peer is bounded by the h2 limits (header list size, CONTINUATION count,
//! pending resets), by keep-alive pings it must answer, and by the per-address cap.
//! No task lives here: [`WebLimits::admit`] hands out a slot the connection's task
//! holds until it ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Defaults of [`WebLimitsConfig`].
pub const DEFAULT_MAX_HTTPS_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HTTPS_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Limits of the relay's HTTPS side.
#[derive(Debug, Clone)]
pub struct WebLimitsConfig {
    /// HTTPS connections held at once; more are closed at accept.
    pub max_connections: usize,
    /// HTTPS connections one address (an IPv6 /64) may hold at once.
    pub max_connections_per_address: usize,
    /// How long a browser may take for the TLS handshake.
    pub tls_timeout: Duration,
    /// How long a browser may take to send an HTTP/1.1 request head (also the wait for
    /// the next request on an idle keep-alive connection).
    pub header_timeout: Duration,
}

impl Default for WebLimitsConfig {
    fn default() -> Self {
        WebLimitsConfig {
            max_connections: DEFAULT_MAX_HTTPS_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_HTTPS_CONNECTIONS_PER_ADDRESS,
            tls_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Streams one HTTP/2 connection may have open at once (hyper's default is 200).
const H2_MAX_STREAMS: u32 = 100;
/// Largest request header list, HPACK-decoded; the h2 crate also bounds the number of
/// CONTINUATION frames by it (a header block that never ends is an error).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams reset by the peer before we accepted them, at once (rapid reset, CVE-2023-44487);
/// past it the connection is closed with ENHANCE_YOUR_CALM.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams we reset because the peer broke a rule, per connection, before giving up on it.
const H2_MAX_LOCAL_RESETS: usize = 128;
/// A peer must answer a ping this often (or send something), else the connection ends.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an HTTPS connection was closed at accept (the `reason` label of
/// `ferry_relay_refusals_total{scope="https"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    AddressLimit,
    ConnectionLimit,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AddressLimit => "address_limit",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }
}

struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The HTTPS side's connection counts.
pub(crate) struct WebLimits {
    pub config: WebLimitsConfig,
    counts: Arc<Mutex<Counts>>,
}

/// One HTTPS connection's place in the counts, given back on drop.
pub(crate) struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// Hosts are counted by address; IPv6 hosts usually hold a whole /64.
fn address_key(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
    }
}

impl WebLimits {
    pub fn new(config: WebLimitsConfig) -> WebLimits {
        WebLimits {
            config,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                by_address: HashMap::new(),
            })),
        }
    }

    /// A slot for a new connection from `peer`, or why there is none.
    pub fn admit(&self, peer: SocketAddr) -> Result<ConnectionSlot, Refusal> {
        let address = address_key(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.config.max_connections {
            return Err(Refusal::ConnectionLimit);
        }
        let here = counts.by_address.get(&address).copied().unwrap_or(0);
        if here >= self.config.max_connections_per_address {
            return Err(Refusal::AddressLimit);
        }
        *counts.by_address.entry(address).or_default() += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            counts: self.counts.clone(),
            address,
        })
    }

    /// A connection builder with these limits (HTTP/1.1 head timeout, HTTP/2 limits).
    pub fn builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        builder
    }
}

/// Whether a connection's first request head has arrived. hyper's header timeout
/// starts only once it knows the connection speaks HTTP/1.1, and HTTP/2 has none: a
/// peer that finishes TLS and then sends nothing (or a byte of the HTTP/2 preface)
/// would hold its connection for ever. [`FirstRequest::deadline`] ends it instead.
#[derive(Clone, Default)]
pub(crate) struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    /// Called by the service for every request (only the first matters).
    pub fn arrived(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Runs `conn`; `None` if no request head arrived `within` (the connection is
    /// dropped, which closes it). Later requests are hyper's to time.
    pub async fn deadline<F: std::future::Future>(
        &self,
        within: Duration,
        conn: F,
    ) -> Option<F::Output> {
        tokio::pin!(conn);
        tokio::select! {
            out = &mut conn => return Some(out),
            _ = tokio::time::sleep(within) => {}
        }
        if self.0.load(Ordering::Relaxed) {
            Some(conn.await)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> WebLimits {
        WebLimits::new(WebLimitsConfig {
            max_connections: total,
            max_connections_per_address: per_address,
            ..Default::default()
        })
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let l = limits(10, 2);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| l.admit(a).expect("under the cap")).collect();
        assert_eq!(l.admit(a).err(), Some(Refusal::AddressLimit));
        assert!(l.admit(b).is_ok(), "another address is unaffected");
        drop(held);
        assert!(l.admit(a).is_ok(), "slots come back when connections end");
    }

    #[test]
    fn the_total_is_capped_across_addresses() {
        let l = limits(2, 5);
        let _a = l.admit("192.0.2.1:1".parse().unwrap()).unwrap();
        let _b = l.admit("192.0.2.2:1".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("192.0.2.3:1".parse().unwrap()).err(),
            Some(Refusal::ConnectionLimit)
        );
    }

    #[tokio::test]
    async fn a_connection_with_no_request_is_ended_at_the_deadline() {
        let first = FirstRequest::default();
        let silent = first.deadline(Duration::from_millis(20), std::future::pending::<()>());
        assert_eq!(silent.await, None);

        let first = FirstRequest::default();
        let served = first.deadline(Duration::from_millis(20), {
            let first = first.clone();
            async move {
                first.arrived();
                tokio::time::sleep(Duration::from_millis(200)).await;
                "served"
            }
        });
        assert_eq!(
            served.await,
            Some("served"),
            "a connection that made a request runs on"
        );
    }

    #[test]
    fn refused_addresses_leave_no_entry_behind() {
        let l = limits(5, 0);
        assert!(l.admit("192.0.2.1:1".parse().unwrap()).is_err());
        assert!(l.counts.lock().unwrap().by_address.is_empty());
    }
}
