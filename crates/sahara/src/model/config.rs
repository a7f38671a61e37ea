//! Model configuration in two stages: [`RawConfig`] mirrors `config.json` as written by
//! transformers (every field optional), and [`ModelConfig`] is the resolved configuration with
//! every family default filled in, which drives the single decoder in [`crate::model`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// A raw mirror of `config.json`. Unknown keys are ignored; nothing is defaulted here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    /// transformers 5 keeps `rope_theta` and the scaling in one object (Gemma 3: one per
    /// layer type, `full_attention` and `sliding_attention`).
    pub rope_parameters: Option<Value>,
    /// Gemma 3: the rotary base of the sliding-window layers.
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3 before `layer_types`: every n-th layer is global, the others slide.
    pub sliding_window_pattern: Option<usize>,
    /// EmbeddingGemma's bidirectional attention (not a causal language model).
    pub use_bidirectional_attention: Option<bool>,
    /// The language model's configuration inside a multimodal one (Gemma 3).
    pub text_config: Option<Box<RawConfig>>,
    /// Qwen2-MoE's name for q/k/v biases.
    pub qkv_bias: Option<bool>,
    /// Mixtral's number of experts.
    pub num_local_experts: Option<usize>,
    /// The number of experts (Qwen MoE, OLMoE).
    pub num_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub moe_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub decoder_sparse_step: Option<usize>,
    pub mlp_only_layers: Option<Vec<usize>>,
    /// OLMoE's clamp of queries, keys and values (not supported).
    pub clip_qkv: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub vocab_size: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    /// `null`, absent, or a number; kept raw to tell absent (`None`) from null.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Value>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub hidden_act: Option<String>,
    /// Gemma's name for the MLP activation (preferred over `hidden_act` when present).
    pub hidden_activation: Option<String>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: Option<f64>,
    /// Phi-3 keeps the pre-extension context length at the top level.
    pub original_max_position_embeddings: Option<usize>,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
    pub pad_token_id: Option<Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    /// GPT-OSS's clamped SwiGLU: the sigmoid's gain and the clamp.
    pub swiglu_alpha: Option<f64>,
    pub swiglu_limit: Option<f64>,
}

pub use crate::model::family::Family;
use crate::model::family::{supported_hf_classes, WindowLayers};

/// Rotary embedding frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3 LongRoPE: per-frequency factors, the long set once a sequence is longer than
    /// `original_max_position_embeddings`, and cos/sin multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
    /// YaRN (GPT-OSS): each frequency blended between its original and its value divided by
    /// `factor` by a linear ramp over the dimensions from `beta_fast` to `beta_slow`
    /// rotations in the original context, and cos/sin multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_position_embeddings: f64,
        truncate: bool,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The factor cos and sin are multiplied by (LongRoPE, YaRN), else 1.
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::LongRope {
                attention_factor, ..
            }
            | RopeScaling::Yarn {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }
}

/// Hidden activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// GPT-OSS's experts: `(clamp(up, ±limit) + 1) · g σ(alpha g)` with `g = min(gate, limit)`.
    ClampedSwiglu {
        alpha: f32,
        limit: f32,
    },
}

/// A mixture of experts in place of the MLP, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Intermediate size of one expert's gated MLP.
    pub expert_intermediate_size: usize,
    /// The top-k weights divided by their sum.
    pub renormalize: bool,
    /// Qwen2-MoE's shared expert: its intermediate size.
    pub shared_intermediate_size: Option<usize>,
    /// Per layer: experts (true) or the dense MLP of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
    /// Mixtral's tensor names (`block_sparse_moe.experts.{e}.w1/w3/w2`).
    pub mixtral_names: bool,
    /// GPT-OSS: the top k of the router's logits (it has a bias) softmaxed among themselves,
    /// and the experts stored fused as 3-D tensors with biases (see
    /// [`crate::model::family::MoeRow::gpt_oss`]).
    pub gpt_oss: bool,
}

/// The resolved configuration: every value the decoder needs, defaults applied.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: String,
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The rotary base of sliding-window layers, without scaling, where it differs from the
    /// global one (Gemma 3); `None`: every layer uses `rope_theta` and `rope_scaling`.
    pub rope_local_theta: Option<f64>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per layer: the sliding attention window (a key j is visible from query i when
    /// `i - j < window`), or `None` for full causal attention.
    pub sliding_window: Vec<Option<usize>>,
    pub activation: Activation,
    /// Norm weights are used as `1 + w` (Gemma).
    pub norm_plus_one: bool,
    /// Embeddings multiplied by √hidden (Gemma).
    pub scale_embeddings: bool,
    /// Attention scores are multiplied by this (head_dim^-1/2, or query_pre_attn_scalar^-1/2).
    pub attn_scale: f64,
    /// Soft-capping of attention scores (`c · tanh(s / c)`), Gemma 2.
    pub attn_softcap: Option<f64>,
    /// Soft-capping of the final logits, Gemma 2.
    pub final_softcap: Option<f64>,
    /// Norms after attention and around the MLP (Gemma 2's four norms per layer).
    pub sandwich_norms: bool,
    /// RMSNorm of queries and keys after the projection, before the rotary embedding: per
    /// head (Qwen 3, Gemma 3) or, with `qk_norm_whole`, over the whole projection (OLMo 2).
    pub qk_norm: bool,
    /// The q/k norms span all heads of the projection, one weight per element (OLMo 2).
    pub qk_norm_whole: bool,
    /// Norms on the attention and MLP outputs before the residual adds, none before them
    /// (OLMo 2).
    pub post_norms: bool,
    /// Weights stored as fused `qkv_proj` and `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// A mixture of experts in place of the MLP (in the layers it names).
    pub moe: Option<MoeConfig>,
    /// A learned sink logit per head joins each attention softmax and takes probability mass
    /// without a value (GPT-OSS's `self_attn.sinks`).
    pub attention_sinks: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint's weights are stored in, as `config.json` names it
    /// (`torch_dtype`, or `dtype` in newer transformers): `bfloat16`, `float16`, `float32`.
    pub stored_dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses and resolves the text of a `config.json`; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::resolve(&raw).map_err(|m| Error::config(path, m))
    }

    /// Number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Total number of parameters of the decoder's weights (`usize::MAX` past it; a resolved
    /// configuration never is).
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }

    /// Total number of parameters, `None` when it does not fit in a `usize`. Every tensor
    /// shape of the decoder is a term of this sum, so none of them overflows either.
    pub fn checked_num_parameters(&self) -> Option<usize> {
        let emb = self.vocab_size.checked_mul(self.hidden_size)?;
        let mut total = emb
            .checked_add(self.hidden_size)?
            .checked_add(if self.tie_word_embeddings { 0 } else { emb })?;
        for l in 0..self.num_layers {
            total = total.checked_add(self.checked_layer_parameters(l)?)?;
        }
        Some(total)
    }

    /// Parameters of decoder layer `l` (`usize::MAX` past it): a layer with experts holds
    /// more than a dense one (Qwen2-MoE's `mlp_only_layers`, `decoder_sparse_step`).
    pub fn layer_parameters(&self, l: usize) -> usize {
        self.checked_layer_parameters(l).unwrap_or(usize::MAX)
    }

    fn checked_layer_parameters(&self, l: usize) -> Option<usize> {
        let d = self.hidden_size;
        let q = self.num_heads.checked_mul(self.head_dim)?;
        let kv = self.num_kv_heads.checked_mul(self.head_dim)?;
        // Rows of the query, key and value projections together.
        let qkv = q.checked_add(kv.checked_mul(2)?)?;
        let attn = d
            .checked_mul(qkv)?
            .checked_add(q.checked_mul(d)?)?
            .checked_add(if self.qkv_bias { qkv } else { 0 })?
            .checked_add(if self.o_bias { d } else { 0 })?
            .checked_add(if self.attention_sinks {
                self.num_heads
            } else {
                0
            })?;
        // Norms: two of d (OLMo 2's two output norms in place of Llama's), four with Gemma 2
        // and 3's sandwich norms, and the q/k norms, per head or over the whole projection.
        let norms = d
            .checked_mul(if self.sandwich_norms { 4 } else { 2 })?
            .checked_add(match (self.qk_norm, self.qk_norm_whole) {
                (false, _) => 0,
                (true, false) => self.head_dim.checked_mul(2)?,
                (true, true) => q.checked_add(kv)?,
            })?;
        let gated = |i: usize| d.checked_mul(i)?.checked_mul(3);
        // The dense MLP, or every expert, the router, and the shared expert and its gate;
        // GPT-OSS's experts and router have biases.
        let feed_forward = match &self.moe {
            Some(m) if m.sparse_layers.get(l).copied().unwrap_or(false) => {
                gated(m.expert_intermediate_size)?
                    .checked_add(if m.gpt_oss {
                        m.expert_intermediate_size.checked_mul(2)?.checked_add(d)?
                    } else {
                        0
                    })?
                    .checked_mul(m.num_experts)?
                    .checked_add(d.checked_mul(m.num_experts)?)?
                    .checked_add(if m.gpt_oss { m.num_experts } else { 0 })?
                    .checked_add(match m.shared_intermediate_size {
                        Some(s) => gated(s)?.checked_add(d)?,
                        None => 0,
                    })?
            }
            _ => gated(self.intermediate_size)?,
        };
        attn.checked_add(norms)?.checked_add(feed_forward)
    }

    /// Resolves a raw configuration; the error is a message about the value at fault.
    pub fn resolve(raw: &RawConfig) -> std::result::Result<Self, String> {
        // A multimodal checkpoint: the language model's configuration is `text_config`.
        let wrapper = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .and_then(|a| Family::from_wrapper_class(a));
        if let Some(family) = wrapper {
            let Some(text) = &raw.text_config else {
                return Err(format!(
                    "{} has no `text_config`",
                    family.info().wrapper_class.unwrap_or_default()
                ));
            };
            let mut text = (**text).clone();
            text.architectures = Some(vec![family.info().hf_class.to_string()]);
            // Token ids and the dtype may be kept at the top level only.
            text.bos_token_id = text.bos_token_id.or(raw.bos_token_id.clone());
            text.eos_token_id = text.eos_token_id.or(raw.eos_token_id.clone());
            text.pad_token_id = text.pad_token_id.or(raw.pad_token_id.clone());
            text.torch_dtype = text.torch_dtype.or(raw.torch_dtype.clone());
            text.dtype = text.dtype.or(raw.dtype.clone());
            text.tie_word_embeddings = text.tie_word_embeddings.or(raw.tie_word_embeddings);
            text.text_config = None;
            return Self::resolve(&text);
        }
        let architecture = match (&raw.architectures, &raw.model_type) {
            (Some(a), _) if !a.is_empty() => a[0].clone(),
            (_, Some(t)) => match Family::from_model_type(t) {
                Some(f) => f.info().hf_class.to_string(),
                None => t.to_string(),
            },
            _ => return Err("neither `architectures` nor `model_type` is set".into()),
        };
        let Some(family) = Family::from_hf_class(&architecture) else {
            return Err(format!(
                "unsupported architecture {architecture:?}; supported: {}",
                supported_hf_classes()
            ));
        };
        let fam = family.info();
        if raw.use_bidirectional_attention == Some(true) {
            return Err(
                "use_bidirectional_attention is set: an embedding model, not a causal language model"
                    .into(),
            );
        }
        let need = |v: Option<usize>, name: &str| -> std::result::Result<usize, String> {
            match v {
                Some(0) => Err(format!("`{name}` must be positive")),
                Some(v) => Ok(v),
                None => Err(format!("missing `{name}`")),
            }
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        if num_layers > MAX_LAYERS {
            return Err(format!(
                "num_hidden_layers ({num_layers}) is more than {MAX_LAYERS}, far more than any model has"
            ));
        }
        let dflt = &fam.defaults;
        let num_heads = need(
            raw.num_attention_heads.or(dflt.num_attention_heads),
            "num_attention_heads",
        )?;
        let vocab_size = need(raw.vocab_size.or(dflt.vocab_size), "vocab_size")?;
        let num_kv_heads = raw
            .num_key_value_heads
            .or(dflt.num_key_value_heads)
            .unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            ));
        }
        let head_dim = match raw.head_dim.or(fam.default_head_dim) {
            Some(h) => h,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads})"
                    ));
                }
                hidden_size / num_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!("head_dim ({head_dim}) must be even and positive"));
        }
        let gemma = fam.gemma_style;
        let act_name = raw
            .hidden_activation
            .as_deref()
            .or(raw.hidden_act.as_deref())
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let activation = match act_name {
            // GPT-OSS's experts use their clamped SwiGLU whatever `hidden_act` says.
            _ if fam.moe.is_some_and(|m| m.gpt_oss) => {
                let alpha = raw.swiglu_alpha.unwrap_or(1.702);
                let limit = raw.swiglu_limit.unwrap_or(7.0);
                if !(alpha.is_finite() && limit.is_finite() && limit > 0.0) {
                    return Err(format!(
                        "swiglu_alpha ({alpha}) and swiglu_limit ({limit}) must be finite, the limit positive"
                    ));
                }
                Activation::ClampedSwiglu {
                    alpha: alpha as f32,
                    limit: limit as f32,
                }
            }
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
            // transformers runs Gemma with the tanh approximation whatever `hidden_act` says.
            "gelu" if gemma => Activation::GeluTanh,
            other => {
                return Err(format!(
                    "unsupported hidden activation {other:?}; supported: silu, gelu_pytorch_tanh"
                ))
            }
        };

        // rope_theta and rope_scaling, in the transformers 4 or 5 layout; Gemma 3's transformers
        // 5 layout has one set per layer type.
        let params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let local_params = params.and_then(|p| p.get("sliding_attention"));
        let params = params.map(|p| p.get("full_attention").unwrap_or(p));
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(fam.default_rope_theta);
        let family_scaling: Option<Value> = fam
            .default_rope_scaling
            .map(|s| serde_json::from_str(s).expect("a family's default scaling is JSON"));
        let scaling_value = raw
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(params)
            .or(family_scaling.as_ref());
        let rope_scaling = match scaling_value {
            None => RopeScaling::None,
            Some(v) => resolve_rope_scaling(
                v,
                head_dim,
                raw.max_position_embeddings,
                raw.original_max_position_embeddings,
            )?,
        };

        let rope_local_theta = match fam.default_rope_local_theta {
            None => None,
            Some(default) => {
                if let Some(p) = local_params {
                    let kind = p
                        .get("rope_type")
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if kind != "default" {
                        return Err(format!(
                            "rope_parameters.sliding_attention has rope_type {kind:?}; only default is supported for sliding-window layers"
                        ));
                    }
                }
                // transformers: the per-layer-type set wins over the top-level key.
                let theta = local_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
                    .or(raw.rope_local_base_freq)
                    .unwrap_or(default);
                if !(theta.is_finite() && theta > 0.0) {
                    return Err(format!(
                        "rope_local_base_freq must be a positive number, got {theta}"
                    ));
                }
                Some(theta)
            }
        };

        let window = match &raw.sliding_window {
            None => fam.default_sliding_window,
            Some(Value::Null) => None,
            // transformers 5 writes Qwen2-MoE's disabled window as 0.
            Some(v) if v.as_u64() == Some(0) && raw.use_sliding_window == Some(false) => None,
            Some(v) => match v.as_u64() {
                Some(0) | None => return Err(format!("invalid sliding_window {v}")),
                Some(w) => Some(w as usize),
            },
        };
        let sliding_window: Vec<Option<usize>> = if let Some(types) = &raw.layer_types {
            if types.len() != num_layers {
                return Err(format!(
                    "layer_types has {} entries for {num_layers} layers",
                    types.len()
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => window
                        .ok_or_else(|| {
                            "layer_types names sliding_attention but sliding_window is null"
                                .to_string()
                        })
                        .map(Some),
                    "full_attention" => Ok(None),
                    other => Err(format!("unknown layer type {other:?}")),
                })
                .collect::<std::result::Result<_, _>>()?
        } else {
            match fam.window_layers {
                WindowLayers::All => vec![window; num_layers],
                WindowLayers::Even => (0..num_layers)
                    .map(|l| if l % 2 == 0 { window } else { None })
                    .collect(),
                WindowLayers::FromMaxWindowLayers => {
                    let used = raw.use_sliding_window.unwrap_or(false);
                    let from = raw.max_window_layers.unwrap_or(28);
                    (0..num_layers)
                        .map(|l| if used && l >= from { window } else { None })
                        .collect()
                }
                WindowLayers::Pattern(default) => {
                    let every = raw.sliding_window_pattern.unwrap_or(default);
                    if every == 0 {
                        return Err("sliding_window_pattern must be positive".into());
                    }
                    // The local layers are the windowed ones (and use the local rotary base).
                    if window.is_none() {
                        return Err(
                            "sliding_window is null, but the layer pattern has sliding-window layers"
                                .into(),
                        );
                    }
                    (0..num_layers)
                        .map(|l| if (l + 1) % every == 0 { None } else { window })
                        .collect()
                }
                WindowLayers::EvenBelowMaxWindowLayers => {
                    let used = raw.use_sliding_window.unwrap_or(false);
                    let below = raw.max_window_layers.unwrap_or(28);
                    (0..num_layers)
                        .map(|l| {
                            if used && l % 2 == 0 && l < below {
                                window
                            } else {
                                None
                            }
                        })
                        .collect()
                }
                WindowLayers::AllWhenEnabled => {
                    let used = raw.use_sliding_window.unwrap_or(false);
                    vec![if used { window } else { None }; num_layers]
                }
                WindowLayers::None => vec![None; num_layers],
            }
        };

        let attention_bias = raw.attention_bias.unwrap_or(fam.default_attention_bias);
        let (qkv_bias, o_bias) = if fam.qkv_bias {
            (raw.qkv_bias.unwrap_or(true), false)
        } else {
            (attention_bias, attention_bias)
        };
        let rms_norm_eps = raw.rms_norm_eps.or(dflt.rms_norm_eps).unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps must be a positive number, got {rms_norm_eps}"
            ));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(format!(
                "rope_theta must be a positive number, got {rope_theta}"
            ));
        }
        let eos_token_ids = token_ids(raw.eos_token_id.as_ref())?;
        let bos_token_id = token_ids(raw.bos_token_id.as_ref())?.first().copied();
        let pad_token_id = token_ids(raw.pad_token_id.as_ref())?.first().copied();
        let cfg = ModelConfig {
            architecture,
            family,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_local_theta,
            max_position_embeddings: raw
                .max_position_embeddings
                .unwrap_or(fam.default_max_positions),
            vocab_size,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
            activation,
            norm_plus_one: gemma,
            scale_embeddings: gemma,
            attn_scale: match (
                fam.gemma2_attention,
                raw.query_pre_attn_scalar.or(dflt.query_pre_attn_scalar),
            ) {
                (true, Some(s)) => 1.0 / s.sqrt(),
                _ => 1.0 / (head_dim as f64).sqrt(),
            },
            attn_softcap: raw.attn_logit_softcapping.filter(|_| fam.attention_softcap),
            final_softcap: raw.final_logit_softcapping.filter(|_| fam.gemma2_attention),
            sandwich_norms: fam.gemma2_attention,
            qk_norm: fam.qk_norm || fam.qk_norm_whole,
            qk_norm_whole: fam.qk_norm_whole,
            post_norms: fam.post_norms,
            fused_projections: fam.fused_projections,
            moe: match &fam.moe {
                None => None,
                Some(row) => Some(resolve_moe(raw, row, num_layers, intermediate_size)?),
            },
            attention_sinks: fam.attention_sinks,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            stored_dtype: raw.torch_dtype.clone().or_else(|| raw.dtype.clone()),
        };
        if cfg.checked_num_parameters().is_none() {
            return Err(format!(
                "hidden_size {}, intermediate_size {}, {} layers, {} heads of {} and vocab_size {} \
                 make more parameters than can be counted",
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_layers,
                cfg.num_heads,
                cfg.head_dim,
                cfg.vocab_size
            ));
        }
        Ok(cfg)
    }
}

/// The mixture of experts of a family with experts (`row`), from the raw configuration.
fn resolve_moe(
    raw: &RawConfig,
    row: &crate::model::family::MoeRow,
    num_layers: usize,
    intermediate_size: usize,
) -> std::result::Result<MoeConfig, String> {
    if raw.clip_qkv.is_some() {
        return Err("clip_qkv (clamped queries, keys and values) is not supported".into());
    }
    // Either name is read (transformers 5 writes Qwen3-MoE's as `num_local_experts`); the
    // family's own first.
    let (key, experts) = if row.local_experts_key {
        (
            "num_local_experts",
            raw.num_local_experts.or(raw.num_experts),
        )
    } else {
        ("num_experts", raw.num_experts.or(raw.num_local_experts))
    };
    let experts = experts.ok_or_else(|| format!("missing `{key}`"))?;
    let top_k = raw
        .num_experts_per_tok
        .ok_or("missing `num_experts_per_tok`")?;
    if experts == 0 || top_k == 0 || top_k > experts {
        return Err(format!(
            "num_experts_per_tok ({top_k}) must be between 1 and {key} ({experts})"
        ));
    }
    let (expert_intermediate_size, sparse_layers) = if row.qwen_layout {
        let size = raw
            .moe_intermediate_size
            .ok_or("missing `moe_intermediate_size`")?;
        let step = raw.decoder_sparse_step.unwrap_or(1);
        if step == 0 {
            return Err("decoder_sparse_step must be positive".into());
        }
        let dense = raw.mlp_only_layers.clone().unwrap_or_default();
        let sparse = (0..num_layers)
            .map(|l| !dense.contains(&l) && (l + 1) % step == 0)
            .collect();
        (size, sparse)
    } else {
        (intermediate_size, vec![true; num_layers])
    };
    let shared_intermediate_size = if row.shared_expert {
        Some(
            raw.shared_expert_intermediate_size
                .ok_or("missing `shared_expert_intermediate_size`")?,
        )
    } else {
        None
    };
    Ok(MoeConfig {
        num_experts: experts,
        top_k,
        expert_intermediate_size,
        renormalize: row.always_renormalize || raw.norm_topk_prob.unwrap_or(false),
        shared_intermediate_size,
        sparse_layers,
        mixtral_names: row.mixtral_names,
        gpt_oss: row.gpt_oss,
    })
}

/// The most layers a configuration may have: far more than any model (the largest have a
/// few hundred), and a bound on the per-layer settings laid out before any weight is read.
pub const MAX_LAYERS: usize = 1 << 16;

/// Deserializes a field that is present (even as `null`) into `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Ok(Some(Value::deserialize(d)?))
}

fn resolve_rope_scaling(
    v: &Value,
    head_dim: usize,
    max_positions: Option<usize>,
    original_top_level: Option<usize>,
) -> std::result::Result<RopeScaling, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> std::result::Result<f64, String> {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("rope scaling of type {kind:?} lacks a numeric `{key}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        "longrope" | "su" => {
            let list = |key: &str| -> std::result::Result<Vec<f64>, String> {
                let l: Option<Vec<f64>> = v
                    .get(key)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(Value::as_f64).collect());
                match l {
                    Some(l) if l.len() == head_dim / 2 => Ok(l),
                    Some(l) => Err(format!(
                        "rope scaling `{key}` has {} entries; head_dim / 2 is {}",
                        l.len(),
                        head_dim / 2
                    )),
                    None => Err(format!(
                        "rope scaling of type longrope lacks a numeric list `{key}`"
                    )),
                }
            };
            let original = v
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .or(original_top_level)
                .ok_or("longrope needs original_max_position_embeddings")?;
            let factor = match (v.get("factor").and_then(Value::as_f64), max_positions) {
                (_, Some(m)) if original_top_level.is_some() => m as f64 / original as f64,
                (Some(f), _) => f,
                (None, Some(m)) => m as f64 / original as f64,
                (None, None) => 1.0,
            };
            let attention_factor = match v.get("attention_factor").and_then(Value::as_f64) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            Ok(RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            })
        }
        "yarn" => {
            let original = v
                .get("original_max_position_embeddings")
                .and_then(Value::as_f64)
                .or(max_positions.map(|m| m as f64))
                .ok_or("yarn needs original_max_position_embeddings")?;
            let factor = match v.get("factor").and_then(Value::as_f64) {
                Some(f) => f,
                None => match max_positions {
                    Some(m) => m as f64 / original,
                    None => return Err("yarn lacks a numeric `factor`".into()),
                },
            };
            if !(factor.is_finite() && factor > 0.0 && original > 0.0) {
                return Err(format!(
                    "yarn needs a positive factor and original context, got {factor} and {original}"
                ));
            }
            // transformers' get_mscale: 0.1 · m · ln(factor) + 1 (1 for factor ≤ 1).
            let mscale = |m: f64| {
                if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * m * factor.ln() + 1.0
                }
            };
            let opt = |key: &str| v.get(key).and_then(Value::as_f64).filter(|x| *x != 0.0);
            let attention_factor = match v.get("attention_factor").and_then(Value::as_f64) {
                Some(a) => a,
                None => match (opt("mscale"), opt("mscale_all_dim")) {
                    (Some(m), Some(all)) => mscale(m) / mscale(all),
                    _ => mscale(1.0),
                },
            };
            Ok(RopeScaling::Yarn {
                factor,
                beta_fast: opt("beta_fast").unwrap_or(32.0),
                beta_slow: opt("beta_slow").unwrap_or(1.0),
                original_max_position_embeddings: original,
                truncate: v.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                attention_factor,
            })
        }
        other => Err(format!(
            "unsupported rope scaling type {other:?}; supported: default, linear, llama3, longrope, yarn"
        )),
    }
}

/// A token id field that may be absent, null, a number or a list of numbers.
pub(crate) fn token_ids(v: Option<&Value>) -> std::result::Result<Vec<u32>, String> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![x as u32])
            .ok_or_else(|| format!("invalid token id {n}")),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| format!("invalid token id {i}"))
            })
            .collect(),
        Some(other) => Err(format!("invalid token id {other}")),
    }
}

/// Inverse rotary frequencies (length head_dim / 2), computed in f32 as transformers does.
/// For LongRoPE these are the short-context frequencies; see [`long_inverse_frequencies`].
pub fn inverse_frequencies(cfg: &ModelConfig) -> Vec<f32> {
    longrope_frequencies(cfg, false)
}

/// Inverse rotary frequencies of the sliding-window layers of a model with their own base
/// (`rope_local_theta`, no scaling); `None` when every layer uses [`inverse_frequencies`].
pub fn local_inverse_frequencies(cfg: &ModelConfig) -> Option<Vec<f32>> {
    let base = cfg.rope_local_theta? as f32;
    let dim = cfg.head_dim;
    Some(
        (0..dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / dim as f32))
            .collect(),
    )
}

/// LongRoPE's frequencies for sequences longer than the original context (other scalings:
/// the same as [`inverse_frequencies`]).
pub fn long_inverse_frequencies(cfg: &ModelConfig) -> Vec<f32> {
    longrope_frequencies(cfg, true)
}

fn longrope_frequencies(cfg: &ModelConfig, long: bool) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let inv: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match &cfg.rope_scaling {
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } => {
            let factors = if long { long_factor } else { short_factor };
            (0..dim / 2)
                .map(|i| {
                    let e = base.powf((2 * i) as f32 / dim as f32);
                    1.0f32 / (factors[i] as f32 * e)
                })
                .collect()
        }
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / *factor as f32).collect(),
        &RopeScaling::Yarn {
            factor,
            beta_fast,
            beta_slow,
            original_max_position_embeddings,
            truncate,
            ..
        } => yarn_frequencies(
            dim,
            cfg.rope_theta,
            factor,
            (beta_fast, beta_slow),
            original_max_position_embeddings,
            truncate,
        ),
        &RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, lo, hi, old) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                original_max_position_embeddings as f32,
            );
            let low_freq_wavelen = old / lo;
            let high_freq_wavelen = old / hi;
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if medium {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// YaRN's inverse frequencies, as transformers' `_compute_yarn_parameters` computes them: the
/// correction range in f64, the frequencies and the ramp in f32.
fn yarn_frequencies(
    dim: usize,
    base: f64,
    factor: f64,
    (beta_fast, beta_slow): (f64, f64),
    original: f64,
    truncate: bool,
) -> Vec<f32> {
    // The dimension at which a frequency makes `rotations` turns over the original context.
    let correction = |rotations: f64| {
        dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    let (low32, span) = (low as f32, (high - low) as f32);
    let base = base as f32;
    (0..dim / 2)
        .map(|i| {
            let pos = base.powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos;
            let interpolation = 1.0 / (factor as f32 * pos);
            let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolation * (1.0 - keep) + extrapolation * keep
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawConfig {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "vocab_size": 100"#;

    #[test]
    fn llama_defaults_are_filled_in() {
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}}}"#
        )))
        .unwrap();
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.num_kv_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.sliding_window, vec![None; 4]);
    }

    #[test]
    fn a_norm_epsilon_or_rope_base_that_is_not_positive_is_refused() {
        for (key, bad) in [
            ("rms_norm_eps", "-1"),
            ("rms_norm_eps", "0"),
            ("rope_theta", "0"),
        ] {
            let e = ModelConfig::resolve(&raw(&format!(
                r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "{key}": {bad}}}"#
            )))
            .unwrap_err();
            assert!(e.contains(key) && e.contains("positive"), "{e}");
        }
    }

    #[test]
    fn unsupported_architecture_lists_supported_ones() {
        let e = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#
        )))
        .unwrap_err();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
        for a in crate::model::family::FAMILIES.iter().map(|f| f.hf_class) {
            assert!(e.contains(a), "{e}");
        }
    }

    #[test]
    fn qwen2_window_only_when_enabled_and_from_max_window_layers() {
        let off = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "sliding_window": 4, "use_sliding_window": false}}"#
        )))
        .unwrap();
        assert_eq!(off.sliding_window, vec![None; 4]);
        assert!(off.qkv_bias && !off.o_bias);
        let on = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "sliding_window": 4, "use_sliding_window": true, "max_window_layers": 2}}"#
        )))
        .unwrap();
        assert_eq!(on.sliding_window, vec![None, None, Some(4), Some(4)]);
    }

    #[test]
    fn mistral_window_null_means_full_attention() {
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["MistralForCausalLM"], {BASE}, "sliding_window": null}}"#
        )))
        .unwrap();
        assert_eq!(c.sliding_window, vec![None; 4]);
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["MistralForCausalLM"], {BASE}, "sliding_window": 7}}"#
        )))
        .unwrap();
        assert_eq!(c.sliding_window, vec![Some(7); 4]);
    }

    #[test]
    fn eos_may_be_a_list_and_rope_parameters_are_read() {
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "eos_token_id": [5, 7],
               "rope_parameters": {{"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}}}"#
        )))
        .unwrap();
        assert_eq!(c.eos_token_ids, vec![5, 7]);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
    }

    #[test]
    fn llama3_scaling_keeps_high_scales_low_and_smooths_medium_frequencies() {
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE},
               "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}}}"#
        )))
        .unwrap();
        let mut plain = c.clone();
        plain.rope_scaling = RopeScaling::None;
        let scaled = inverse_frequencies(&c);
        let base = inverse_frequencies(&plain);
        // Highest frequency (wavelength 2π < 32/4) is unchanged; lowest is divided by 8.
        assert_eq!(scaled[0], base[0]);
        let last = base.len() - 1;
        assert!((scaled[last] - base[last] / 8.0).abs() <= 1e-12);
        // Something in between is strictly between the two.
        assert!(scaled
            .iter()
            .zip(&base)
            .any(|(s, b)| *s < *b && *s > *b / 8.0));
    }

    #[test]
    fn gemma3_reads_both_rope_layouts_and_its_layer_pattern() {
        // transformers 5: one rope set per layer type.
        let v5 = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Gemma3ForCausalLM"], {BASE}, "sliding_window": 3,
               "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
               "rope_parameters": {{
               "full_attention": {{"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
               "sliding_attention": {{"rope_type": "default", "rope_theta": 10.0}}}}}}"#
        )))
        .unwrap();
        // The hub's layout: top-level keys, and the older `sliding_window_pattern`.
        let hub = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Gemma3ForCausalLM"], {BASE}, "sliding_window": 3,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10.0,
               "rope_scaling": {{"rope_type": "linear", "factor": 8.0}}, "sliding_window_pattern": 2}}"#
        )))
        .unwrap();
        for c in [&v5, &hub] {
            assert_eq!(c.rope_theta, 1_000_000.0);
            assert_eq!(c.rope_local_theta, Some(10.0));
            assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
            assert_eq!(c.sliding_window, vec![Some(3), None, Some(3), None]);
            // Gemma 3's attention ignores a soft-cap; its norms are per head.
            assert!(c.qk_norm && !c.qk_norm_whole && c.sandwich_norms);
        }
        let local = local_inverse_frequencies(&hub).unwrap();
        assert_eq!(local[1], 1.0 / 10f32.powf(2.0 / hub.head_dim as f32));
        // A scaled local rope is not what any Gemma 3 has: refused, not ignored.
        let e = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Gemma3ForCausalLM"], {BASE}, "rope_parameters": {{
               "full_attention": {{"rope_type": "default", "rope_theta": 1.0e6}},
               "sliding_attention": {{"rope_type": "linear", "factor": 2.0, "rope_theta": 10.0}}}}}}"#
        )))
        .unwrap_err();
        assert!(e.contains("sliding_attention"), "{e}");
        let e = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Gemma3ForCausalLM"], {BASE}, "use_bidirectional_attention": true}}"#
        )))
        .unwrap_err();
        assert!(e.contains("bidirectional"), "{e}");
    }

    #[test]
    fn olmo2_normalizes_outputs_and_whole_projections() {
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["Olmo2ForCausalLM"], {BASE}, "attn_logit_softcapping": 3.0}}"#
        )))
        .unwrap();
        assert!(c.qk_norm && c.qk_norm_whole && c.post_norms && !c.sandwich_norms);
        assert_eq!((c.attn_softcap, c.rope_local_theta), (None, None));
    }

    #[test]
    fn experts_are_resolved_per_family_layout() {
        let moe = |json: &str| {
            ModelConfig::resolve(&raw(&format!(r#"{{{BASE}, {json}}}"#)))
                .map(|c| c.moe.expect("experts"))
        };
        // Mixtral: always renormalized, every layer, the MLP's size.
        let m = moe(
            r#""architectures": ["MixtralForCausalLM"], "num_local_experts": 8,
            "num_experts_per_tok": 2, "norm_topk_prob": false"#,
        )
        .unwrap();
        assert!(m.renormalize && m.mixtral_names && m.shared_intermediate_size.is_none());
        assert_eq!(
            (m.num_experts, m.top_k, m.expert_intermediate_size),
            (8, 2, 128)
        );
        assert_eq!(m.sparse_layers, vec![true; 4]);
        // Qwen2-MoE: `moe_intermediate_size`, the shared expert, dense layers by
        // `mlp_only_layers` and `decoder_sparse_step`, not renormalized by default.
        let q = moe(r#""architectures": ["Qwen2MoeForCausalLM"], "num_experts": 6,
            "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24, "decoder_sparse_step": 2, "mlp_only_layers": [3]"#)
        .unwrap();
        assert!(!q.renormalize && !q.mixtral_names);
        assert_eq!(q.shared_intermediate_size, Some(24));
        assert_eq!(q.sparse_layers, vec![false, true, false, false]);
        // Qwen3-MoE: the count under either name; norm_topk_prob read.
        let q3 = moe(
            r#""architectures": ["Qwen3MoeForCausalLM"], "num_local_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 16, "norm_topk_prob": true"#,
        )
        .unwrap();
        assert!(q3.renormalize && q3.shared_intermediate_size.is_none());
        assert_eq!(q3.num_experts, 4);
        // Refusals name the key.
        let e = moe(r#""architectures": ["OlmoeForCausalLM"], "num_experts": 4,
            "num_experts_per_tok": 5"#)
        .unwrap_err();
        assert!(e.contains("num_experts_per_tok"), "{e}");
        let e = moe(r#""architectures": ["OlmoeForCausalLM"], "num_experts": 4,
            "num_experts_per_tok": 2, "clip_qkv": 8.0"#)
        .unwrap_err();
        assert!(e.contains("clip_qkv"), "{e}");
        let e = moe(
            r#""architectures": ["Qwen2MoeForCausalLM"], "num_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 16"#,
        )
        .unwrap_err();
        assert!(e.contains("shared_expert_intermediate_size"), "{e}");
        // OLMoE normalizes whole projections but keeps Llama's pre-norms.
        let c = ModelConfig::resolve(&raw(&format!(
            r#"{{{BASE}, "architectures": ["OlmoeForCausalLM"], "num_experts": 4, "num_experts_per_tok": 2}}"#
        )))
        .unwrap();
        assert!(c.qk_norm_whole && !c.post_norms);
        // Its parameters count every expert: 4 layers of attention (4 · 64 · 64), norms (two of
        // 64, and the q and k norms over the whole projections, 64 each) and 4 experts
        // (3 · 64 · 128 each) with the router (4 · 64), plus the embeddings.
        let attn = 4 * 64 * 64 + 2 * 64 + 2 * 64;
        let experts = 4 * 3 * 64 * 128 + 4 * 64;
        assert_eq!(c.num_parameters(), 4 * (attn + experts) + 64 + 2 * 100 * 64);
    }

    #[test]
    fn bad_head_counts_are_refused() {
        let e = ModelConfig::resolve(&raw(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 3}}"#
        )))
        .unwrap_err();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e =
            ModelConfig::resolve(&raw(r#"{"architectures": ["LlamaForCausalLM"]}"#)).unwrap_err();
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn gpt_oss_fills_in_its_config_class_defaults_yarn_included() {
        let c = ModelConfig::resolve(&raw(
            r#"{"architectures": ["GptOssForCausalLM"], "hidden_size": 64, "intermediate_size": 64,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "num_local_experts": 4, "num_experts_per_tok": 2}"#,
        ))
        .unwrap();
        assert_eq!(c.family, Family::GptOss);
        assert_eq!((c.head_dim, c.rope_theta), (64, 150000.0));
        assert!(c.attention_sinks && c.qkv_bias && c.o_bias);
        assert_eq!(
            c.sliding_window,
            vec![Some(128), None, Some(128), None],
            "sliding on even layers"
        );
        assert_eq!(
            c.activation,
            Activation::ClampedSwiglu {
                alpha: 1.702,
                limit: 7.0
            }
        );
        let m = c.moe.as_ref().unwrap();
        assert!(m.gpt_oss && m.sparse_layers.iter().all(|s| *s));
        // GptOssConfig's YaRN: factor 32, β 32 and 1, original context 4096, not truncated;
        // its attention factor 0.1 ln 32 + 1.
        match c.rope_scaling {
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                original_max_position_embeddings,
                truncate,
                attention_factor,
            } => {
                assert_eq!((factor, beta_fast, beta_slow), (32.0, 32.0, 1.0));
                assert_eq!(original_max_position_embeddings, 4096.0);
                assert!(!truncate);
                assert!((attention_factor - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
            }
            ref other => panic!("{other:?}"),
        }
        // The highest frequencies are kept, the lowest divided by the factor.
        let plain: Vec<f32> = (0..32)
            .map(|i| 1.0 / 150000f32.powf((2 * i) as f32 / 64.0))
            .collect();
        let yarn = inverse_frequencies(&c);
        assert_eq!(yarn[0], plain[0]);
        assert!((yarn[31] * 32.0 / plain[31] - 1.0).abs() < 1e-6);
        assert!(yarn.iter().zip(&plain).all(|(y, p)| y <= p));
    }
}
