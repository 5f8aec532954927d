//! A relay: one UDP port carrying QUIC from agents (which dial out from their
//! workspaces) and from developers' clients, told apart by ALPN.
//!
//! [`Relay::start`] registers with the control plane (getting its certificate and the
//! token keys), binds the endpoint and starts its background tasks; [`Relay::run`]
//! accepts connections until the cancellation token fires, then closes the endpoint.
//! Every connection and stream is a task in a `JoinSet` owned by its parent, so
//! nothing outlives the relay.

mod admin;
mod agents;
pub mod cache;
mod clients;
mod directory;
mod drain;
mod mesh;
mod routing;
mod server;
mod trace;
mod view;

pub use server::{Relay, RelayConfig, RelayError};
