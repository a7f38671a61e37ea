//! The variant engine: many ablation variants of one prompt, scored at its last position.
//!
//! An ablation at layer l leaves every layer before l unchanged, so the residual stream of the
//! base model (with the `base` ablations, often none) is computed once per prompt, and each
//! variant runs only layers l..L from it, where l is the lowest layer it ablates. Variants
//! with the same start layer run as rows of one batch, and only the last position is
//! computed in the last layer and the unembedding. The naive engine runs one full forward
//! pass per variant at batch size 1, with outputs at every position, as the paper's code does;
//! both must agree.

use candle_core::{IndexOp, Tensor};

use crate::error::{Error, Result};
use crate::model::ablation::{AblationPlan, HeadAblation};
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// Which engine computes the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Fast,
    Naive,
}

impl std::str::FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(Engine::Fast),
            "naive" => Ok(Engine::Naive),
            other => Err(Error::InvalidArgument(format!(
                "unknown engine {other:?}; expected fast or naive"
            ))),
        }
    }
}

/// What each variant returns, at the last prompt position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Next-token logits (V values, f32).
    Logits,
    /// Final hidden state after the final norm (d values).
    Hidden,
}

/// Options of [`run_variants`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub engine: Engine,
    pub want: Want,
    /// Rows per batch; `None` sizes batches to `memory_budget`.
    pub batch_size: Option<usize>,
    /// Bytes of activations one batch may use when `batch_size` is `None`.
    pub memory_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            engine: Engine::Fast,
            want: Want::Logits,
            batch_size: None,
            memory_budget: 1 << 30,
        }
    }
}

/// Outputs of [`run_variants`]: the base model's vector and one per variant.
#[derive(Debug, Clone)]
pub struct VariantOutputs {
    pub base: Vec<f32>,
    pub variants: Vec<Vec<f32>>,
}

/// Estimated activation bytes of one batch row for a prompt of `t` tokens.
pub fn bytes_per_row(model: &Decoder, t: usize) -> usize {
    let c = &model.cfg;
    let width = c.hidden_size * 4
        + 2 * c.num_kv_heads * c.head_dim
        + 3 * c.intermediate_size
        + c.num_heads * c.head_dim * 2;
    // Residual streams, projections, MLP, and f32 attention scores and probabilities.
    let elem = model.dtype.size_in_bytes();
    t * width * elem + 3 * c.num_heads * t * t * 4 + c.vocab_size * 4
}

/// Rows per batch for a prompt of `t` tokens.
pub fn batch_rows(model: &Decoder, t: usize, opts: &EngineOptions) -> usize {
    opts.batch_size
        .unwrap_or_else(|| opts.memory_budget / bytes_per_row(model, t).max(1))
        .max(1)
}

fn last_vector(out: &crate::model::ForwardOutput, want: Want, row: usize) -> Result<Vec<f32>> {
    let t = match want {
        Want::Logits => out.logits.as_ref(),
        Want::Hidden => out.hidden.as_ref(),
    }
    .expect("requested output");
    let n = t.dim(1)?;
    Ok(t.i((row, n - 1))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}

fn spec<'a>(want: Want, positions: Positions, plan: &'a AblationPlan) -> ForwardSpec<'a> {
    let mut s = ForwardSpec::logits(positions).with_ablations(plan);
    s.logits = want == Want::Logits;
    s.hidden = want == Want::Hidden;
    s
}

/// Runs the base model (with `base` ablations) and every variant (with `base` plus its own
/// ablations) on one prompt, returning the last-position vector of each. `progress` is
/// called with the number of variants finished so far.
pub fn run_variants(
    model: &Decoder,
    tokens: &[u32],
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    opts: &EngineOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<VariantOutputs> {
    if let Some(i) = variants.iter().position(|v| v.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "variant {i} ablates nothing"
        )));
    }
    let dev = &model.device;
    let cfg = &model.cfg;
    let batch = Batch::new(&[tokens.to_vec()], 0, dev)?;
    let with_base = |extra: &[HeadAblation]| -> Vec<HeadAblation> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    let base_plan = AblationPlan::new(cfg, &[base.to_vec()], model.dtype, dev)?;
    let mut out = vec![Vec::new(); variants.len()];
    match opts.engine {
        Engine::Naive => {
            let s = spec(opts.want, Positions::All, &base_plan);
            let base_out = model.forward(&batch, &s, None)?;
            let base_vec = last_vector(&base_out, opts.want, 0)?;
            for (i, v) in variants.iter().enumerate() {
                let plan = AblationPlan::new(cfg, &[with_base(v)], model.dtype, dev)?;
                let o = model.forward(&batch, &spec(opts.want, Positions::All, &plan), None)?;
                out[i] = last_vector(&o, opts.want, 0)?;
                progress(i + 1);
            }
            Ok(VariantOutputs {
                base: base_vec,
                variants: out,
            })
        }
        Engine::Fast => {
            let mut s = spec(opts.want, Positions::Last, &base_plan);
            s.resid = true;
            let base_out = model.forward(&batch, &s, None)?;
            let base_vec = last_vector(&base_out, opts.want, 0)?;
            // Variants sorted by the first layer they change, in groups of at most `rows`.
            // Each group runs as a staircase: at layer l the variants that start at l join
            // the batch from the base residual stream entering l, so later layers run on
            // ever larger batches.
            let start = |v: &Vec<HeadAblation>| v.iter().map(|a| a.layer).min().unwrap_or(0);
            let mut order: Vec<usize> = (0..variants.len()).collect();
            order.sort_by_key(|&i| (start(&variants[i]), i));
            let rows = batch_rows(model, tokens.len(), opts);
            let last = cfg.num_layers - 1;
            let mut done = 0;
            for group in order.chunks(rows) {
                let mut x: Option<Tensor> = None;
                let mut active: Vec<usize> = Vec::new();
                let mut plan: Option<AblationPlan> = None;
                let mut next = 0;
                for l in start(&variants[group[0]])..cfg.num_layers {
                    let joining = group[next..]
                        .iter()
                        .take_while(|&&k| start(&variants[k]) == l)
                        .count();
                    if joining > 0 {
                        // (1, T, d) -> (joining, T, d)
                        let resid = &base_out.resid[l];
                        let (_, t, d) = resid.dims3()?;
                        let fresh = resid.broadcast_as((joining, t, d))?.contiguous()?;
                        x = Some(match x {
                            Some(prev) => Tensor::cat(&[&prev, &fresh], 0)?,
                            None => fresh,
                        });
                        active.extend_from_slice(&group[next..next + joining]);
                        next += joining;
                        let sets: Vec<Vec<HeadAblation>> =
                            active.iter().map(|&k| with_base(&variants[k])).collect();
                        plan = Some(AblationPlan::new(cfg, &sets, model.dtype, dev)?);
                    }
                    let xs = x.as_ref().expect("the first layer of a group has rows");
                    x = Some(model.layer_forward(l, xs, plan.as_ref(), l == last)?);
                }
                let x = x.expect("a group has rows");
                let (logits, hidden) = model.head(
                    &x,
                    Positions::Last,
                    opts.want == Want::Logits,
                    opts.want == Want::Hidden,
                )?;
                let vecs = match opts.want {
                    Want::Logits => logits.expect("logits"),
                    Want::Hidden => hidden.expect("hidden"),
                };
                // (B, 1, n) -> B vectors
                let vecs: Vec<Vec<f32>> = vecs
                    .i((.., 0, ..))?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec2()?;
                for (&k, v) in active.iter().zip(vecs) {
                    out[k] = v;
                }
                done += group.len();
                progress(done);
            }
            Ok(VariantOutputs {
                base: base_vec,
                variants: out,
            })
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
