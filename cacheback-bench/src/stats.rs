//! Latency histograms and the small statistics every workload reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};

/// A latency histogram in nanoseconds: 1 ns to 100 s at 3 significant digits (0.1% error).
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency (clamped into the histogram's range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(ns);
}

/// Adds `other` into `into` (both from [`latency_histogram`], so the bounds match).
pub(crate) fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    into.add(other).expect("histograms with the same bounds");
}

/// Nanoseconds to microseconds, rounded to 0.001 µs.
pub(crate) fn ns_to_us(ns: u64) -> f64 {
    round3(ns as f64 / 1_000.0)
}

/// Rounds to three decimals (JSON stays readable; the histogram is only 3 digits precise).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// The latency figures of a histogram, in microseconds.
pub(crate) fn latency_figures(h: &Histogram<u64>) -> Json {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_us": ns_to_us(h.value_at_quantile(0.50)),
        "p99_us": ns_to_us(h.value_at_quantile(0.99)),
        "p999_us": ns_to_us(h.value_at_quantile(0.999)),
        "max_us": ns_to_us(h.max()),
        "mean_us": round3(h.mean() / 1_000.0),
    })
}

/// Median, minimum and maximum of a handful of trial results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` for no samples. The median of an even count is the mean of the middle two.
    pub(crate) fn of(samples: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    /// As JSON: `{"median", "min", "max"}`.
    pub(crate) fn json(self) -> Json {
        json!({ "median": round3(self.median), "min": round3(self.min), "max": round3(self.max) })
    }
}

/// The nearest-rank percentile (`q` in `0..=1`) of sorted samples: the smallest sample such that
/// at least `q` of all samples are at or below it. Used for exact small-sample percentiles and to
/// check the histogram's.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn nearest_rank_matches_the_definition() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(50));
        assert_eq!(nearest_rank(&v, 0.99), Some(99));
        assert_eq!(nearest_rank(&v, 0.999), Some(100));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank(&v, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7], 0.5), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[test]
    fn histogram_percentiles_agree_with_exact_ones_within_precision() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut samples: Vec<u64> = (0..50_000)
            .map(|_| {
                // A long-tailed mix: mostly ~100 ns, some ~10 µs, a few ~5 ms.
                match rng.u32(0..1000) {
                    0..=979 => rng.u64(80..200),
                    980..=998 => rng.u64(5_000..20_000),
                    _ => rng.u64(1_000_000..9_000_000),
                }
            })
            .collect();
        let mut h = latency_histogram();
        for &s in &samples {
            record(&mut h, Duration::from_nanos(s));
        }
        samples.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = nearest_rank(&samples, q).unwrap() as f64;
            let approx = h.value_at_quantile(q) as f64;
            assert!(
                (approx - exact).abs() <= exact * 0.002 + 1.0,
                "q={q}: histogram {approx} vs exact {exact}"
            );
        }
        assert_eq!(h.max(), h.highest_equivalent(*samples.last().unwrap()));
    }

    #[test]
    fn latency_figures_are_in_microseconds() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let f = latency_figures(&h);
        let p50 = f["p50_us"].as_f64().unwrap();
        assert!((p50 - 500.0).abs() < 1.0, "{f}");
        assert_eq!(f["count"], 1000);
        assert_eq!(latency_figures(&latency_histogram())["count"], 0);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = latency_histogram();
        let mut b = latency_histogram();
        record(&mut a, Duration::from_nanos(100));
        record(&mut b, Duration::from_nanos(300));
        merge(&mut a, &b);
        assert_eq!(a.len(), 2);
        assert_eq!(a.max(), a.highest_equivalent(300));
    }
}
