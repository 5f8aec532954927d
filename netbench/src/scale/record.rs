//! Collecting one series of timed operations (API calls, echoes, keystrokes, page
//! loads): latencies of those that succeeded, and the failures, told apart by whose
//! fault they are (a 5xx or an `internal` error is the server's own).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::stats;

/// Failures kept word for word per series; the rest are only counted.
const KEPT_ERRORS: usize = 5;

#[derive(Debug, Default)]
struct Inner {
    samples: Vec<Duration>,
    errors: u64,
    internal_errors: u64,
    examples: Vec<String>,
}

/// A series, shared by the tasks that feed it.
#[derive(Debug, Clone, Default)]
pub struct Series(Arc<Mutex<Inner>>);

impl Series {
    pub fn ok(&self, took: Duration) {
        self.lock().samples.push(took);
    }

    /// A failed operation; `internal` when the server said the fault is its own.
    pub fn fail(&self, internal: bool, what: String) {
        let mut inner = self.lock();
        inner.errors += 1;
        if internal {
            inner.internal_errors += 1;
        }
        if inner.examples.len() < KEPT_ERRORS {
            inner.examples.push(what);
        }
    }

    /// Records `result` of an operation that took `took`.
    pub fn record<T>(&self, took: Duration, result: &anyhow::Result<T>) {
        match result {
            Ok(_) => self.ok(took),
            Err(e) => self.fail(is_internal(e), format!("{e:#}")),
        }
    }

    pub fn errors(&self) -> u64 {
        self.lock().errors
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking feeder cannot leave the numbers half-written: keep them.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn summary(&self, name: &str) -> SeriesSummary {
        let inner = self.lock();
        let mut ms: Vec<f64> = inner
            .samples
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        SeriesSummary {
            name: name.to_string(),
            ok: ms.len(),
            errors: inner.errors,
            internal_errors: inner.internal_errors,
            error_examples: inner.examples.clone(),
            p50_ms: stats::percentile(&ms, 50.0),
            p90_ms: stats::percentile(&ms, 90.0),
            p95_ms: stats::percentile(&ms, 95.0),
            p99_ms: stats::percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            cdf: stats::cdf(&inner.samples),
        }
    }
}

/// Whether an error is the server's own fault: an HTTP 5xx from the control plane or
/// a stream refused with the `internal` code.
pub fn is_internal(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(ferry_transport::ControlError::Api { status, .. }) =
            cause.downcast_ref::<ferry_transport::ControlError>()
        {
            return *status >= 500;
        }
        if let Some(s) = cause.downcast_ref::<ferry_transport::dial::StreamError>() {
            return s.code() == Some(ferry_proto::ErrorCode::Internal);
        }
        false
    })
}

/// A series' numbers, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesSummary {
    pub name: String,
    pub ok: usize,
    pub errors: u64,
    pub internal_errors: u64,
    pub error_examples: Vec<String>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cdf: Vec<stats::CdfPoint>,
}
