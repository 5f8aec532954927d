//! ALPN protocol names: one UDP port on a relay carries agents, clients and the mesh,
//! and the TLS handshake's ALPN says which of them a connection is.

/// A workspace agent dialing out to its relay.
pub const AGENT: &[u8] = b"ferry-agent/1";
/// A developer's CLI (`ferry tcp`, `ferry port-forward`, `ferry ssh`).
pub const CLIENT: &[u8] = b"ferry-client/1";
/// Relay-to-relay links (mutual TLS).
pub const MESH: &[u8] = b"ferry-mesh/1";
/// QUIC datagrams carried over TLS on TCP, for networks that block UDP: the relay's
/// HTTPS port takes this ALPN besides `h2` and `http/1.1` (see [`crate::tunnel`]).
pub const TUNNEL: &[u8] = b"ferry-tunnel/1";
