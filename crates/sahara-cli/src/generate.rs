//! `sahara generate`: one prompt, one continuation.

use clap::Args as ClapArgs;
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::{Error, Result};

use crate::common::{ModelArgs, OpArgs, SamplingArgs, TemplateArgs};

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
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    a.op.parse_no_patch()?;
    if a.max_new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "--max-new-tokens must be at least 1".into(),
        ));
    }
    let sampling = a.sampling.parse()?;
    let mut model = a.model.load()?;
    a.op.apply_sink(&mut model)?;
    let ablations = match &a.ablate {
        Some(h) => a.op.ablations(h, &model)?,
        None => vec![],
    };
    let (prompt, ids) = model.prompts.encode_query(&template, &a.prompt)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        seed: a.sampling.seed,
        eos: model.eos.clone(),
        simulate_oom_above: crate::common::fault_oom_above()?,
    };
    let out = generate(
        &model.decoder,
        std::slice::from_ref(&ids),
        &[ablations],
        model.prompts.pad_id,
        &opts,
    )
    .map_err(|e| e.name_row(|_| "the prompt".into()))?;
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
