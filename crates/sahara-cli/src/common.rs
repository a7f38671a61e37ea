//! Arguments shared by several commands.

use candle_core::{DType, Device};
use clap::Args;
use sahara::ablation::{parse_heads, HeadAblation, Op, Target};
use sahara::{Error, LoadedModel, Result, Template};

/// Where the model comes from and how it is run.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in Hugging Face layout, or a hub id (org/name) in the local cache.
    #[arg(long)]
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
        let dtype: DType = sahara::model::parse_dtype(&self.dtype)?;
        let device = parse_device(&self.device)?;
        LoadedModel::load(&self.model, dtype, &device)
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
    #[arg(long, default_value = "raw")]
    pub template: String,
    /// System message for --template chat.
    #[arg(long)]
    pub system: Option<String>,
}

impl TemplateArgs {
    pub fn parse(&self) -> Result<Template> {
        Template::parse(&self.template, self.system.clone())
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
