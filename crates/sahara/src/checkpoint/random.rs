//! Random model folders in Hugging Face layout, for tests and benchmarks: a config, f32
//! weights drawn from a seeded generator, a word-level tokenizer and a small chat template.

use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::io::fs::write_json;
use crate::model::family::Family;

/// The shape of a random model.
#[derive(Debug, Clone)]
pub struct RandomModel {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    /// Standard deviation of the weights.
    pub std: f32,
    pub seed: u64,
}

impl RandomModel {
    /// A tiny Llama for tests.
    pub fn tiny(architecture: &str) -> Self {
        RandomModel {
            architecture: architecture.into(),
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            vocab_size: 256,
            tie_word_embeddings: false,
            sliding_window: None,
            max_position_embeddings: 512,
            std: 0.15,
            seed: 0,
        }
    }

    /// The benchmark model: a ~100M-parameter Llama (12 layers × 12 heads, hidden 768,
    /// intermediate 2048, vocabulary 32000).
    pub fn bench_llama() -> Self {
        RandomModel {
            architecture: "LlamaForCausalLM".into(),
            hidden_size: 768,
            intermediate_size: 2048,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: 12,
            vocab_size: 32000,
            tie_word_embeddings: false,
            sliding_window: None,
            max_position_embeddings: 2048,
            std: 0.02,
            seed: 0,
        }
    }

    fn config_json(&self) -> serde_json::Value {
        let family = Family::from_hf_class(&self.architecture);
        let model_type = family.map_or("llama", |f| f.info().model_type);
        let mut v = serde_json::json!({
            "architectures": [self.architecture],
            "model_type": model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        });
        if matches!(family, Some(Family::Mistral | Family::Qwen2)) {
            v["sliding_window"] = serde_json::json!(self.sliding_window);
        }
        if family == Some(Family::Qwen2) {
            v["use_sliding_window"] = serde_json::json!(self.sliding_window.is_some());
            v["max_window_layers"] = serde_json::json!(0);
        }
        v
    }

    /// Tensor names and shapes of the model.
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.hidden_size;
        let hd = d / self.num_heads;
        let (q, kv, i) = (
            self.num_heads * hd,
            self.num_kv_heads * hd,
            self.intermediate_size,
        );
        let qwen = Family::from_hf_class(&self.architecture) == Some(Family::Qwen2);
        let mut t = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, d],
        )];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![d]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            if qwen {
                t.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, d]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, d]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![d, i]));
        }
        t.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            t.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        t
    }
}

/// The words of the random models' tokenizer (ids 3.. after `<unk>`, `<s>`, `</s>`).
pub const WORDS: &[&str] = &[
    "how",
    "do",
    "i",
    "make",
    "a",
    "the",
    "bomb",
    "cake",
    "tell",
    "me",
    "about",
    "to",
    "steal",
    "car",
    "write",
    "poem",
    "what",
    "is",
    "best",
    "way",
    "explain",
    "for",
    "my",
    "friend",
    "please",
    "can",
    "you",
    "help",
    "with",
    "this",
    "that",
    "and",
    "or",
    "not",
    "sure",
    "here",
    "first",
    "then",
    "sorry",
    "cannot",
    "user",
    "assistant",
    ":",
    ".",
    "?",
    ",",
];

fn tokenizer_json(vocab_size: usize) -> serde_json::Value {
    let words: Vec<String> = WORDS
        .iter()
        .take(vocab_size.saturating_sub(3))
        .map(|w| w.to_string())
        .collect();
    word_level_tokenizer_json(&words, serde_json::json!({"type": "Lowercase"}))
}

/// A `tokenizer.json` of a word-level tokenizer: `<unk>`, `<s>`, `</s>` (ids 0, 1, 2), then
/// `words`; split on whitespace and punctuation after `normalizer` (JSON `null` for none),
/// `<s>` added in front of plain encodings.
pub fn word_level_tokenizer_json(
    words: &[String],
    normalizer: serde_json::Value,
) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<s>", "</s>"]
        .iter()
        .map(|s| s.to_string())
        .chain(words.iter().cloned())
        .enumerate()
    {
        vocab.insert(w, serde_json::json!(i));
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// Writes a random model folder.
pub fn write_random_model(dir: &Path, spec: &RandomModel) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_json(&dir.join("config.json"), &spec.config_json())?;
    write_json(
        &dir.join("tokenizer.json"),
        &tokenizer_json(spec.vocab_size),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                            "chat_template": CHAT_TEMPLATE}),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}),
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    // Uniform with the requested standard deviation.
    let a = spec.std * 3f32.sqrt();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in spec.tensors() {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let x: f32 = if is_norm {
                    1.0 + rng.random_range(-0.1f32..0.1)
                } else {
                    rng.random_range(-a..a)
                };
                x.to_le_bytes()
            })
            .collect();
        data.push((name, shape, bytes));
    }
    crate::checkpoint::safetensors::write_f32_safetensors(&dir.join("model.safetensors"), &data)
}
