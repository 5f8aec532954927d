//! The control plane: the one place that knows who may reach what.
//!
//! State lives in a [`Store`] (SQLite in the data directory by default, PostgreSQL for
//! replicas); the CA stays in files in the data directory. It serves the HTTP API over HTTPS on its own listener; relays never
//! serve it. [`ControlPlane::serve`] runs the accept loop until its cancellation token
//! fires, then gives open requests a short grace period.

mod api;
pub mod dashboard;
pub mod keyring;
mod limiter;
mod login_gate;
pub mod measurements;
mod metrics;
mod server;
mod state;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;

pub use api::{hash_password, router, MAX_BODY, OPENAPI, ROUTES};
pub use server::{ControlConfig, ControlPlane, ServeError};
pub use state::{
    health, State, StateError, VerifyError, HEALTHY_SECS, SQLITE_FILE, UNREACHABLE_SECS,
};
pub use store::{Store, StoreError};
