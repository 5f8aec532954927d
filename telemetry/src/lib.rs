//! Telemetry shared by every long-running ferry process: the process-wide Prometheus
//! recorder behind the `metrics` facade, and the admin port that serves it.
//!
//! Each component owns its metrics (names start with `ferry_`, units are in the names,
//! labels are low-cardinality) and records them through the `metrics` macros. The
//! recorder is installed once per process by [`install`]; `ferry dev` runs several
//! components in one process, so they share it (relay metrics carry a `relay` label to
//! stay apart). The admin port ([`AdminServer`]) is plain HTTP/1.1, loopback by
//! default, separate from the API and relay traffic: `/healthz` answers while the
//! process runs, `/readyz` says whether it should get new work, `/metrics` is the
//! Prometheus text format. Its accept loop and connections live in a `JoinSet` and
//! stop on the caller's cancellation token.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric: from half a millisecond (a stream
/// set up on loopback) to ten seconds (a handshake across the world, retried).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so
/// that an unscraped process does not hoard samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle). Metric handles created before this are no-ops, so components call it
/// before registering theirs. If another recorder was installed first (an embedding
/// program's), ours is kept aside and renders nothing of theirs; we log it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Whether the process should get new work, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, and why (shown in the 503 body).
    NotReady(String),
}

type ReadinessCheck = Arc<dyn Fn() -> Readiness + Send + Sync>;
type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A bound admin port, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: ReadinessCheck,
    on_scrape: Option<ScrapeHook>,
}

impl AdminServer {
    /// Binds `addr` (port 0: any free port) and installs the recorder.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(AdminServer::from_listener(listener))
    }

    /// An admin server on a listener the caller bound.
    pub fn from_listener(listener: TcpListener) -> AdminServer {
        AdminServer {
            listener,
            handle: install(),
            readiness: Arc::new(|| Readiness::Ready),
            on_scrape: None,
        }
    }

    /// What `/readyz` answers (always ready when unset).
    pub fn readiness(mut self, check: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        self.readiness = Arc::new(check);
        self
    }

    /// Runs before each `/metrics` render, to refresh gauges that are cheaper to read
    /// on demand than to keep current (e.g. counts from a database).
    pub fn on_scrape<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_scrape = Some(Arc::new(move || Box::pin(hook())));
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `stop`.
    pub async fn serve(self, stop: CancellationToken) {
        let AdminServer {
            listener,
            handle,
            readiness,
            on_scrape,
        } = self;
        let mut conns = JoinSet::new();
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = upkeep.tick() => handle.run_upkeep(),
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (handle, readiness, on_scrape) = (handle.clone(), readiness.clone(), on_scrape.clone());
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (handle, readiness, on_scrape) = (handle.clone(), readiness.clone(), on_scrape.clone());
                            async move {
                                Ok::<_, Infallible>(answer(req.uri().path(), &handle, &readiness, on_scrape.as_ref()).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            }
        }
        conns.shutdown().await;
    }
}

async fn answer(
    path: &str,
    handle: &PrometheusHandle,
    readiness: &ReadinessCheck,
    on_scrape: Option<&ScrapeHook>,
) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => match readiness() {
            Readiness::Ready => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
            Readiness::NotReady(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => {
            if let Some(hook) = on_scrape {
                hook().await;
            }
            (
                StatusCode::OK,
                handle.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "not found (try /healthz, /readyz, /metrics)\n".to_string(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Parses Prometheus text into `(series, value)` pairs, `series` being the name with
/// its labels as written (`name{a="b"}`). Comments and malformed lines are skipped.
/// For tests and tools that read a scrape.
pub fn parse_text(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The metric names (without labels) present in a Prometheus text scrape.
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    parse_text(text)
        .into_iter()
        .map(|(series, _)| match series.split_once('{') {
            Some((name, _)) => name.to_string(),
            None => series,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        tcp.read_to_string(&mut resp).await.unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn admin_port_serves_health_readiness_and_recorded_metrics() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ready.clone();
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = scrapes.clone();
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .readiness(move || {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    Readiness::Ready
                } else {
                    Readiness::NotReady("draining".into())
                }
            })
            .on_scrape(move || {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                async move { metrics::gauge!("ferry_test_scrapes").set(n as f64) }
            });
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));

        metrics::counter!("ferry_test_things_total", "kind" => "a").increment(3);
        metrics::histogram!("ferry_test_wait_seconds").record(0.003);

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "draining\n"));
        assert_eq!(get(addr, "/nope").await.0, 404);

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let values = parse_text(&body);
        let value = |series: &str| values.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        assert_eq!(value("ferry_test_things_total{kind=\"a\"}"), Some(3.0));
        assert_eq!(value("ferry_test_scrapes"), Some(1.0));
        // Seconds histograms are real histograms (buckets), not summaries.
        assert_eq!(
            value("ferry_test_wait_seconds_bucket{le=\"0.005\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("ferry_test_wait_seconds_bucket{le=\"0.0025\"}"),
            Some(0.0)
        );
        assert!(metric_names(&body).contains("ferry_test_wait_seconds_count"));

        stop.cancel();
        task.await.unwrap();
    }
}
