//! Checkpoints in and out: safetensors folders, the hub cache, GGUF files, random models, and
//! surgery (the ablation folded into the weights).

pub mod gguf;
pub mod hub;
pub mod random;
pub mod safetensors;
pub mod surgery;
