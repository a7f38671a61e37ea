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

/// Which KL divergence Ships reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kl {
    /// `KL(p ‖ q)` from log-softmax in f64 ([`kl_divergence`]).
    Exact,
    /// As the paper's code computes it ([`kl_paper`]).
    Paper,
}

impl Kl {
    pub fn as_str(self) -> &'static str {
        match self {
            Kl::Exact => "exact",
            Kl::Paper => "paper",
        }
    }

    /// A finite score of [`kl_rows`] as [`Kl::divergence`] reports it: the exact KL is
    /// clamped at 0 (rounding can leave it at -1e-17). Clamping is left to the host because a
    /// clamp on the device would turn a NaN into 0.
    pub fn finish(self, raw: f64) -> f64 {
        match self {
            Kl::Exact => raw.max(0.0),
            Kl::Paper => raw,
        }
    }

    /// The divergence of the distribution of `q_logits` from that of `p_logits`.
    pub fn divergence(self, p_logits: &[f32], q_logits: &[f32]) -> f64 {
        match self {
            Kl::Exact => kl_divergence(p_logits, q_logits),
            Kl::Paper => kl_paper(p_logits, q_logits),
        }
    }
}

impl std::str::FromStr for Kl {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "exact" => Ok(Kl::Exact),
            "paper" => Ok(Kl::Paper),
            other => Err(crate::error::Error::bad_value(
                crate::error::Setting::Kl,
                format!("{other:?}"),
                "expected exact or paper",
            )),
        }
    }
}

/// Ships' KL as the paper's code computes it: float32 softmax probabilities p and q, then
/// `sum((p + 1e-12) · ln((p + 1e-12) / (q + 1e-12)))`. Where an ablation drives q far below
/// 1e-12 on tokens p cares about, the 1e-12 caps their ratio and this is smaller than the
/// exact KL; elsewhere they agree to about 1e-10.
pub fn kl_paper(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let softmax = |x: &[f32]| -> Vec<f32> {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let e: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.iter().map(|&v| v / sum).collect()
    };
    const EPS: f32 = 1e-12;
    softmax(p_logits)
        .iter()
        .zip(&softmax(q_logits))
        .map(|(&p, &q)| ((p + EPS) * ((p + EPS) / (q + EPS)).ln()) as f64)
        .sum()
}

/// [`Kl::divergence`] of every row of `q` from `p`, computed where the logits are (on the
/// GPU, on the device), so that only the scores travel to the host. `p`: (1, V) or (V,)
/// f32 logits; `q`: (R, V) f32; returns (R,) f64. [`Kl::Exact`] works in f64 as
/// [`kl_divergence`] does, [`Kl::Paper`] in f32 with an f64 sum as [`kl_paper`]; they agree
/// with the host functions to rounding (the sums run in another order). A row holding NaN
/// or ±∞ scores NaN or ±∞; a finite score is passed through [`Kl::finish`] on the host.
pub fn kl_rows(
    kind: Kl,
    p: &candle_core::Tensor,
    q: &candle_core::Tensor,
) -> crate::error::Result<candle_core::Tensor> {
    use candle_core::{DType, D};
    let v = q.dim(D::Minus1)?;
    let p = p.reshape((1, v))?;
    Ok(match kind {
        Kl::Exact => {
            // Row-wise log-softmax in f64: (x - max) - ln Σ exp(x - max).
            let log_softmax =
                |x: &candle_core::Tensor| -> candle_core::Result<candle_core::Tensor> {
                    let x = x.to_dtype(DType::F64)?;
                    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
                    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
                    shifted.broadcast_sub(&lse)
                };
            let lp = log_softmax(&p)?;
            let lq = log_softmax(q)?;
            // Σ p (ln p - ln q), before [`Kl::finish`]'s clamp.
            lq.broadcast_sub(&lp)?
                .neg()?
                .broadcast_mul(&lp.exp()?)?
                .sum(D::Minus1)?
        }
        Kl::Paper => {
            const EPS: f64 = 1e-12;
            let softmax = |x: &candle_core::Tensor| -> candle_core::Result<candle_core::Tensor> {
                let x = x.to_dtype(DType::F32)?;
                let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
                e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
            };
            let pe = (softmax(&p)? + EPS)?;
            let qe = (softmax(q)? + EPS)?;
            let terms = pe.broadcast_div(&qe)?.log()?.broadcast_mul(&pe)?;
            terms.to_dtype(DType::F64)?.sum(D::Minus1)?
        }
    })
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

    #[test]
    fn kl_rows_on_the_device_agree_with_the_host_functions() {
        use candle_core::{Device, Tensor};
        let p = [0.3f32, -1.0, 2.0, 0.0, 5.0];
        let qs = [
            [0.3f32, -1.0, 2.0, 0.0, 5.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [-40.0, 3.0, 2.5, 60.0, -7.0],
        ];
        let pt = Tensor::new(&p, &Device::Cpu).unwrap();
        let qt = Tensor::new(&qs, &Device::Cpu).unwrap();
        for kind in [Kl::Exact, Kl::Paper] {
            let got: Vec<f64> = kl_rows(kind, &pt, &qt).unwrap().to_vec1().unwrap();
            for (q, g) in qs.iter().zip(&got) {
                let want = kind.divergence(&p, q);
                assert!(
                    (kind.finish(*g) - want).abs() <= 1e-7 * (1.0 + want),
                    "{kind:?}: {g} vs {want}"
                );
            }
        }
        // A row with NaN or an infinity scores non-finite: nothing hides it.
        let bad = Tensor::new(
            &[
                [0.0f32, f32::NAN, 1.0, 2.0, 3.0],
                [0.0, f32::INFINITY, 1.0, 2.0, 3.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        for kind in [Kl::Exact, Kl::Paper] {
            let got: Vec<f64> = kl_rows(kind, &pt, &bad).unwrap().to_vec1().unwrap();
            assert!(got.iter().all(|g| !g.is_finite()), "{kind:?}: {got:?}");
        }
    }

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
    fn the_paper_kl_reproduces_the_papers_code_where_it_differs_from_the_exact_one() {
        // fixtures/paper_kl/case.json: computed with torch in float32 by
        // `python3 scripts/make_fixtures.py paper_kl`.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/paper_kl/case.json");
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let logits = |k: &str| -> Vec<f32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        let (p, q) = (logits("base_logits"), logits("ablated_logits"));
        let paper = case["paper_kl"].as_f64().unwrap();
        let exact = case["exact_kl"].as_f64().unwrap();
        let got = Kl::Paper.divergence(&p, &q);
        assert!(
            (got - paper).abs() <= 1e-5 * paper,
            "{got} vs torch {paper}"
        );
        let got = Kl::Exact.divergence(&p, &q);
        assert!((got - exact).abs() <= 1e-6 * exact, "{got} vs {exact}");
        assert!(exact > 2.0 * paper, "the case does not separate them");
        // Where no probability is tiny, they agree.
        let (a, b) = ([0.1f32, 0.5, -0.3], [0.2f32, 0.4, -0.1]);
        assert!((kl_paper(&a, &b) - kl_divergence(&a, &b)).abs() < 1e-6);
        assert!("nope".parse::<Kl>().is_err());
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let l = log_softmax(&[1000.0, 1000.0]);
        assert!((l[0] - 0.5f64.ln()).abs() < 1e-12);
    }
}
