//! Pre-generated keys and a key chooser (uniform or zipfian), so the hot loop only indexes.

use rand::Rng;

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Zipfian with exponent θ (0 < θ; 0.99 is YCSB's default): rank r drawn with weight
    /// 1 / r^θ.
    Zipf(f64),
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(Distribution::Uniform);
        }
        let theta = s
            .strip_prefix("zipf:")
            .or_else(|| s.strip_prefix("zipfian:"))
            .map(|t| t.parse::<f64>());
        match theta {
            Some(Ok(t)) if t > 0.0 && t.is_finite() => Ok(Distribution::Zipf(t)),
            _ if s == "zipf" || s == "zipfian" => Ok(Distribution::Zipf(0.99)),
            _ => Err(format!(
                "{s:?}: key distribution is uniform, zipf (θ = 0.99) or zipf:θ"
            )),
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipf(t) => write!(f, "zipf:{t}"),
        }
    }
}

/// Draws key indexes in `0..n`.
pub struct KeyChooser {
    n: usize,
    /// Zipf only: cumulative weights, normalized to end at 1.
    cdf: Vec<f64>,
}

impl KeyChooser {
    pub fn new(n: usize, d: Distribution) -> KeyChooser {
        let cdf = match d {
            Distribution::Uniform => Vec::new(),
            Distribution::Zipf(theta) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=n)
                    .map(|r| {
                        acc += 1.0 / (r as f64).powf(theta);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                cdf
            }
        };
        KeyChooser { n: n.max(1), cdf }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        if self.cdf.is_empty() {
            return rng.gen_range(0..self.n);
        }
        let u: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < u).min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let k = KeyChooser::new(1000, Distribution::Zipf(0.99));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[k.pick(&mut rng)] += 1;
        }
        assert!(
            counts[0] > 10 * counts[500],
            "{} vs {}",
            counts[0],
            counts[500]
        );
        let u = KeyChooser::new(10, Distribution::Uniform);
        assert!((0..1000).all(|_| u.pick(&mut rng) < 10));
    }

    #[test]
    fn distributions_parse() {
        assert_eq!("uniform".parse(), Ok(Distribution::Uniform));
        assert_eq!("zipf".parse(), Ok(Distribution::Zipf(0.99)));
        assert_eq!("zipf:1.2".parse(), Ok(Distribution::Zipf(1.2)));
        assert!("zipf:-1".parse::<Distribution>().is_err());
        assert!("normal".parse::<Distribution>().is_err());
    }
}
