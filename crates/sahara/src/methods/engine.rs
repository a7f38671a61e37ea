//! The variant engine: many ablation variants of one prompt, scored at its last position.
//!
//! An ablation at layer l leaves every layer before l unchanged, so the residual stream of the
//! base model (with the `base` ablations, often none) is computed once per prompt, and each
//! variant runs only layers l..L from it, where l is the lowest layer it ablates. Variants
//! with the same start layer run as rows of one batch, and only the last position is
//! computed in the last layer and the unembedding. The naive engine runs one full forward
//! pass per variant at batch size 1, with outputs at every position, as the paper's code does;
//! both must agree.

use candle_core::{DType, IndexOp, Tensor};

use crate::device::transfers;
use crate::error::{Error, Result};
use crate::methods::metrics::{kl_rows, Kl};
use crate::model::ablation::{HeadAblation, PatchSource};
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

    /// Every row of this output at the last returned position, as f32, on the device:
    /// (B, n).
    fn last(self, out: &ForwardOutput) -> Result<Tensor> {
        let t = match self {
            Output::Logits => out.logits.as_ref(),
            Output::Hidden => out.hidden.as_ref(),
        }
        .expect("requested output");
        let n = t.dim(1)?;
        // (B, T', n) -> (B, n)
        Ok(t.i((.., n - 1))?.to_dtype(DType::F32)?)
    }
}

/// The environment variable of the simulated out-of-memory fault: with
/// `SAHARA_FAULT_OOM_ABOVE=N`, a batch of more than N rows fails as a device out of memory
/// would ([`EngineOptions::simulate_oom_above`]), so that splitting can be tested anywhere.
pub const FAULT_OOM_ABOVE: &str = "SAHARA_FAULT_OOM_ABOVE";

/// Options of [`run_variants`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Which engine computes the variants.
    pub kind: Engine,
    /// Rows per batch; `None` sizes batches to `memory_budget`.
    pub batch_size: Option<usize>,
    /// Bytes of activations one batch may use when `batch_size` is `None` (see
    /// [`crate::device::memory_budget`]).
    pub memory_budget: usize,
    /// A batch of more rows fails as out of memory (see [`FAULT_OOM_ABOVE`]).
    #[doc(hidden)]
    pub simulate_oom_above: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            kind: Engine::Fast,
            batch_size: None,
            memory_budget: 1 << 30,
            simulate_oom_above: None,
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
        + feed_forward_width(c)
        + c.num_heads * c.head_dim * 2;
    // Residual streams, projections, MLP, and f32 attention scores and probabilities; at the
    // end the f32 logits and the f64 log-probabilities of the KL scores.
    let elem = model.dtype.size_in_bytes();
    t * width * elem + 3 * c.num_heads * t * t * 4 + c.vocab_size * (4 + 3 * 8)
}

/// Activation values per token of the widest feed-forward part: a dense MLP's gate, up and
/// product (3 I); with experts, each of a token's k experts' (3 I_e) and its gathered input
/// and weighted output (2 d), the router's logits, and the shared expert's (3 I_s).
pub fn feed_forward_width(c: &crate::model::config::ModelConfig) -> usize {
    let dense = 3 * c.intermediate_size;
    match &c.moe {
        None => dense,
        Some(m) => {
            let sparse = m.top_k * (3 * m.expert_intermediate_size + 2 * c.hidden_size)
                + m.num_experts
                + m.shared_intermediate_size.map_or(0, |s| 3 * s);
            let any_dense = m.sparse_layers.iter().any(|s| !s);
            sparse.max(if any_dense { dense } else { 0 })
        }
    }
}

/// Rows per batch for a prompt of `t` tokens.
pub fn batch_rows(model: &Decoder, t: usize, opts: &EngineOptions) -> usize {
    opts.batch_size
        .unwrap_or_else(|| opts.memory_budget / bytes_per_row(model, t).max(1))
        .max(1)
}

/// Runs the base model (with `base` ablations) and every variant (with `base` plus its own
/// ablations) on one prompt, returning `output` at the last position of each: one read from
/// the device for the base and one per batch (and, in a mixture of experts, one of the
/// router's choices per layer with experts). `progress` is called with the number of
/// variants finished so far.
pub fn run_variants(
    model: &Decoder,
    tokens: &[u32],
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    output: Output,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<VariantOutputs> {
    run_variants_patched(model, tokens, None, base, variants, output, opts, progress)
}

/// [`run_variants`] with the source of the variants' head patches
/// ([`crate::model::ablation::Op::Patch`]).
#[allow(clippy::too_many_arguments)]
pub fn run_variants_patched(
    model: &Decoder,
    tokens: &[u32],
    source: Option<&PatchSource>,
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    output: Output,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<VariantOutputs> {
    let checker = Checker {
        model,
        tokens,
        base,
        variants,
    };
    let mut base_vec = Vec::new();
    let mut out = vec![Vec::new(); variants.len()];
    sweep(
        model,
        tokens,
        source,
        base,
        variants,
        output,
        opts,
        &mut |t| {
            base_vec = transfers::read_vec2::<f32>(t)?.swap_remove(0);
            checker.check(None, &base_vec)
        },
        &mut |items, t| {
            for (&k, v) in items.iter().zip(transfers::read_vec2::<f32>(t)?) {
                checker.check(Some(k), &v)?;
                out[k] = v;
            }
            Ok(())
        },
        progress,
    )?;
    Ok(VariantOutputs {
        base: base_vec,
        variants: out,
    })
}

/// The KL divergence `kl` of each variant's next-token distribution at the last position from
/// the base model's, computed on the device ([`kl_rows`]): one read of the batch's scores per
/// batch, and nothing for the base. Equal to [`Kl::divergence`] of [`run_variants`]'s logits
/// up to rounding.
pub fn run_kl(
    model: &Decoder,
    tokens: &[u32],
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    kl: Kl,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    let checker = Checker {
        model,
        tokens,
        base,
        variants,
    };
    let base_logits = std::cell::OnceCell::<Tensor>::new();
    let mut scores = vec![0f64; variants.len()];
    sweep(
        model,
        tokens,
        None,
        base,
        variants,
        Output::Logits,
        opts,
        &mut |t| {
            base_logits.get_or_init(|| t.clone());
            Ok(())
        },
        &mut |items, t| {
            let p = base_logits.get().expect("the base runs first");
            let raw: Vec<f64> = transfers::read_vec1(&kl_rows(kl, p, t)?)?;
            for (i, (&k, &v)) in items.iter().zip(&raw).enumerate() {
                if !v.is_finite() {
                    // A score from NaN or ±∞: say whose output it was, the base's first. Both
                    // reads happen only here.
                    let base_row: Vec<f32> = p.flatten_all()?.to_vec1()?;
                    checker.check(None, &base_row)?;
                    let row: Vec<f32> = t.i(i)?.to_vec1()?;
                    checker.check(Some(k), &row)?;
                    // Finite logits whose f64 KL is not: not expected; computed on the host.
                    scores[k] = kl.divergence(&base_row, &row);
                    continue;
                }
                scores[k] = kl.finish(v);
            }
            Ok(())
        },
        progress,
    )?;
    Ok(scores)
}

/// Checks outputs where they arrive on the host (see `model::finite`); the ablations of an
/// item are gathered only for an output that fails.
struct Checker<'a> {
    model: &'a Decoder,
    tokens: &'a [u32],
    base: &'a [HeadAblation],
    variants: &'a [Vec<HeadAblation>],
}

impl Checker<'_> {
    /// `variant`: `None` for the base model.
    fn check(&self, variant: Option<usize>, values: &[f32]) -> Result<()> {
        if all_finite(values) {
            return Ok(());
        }
        let ablations: Vec<HeadAblation> = match variant {
            None => self.base.to_vec(),
            Some(k) => self.base.iter().chain(&self.variants[k]).copied().collect(),
        };
        check_output(
            self.model,
            self.tokens,
            &ablations,
            values,
            || describe(&ablations),
            None,
        )
    }
}

/// `e` as the final error of a batch of one row: a device out of memory becomes
/// [`Error::OutOfMemory`] (no smaller batch is left to try); any other error is kept.
pub(crate) fn at_one_row(model: &Decoder, e: Error) -> Error {
    if !e.is_out_of_memory() {
        return e;
    }
    Error::OutOfMemory {
        device: model.placement.name(),
        rows: 1,
        message: crate::error::one_line(&e.to_string()),
    }
}

/// The simulated out-of-memory fault ([`FAULT_OOM_ABOVE`]): a batch of more than `limit`
/// rows fails as a device out of memory would.
pub(crate) fn simulated_oom(rows: usize, limit: Option<usize>) -> Result<()> {
    match limit {
        Some(n) if rows > n => Err(Error::Candle(candle_core::Error::Msg(format!(
            "simulated out of memory: a batch of {rows} rows, more than {n} ({FAULT_OOM_ABOVE})"
        )))),
        _ => Ok(()),
    }
}

/// The one schedule of both engines. `on_base` receives the base model's output at the last
/// position, `on_rows` each batch's, with the variants they belong to: (1, n) and (R, n) f32
/// tensors on the device. A batch the device has no memory for is split in halves (and
/// later batches are cut to the size that fitted), so a sweep never fails for memory while a
/// batch of one row fits.
#[allow(clippy::too_many_arguments)]
fn sweep(
    model: &Decoder,
    tokens: &[u32],
    source: Option<&PatchSource>,
    base: &[HeadAblation],
    variants: &[Vec<HeadAblation>],
    output: Output,
    opts: &EngineOptions,
    on_base: &mut dyn FnMut(&Tensor) -> Result<()>,
    on_rows: &mut dyn FnMut(&[usize], &Tensor) -> Result<()>,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    if let Some(i) = variants.iter().position(|v| v.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "variant {i} ablates nothing"
        )));
    }
    let dev = &model.device;
    let batch = Batch::new(&[tokens.to_vec()], 0, dev)?;
    let with_base = |extra: &[HeadAblation]| -> Vec<HeadAblation> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    let simulated = |rows: usize| simulated_oom(rows, opts.simulate_oom_above);
    let base_plan = model.patch_plan(&[base.to_vec()], source)?;
    match opts.kind {
        Engine::Naive => {
            let spec = output
                .forward_spec(Positions::All)
                .with_ablations(&base_plan);
            let base_out = simulated(1)
                .and_then(|()| model.forward(&batch, &spec, None))
                .map_err(|e| at_one_row(model, e))?;
            on_base(&output.last(&base_out)?)?;
            for (i, v) in variants.iter().enumerate() {
                let plan = model.patch_plan(&[with_base(v)], source)?;
                let o = model
                    .forward(
                        &batch,
                        &output.forward_spec(Positions::All).with_ablations(&plan),
                        None,
                    )
                    .map_err(|e| at_one_row(model, e))?;
                on_rows(&[i], &output.last(&o)?)?;
                progress(i + 1);
            }
            Ok(())
        }
        Engine::Fast => {
            let mut base_spec = output
                .forward_spec(Positions::Last)
                .with_ablations(&base_plan);
            base_spec.resid = true;
            let base_out = simulated(1)
                .and_then(|()| model.forward(&batch, &base_spec, None))
                .map_err(|e| at_one_row(model, e))?;
            on_base(&output.last(&base_out)?)?;
            // Variants sorted by the first layer they change, in groups of at most `rows`.
            // Each group runs as a staircase: at layer l the variants that start at l join
            // the batch from the base residual stream entering l, so later layers run on
            // ever larger batches.
            let start = |v: &Vec<HeadAblation>| v.iter().map(|a| a.layer).min().unwrap_or(0);
            let mut order: Vec<usize> = (0..variants.len()).collect();
            order.sort_by_key(|&i| (start(&variants[i]), i));
            let mut rows = batch_rows(model, tokens.len(), opts);
            let run_group = |group: &[usize]| -> Result<ForwardOutput> {
                simulated(group.len())?;
                // One plan for the group, in its order; each join runs with the plan of the
                // rows so far, a view of it.
                let sets: Vec<Vec<HeadAblation>> =
                    group.iter().map(|&k| with_base(&variants[k])).collect();
                let plan = model.patch_plan(&sets, source)?;
                let mut joins: Vec<Join> = Vec::new();
                let mut active = 0;
                for layer_group in
                    group.chunk_by(|&a, &b| start(&variants[a]) == start(&variants[b]))
                {
                    let layer = start(&variants[layer_group[0]]);
                    active += layer_group.len();
                    joins.push(Join {
                        layer,
                        resid: base_out.resid[layer].clone(),
                        rows: layer_group.len(),
                        plan: plan.prefix(active)?,
                    });
                }
                model.forward_joined(&joins, &output.forward_spec(Positions::Last))
            };
            // Groups still to run, the next one last.
            let mut todo: Vec<&[usize]> = order.chunks(rows).rev().collect();
            let mut done = 0;
            while let Some(group) = todo.pop() {
                if group.len() > rows {
                    let (a, b) = group.split_at(rows);
                    todo.push(b);
                    todo.push(a);
                    continue;
                }
                match run_group(group) {
                    Ok(o) => {
                        on_rows(group, &output.last(&o)?)?;
                        done += group.len();
                        progress(done);
                    }
                    Err(e) if e.is_out_of_memory() => {
                        if group.len() == 1 {
                            return Err(at_one_row(model, e));
                        }
                        rows = group.len() / 2;
                        todo.push(group);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}
