//! llama.cpp GGUF checkpoints: one file holding the weights (often quantized), the model's
//! hyperparameters and its tokenizer as metadata.
//!
//! - The file is read with candle's GGUF reader; every tensor is dequantized at load to the
//!   compute dtype (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, Q8_K).
//! - Tensor names are mapped onto the Hugging Face names the decoder loads
//!   (`blk.{i}.attn_q.weight` → `model.layers.{i}.self_attn.q_proj.weight`, …), and the
//!   query/key rows that llama.cpp's converter reorders for its rotary layout (Llama only)
//!   are put back in Hugging Face order.
//! - The resolved configuration goes through [`ModelConfig::resolve`] from a `config.json`
//!   built from the `{arch}.*` metadata ([`GgufFile::hf_config`]).
//! - The tokenizer is rebuilt from `tokenizer.ggml.*` ([`tokenizer`]); the chat template is
//!   `tokenizer.chat_template`.
//! - [`export`] writes the dequantized model as a Hugging Face folder (used by surgery).
//! - [`write`] writes surgery's output as a GGUF file with the unchanged tensors kept as
//!   they are (quantized stays quantized).

pub mod export;
pub mod tokenizer;
pub mod write;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use serde_json::{json, Value as Json};

use crate::checkpoint::safetensors::TensorSource;
use crate::error::{Error, Result};
use crate::io::prompt::{ChatTemplate, PromptEncoder};
use crate::model::config::{ModelConfig, RawConfig};
use crate::model::family::{supported_gguf_architectures, Family, FamilyInfo};
use crate::model::Decoder;

/// Whether a `--model` value names a GGUF file: a path ending in `.gguf`, or an existing file
/// starting with the GGUF magic.
pub fn is_gguf_path(spec: &str) -> bool {
    let p = Path::new(spec);
    if p.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    if p.is_file() {
        let mut magic = [0u8; 4];
        if let Ok(mut f) = File::open(p) {
            use std::io::Read;
            if f.read_exact(&mut magic).is_ok() {
                return &magic == b"GGUF";
            }
        }
    }
    false
}

/// The name of a GGML tensor type id, as llama.cpp spells it.
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("type {id}"),
    };
    name.to_string()
}

/// The tensor types sahara dequantizes.
pub const SUPPORTED_TENSOR_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// An opened GGUF file: its parsed header and the mapped bytes.
pub struct GgufFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub content: Content,
    /// `general.architecture`.
    pub architecture: String,
}

impl GgufFile {
    /// Opens and checks a GGUF file: header, metadata, tensor directory, and that every tensor's
    /// data lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and not modified while mapped by this process.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if mmap.len() < 4 || &mmap[..4] != b"GGUF" {
            return Err(gguf_err(
                path,
                "not a GGUF file (it does not start with the magic bytes \"GGUF\")",
            ));
        }
        // candle's reader divides by the alignment: refuse 0 before it reads.
        if header::declared_alignment(&mmap) == Some(0) {
            return Err(gguf_err(
                path,
                "metadata `general.alignment` is 0, not a power of two",
            ));
        }
        let content = match Content::read(&mut Cursor::new(&mmap[..])) {
            Ok(c) => c,
            Err(e) => {
                // candle's message does not always say where; walk the header to name it.
                let detail = header::diagnose(&mmap).unwrap_or_else(|| e.to_string());
                return Err(gguf_err(path, detail));
            }
        };
        let architecture = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(gguf_err(
                    path,
                    "metadata `general.architecture` is not a string",
                ))
            }
            None => {
                return Err(gguf_err(
                    path,
                    "missing metadata key `general.architecture`",
                ))
            }
        };
        let g = GgufFile {
            path: path.to_path_buf(),
            mmap,
            content,
            architecture,
        };
        g.check_extents()?;
        Ok(g)
    }

    /// The alignment of tensor data: `general.alignment`, 32 when absent (the GGUF default).
    fn alignment(&self) -> Result<u64> {
        match self.get("general.alignment") {
            None => Ok(32),
            Some(v) => match as_u64(v) {
                Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
                _ => Err(gguf_err(
                    &self.path,
                    format!("metadata `general.alignment` is {v:?}, not a power of two"),
                )),
            },
        }
    }

    /// Every tensor's bytes lie inside the file (a truncated download fails here, naming the
    /// first tensor cut off), start at a multiple of `general.alignment`, and overlap no other
    /// tensor's: a directory that breaks these would be read as other bytes than were written.
    fn check_extents(&self) -> Result<()> {
        let len = self.mmap.len() as u64;
        let alignment = self.alignment()?;
        let mut infos: Vec<(&String, &TensorInfo)> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        // The end of the previous tensor's bytes, and its name.
        let mut previous: Option<(u64, &String)> = None;
        for (name, info) in infos {
            if info.offset % alignment != 0 {
                return Err(gguf_err(
                    &self.path,
                    format!(
                        "tensor `{name}` starts at data offset {}, not a multiple of the file's alignment {alignment}",
                        info.offset
                    ),
                ));
            }
            // Checked: the dimensions of a broken directory may multiply past 2^64.
            let Some(n) = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
            else {
                return Err(gguf_err(
                    &self.path,
                    format!(
                        "tensor `{name}` has dimensions {:?}, more elements than can be counted",
                        info.shape.dims()
                    ),
                ));
            };
            let bs = info.ggml_dtype.block_size();
            if n % bs != 0 {
                return Err(gguf_err(
                    &self.path,
                    format!(
                        "tensor `{name}` has {n} elements, not a multiple of the {:?} block size {bs}",
                        info.ggml_dtype
                    ),
                ));
            }
            // Saturating: a directory from a broken file may name sizes and offsets near 2^64.
            let size = ((n / bs) as u64).saturating_mul(info.ggml_dtype.type_size() as u64);
            if let Some((end, other)) = previous {
                if info.offset < end {
                    return Err(gguf_err(
                        &self.path,
                        format!("tensor `{name}` overlaps tensor `{other}`'s bytes"),
                    ));
                }
            }
            previous = Some((info.offset.saturating_add(size), name));
            let start = self.content.tensor_data_offset.saturating_add(info.offset);
            let end = start.saturating_add(size);
            if end > len {
                return Err(gguf_err(
                    &self.path,
                    format!(
                        "truncated: tensor `{name}` needs bytes {start}..{end} but the file has {len} bytes"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str) -> Error {
        gguf_err(&self.path, format!("missing metadata key `{key}`"))
    }

    fn bad(&self, key: &str, what: &str) -> Error {
        gguf_err(&self.path, format!("metadata `{key}` is not {what}"))
    }

    /// An unsigned integer value (any integer type that is not negative).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(match self.get(key) {
            None => None,
            Some(v) => Some(as_u64(v).ok_or_else(|| self.bad(key, "a non-negative integer"))?),
        })
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// A float value; f32 values become the f64 of their shortest decimal form
    /// (`1e-5f32` → `1e-5`), as the original `config.json` has them.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::F32(v)) => Some(format!("{v}").parse::<f64>().unwrap_or(*v as f64)),
            Some(Value::F64(v)) => Some(*v),
            Some(v) => Some(as_u64(v).ok_or_else(|| self.bad(key, "a number"))? as f64),
        })
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => Some(as_u64(v).ok_or_else(|| self.bad(key, "a boolean"))? != 0),
        })
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(self.bad(key, "a string")),
        })
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(self.bad(key, "an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.bad(key, "an array of strings")),
        }
    }

    /// An array of numbers, as f64.
    pub fn numbers(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x as f64),
                    Value::F64(x) => Ok(*x),
                    Value::I8(x) => Ok(*x as f64),
                    Value::I16(x) => Ok(*x as f64),
                    Value::I32(x) => Ok(*x as f64),
                    Value::I64(x) => Ok(*x as f64),
                    v => as_u64(v)
                        .map(|x| x as f64)
                        .ok_or_else(|| self.bad(key, "an array of numbers")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.bad(key, "an array of numbers")),
        }
    }

    /// The number of experts (`{arch}.expert_count`), 0 without a mixture of experts.
    pub fn expert_count(&self) -> Result<u64> {
        Ok(self
            .opt_u64(&format!("{}.expert_count", self.architecture))?
            .unwrap_or(0))
    }

    /// The family of the architecture, or an error naming it: llama.cpp writes Mixtral as
    /// `llama` with experts.
    pub fn family(&self) -> Result<&'static FamilyInfo> {
        if self.architecture == "llama" && self.expert_count()? > 0 {
            return Ok(Family::Mixtral.info());
        }
        Family::from_gguf_architecture(&self.architecture)
            .map(Family::info)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                found: format!(
                    "{} (GGUF general.architecture of {})",
                    self.architecture,
                    self.path.display()
                ),
                supported: supported_gguf_architectures(),
            })
    }

    /// Whether the file's family has Gemma 2 and 3's four norms per layer.
    fn sandwich_norms(&self) -> bool {
        self.family().is_ok_and(|f| f.gemma2_attention)
    }

    /// How this file's family names its mixture of experts: the block holding the router and
    /// the experts (`mlp`, or Mixtral's `block_sparse_moe`), and each expert projection's
    /// Hugging Face name beside the `ffn_{…}_exps` tensor that stacks it.
    fn expert_layout(&self) -> (&'static str, [(&'static str, &'static str); 3]) {
        if self
            .family()
            .is_ok_and(|f| f.moe.is_some_and(|m| m.mixtral_names))
        {
            (
                "block_sparse_moe",
                [("w1", "gate"), ("w3", "up"), ("w2", "down")],
            )
        } else {
            (
                "mlp",
                [
                    ("gate_proj", "gate"),
                    ("up_proj", "up"),
                    ("down_proj", "down"),
                ],
            )
        }
    }

    /// The GGUF name of a Hugging Face tensor name, in this file's family's layout (an
    /// expert's projection is a slice of a 3-D tensor: [`GgufFile::expert_slice`]).
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        if let Some(layer) = router_layer(hf) {
            return Some(format!("blk.{layer}.ffn_gate_inp.weight"));
        }
        translate(hf, true, self.sandwich_norms())
    }

    /// The Hugging Face name of one of this file's GGUF tensor names (`None` for the 3-D
    /// expert tensors, which hold many: [`GgufWeights::hf_names`] lists them).
    pub fn hf_name(&self, g: &str) -> Option<String> {
        if let Some(layer) = g
            .strip_prefix("blk.")
            .and_then(|r| r.strip_suffix(".ffn_gate_inp.weight"))
        {
            let (block, _) = self.expert_layout();
            return Some(format!("model.layers.{layer}.{block}.gate.weight"));
        }
        translate(g, false, self.sandwich_norms())
    }

    /// An expert's projection (`model.layers.{l}.mlp.experts.{e}.gate_proj.weight`, or
    /// Mixtral's `block_sparse_moe.experts.{e}.w1.weight`) as (the 3-D GGUF tensor that
    /// stacks every expert's, `blk.{l}.ffn_gate_exps.weight`, and e).
    pub fn expert_slice(&self, hf: &str) -> Option<(String, usize)> {
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (block, names) = self.expert_layout();
        let rest = rest.strip_prefix(block)?.strip_prefix(".experts.")?;
        let (e, proj) = rest.split_once('.')?;
        let e: usize = e.parse().ok()?;
        let proj = proj.strip_suffix(".weight")?;
        let (_, g) = names.iter().find(|(hf, _)| *hf == proj)?;
        Some((format!("blk.{layer}.ffn_{g}_exps.weight"), e))
    }

    /// The Hugging Face names of one 3-D expert tensor's experts, in expert order; `None`
    /// for other tensors.
    fn expert_names(&self, g: &str) -> Option<Vec<String>> {
        let rest = g.strip_prefix("blk.")?;
        let (layer, module) = rest.split_once('.')?;
        let which = module.strip_prefix("ffn_")?.strip_suffix("_exps.weight")?;
        let (block, names) = self.expert_layout();
        let (proj, _) = names.iter().find(|(_, g)| *g == which)?;
        let experts = self
            .content
            .tensor_infos
            .get(g)?
            .shape
            .dims()
            .first()
            .copied()?;
        Some(
            (0..experts)
                .map(|e| format!("model.layers.{layer}.{block}.experts.{e}.{proj}.weight"))
                .collect(),
        )
    }

    /// Whether llama.cpp's converter stored the norm weights as 1 + w (the Gemma families,
    /// whose norms multiply by 1 + w): sahara reads them back as w.
    pub fn shifted_norms(&self) -> bool {
        self.family().is_ok_and(|f| f.gemma_style)
    }

    /// Whether llama.cpp stored the query/key rows permuted for its rotary layout (its
    /// converter does this for the Llama architecture only).
    pub fn permuted_qk(&self) -> bool {
        self.family().is_ok_and(|f| f.gguf_permuted_qk)
    }

    /// The `config.json` (Hugging Face layout) the metadata describes.
    pub fn hf_config(&self) -> Result<Json> {
        let fam = self.family()?;
        let a = &self.architecture;
        let k = |s: &str| format!("{a}.{s}");
        let hidden = self.u64(&k("embedding_length"))?;
        let layers = self.u64(&k("block_count"))?;
        let heads = self.u64(&k("attention.head_count"))?;
        let kv_heads = self
            .opt_u64(&k("attention.head_count_kv"))?
            .unwrap_or(heads);
        let experts = self.expert_count()?;
        if experts > 0 && fam.moe.is_none() {
            return Err(gguf_err(
                &self.path,
                format!("{a}.expert_count is {experts}: a mixture of experts in GGUF is read for qwen3moe and Mixtral (llama with experts); use the Hugging Face checkpoint"),
            ));
        }
        let inter = self.u64(&k("feed_forward_length"))?;
        let eps = self
            .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| self.missing(&k("attention.layer_norm_rms_epsilon")))?;
        if heads == 0 {
            return Err(self.bad(&k("attention.head_count"), "positive"));
        }
        let head_dim = match self.opt_u64(&k("attention.key_length"))? {
            Some(h) => h,
            None => hidden / heads,
        };
        if let Some(v) = self.opt_u64(&k("attention.value_length"))? {
            if v != head_dim {
                return Err(gguf_err(
                    &self.path,
                    format!("{a}.attention.value_length ({v}) differs from the key length ({head_dim}); not supported"),
                ));
            }
        }
        if let Some(r) = self.opt_u64(&k("rope.dimension_count"))? {
            if r != head_dim {
                return Err(gguf_err(
                    &self.path,
                    format!("{a}.rope.dimension_count ({r}) is not the head dimension ({head_dim}): partial rotary embeddings are not supported"),
                ));
            }
        }
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| gguf_err(&self.path, "tensor `token_embd.weight` is missing"))?;
        let vocab = match self.opt_u64(&k("vocab_size"))? {
            Some(v) => v,
            None => *embd.shape.dims().first().ok_or_else(|| {
                gguf_err(&self.path, "tensor `token_embd.weight` has no dimensions")
            })? as u64,
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let mut cfg = json!({
            "architectures": [fam.hf_class],
            "model_type": fam.model_type,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": eps,
            "rope_theta": self.opt_f64(&k("rope.freq_base"))?.unwrap_or(fam.default_rope_theta),
            "max_position_embeddings": self.opt_u64(&k("context_length"))?.unwrap_or(2048),
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        let o = cfg.as_object_mut().expect("object");
        match fam.family {
            Family::Llama => {
                o.insert(
                    "attention_bias".into(),
                    json!(self.content.tensor_infos.contains_key("blk.0.attn_q.bias")),
                );
                o.insert("mlp_bias".into(), json!(false));
            }
            Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe => {
                o.insert("use_sliding_window".into(), json!(false));
                o.insert("sliding_window".into(), Json::Null);
                o.insert("attention_bias".into(), json!(fam.qkv_bias));
            }
            Family::Mixtral => {
                o.insert("sliding_window".into(), Json::Null);
            }
            Family::Gemma3 => {
                // What llama.cpp assumes of a gemma3 file (none of it is in the metadata):
                // five sliding-window layers, then a global one; the local layers' rotary
                // base 10000; scores scaled by 1/√head_dim, except the 27B model's (62
                // layers), by 1/√(hidden / heads). No soft-capping.
                let scalar = if layers == 62 {
                    hidden / heads
                } else {
                    head_dim
                };
                o.insert("query_pre_attn_scalar".into(), json!(scalar));
                o.insert("rope_local_base_freq".into(), json!(10000.0));
                o.insert("sliding_window_pattern".into(), json!(6));
                o.insert(
                    "sliding_window".into(),
                    json!(self.u64(&k("attention.sliding_window"))?),
                );
                o.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
                o.insert("attention_bias".into(), json!(false));
            }
            _ => {}
        }
        if experts > 0 {
            // llama.cpp's experts: every layer has them; Qwen3-MoE's top-k weights are
            // renormalized (its `norm_w`), Mixtral's always are.
            let used = self.u64(&k("expert_used_count"))?;
            let key = match fam.moe.is_some_and(|m| m.local_experts_key) {
                true => "num_local_experts",
                false => "num_experts",
            };
            o.insert(key.into(), json!(experts));
            o.insert("num_experts_per_tok".into(), json!(used));
            if fam.family == Family::Qwen3Moe {
                let size = self
                    .opt_u64(&k("expert_feed_forward_length"))?
                    .unwrap_or(inter);
                o.insert("moe_intermediate_size".into(), json!(size));
                o.insert("norm_topk_prob".into(), json!(true));
                o.insert("decoder_sparse_step".into(), json!(1));
                o.insert("mlp_only_layers".into(), json!([]));
            }
        }
        o.insert("rope_scaling".into(), self.rope_scaling(head_dim as usize)?);
        let id =
            |key: &str| -> Result<Option<u64>> { self.opt_u64(&format!("tokenizer.ggml.{key}")) };
        if let Some(b) = id("bos_token_id")? {
            o.insert("bos_token_id".into(), json!(b));
        }
        let mut eos: Vec<u64> = Vec::new();
        for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
            if let Some(e) = id(key)? {
                if !eos.contains(&e) {
                    eos.push(e);
                }
            }
        }
        match eos.len() {
            0 => {}
            1 => {
                o.insert("eos_token_id".into(), json!(eos[0]));
            }
            _ => {
                o.insert("eos_token_id".into(), json!(eos));
            }
        }
        if let Some(p) = id("padding_token_id")? {
            o.insert("pad_token_id".into(), json!(p));
        }
        Ok(cfg)
    }

    /// `rope_scaling` of the config: none, linear, or llama.cpp's per-frequency divisors
    /// (`rope_freqs.weight`, written for Llama 3.x) expressed as LongRoPE factors without
    /// attention scaling.
    fn rope_scaling(&self, head_dim: usize) -> Result<Json> {
        let a = &self.architecture;
        let kind = self.opt_str(&format!("{a}.rope.scaling.type"))?;
        let factor = self.opt_f64(&format!("{a}.rope.scaling.factor"))?;
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            let t = self.dequantize("rope_freqs.weight")?;
            let f: Vec<f32> = t.flatten_all()?.to_vec1()?;
            if f.len() != head_dim / 2 {
                return Err(gguf_err(
                    &self.path,
                    format!(
                        "tensor `rope_freqs.weight` has {} entries; head_dim / 2 is {}",
                        f.len(),
                        head_dim / 2
                    ),
                ));
            }
            let f: Vec<f64> = f.iter().map(|&x| x as f64).collect();
            let ctx = self
                .opt_u64(&format!("{a}.context_length"))?
                .unwrap_or(2048);
            return Ok(json!({
                "rope_type": "longrope",
                "short_factor": f,
                "long_factor": f,
                "original_max_position_embeddings": ctx,
                "attention_factor": 1.0,
            }));
        }
        match kind {
            None | Some("none") => Ok(Json::Null),
            Some("linear") => match factor {
                Some(f) if f != 1.0 => Ok(json!({"rope_type": "linear", "factor": f})),
                _ => Ok(Json::Null),
            },
            Some(other) => Err(gguf_err(
                &self.path,
                format!(
                    "{a}.rope.scaling.type {other:?} is not supported (supported: none, linear)"
                ),
            )),
        }
    }

    /// The resolved configuration.
    pub fn config(&self) -> Result<ModelConfig> {
        let cfg = self.hf_config()?;
        let raw: RawConfig = serde_json::from_value(cfg).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })?;
        ModelConfig::resolve(&raw).map_err(|m| Error::config(&self.path, m))
    }

    /// Dequantizes a tensor by its GGUF name to f32 on the CPU, in GGUF's row order.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                dir: self.path.clone(),
            })?;
        let q = info
            .read(
                &mut Cursor::new(&self.mmap[..]),
                self.content.tensor_data_offset,
                &Device::Cpu,
            )
            .map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| {
            gguf_err(
                &self.path,
                format!("tensor `{name}` ({:?}): {e}", info.ggml_dtype),
            )
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The prompt encoder (tokenizer, chat template, pad id) of the metadata.
    pub fn prompt_encoder(&self) -> Result<PromptEncoder> {
        let tok = tokenizer::build(self)?;
        let specials = tok.specials.clone();
        let chat = self.opt_str("tokenizer.chat_template")?.map(|s| {
            ChatTemplate::new(s, specials.clone()).map_err(|e| {
                let m = match e {
                    Error::Template(m) => m,
                    other => other.to_string(),
                };
                format!("{} (tokenizer.chat_template): {m}", self.path.display())
            })
        });
        Ok(PromptEncoder {
            tokenizer: tok.tokenizer,
            chat,
            tokenizer_path: self.path.clone(),
            pad_id: tok.pad_id,
            embeddings: None,
        })
    }

    /// The file's fingerprint: its length, header and the start of its tensor data.
    pub fn fingerprint(&self) -> String {
        let head_len = (self.content.tensor_data_offset as usize + 65536).min(self.mmap.len());
        let len = (self.mmap.len() as u64).to_le_bytes();
        crate::io::runlog::fingerprint(&[&len[..], &self.mmap[..head_len]])
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}

pub(crate) fn gguf_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The layer of a router's Hugging Face name (`model.layers.{l}.mlp.gate.weight`, or
/// Mixtral's `block_sparse_moe.gate.weight`).
fn router_layer(hf: &str) -> Option<usize> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    match module {
        "mlp.gate.weight" | "block_sparse_moe.gate.weight" => layer.parse().ok(),
        _ => None,
    }
}

/// Tensor names outside the layers: (Hugging Face, GGUF).
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Modules of a layer: (Hugging Face `model.layers.{i}.…`, GGUF `blk.{i}.…`).
const LAYER_MODULES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Gemma 2 and 3's four norms of a layer: llama.cpp names the one before the MLP `ffn_norm`
/// (Llama's `post_attention_layernorm`), and the two on the outputs by their own names.
const SANDWICH_NORMS: &[(&str, &str)] = &[
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
];

/// Translates a tensor name with the tables above, Hugging Face to GGUF with `to_gguf`,
/// else back; `sandwich`: with Gemma 2 and 3's norm names.
fn translate(name: &str, to_gguf: bool, sandwich: bool) -> Option<String> {
    let side = |pair: &(&'static str, &'static str)| {
        if to_gguf {
            (pair.0, pair.1)
        } else {
            (pair.1, pair.0)
        }
    };
    if let Some((_, to)) = GLOBAL_NAMES
        .iter()
        .map(side)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = side(&("model.layers.", "blk."));
    let (layer, rest) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let norms: &[(&str, &str)] = if sandwich { SANDWICH_NORMS } else { &[] };
    let (_, to) = LAYER_MODULES
        .iter()
        .filter(|(hf, _)| !(sandwich && *hf == "post_attention_layernorm"))
        .chain(norms)
        .map(side)
        .find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{layer}.{to}.{suffix}"))
}

/// The GGUF name of a Hugging Face tensor name, in the layout of the families without
/// sandwich norms (the projections are named alike in all; [`GgufFile::gguf_name`] knows
/// the file's family).
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, true, false)
}

/// The Hugging Face name of a GGUF tensor name (as [`gguf_name`], without sandwich norms).
pub fn hf_name(g: &str) -> Option<String> {
    translate(g, false, false)
}

/// Undoes llama.cpp's reordering of query/key rows: its converter stores the Hugging Face
/// weight `w` (n_head·D rows) as `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2)`; this is the
/// inverse, for a weight (rows, in) or a bias (rows,).
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let inner: usize = dims[1..].iter().product();
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(Error::InvalidArgument(format!(
            "cannot un-permute {rows} rows into {n_head} heads"
        )));
    }
    let half = rows / n_head / 2;
    Ok(t.reshape((n_head, half, 2, inner))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The tensors of a GGUF file under their Hugging Face names, dequantized at load, or with
/// `keep_quantized` the projections' weights kept in their block formats
/// ([`crate::model::quantized`]).
pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    num_heads: usize,
    num_kv_heads: usize,
    pub keep_quantized: bool,
}

/// Whether a GGUF block format is quantized (not a plain float format).
fn is_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl<'a> GgufWeights<'a> {
    pub fn new(file: &'a GgufFile, cfg: &ModelConfig) -> Self {
        GgufWeights {
            file,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            keep_quantized: false,
        }
    }

    /// Bytes the weights take on a device in `dtype`: the quantized projections at their
    /// stored size when kept quantized, every other tensor at `dtype`'s.
    pub fn device_bytes(&self, dtype: DType) -> usize {
        self.file
            .content
            .tensor_infos
            .iter()
            .map(|(g, info)| {
                let n = info.shape.elem_count();
                let projection = self.file.hf_name(g).is_some_and(|h| h.contains("_proj."))
                    || g.ends_with("_exps.weight");
                if self.keep_quantized && projection && is_quantized(info.ggml_dtype) {
                    n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
                } else {
                    n * dtype.size_in_bytes()
                }
            })
            .sum()
    }

    /// A projection's weight in its block format on `device`, rows in Hugging Face order;
    /// `None` for one stored as plain floats.
    fn load_quantized(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        if let Some((g, e)) = self.file.expert_slice(name) {
            let quantized = self
                .file
                .content
                .tensor_infos
                .get(&g)
                .is_some_and(|i| is_quantized(i.ggml_dtype));
            return match quantized {
                true => Ok(Some(self.expert_matrix(&g, e, device)?)),
                false => Ok(None),
            };
        }
        let Some(g) = self.file.gguf_name(name) else {
            return Ok(None);
        };
        let Some(info) = self.file.content.tensor_infos.get(&g) else {
            return Ok(None);
        };
        if !is_quantized(info.ggml_dtype) {
            return Ok(None);
        }
        let (rows, cols) = info
            .shape
            .dims2()
            .map_err(|e| gguf_err(&self.file.path, format!("tensor `{g}`: {e}")))?;
        let q = info
            .read(
                &mut Cursor::new(&self.file.mmap[..]),
                self.file.content.tensor_data_offset,
                &Device::Cpu,
            )
            .map_err(|e| gguf_err(&self.file.path, format!("tensor `{g}`: {e}")))?;
        let bytes = q.data()?;
        let heads = if !self.file.permuted_qk() {
            None
        } else if name.contains(".self_attn.q_proj.") {
            Some(self.num_heads)
        } else if name.contains(".self_attn.k_proj.") {
            Some(self.num_kv_heads)
        } else {
            None
        };
        let dtype = info.ggml_dtype;
        let q = match heads {
            Some(n) => {
                let source = crate::model::quantized::unpermuted_source(rows, n)?;
                let moved =
                    crate::model::quantized::permute_rows(&bytes, dtype, rows, cols, source)?;
                crate::model::quantized::from_bytes(&moved, dtype, rows, cols, device)?
            }
            None => crate::model::quantized::from_bytes(&bytes, dtype, rows, cols, device)?,
        };
        Ok(Some(q))
    }

    /// The Hugging Face tensor names present, in the file's order of layers.
    pub fn hf_names(&self) -> Vec<String> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (g, info) in &self.file.content.tensor_infos {
            if let Some(hf) = self.file.hf_name(g) {
                out.push((hf, info.offset));
            } else if let Some(experts) = self.file.expert_names(g) {
                // One name per expert, in expert order, at the 3-D tensor's place.
                out.extend(experts.into_iter().map(|n| (n, info.offset)));
            }
        }
        // Stable: the experts of one tensor keep their order.
        out.sort_by_key(|(_, o)| *o);
        out.into_iter().map(|(n, _)| n).collect()
    }

    /// One expert's (rows, cols) matrix of a 3-D expert tensor `g` (E, rows, cols), in its
    /// block format on `device`: the expert's bytes, contiguous in the file.
    fn expert_matrix(&self, g: &str, e: usize, device: &Device) -> Result<QTensor> {
        let info = self
            .file
            .content
            .tensor_infos
            .get(g)
            .ok_or_else(|| Error::MissingTensor {
                name: g.to_string(),
                dir: self.file.path.clone(),
            })?;
        let (experts, rows, cols) = info
            .shape
            .dims3()
            .map_err(|err| gguf_err(&self.file.path, format!("tensor `{g}`: {err}")))?;
        if e >= experts {
            return Err(gguf_err(
                &self.file.path,
                format!("tensor `{g}` holds {experts} experts; expert {e} was asked for"),
            ));
        }
        let dtype = info.ggml_dtype;
        let per = rows * crate::model::quantized::row_bytes(dtype, cols)?;
        let start = self.file.content.tensor_data_offset as usize + info.offset as usize + e * per;
        // Inside the file: `check_extents` checked the whole tensor at open.
        let bytes = &self.file.mmap[start..start + per];
        crate::model::quantized::from_bytes(bytes, dtype, rows, cols, device)
    }

    /// Loads a tensor by its Hugging Face name as f32 on the CPU, rows in Hugging Face order.
    pub fn load_f32(&self, name: &str) -> Result<Tensor> {
        if let Some((g, e)) = self.file.expert_slice(name) {
            let q = self.expert_matrix(&g, e, &Device::Cpu)?;
            let t = q.dequantize(&Device::Cpu).map_err(|err| {
                gguf_err(&self.file.path, format!("tensor `{g}` expert {e}: {err}"))
            })?;
            return Ok(t.to_dtype(DType::F32)?);
        }
        let g = self
            .file
            .gguf_name(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                dir: self.file.path.clone(),
            })?;
        if !self.file.content.tensor_infos.contains_key(&g) {
            return Err(Error::MissingTensor {
                name: format!("{g} ({name})"),
                dir: self.file.path.clone(),
            });
        }
        let t = self.file.dequantize(&g)?;
        if self.file.shifted_norms() && name.ends_with("norm.weight") {
            // As transformers' GGUF loader reads them (its Gemma2TensorProcessor).
            return Ok((t - 1.0)?);
        }
        if self.file.permuted_qk() {
            if name.contains(".self_attn.q_proj.") {
                return unpermute_rows(&t, self.num_heads);
            }
            if name.contains(".self_attn.k_proj.") {
                return unpermute_rows(&t, self.num_kv_heads);
            }
        }
        Ok(t)
    }
}

impl TensorSource for GgufWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        if let Some((g, e)) = self.file.expert_slice(name) {
            return self
                .file
                .content
                .tensor_infos
                .get(&g)
                .is_some_and(|i| i.shape.dims().first().is_some_and(|&n| e < n));
        }
        self.file
            .gguf_name(name)
            .is_some_and(|g| self.file.content.tensor_infos.contains_key(&g))
    }

    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some((g, _)) = self.file.expert_slice(name) {
            let t = self.load_f32(name)?;
            if t.dims() != shape {
                return Err(Error::TensorShape {
                    name: format!("{g} ({name})"),
                    path: self.file.path.clone(),
                    found: t.dims().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            return Ok(t.to_dtype(dtype)?.to_device(device)?);
        }
        let g = self.file.gguf_name(name);
        if let Some(info) = g
            .as_ref()
            .and_then(|g| self.file.content.tensor_infos.get(g))
        {
            if info.shape.dims() != shape {
                return Err(Error::TensorShape {
                    name: format!("{} ({name})", g.unwrap_or_default()),
                    path: self.file.path.clone(),
                    found: info.shape.dims().to_vec(),
                    expected: shape.to_vec(),
                });
            }
        }
        let t = self.load_f32(name)?;
        let t = if dtype == DType::F32 {
            t
        } else {
            t.to_dtype(dtype)?
        };
        Ok(t.to_device(device)?)
    }

    fn load_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<crate::model::Weight> {
        if self.keep_quantized {
            if let Some(q) = self.load_quantized(name, device)? {
                if q.shape().dims() != shape {
                    return Err(Error::TensorShape {
                        name: format!("{} ({name})", self.file.gguf_name(name).unwrap_or_default()),
                        path: self.file.path.clone(),
                        found: q.shape().dims().to_vec(),
                        expected: shape.to_vec(),
                    });
                }
                return Ok(crate::model::Weight::Quantized(vec![
                    QMatMul::from_qtensor(q)?,
                ]));
            }
        }
        Ok(crate::model::Weight::Dense(
            self.load(name, shape, dtype, device)?,
        ))
    }
}

/// Loads the decoder of a GGUF file; with `keep_quantized` its projections stay in their
/// block formats.
pub fn load_decoder(
    file: &GgufFile,
    dtype: DType,
    device: &Device,
    keep_quantized: bool,
) -> Result<Decoder> {
    let cfg = file.config()?;
    let mut weights = GgufWeights::new(file, &cfg);
    weights.keep_quantized = keep_quantized;
    Decoder::load(cfg, &weights, dtype, device)
}

mod header {
    //! A walk over the GGUF header that says where it breaks: used only to explain a file
    //! candle's reader refused.

    use super::ggml_type_name;

    struct R<'a> {
        b: &'a [u8],
        pos: usize,
        v1: bool,
    }

    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let end = self.pos.checked_add(n)?;
            if end > self.b.len() {
                return None;
            }
            let s = &self.b[self.pos..end];
            self.pos = end;
            Some(s)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn len(&mut self) -> Option<u64> {
            if self.v1 {
                self.u32().map(|x| x as u64)
            } else {
                self.u64()
            }
        }
        fn string(&mut self) -> Option<String> {
            let n = self.len()? as usize;
            Some(String::from_utf8_lossy(self.take(n)?).into_owned())
        }
        fn value(&mut self, ty: u32, depth: usize) -> Result<(), String> {
            let fixed = match ty {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            if let Some(n) = fixed {
                return self.take(n).map(|_| ()).ok_or_else(String::new);
            }
            match ty {
                8 => self.string().map(|_| ()).ok_or_else(String::new),
                // As deep as candle's reader goes (GGUF_MAX_VALUE_DEPTH).
                9 if depth < 64 => {
                    let inner = self.u32().ok_or_else(String::new)?;
                    let n = self.len().ok_or_else(String::new)?;
                    for _ in 0..n {
                        self.value(inner, depth + 1)?;
                    }
                    Ok(())
                }
                other => Err(format!("unknown metadata value type {other}")),
            }
        }
    }

    /// The `general.alignment` the metadata declares, as candle's reader takes it: the last
    /// entry of that key (trailing NULs of a key ignored), when it is an integer of 32 bits or
    /// fewer and not negative. `None` when absent, of another type, or when the metadata ends
    /// early (candle's reader then refuses the file before it uses the alignment).
    pub(super) fn declared_alignment(b: &[u8]) -> Option<u64> {
        let mut r = R {
            b,
            pos: 4,
            v1: false,
        };
        r.v1 = r.u32()? == 1;
        let _n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut found = None;
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let start = r.pos;
            r.value(ty, 0).ok()?;
            if key.trim_end_matches('\0') == "general.alignment" {
                let v = &b[start..r.pos];
                let le = |n: usize| v[..n].iter().rev().fold(0u64, |a, &x| a << 8 | x as u64);
                found = match ty {
                    0 | 2 | 4 => Some(le(v.len())),
                    1 | 3 | 5 => {
                        let bits = 8 * v.len() as u32;
                        let x = le(v.len());
                        (x >> (bits - 1) == 0).then_some(x)
                    }
                    _ => None,
                };
            }
        }
        found
    }

    /// What is wrong with the header, or `None` when this walk finds nothing.
    pub(super) fn diagnose(b: &[u8]) -> Option<String> {
        let mut r = R {
            b,
            pos: 4,
            v1: false,
        };
        let Some(version) = r.u32() else {
            return Some("truncated: the file ends inside the header".into());
        };
        r.v1 = version == 1;
        let (Some(n_tensors), Some(n_kv)) = (r.len(), r.len()) else {
            return Some("truncated: the file ends inside the header".into());
        };
        let mut last_key = String::from("(none)");
        for i in 0..n_kv {
            let Some(key) = r.string() else {
                return Some(format!(
                    "truncated: the file ends inside metadata entry {i} of {n_kv} (after `{last_key}`)"
                ));
            };
            let Some(ty) = r.u32() else {
                return Some(format!(
                    "truncated: the file ends inside metadata key `{key}`"
                ));
            };
            match r.value(ty, 0) {
                Ok(()) => {}
                Err(m) if m.is_empty() => {
                    return Some(format!(
                        "truncated: the file ends inside the value of metadata key `{key}`"
                    ))
                }
                Err(m) => return Some(format!("metadata key `{key}`: {m}")),
            }
            last_key = key;
        }
        for i in 0..n_tensors {
            let Some(name) = r.string() else {
                return Some(format!(
                    "truncated: the file ends inside the tensor directory (entry {i} of {n_tensors})"
                ));
            };
            let Some(nd) = r.u32() else {
                return Some(format!(
                    "truncated: the file ends inside the entry of tensor `{name}`"
                ));
            };
            let dims = if r.v1 {
                nd as usize * 4
            } else {
                nd as usize * 8
            };
            if nd > 4 || r.take(dims).is_none() {
                return Some(format!("tensor `{name}`: bad or truncated dimensions"));
            }
            let Some(ty) = r.u32() else {
                return Some(format!(
                    "truncated: the file ends inside the entry of tensor `{name}`"
                ));
            };
            let known = matches!(ty, 0..=3 | 6..=15 | 30);
            if !known {
                return Some(format!(
                    "tensor `{name}` has tensor type {} (GGML type id {ty}), which sahara cannot dequantize; supported: {}",
                    ggml_type_name(ty),
                    super::SUPPORTED_TENSOR_TYPES
                ));
            }
            if r.u64().is_none() {
                return Some(format!(
                    "truncated: the file ends inside the entry of tensor `{name}`"
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_translate_both_ways() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            hf_name("blk.12.ffn_norm.weight").as_deref(),
            Some("model.layers.12.post_attention_layernorm.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        for (hf, _) in LAYER_MODULES {
            for suffix in ["weight", "bias"] {
                let name = format!("model.layers.7.{hf}.{suffix}");
                let g = gguf_name(&name).unwrap();
                assert_eq!(hf_name(&g).as_deref(), Some(name.as_str()));
            }
        }
        for (hf, g) in GLOBAL_NAMES {
            assert_eq!(hf_name(g).as_deref(), Some(*hf));
        }
        assert_eq!(gguf_name("model.layers.x.self_attn.q_proj.weight"), None);
        assert_eq!(hf_name("blk.0.attn_unknown.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
