//! Arguments shared by several commands.

use candle_core::{DType, Device};
use clap::Args;
use sahara::model::ablation::{parse_heads, HeadAblation, Op, Target};
use sahara::{Error, LoadedModel, Result, Template};

/// Where the model comes from and how it is run.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout, a hub id (org/name) in the local cache, a
    /// llama.cpp GGUF file (`.gguf`), or builtin:organism (the built-in safety-aligned model
    /// organism, the default).
    #[arg(long, default_value = sahara::organism::builtin::MODEL)]
    pub model: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let dtype: DType = parse_dtype(&self.dtype)?;
        let device = parse_device(&self.device)?;
        LoadedModel::load(&self.model, dtype, &device)
    }
}

/// Parses a `--dtype` value.
fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(Error::InvalidArgument(format!(
            "unknown dtype {other:?}; expected f32, bf16 or f16"
        ))),
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::InvalidArgument(format!("bad device {s:?}")))?,
                None => 0,
            };
            Device::new_cuda(ordinal).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot use {s}: {e} (is sahara built with --features cuda?)"
                ))
            })
        }
        other => Err(Error::InvalidArgument(format!(
            "unknown device {other:?}; expected cpu, cuda or cuda:N"
        ))),
    }
}

/// How queries become prompts.
#[derive(Args, Debug, Clone)]
pub struct TemplateArgs {
    /// `raw`, `chat`, or a format string containing {query} (\n and \t are unescaped).
    /// Default: chat for the built-in organism, raw otherwise.
    #[arg(long)]
    pub template: Option<String>,
    /// System message for --template chat.
    #[arg(long)]
    pub system: Option<String>,
}

impl TemplateArgs {
    /// The template of `--template`, or the default for `model`.
    pub fn parse(&self, model: &ModelArgs) -> Result<Template> {
        let default = if sahara::organism::builtin::is_model(&model.model) {
            "chat"
        } else {
            "raw"
        };
        Template::parse(
            self.template.as_deref().unwrap_or(default),
            self.system.clone(),
        )
    }
}

/// What an ablation does.
#[derive(Args, Debug, Clone)]
pub struct OpArgs {
    /// Which per-head tensor to ablate: q (query), k (key group), v (attention output).
    #[arg(long, default_value = "q")]
    pub target: String,
    /// scale (multiply by epsilon) or mean (replace by the mean over heads).
    #[arg(long, default_value = "scale")]
    pub mode: String,
    /// The factor of --mode scale.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub epsilon: f64,
}

impl OpArgs {
    pub fn parse(&self) -> Result<(Target, Op)> {
        Ok((
            self.target.parse()?,
            Op::from_mode(&self.mode, self.epsilon)?,
        ))
    }

    /// The ablations of an `L:H[,L:H…]` list, checked against the model.
    pub fn ablations(&self, heads: &str, model: &LoadedModel) -> Result<Vec<HeadAblation>> {
        let (target, op) = self.parse()?;
        let list: Vec<HeadAblation> = parse_heads(heads)?
            .into_iter()
            .map(|(l, h)| HeadAblation::new(l, h, target, op))
            .collect();
        for a in &list {
            a.validate(model.cfg())?;
            if target == Target::K && model.cfg().group_size() > 1 {
                let r = a.affected_query_heads(model.cfg());
                eprintln!(
                    "note: k ablation of {}:{} changes key/value head {} of layer {}, shared by query heads {}..{}",
                    a.layer,
                    a.head,
                    a.kv_head(model.cfg()),
                    a.layer,
                    r.start,
                    r.end - 1
                );
            }
        }
        Ok(list)
    }
}

/// Where queries come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Query file: CSV with a header, JSON Lines, JSON, or plain text (one query a line);
    /// or builtin:harmful / builtin:benign, the built-in organism's held-out prompts.
    #[arg(long, default_value = sahara::organism::builtin::HARMFUL)]
    pub data: String,
    /// CSV column / JSON key holding the query (default: the first of input, goal, Goal, prompt, query).
    #[arg(long)]
    pub column: Option<String>,
    /// Use only the first N queries.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// A query and its prompt tokens.
pub struct Encoded {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<u32>,
}

impl DataArgs {
    /// Loads the queries and encodes every one up front, so that a bad query stops the run
    /// before any output is written.
    pub fn encode(
        &self,
        model: &LoadedModel,
        template: &Template,
    ) -> Result<(sahara::io::data::Dataset, Vec<Encoded>)> {
        let path = match sahara::organism::builtin::data_path(&self.data) {
            Some(p) => p?,
            None => match sahara::organism::builtin::unknown(&self.data) {
                Some(e) => return Err(e),
                None => std::path::PathBuf::from(&self.data),
            },
        };
        let data = sahara::io::data::load_queries(&path, self.column.as_deref(), self.limit)?;
        let ctx = model.cfg().max_position_embeddings;
        let mut out = Vec::with_capacity(data.queries.len());
        for q in &data.queries {
            let (_, tokens) = model.prompts.encode_query(template, &q.text).map_err(|e| {
                Error::Prompt(format!("query {} of {}: {e}", q.index + 1, self.data))
            })?;
            if tokens.len() > ctx {
                return Err(Error::Prompt(format!(
                    "query {} of {} has {} tokens, more than the model's context of {ctx}",
                    q.index + 1,
                    self.data,
                    tokens.len()
                )));
            }
            out.push(Encoded {
                index: q.index,
                text: q.text.clone(),
                tokens,
            });
        }
        Ok((data, out))
    }
}

/// Fingerprint of the queries actually used.
pub fn queries_fingerprint(q: &[Encoded]) -> String {
    let parts: Vec<&[u8]> = q.iter().map(|e| e.text.as_bytes()).collect();
    sahara::io::runlog::fingerprint(&parts)
}

/// A progress bar on stderr (hidden when quiet or when stderr is not a terminal).
pub fn progress_bar(total: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Parsed engine options.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// fast (shared prefix, batched variants, last position only) or naive (one full forward per head).
    #[arg(long, default_value = "fast")]
    pub engine: String,
    /// Ablation variants per batch (default: sized to --memory-gb).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Memory for one batch of activations, in GiB, when --batch-size is not given.
    #[arg(long, default_value_t = 1.0)]
    pub memory_gb: f64,
}

impl EngineArgs {
    pub fn parse(&self) -> Result<sahara::methods::engine::EngineOptions> {
        if self.batch_size == Some(0) {
            return Err(Error::InvalidArgument(
                "--batch-size must be at least 1".into(),
            ));
        }
        if !(self.memory_gb.is_finite() && self.memory_gb > 0.0) {
            return Err(Error::InvalidArgument(
                "--memory-gb must be positive".into(),
            ));
        }
        Ok(sahara::methods::engine::EngineOptions {
            engine: self.engine.parse()?,
            want: sahara::methods::engine::Want::Logits,
            batch_size: self.batch_size,
            memory_budget: (self.memory_gb * (1u64 << 30) as f64) as usize,
        })
    }
}

/// A short name for a model or data path in titles.
pub fn short_name(s: &str) -> String {
    let p = std::path::Path::new(s.trim_end_matches('/'));
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// The settings that identify a run over a dataset, recorded beside its output so that a
/// rerun resumes only the same computation. Commands add their own keys.
#[allow(clippy::too_many_arguments)]
pub fn run_record(
    command: &str,
    model: &LoadedModel,
    model_args: &ModelArgs,
    data: &DataArgs,
    queries: &[Encoded],
    template: &Template,
    system: &Option<String>,
    target: sahara::Target,
    op: sahara::Op,
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "command": command,
        "model": model.spec,
        "model_fingerprint": sahara::io::runlog::model_fingerprint(&model.dir)?,
        "data": data.data,
        "data_fingerprint": queries_fingerprint(queries),
        "queries": queries.len(),
        "template": template.name(),
        "system": system,
        "target": target.as_str(),
        "mode": op.mode_str(),
        "epsilon": op.epsilon_json(),
        "dtype": model_args.dtype,
    }))
}

/// Greedy decoding, or sampling with `--top-k` / `--temperature`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sample from the top K tokens instead of greedy decoding.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sampling temperature (sampling instead of greedy decoding).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Seed of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// Greedy without `--top-k` and `--temperature`; a bad value is an error naming the flag.
    pub fn parse(&self) -> Result<sahara::methods::generate::Sampling> {
        if let Some(t) = self.temperature {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "--temperature must be a non-negative number, got {t}"
                )));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::InvalidArgument("--top-k must be at least 1".into()));
        }
        Ok(match (self.top_k, self.temperature) {
            (None, None) => sahara::methods::generate::Sampling::Greedy,
            (k, t) => sahara::methods::generate::Sampling::Sample {
                temperature: t.unwrap_or(1.0),
                top_k: k,
            },
        })
    }
}
