//! Summary statistics of a sample.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    /// Sample standard deviation (n − 1); 0 for a single value.
    pub stdev: f64,
    /// Coefficient of variation, stdev / mean.
    pub cov: f64,
    /// 99th percentile, linear interpolation between closest ranks.
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample or one holding a non-finite value.
    pub fn of(xs: &[f64]) -> Option<Summary> {
        if xs.is_empty() || xs.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let stdev = var.sqrt();
        Some(Summary {
            n,
            mean,
            median: quantile_sorted(&v, 0.5),
            stdev,
            cov: if mean != 0.0 { stdev / mean.abs() } else { 0.0 },
            p99: quantile_sorted(&v, 0.99),
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Quantile `q` of sorted data: position q·(n−1), interpolated between its neighbours.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn fixed_sample() {
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.n, 8);
        assert!(close(s.mean, 5.0));
        assert!(close(s.median, 4.5));
        // sum of squared deviations 32, n-1 = 7
        assert!(close(s.stdev, (32.0f64 / 7.0).sqrt()));
        assert!(close(s.cov, (32.0f64 / 7.0).sqrt() / 5.0));
        // position 0.99 * 7 = 6.93 between 7 and 9
        assert!(close(s.p99, 7.0 + 2.0 * 0.93));
        assert_eq!((s.min, s.max), (2.0, 9.0));
    }

    #[test]
    fn p99_of_hundred_and_one_values_is_the_99th() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert!(close(Summary::of(&v).unwrap().p99, 99.0));
        assert!(close(Summary::of(&v).unwrap().median, 50.0));
    }

    #[test]
    fn degenerate_samples() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        let one = Summary::of(&[3.0]).unwrap();
        assert_eq!(
            (one.stdev, one.cov, one.p99, one.median),
            (0.0, 0.0, 3.0, 3.0)
        );
    }
}
