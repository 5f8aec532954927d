//! What every ferry process needs to move bytes: QUIC endpoint configuration with
//! bounded windows and stream counts, length-prefixed frame I/O over streams, splicing
//! two byte streams with half-close preserved, dialing a relay with a hello, resolving
//! relay names and racing their addresses, TCP through HTTPS proxies, and a small
//! HTTPS client for the control plane's API.

pub mod congestion;
pub mod control_client;
pub mod dial;
pub mod frame_io;
pub mod gso;
pub mod liveness;
pub mod probe;
pub mod proxy;
pub mod quic;
pub mod race;
pub mod rate;
pub mod reach;
pub mod resolve;
pub mod splice;
pub mod test_dns;
pub mod test_peer;
pub mod tunnel;

pub use control_client::{ControlClient, ControlError};
pub use dial::{DialError, StreamError};
pub use frame_io::FrameError;
pub use proxy::{ProxyError, ProxySettings, ProxyUrl};
pub use quic::Limits;
pub use race::race;
pub use resolve::{ResolveError, Resolver};

/// Seconds since the Unix epoch, for token checks.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
