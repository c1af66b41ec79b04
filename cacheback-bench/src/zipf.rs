//! A Zipf sampler over ranks `0..n`: rank `k` (0-based) is drawn with probability proportional to
//! `1 / (k + 1)^s`. Exact (inverse transform over the precomputed CDF), so the W4 key popularity
//! is the same for every cache under test and for every run with the same seed.

/// Zipf(s) over `n` ranks.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n >= 1` ranks with exponent `s > 0`.
    pub(crate) fn new(n: usize, s: f64) -> Self {
        assert!(n >= 1, "zipf needs at least one rank");
        assert!(s > 0.0 && s.is_finite(), "zipf exponent must be positive");
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        // Rounding may leave the last value a hair below 1.
        *cdf.last_mut().expect("n >= 1") = 1.0;
        Zipf { cdf }
    }

    /// Number of ranks.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Probability of rank `k` (0-based).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf[0],
            k if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// The rank for a uniform `u` in `[0, 1)`: the first rank whose CDF exceeds `u`.
    pub(crate) fn rank_for(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// Draws a rank.
    pub(crate) fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        self.rank_for(rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_and_follow_the_power_law() {
        let z = Zipf::new(10_000, 1.1);
        let sum: f64 = (0..z.len()).map(|k| z.probability(k)).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        for k in [1usize, 9, 99, 999] {
            let ratio = z.probability(k) / z.probability(0);
            let expected = ((k + 1) as f64).powf(-1.1);
            assert!((ratio - expected).abs() < 1e-9 * expected.max(1.0));
        }
        assert_eq!(z.probability(10_000), 0.0);
    }

    #[test]
    fn inverse_transform_edges() {
        let z = Zipf::new(4, 1.0);
        assert_eq!(z.rank_for(0.0), 0);
        assert_eq!(z.rank_for(0.999_999_999), 3);
        assert_eq!(z.rank_for(1.0), 3);
        // Rank 0 holds 1 / (1 + 1/2 + 1/3 + 1/4) = 0.48 of the mass.
        assert_eq!(z.rank_for(0.47), 0);
        assert_eq!(z.rank_for(0.49), 1);
        assert_eq!(Zipf::new(1, 2.0).rank_for(0.5), 0);
    }

    #[test]
    fn empirical_frequencies_match() {
        let z = Zipf::new(10_000, 1.1);
        let mut rng = fastrand::Rng::with_seed(42);
        let draws = 200_000;
        let mut counts = vec![0u32; z.len()];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!(k < z.len());
            counts[k] += 1;
        }
        for k in [0usize, 1, 10] {
            let observed = f64::from(counts[k]) / f64::from(draws);
            let expected = z.probability(k);
            // Within 5 standard deviations of a binomial proportion.
            let sd = (expected * (1.0 - expected) / f64::from(draws)).sqrt();
            assert!(
                (observed - expected).abs() < 5.0 * sd,
                "rank {k}: {observed} vs {expected}"
            );
        }
    }
}
