//! `sahara`: find the attention heads that carry a chat model's safety behaviour, measure
//! what ablating them does, and export the ablated model.
//!
//! The library holds every algorithm; the `sahara` binary is a thin command-line layer that
//! parses flags, shows progress and prints errors. One folder per layer:
//!
//! - [`model`]: the single hooked decoder and what drives it — configuration and family
//!   rows, ablations as values, the per-op implementation rule and the CPU kernels.
//! - [`checkpoint`]: where weights come from and go to — model folders, the hub cache, GGUF
//!   files, random models, surgery.
//! - [`methods`]: the algorithms, plain functions over model outputs — the variant engine,
//!   Ships, Sahara, metrics, generation, judging, evaluation.
//! - [`io`]: what goes in and out — query files, prompts and chat templates, output formats,
//!   resumable runs, atomic writes, plots.
//! - [`organism`]: the built-in safety-aligned model organism.
//! - [`error`]: typed errors; a bad setting is a [`error::Setting`], never a flag name.
//!
//! # One `sahara ships` run, through the crate
//! 1. [`Checkpoint::resolve`] turns `--model` into a folder or GGUF file, and
//!    [`Checkpoint::load`] reads [`model::config::ModelConfig`] (resolved with its
//!    [`model::family`] row) and the weights into a [`Decoder`], and the tokenizer and chat
//!    template into a [`PromptEncoder`].
//! 2. [`io::data::load_queries`] reads `--data`; [`PromptEncoder::encode_queries`] renders and
//!    encodes every query up front.
//! 3. [`io::runlog::Lines::open`] claims `--out` with a [`io::formats::RunRecord`]
//!    ([`io::runlog::claim`]): a fresh run, or the checked lines of an earlier identical one.
//! 4. For each query, [`methods::ships::ships_scores`] asks the
//!    [`model::ablation::Ablation`] for the units to score (one per head, or per key/value
//!    group for target k), and [`methods::engine::run_variants`] computes the unmodified
//!    model once and every variant from its first ablated layer on, many per batch
//!    ([`Decoder::forward_joined`]), at the last position only; the scores are
//!    [`methods::metrics::kl_divergence`] of the next-token distributions.
//! 5. Each query's [`io::formats::ShipsLine`] is appended and synced; at the end
//!    [`methods::ships::summarize`] gives the [`io::formats::ShipsSummary`], written with
//!    [`io::fs::write_json`], and [`io::plot::write_heatmap`] draws the heatmap.

pub mod checkpoint;
pub mod device;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod io;
pub mod methods;
pub mod model;
pub mod organism;
pub mod selftest;

pub use checkpoint::{Checkpoint, LoadOptions, LoadedModel};
pub use error::{Error, Result};
pub use io::prompt::{PromptEncoder, Template};
pub use model::ablation::{AblationPlan, HeadAblation, Op, Target};
pub use model::config::ModelConfig;
pub use model::{Batch, Decoder, ForwardOutput, ForwardSpec, KvCache, Positions};
