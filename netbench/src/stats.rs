//! Summaries of measurements: medians of throughput trials and latency percentiles.

use std::time::Duration;

use serde::Serialize;

/// Median of the values (mean of the two middle ones for an even count); NaN if empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`
/// percent of the samples at or below it. No interpolation: every reported number is a
/// latency that was actually measured.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The epsilon keeps float error (0.999 * 1000 = 999.0000000000001) from moving the
    // rank up by one.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency distribution, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_samples(samples: &[Duration]) -> Latency {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let mean = if us.is_empty() {
            f64::NAN
        } else {
            us.iter().sum::<f64>() / us.len() as f64
        };
        Latency {
            samples: us.len(),
            p50_us: percentile(&us, 50.0),
            p90_us: percentile(&us, 90.0),
            p99_us: percentile(&us, 99.0),
            p999_us: percentile(&us, 99.9),
            mean_us: mean,
            min_us: us.first().copied().unwrap_or(f64::NAN),
            max_us: us.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One point of a latency distribution: `percent` of the samples took at most `us`.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct CdfPoint {
    pub percent: f64,
    pub us: f64,
}

/// Where a CDF is sampled: every percent, then finer into the tail, where the
/// interesting differences are.
const CDF_PERCENTS: &[f64] = &[99.5, 99.9, 99.95, 99.99, 100.0];

/// The distribution of `samples` at a fixed set of percentiles (about 105 points
/// whatever the sample count), small enough to keep in every JSON report.
pub fn cdf(samples: &[Duration]) -> Vec<CdfPoint> {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    if us.is_empty() {
        return Vec::new();
    }
    (1..=99)
        .map(f64::from)
        .chain(CDF_PERCENTS.iter().copied())
        .map(|percent| CdfPoint {
            percent,
            us: percentile(&us, percent),
        })
        .collect()
}

/// Bytes over time, in Gbit/s (10^9 bits per second).
pub fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_the_maximum() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let points = cdf(&samples);
        assert_eq!(points.first().map(|p| p.us), Some(10.0));
        assert_eq!(
            points.last().map(|p| (p.percent, p.us)),
            Some((100.0, 1000.0))
        );
        assert!(points
            .windows(2)
            .all(|w| w[0].percent < w[1].percent && w[0].us <= w[1].us));
        assert!(cdf(&[]).is_empty());
    }

    #[test]
    fn gbit_per_second() {
        assert!((gbps(1_000_000_000, Duration::from_secs(8)) - 1.0).abs() < 1e-9);
    }
}
