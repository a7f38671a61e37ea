//! The hooked decoder: one implementation of the Llama-style decoder-only transformer, driven
//! by the flags of a resolved [`ModelConfig`], with per-row head ablations, left-padded
//! batches, a key/value cache, and the ability to start from the residual stream at any
//! layer and to compute only the last position.
//!
//! Shapes use B = batch rows, T = query positions of this call, S = key positions (cache plus
//! new), H = query heads, G = key/value heads, D = head dimension, d = hidden size,
//! V = vocabulary.

use std::path::Path;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::safetensors::{TensorSource, Weights};
use crate::device::transfers;
use crate::error::{Error, Result};
use crate::model::ablation::{
    AblationPlan, HeadAblation, HeadMix, Patch, PatchSource, SinkPolicy, Target,
};
use crate::model::config::{inverse_frequencies, ModelConfig};
use crate::model::ops::{self, contiguous};

/// A projection's weight W, of shape (out, in).
#[derive(Debug, Clone)]
pub enum Weight {
    /// Values in the model dtype. May be a transposed view of an (in, out) row-major tensor
    /// (see [`Linear::with_transposed_storage`]): every operation sees the same (out, in)
    /// values.
    Dense(Tensor),
    /// Kept in a GGUF block format (Q4_K, Q8_0, …) and multiplied by candle's quantized
    /// matrix product, which takes float32 inputs: stacked projections whose formats differ
    /// are parts, in order along the output, each multiplied alone.
    Quantized(Vec<QMatMul>),
}

impl Weight {
    /// Output features (rows of W).
    pub fn out_dim(&self) -> Result<usize> {
        match self {
            Weight::Dense(w) => Ok(w.dim(0)?),
            Weight::Quantized(parts) => parts.iter().map(qmatmul_rows).sum(),
        }
    }

    /// The dense values, `None` for a quantized weight.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(_) => None,
        }
    }

    /// The dense values, mutable (tests that break a weight on purpose).
    pub fn dense_mut(&mut self) -> Option<&mut Tensor> {
        match self {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(_) => None,
        }
    }
}

/// Rows (output features) of one quantized part.
fn qmatmul_rows(q: &QMatMul) -> Result<usize> {
    Ok(match q {
        QMatMul::QTensor(t) => t.shape().dims()[0],
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dim(0)?,
    })
}

/// A linear layer `y = x Wᵀ + b` with W of shape (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer with dense weights.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// x: (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().expect("non-scalar input");
        let n: usize = dims[..dims.len() - 1].iter().product();
        let out = self.weight.out_dim()?;
        // One 2-D gemm over all rows: (n, in) @ (in, out).
        let x2 = contiguous(x)?.reshape((n, k))?;
        let y = match &self.weight {
            Weight::Dense(w) => {
                match crate::model::kernels::linear_f32(&x2, w, self.bias.as_ref())? {
                    Some(y) => y,
                    None => {
                        let y = x2.matmul(&w.t()?)?;
                        match &self.bias {
                            Some(b) => y.broadcast_add(b)?,
                            None => y,
                        }
                    }
                }
            }
            Weight::Quantized(parts) => {
                // (n, in) f32 @ each part -> (n, out_i), concatenated along the output.
                let xf = x2.to_dtype(DType::F32)?;
                let ys: Vec<Tensor> = parts
                    .iter()
                    .map(|q| xf.apply(q))
                    .collect::<candle_core::Result<_>>()?;
                let y = if ys.len() == 1 {
                    ys.into_iter().next().expect("one part")
                } else {
                    Tensor::cat(&ys, 1)?
                };
                let y = y.to_dtype(x.dtype())?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        let mut shape = dims;
        *shape.last_mut().unwrap() = out;
        Ok(y.reshape(shape)?)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked into one projection: (H*D + 2*G*D, d).
    pub qkv_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    /// `gate_proj` and `up_proj` stacked into one projection: (2*I, d).
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// The gated MLP of x (…, d) -> (…, d).
    pub fn forward(
        &self,
        x: &Tensor,
        activation: crate::model::config::Activation,
    ) -> Result<Tensor> {
        // (…, 2I) -> (…, I)
        let gate_up = self.gate_up_proj.forward(x)?;
        let i = gate_up.dim(D::Minus1)? / 2;
        let act_up = ops::gated_activation(&gate_up, i, activation)?;
        self.down_proj.forward(&act_up)
    }
}

/// A mixture of experts in place of a layer's MLP: a router picks each token's top-k experts
/// ([`route`]), and only those experts run on it.
#[derive(Debug, Clone)]
pub struct Experts {
    /// The router's logits: (E, d).
    pub router: Linear,
    pub experts: Vec<Mlp>,
    /// Qwen2-MoE's shared expert and its gate (1, d), added to every token as
    /// `sigmoid(gate · x) · shared(x)`.
    pub shared: Option<(Mlp, Linear)>,
    pub top_k: usize,
    pub routing: Routing,
    /// The routing weights multiply in f32 (Mixtral); otherwise they are rounded to the
    /// model dtype first, as transformers casts them.
    pub weights_in_f32: bool,
}

/// A layer's feed-forward part.
#[derive(Debug, Clone)]
pub enum FeedForward {
    Mlp(Mlp),
    Experts(Box<Experts>),
}

impl FeedForward {
    /// Every projection of it, the router included.
    pub fn projections(&self) -> Vec<&Linear> {
        match self {
            FeedForward::Mlp(m) => vec![&m.gate_up_proj, &m.down_proj],
            FeedForward::Experts(e) => {
                let mut v = vec![&e.router];
                for m in e.experts.iter().chain(e.shared.as_ref().map(|(m, _)| m)) {
                    v.extend([&m.gate_up_proj, &m.down_proj]);
                }
                v.extend(e.shared.as_ref().map(|(_, g)| g));
                v
            }
        }
    }

    /// [`FeedForward::projections`], to change them.
    pub fn projections_mut(&mut self) -> Vec<&mut Linear> {
        self.projections_filtered_mut(true)
    }

    /// The MLP projections without the router and the shared expert's gate: what may be
    /// quantized (a router's choice is discrete, and quantization noise would flip it).
    pub fn mlp_projections_mut(&mut self) -> Vec<&mut Linear> {
        self.projections_filtered_mut(false)
    }

    fn projections_filtered_mut(&mut self, gates: bool) -> Vec<&mut Linear> {
        match self {
            FeedForward::Mlp(m) => vec![&mut m.gate_up_proj, &mut m.down_proj],
            FeedForward::Experts(e) => {
                let e = &mut **e;
                let mut v = Vec::new();
                if gates {
                    v.push(&mut e.router);
                }
                for m in e.experts.iter_mut() {
                    v.extend([&mut m.gate_up_proj, &mut m.down_proj]);
                }
                if let Some((m, g)) = &mut e.shared {
                    v.extend([&mut m.gate_up_proj, &mut m.down_proj]);
                    if gates {
                        v.push(g);
                    }
                }
                v
            }
        }
    }

    /// x (…, d) -> (…, d).
    pub fn forward(
        &self,
        x: &Tensor,
        activation: crate::model::config::Activation,
    ) -> Result<Tensor> {
        match self {
            FeedForward::Mlp(m) => m.forward(x, activation),
            FeedForward::Experts(e) => e.forward(x, activation),
        }
    }
}

/// How a router's logits become each token's experts and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The softmax over all experts, its top k, divided by their sum with `renormalize`
    /// (Mixtral, Qwen MoE, OLMoE).
    SoftmaxThenTopK { renormalize: bool },
    /// The top k logits, softmaxed among themselves (GPT-OSS).
    TopKThenSoftmax,
}

/// The experts each token goes to and their weights, from router logits (N, E) row-major, in
/// f32; the top k are the larger first, the lower index first among equal ones. Returns, per
/// expert, its (token, weight) pairs in token order.
pub fn route(
    logits: &[f32],
    experts: usize,
    top_k: usize,
    routing: Routing,
) -> Vec<Vec<(u32, f32)>> {
    let softmax = |values: &[f32]| -> Vec<f32> {
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = values.iter().map(|&l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.iter().map(|e| e / sum).collect()
    };
    let mut per_expert: Vec<Vec<(u32, f32)>> = vec![Vec::new(); experts];
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for (token, row) in logits.chunks_exact(experts).enumerate() {
        // What the top k is taken of: the probabilities, or the logits themselves.
        let ranked = match routing {
            Routing::SoftmaxThenTopK { .. } => softmax(row),
            Routing::TopKThenSoftmax => row.to_vec(),
        };
        order.clear();
        order.extend(0..experts);
        order.sort_by(|&a, &b| ranked[b].total_cmp(&ranked[a]).then(a.cmp(&b)));
        let chosen = &order[..top_k];
        let weights: Vec<f32> = match routing {
            Routing::SoftmaxThenTopK { renormalize } => {
                let total: f32 = chosen.iter().map(|&e| ranked[e]).sum();
                chosen
                    .iter()
                    .map(|&e| {
                        if renormalize {
                            ranked[e] / total
                        } else {
                            ranked[e]
                        }
                    })
                    .collect()
            }
            Routing::TopKThenSoftmax => {
                softmax(&chosen.iter().map(|&e| ranked[e]).collect::<Vec<_>>())
            }
        };
        for (&e, w) in chosen.iter().zip(weights) {
            per_expert[e].push((token as u32, w));
        }
    }
    per_expert
}

impl Experts {
    /// x (…, d) -> (…, d): each token through its top-k experts only (the rows routed to an
    /// expert gathered and run), each output times its weight in f32 and a token's k outputs
    /// summed in f32 (in expert order), rounded to the model dtype once, as transformers'
    /// default grouped experts do; then the shared expert. One read of the router's logits
    /// and one upload of the routes per layer.
    pub fn forward(
        &self,
        x: &Tensor,
        activation: crate::model::config::Activation,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d = *dims.last().expect("a hidden axis");
        let n = x.elem_count() / d;
        let dtype = x.dtype();
        // (N, d)
        let flat = x.reshape((n, d))?;
        let routes = self.routes(&flat)?;
        // Every (token, weight) pair, grouped by expert: (N·k,) each.
        let tokens: Vec<u32> = routes.iter().flatten().map(|r| r.0).collect();
        let weights: Vec<f32> = routes.iter().flatten().map(|r| r.1).collect();
        let pairs = tokens.len();
        let tokens = transfers::upload(tokens, pairs, x.device())?;
        // (N·k, 1) in f32, rounded through the model dtype where transformers casts it.
        let mut weights = transfers::upload(weights, (pairs, 1), x.device())?;
        if !self.weights_in_f32 {
            weights = weights.to_dtype(dtype)?.to_dtype(DType::F32)?;
        }
        let mut outputs = Vec::with_capacity(self.experts.len());
        let mut at = 0;
        for (expert, rows) in self.experts.iter().zip(&routes) {
            if rows.is_empty() {
                continue;
            }
            let k = rows.len();
            // (k, d): the expert on its rows, weighted in f32
            let these = tokens.narrow(0, at, k)?;
            let y = expert.forward(&flat.index_select(&these, 0)?, activation)?;
            outputs.push(
                y.to_dtype(DType::F32)?
                    .broadcast_mul(&weights.narrow(0, at, k)?)?,
            );
            at += k;
        }
        // (N·k, d) added into (N, d) in f32, once.
        let out = Tensor::zeros((n, d), DType::F32, x.device())?
            .index_add(&tokens, &Tensor::cat(&outputs, 0)?, 0)?
            .to_dtype(dtype)?;
        Ok(self.add_shared(out, &flat, activation)?.reshape(dims)?)
    }

    /// Each expert's (token, weight) pairs of the rows of `flat` (N, d): the router's logits
    /// (N, E) read to the host in f32 once (routing is a per-token choice), then [`route`].
    fn routes(&self, flat: &Tensor) -> Result<Vec<Vec<(u32, f32)>>> {
        let logits = self.router.forward(flat)?.to_dtype(DType::F32)?;
        let logits: Vec<f32> = transfers::read_vec1(&logits.flatten_all()?)?;
        Ok(route(&logits, self.experts.len(), self.top_k, self.routing))
    }

    /// `out` (N, d) plus Qwen2-MoE's shared expert on `flat` (N, d), times its sigmoid gate.
    fn add_shared(
        &self,
        out: Tensor,
        flat: &Tensor,
        activation: crate::model::config::Activation,
    ) -> Result<Tensor> {
        match &self.shared {
            Some((shared, gate)) => {
                // (N, 1) sigmoid gate times the shared expert (N, d)
                let g = candle_nn::ops::sigmoid(&gate.forward(flat)?)?;
                Ok((out + shared.forward(flat, activation)?.broadcast_mul(&g)?)?)
            }
            None => Ok(out),
        }
    }
}

impl Experts {
    /// The naive path the routed [`Experts::forward`] is checked against (and timed against,
    /// `sahara bench-experts`): every expert on every token, weighted by a dense (N, E)
    /// routing matrix that is 0 off each token's top k, then the shared expert. x (…, d) ->
    /// (…, d), in f32 sums.
    pub fn forward_dense(
        &self,
        x: &Tensor,
        activation: crate::model::config::Activation,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d = *dims.last().expect("a hidden axis");
        let n = x.elem_count() / d;
        let e = self.experts.len();
        // (N, d)
        let flat = x.reshape((n, d))?;
        // (N, E) row-major
        let mut dense = vec![0f32; n * e];
        for (k, rows) in self.routes(&flat)?.iter().enumerate() {
            for &(t, w) in rows {
                dense[t as usize * e + k] = w;
            }
        }
        let dense = transfers::upload(dense, (n, e), x.device())?;
        let mut out = Tensor::zeros((n, d), DType::F32, x.device())?;
        for (k, m) in self.experts.iter().enumerate() {
            // (N, d) times the expert's column (N, 1)
            let y = m.forward(&flat, activation)?.to_dtype(DType::F32)?;
            out = (out + y.broadcast_mul(&dense.narrow(1, k, 1)?)?)?;
        }
        let out = out.to_dtype(x.dtype())?;
        Ok(self.add_shared(out, &flat, activation)?.reshape(dims)?)
    }
}

impl Linear {
    /// The same layer with W stored as a row-major (in, out) matrix, so that `x Wᵀ` is a
    /// product with a row-major right operand. On CPU that is the layout the matrix product
    /// consumes without repacking W on every call (measured: up to 1.7× faster on a
    /// (512, 2048) × (2048, 768) product); the values are unchanged.
    pub fn with_transposed_storage(self) -> Result<Linear> {
        Ok(match self.weight {
            Weight::Dense(w) => Linear::dense(transposed_storage(&w)?, self.bias),
            quantized => Linear {
                weight: quantized,
                bias: self.bias,
            },
        })
    }

    /// Stacks projections of the same input along the output dimension, so that one matrix
    /// product computes them all.
    pub fn stack(parts: &[Linear]) -> Result<Linear> {
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let b: Vec<&Tensor> = parts.iter().map(|p| p.bias.as_ref().unwrap()).collect();
            Some(Tensor::cat(&b, 0)?)
        } else if parts.iter().any(|p| p.bias.is_some()) {
            let b: Vec<Tensor> = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => {
                        let like = parts.iter().find_map(|q| q.bias.as_ref()).expect("a bias");
                        Ok(Tensor::zeros(
                            p.weight.out_dim()?,
                            like.dtype(),
                            like.device(),
                        )?)
                    }
                })
                .collect::<Result<_>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        let dense: Option<Vec<&Tensor>> = parts.iter().map(|p| p.weight.dense()).collect();
        let weight = match dense {
            Some(w) => Weight::Dense(Tensor::cat(&w, 0)?),
            None => {
                let mut all: Vec<QMatMul> = Vec::new();
                for p in parts {
                    match &p.weight {
                        Weight::Dense(w) => all.push(QMatMul::Tensor(w.clone())),
                        Weight::Quantized(q) => all.extend(q.iter().cloned()),
                    }
                }
                Weight::Quantized(crate::model::quantized::merge_parts(all)?)
            }
        };
        Ok(Linear { weight, bias })
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    /// Before attention; `None` for OLMo 2, which normalizes only outputs.
    pub input_layernorm: Option<Tensor>,
    /// Before the MLP (Llama), or on the attention output (Gemma 2's sandwich norms, OLMo 2).
    pub post_attention_layernorm: Tensor,
    /// Gemma 2: before the MLP.
    pub pre_feedforward_layernorm: Option<Tensor>,
    /// Gemma 2 and OLMo 2: on the MLP output.
    pub post_feedforward_layernorm: Option<Tensor>,
    /// RMSNorm of queries and keys: per head, (D,) (Qwen 3, Gemma 3), or over the whole
    /// projection, (H·D,) and (G·D,) (OLMo 2).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Each head's sink logit, (H,) f32 (its values rounded through the model dtype, as
    /// transformers holds them): GPT-OSS.
    pub sinks: Option<Tensor>,
    pub attn: Attention,
    pub mlp: FeedForward,
}

/// A left-padded batch of token sequences.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, T) u32
    pub tokens: Tensor,
    /// Left padding of each row.
    pub pad: Vec<usize>,
    /// T, the padded length.
    pub len: usize,
}

impl Batch {
    /// Left-pads `prompts` with `pad_id` into one batch.
    pub fn new(prompts: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::Prompt(format!("prompt {i} has no tokens")));
        }
        let len = prompts.iter().map(Vec::len).max().unwrap();
        let mut data = Vec::with_capacity(prompts.len() * len);
        let mut pad = Vec::with_capacity(prompts.len());
        for p in prompts {
            let n = len - p.len();
            pad.push(n);
            data.extend(std::iter::repeat_n(pad_id, n));
            data.extend_from_slice(p);
        }
        let tokens = transfers::upload(data, (prompts.len(), len), device)?;
        Ok(Batch { tokens, pad, len })
    }

    pub fn rows(&self) -> usize {
        self.pad.len()
    }

    /// The same prompt repeated `n` times (no padding).
    pub fn repeat(tokens: &[u32], n: usize, device: &Device) -> Result<Self> {
        Batch::new(&vec![tokens.to_vec(); n], 0, device)
    }
}

/// Which positions a forward pass returns outputs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    All,
    /// Only the last position: the last layer then computes queries, attention output and MLP
    /// for that position alone, and the unembedding is applied to it alone.
    Last,
}

/// What a forward pass computes and returns.
#[derive(Debug, Clone)]
pub struct ForwardSpec<'a> {
    pub ablations: Option<&'a AblationPlan>,
    pub positions: Positions,
    /// Logits (f32) at the returned positions.
    pub logits: bool,
    /// Final hidden state after the final norm at the returned positions.
    pub hidden: bool,
    /// Residual stream entering each layer from the start layer on (`blocks.{l}.hook_resid_pre`),
    /// then the one leaving the last layer.
    pub resid: bool,
    /// Attention probabilities of one layer (`blocks.{l}.attn.hook_pattern`).
    pub pattern_layer: Option<usize>,
    /// Every layer's attention output before `o_proj` (`blocks.{l}.attn.hook_z`), after the
    /// plan's v ablations and patches, at the positions the layer computes.
    pub z: bool,
    /// Tensors added to activations: what a gradient is taken with respect to (zeros held in
    /// `Var`s), or a perturbation.
    pub shifts: Option<&'a Shifts>,
}

/// Additions to a forward pass's activations, by layer; `None` adds nothing there. A batch
/// that starts at a later layer skips the entries before it.
#[derive(Debug, Clone, Default)]
pub struct Shifts {
    /// Index l < L: added to the residual stream entering layer l (`blocks.{l}.hook_resid_pre`),
    /// (B, T, d); index L: to the one leaving the last layer, (B, T', d) with T' the returned
    /// positions.
    pub resid: Vec<Option<Tensor>>,
    /// Index l: added to layer l's attention output before `o_proj` (`hook_z`, heads
    /// concatenated), (B, T'', H·D) with T'' the positions the layer computes.
    pub z: Vec<Option<Tensor>>,
}

impl Shifts {
    fn resid(&self, l: usize) -> Option<&Tensor> {
        self.resid.get(l).and_then(Option::as_ref)
    }
    fn z(&self, l: usize) -> Option<&Tensor> {
        self.z.get(l).and_then(Option::as_ref)
    }
}

impl<'a> ForwardSpec<'a> {
    pub fn logits(positions: Positions) -> Self {
        ForwardSpec {
            ablations: None,
            positions,
            logits: true,
            hidden: false,
            resid: false,
            pattern_layer: None,
            z: false,
            shifts: None,
        }
    }
    pub fn with_ablations(mut self, plan: &'a AblationPlan) -> Self {
        self.ablations = Some(plan);
        self
    }
}

/// Outputs of a forward pass; each present when the spec asked for it.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// (B, T', V) f32, T' = T or 1.
    pub logits: Option<Tensor>,
    /// (B, T', d)
    pub hidden: Option<Tensor>,
    /// Residual stream entering layer `start + i`, the last one leaving the last layer (at the
    /// returned positions): (B, T, d).
    pub resid: Vec<Tensor>,
    /// (B, H, T', S) f32
    pub pattern: Option<Tensor>,
    /// Per layer from the start layer: (B, H, T'', D), T'' the positions the layer computed.
    pub z: Vec<Tensor>,
}

/// Key/value cache of a batch: per layer, keys and values after ablation and rotary
/// embedding, each a (B, G, capacity, D) buffer whose first `len` positions are filled and
/// which later calls write in place.
#[derive(Debug)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    pub pad: Vec<usize>,
    /// Positions already cached (S).
    pub len: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, pad: Vec<usize>) -> Self {
        KvCache {
            layers: vec![None; cfg.num_layers],
            pad,
            len: 0,
        }
    }
}

/// How a forward pass enters the layers.
enum Entry<'a> {
    /// Token embeddings, (B, T, d), at layer 0 (or the pass's start layer).
    Embedded(Tensor),
    /// Rows joining at later layers from a residual stream.
    Joined(&'a [Join]),
}

/// Rows joining a forward pass at a layer (see [`Decoder::forward_joined`]).
#[derive(Debug)]
pub struct Join {
    pub layer: usize,
    /// The residual stream entering `layer`, (1, T, d).
    pub resid: Tensor,
    pub rows: usize,
    /// The ablations of every row running from `layer` on.
    pub plan: AblationPlan,
}

/// Per-call positional context: rotary tables and attention masks.
/// What one layer returns besides its output, and the shift added to its z.
struct LayerOut<'a> {
    pattern: bool,
    z: bool,
    z_shift: Option<&'a Tensor>,
}

struct Context {
    /// (B, T, D/2) in the model dtype.
    cos: Tensor,
    sin: Tensor,
    /// The sliding-window layers' own tables (Gemma 3's local rotary base), (B, T, D/2).
    local: Option<(Tensor, Tensor)>,
    /// Index of the first query position in the padded sequence (the cache length).
    offset: usize,
    /// Key length S = offset + T.
    keys: usize,
    pad: Vec<usize>,
    t: usize,
    /// Masks made so far, by (query positions, sliding window): each is uploaded once per
    /// call, not once per layer.
    masks: std::cell::RefCell<Vec<MaskEntry>>,
    /// Where its tables are: a decoder split over devices has one context per device.
    device: Device,
}

impl Context {
    /// This context on `device`: the rotary tables copied there, masks made there anew.
    fn to_device(&self, device: &Device) -> Result<Context> {
        Ok(Context {
            cos: transfers::between(&self.cos, device)?,
            sin: transfers::between(&self.sin, device)?,
            local: match &self.local {
                Some((c, s)) => Some((
                    transfers::between(c, device)?,
                    transfers::between(s, device)?,
                )),
                None => None,
            },
            offset: self.offset,
            keys: self.keys,
            pad: self.pad.clone(),
            t: self.t,
            masks: Default::default(),
            device: device.clone(),
        })
    }
}

type MaskEntry = ((usize, Option<usize>), Option<Tensor>);

/// The decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub cfg: ModelConfig,
    /// (V, d)
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// (V, d); the embedding matrix itself when tied.
    pub lm_head: Tensor,
    /// (D/2,) f32
    inv_freq: Tensor,
    /// LongRoPE: frequencies for sequences longer than the original context.
    inv_freq_long: Option<(Tensor, usize)>,
    /// The factor cos and sin are multiplied by (LongRoPE, YaRN).
    rope_attention_factor: f64,
    /// (D/2,) f32: the sliding-window layers' frequencies where they have their own base.
    inv_freq_local: Option<Tensor>,
    /// √hidden in the model dtype, for models that scale their embeddings.
    embed_scale: Option<Tensor>,
    pub dtype: DType,
    /// The device the batch enters on: the embedding's (the first of a split decoder).
    pub device: Device,
    /// Where each part is: one device, or layers split over several.
    pub placement: DevicePlan,
    /// What q/k ablations do to the heads' attention sinks, for models that have them.
    pub sink_policy: SinkPolicy,
}

/// Where a decoder's parts go: one device for all, or contiguous ranges of layers over
/// several ([`crate::device::place_layers`] plans them by free memory). The embedding is on
/// the first device, the final norm and unembedding with the last layer.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// The devices, as listed (the same device may be listed twice: each entry is a part).
    pub devices: Vec<Device>,
    /// Each layer's entry in `devices`, non-decreasing.
    pub layer_part: Vec<usize>,
}

impl DevicePlan {
    /// Everything on `device`.
    pub fn single(device: &Device, num_layers: usize) -> Self {
        DevicePlan {
            devices: vec![device.clone()],
            layer_part: vec![0; num_layers],
        }
    }

    /// `devices[i]` holds the layers `ranges[i]` (contiguous, in order, covering all layers;
    /// a range may be empty).
    pub fn split(devices: &[Device], ranges: &[std::ops::Range<usize>]) -> Result<Self> {
        if devices.is_empty() || devices.len() != ranges.len() {
            return Err(Error::InvalidArgument(
                "a device plan needs one layer range per device".into(),
            ));
        }
        let mut layer_part = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            if r.start != layer_part.len() {
                return Err(Error::InvalidArgument(
                    "a device plan's layer ranges must be contiguous and in order".into(),
                ));
            }
            layer_part.extend(r.clone().map(|_| i));
        }
        Ok(DevicePlan {
            devices: devices.to_vec(),
            layer_part,
        })
    }

    /// Layer `l`'s part (its entry in `devices`).
    pub fn part(&self, l: usize) -> usize {
        self.layer_part.get(l).copied().unwrap_or(0)
    }

    /// The head's part: the last layer's.
    pub fn head_part(&self) -> usize {
        self.layer_part.last().copied().unwrap_or(0)
    }

    pub fn layer_device(&self, l: usize) -> &Device {
        &self.devices[self.part(l)]
    }

    pub fn head_device(&self) -> &Device {
        &self.devices[self.head_part()]
    }

    /// Its devices' names: `cuda:0`, or `cuda:0,cuda:1` for a split decoder.
    pub fn name(&self) -> String {
        self.devices
            .iter()
            .map(crate::device::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether it has more than one part.
    pub fn is_split(&self) -> bool {
        self.devices.len() > 1
    }

    /// The layers of each part.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        (0..self.devices.len())
            .map(|i| {
                let start = self
                    .layer_part
                    .iter()
                    .position(|&p| p >= i)
                    .unwrap_or(self.layer_part.len());
                let end = self
                    .layer_part
                    .iter()
                    .position(|&p| p > i)
                    .unwrap_or(self.layer_part.len());
                start..end
            })
            .collect()
    }
}

impl Decoder {
    /// Loads the decoder's weights from a model folder.
    pub fn load(
        cfg: ModelConfig,
        weights: &dyn TensorSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let plan = DevicePlan::single(device, cfg.num_layers);
        Self::load_placed(cfg, weights, dtype, &plan)
    }

    /// Loads the decoder's weights with each part on its device of `plan`.
    pub fn load_placed(
        cfg: ModelConfig,
        weights: &dyn TensorSource,
        dtype: DType,
        plan: &DevicePlan,
    ) -> Result<Self> {
        if plan.layer_part.len() != cfg.num_layers {
            return Err(Error::InvalidArgument(format!(
                "a device plan for {} layers, for a model of {}",
                plan.layer_part.len(),
                cfg.num_layers
            )));
        }
        let d = cfg.hidden_size;
        let (h, g, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let load = |name: &str, shape: &[usize], device: &Device| {
            let t = weights.load(name, shape, dtype, device)?;
            check_finite(name, &t)?;
            Ok::<Tensor, Error>(t)
        };
        let linear =
            |prefix: &str, out: usize, inp: usize, bias: bool, device: &Device| -> Result<Linear> {
                let name = format!("{prefix}.weight");
                let weight = weights.load_weight(&name, &[out, inp], dtype, device)?;
                match &weight {
                    Weight::Dense(t) => check_finite(&name, t)?,
                    Weight::Quantized(parts) => {
                        for q in parts {
                            if let QMatMul::QTensor(t) = q {
                                // Dequantized one tensor at a time, to check it, then dropped.
                                check_finite(&name, &t.dequantize(device)?)?;
                            }
                        }
                    }
                }
                Ok(Linear {
                    weight,
                    bias: if bias {
                        Some(load(&format!("{prefix}.bias"), &[out], device)?)
                    } else {
                        None
                    },
                })
            };
        let embed_tokens = load(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, d],
            &plan.devices[0],
        )?;
        // Gemma's norms multiply by (1 + w): stored as such.
        let norm_on = |name: &str, n: usize, device: &Device| -> Result<Tensor> {
            let w = load(name, &[n], device)?;
            Ok(if cfg.norm_plus_one { (w + 1.0)? } else { w })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let device = plan.layer_device(l);
            let linear = |prefix: &str, out: usize, inp: usize, bias: bool| {
                linear(prefix, out, inp, bias, device)
            };
            let norm_weight = |name: &str, n: usize| norm_on(name, n, device);
            let p = format!("model.layers.{l}");
            let i = cfg.intermediate_size;
            // A gated MLP of intermediate size `i` stored as `{prefix}.{gate,up,down}` (or
            // fused), in the layout the product reads.
            let mlp_at = |prefix: &str, [gate, up, down]: [&str; 3], i: usize| -> Result<Mlp> {
                let gate_up = if cfg.fused_projections {
                    linear(&format!("{prefix}.gate_up_proj"), 2 * i, d, cfg.mlp_bias)?
                } else {
                    Linear::stack(&[
                        linear(&format!("{prefix}.{gate}"), i, d, cfg.mlp_bias)?,
                        linear(&format!("{prefix}.{up}"), i, d, cfg.mlp_bias)?,
                    ])?
                };
                Ok(Mlp {
                    gate_up_proj: gate_up.with_transposed_storage()?,
                    down_proj: linear(&format!("{prefix}.{down}"), d, i, cfg.mlp_bias)?
                        .with_transposed_storage()?,
                })
            };
            const PROJ: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
            let mlp = match &cfg.moe {
                Some(moe) if moe.gpt_oss => {
                    FeedForward::Experts(Box::new(gpt_oss_experts(moe, d, &p, &|name, shape| {
                        load(name, shape, device)
                    })?))
                }
                Some(moe) if moe.sparse_layers[l] => {
                    let (block, names) = if moe.mixtral_names {
                        ("block_sparse_moe", ["w1", "w3", "w2"])
                    } else {
                        ("mlp", PROJ)
                    };
                    let b = format!("{p}.{block}");
                    if weights.contains(&format!("{p}.mlp.experts.gate_up_proj")) {
                        return Err(Error::InvalidArgument(format!(
                            "{p}: the experts are stored fused as 3-D tensors (mlp.experts.gate_up_proj and down_proj, as transformers' save_pretrained(save_original_format=False) writes them); sahara reads the per-expert layout of the hub files: save the model with save_original_format=True"
                        )));
                    }
                    let experts = (0..moe.num_experts)
                        .map(|e| {
                            mlp_at(
                                &format!("{b}.experts.{e}"),
                                names,
                                moe.expert_intermediate_size,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let shared = match moe.shared_intermediate_size {
                        Some(si) => Some((
                            mlp_at(&format!("{b}.shared_expert"), PROJ, si)?,
                            linear(&format!("{b}.shared_expert_gate"), 1, d, false)?
                                .with_transposed_storage()?,
                        )),
                        None => None,
                    };
                    FeedForward::Experts(Box::new(Experts {
                        router: linear(&format!("{b}.gate"), moe.num_experts, d, false)?
                            .with_transposed_storage()?,
                        experts,
                        shared,
                        top_k: moe.top_k,
                        routing: Routing::SoftmaxThenTopK {
                            renormalize: moe.renormalize,
                        },
                        weights_in_f32: moe.mixtral_names,
                    }))
                }
                _ => FeedForward::Mlp(mlp_at(&format!("{p}.mlp"), PROJ, i)?),
            };
            let qkv_proj = if cfg.fused_projections {
                linear(
                    &format!("{p}.self_attn.qkv_proj"),
                    (h + 2 * g) * hd,
                    d,
                    cfg.qkv_bias,
                )?
            } else {
                Linear::stack(&[
                    linear(&format!("{p}.self_attn.q_proj"), h * hd, d, cfg.qkv_bias)?,
                    linear(&format!("{p}.self_attn.k_proj"), g * hd, d, cfg.qkv_bias)?,
                    linear(&format!("{p}.self_attn.v_proj"), g * hd, d, cfg.qkv_bias)?,
                ])?
            };
            let sandwich = |name: &str| -> Result<Option<Tensor>> {
                if cfg.sandwich_norms {
                    Ok(Some(norm_weight(&format!("{p}.{name}.weight"), d)?))
                } else {
                    Ok(None)
                }
            };
            // Per head (D,), or over the whole projection of `heads` heads.
            let qk = |name: &str, heads: usize| -> Result<Option<Tensor>> {
                if cfg.qk_norm {
                    let n = if cfg.qk_norm_whole { heads * hd } else { hd };
                    Ok(Some(norm_weight(
                        &format!("{p}.self_attn.{name}.weight"),
                        n,
                    )?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                input_layernorm: if cfg.post_norms {
                    None
                } else {
                    Some(norm_weight(&format!("{p}.input_layernorm.weight"), d)?)
                },
                post_attention_layernorm: norm_weight(
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                )?,
                pre_feedforward_layernorm: sandwich("pre_feedforward_layernorm")?,
                post_feedforward_layernorm: if cfg.post_norms {
                    Some(norm_weight(
                        &format!("{p}.post_feedforward_layernorm.weight"),
                        d,
                    )?)
                } else {
                    sandwich("post_feedforward_layernorm")?
                },
                q_norm: qk("q_norm", h)?,
                k_norm: qk("k_norm", g)?,
                sinks: if cfg.attention_sinks {
                    Some(
                        load(&format!("{p}.self_attn.sinks"), &[h], device)?
                            .to_dtype(DType::F32)?,
                    )
                } else {
                    None
                },
                attn: Attention {
                    qkv_proj: qkv_proj.with_transposed_storage()?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), d, h * hd, cfg.o_bias)?
                        .with_transposed_storage()?,
                },
                mlp,
            });
        }
        let head = plan.head_device();
        let norm = norm_on("model.norm.weight", d, head)?;
        let lm_head = if cfg.tie_word_embeddings && !weights.contains("lm_head.weight") {
            // A tied head on another part than the embedding is a copy of it there.
            match plan.head_part() {
                0 => embed_tokens.clone(),
                _ => transfers::between(&embed_tokens, head)?,
            }
        } else {
            // Stored like the layers' projections (tied heads stay the embedding's rows).
            transposed_storage(&load("lm_head.weight", &[cfg.vocab_size, d], head)?)?
        };
        let mut dec = Self::from_parts(
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype,
            &plan.devices[0],
        )?;
        dec.placement = plan.clone();
        Ok(dec)
    }

    /// Builds a decoder from tensors already in memory.
    pub fn from_parts(
        cfg: ModelConfig,
        embed_tokens: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Tensor,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inv = inverse_frequencies(&cfg);
        let n = inv.len();
        let inv_freq_local = crate::model::config::local_inverse_frequencies(&cfg)
            .map(|f| Tensor::from_vec(f, n, device))
            .transpose()?;
        let n_layers = cfg.num_layers;
        let inv_freq = Tensor::from_vec(inv, n, device)?;
        let rope_attention_factor = cfg.rope_scaling.attention_factor();
        let inv_freq_long = match &cfg.rope_scaling {
            crate::model::config::RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => Some((
                Tensor::from_vec(
                    crate::model::config::long_inverse_frequencies(&cfg),
                    n,
                    device,
                )?,
                *original_max_position_embeddings,
            )),
            _ => None,
        };
        let embed_scale = if cfg.scale_embeddings {
            // transformers rounds √hidden to the model dtype first.
            Some(Tensor::new(&[(cfg.hidden_size as f64).sqrt() as f32], device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Decoder {
            cfg,
            embed_tokens,
            embed_scale,
            layers,
            norm,
            lm_head,
            inv_freq,
            inv_freq_long,
            rope_attention_factor,
            inv_freq_local,
            dtype,
            device: device.clone(),
            placement: DevicePlan::single(device, n_layers),
            sink_policy: SinkPolicy::Keep,
        })
    }

    /// An ablation plan for this decoder: each layer's maps on that layer's device.
    pub fn ablation_plan(&self, rows: &[Vec<HeadAblation>]) -> Result<AblationPlan> {
        self.patch_plan(rows, None)
    }

    /// [`Decoder::ablation_plan`] with the source of the rows' head patches.
    pub fn patch_plan(
        &self,
        rows: &[Vec<HeadAblation>],
        source: Option<&PatchSource>,
    ) -> Result<AblationPlan> {
        AblationPlan::placed_with(
            &self.cfg,
            rows,
            self.dtype,
            &self.placement,
            source,
            self.sink_policy,
        )
    }

    /// Whether some projection computes with quantized weights ([`Weight::Quantized`]).
    pub fn has_quantized_weights(&self) -> bool {
        self.layers.iter().any(|l| {
            [&l.attn.qkv_proj, &l.attn.o_proj]
                .into_iter()
                .chain(l.mlp.projections())
                .any(|p| matches!(p.weight, Weight::Quantized(_)))
        })
    }

    /// Token embeddings of a batch: (B, T, d).
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        let x = self
            .embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.hidden_size))?;
        match &self.embed_scale {
            Some(s) => Ok(x.broadcast_mul(s)?),
            None => Ok(x),
        }
    }

    /// Runs a batch from its tokens.
    pub fn forward(
        &self,
        batch: &Batch,
        spec: &ForwardSpec,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        self.check_length(batch.len + cache.as_ref().map_or(0, |c| c.len))?;
        let x = self.embed(&batch.tokens)?;
        self.run(Entry::Embedded(x), 0, &batch.pad, batch.len, spec, cache)
    }

    /// Runs a batch whose rows enter at later layers, without padding or cache: at
    /// `joins[i].layer`, `joins[i].rows` copies of the residual stream `joins[i].resid`
    /// (1, T, d) join the rows already running, and from there on the batch is ablated by
    /// `joins[i].plan`, which covers every row so far. Joins are in layer order; the first one
    /// starts the batch. Nothing before a row's layer is recomputed for it: that is what
    /// makes scoring many ablations of one prompt cheap.
    pub fn forward_joined(&self, joins: &[Join], spec: &ForwardSpec) -> Result<ForwardOutput> {
        let first = joins
            .first()
            .ok_or_else(|| Error::InvalidArgument("a joined forward needs rows".into()))?;
        if joins.windows(2).any(|w| w[0].layer > w[1].layer) || first.layer >= self.cfg.num_layers {
            return Err(Error::InvalidArgument(
                "joins must be in layer order, inside the model".into(),
            ));
        }
        let rows: usize = joins.iter().map(|j| j.rows).sum();
        let (_, t, _) = first.resid.dims3()?;
        self.run(
            Entry::Joined(joins),
            first.layer,
            &vec![0; rows],
            t,
            spec,
            None,
        )
    }

    /// Layer `l` alone on the residual stream `x` (B, T, d) entering it, positions 0..T
    /// without padding, ablated by `plan`: the residual stream leaving it (B, T, d) and its
    /// attention output z (B, H, T, D) (`hook_z`, after the plan's z ablations). What an
    /// ablation at layer l changes there, computed from a stream computed once.
    pub fn run_layer(
        &self,
        l: usize,
        x: &Tensor,
        plan: Option<&AblationPlan>,
    ) -> Result<(Tensor, Tensor)> {
        if l >= self.cfg.num_layers {
            return Err(Error::InvalidArgument(format!(
                "layer {l} of a model with {} layers",
                self.cfg.num_layers
            )));
        }
        let (b, t, _) = x.dims3()?;
        if plan.is_some_and(|p| p.rows != b) {
            return Err(Error::InvalidArgument(
                "the ablation plan does not cover the rows".into(),
            ));
        }
        let mut ctx = self.context(&vec![0; b], t, 0)?;
        let dev = self.placement.layer_device(l);
        if !dev.same_device(&ctx.device) {
            ctx = ctx.to_device(dev)?;
        }
        let want = LayerOut {
            pattern: false,
            z: true,
            z_shift: None,
        };
        let (y, _, z) = self.layer(l, x, &ctx, plan, want, Positions::All, None)?;
        Ok((y, z.expect("z was asked for")))
    }

    fn check_length(&self, n: usize) -> Result<()> {
        if n > self.cfg.max_position_embeddings {
            return Err(Error::Prompt(format!(
                "{n} tokens exceed the model's context of {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    fn context(&self, pad: &[usize], t: usize, offset: usize) -> Result<Context> {
        let b = pad.len();
        // Position ids: index minus left padding (padding positions get 0; they are masked).
        let mut pos = Vec::with_capacity(b * t);
        for &p in pad {
            for i in 0..t {
                pos.push((offset + i).saturating_sub(p) as f32);
            }
        }
        let pos = transfers::upload(pos, (b, t, 1), &self.device)?;
        let half = self.inv_freq.dim(0)?;
        // LongRoPE switches to its long factors when a sequence outgrows the original context
        // (transformers: max position id + 1 > original_max_position_embeddings). The choice
        // is made per row, so that a row's result does not depend on its neighbours.
        let inv_freq = match &self.inv_freq_long {
            Some((long, original)) => {
                let rows: Vec<Tensor> = pad
                    .iter()
                    .map(|&p| {
                        if offset + t - p > *original {
                            long.clone()
                        } else {
                            self.inv_freq.clone()
                        }
                    })
                    .collect();
                // (B, 1, D/2)
                Tensor::stack(&rows, 0)?.unsqueeze(1)?
            }
            None => self.inv_freq.reshape((1, 1, half))?,
        };
        // (B, T, 1) * (B or 1, 1, D/2) -> (B, T, D/2), in f32 as transformers computes it.
        let freqs = pos.broadcast_mul(&inv_freq)?;
        let (mut cos, mut sin) = (freqs.cos()?, freqs.sin()?);
        if self.rope_attention_factor != 1.0 {
            cos = (cos * self.rope_attention_factor)?;
            sin = (sin * self.rope_attention_factor)?;
        }
        let cos = cos.to_dtype(self.dtype)?;
        let sin = sin.to_dtype(self.dtype)?;
        let local = match &self.inv_freq_local {
            Some(f) => {
                // (B, T, 1) * (1, 1, D/2) -> (B, T, D/2)
                let freqs = pos.broadcast_mul(&f.reshape((1, 1, half))?)?;
                Some((
                    freqs.cos()?.to_dtype(self.dtype)?,
                    freqs.sin()?.to_dtype(self.dtype)?,
                ))
            }
            None => None,
        };
        Ok(Context {
            cos,
            sin,
            local,
            offset,
            keys: offset + t,
            pad: pad.to_vec(),
            t,
            masks: Default::default(),
            device: self.device.clone(),
        })
    }

    /// Additive mask (f32): (B or 1, 1, Tq, S), 0 where visible and f32::MIN where not.
    /// Queries are the last `tq` of the call's `t` positions.
    fn mask(&self, ctx: &Context, tq: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let key = (tq, window);
        if let Some((_, m)) = ctx.masks.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        let m = self.make_mask(ctx, tq, window)?;
        ctx.masks.borrow_mut().push((key, m.clone()));
        Ok(m)
    }

    fn make_mask(&self, ctx: &Context, tq: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let s = ctx.keys;
        let first_q = ctx.offset + ctx.t - tq;
        let any_pad = ctx.pad.iter().any(|&p| p > 0);
        let needs_causal = tq > 1 || window.is_some_and(|w| w < s);
        if !any_pad && !needs_causal {
            return Ok(None);
        }
        let rows: Vec<usize> = if any_pad { ctx.pad.clone() } else { vec![0] };
        let mut m = Vec::with_capacity(rows.len() * tq * s);
        for &p in &rows {
            for qi in 0..tq {
                let i = first_q + qi;
                for j in 0..s {
                    let visible = j >= p && j <= i && window.is_none_or(|w| i - j < w);
                    m.push(if visible { 0.0 } else { f32::MIN });
                }
            }
        }
        Ok(Some(transfers::upload(
            m,
            (rows.len(), 1, tq, s),
            &ctx.device,
        )?))
    }

    /// The layer loop every forward pass goes through: from layer `start` to the last, then
    /// the final norm and unembedding. `pad` has one entry per row of the whole batch (rows
    /// that join later included); `t` is the number of positions of this call.
    fn run(
        &self,
        entry: Entry,
        start: usize,
        pad: &[usize],
        t: usize,
        spec: &ForwardSpec,
        mut cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let b = pad.len();
        if let Some(plan) = spec.ablations {
            if plan.rows != b {
                return Err(Error::InvalidArgument(format!(
                    "ablation plan has {} rows for a batch of {b}",
                    plan.rows
                )));
            }
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        // Built once for the whole batch; rows that are not there yet use a prefix of it. A
        // split decoder copies it to each part as the batch gets there.
        let mut ctx = self.context(pad, t, offset)?;
        let mut part = 0;
        let mut out = ForwardOutput::default();
        let last = self.cfg.num_layers - 1;
        let (mut x, joins): (Option<Tensor>, &[Join]) = match entry {
            Entry::Embedded(x) => (Some(x), &[]),
            Entry::Joined(j) => (None, j),
        };
        let mut plan = spec.ablations;
        let mut next = 0;
        for l in start..self.cfg.num_layers {
            // The batch reaches another part of a split decoder: the residual stream and the
            // context move there.
            let here = self.placement.part(l);
            if here != part {
                let dev = self.placement.layer_device(l);
                x = x.map(|x| transfers::between(&x, dev)).transpose()?;
                ctx = ctx.to_device(dev)?;
                part = here;
            }
            while let Some(j) = joins.get(next).filter(|j| j.layer == l) {
                // (1, T, d) -> (rows, T, d), after the rows already running.
                let (_, t, d) = j.resid.dims3()?;
                let resid = match j.resid.device().same_device(&ctx.device) {
                    true => j.resid.clone(),
                    false => transfers::between(&j.resid, &ctx.device)?,
                };
                let fresh = resid.broadcast_as((j.rows, t, d))?.contiguous()?;
                x = Some(match x {
                    Some(prev) => Tensor::cat(&[&prev, &fresh], 0)?,
                    None => fresh,
                });
                plan = Some(&j.plan);
                next += 1;
            }
            let mut xs = x.take().expect("the first layer has rows");
            if let Some(s) = spec.shifts.and_then(|s| s.resid(l)) {
                xs = xs.broadcast_add(s)?;
            }
            if plan.is_some_and(|p| p.rows != xs.dim(0).unwrap_or(0)) {
                return Err(Error::InvalidArgument(
                    "a join's ablation plan does not cover the rows so far".into(),
                ));
            }
            if spec.resid {
                out.resid.push(xs.clone());
            }
            let positions = if l == last {
                spec.positions
            } else {
                Positions::All
            };
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (y, pattern, z) = self.layer(
                l,
                &xs,
                &ctx,
                plan,
                LayerOut {
                    pattern: spec.pattern_layer == Some(l),
                    z: spec.z,
                    z_shift: spec.shifts.and_then(|s| s.z(l)),
                },
                positions,
                layer_cache,
            )?;
            if spec.pattern_layer == Some(l) {
                out.pattern = pattern;
            }
            out.z.extend(z);
            x = Some(y);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        // The head is on the last layer's part.
        let mut x = x.expect("the model has layers");
        if let Some(s) = spec.shifts.and_then(|s| s.resid(self.cfg.num_layers)) {
            x = x.broadcast_add(s)?;
        }
        if spec.resid {
            out.resid.push(x.clone());
        }
        let (logits, hidden) = self.head(&x, spec.positions, spec.logits, spec.hidden)?;
        out.logits = logits;
        out.hidden = hidden;
        Ok(out)
    }

    /// Final norm and unembedding of the residual stream leaving the last layer, x: (B, T, d),
    /// at every position or the last one: (logits (B, T', V) f32, hidden (B, T', d)).
    pub fn head(
        &self,
        x: &Tensor,
        positions: Positions,
        logits: bool,
        hidden: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(1)?;
        let x = if positions == Positions::Last && n > 1 {
            x.narrow(1, n - 1, 1)?
        } else {
            x.clone()
        };
        let h = self.rms_norm(&x, &self.norm)?;
        let l = if logits {
            let lm = Linear::dense(self.lm_head.clone(), None);
            let logits = lm.forward(&h)?;
            let logits = match self.cfg.final_softcap {
                Some(c) => ((logits / c)?.tanh()? * c)?,
                None => logits,
            };
            Some(logits.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok((l, hidden.then_some(h)))
    }

    /// RMSNorm with the model's ε.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, w, self.cfg.rms_norm_eps)
    }

    /// The query or key norm of x (B, T, heads, D): over each head's D values, or over all
    /// heads' together (OLMo 2, `qk_norm_whole`).
    fn qk_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if !self.cfg.qk_norm_whole {
            return self.rms_norm(&x, w);
        }
        let (b, t, n, d) = x.dims4()?;
        // (B, T, heads·D), normalized, back to (B, T, heads, D)
        Ok(self
            .rms_norm(&x.reshape((b, t, n * d))?, w)?
            .reshape((b, t, n, d))?)
    }

    /// One decoder layer. `x`: (B, T, d) -> (B, T, d), or (B, 1, d) for `Positions::Last`
    /// (queries, attention output and MLP at the last position only).
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: usize,
        x: &Tensor,
        ctx: &Context,
        plan: Option<&AblationPlan>,
        want: LayerOut,
        positions: Positions,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let cfg = &self.cfg;
        let layer = &self.layers[l];
        let (b, t, _) = x.dims3()?;
        let (nh, ng, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let only_last = positions == Positions::Last;
        // (B, T, D/2): the context's rows for the rows running now, from the sliding-window
        // layers' own tables where the model has them.
        let (cos, sin) = match (&ctx.local, cfg.sliding_window[l]) {
            (Some((c, s)), Some(_)) => (c, s),
            _ => (&ctx.cos, &ctx.sin),
        };
        let (cos, sin) = (cos.narrow(0, 0, b)?, sin.narrow(0, 0, b)?);

        let h = match &layer.input_layernorm {
            Some(w) => self.rms_norm(x, w)?,
            None => x.clone(),
        };
        let tq = if only_last { 1 } else { t };
        // (B, T, (H + 2G) * D) -> (B, T, H + 2G, D)
        let qkv = layer
            .attn
            .qkv_proj
            .forward(&h)?
            .reshape((b, t, nh + 2 * ng, hd))?;
        // (B, Tq, H, D), then the q norm, -> (B, H, Tq, D)
        let q = qkv.narrow(2, 0, nh)?.narrow(1, t - tq, tq)?;
        let q = match &layer.q_norm {
            Some(w) => self.qk_norm(&q, w)?,
            None => q,
        };
        let q = q.transpose(1, 2)?;
        // (B, T, G, D) -> (B, G, T, D)
        let k = qkv.narrow(2, nh, ng)?;
        let k = match &layer.k_norm {
            Some(w) => self.qk_norm(&k, w)?,
            None => k,
        };
        let k = k.transpose(1, 2)?;
        // Views of the projection's output: the rotary embedding below writes q and k out
        // contiguously, and attention reads v's rows where they are. An ablation acts on a
        // contiguous copy.
        let v = qkv.narrow(2, nh + ng, ng)?.transpose(1, 2)?;
        let ablate = |target: Target, x: Tensor| -> Result<Tensor> {
            Ok(match plan.and_then(|p| p.get(l, target)) {
                Some(m) => contiguous(&m.apply(&contiguous(&x)?)?)?,
                None => x,
            })
        };
        let (q, k) = (ablate(Target::Q, q)?, ablate(Target::K, k)?);
        let (cos_q, sin_q) = if only_last {
            (
                cos.narrow(1, t - 1, 1)?.contiguous()?,
                sin.narrow(1, t - 1, 1)?.contiguous()?,
            )
        } else {
            (cos.clone(), sin.clone())
        };
        let q = ops::rope(&q, &cos_q, &sin_q)?;
        let k = ops::rope(&k, &cos, &sin)?;
        // With a cache: views (B, G, S, D) of its buffers, rows contiguous.
        let (k, v) = match cache {
            Some(slot) => append_kv(slot, &k, &v, ctx.offset)?,
            None => (k, v),
        };
        let mask = self.mask(ctx, tq, cfg.sliding_window[l])?;
        let z_ablation = plan.and_then(|p| p.get(l, Target::Z));
        // (B, H) f32: each row's sink logits, −∞ where the plan drops a head's sink.
        let sinks = match &layer.sinks {
            None => None,
            Some(s) => {
                let s = s.reshape((1, nh))?;
                Some(match plan.and_then(|p| p.sink_drop(l)) {
                    Some(drop) => s.broadcast_add(drop)?,
                    None => s.broadcast_as((b, nh))?.contiguous()?,
                })
            }
        };
        let (z, pattern) = self.attend(
            &q,
            &k,
            &v,
            mask.as_ref(),
            sinks.as_ref(),
            z_ablation,
            plan.and_then(|p| p.patch(l)),
            want.pattern,
        )?;
        let z = match want.z_shift {
            Some(s) => z.broadcast_add(s)?,
            None => z,
        };
        // (B, Tq, H*D) -> (B, H, Tq, D)
        let z_out = match want.z {
            true => Some(contiguous(&z.reshape((b, tq, nh, hd))?.transpose(1, 2)?)?),
            false => None,
        };
        let attn_out = layer.attn.o_proj.forward(&z)?;
        let resid = if only_last {
            x.narrow(1, t - 1, 1)?
        } else {
            x.clone()
        };
        // Gemma 2 normalizes the attention output before the residual add, and has its own
        // norm before the MLP; OLMo 2 normalizes the attention output and nothing before the
        // MLP; Llama's post-attention norm is the one before the MLP.
        let (x, h2) = match &layer.pre_feedforward_layernorm {
            None if cfg.post_norms => {
                let x = (resid + self.rms_norm(&attn_out, &layer.post_attention_layernorm)?)?;
                (x.clone(), x)
            }
            Some(pre) => {
                let x = (resid + self.rms_norm(&attn_out, &layer.post_attention_layernorm)?)?;
                let h2 = self.rms_norm(&x, pre)?;
                (x, h2)
            }
            None => {
                let x = (resid + attn_out)?;
                let h2 = self.rms_norm(&x, &layer.post_attention_layernorm)?;
                (x, h2)
            }
        };
        // (B, Tq, d): the MLP, or the token's experts
        let mlp = layer.mlp.forward(&h2, cfg.activation)?;
        let mlp = match &layer.post_feedforward_layernorm {
            Some(post) => self.rms_norm(&mlp, post)?,
            None => mlp,
        };
        Ok(((x + mlp)?, pattern, z_out))
    }

    /// Attention of queries q (B, H, Tq, D) over keys and values k, v (B, G, S, D), each
    /// softmax joined by the head's sink logit where the model has sinks ((B, H) f32), with
    /// the head-output ablation `z_ablation` applied to z, then the head patches `patch`:
    /// returns z as (B, Tq, H·D) for `o_proj`, and the probabilities over the keys
    /// (B, H, Tq, S; a sink's share is not among them) when `want_pattern`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        sinks: Option<&Tensor>,
        z_ablation: Option<&HeadMix>,
        patch: Option<&Patch>,
        want_pattern: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cfg = &self.cfg;
        let (b, nh, tq, hd) = q.dims4()?;
        let ng = cfg.num_kv_heads;
        let s = k.dim(2)?;
        let rep = nh / ng;
        // The fused CPU kernel when it applies (float32 on CPU, no attention pattern asked
        // for, no autograd), else the generic operations below, which it is tested against.
        let fused = if want_pattern {
            None
        } else {
            crate::model::kernels::attention_f32(
                q,
                k,
                v,
                cfg.attn_scale,
                cfg.attn_softcap,
                mask,
                sinks,
            )?
        };
        Ok(match fused {
            Some(z) => {
                // (B, Tq, H, D); the v ablation acts on the (B, H, Tq, D) view.
                let z = match z_ablation {
                    Some(m) => contiguous(&m.apply(&z.transpose(1, 2)?)?.transpose(1, 2)?)?,
                    None => z,
                };
                let z = match patch {
                    Some(p) => contiguous(&p.apply(&z.transpose(1, 2)?)?.transpose(1, 2)?)?,
                    None => z,
                };
                (z.reshape((b, tq, nh * hd))?, None)
            }
            None => {
                // Grouped-query attention without copying keys: the `rep` query heads of a
                // group are contiguous, so (B, H, Tq, D) is viewed as (B, G, rep*Tq, D).
                let qg = q.reshape((b, ng, rep * tq, hd))?;
                // (B, G, rep*Tq, D) @ (B, G, D, S) -> (B, G, rep*Tq, S) -> (B, H, Tq, S)
                let k = contiguous(k)?;
                let scores = (qg.matmul(&k.t()?)? * cfg.attn_scale)?.reshape((b, nh, tq, s))?;
                // Gemma 2 soft-caps the scores before the mask.
                let scores = match cfg.attn_softcap {
                    Some(c) => ((scores / c)?.tanh()? * c)?,
                    None => scores,
                };
                let scores = scores.to_dtype(DType::F32)?;
                let scores = match mask {
                    Some(m) => scores.broadcast_add(m)?,
                    None => scores,
                };
                let probs = match sinks {
                    // The sink as one more key (B, H, Tq, 1), dropped after the softmax.
                    Some(sk) => {
                        let col = sk.reshape((b, nh, 1, 1))?.broadcast_as((b, nh, tq, 1))?;
                        let all = Tensor::cat(&[&scores, &col.contiguous()?], 3)?;
                        contiguous(&ops::softmax_last_dim(&all)?.narrow(3, 0, s)?)?
                    }
                    None => ops::softmax_last_dim(&scores)?,
                };
                let pattern = if want_pattern {
                    Some(probs.clone())
                } else {
                    None
                };
                // (B, G, rep*Tq, S) @ (B, G, S, D) -> (B, H, Tq, D)
                let mut z = probs
                    .to_dtype(self.dtype)?
                    .reshape((b, ng, rep * tq, s))?
                    .matmul(&contiguous(v)?)?
                    .reshape((b, nh, tq, hd))?;
                if let Some(m) = z_ablation {
                    z = m.apply(&z)?;
                }
                if let Some(p) = patch {
                    z = p.apply(&z)?;
                }
                // (B, H, Tq, D) -> (B, Tq, H*D)
                let z = contiguous(&z.transpose(1, 2)?)?.reshape((b, tq, nh * hd))?;
                (z, pattern)
            }
        })
    }
}

/// Appends one call's keys and values, k and v: (B, G, T, D), at position `offset` of a
/// layer's cache slot, and returns views of all cached keys and values, (B, G, offset + T, D).
///
/// The slot holds buffers with room to spare along the position axis, written in place, so
/// that a decoding step copies only its own keys and values (concatenating copied the whole
/// cache at every step). A buffer that is full is replaced by one half as large again (at
/// least 256 positions more), into which the cached positions are copied once.
fn append_kv(
    slot: &mut Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, g, t, d) = k.dims4()?;
    let need = offset + t;
    let (kb, vb) = match slot.take() {
        Some((kb, vb)) if kb.dim(2)? >= need => (kb, vb),
        old => {
            let cap = need + (need / 2).max(256);
            // (B, G, cap, D)
            let kb = Tensor::zeros((b, g, cap, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, g, cap, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = old {
                if offset > 0 {
                    kb.slice_set(&contiguous(&ok.narrow(2, 0, offset)?)?, 2, 0)?;
                    vb.slice_set(&contiguous(&ov.narrow(2, 0, offset)?)?, 2, 0)?;
                }
            }
            (kb, vb)
        }
    };
    kb.slice_set(&contiguous(k)?, 2, offset)?;
    vb.slice_set(&contiguous(v)?, 2, offset)?;
    let views = (kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?);
    *slot = Some((kb, vb));
    Ok(views)
}

/// Refuses a weight holding NaN or ±∞: a model computed from one gives numbers that mean
/// nothing. One reduction on the tensor's device; only a tensor that fails is read back to
/// find the first bad value.
fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    let sum = t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if sum.is_finite() {
        return Ok(());
    }
    let values: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFiniteWeight {
            name: name.to_string(),
            index,
            value: values[index],
            len: values.len(),
        }),
        // Finite values whose sum overflows.
        None => Ok(()),
    }
}

/// The same (out, in) matrix stored as a row-major (in, out) one (see
/// [`Linear::with_transposed_storage`]).
fn transposed_storage(w: &Tensor) -> Result<Tensor> {
    Ok(crate::model::kernels::weight_copy(&w.t()?)?.t()?)
}

/// GPT-OSS's experts of layer prefix `p` (`model.layers.{l}`): stored fused, (E, d, 2I) with
/// gate and up interleaved along the last axis and (E, I, d) for the down projection, each
/// with biases (MXFP4 checkpoints are dequantized by the source), and a router with a bias;
/// laid out as every other family's experts, a `[gate | up]` projection per expert.
fn gpt_oss_experts(
    moe: &crate::model::config::MoeConfig,
    d: usize,
    p: &str,
    load: &dyn Fn(&str, &[usize]) -> Result<Tensor>,
) -> Result<Experts> {
    let (e, i) = (moe.num_experts, moe.expert_intermediate_size);
    let b = format!("{p}.mlp");
    // (E, d, 2I) -> (E, d, I, 2): [.., 0] the gate's columns, [.., 1] the up projection's
    let gate_up =
        load(&format!("{b}.experts.gate_up_proj"), &[e, d, 2 * i])?.reshape((e, d, i, 2))?;
    // (E, 2I) -> (E, I, 2)
    let gate_up_bias =
        load(&format!("{b}.experts.gate_up_proj_bias"), &[e, 2 * i])?.reshape((e, i, 2))?;
    // (E, I, d), (E, d)
    let down = load(&format!("{b}.experts.down_proj"), &[e, i, d])?;
    let down_bias = load(&format!("{b}.experts.down_proj_bias"), &[e, d])?;
    let experts = (0..e)
        .map(|x| -> Result<Mlp> {
            // (d, I) each, as (out, in) = (I, d) rows: [gate | up] is (2I, d)
            let w = gate_up.get(x)?;
            let gate = w.narrow(2, 0, 1)?.squeeze(2)?.t()?;
            let up = w.narrow(2, 1, 1)?.squeeze(2)?.t()?;
            let bias = gate_up_bias.get(x)?;
            let bias = Tensor::cat(
                &[
                    &bias.narrow(1, 0, 1)?.squeeze(1)?,
                    &bias.narrow(1, 1, 1)?.squeeze(1)?,
                ],
                0,
            )?;
            Ok(Mlp {
                gate_up_proj: Linear::dense(
                    Tensor::cat(&[&gate, &up], 0)?.contiguous()?,
                    Some(bias),
                )
                .with_transposed_storage()?,
                // (I, d) -> (d, I) as (out, in)
                down_proj: Linear::dense(down.get(x)?.t()?.contiguous()?, Some(down_bias.get(x)?))
                    .with_transposed_storage()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let router = Linear::dense(
        load(&format!("{b}.router.weight"), &[e, d])?,
        Some(load(&format!("{b}.router.bias"), &[e])?),
    )
    .with_transposed_storage()?;
    Ok(Experts {
        router,
        experts,
        shared: None,
        top_k: moe.top_k,
        routing: Routing::TopKThenSoftmax,
        weights_in_f32: false,
    })
}

/// Loads config and decoder from a local model folder.
pub fn load_decoder(dir: &Path, dtype: DType, device: &Device) -> Result<Decoder> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::open_dir(dir)?;
    Decoder::load(cfg, &weights, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Activation;

    #[test]
    fn routing_takes_the_top_k_of_the_softmax_lower_index_first_on_ties() {
        // Two tokens, four experts. Token 0: logits 0, ln 3, ln 2, ln 2 -> probabilities
        // 1/8, 3/8, 2/8, 2/8: experts 1 and 2 (2 before 3 on the tie).
        let l = [0.0, 3f32.ln(), 2f32.ln(), 2f32.ln(), 5.0, 0.0, 0.0, 0.0];
        let plain = Routing::SoftmaxThenTopK { renormalize: false };
        let r = route(&l, 4, 2, plain);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(r[3].iter().all(|(t, _)| *t != 0));
        let w1 = r[1].iter().find(|(t, _)| *t == 0).unwrap().1;
        let w2 = r[2].iter().find(|(t, _)| *t == 0).unwrap().1;
        assert!(close(w1, 0.375) && close(w2, 0.25), "{w1} {w2}");
        // Token 1: expert 0 (e^5 / (e^5 + 3)), then expert 1 of the three equal ones.
        let p0 = 5f32.exp() / (5f32.exp() + 3.0);
        assert_eq!(r[0].len(), 1);
        assert!(r[0][0].0 == 1 && close(r[0][0].1, p0), "{:?}", r[0]);
        assert!(r[1].iter().any(|(t, _)| *t == 1));
        assert!(r[2].iter().all(|(t, _)| *t != 1) && r[3].is_empty());
        // Renormalized, token 0's two weights are 0.6 and 0.4.
        let n = route(&l, 4, 2, Routing::SoftmaxThenTopK { renormalize: true });
        let w1 = n[1].iter().find(|(t, _)| *t == 0).unwrap().1;
        let w2 = n[2].iter().find(|(t, _)| *t == 0).unwrap().1;
        assert!(close(w1, 0.6) && close(w2, 0.4), "{w1} {w2}");
        // GPT-OSS: the same experts, weighted by the softmax of their two logits alone:
        // ln 3 and ln 2 -> 3/5 and 2/5; token 1: e^5 / (e^5 + 1) and 1 / (e^5 + 1).
        let g = route(&l, 4, 2, Routing::TopKThenSoftmax);
        let w1 = g[1].iter().find(|(t, _)| *t == 0).unwrap().1;
        let w2 = g[2].iter().find(|(t, _)| *t == 0).unwrap().1;
        assert!(close(w1, 0.6) && close(w2, 0.4), "{w1} {w2}");
        let top = 5f32.exp() / (5f32.exp() + 1.0);
        assert!(g[0].len() == 1 && close(g[0][0].1, top), "{:?}", g[0]);
        let second = g[1].iter().find(|(t, _)| *t == 1).unwrap().1;
        assert!(close(second, 1.0 - top), "{second}");
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A fixed pseudo-random matrix: x_i = sin(i · 0.37 + seed).
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.37 + seed as f32).sin() * 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn mlp(d: usize, i: usize, seed: u64) -> Mlp {
        Mlp {
            gate_up_proj: Linear::dense(random(&[2 * i, d], seed), None),
            down_proj: Linear::dense(random(&[d, i], seed + 1), None),
        }
    }

    #[test]
    fn routed_experts_equal_every_expert_on_every_token_weighted_densely() {
        let (d, i, e, n) = (8, 6, 4, 5);
        for (routing, shared) in [
            (Routing::SoftmaxThenTopK { renormalize: false }, false),
            (Routing::SoftmaxThenTopK { renormalize: true }, true),
            (Routing::TopKThenSoftmax, false),
        ] {
            let experts = Experts {
                router: Linear::dense(random(&[e, d], 7), None),
                experts: (0..e).map(|k| mlp(d, i, 10 + 2 * k as u64)).collect(),
                shared: shared.then(|| (mlp(d, 3, 50), Linear::dense(random(&[1, d], 60), None))),
                top_k: 2,
                routing,
                weights_in_f32: true,
            };
            // (1, N, d)
            let x = random(&[1, n, d], 3);
            let got = experts.forward(&x, Activation::Silu).unwrap();
            // The naive path: all experts on all tokens, times a dense (N, E) routing matrix.
            let naive = experts.forward_dense(&x, Activation::Silu).unwrap();
            let flat = x.reshape((n, d)).unwrap();
            let logits: Vec<f32> = experts
                .router
                .forward(&flat)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut dense = vec![0f32; n * e];
            for (k, rows) in route(&logits, e, 2, routing).iter().enumerate() {
                for (t, w) in rows {
                    dense[*t as usize * e + k] = *w;
                }
            }
            let mut want = Tensor::zeros((n, d), DType::F32, &Device::Cpu).unwrap();
            for (k, m) in experts.experts.iter().enumerate() {
                let w = Tensor::from_vec(
                    (0..n).map(|t| dense[t * e + k]).collect::<Vec<_>>(),
                    (n, 1),
                    &Device::Cpu,
                )
                .unwrap();
                let y = m.forward(&flat, Activation::Silu).unwrap();
                want = (want + y.broadcast_mul(&w).unwrap()).unwrap();
            }
            if let Some((m, g)) = &experts.shared {
                let gate = candle_nn::ops::sigmoid(&g.forward(&flat).unwrap()).unwrap();
                let y = m.forward(&flat, Activation::Silu).unwrap();
                want = (want + y.broadcast_mul(&gate).unwrap()).unwrap();
            }
            let diff: f32 = (got.reshape((n, d)).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-6, "{diff}");
            let diff: f32 = (got - naive)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-6, "forward_dense: {diff}");
            // Every token reaches two experts, and some expert is not used by every token.
            let routes = route(&logits, e, 2, routing);
            assert_eq!(routes.iter().map(Vec::len).sum::<usize>(), 2 * n);
            assert!(routes.iter().any(|r| r.len() < n));
        }
    }
}
