//! The admin port: plain HTTP/1.1, loopback by default, served by `ferry-telemetry`.
//! `/healthz` answers while the process runs; `/readyz` turns 503 the moment the relay
//! starts draining, so a load balancer stops sending new clients before the relay goes
//! away; `/metrics` is the Prometheus text of [`crate::metrics`].

use std::sync::Arc;

use ferry_telemetry::{AdminServer, Readiness};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Serves the admin port until `stop`.
pub(crate) async fn serve(shared: Arc<Shared>, server: AdminServer, stop: CancellationToken) {
    server
        .readiness(move || {
            if shared.drain.is_draining() {
                Readiness::NotReady(format!(
                    "draining ({} open streams)",
                    shared.drain.open_streams()
                ))
            } else {
                Readiness::Ready
            }
        })
        .serve(stop)
        .await
}
