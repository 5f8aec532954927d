//! Handshake admission: which new QUIC connections the relay takes on, decided before
//! any state is spent on them, so that a stampede of reconnecting agents or a flood of
//! connections that never say hello cannot starve the agents already connected.
//!
//! Why it matters: quinn runs each accepted handshake's first TLS flight (ClientHello,
//! key exchange, certificate signature) under the endpoint's one mutex, the same lock
//! its driver takes to receive every datagram of every connection. Thousands of
//! handshakes accepted at once from many tasks held both worker threads on that lock,
//! while established agents' keep-alives and clients' hellos waited behind them. So
//! handshakes are now accepted one at a time from the accept loop, at a bounded rate,
//! and what is over the limits is turned away at the cheapest point:
//!
//! 1. an address with [`AdmissionConfig::max_pending_per_address`] connections still
//!    in their handshake or hello: refused (QUIC `CONNECTION_REFUSED`, no state kept);
//! 2. past [`AdmissionConfig::retry_above`] pending connections, an address that has
//!    not proved it receives our packets gets a stateless Retry first (spoofed floods
//!    end there);
//! 3. past [`AdmissionConfig::max_pending`]: refused;
//! 4. over the handshake rate: an unvalidated address gets a Retry (one round trip
//!    later there may be room); a validated one is accepted and its hello answered with
//!    the typed, retryable `overloaded` at once, so agents back off (with jitter) and
//!    the CLI tries another relay, instead of waiting for a timeout.
//!
//! A connection stays pending until its hello is read ([`Admission::hello_read`]) or
//! it ends. The accept loop in `server.rs` owns the tasks; this module holds no task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_transport::rate::TokenBucket;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Defaults of [`AdmissionConfig`].
pub const DEFAULT_HANDSHAKE_RATE: u32 = 2000;
pub const DEFAULT_MAX_PENDING: usize = 4096;
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 256;

/// How long a peer may take to finish the QUIC handshake once we accepted it. Without
/// it a stalled handshake holds its state for the whole idle timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits on connections the relay has not yet heard a hello on.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// New handshakes accepted a second, on average.
    pub handshake_rate: u32,
    /// Handshakes accepted at once after a quiet time.
    pub handshake_burst: u32,
    /// Pending connections (in handshake, or before their hello) above which peers
    /// must validate their address with a Retry.
    pub retry_above: usize,
    /// Pending connections above which new ones are refused.
    pub max_pending: usize,
    /// Pending connections one address (an IPv6 /64) may have.
    pub max_pending_per_address: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            handshake_rate: DEFAULT_HANDSHAKE_RATE,
            handshake_burst: DEFAULT_HANDSHAKE_RATE,
            retry_above: DEFAULT_MAX_PENDING / 4,
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
        }
    }
}

/// Why a new connection was turned away before its handshake (the `reason` label of
/// `ferry_relay_refusals_total{scope="handshake"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnedAway {
    /// Its address has too many pending connections.
    AddressLimit,
    /// The relay has too many pending connections.
    PendingLimit,
    /// Sent a stateless Retry: the address must prove it is real first.
    Retry,
}

impl TurnedAway {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnedAway::AddressLimit => "address_limit",
            TurnedAway::PendingLimit => "pending_limit",
            TurnedAway::Retry => "retry",
        }
    }
}

/// What to do with a new connection, decided from counts alone (no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    /// Accept the handshake, then answer the hello with `overloaded`.
    AnswerOverloaded,
    Retry,
    Refuse(TurnedAway),
}

/// The decision, given the pending counts and whether the handshake rate allows one
/// more. `rate_ok` is only consulted (and a token only taken) when it matters.
fn decide(
    config: &AdmissionConfig,
    pending: usize,
    pending_here: usize,
    validated: bool,
    rate_ok: impl FnOnce() -> bool,
) -> Verdict {
    if pending_here >= config.max_pending_per_address {
        return Verdict::Refuse(TurnedAway::AddressLimit);
    }
    if pending >= config.retry_above && !validated {
        return Verdict::Retry;
    }
    if pending >= config.max_pending {
        return Verdict::Refuse(TurnedAway::PendingLimit);
    }
    match (rate_ok(), validated) {
        (true, _) => Verdict::Accept,
        (false, false) => Verdict::Retry,
        (false, true) => Verdict::AnswerOverloaded,
    }
}

/// Addresses are counted per host; IPv6 hosts usually hold a whole /64.
fn address_key(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

struct Inner {
    config: AdmissionConfig,
    bucket: Mutex<TokenBucket>,
    counts: Mutex<Counts>,
    /// Connections past their handshake, waiting for their hello: their slot, by
    /// quinn's stable id, given back by [`Admission::hello_read`].
    awaiting_hello: DashMap<usize, PendingSlot>,
}

/// The relay's handshake admission (cheap to clone: one shared state).
#[derive(Clone)]
pub(crate) struct Admission(Arc<Inner>);

/// One pending connection's place in the counts, given back on drop.
pub(crate) struct PendingSlot {
    inner: Arc<Inner>,
    address: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// A handshake the relay took on.
pub(crate) struct Admitted {
    connecting: quinn::Connecting,
    slot: PendingSlot,
    overloaded: bool,
    started: Instant,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        let bucket = TokenBucket::new(
            f64::from(config.handshake_rate),
            config.handshake_burst,
            Instant::now(),
        );
        Admission(Arc::new(Inner {
            config,
            bucket: Mutex::new(bucket),
            counts: Mutex::new(Counts {
                total: 0,
                by_address: HashMap::new(),
            }),
            awaiting_hello: DashMap::new(),
        }))
    }

    /// Connections in their handshake or before their hello.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.0
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }

    /// Decides on `incoming` and acts: accepts it (returning it to be awaited by a
    /// task of the caller's), or retries or refuses it. Called from the accept loop
    /// only, so that quinn's endpoint lock is taken by one task at a time.
    pub fn admit(&self, shared: &Shared, incoming: quinn::Incoming) -> Option<Admitted> {
        let address = address_key(incoming.remote_address());
        let validated = incoming.remote_address_validated();
        let verdict = {
            let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
            let here = counts.by_address.get(&address).copied().unwrap_or(0);
            let verdict = decide(&self.0.config, counts.total, here, validated, || {
                self.0
                    .bucket
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_take(Instant::now())
            });
            if matches!(verdict, Verdict::Accept | Verdict::AnswerOverloaded) {
                counts.total += 1;
                *counts.by_address.entry(address).or_default() += 1;
            }
            verdict
        };
        let overloaded = match verdict {
            Verdict::Accept => false,
            Verdict::AnswerOverloaded => true,
            Verdict::Retry => {
                shared.metrics.turned_away(TurnedAway::Retry);
                // `retry` fails only for an address already validated, which never
                // gets here; refuse rather than keep it.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                return None;
            }
            Verdict::Refuse(why) => {
                shared.metrics.turned_away(why);
                tracing::debug!(remote = %address, reason = why.as_str(), "new connection refused before its handshake");
                incoming.refuse();
                return None;
            }
        };
        let slot = PendingSlot {
            inner: self.0.clone(),
            address,
        };
        let started = Instant::now();
        match incoming.accept() {
            Ok(connecting) => Some(Admitted {
                connecting,
                slot,
                overloaded,
                started,
            }),
            Err(e) => {
                shared.metrics.handshake_failed();
                tracing::debug!(remote = %address, error = %e, "handshake failed at its first packet");
                None
            }
        }
    }

    /// The connection's hello has been read: it no longer counts as pending.
    pub fn hello_read(&self, conn: &quinn::Connection) {
        self.0.awaiting_hello.remove(&conn.stable_id());
    }
}

/// Finishes an admitted handshake and serves the connection; a connection admitted
/// over the handshake rate has its hello answered with `overloaded` (mesh links
/// excepted: they carry other relays' load).
pub(crate) async fn serve(shared: Arc<Shared>, admitted: Admitted, stop: CancellationToken) {
    let Admitted {
        connecting,
        slot,
        overloaded,
        started,
    } = admitted;
    let remote = connecting.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            shared.metrics.handshake_failed();
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failed();
            tracing::debug!(%remote, "handshake not finished in time");
            return;
        }
    };
    let id = conn.stable_id();
    let admission = shared.admission.clone();
    admission.0.awaiting_hello.insert(id, slot);
    // Whatever way the connection's task ends, its slot goes back.
    let _forget = Forget { admission, id };
    let mesh = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == ferry_proto::alpn::MESH);
    if overloaded && !mesh {
        let message = format!(
            "relay {} is taking on new connections at its limit of {} a second; try again shortly, or another relay",
            shared.name, shared.admission.0.config.handshake_rate
        );
        return crate::clients::refuse_overloaded(&shared, &conn, message).await;
    }
    crate::server::serve_connection(shared, conn, stop, started.elapsed()).await
}

/// Gives a connection's pending slot back when its task ends (if its hello did not).
struct Forget {
    admission: Admission,
    id: usize,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.admission.0.awaiting_hello.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            handshake_rate: 10,
            handshake_burst: 10,
            retry_above: 4,
            max_pending: 8,
            max_pending_per_address: 3,
        }
    }

    #[test]
    fn limits_apply_from_the_cheapest_answer_up() {
        let c = config();
        let never = || panic!("the rate is not consulted");
        assert_eq!(
            decide(&c, 0, 3, true, never),
            Verdict::Refuse(TurnedAway::AddressLimit)
        );
        assert_eq!(decide(&c, 4, 0, false, never), Verdict::Retry);
        assert_eq!(
            decide(&c, 8, 0, true, never),
            Verdict::Refuse(TurnedAway::PendingLimit)
        );
        assert_eq!(decide(&c, 0, 0, false, || true), Verdict::Accept);
        assert_eq!(decide(&c, 0, 0, false, || false), Verdict::Retry);
        assert_eq!(
            decide(&c, 0, 0, true, || false),
            Verdict::AnswerOverloaded,
            "a validated peer over the rate hears `overloaded`"
        );
    }

    #[test]
    fn ipv6_hosts_are_counted_by_their_64_and_mapped_v4_as_v4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:7".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let admission = Admission::new(config());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        let take = || {
            let mut counts = admission.0.counts.lock().unwrap();
            counts.total += 1;
            *counts.by_address.entry(address).or_default() += 1;
            PendingSlot {
                inner: admission.0.clone(),
                address,
            }
        };
        let (a, b) = (take(), take());
        assert_eq!(admission.pending(), 2);
        drop(a);
        drop(b);
        assert_eq!(admission.pending(), 0);
        assert!(
            admission.0.counts.lock().unwrap().by_address.is_empty(),
            "an address with nothing pending is forgotten"
        );
    }
}
