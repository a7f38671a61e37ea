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

pub use checkpoint::{Checkpoint, LoadedModel};
pub use error::{Error, Result};
pub use io::prompt::{PromptEncoder, Template};
pub use model::ablation::{AblationPlan, HeadAblation, Op, Target};
pub use model::config::ModelConfig;
pub use model::{Batch, Decoder, ForwardOutput, ForwardSpec, KvCache, Positions};
