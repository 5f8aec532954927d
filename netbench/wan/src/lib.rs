//! A userspace WAN emulator: the kernel here has no netem, so links between emulated
//! places are made of UDP and TCP forwarders that delay, jitter, drop and pace what
//! they carry.
//!
//! # How geography is emulated on one machine
//! A [`Topology`] names *locations* (regions, or where a developer sits), gives each a
//! loopback address of its own (`127.0.1.1`, `127.0.2.1`, ...), and the round-trip
//! time, jitter, loss and rate of the link between every two of them. A process "in"
//! a location binds its sockets to that address. A server (a relay) is reached through
//! a *front*: a port on the emulator that belongs to the server's location and
//! forwards to the server's real address. A packet reaching a front from source
//! address S crosses the link between S's location and the front's location: half
//! the RTT each way, plus jitter, loss (UDP only) and rate. So every client reaches
//! every relay through the one front the relay advertises, and still sees the RTT of
//! its own link, as on a real network where the path follows from the addresses.
//!
//! The pure parts (the topology and the per-direction [`Shaper`]) have no I/O; the
//! forwarders ([`Emulator`]) run on tokio, each front a task owned by the emulator and
//! stopped by its cancellation token.

mod forward;
mod shaper;
mod topology;

pub use forward::{Emulator, Front, WanError};
pub use shaper::Shaper;
pub use topology::{LinkSpec, Topology, TopologyError};
