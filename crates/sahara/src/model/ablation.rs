//! Head ablations as data: a value `(layer, head, target, op)` per intervention, passed per
//! batch row, compiled into per-layer head-mixing tensors the decoder applies.
//!
//! Every op is a linear map over the heads of one layer, applied independently at every
//! position: `scale(ε)` multiplies one head by ε, `mean` replaces one head by the mean over all
//! heads of the layer. A row's maps for one (layer, target) are combined into one
//! `n × n` matrix computed from the *unmodified* heads, so that several ablations in the same
//! layer do not depend on their order.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// Which per-head tensor an ablation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The head's query vectors, before the rotary embedding (TransformerLens `hook_q`).
    Q,
    /// The keys of the head's key/value group, before the rotary embedding (`hook_k`). With
    /// grouped-query attention this changes every query head of the group.
    K,
    /// The head's attention output, softmax times values, before `o_proj` (`hook_z`).
    V,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q" => Ok(Target::Q),
            "k" => Ok(Target::K),
            "v" => Ok(Target::V),
            other => Err(Error::InvalidArgument(format!(
                "unknown target {other:?}; expected q, k or v"
            ))),
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
}

impl Op {
    pub fn mode_str(self) -> &'static str {
        match self {
            Op::Scale(_) => "scale",
            Op::Mean => "mean",
        }
    }
    /// ε as written in outputs: a number for `scale`, null for `mean`.
    pub fn epsilon_json(self) -> serde_json::Value {
        match self {
            Op::Scale(e) => serde_json::json!(e),
            Op::Mean => serde_json::Value::Null,
        }
    }

    /// Builds an op from a mode name (`scale` or `mean`) and ε.
    pub fn from_mode(mode: &str, epsilon: f64) -> Result<Self> {
        match mode {
            "scale" => {
                if !epsilon.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "epsilon must be a finite number, got {epsilon}"
                    )));
                }
                Ok(Op::Scale(epsilon))
            }
            "mean" => Ok(Op::Mean),
            other => Err(Error::InvalidArgument(format!(
                "unknown mode {other:?}; expected scale or mean"
            ))),
        }
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
        HeadAblation {
            layer,
            head,
            target,
            op,
        }
    }

    /// The key/value head this ablation touches when its target is `k`.
    pub fn kv_head(&self, cfg: &ModelConfig) -> usize {
        self.head / cfg.group_size()
    }

    /// The query heads whose output changes: one head, or for `k` every head of the group.
    pub fn affected_query_heads(&self, cfg: &ModelConfig) -> std::ops::Range<usize> {
        match self.target {
            Target::K => {
                let g = cfg.group_size();
                let kv = self.head / g;
                kv * g..(kv + 1) * g
            }
            _ => self.head..self.head + 1,
        }
    }

    /// Checks the indices against the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if self.layer >= cfg.num_layers {
            return Err(Error::Ablation(format!(
                "layer {} out of range: the model has {} layers (0..{})",
                self.layer,
                cfg.num_layers,
                cfg.num_layers - 1
            )));
        }
        if self.head >= cfg.num_heads {
            return Err(Error::Ablation(format!(
                "head {} out of range: the model has {} attention heads per layer (0..{})",
                self.head,
                cfg.num_heads,
                cfg.num_heads - 1
            )));
        }
        if let Op::Scale(e) = self.op {
            if !e.is_finite() {
                return Err(Error::Ablation(format!("epsilon must be finite, got {e}")));
            }
        }
        Ok(())
    }
}

/// Parses `L:H[,L:H…]` into (layer, head) pairs.
pub fn parse_heads(s: &str) -> Result<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (l, h) = part.split_once(':').ok_or_else(|| {
            Error::InvalidArgument(format!("head {part:?} is not of the form LAYER:HEAD"))
        })?;
        let parse = |x: &str, what: &str| {
            x.trim().parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "{what} {x:?} in {part:?} is not a non-negative integer"
                ))
            })
        };
        out.push((parse(l, "layer")?, parse(h, "head")?));
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!("no heads in {s:?}")));
    }
    Ok(out)
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
        Ok(match self {
            HeadMix::Diag(f) => x.broadcast_mul(f)?,
            HeadMix::Full(m) => {
                let (b, n, t, d) = x.dims4()?;
                // (B, n, n) @ (B, n, T*D) -> (B, n, T*D)
                let y = m.matmul(&x.contiguous()?.reshape((b, n, t * d))?)?;
                y.reshape((b, n, t, d))?
            }
        })
    }
}

/// The compiled ablations of one batch: for every layer, an optional map per target.
#[derive(Debug, Clone)]
pub struct AblationPlan {
    /// Indexed by layer: (q, k, v) maps.
    layers: Vec<[Option<HeadMix>; 3]>,
    pub rows: usize,
}

impl AblationPlan {
    /// A plan that changes nothing.
    pub fn empty(cfg: &ModelConfig, rows: usize) -> Self {
        AblationPlan {
            layers: vec![[None, None, None]; cfg.num_layers],
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
        let b = rows.len();
        let mut plan = AblationPlan::empty(cfg, b);
        for row in rows {
            for a in row {
                a.validate(cfg)?;
            }
        }
        for layer in 0..cfg.num_layers {
            for (ti, target) in [Target::Q, Target::K, Target::V].into_iter().enumerate() {
                let n = if target == Target::K {
                    cfg.num_kv_heads
                } else {
                    cfg.num_heads
                };
                let touched = |a: &&HeadAblation| a.layer == layer && a.target == target;
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
                let mix = if any_mean {
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
                            }
                        }
                    }
                    HeadMix::Full(Tensor::from_vec(m, (b, n, n), device)?.to_dtype(dtype)?)
                } else {
                    let mut f = vec![1f32; b * n];
                    for (r, row) in rows.iter().enumerate() {
                        for a in row.iter().filter(touched) {
                            if let Op::Scale(e) = a.op {
                                f[r * n + index(a)] = e as f32;
                            }
                        }
                    }
                    HeadMix::Diag(Tensor::from_vec(f, (b, n, 1, 1), device)?.to_dtype(dtype)?)
                };
                plan.layers[layer][ti] = Some(mix);
            }
        }
        Ok(plan)
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&HeadMix> {
        let i = match target {
            Target::Q => 0,
            Target::K => 1,
            Target::V => 2,
        };
        self.layers.get(layer).and_then(|l| l[i].as_ref())
    }

    /// Keeps only the given rows (in order), e.g. when finished rows leave a batch.
    pub fn select_rows(&self, keep: &[usize]) -> Result<Self> {
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
        Ok(AblationPlan {
            layers,
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
    fn parse_heads_accepts_lists_and_rejects_garbage() {
        assert_eq!(parse_heads("0:1, 2:3").unwrap(), vec![(0, 1), (2, 3)]);
        assert!(parse_heads("0-1").is_err());
        assert!(parse_heads("a:1").is_err());
        assert!(parse_heads("").is_err());
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
