//! Head ablations as data: a value `(layer, head, target, op)` per intervention, passed per
//! batch row, compiled into per-layer head-mixing tensors the decoder applies.
//!
//! `scale` and `mean` are linear maps over the heads of one layer, applied independently at
//! every position: `scale(ε)` multiplies one head by ε, `mean` replaces one head by the mean
//! over all heads of the layer. A row's maps for one (layer, target) are combined into one
//! `n × n` matrix computed from the *unmodified* heads, so that several ablations in the same
//! layer do not depend on their order. `patch` (target v) replaces a head's output by another
//! prompt's, the [`PatchSource`] given with the plan; it is applied after the layer's maps.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};
use crate::model::config::ModelConfig;

/// Which per-head tensor an ablation touches (written `q`, `k`, `v` in flags and outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// The head's query vectors, before the rotary embedding (TransformerLens `hook_q`).
    #[serde(rename = "q")]
    Q,
    /// The keys of the head's key/value group, before the rotary embedding (`hook_k`). With
    /// grouped-query attention this changes every query head of the group.
    #[serde(rename = "k")]
    K,
    /// The head's attention output, softmax times values, before `o_proj` (TransformerLens
    /// `hook_z`); written `v`, as the paper's code names it.
    #[serde(rename = "v")]
    Z,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::Z => "v",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q" => Ok(Target::Q),
            "k" => Ok(Target::K),
            "v" => Ok(Target::Z),
            other => Err(Error::bad_value(
                Setting::Target,
                format!("{other:?}"),
                "expected q, k or v",
            )),
        }
    }
}

/// What an ablation does to the head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Multiply by ε.
    Scale(f64),
    /// Replace by the mean over all heads (key/value heads for `k`) of the layer.
    Mean,
    /// Replace the head's attention output (target `v` only) by the same head's output on
    /// another prompt, the patch source ([`PatchSource`]), given with the plan.
    Patch,
}

impl Op {
    pub fn mode_str(self) -> &'static str {
        match self {
            Op::Scale(_) => "scale",
            Op::Mean => "mean",
            Op::Patch => "patch",
        }
    }

    /// ε: a number for `scale`, none for `mean`.
    pub fn epsilon(self) -> Option<f64> {
        match self {
            Op::Scale(e) => Some(e),
            Op::Mean | Op::Patch => None,
        }
    }

    /// ε as written in outputs: a number for `scale`, null for `mean`.
    pub fn epsilon_json(self) -> serde_json::Value {
        serde_json::json!(self.epsilon())
    }

    /// Builds an op from a mode name (`scale` or `mean`) and ε.
    pub fn from_mode(mode: &str, epsilon: f64) -> Result<Self> {
        let op = match mode {
            "scale" => Op::Scale(epsilon),
            "mean" => Op::Mean,
            "patch" => Op::Patch,
            other => {
                return Err(Error::bad_value(
                    Setting::Mode,
                    format!("{other:?}"),
                    "expected scale, mean or patch",
                ))
            }
        };
        op.validate()?;
        Ok(op)
    }

    /// The one check of an op: ε is a finite number.
    pub fn validate(self) -> Result<()> {
        match self {
            Op::Scale(e) if !e.is_finite() => Err(Error::bad_value(
                Setting::Epsilon,
                e,
                "must be a finite number",
            )),
            _ => Ok(()),
        }
    }
}

/// What a q/k ablation does to an ablated head's attention sink (GPT-OSS's learned per-head
/// logit, which joins the head's softmax over the keys and takes probability mass without a
/// value). Scaling a query by ε sends its logits over the keys to ~0 while the sink's logit
/// s is a parameter, not a product with the query: the head then attends `e^s : 1 : … : 1`
/// over (sink, keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkPolicy {
    /// The sink keeps its logit: the keys share what it leaves, uniformly for a scaled query.
    #[default]
    Keep,
    /// The ablated head's sink leaves its softmax: its share goes to the keys as well (a
    /// scaled query then attends uniformly over the keys, as in a model without sinks).
    Drop,
}

impl SinkPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkPolicy::Keep => "keep",
            SinkPolicy::Drop => "drop",
        }
    }
}

impl std::str::FromStr for SinkPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep" => Ok(SinkPolicy::Keep),
            "drop" => Ok(SinkPolicy::Drop),
            other => Err(Error::bad_value(
                Setting::Sink,
                format!("{other:?}"),
                "expected keep or drop",
            )),
        }
    }
}

/// What an ablation does, independent of the heads it is applied to: the target tensor and
/// the op. It owns the rule of which query heads an ablation of a head really changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ablation {
    pub target: Target,
    pub op: Op,
}

/// Query heads that one ablation changes together and that are therefore scored as one: a
/// single head for targets q and v, the listed heads of a key/value group for k.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub layer: usize,
    /// The head run for the unit: the first of `heads`.
    pub head: usize,
    /// The listed query heads the unit changes, ascending.
    pub heads: Vec<usize>,
}

impl Ablation {
    /// An ablation, its op checked: a patch replaces attention outputs, target `v`.
    pub fn new(target: Target, op: Op) -> Result<Self> {
        op.validate()?;
        if op == Op::Patch && target != Target::Z {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: format!(
                    "patch replaces a head's attention output: it takes target v, not {}",
                    target.as_str()
                ),
            });
        }
        Ok(Ablation { target, op })
    }

    /// The paper's default: target q, scale by 1e-5.
    pub fn paper_default() -> Self {
        Ablation {
            target: Target::Q,
            op: Op::Scale(1e-5),
        }
    }

    /// This ablation of one head.
    pub fn at(self, layer: usize, head: usize) -> HeadAblation {
        HeadAblation {
            layer,
            head,
            target: self.target,
            op: self.op,
        }
    }

    /// This ablation of each head of a list.
    pub fn of(self, heads: &[(usize, usize)]) -> Vec<HeadAblation> {
        heads.iter().map(|&(l, h)| self.at(l, h)).collect()
    }

    /// The query heads of a layer whose output changes when `head` is ablated: the head
    /// itself, or for `k` every head of its key/value group.
    pub fn changed_heads(self, cfg: &ModelConfig, head: usize) -> std::ops::Range<usize> {
        match self.target {
            Target::K => {
                let g = cfg.group_size();
                let kv = head / g;
                kv * g..(kv + 1) * g
            }
            _ => head..head + 1,
        }
    }

    /// Every query head that ablating all of `heads` changes, (layer, head) in order of first
    /// appearance.
    pub fn changed_by(self, cfg: &ModelConfig, heads: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for &(l, h) in heads {
            for q in self.changed_heads(cfg, h) {
                if !out.contains(&(l, q)) {
                    out.push((l, q));
                }
            }
        }
        out
    }

    /// Whether ablating `a` and ablating `b` change the same query heads.
    pub fn same_unit(self, cfg: &ModelConfig, a: (usize, usize), b: (usize, usize)) -> bool {
        a.0 == b.0 && self.changed_heads(cfg, a.1).contains(&b.1)
    }

    /// The units among `heads` (listed in (layer, head) order): one per head for q and v; for
    /// k one per key/value group, run by its first listed head, whose score every listed head
    /// of the group shares.
    pub fn units(self, cfg: &ModelConfig, heads: &[(usize, usize)]) -> Vec<Unit> {
        let mut out: Vec<Unit> = Vec::new();
        for &(l, h) in heads {
            match out.last_mut() {
                Some(u) if self.same_unit(cfg, (u.layer, u.head), (l, h)) => u.heads.push(h),
                _ => out.push(Unit {
                    layer: l,
                    head: h,
                    heads: vec![h],
                }),
            }
        }
        out
    }

    /// For `k` on a model with grouped-query attention, the note users need: one ablation
    /// changes a whole group.
    pub fn shared_note(self, cfg: &ModelConfig) -> Option<String> {
        (self.target == Target::K && cfg.group_size() > 1).then(|| {
            format!(
                "target k ablates a key/value head shared by {} query heads",
                cfg.group_size()
            )
        })
    }
}

/// One head ablation. `head` is always a query-head index; for [`Target::K`] the ablated
/// key/value head is `head / group_size` (see [`HeadAblation::kv_head`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadAblation {
    pub layer: usize,
    pub head: usize,
    pub target: Target,
    pub op: Op,
}

impl HeadAblation {
    pub fn new(layer: usize, head: usize, target: Target, op: Op) -> Self {
        Ablation { target, op }.at(layer, head)
    }

    /// Target and op.
    pub fn ablation(&self) -> Ablation {
        Ablation {
            target: self.target,
            op: self.op,
        }
    }

    /// The key/value head this ablation touches when its target is `k`.
    pub fn kv_head(&self, cfg: &ModelConfig) -> usize {
        self.head / cfg.group_size()
    }

    /// The query heads whose output changes: one head, or for `k` every head of the group.
    pub fn affected_query_heads(&self, cfg: &ModelConfig) -> std::ops::Range<usize> {
        self.ablation().changed_heads(cfg, self.head)
    }

    /// For `k` with grouped-query attention: which key/value head this changes, and for which
    /// query heads.
    pub fn shared_note(&self, cfg: &ModelConfig) -> Option<String> {
        self.ablation().shared_note(cfg)?;
        let r = self.affected_query_heads(cfg);
        Some(format!(
            "k ablation of {}:{} changes key/value head {} of layer {}, shared by query heads {}..{}",
            self.layer,
            self.head,
            self.kv_head(cfg),
            self.layer,
            r.start,
            r.end - 1
        ))
    }

    /// Checks the indices against the model, and the op.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        HeadSet::check_head(cfg, self.layer, self.head)?;
        self.op.validate()
    }
}

/// A list of heads, `(layer, head)`, as `L:H[,L:H…]` in flags and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadSet(pub Vec<(usize, usize)>);

impl HeadSet {
    /// Parses `L:H[,L:H…]`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (l, h) = part.split_once(':').ok_or_else(|| {
                Error::Ablation(format!("head {part:?} is not of the form LAYER:HEAD (L:H)"))
            })?;
            let parse = |x: &str, what: &str| {
                x.trim().parse::<usize>().map_err(|_| {
                    Error::Ablation(format!(
                        "{what} {x:?} in {part:?} is not a non-negative integer"
                    ))
                })
            };
            out.push((parse(l, "layer")?, parse(h, "head")?));
        }
        if out.is_empty() {
            return Err(Error::Ablation(format!("no heads in {s:?}")));
        }
        Ok(HeadSet(out))
    }

    /// `L:H,L:H…`
    pub fn name(&self) -> String {
        self.0
            .iter()
            .map(|(l, h)| format!("{l}:{h}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks every head against the model and that none is listed twice.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        for (i, &(l, h)) in self.0.iter().enumerate() {
            if self.0[..i].contains(&(l, h)) {
                return Err(Error::Ablation(format!("head {l}:{h} is listed twice")));
            }
            Self::check_head(cfg, l, h)?;
        }
        Ok(())
    }

    /// One head against the model.
    fn check_head(cfg: &ModelConfig, layer: usize, head: usize) -> Result<()> {
        if layer >= cfg.num_layers {
            return Err(Error::Ablation(format!(
                "head {layer}:{head}: layer {layer} out of range: the model has {} layers (0..{})",
                cfg.num_layers,
                cfg.num_layers - 1
            )));
        }
        if head >= cfg.num_heads {
            return Err(Error::Ablation(format!(
                "head {layer}:{head}: head {head} out of range: the model has {} attention heads per layer (0..{})",
                cfg.num_heads,
                cfg.num_heads - 1
            )));
        }
        Ok(())
    }

    /// As `[[layer, head], …]` for outputs.
    pub fn pairs(&self) -> Vec<[usize; 2]> {
        self.0.iter().map(|&(l, h)| [l, h]).collect()
    }
}

/// A linear map over the heads of one layer, for every row of a batch.
#[derive(Debug, Clone)]
pub enum HeadMix {
    /// Per row and head, a factor: shape (B, n, 1, 1).
    Diag(Tensor),
    /// Per row, an n × n matrix applied on the head axis: shape (B, n, n).
    Full(Tensor),
}

impl HeadMix {
    /// Applies the map to `x` of shape (B, n, T, D).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        // A plan made for one device applied on another part of a split decoder (plans made
        // by `Decoder::ablation_plan` are already where their layers are).
        let here = |t: &Tensor| -> Result<Tensor> {
            match t.device().same_device(x.device()) {
                true => Ok(t.clone()),
                false => crate::device::transfers::between(t, x.device()),
            }
        };
        Ok(match self {
            HeadMix::Diag(f) => x.broadcast_mul(&here(f)?)?,
            HeadMix::Full(m) => {
                let m = here(m)?;
                let (b, n, t, d) = x.dims4()?;
                // (B, n, n) @ (B, n, T*D) -> (B, n, T*D)
                let y = m.matmul(&x.contiguous()?.reshape((b, n, t * d))?)?;
                y.reshape((b, n, t, d))?
            }
        })
    }
}

/// The patch source of [`Op::Patch`]: one prompt's attention outputs (TransformerLens
/// `hook_z`) at every layer, at the positions that are patched, aligned at the end: the last
/// position alone, or every position of a source as long as the patched prompt.
#[derive(Debug, Clone)]
pub struct PatchSource {
    /// Per layer: (H, Tp, D), on that layer's device, in the decoder's dtype.
    pub z: Vec<Tensor>,
}

/// A layer's patches for every row: applied to z after the layer's v maps, they replace the
/// patched heads' outputs at the last `Tp` positions by the source's.
#[derive(Debug, Clone)]
pub struct Patch {
    /// (B, H, 1, 1): 1 for a patched head, 0 for the others; and `keep` = 1 − `mask`.
    mask: Tensor,
    keep: Tensor,
    /// (1, H, Tp, D): the source's outputs, shared by every row.
    source: Tensor,
}

impl Patch {
    /// Applies the patches to z of shape (B, H, Tq, D): positions are aligned at the end, so
    /// a call computing only the last position gets the source's last position.
    pub fn apply(&self, z: &Tensor) -> Result<Tensor> {
        let tq = z.dim(2)?;
        let tp = self.source.dim(2)?;
        let here = |t: &Tensor| -> Result<Tensor> {
            match t.device().same_device(z.device()) {
                true => Ok(t.clone()),
                false => crate::device::transfers::between(t, z.device()),
            }
        };
        let (mask, keep, source) = (here(&self.mask)?, here(&self.keep)?, here(&self.source)?);
        // (B, H, n, D) * keep + (1, H, n, D) * mask, over the last n = min(Tq, Tp) positions.
        let n = tp.min(tq);
        let src = source.narrow(2, tp - n, n)?.broadcast_mul(&mask)?;
        let tail = z.narrow(2, tq - n, n)?.broadcast_mul(&keep)?.add(&src)?;
        Ok(if n == tq {
            tail
        } else {
            Tensor::cat(&[&z.narrow(2, 0, tq - n)?, &tail], 2)?
        })
    }

    fn rows(&self, rows: usize) -> Result<Patch> {
        Ok(Patch {
            mask: self.mask.narrow(0, 0, rows)?,
            keep: self.keep.narrow(0, 0, rows)?,
            source: self.source.clone(),
        })
    }
}

/// The compiled ablations of one batch: for every layer, an optional map per target, and
/// the patches of [`Op::Patch`].
#[derive(Debug, Clone)]
pub struct AblationPlan {
    /// Indexed by layer: (q, k, v) maps.
    layers: Vec<[Option<HeadMix>; 3]>,
    /// Indexed by layer.
    patches: Vec<Option<Patch>>,
    /// Indexed by layer, with [`SinkPolicy::Drop`] on a model with sinks: (B, H) f32, added
    /// to the sink logits, −∞ for each head a row's q/k ablations change, else 0.
    sink_drops: Vec<Option<Tensor>>,
    pub rows: usize,
}

impl AblationPlan {
    /// A plan that changes nothing.
    pub fn empty(cfg: &ModelConfig, rows: usize) -> Self {
        AblationPlan {
            layers: vec![[None, None, None]; cfg.num_layers],
            patches: vec![None; cfg.num_layers],
            sink_drops: vec![None; cfg.num_layers],
            rows,
        }
    }

    /// Compiles per-row ablation sets (one entry per batch row) into head maps in `dtype`.
    pub fn new(
        cfg: &ModelConfig,
        rows: &[Vec<HeadAblation>],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let single = crate::model::decoder::DevicePlan::single(device, cfg.num_layers);
        Self::placed(cfg, rows, dtype, &single)
    }

    /// [`AblationPlan::new`] with each layer's maps on that layer's device of `placement`:
    /// one upload per part of the decoder.
    pub fn placed(
        cfg: &ModelConfig,
        rows: &[Vec<HeadAblation>],
        dtype: DType,
        placement: &crate::model::decoder::DevicePlan,
    ) -> Result<Self> {
        Self::placed_with(cfg, rows, dtype, placement, None, SinkPolicy::Keep)
    }

    /// [`AblationPlan::placed`] with the source of the rows' patches ([`Op::Patch`]), which
    /// they need, and what q/k ablations do to attention sinks (for a model with sinks).
    pub fn placed_with(
        cfg: &ModelConfig,
        rows: &[Vec<HeadAblation>],
        dtype: DType,
        placement: &crate::model::decoder::DevicePlan,
        source: Option<&PatchSource>,
        sink: SinkPolicy,
    ) -> Result<Self> {
        let b = rows.len();
        let mut plan = AblationPlan::empty(cfg, b);
        plan.patches = Self::patches(cfg, rows, dtype, source)?;
        if sink == SinkPolicy::Drop && cfg.attention_sinks {
            plan.sink_drops = Self::sink_drops(cfg, rows, placement)?;
        }
        // Every map's values go into one host buffer per part of the decoder, copied to the
        // part's device once for the whole plan (not once per layer):
        // (layer, target, is-full, offset, shape).
        let mut parts: Vec<Vec<f32>> = vec![Vec::new(); placement.devices.len()];
        let mut values: Vec<f32> = Vec::new();
        let mut entries: Vec<(usize, usize, bool, usize, Vec<usize>)> = Vec::new();
        for row in rows {
            for a in row {
                a.validate(cfg)?;
            }
        }
        for layer in 0..cfg.num_layers {
            if layer > 0 && placement.part(layer) != placement.part(layer - 1) {
                parts[placement.part(layer - 1)] = std::mem::take(&mut values);
            }
            for (ti, target) in [Target::Q, Target::K, Target::Z].into_iter().enumerate() {
                let n = if target == Target::K {
                    cfg.num_kv_heads
                } else {
                    cfg.num_heads
                };
                // Patches are applied after the maps (see `Patch`), not as one of them.
                let touched =
                    |a: &&HeadAblation| a.layer == layer && a.target == target && a.op != Op::Patch;
                if !rows.iter().any(|r| r.iter().any(|a| touched(&a))) {
                    continue;
                }
                let any_mean = rows
                    .iter()
                    .any(|r| r.iter().filter(touched).any(|a| a.op == Op::Mean));
                let index = |a: &HeadAblation| {
                    if target == Target::K {
                        a.kv_head(cfg)
                    } else {
                        a.head
                    }
                };
                if any_mean {
                    let mut m = vec![0f32; b * n * n];
                    for (r, row) in rows.iter().enumerate() {
                        let base = r * n * n;
                        for i in 0..n {
                            m[base + i * n + i] = 1.0;
                        }
                        for a in row.iter().filter(touched) {
                            let i = index(a);
                            let rowm = &mut m[base + i * n..base + (i + 1) * n];
                            match a.op {
                                Op::Scale(e) => {
                                    rowm.iter_mut().for_each(|x| *x = 0.0);
                                    rowm[i] = e as f32;
                                }
                                Op::Mean => rowm.iter_mut().for_each(|x| *x = 1.0 / n as f32),
                                Op::Patch => unreachable!("patches are not maps"),
                            }
                        }
                    }
                    entries.push((layer, ti, true, values.len(), vec![b, n, n]));
                    values.extend(m);
                } else {
                    let mut f = vec![1f32; b * n];
                    for (r, row) in rows.iter().enumerate() {
                        for a in row.iter().filter(touched) {
                            if let Op::Scale(e) = a.op {
                                f[r * n + index(a)] = e as f32;
                            }
                        }
                    }
                    entries.push((layer, ti, false, values.len(), vec![b, n, 1, 1]));
                    values.extend(f);
                };
            }
        }
        if entries.is_empty() {
            return Ok(plan);
        }
        parts[placement.part(cfg.num_layers.saturating_sub(1))] = values;
        let mut uploaded: Vec<Option<Tensor>> = Vec::with_capacity(parts.len());
        for (i, v) in parts.into_iter().enumerate() {
            uploaded.push(match v.len() {
                0 => None,
                n => Some(
                    crate::device::transfers::upload(v, n, &placement.devices[i])?
                        .to_dtype(dtype)?,
                ),
            });
        }
        for (layer, ti, full, offset, shape) in entries {
            let len = shape.iter().product();
            let all = uploaded[placement.part(layer)]
                .as_ref()
                .expect("a part with maps was uploaded");
            let t = all.narrow(0, offset, len)?.reshape(shape)?;
            plan.layers[layer][ti] = Some(if full {
                HeadMix::Full(t)
            } else {
                HeadMix::Diag(t)
            });
        }
        Ok(plan)
    }

    /// The patches of each layer: a (B, H) mask of the patched heads per layer that has one.
    fn patches(
        cfg: &ModelConfig,
        rows: &[Vec<HeadAblation>],
        dtype: DType,
        source: Option<&PatchSource>,
    ) -> Result<Vec<Option<Patch>>> {
        let (b, nh) = (rows.len(), cfg.num_heads);
        let mut out = vec![None; cfg.num_layers];
        for (layer, slot) in out.iter_mut().enumerate() {
            let patched = |a: &&HeadAblation| a.layer == layer && a.op == Op::Patch;
            if !rows.iter().any(|r| r.iter().any(|a| patched(&a))) {
                continue;
            }
            let src = source.ok_or_else(|| {
                Error::Ablation(
                    "a head patch needs its source: the prompt whose head outputs replace the patched prompt's"
                        .into(),
                )
            })?;
            let z = src.z.get(layer).ok_or_else(|| {
                Error::InvalidArgument(format!("the patch source has no layer {layer}"))
            })?;
            let mut mask = vec![0f32; b * nh];
            for (r, row) in rows.iter().enumerate() {
                for a in row.iter().filter(patched) {
                    mask[r * nh + a.head] = 1.0;
                }
            }
            // (B, H, 1, 1)
            let mask = crate::device::transfers::upload(mask, (b, nh, 1, 1), z.device())?
                .to_dtype(dtype)?;
            let keep = mask.affine(-1.0, 1.0)?;
            *slot = Some(Patch {
                mask,
                keep,
                source: z.unsqueeze(0)?,
            });
        }
        Ok(out)
    }

    /// Per layer with a q/k ablation in some row, (B, H) f32 on the layer's device: −∞ for
    /// each query head whose sink a row drops (the heads its q/k ablations change), else 0.
    fn sink_drops(
        cfg: &ModelConfig,
        rows: &[Vec<HeadAblation>],
        placement: &crate::model::decoder::DevicePlan,
    ) -> Result<Vec<Option<Tensor>>> {
        let (b, nh) = (rows.len(), cfg.num_heads);
        let mut out = vec![None; cfg.num_layers];
        for (layer, slot) in out.iter_mut().enumerate() {
            let qk = |a: &&HeadAblation| a.layer == layer && a.target != Target::Z;
            if !rows.iter().any(|r| r.iter().any(|a| qk(&a))) {
                continue;
            }
            let mut add = vec![0f32; b * nh];
            for (r, row) in rows.iter().enumerate() {
                for a in row.iter().filter(qk) {
                    for h in a.affected_query_heads(cfg) {
                        add[r * nh + h] = f32::NEG_INFINITY;
                    }
                }
            }
            *slot = Some(crate::device::transfers::upload(
                add,
                (b, nh),
                placement.layer_device(layer),
            )?);
        }
        Ok(out)
    }

    /// The additions to a layer's sink logits ([`SinkPolicy::Drop`]), (B, H) f32.
    pub fn sink_drop(&self, layer: usize) -> Option<&Tensor> {
        self.sink_drops.get(layer).and_then(Option::as_ref)
    }

    /// The patches of a layer ([`Op::Patch`]).
    pub fn patch(&self, layer: usize) -> Option<&Patch> {
        self.patches.get(layer).and_then(Option::as_ref)
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&HeadMix> {
        let i = match target {
            Target::Q => 0,
            Target::K => 1,
            Target::Z => 2,
        };
        self.layers.get(layer).and_then(|l| l[i].as_ref())
    }

    /// The plan of the first `rows` rows: views of this plan's maps, nothing copied.
    pub fn prefix(&self, rows: usize) -> Result<Self> {
        if rows > self.rows {
            return Err(Error::InvalidArgument(format!(
                "a prefix of {rows} rows of a plan of {}",
                self.rows
            )));
        }
        let narrow = |m: &HeadMix| -> Result<HeadMix> {
            Ok(match m {
                HeadMix::Diag(t) => HeadMix::Diag(t.narrow(0, 0, rows)?),
                HeadMix::Full(t) => HeadMix::Full(t.narrow(0, 0, rows)?),
            })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut out: [Option<HeadMix>; 3] = [None, None, None];
            for (i, m) in l.iter().enumerate() {
                out[i] = m.as_ref().map(narrow).transpose()?;
            }
            layers.push(out);
        }
        let patches = self
            .patches
            .iter()
            .map(|p| p.as_ref().map(|p| p.rows(rows)).transpose())
            .collect::<Result<_>>()?;
        let sink_drops = self
            .sink_drops
            .iter()
            .map(|t| t.as_ref().map(|t| t.narrow(0, 0, rows)).transpose())
            .collect::<candle_core::Result<_>>()?;
        Ok(AblationPlan {
            layers,
            patches,
            sink_drops,
            rows,
        })
    }

    /// Keeps only the given rows (in order), e.g. when finished rows leave a batch.
    pub fn select_rows(&self, keep: &[usize]) -> Result<Self> {
        if self.patches.iter().any(Option::is_some) {
            return Err(Error::Ablation(
                "head patches score one prompt's next token; they do not take part in generation"
                    .into(),
            ));
        }
        let idx = Tensor::from_vec(
            keep.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            keep.len(),
            &Device::Cpu,
        )?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut out: [Option<HeadMix>; 3] = [None, None, None];
            for (i, m) in l.iter().enumerate() {
                out[i] = match m {
                    None => None,
                    Some(HeadMix::Diag(t)) => Some(HeadMix::Diag(
                        t.index_select(&idx.to_device(t.device())?, 0)?,
                    )),
                    Some(HeadMix::Full(t)) => Some(HeadMix::Full(
                        t.index_select(&idx.to_device(t.device())?, 0)?,
                    )),
                };
            }
            layers.push(out);
        }
        let sink_drops = self
            .sink_drops
            .iter()
            .map(|t| {
                t.as_ref()
                    .map(|t| t.index_select(&idx.to_device(t.device())?, 0))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AblationPlan {
            layers,
            patches: self.patches.clone(),
            sink_drops,
            rows: keep.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RawConfig;

    fn cfg() -> ModelConfig {
        let raw: RawConfig = serde_json::from_str(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        ModelConfig::resolve(&raw).unwrap()
    }

    #[test]
    fn head_sets_parse_lists_and_reject_garbage() {
        let s = HeadSet::parse("0:1, 2:3").unwrap();
        assert_eq!(s.0, vec![(0, 1), (2, 3)]);
        assert_eq!(s.name(), "0:1,2:3");
        assert!(HeadSet::parse("0-1").is_err());
        assert!(HeadSet::parse("a:1").is_err());
        assert!(HeadSet::parse("").is_err());
        let c = cfg();
        assert!(HeadSet::parse("0:1,0:1").unwrap().check(&c).is_err());
        assert!(HeadSet::parse("0:1,1:3").unwrap().check(&c).is_ok());
    }

    #[test]
    fn units_group_k_ablations_by_key_value_head() {
        let c = cfg(); // 4 query heads, 2 key/value heads
        let heads: Vec<(usize, usize)> = (0..2).flat_map(|l| (1..4).map(move |h| (l, h))).collect();
        let k = Ablation::new(Target::K, Op::Mean).unwrap();
        let units = k.units(&c, &heads);
        let got: Vec<(usize, usize, Vec<usize>)> = units
            .into_iter()
            .map(|u| (u.layer, u.head, u.heads))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1, vec![1]),
                (0, 2, vec![2, 3]),
                (1, 1, vec![1]),
                (1, 2, vec![2, 3])
            ]
        );
        let q = Ablation::new(Target::Q, Op::Mean).unwrap();
        assert_eq!(q.units(&c, &heads).len(), heads.len());
        assert_eq!(
            k.changed_by(&c, &[(1, 3), (1, 2), (0, 0)]),
            vec![(1, 2), (1, 3), (0, 0), (0, 1)]
        );
        assert!(k.shared_note(&c).is_some() && q.shared_note(&c).is_none());
    }

    #[test]
    fn a_non_finite_epsilon_is_refused_by_the_one_check() {
        assert!(Op::from_mode("scale", f64::NAN).is_err());
        assert!(Ablation::new(Target::Q, Op::Scale(f64::INFINITY)).is_err());
        let e = HeadAblation::new(0, 0, Target::Q, Op::Scale(f64::NAN)).validate(&cfg());
        assert!(matches!(
            e,
            Err(Error::BadValue {
                setting: Setting::Epsilon,
                ..
            })
        ));
    }

    #[test]
    fn k_ablation_reports_its_whole_group() {
        let c = cfg();
        let a = HeadAblation::new(0, 3, Target::K, Op::Scale(0.0));
        assert_eq!(a.kv_head(&c), 1);
        assert_eq!(a.affected_query_heads(&c), 2..4);
        let q = HeadAblation::new(0, 3, Target::Q, Op::Scale(0.0));
        assert_eq!(q.affected_query_heads(&c), 3..4);
    }

    #[test]
    fn out_of_range_heads_are_refused() {
        let c = cfg();
        let e = HeadAblation::new(2, 0, Target::Q, Op::Mean)
            .validate(&c)
            .unwrap_err();
        assert!(e.to_string().contains("layer 2 out of range"), "{e}");
        let e = HeadAblation::new(0, 4, Target::Q, Op::Mean)
            .validate(&c)
            .unwrap_err();
        assert!(e.to_string().contains("head 4 out of range"), "{e}");
    }

    #[test]
    fn plan_scales_and_means_per_row() {
        let c = cfg();
        let rows = vec![
            vec![HeadAblation::new(1, 2, Target::Q, Op::Scale(0.5))],
            vec![HeadAblation::new(1, 0, Target::Q, Op::Mean)],
            vec![],
        ];
        let plan = AblationPlan::new(&c, &rows, DType::F32, &Device::Cpu).unwrap();
        assert!(plan.get(0, Target::Q).is_none());
        assert!(plan.get(1, Target::K).is_none());
        // x: (3 rows, 4 heads, T=1, D=1), head i holds value i+1.
        let x = Tensor::from_vec(
            (0..3).flat_map(|_| [1f32, 2., 3., 4.]).collect::<Vec<_>>(),
            (3, 4, 1, 1),
            &Device::Cpu,
        )
        .unwrap();
        let y = plan.get(1, Target::Q).unwrap().apply(&x).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&y[0..4], &[1., 2., 1.5, 4.]);
        assert_eq!(&y[4..8], &[2.5, 2., 3., 4.]);
        assert_eq!(&y[8..12], &[1., 2., 3., 4.]);
    }
}
