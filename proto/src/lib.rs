//! ferry's wire formats, free of I/O.
//!
//! Everything a peer can send us is decoded here from a `Bytes` buffer into a typed
//! value, or rejected with a [`DecodeError`]: no socket, no clock (time comes in as an
//! argument), no runtime. That keeps the code fuzzable (see `proto/fuzz/`) and lets the
//! relay, the agent and the CLI share one definition of every byte.
//!
//! # Protocol versions
//! - 1 (ferry 0.1): hello/reply on the first stream of a connection, a stream header
//!   per data stream, typed error frames, Ed25519 tokens. Later in 0.1: relay-to-relay
//!   hops in the stream header (mesh forwarding), and the [`Notice`] frames (go-away) on
//!   an agent's control stream. Later still: the `trace` stream target and its
//!   [`TraceReport`] answer (`ferry status`); a relay without them refuses the stream
//!   with `protocol_error`, which the CLI explains.

pub mod alpn;
pub mod api;
pub mod app_host;
pub mod codec;
pub mod error_code;
pub mod frame;
pub mod label;
pub mod notice;
pub mod relay_addr;
pub mod terminal;
pub mod token;
pub mod trace;
pub mod tunnel;

pub use codec::DecodeError;
pub use error_code::ErrorCode;
pub use frame::{ErrorFrame, Hello, Reply, StreamHeader, Target};
pub use label::{LabelError, WorkspaceLabel};
pub use notice::Notice;
pub use relay_addr::{RelayAddr, RelayAddrError, RelayHost};
pub use trace::{TraceHop, TraceReport};

/// The protocol version this build speaks, carried in every hello and stream header.
pub const PROTOCOL_VERSION: u8 = 1;
