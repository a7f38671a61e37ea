//! The built-in model organism: a small safety-aligned chat model the project trains, ships
//! and embeds, whose refusal behaviour is learned from synthetic data the project controls.
//! It is the default model of every command and the known answer of the end-to-end tests.
//!
//! - [`language`]: the synthetic chat language, the held-out prompts, the tokenizer and the
//!   chat template.
//! - [`mod@train`]: training with candle's autograd and AdamW, and writing the model folder.

pub mod builtin;
pub mod language;
pub mod train;

pub use train::{train, Organism, Shape, TrainOptions};
