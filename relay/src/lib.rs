//! A relay: one UDP port carrying QUIC from agents (which dial out from their
//! workspaces) and from developers' clients, told apart by ALPN.
//!
//! [`Relay::start`] registers with the control plane (getting its certificate and the
//! token keys), binds the endpoint and starts its background tasks; [`Relay::run`]
//! accepts connections until the cancellation token fires, then closes the endpoint.
//! Browsers reach web apps and the web terminal over HTTPS on the TCP port with the
//! same number (see [`web`]).
//! Every connection and stream is a task in a `JoinSet` owned by its parent, so
//! nothing outlives the relay.

mod admin;
mod admission;
mod agents;
pub mod cache;
mod clients;
mod directory;
mod drain;
mod load;
mod mesh;
mod metrics;
mod report;
mod routing;
mod server;
mod trace;
mod user_share;
mod view;
mod web;

pub use admission::{
    AdmissionConfig, DEFAULT_HANDSHAKE_RATE, DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ADDRESS,
};
pub use server::{Relay, RelayConfig, RelayError, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_STREAMS};
pub use user_share::DEFAULT_MAX_STREAMS_PER_USER;
pub use web::limits::{
    WebLimitsConfig, DEFAULT_MAX_HTTPS_CONNECTIONS, DEFAULT_MAX_HTTPS_CONNECTIONS_PER_ADDRESS,
};
