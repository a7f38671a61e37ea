//! The numbers every method reports: KL divergence between next-token distributions and
//! Wilson intervals of proportions.

/// KL(p ‖ q) in nats between the softmax distributions of two logit vectors, computed from
/// log-softmax with f64 accumulation.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter()
        .zip(&lq)
        .map(|(&a, &b)| {
            if a == f64::NEG_INFINITY {
                0.0
            } else {
                a.exp() * (a - b)
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Log-softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// z of a two-sided 95% normal interval.
pub const Z95: f64 = 1.959963984540054;

/// The 95% Wilson score interval of a proportion of `k` successes in `n` trials. With
/// `n = 0` nothing is known and the interval is (0, 1).
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, nf) = (k.min(n) as f64, n as f64);
    let p = k / nf;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let lo = if k == 0.0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if k == nf {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 5e-5 && (a.1 - b.1).abs() < 5e-5
    }

    #[test]
    fn wilson_matches_hand_computed_values() {
        assert_eq!(wilson(0, 10).0, 0.0);
        assert!(close(wilson(0, 10), (0.0, 0.2775)), "{:?}", wilson(0, 10));
        assert!(
            close(wilson(5, 10), (0.2366, 0.7634)),
            "{:?}",
            wilson(5, 10)
        );
        assert!(close(wilson(10, 10), (0.7225, 1.0)), "{:?}", wilson(10, 10));
        assert_eq!(wilson(10, 10).1, 1.0);
        // 1 of 4: center (0.25 + 0.4802) / 1.9604 = 0.3725, half 0.3166.
        assert!(close(wilson(1, 4), (0.0456, 0.6994)), "{:?}", wilson(1, 4));
        // 64 of 100 (the paper's Llama-2 one-head ASR): (0.5424, 0.7273).
        assert!(
            close(wilson(64, 100), (0.5424, 0.7273)),
            "{:?}",
            wilson(64, 100)
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        // Symmetric.
        let (a, b) = wilson(3, 17);
        let (c, d) = wilson(14, 17);
        assert!((a - (1.0 - d)).abs() < 1e-12 && (b - (1.0 - c)).abs() < 1e-12);
    }

    #[test]
    fn kl_of_identical_distributions_is_zero() {
        let p = [1.0f32, 2.0, 3.0];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // Shifting logits does not change the distribution.
        let q = [11.0f32, 12.0, 13.0];
        assert!(kl_divergence(&p, &q) < 1e-12);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        // p = (0.5, 0.5), q = (0.25, 0.75) as logits ln(p), ln(q).
        let p = [0.5f32.ln(), 0.5f32.ln()];
        let q = [0.25f32.ln(), 0.75f32.ln()];
        let expected = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl_divergence(&p, &q) - expected).abs() < 1e-7);
        // Asymmetric.
        assert!((kl_divergence(&q, &p) - expected).abs() > 1e-3);
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let l = log_softmax(&[1000.0, 1000.0]);
        assert!((l[0] - 0.5f64.ln()).abs() < 1e-12);
    }
}
