//! The methods, as plain functions over model outputs.
//!
//! - [`engine`]: many ablation variants of one prompt, scored at its last position.
//! - [`ships`]: per-query Ships (KL of the next-token distribution per ablated head).
//! - [`screen`]: every head's Ships estimated from a few backward passes (gradient
//!   screening), to choose which heads to score exactly.
//! - [`sahara`]: generalized Ships (principal angles of final hidden states) and the greedy
//!   Sahara search over a dataset (`sahara attribute`).
//! - [`metrics`]: KL divergence, log-softmax, Wilson intervals.
//! - [`stats`]: resampling, quantiles, rank correlation and overlap (bootstrap intervals,
//!   `sahara compare`); [`compare`]: two rankings of the same heads side by side.
//! - [`generate`], [`judge`], [`eval`]: generation with ablations, judging (a panel of judges,
//!   their agreement, reasoning models' answers), attack success rate and benign cost;
//!   [`perplexity`]: a plain text's perplexity with and without the ablation.

pub mod compare;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod judge;
pub mod metrics;
pub mod perplexity;
pub mod sahara;
pub mod screen;
pub mod ships;
pub mod stats;
