//! The model: one hooked decoder for every supported family, driven by a resolved
//! configuration, with head ablations passed as data per batch row.
//!
//! - [`config`]: `config.json` mirrored raw, then resolved with every default filled in;
//!   [`family`]: one row per family (names, defaults, flags).
//! - [`decoder`]: the layer math, read like a reference implementation; batches, key/value
//!   cache, rotary/mask context.
//! - [`ablation`]: ablations as values, compiled into per-layer head maps.
//! - [`finite`]: the run-time rule for NaN and ±∞ (final outputs checked, the item then
//!   recomputed layer by layer to name where it appeared).
//! - [`quantized`]: GGUF weights kept in their block formats (rows permuted, projections
//!   stacked, at the byte level).
//! - [`ops`]: the one rule that picks, per op, the fast CPU kernel, candle's fused op, or
//!   gradient-recording composed ops; [`kernels`]: the CPU fast paths themselves.

pub mod ablation;
pub mod config;
pub mod decoder;
pub mod family;
pub mod finite;
pub mod kernels;
pub mod ops;
pub mod quantized;

pub use decoder::{
    load_decoder, Attention, Batch, Decoder, Experts, FeedForward, ForwardOutput, ForwardSpec,
    Join, KvCache, Layer, Linear, Mlp, Positions, Shifts, Weight,
};
