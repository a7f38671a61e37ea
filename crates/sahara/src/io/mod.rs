//! What goes in and comes out: query files, prompts and chat templates, resumable run logs,
//! sharded runs, and plots.

pub mod attention_plot;
pub mod claim;
pub mod data;
pub mod formats;
pub mod fs;
pub mod plot;
pub mod prompt;
pub mod report;
pub mod runlog;
pub mod shard;
