//! `sahara`: find the attention heads that carry a chat model's safety behaviour, measure
//! what ablating them does, and export the ablated model.
//!
//! The library holds every algorithm; the `sahara` binary is a thin command-line layer.
//! - [`config`]: `config.json` mirrored raw, then resolved with every default filled in.
//! - [`model`]: the single hooked decoder with per-row head ablations.
//! - [`ablation`]: head ablations as data.
//! - [`kernels`]: CPU fast paths of the hot float32 operations (candle's ops are the reference).
//! - [`prompt`]: tokenizer, chat templates and the query templates.
//! - [`generate`]: batched generation with a key/value cache.
//! - [`data`]: query files (CSV, JSON Lines, JSON, text).
//! - [`plot`]: layer × head heatmaps (PNG, SVG); [`attention_plot`]: one head's attention pattern.
//! - [`organism`]: the built-in safety-aligned model organism (data, training, embedding).

pub mod checkpoint;
pub mod error;
pub mod io;
pub mod methods;
pub mod model;
pub mod organism;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use error::{Error, Result};
pub use io::prompt::{PromptEncoder, Template};
pub use model::ablation::{AblationPlan, HeadAblation, Op, Target};
pub use model::config::ModelConfig;
pub use model::{Batch, Decoder, ForwardOutput, ForwardSpec, KvCache, Positions};

/// A model folder loaded for use: decoder, tokenizer and chat template, end-of-sequence ids.
pub struct LoadedModel {
    /// The model folder (for a GGUF checkpoint: the file).
    pub dir: PathBuf,
    /// The `--model` value it was loaded from.
    pub spec: String,
    pub decoder: Decoder,
    pub prompts: PromptEncoder,
    /// End-of-sequence ids of `generation_config.json` and `config.json`.
    pub eos: Vec<u32>,
}

impl LoadedModel {
    /// Resolves `spec` (a folder, a hub id, or a `.gguf` file) and loads it.
    pub fn load(spec: &str, dtype: DType, device: &Device) -> Result<Self> {
        if checkpoint::gguf::is_gguf_path(spec) {
            return checkpoint::gguf::load_model(Path::new(spec), spec, dtype, device);
        }
        let dir = checkpoint::hub::resolve_model_dir(spec)?;
        let decoder = model::load_decoder(&dir, dtype, device)?;
        let prompts = PromptEncoder::load(&dir)?;
        let mut eos = generation_eos(&dir)?;
        for id in &decoder.cfg.eos_token_ids {
            if !eos.contains(id) {
                eos.push(*id);
            }
        }
        Ok(LoadedModel {
            dir,
            spec: spec.to_string(),
            decoder,
            prompts,
            eos,
        })
    }

    pub fn cfg(&self) -> &ModelConfig {
        &self.decoder.cfg
    }
}

fn generation_eos(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    model::config::token_ids(v.get("eos_token_id")).map_err(|m| Error::config(&path, m))
}
