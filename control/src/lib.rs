//! The control plane: the one place that knows who may reach what.
//!
//! This first version keeps its state in memory, except for what must survive a
//! restart to keep tokens valid: the CA and the token signing key, both in the data
//! directory. It serves the HTTP API over HTTPS on its own listener; relays never
//! serve it. [`ControlPlane::serve`] runs the accept loop until its cancellation token
//! fires, then gives open requests a short grace period.

mod api;
mod server;
mod state;

pub use server::{ControlConfig, ControlPlane, ServeError};
pub use state::{State, StateError};
