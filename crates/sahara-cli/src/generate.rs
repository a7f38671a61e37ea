//! `sahara generate`: one prompt, one continuation.

use clap::Args as ClapArgs;
use sahara::generate::{generate, GenerateOptions, Sampling};
use sahara::{Error, Result};

use crate::common::{ModelArgs, OpArgs, TemplateArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (a query, turned into a prompt by --template).
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Heads to ablate: L:H[,L:H…].
    #[arg(long)]
    pub ablate: Option<String>,
    #[command(flatten)]
    pub op: OpArgs,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample from the top K tokens instead of greedy decoding.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sampling temperature (sampling instead of greedy decoding).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    a.op.parse()?;
    if a.max_new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "--max-new-tokens must be at least 1".into(),
        ));
    }
    if let Some(t) = a.temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--temperature must be a non-negative number, got {t}"
            )));
        }
    }
    let model = a.model.load()?;
    let ablations = match &a.ablate {
        Some(h) => a.op.ablations(h, &model)?,
        None => vec![],
    };
    let (prompt, ids) = model.prompts.encode_query(&template, &a.prompt)?;
    let sampling = match (a.top_k, a.temperature) {
        (None, None) => Sampling::Greedy,
        (k, t) => Sampling::Sample {
            temperature: t.unwrap_or(1.0),
            top_k: k,
        },
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        seed: a.seed,
        eos: model.eos.clone(),
    };
    let out = generate(
        &model.decoder,
        std::slice::from_ref(&ids),
        &[ablations],
        model.prompts.pad_id,
        &opts,
    )?;
    let tokens = &out[0];
    let text = model.prompts.decode(tokens)?;
    if a.json {
        let v = serde_json::json!({
            "prompt": prompt,
            "prompt_tokens": ids,
            "tokens": tokens,
            "text": text,
        });
        println!("{v}");
    } else {
        println!("{text}");
    }
    Ok(())
}
