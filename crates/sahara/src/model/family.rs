//! The model families the single decoder runs, one row each: the one place that says what
//! "Gemma 2" means — its Hugging Face class and `model_type`, its GGUF architecture, the
//! defaults transformers fills in for it, and the decoder flags it turns on.
//! [`crate::model::config::ModelConfig::resolve`] reads these rows; nothing else matches on a
//! family's name.

/// The model families the single decoder covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Olmo2,
    Phi3,
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    GptOss,
}

/// Which layers use `sliding_window` when `config.json` has no `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowLayers {
    /// No layer (the family has no sliding window).
    None,
    /// Every layer.
    All,
    /// Layers 0, 2, 4, … (Gemma 2).
    Even,
    /// With `use_sliding_window`, the layers from `max_window_layers` on (Qwen 2 and 3).
    FromMaxWindowLayers,
    /// With `use_sliding_window`, layers 0, 2, 4, … below `max_window_layers` (Qwen2-MoE, as
    /// transformers 5 derives its `layer_types`).
    EvenBelowMaxWindowLayers,
    /// With `use_sliding_window`, every layer (Qwen3-MoE).
    AllWhenEnabled,
    /// Every layer but each `sliding_window_pattern`-th (default `n`): Gemma 3's five local
    /// layers, then one global.
    Pattern(usize),
}

/// How a family's mixture of experts is stored and routed (the router's softmax over all
/// experts, then the top k, is common to all).
#[derive(Debug, Clone, Copy)]
pub struct MoeRow {
    /// Mixtral's names: `block_sparse_moe.gate` and `block_sparse_moe.experts.{e}.w1` (gate),
    /// `w3` (up), `w2` (down); else `mlp.gate` and `mlp.experts.{e}.{gate,up,down}_proj`.
    pub mixtral_names: bool,
    /// The top-k weights are renormalized to sum to 1 whatever `norm_topk_prob` says
    /// (Mixtral); otherwise only with `norm_topk_prob`, whose default is false.
    pub always_renormalize: bool,
    /// `num_local_experts` (Mixtral) rather than `num_experts` counts the experts.
    pub local_experts_key: bool,
    /// The experts' size is `moe_intermediate_size` (`intermediate_size` is that of the dense
    /// layers), and `decoder_sparse_step` / `mlp_only_layers` say which layers have experts.
    pub qwen_layout: bool,
    /// A shared expert beside the routed ones, gated by a sigmoid (Qwen2-MoE).
    pub shared_expert: bool,
    /// GPT-OSS: the experts stored fused as 3-D tensors with biases
    /// (`mlp.experts.gate_up_proj` (E, d, 2I), gate and up interleaved, `down_proj` (E, I, d)),
    /// a router with a bias (`mlp.router`) whose top k logits are softmaxed, and the clamped
    /// SwiGLU.
    pub gpt_oss: bool,
}

/// Values transformers' configuration class of a family fills in where `config.json` omits
/// the key (beyond the defaults every family shares): hub files of multimodal Gemma 3
/// checkpoints, for one, leave the head counts and vocabulary to them.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDefaults {
    pub vocab_size: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub rms_norm_eps: Option<f64>,
}

const NO_DEFAULTS: ConfigDefaults = ConfigDefaults {
    vocab_size: None,
    num_attention_heads: None,
    num_key_value_heads: None,
    query_pre_attn_scalar: None,
    rms_norm_eps: None,
};

/// One family's row.
#[derive(Debug, Clone, Copy)]
pub struct FamilyInfo {
    pub family: Family,
    /// `architectures[0]` of `config.json`.
    pub hf_class: &'static str,
    /// `model_type` of `config.json`.
    pub model_type: &'static str,
    /// `general.architecture` of a llama.cpp GGUF file, where sahara reads that family's GGUF.
    pub gguf_architecture: Option<&'static str>,
    /// llama.cpp's converter reorders the query/key rows of this family for its rotary layout.
    pub gguf_permuted_qk: bool,
    /// `head_dim` when `config.json` omits it (otherwise hidden / heads).
    pub default_head_dim: Option<usize>,
    pub default_rope_theta: f64,
    /// The rotary base of sliding-window layers when it differs from the global one
    /// (`rope_local_base_freq`, Gemma 3): the default, and the config key is read.
    pub default_rope_local_theta: Option<f64>,
    /// `sliding_window` when `config.json` omits the key.
    pub default_sliding_window: Option<usize>,
    pub window_layers: WindowLayers,
    pub default_max_positions: usize,
    pub defaults: ConfigDefaults,
    /// Gemma's conventions: norms multiply by (1 + w), embeddings are scaled by √hidden,
    /// embeddings are tied and the MLP uses tanh-GELU unless the config says otherwise.
    pub gemma_style: bool,
    /// q/k/v projections always have biases (and `o_proj` none), whatever `attention_bias` says.
    pub qkv_bias: bool,
    /// Gemma 2 and 3: soft-capped logits, `query_pre_attn_scalar`, and norms before and after
    /// both attention and MLP.
    pub gemma2_attention: bool,
    /// Attention scores soft-capped when `attn_logit_softcapping` is set (Gemma 2; Gemma 3's
    /// attention ignores the key).
    pub attention_softcap: bool,
    /// A multimodal class whose `text_config` and language-model weights
    /// (`language_model.model.*` or `model.language_model.*`) hold this family's decoder.
    pub wrapper_class: Option<&'static str>,
    /// RMSNorm of queries and keys after the projection: per head (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// One RMSNorm over the whole query (key) projection, all heads together (OLMo 2, OLMoE).
    pub qk_norm_whole: bool,
    /// Norms after attention and after the MLP instead of before them (OLMo 2).
    pub post_norms: bool,
    /// A mixture of experts in place of the MLP.
    pub moe: Option<MoeRow>,
    /// Phi-3: `qkv_proj` and `gate_up_proj` stored fused.
    pub fused_projections: bool,
    /// A learned sink logit per head in every attention softmax (`self_attn.sinks`, GPT-OSS).
    pub attention_sinks: bool,
    /// `attention_bias` when `config.json` omits it.
    pub default_attention_bias: bool,
    /// `head_dim` set, `rope_scaling` absent: the family's own default scaling (GPT-OSS's
    /// YaRN), as its configuration class fills it in.
    pub default_rope_scaling: Option<&'static str>,
}

const BASE: FamilyInfo = FamilyInfo {
    family: Family::Llama,
    hf_class: "LlamaForCausalLM",
    model_type: "llama",
    gguf_architecture: None,
    gguf_permuted_qk: false,
    default_head_dim: None,
    default_rope_theta: 10000.0,
    default_rope_local_theta: None,
    default_sliding_window: None,
    window_layers: WindowLayers::None,
    default_max_positions: 2048,
    defaults: NO_DEFAULTS,
    gemma_style: false,
    qkv_bias: false,
    gemma2_attention: false,
    attention_softcap: false,
    wrapper_class: None,
    qk_norm: false,
    qk_norm_whole: false,
    post_norms: false,
    moe: None,
    fused_projections: false,
    attention_sinks: false,
    default_attention_bias: false,
    default_rope_scaling: None,
};

/// GptOssConfig's rotary scaling when `config.json` has none.
const GPT_OSS_YARN: &str = r#"{"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false, "original_max_position_embeddings": 4096}"#;

/// Every family, in the order error messages list them.
pub const FAMILIES: &[FamilyInfo] = &[
    FamilyInfo {
        gguf_architecture: Some("llama"),
        gguf_permuted_qk: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Mistral,
        hf_class: "MistralForCausalLM",
        model_type: "mistral",
        default_sliding_window: Some(4096),
        window_layers: WindowLayers::All,
        default_max_positions: 4096 * 32,
        ..BASE
    },
    FamilyInfo {
        family: Family::Qwen2,
        hf_class: "Qwen2ForCausalLM",
        model_type: "qwen2",
        gguf_architecture: Some("qwen2"),
        window_layers: WindowLayers::FromMaxWindowLayers,
        default_max_positions: 32768,
        qkv_bias: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Qwen3,
        hf_class: "Qwen3ForCausalLM",
        model_type: "qwen3",
        gguf_architecture: Some("qwen3"),
        default_rope_theta: 1_000_000.0,
        window_layers: WindowLayers::FromMaxWindowLayers,
        default_max_positions: 32768,
        qk_norm: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Gemma,
        hf_class: "GemmaForCausalLM",
        model_type: "gemma",
        // transformers' Gemma config defaults head_dim to 256, not hidden / heads.
        default_head_dim: Some(256),
        default_max_positions: 8192,
        gemma_style: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Gemma2,
        hf_class: "Gemma2ForCausalLM",
        model_type: "gemma2",
        window_layers: WindowLayers::Even,
        default_max_positions: 8192,
        defaults: ConfigDefaults {
            query_pre_attn_scalar: Some(256.0),
            ..NO_DEFAULTS
        },
        gemma_style: true,
        gemma2_attention: true,
        attention_softcap: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Gemma3,
        hf_class: "Gemma3ForCausalLM",
        model_type: "gemma3_text",
        gguf_architecture: Some("gemma3"),
        default_head_dim: Some(256),
        default_rope_theta: 1_000_000.0,
        default_rope_local_theta: Some(10000.0),
        default_sliding_window: Some(4096),
        window_layers: WindowLayers::Pattern(6),
        default_max_positions: 131072,
        // Gemma3TextConfig's defaults (those of the 4B model).
        defaults: ConfigDefaults {
            vocab_size: Some(262208),
            num_attention_heads: Some(8),
            num_key_value_heads: Some(4),
            query_pre_attn_scalar: Some(256.0),
            rms_norm_eps: Some(1e-6),
        },
        gemma_style: true,
        gemma2_attention: true,
        wrapper_class: Some("Gemma3ForConditionalGeneration"),
        qk_norm: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Olmo2,
        hf_class: "Olmo2ForCausalLM",
        model_type: "olmo2",
        default_rope_theta: 10000.0,
        default_max_positions: 2048,
        defaults: ConfigDefaults {
            rms_norm_eps: Some(1e-5),
            ..NO_DEFAULTS
        },
        qk_norm_whole: true,
        post_norms: true,
        ..BASE
    },
    FamilyInfo {
        family: Family::Mixtral,
        hf_class: "MixtralForCausalLM",
        model_type: "mixtral",
        // llama.cpp writes Mixtral as `llama` with expert tensors (see
        // `GgufFile::family`), its q/k rows permuted as Llama's.
        gguf_permuted_qk: true,
        default_rope_theta: 1_000_000.0,
        window_layers: WindowLayers::All,
        default_max_positions: 4096 * 32,
        defaults: ConfigDefaults {
            rms_norm_eps: Some(1e-5),
            ..NO_DEFAULTS
        },
        moe: Some(MoeRow {
            mixtral_names: true,
            always_renormalize: true,
            local_experts_key: true,
            qwen_layout: false,
            shared_expert: false,
            gpt_oss: false,
        }),
        ..BASE
    },
    FamilyInfo {
        family: Family::Qwen2Moe,
        hf_class: "Qwen2MoeForCausalLM",
        model_type: "qwen2_moe",
        window_layers: WindowLayers::EvenBelowMaxWindowLayers,
        default_max_positions: 32768,
        qkv_bias: true,
        moe: Some(MoeRow {
            mixtral_names: false,
            always_renormalize: false,
            local_experts_key: false,
            qwen_layout: true,
            shared_expert: true,
            gpt_oss: false,
        }),
        ..BASE
    },
    FamilyInfo {
        family: Family::Qwen3Moe,
        hf_class: "Qwen3MoeForCausalLM",
        model_type: "qwen3_moe",
        gguf_architecture: Some("qwen3moe"),
        default_rope_theta: 1_000_000.0,
        window_layers: WindowLayers::AllWhenEnabled,
        default_max_positions: 32768,
        qk_norm: true,
        moe: Some(MoeRow {
            mixtral_names: false,
            always_renormalize: false,
            local_experts_key: false,
            qwen_layout: true,
            shared_expert: false,
            gpt_oss: false,
        }),
        ..BASE
    },
    FamilyInfo {
        family: Family::Olmoe,
        hf_class: "OlmoeForCausalLM",
        model_type: "olmoe",
        default_max_positions: 4096,
        defaults: ConfigDefaults {
            rms_norm_eps: Some(1e-5),
            ..NO_DEFAULTS
        },
        qk_norm_whole: true,
        moe: Some(MoeRow {
            mixtral_names: false,
            always_renormalize: false,
            local_experts_key: false,
            qwen_layout: false,
            shared_expert: false,
            gpt_oss: false,
        }),
        ..BASE
    },
    FamilyInfo {
        family: Family::GptOss,
        hf_class: "GptOssForCausalLM",
        model_type: "gpt_oss",
        default_head_dim: Some(64),
        default_rope_theta: 150000.0,
        default_sliding_window: Some(128),
        window_layers: WindowLayers::Even,
        default_max_positions: 131072,
        defaults: ConfigDefaults {
            rms_norm_eps: Some(1e-5),
            ..NO_DEFAULTS
        },
        moe: Some(MoeRow {
            mixtral_names: false,
            always_renormalize: true,
            local_experts_key: true,
            qwen_layout: false,
            shared_expert: false,
            gpt_oss: true,
        }),
        attention_sinks: true,
        default_attention_bias: true,
        default_rope_scaling: Some(GPT_OSS_YARN),
        ..BASE
    },
    FamilyInfo {
        family: Family::Phi3,
        hf_class: "Phi3ForCausalLM",
        model_type: "phi3",
        window_layers: WindowLayers::All,
        fused_projections: true,
        ..BASE
    },
];

impl Family {
    /// This family's row.
    pub fn info(self) -> &'static FamilyInfo {
        FAMILIES
            .iter()
            .find(|f| f.family == self)
            .expect("every family has a row")
    }

    /// The family of a Hugging Face class name (`architectures[0]`).
    pub fn from_hf_class(class: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|f| f.hf_class == class)
            .map(|f| f.family)
    }

    /// The family whose decoder a multimodal class (`wrapper_class`) holds.
    pub fn from_wrapper_class(class: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|f| f.wrapper_class == Some(class))
            .map(|f| f.family)
    }

    /// The family of a `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .map(|f| f.family)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf_architecture(arch: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|f| f.gguf_architecture == Some(arch))
            .map(|f| f.family)
    }
}

/// The Hugging Face classes the decoder implements (the multimodal ones for their language
/// model), for messages.
pub fn supported_hf_classes() -> String {
    FAMILIES
        .iter()
        .map(|f| f.hf_class)
        .chain(FAMILIES.iter().filter_map(|f| f.wrapper_class))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GGUF architectures sahara reads, for messages.
pub fn supported_gguf_architectures() -> String {
    FAMILIES
        .iter()
        .filter_map(|f| f.gguf_architecture)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_one_row_and_round_trips_its_names() {
        for f in FAMILIES {
            assert_eq!(Family::from_hf_class(f.hf_class), Some(f.family));
            assert_eq!(Family::from_model_type(f.model_type), Some(f.family));
            assert_eq!(f.family.info().hf_class, f.hf_class);
            if let Some(w) = f.wrapper_class {
                assert_eq!(Family::from_wrapper_class(w), Some(f.family));
            }
            if let Some(a) = f.gguf_architecture {
                assert_eq!(Family::from_gguf_architecture(a), Some(f.family));
            }
        }
        assert_eq!(
            FAMILIES.len(),
            14,
            "a new family needs its row, tests and fixture"
        );
        assert_eq!(
            supported_gguf_architectures(),
            "llama, qwen2, qwen3, gemma3, qwen3moe"
        );
    }
}
