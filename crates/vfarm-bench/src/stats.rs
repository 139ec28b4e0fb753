//! Summary statistics of repeated measurements.

use serde::{Deserialize, Serialize};

/// Median, extremes and spread of one workload's samples in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / median, in percent: how far repeats disagree.
    pub spread_pct: f64,
}

impl Stats {
    /// `None` when there is no finite sample.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let (min, max) = (v[0], v[n - 1]);
        let spread_pct = if median != 0.0 {
            (max - min) / median.abs() * 100.0
        } else {
            0.0
        };
        Some(Stats {
            n,
            median,
            min,
            max,
            spread_pct,
        })
    }
}

/// How an environment compares with native for one workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Overhead {
    /// Performance relative to native (1 = native, 0.5 = half as fast), whichever way the
    /// metric points.
    pub relative: f64,
    /// Extra time for the same work, in percent (0 = native, 100 = twice as long).
    pub overhead_pct: f64,
}

/// Compare medians. `None` when either median is zero or not finite.
pub fn overhead(native: f64, other: f64, higher_is_better: bool) -> Option<Overhead> {
    if !(native.is_finite() && other.is_finite()) || native <= 0.0 || other <= 0.0 {
        return None;
    }
    let relative = if higher_is_better {
        other / native
    } else {
        native / other
    };
    Some(Overhead {
        relative,
        overhead_pct: (1.0 / relative - 1.0) * 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert_eq!(s.spread_pct, 100.0);
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(Stats::of(&[5.0]).unwrap().spread_pct, 0.0);
    }

    #[test]
    fn empty_and_non_finite_samples() {
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
        assert_eq!(Stats::of(&[f64::NAN, 2.0]).unwrap().n, 1);
    }

    #[test]
    fn overhead_points_the_right_way() {
        // Throughput: 90 events/s vs 100 natively is 0.9 of native, 11.1 % more time.
        let o = overhead(100.0, 90.0, true).unwrap();
        assert!((o.relative - 0.9).abs() < 1e-12);
        assert!((o.overhead_pct - 11.111_111).abs() < 1e-3);
        // Times: 2 s vs 1 s natively is half as fast, 100 % more time.
        let o = overhead(1.0, 2.0, false).unwrap();
        assert!((o.relative - 0.5).abs() < 1e-12);
        assert!((o.overhead_pct - 100.0).abs() < 1e-9);
        // Faster than native is a negative overhead.
        assert!(overhead(100.0, 110.0, true).unwrap().overhead_pct < 0.0);
        assert!(overhead(0.0, 1.0, true).is_none());
        assert!(overhead(1.0, f64::INFINITY, true).is_none());
    }
}
