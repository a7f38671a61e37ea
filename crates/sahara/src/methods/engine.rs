//! The variant engine: many ablation variants of one prompt, scored at its last position.
//!
//! An ablation at layer l leaves every layer before l unchanged, so the residual stream of the
//! base model (with the `base` ablations, often none) is computed once per prompt, and each
//! variant runs only layers l..L from it, where l is the lowest layer it ablates. Variants
//! with the same start layer run as rows of one batch, and only the last position is
//! computed in the last layer and the unembedding. The naive engine runs one full forward
//! pass per variant at batch size 1, with outputs at every position, as the paper's code does;
//! both must agree.

use candle_core::{DType, IndexOp};

use crate::error::{Error, Result};
use crate::model::ablation::{AblationPlan, HeadAblation};
use crate::model::finite::{all_finite, check_output, describe};
use crate::model::{Batch, Decoder, ForwardOutput, ForwardSpec, Join, Positions};

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

/// What each variant returns, at the last prompt position: one output of the forward
/// pass, chosen as [`ForwardSpec`] chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Next-token logits (V values, f32): `ForwardSpec::logits`.
    Logits,
    /// Final hidden state after the final norm (d values): `ForwardSpec::hidden`.
    Hidden,
}

impl Output {
    /// The forward pass that computes this output at `positions`.
    fn forward_spec<'a>(self, positions: Positions) -> ForwardSpec<'a> {
        let mut s = ForwardSpec::logits(positions);
        s.logits = self == Output::Logits;
        s.hidden = self == Output::Hidden;
        s
    }

    /// Every row of this output at the last returned position, as f32, in one transfer.
    fn last_rows(self, out: &ForwardOutput) -> Result<Vec<Vec<f32>>> {
        let t = match self {
            Output::Logits => out.logits.as_ref(),
            Output::Hidden => out.hidden.as_ref(),
        }
        .expect("requested output");
        let n = t.dim(1)?;
        // (B, T', n) -> (B, n)
        Ok(t.i((.., n - 1))?.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// Row 0 of this output at the last returned position.
    fn last(self, out: &ForwardOutput) -> Result<Vec<f32>> {
        Ok(self.last_rows(out)?.swap_remove(0))
    }
}

/// Options of [`run_variants`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Which engine computes the variants.
    pub kind: Engine,
    /// Rows per batch; `None` sizes batches to `memory_budget`.
    pub batch_size: Option<usize>,
    /// Bytes of activations one batch may use when `batch_size` is `None`.
    pub memory_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            kind: Engine::Fast,
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

/// Runs the base model (with `base` ablations) and every variant (with `base` plus its own
/// ablations) on one prompt, returning `output` at the last position of each. `progress` is
/// called with the number of variants finished so far.
pub fn run_variants(
    model: &Decoder,
    tokens: &[u32],
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    output: Output,
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
    // Every output is checked where it arrives on the host (see `model::finite`); the
    // ablations of the item are gathered only for an output that fails.
    let check = |ablations: &dyn Fn() -> Vec<HeadAblation>, values: &[f32]| {
        if all_finite(values) {
            return Ok(());
        }
        let ablations = ablations();
        check_output(
            model,
            tokens,
            &ablations,
            values,
            || describe(&ablations),
            None,
        )
    };
    let mut out = vec![Vec::new(); variants.len()];
    match opts.kind {
        Engine::Naive => {
            let base_out = model.forward(
                &batch,
                &output
                    .forward_spec(Positions::All)
                    .with_ablations(&base_plan),
                None,
            )?;
            let base_vec = output.last(&base_out)?;
            check(&|| base.to_vec(), &base_vec)?;
            for (i, v) in variants.iter().enumerate() {
                let plan = AblationPlan::new(cfg, &[with_base(v)], model.dtype, dev)?;
                let o = model.forward(
                    &batch,
                    &output.forward_spec(Positions::All).with_ablations(&plan),
                    None,
                )?;
                out[i] = output.last(&o)?;
                check(&|| with_base(v), &out[i])?;
                progress(i + 1);
            }
            Ok(VariantOutputs {
                base: base_vec,
                variants: out,
            })
        }
        Engine::Fast => {
            let mut base_spec = output
                .forward_spec(Positions::Last)
                .with_ablations(&base_plan);
            base_spec.resid = true;
            let base_out = model.forward(&batch, &base_spec, None)?;
            let base_vec = output.last(&base_out)?;
            check(&|| base.to_vec(), &base_vec)?;
            // Variants sorted by the first layer they change, in groups of at most `rows`.
            // Each group runs as a staircase: at layer l the variants that start at l join
            // the batch from the base residual stream entering l, so later layers run on
            // ever larger batches.
            let start = |v: &Vec<HeadAblation>| v.iter().map(|a| a.layer).min().unwrap_or(0);
            let mut order: Vec<usize> = (0..variants.len()).collect();
            order.sort_by_key(|&i| (start(&variants[i]), i));
            let rows = batch_rows(model, tokens.len(), opts);
            let mut done = 0;
            for group in order.chunks(rows) {
                let mut joins: Vec<Join> = Vec::new();
                let mut active: Vec<usize> = Vec::new();
                for layer_group in
                    group.chunk_by(|&a, &b| start(&variants[a]) == start(&variants[b]))
                {
                    let layer = start(&variants[layer_group[0]]);
                    active.extend_from_slice(layer_group);
                    let sets: Vec<Vec<HeadAblation>> =
                        active.iter().map(|&k| with_base(&variants[k])).collect();
                    joins.push(Join {
                        layer,
                        resid: base_out.resid[layer].clone(),
                        rows: layer_group.len(),
                        plan: AblationPlan::new(cfg, &sets, model.dtype, dev)?,
                    });
                }
                let o = model.forward_joined(&joins, &output.forward_spec(Positions::Last))?;
                for (&k, v) in active.iter().zip(output.last_rows(&o)?) {
                    check(&|| with_base(&variants[k]), &v)?;
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
