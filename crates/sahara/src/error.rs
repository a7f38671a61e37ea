//! Typed errors of the library. Every variant names the file, tensor or value at fault so
//! that the command-line tool can print it as one line. The library never names a
//! command-line flag: a bad setting is a [`Setting`] that the caller turns into its own name
//! for it (the CLI: a flag).

use std::path::PathBuf;

/// Result type of the library.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unsupported architecture {found:?}; supported: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor {name} is missing from the weights in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor {name} in {path} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        path: PathBuf,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor {name} in {path} has unsupported dtype {found}")]
    TensorDtype {
        name: String,
        path: PathBuf,
        found: String,
    },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt: {0}")]
    Prompt(String),
    #[error("ablation: {0}")]
    Ablation(String),
    #[error("model {id:?} not found: {message}")]
    ModelNotFound { id: String, message: String },
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    /// A setting out of its range.
    #[error("{setting} {value} out of range: {allowed}")]
    OutOfRange {
        setting: Setting,
        value: String,
        allowed: String,
    },
    /// A setting that is not one of its choices, or not a number where one is needed.
    #[error("{setting} {value}: {expected}")]
    BadValue {
        setting: Setting,
        value: String,
        expected: String,
    },
    /// A setting that does not go with another one.
    #[error("{setting} {reason}")]
    Conflict { setting: Setting, reason: String },
    /// A weight that holds NaN or ±∞.
    #[error("tensor {name} holds {value} at index {index} (of {len} values): the checkpoint is broken, and nothing computed from it would mean anything")]
    NonFiniteWeight {
        name: String,
        index: usize,
        value: f32,
        len: usize,
    },
    /// An output computed as NaN or ±∞ at run time, with where it first appeared.
    #[error("{item}: the model computed NaN or an infinite value, first in {site}; nothing was computed from it{note}")]
    NonFiniteActivation {
        item: String,
        /// The item's row in the caller's batch, until the caller names it.
        row: Option<usize>,
        site: String,
        note: String,
    },
    /// Too few queries for a dataset-level method.
    #[error("generalized Ships needs at least {needed} queries, got {found} (an SVD of {found} row says nothing)")]
    TooFewQueries { found: usize, needed: usize },
    /// A model folder to write exists and is not empty.
    #[error("{path} exists and is not empty")]
    OutputNotEmpty { path: PathBuf },
    /// An output path that names a folder or a device, not a file.
    #[error("{path} is {what}, not a regular file")]
    OutputNotAFile { path: PathBuf, what: &'static str },
    /// A model folder to write is the folder it is made from.
    #[error("{path} is the source folder; surgery never writes into its source")]
    OutputIsSource { path: PathBuf },
    /// An output that a resumed run cannot continue.
    #[error("{path}{}: {reason}", line.map(|l| format!(": line {l}")).unwrap_or_default())]
    ResumeMismatch {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    /// A heads file whose run record says it was computed for another model.
    #[error("{path} was computed for model {model} (fingerprint {recorded}), not for this one (fingerprint {fingerprint})")]
    HeadsFromOtherModel {
        path: PathBuf,
        model: String,
        recorded: String,
        fingerprint: String,
    },
    /// Outputs of different models given for one report.
    #[error("the outputs are of different models: {first} and {second}")]
    MixedModels { first: String, second: String },
    /// Two rankings of heads of models of different shapes.
    #[error("the two models have different shapes: {first} and {second}; only heads of models of the same shape compare")]
    DifferentShapes { first: String, second: String },
    /// A device that cannot run the model (no bfloat16, too little memory, an old driver).
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    /// Checks of `sahara selftest` outside their tolerance.
    #[error("selftest: {failed} of {total} checks failed: {which}")]
    SelftestFailed {
        failed: usize,
        total: usize,
        which: String,
    },
    /// A written model that does not reproduce the in-memory ablation.
    #[error("verification failed: the written model's logits differ from the in-memory ablation by {error:.3e} (relative), more than {tolerance:e}; nothing was written")]
    Verification { error: f64, tolerance: f64 },
    /// A numerical computation that failed (an SVD that did not converge, …).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// An error with the input it concerns in front (`--ablate 0:9`, a heads file, …).
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
    /// A call the library itself got wrong (an empty batch, mismatched rows); not a user input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{device}: out of memory with {rows} row(s) in a batch, the smallest batch there is: {message}")]
    OutOfMemory {
        device: String,
        rows: usize,
        message: String,
    },
}

/// The settings the library checks, in its own words; a caller names them its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Layers,
    Heads,
    Rank,
    Steps,
    Top,
    Epsilon,
    Target,
    Mode,
    Engine,
    BatchSize,
    MemoryBudget,
    Dtype,
    Device,
    MaxNewTokens,
    Temperature,
    TopK,
    Template,
    TemplateArg,
    System,
    Judge,
    JudgeBase,
    JudgeThreshold,
    JudgeBatchSize,
    RefusalPhrases,
    Reasoning,
    Column,
    Kl,
    Shard,
    Resamples,
    Source,
    Positions,
    Sink,
    /// How many of the gradient screen's top heads are scored exactly.
    VerifyTop,
    /// How many next tokens the gradient screen's expectation runs over.
    ScreenTokens,
    /// Where an output is written.
    Output,
}

impl Setting {
    /// The library's name for the setting.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Layers => "layers",
            Setting::Heads => "heads",
            Setting::Rank => "rank",
            Setting::Steps => "steps",
            Setting::Top => "top",
            Setting::Epsilon => "epsilon",
            Setting::Target => "target",
            Setting::Mode => "mode",
            Setting::Engine => "engine",
            Setting::VerifyTop => "verified heads",
            Setting::ScreenTokens => "screen tokens",
            Setting::BatchSize => "batch size",
            Setting::MemoryBudget => "memory budget",
            Setting::Dtype => "dtype",
            Setting::Device => "device",
            Setting::MaxNewTokens => "max new tokens",
            Setting::Temperature => "temperature",
            Setting::TopK => "top-k",
            Setting::Template => "template",
            Setting::TemplateArg => "chat-template variable",
            Setting::System => "system message",
            Setting::Judge => "judge",
            Setting::JudgeBase => "judge base model",
            Setting::JudgeThreshold => "StrongREJECT threshold",
            Setting::JudgeBatchSize => "judge batch size",
            Setting::RefusalPhrases => "refusal phrases",
            Setting::Reasoning => "reasoning format",
            Setting::Column => "column",
            Setting::Kl => "KL divergence",
            Setting::Shard => "shard",
            Setting::Resamples => "bootstrap resamples",
            Setting::Source => "patch source",
            Setting::Positions => "patched positions",
            Setting::Sink => "sink policy",
            Setting::Output => "output",
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    /// Whether this is the device running out of memory (a CUDA allocation or cuBLAS
    /// workspace failure, or the simulated one of [`crate::methods::engine::EngineOptions`]):
    /// the one error a smaller batch can cure.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Candle(e) => {
                let m = e.to_string();
                m.contains("OUT_OF_MEMORY")
                    || m.contains("out of memory")
                    || m.contains("CUBLAS_STATUS_ALLOC_FAILED")
            }
            _ => false,
        }
    }

    /// `value` of `setting` is out of range; `allowed` says what is.
    pub fn out_of_range(
        setting: Setting,
        value: impl ToString,
        allowed: impl Into<String>,
    ) -> Self {
        Error::OutOfRange {
            setting,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
    /// `value` of `setting` is not one it takes; `expected` says which are.
    pub fn bad_value(setting: Setting, value: impl ToString, expected: impl Into<String>) -> Self {
        Error::BadValue {
            setting,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
    /// This error with `context` (the input it concerns) in front.
    /// Names the batch row of a [`Error::NonFiniteActivation`] with `name(row)` (a query and
    /// its condition, say); other errors are returned as they are.
    pub fn name_row(self, name: impl Fn(usize) -> String) -> Self {
        match self {
            Error::NonFiniteActivation {
                item,
                row: Some(r),
                site,
                note,
            } => Error::NonFiniteActivation {
                item: format!("{}, {item}", name(r)),
                row: None,
                site,
                note,
            },
            other => other,
        }
    }

    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn plot(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Plot {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A message on one line: its lines trimmed and joined by spaces, blank ones dropped.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
