//! Arguments shared by several commands.

use std::path::{Path, PathBuf};

use clap::Args;
use sahara::error::Setting;
use sahara::io::formats::{HeadsFile, RunRecord};
use sahara::io::prompt::EncodedQuery;
use sahara::model::ablation::{Ablation, HeadAblation, HeadSet, Op, SinkPolicy, Target};
use sahara::{Error, LoadedModel, Result, Template};

/// The flag that sets a library setting.
pub fn flag(s: Setting) -> &'static str {
    match s {
        Setting::Layers => "--layers",
        Setting::Heads => "--heads",
        Setting::Rank => "--rank",
        Setting::Steps => "--steps",
        Setting::Top => "--top",
        Setting::Epsilon => "--epsilon",
        Setting::Target => "--target",
        Setting::Mode => "--mode",
        Setting::Engine => "--engine",
        Setting::VerifyTop => "--verify-top",
        Setting::ScreenTokens => "--screen-tokens",
        Setting::BatchSize => "--batch-size",
        Setting::MemoryBudget => "--memory-gb",
        Setting::Dtype => "--dtype",
        Setting::Device => "--device",
        Setting::MaxNewTokens => "--max-new-tokens",
        Setting::Temperature => "--temperature",
        Setting::TopK => "--top-k",
        Setting::Template => "--template",
        Setting::TemplateArg => "--template-arg",
        Setting::System => "--system",
        Setting::Judge => "--judge",
        Setting::JudgeBase => "--judge-base",
        Setting::JudgeThreshold => "--strongreject-threshold",
        Setting::JudgeBatchSize => "--judge-batch-size",
        Setting::RefusalPhrases => "--refusal-phrases",
        Setting::Reasoning => "--reasoning",
        Setting::Column => "--column",
        Setting::Kl => "--kl",
        Setting::Shard => "--shard",
        Setting::Resamples => "--bootstrap",
        Setting::Source => "--source-data",
        Setting::Positions => "--positions",
        Setting::Sink => "--sink",
        Setting::Output => "--out",
    }
}

/// An error as the command line shows it: settings by their flags, outputs with what to do.
pub fn render(e: &Error) -> String {
    let text = match e {
        Error::OutOfRange {
            setting,
            value,
            allowed,
        } => format!("{} {value} out of range: {allowed}", flag(*setting)),
        Error::BadValue {
            setting,
            value,
            expected,
        } => format!("{} {value}: {expected}", flag(*setting)),
        Error::Conflict { setting, reason } => format!("{} {reason}", flag(*setting)),
        Error::OutputNotEmpty { path } if path.is_file() => format!(
            "--out {} exists; choose another file or pass --force to replace it",
            path.display()
        ),
        Error::OutputNotEmpty { path } => format!(
            "--out {} exists and is not empty; choose another folder or pass --force to replace it",
            path.display()
        ),
        Error::OutputNotAFile { path, what } => {
            format!("--out {} is {what}; name a file to write", path.display())
        }
        Error::OutputIsSource { path } if path.is_file() => format!(
            "--out {} is the source file; surgery never writes into its source",
            path.display()
        ),
        Error::OutputIsSource { path } => format!(
            "--out {} is the source folder; surgery never writes into its source",
            path.display()
        ),
        Error::ResumeMismatch { .. } => format!("{e}; or choose another --out"),
        Error::HeadsFromOtherModel { .. } => {
            format!("--heads-from {e}; pass --heads-from-any-model to use its heads anyway")
        }
        Error::MixedModels { .. } => {
            format!("{e}; pass --allow-mixed to put them on one page, each section labelled")
        }
        Error::Context { context, source } => format!("{context}: {}", render(source)),
        other => other.to_string(),
    };
    sahara::error::one_line(&text)
}

/// Refuses a `--heads-from` file computed for another model than the one of fingerprint
/// `fingerprint`, unless `any_model`; says so when no run record lies beside it to tell.
pub fn check_heads_model(path: &Path, fingerprint: &str, any_model: bool) -> Result<()> {
    if any_model {
        return Ok(());
    }
    if !HeadsFile::check_model(path, fingerprint)? {
        eprintln!(
            "note: no run record beside {}; which model its heads were computed for is not checked",
            path.display()
        );
    }
    Ok(())
}

/// Where the model comes from and how it is run.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout, a hub id (org/name) in the local cache, a
    /// llama.cpp GGUF file (`.gguf`), or builtin:organism (the built-in safety-aligned model
    /// organism, the default).
    #[arg(long, default_value = sahara::organism::builtin::MODEL)]
    pub model: String,
    /// Compute dtype: f32, bf16, f16, or auto: f32 on the CPU; on a GPU bf16 for checkpoints
    /// stored in 16 bits (bf16 or f16) and f32 for the rest.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature); a list
    /// (cuda:0,cuda:1,…) splits the model's layers over the devices by their free memory,
    /// for a model larger than one GPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep a GGUF file's quantized weights (Q4_K, Q8_0, …) quantized on the device and
    /// compute with them, instead of dequantizing them at load: a fraction of the memory,
    /// numbers close to the dequantized model's (run records say so).
    #[arg(long)]
    pub keep_quantized: bool,
    /// A LoRA adapter folder (PEFT: adapter_config.json and adapter_model.safetensors),
    /// merged into the model's weights at load. It is part of the model's fingerprint in run
    /// records.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let model = sahara::device::load(
            &self.model,
            &self.dtype,
            &self.device,
            sahara::LoadOptions {
                keep_quantized: self.keep_quantized,
                adapter: self.adapter.clone(),
            },
        )?;
        if let Some(a) = &model.adapter {
            for note in &a.notes {
                eprintln!("note: {note}");
            }
        }
        Ok(model)
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
    /// A variable for the chat template, KEY=VALUE (repeatable), as transformers'
    /// apply_chat_template(..., KEY=VALUE) passes it: e.g. enable_thinking=false for Qwen 3.
    /// VALUE is read as JSON when it is JSON (true, 3, "x"), else as a string.
    #[arg(long = "template-arg", value_name = "KEY=VALUE")]
    pub template_arg: Vec<String>,
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
        )?
        .with_args(&self.template_arg)
    }
}

/// What an ablation does.
#[derive(Args, Debug, Clone)]
pub struct OpArgs {
    /// Which per-head tensor to ablate: q (query), k (key group), v (attention output).
    /// Default: q, and v for --mode patch.
    #[arg(long)]
    pub target: Option<String>,
    /// scale (multiply by epsilon), mean (replace by the mean over heads), or patch (`sahara
    /// ships` only: replace the head's output by its output on the paired prompt of
    /// --source-data).
    #[arg(long, default_value = "scale")]
    pub mode: String,
    /// The factor of --mode scale.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub epsilon: f64,
    /// On a model with attention sinks (GPT-OSS), what a q/k ablation does to the ablated
    /// heads' sinks: keep (the sink keeps its logit; a scaled query attends uniformly over the
    /// keys with what the sink leaves) or drop (the sink leaves the head's softmax too).
    #[arg(long, default_value = "keep", value_name = "keep|drop")]
    pub sink: String,
}

impl OpArgs {
    pub fn parse(&self) -> Result<Ablation> {
        let op = Op::from_mode(&self.mode, self.epsilon)?;
        let target = match (&self.target, op) {
            (Some(t), _) => t.parse()?,
            (None, Op::Patch) => sahara::model::ablation::Target::Z,
            (None, _) => sahara::model::ablation::Target::Q,
        };
        let ablation = Ablation::new(target, op)?;
        // `drop` acts through a q/k ablation.
        let sink: SinkPolicy = self.sink.parse()?;
        if sink == SinkPolicy::Drop && ablation.target == Target::Z {
            return Err(Error::Conflict {
                setting: Setting::Sink,
                reason: "drop changes what a q or k ablation does to the head's attention sink; target v leaves attention as it is".into(),
            });
        }
        Ok(ablation)
    }

    /// [`OpArgs::parse`] for the commands that take no patch (only `sahara ships` has a
    /// source to patch from).
    pub fn parse_no_patch(&self) -> Result<Ablation> {
        let a = self.parse()?;
        if a.op == Op::Patch {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: "patch needs a source prompt per query: only `sahara ships --source-data FILE` patches heads".into(),
            });
        }
        Ok(a)
    }

    /// The sink policy, checked against the ablation ([`OpArgs::parse`]).
    pub fn sink(&self) -> Result<SinkPolicy> {
        self.parse()?;
        self.sink.parse()
    }

    /// Sets the model's sink policy ([`OpArgs::sink`]); `drop` needs a model with sinks.
    pub fn apply_sink(&self, model: &mut LoadedModel) -> Result<()> {
        let sink = self.sink()?;
        if sink == SinkPolicy::Drop && !model.cfg().attention_sinks {
            return Err(Error::Conflict {
                setting: Setting::Sink,
                reason: format!(
                    "drop needs a model with attention sinks (GPT-OSS); {} has none",
                    model.cfg().architecture
                ),
            });
        }
        model.decoder.sink_policy = sink;
        Ok(())
    }

    /// The ablations of an `L:H[,L:H…]` list, checked against the model; for k with
    /// grouped-query attention, a note per head says which query heads it changes.
    pub fn ablations(&self, heads: &str, model: &LoadedModel) -> Result<Vec<HeadAblation>> {
        let list = self.parse_no_patch()?.of(&HeadSet::parse(heads)?.0);
        for a in &list {
            a.validate(model.cfg())?;
            if let Some(note) = a.shared_note(model.cfg()) {
                eprintln!("note: {note}");
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

impl DataArgs {
    /// Loads the queries and encodes every one up front, so that a bad query stops the run
    /// before any output is written.
    pub fn encode(&self, model: &LoadedModel, template: &Template) -> Result<Vec<EncodedQuery>> {
        let path = sahara::io::data::data_file(&self.data)?;
        let data = sahara::io::data::load_queries(&path, self.column.as_deref(), self.limit)?;
        model.prompts.encode_queries(
            template,
            &data.queries,
            &self.data,
            model.cfg().max_position_embeddings,
        )
    }
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
    /// fast (shared prefix, batched variants, last position only), naive (one full forward
    /// per head), or, for `sahara ships`, screen (every head estimated from a few backward
    /// passes, the top ones then scored by fast: --screen-tokens, --verify-top).
    #[arg(long, default_value = "fast")]
    pub engine: String,
    /// Ablation variants per batch (default: planned from the memory budget).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Upper bound, in GiB, on the memory of one batch of activations when --batch-size is
    /// not given (default: 1 on the CPU; on a GPU 80% of its free memory, which also bounds
    /// this).
    #[arg(long)]
    pub memory_gb: Option<f64>,
}

impl EngineArgs {
    /// The options, with the memory budget planned for the model's devices (after the model
    /// is on them).
    pub fn parse(
        &self,
        placement: &sahara::model::decoder::DevicePlan,
    ) -> Result<sahara::methods::engine::EngineOptions> {
        if self.batch_size == Some(0) {
            return Err(Error::out_of_range(
                Setting::BatchSize,
                0,
                "must be at least 1",
            ));
        }
        let limit = match self.memory_gb {
            None => None,
            Some(g) if g.is_finite() && g > 0.0 => Some((g * (1u64 << 30) as f64) as usize),
            Some(g) => {
                return Err(Error::out_of_range(
                    Setting::MemoryBudget,
                    g,
                    "must be positive",
                ))
            }
        };
        Ok(sahara::methods::engine::EngineOptions {
            kind: self.engine.parse()?,
            batch_size: self.batch_size,
            memory_budget: sahara::device::placement_budget(placement, limit)?,
            simulate_oom_above: fault_oom_above()?,
        })
    }
}

/// The simulated out-of-memory fault point, from its environment variable
/// (`sahara::methods::engine::FAULT_OOM_ABOVE`).
pub fn fault_oom_above() -> Result<Option<usize>> {
    let name = sahara::methods::engine::FAULT_OOM_ABOVE;
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => {
            v.trim().parse().map(Some).map_err(|_| {
                Error::InvalidArgument(format!("{name}={v:?} is not a number of rows"))
            })
        }
    }
}

/// Which shard of a run this process computes.
#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// Compute shard I of N (0 ≤ I < N) into the folder given by --out, shared by all shards;
    /// `sahara merge` turns the folder into the file a single run writes. Default: from a
    /// Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with --shards); `--shard 0/1` runs unsharded there.
    #[arg(long)]
    pub shard: Option<String>,
    /// Number of shards, for a Kubernetes Indexed Job (its completions).
    #[arg(long)]
    pub shards: Option<usize>,
}

impl ShardArgs {
    /// The shard, or `None` for a single run (`0/1` included).
    pub fn resolve(&self, quiet: bool) -> Result<Option<sahara::io::shard::Shard>> {
        use sahara::io::shard::Shard;
        let shard = match &self.shard {
            Some(s) => {
                let s = Shard::parse(s)?;
                if let Some(n) = self.shards.filter(|&n| n != s.count) {
                    return Err(Error::InvalidArgument(format!(
                        "--shard {}/{} and --shards {n} disagree",
                        s.index, s.count
                    )));
                }
                s
            }
            None => match Shard::from_env(|k| std::env::var(k).ok(), self.shards)? {
                Some(s) => {
                    if !quiet {
                        eprintln!(
                            "note: shard {}/{} from the scheduler's environment (--shard 0/1 runs unsharded)",
                            s.index, s.count
                        );
                    }
                    s
                }
                None if self.shards.is_some() => {
                    return Err(Error::InvalidArgument(
                        "--shards is for a Kubernetes Indexed Job (JOB_COMPLETION_INDEX is not set): give --shard I/N".into(),
                    ))
                }
                None => return Ok(None),
            },
        };
        Ok((shard.count > 1).then_some(shard))
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
    data: &DataArgs,
    queries: &[EncodedQuery],
    template: &Template,
    system: &Option<String>,
    ablation: Ablation,
) -> Result<RunRecord> {
    let mut r = RunRecord::new(command, model, &data.data, queries)?;
    r.set_template(model, template, system)
        .set_ablation(ablation)
        .set("dtype", sahara::device::dtype_name(model.decoder.dtype));
    Ok(r)
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
                return Err(Error::out_of_range(
                    Setting::Temperature,
                    t,
                    "must be a non-negative number",
                ));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::out_of_range(Setting::TopK, 0, "must be at least 1"));
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

/// The judges of responses and how a reasoning model's answer is found.
#[derive(Args, Debug, Clone)]
pub struct JudgeArgs {
    /// A judge of the responses: keyword (refusal phrases; the default), paper (the paper's
    /// rule_based_discrimination, exactly), jbb-refusal (JailbreakBench's refusal prefixes),
    /// or a classifier model: llamaguard:MODEL (Llama Guard 3), harmbench:MODEL (the
    /// HarmBench classifier), strongreject:MODEL (StrongREJECT's fine-tuned judge; a LoRA
    /// adapter folder with --judge-base). Repeat for several: each is its own column, and
    /// the first is the main judge.
    #[arg(long = "judge", value_name = "NAME")]
    pub judge: Vec<String>,
    /// The base model of a judge given as a LoRA adapter folder (StrongREJECT's judge is an
    /// adapter on Gemma 2B).
    #[arg(long, value_name = "MODEL")]
    pub judge_base: Option<PathBuf>,
    /// StrongREJECT score (0–1, the expected grade) at or above which a response is harmful.
    #[arg(long, default_value_t = sahara::methods::judge::model::DEFAULT_STRONGREJECT_THRESHOLD)]
    pub strongreject_threshold: f64,
    /// Responses a judge model scores in one forward pass.
    #[arg(long, default_value_t = sahara::methods::judge::model::DEFAULT_JUDGE_BATCH)]
    pub judge_batch_size: usize,
    /// Compute dtype of judge models (as --dtype).
    #[arg(long, default_value = "auto")]
    pub judge_dtype: String,
    /// Device of judge models (as --device).
    #[arg(long, default_value = "cpu")]
    pub judge_device: String,
    /// Refusal phrases, one a line, replacing the keyword judge's list (the paper's).
    #[arg(long)]
    pub refusal_phrases: Option<PathBuf>,
    /// How responses hold reasoning before the answer the judges see: auto (from the
    /// model's vocabulary, or from each response's markers), none, think (<think>…</think>),
    /// harmony (GPT-OSS channels).
    #[arg(long, default_value = "auto")]
    pub reasoning: String,
}

impl JudgeArgs {
    /// The panel of judges, `keyword` alone when none is named.
    pub fn panel(&self) -> Result<sahara::methods::judge::Panel> {
        let phrases = match &self.refusal_phrases {
            Some(p) => Some(sahara::methods::judge::RefusalMatcher::from_file(p)?),
            None => None,
        };
        let names = if self.judge.is_empty() {
            vec!["keyword".to_string()]
        } else {
            self.judge.clone()
        };
        let models = sahara::methods::judge::model::JudgeModelOptions {
            dtype: self.judge_dtype.clone(),
            device: self.judge_device.clone(),
            base: self.judge_base.clone(),
            strongreject_threshold: self.strongreject_threshold,
            batch_size: self.judge_batch_size,
        };
        sahara::methods::judge::Panel::by_names_with(&names, phrases.as_ref(), &models)
    }

    /// The reasoning format asked for; `None` for auto.
    pub fn reasoning(&self) -> Result<Option<sahara::methods::judge::reasoning::Format>> {
        match self.reasoning.as_str() {
            "auto" => Ok(None),
            s => s.parse().map(Some).map_err(|_| {
                Error::bad_value(Setting::Reasoning, s, "is not auto, none, think or harmony")
            }),
        }
    }
}
