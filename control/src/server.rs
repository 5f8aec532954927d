//! The control plane's HTTPS listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_certs::Usage;
use ferry_proto::token::TokenKind;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::state::{State, StateError};

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Names the HTTPS certificate covers (host names and IP addresses clients use).
    pub names: Vec<String>,
    /// `postgres://...` for a shared PostgreSQL store; default: SQLite in `data_dir`.
    pub database_url: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            data_dir: PathBuf::from("ferry-data"),
            listen: "127.0.0.1:7443".parse().expect("literal address"),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            database_url: None,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] ferry_certs::CertError),
}

/// A bound control plane, ready to serve.
pub struct ControlPlane {
    state: Arc<State>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    /// The plain-HTTP admin port, when [`ControlPlane::bind_admin`] made one.
    admin: Option<ferry_telemetry::AdminServer>,
}

/// How long open requests may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl ControlPlane {
    /// Loads state and binds the listener.
    pub async fn bind(config: &ControlConfig) -> Result<ControlPlane, ServeError> {
        let state = Arc::new(State::open(&config.data_dir, config.database_url.as_deref()).await?);
        let cert = state.ca().issue(&config.names, Usage::Server)?;
        let tls = ferry_certs::server_config(&cert, &[b"http/1.1"])?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(ControlPlane {
            state,
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            admin: None,
        })
    }

    /// Binds the admin port (plain HTTP: `/healthz`, `/readyz`, `/metrics`), kept apart
    /// from the API listener; it is served with the API by [`ControlPlane::serve`].
    /// Returns its address.
    pub async fn bind_admin(&mut self, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
        let state = self.state.clone();
        let stopping = self.state.stopping.clone();
        let server = ferry_telemetry::AdminServer::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?
            .readiness(move || {
                if stopping.is_cancelled() {
                    ferry_telemetry::Readiness::NotReady("shutting down".into())
                } else {
                    ferry_telemetry::Readiness::Ready
                }
            })
            .on_scrape(move || crate::metrics::refresh_relays(state.clone()));
        crate::metrics::describe();
        let bound = server.local_addr();
        self.admin = Some(server);
        Ok(bound)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Mints a token directly (for `ferry dev` and the bootstrap admin token).
    pub async fn mint(
        &self,
        kind: TokenKind,
        subject: &str,
        name: &str,
        ttl_secs: u64,
    ) -> Result<String, StateError> {
        Ok(self.state.mint(kind, subject, name, ttl_secs).await?.0)
    }

    /// Serves until `cancel` fires, then drains open connections for a short grace.
    pub async fn serve(mut self, cancel: CancellationToken) {
        let router = crate::api::router(self.state.clone())
            .layer(axum::middleware::from_fn(crate::metrics::track));
        let mut connections = JoinSet::new();
        let mut background = JoinSet::new();
        background.spawn(maintenance(self.state.clone(), cancel.clone()));
        // The admin port answers until the very end, so `/readyz` can say we stop.
        let admin_stop = CancellationToken::new();
        if let Some(admin) = self.admin.take() {
            background.spawn(admin.serve(admin_stop.clone()));
        }
        background.spawn(series_upkeep(self.state.clone(), cancel.clone()));
        tracing::info!(addr = %self.local_addr(), "control plane API listening");
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let acceptor = self.acceptor.clone();
                    // The login rate limit needs the peer's address.
                    let service = TowerToHyperService::new(
                        router.clone().layer(axum::Extension(crate::api::Peer(peer))),
                    );
                    let cancel = cancel.clone();
                    connections.spawn(async move {
                        let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                            tracing::debug!(%peer, "TLS handshake failed");
                            return;
                        };
                        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            res = conn.as_mut() => {
                                if let Err(e) = res { tracing::debug!(%peer, error = %e, "connection ended"); }
                            }
                            _ = cancel.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
            }
        }
        // Held long polls answer now instead of keeping the drain waiting.
        self.state.stopping.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        admin_stop.cancel();
        background.shutdown().await;
        tracing::info!("control plane stopped");
    }
}

/// How often expired tokens are pruned from the store.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Expired tokens are kept this long, so a listing still explains a recent expiry.
const KEEP_EXPIRED_SECS: i64 = 7 * 24 * 3600;

/// Periodic upkeep of the store until cancelled. With several replicas each prunes;
/// the deletes are idempotent.
async fn maintenance(state: Arc<State>, cancel: CancellationToken) {
    loop {
        let before = crate::state::now().saturating_sub(KEEP_EXPIRED_SECS);
        match state.store().prune_expired_tokens(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tokens = n, "pruned expired tokens"),
            Err(e) => {
                crate::metrics::store_error();
                tracing::warn!(error = %e, "pruning expired tokens failed");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// How often latency samples are rolled up and old series pruned.
const SERIES_UPKEEP_EVERY: Duration = Duration::from_secs(60);

/// Rolls raw latency samples up into one-minute buckets and drops what is past its
/// retention (workspace telemetry too), every minute until cancelled. Replicas may both do it: buckets are
/// inserted only if missing, deletes are idempotent.
async fn series_upkeep(state: Arc<State>, cancel: CancellationToken) {
    use crate::measurements::{LOAD_RETENTION_MS, MINUTE_RETENTION_MS, RAW_RETENTION_MS};
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SERIES_UPKEEP_EVERY) => {}
        }
        let now = crate::api::now_ms();
        match crate::store::rollup(state.store(), now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(buckets = n, "latency samples rolled up"),
            Err(e) => tracing::warn!(error = %e, "rolling up latency samples failed"),
        }
        let pruned = state
            .store()
            .prune_series(
                now - RAW_RETENTION_MS as i64,
                now - MINUTE_RETENTION_MS as i64,
                now - LOAD_RETENTION_MS as i64,
            )
            .await;
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "old latency and load series pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning latency series failed"),
        }
        // Readings past the charts' span go in one delete a minute, never row by row
        // on the agents' write path.
        let pruned = state
            .store()
            .prune_telemetry(
                now - ferry_proto::api::STATS_HISTORY_MS,
                now - crate::telemetry::METADATA_RETENTION_MS,
            )
            .await;
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "old workspace telemetry pruned"),
            Err(e) => {
                crate::metrics::store_error();
                tracing::warn!(error = %e, "pruning workspace telemetry failed");
            }
        }
    }
}
