//! `sahara attention`: what one head looks at.

use std::path::PathBuf;

use candle_core::IndexOp;
use clap::Args as ClapArgs;
use sahara::io::formats::{schema, AttentionOutput};
use sahara::model::ablation::AblationPlan;
use sahara::model::finite::{check_output, describe};
use sahara::{Batch, Error, ForwardSpec, Positions, Result};

use crate::common::{short_name, ModelArgs, OpArgs, TemplateArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (a query, turned into a prompt by --template).
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Layer of the head.
    #[arg(long)]
    pub layer: usize,
    /// Head (query head) in the layer.
    #[arg(long)]
    pub head: usize,
    /// Heads to ablate while looking: L:H[,L:H…] (with --target, --mode, --epsilon).
    #[arg(long)]
    pub ablate: Option<String>,
    #[command(flatten)]
    pub op: OpArgs,
    /// Heatmap of the full pattern, every query position over every key position (PNG or SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of the table (the model, prompt and head with the
    /// pattern).
    #[arg(long)]
    pub json: bool,
    /// Write that JSON object to FILE.json (for `sahara report --attention`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    a.op.parse_no_patch()?;
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    let mut model = a.model.load()?;
    a.op.apply_sink(&mut model)?;
    let cfg = model.cfg();
    if a.layer >= cfg.num_layers {
        return Err(Error::InvalidArgument(format!(
            "--layer {} out of range: the model has {} layers (0..{})",
            a.layer, cfg.num_layers, cfg.num_layers
        )));
    }
    if a.head >= cfg.num_heads {
        return Err(Error::InvalidArgument(format!(
            "--head {} out of range: the model has {} heads per layer (0..{})",
            a.head, cfg.num_heads, cfg.num_heads
        )));
    }
    let ablations = match &a.ablate {
        Some(h) => a.op.ablations(h, &model)?,
        None => vec![],
    };
    let (prompt, ids) = model.prompts.encode_query(&template, &a.prompt)?;
    if ids.len() > cfg.max_position_embeddings {
        return Err(Error::Prompt(format!(
            "{} tokens exceed the model's context of {} positions",
            ids.len(),
            cfg.max_position_embeddings
        )));
    }
    let dev = &model.decoder.device;
    let plan = AblationPlan::new(
        cfg,
        std::slice::from_ref(&ablations),
        model.decoder.dtype,
        dev,
    )?;
    let mut spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
    spec.logits = false;
    spec.pattern_layer = Some(a.layer);
    let batch = Batch::new(std::slice::from_ref(&ids), 0, dev)?;
    let out = model.decoder.forward(&batch, &spec, None)?;
    // (1, H, T, T) -> (T, T)
    let pattern: Vec<Vec<f32>> = out
        .pattern
        .expect("pattern requested")
        .i((0, a.head))?
        .to_vec2()?;
    let flat: Vec<f32> = pattern.iter().flatten().copied().collect();
    check_output(
        &model.decoder,
        &ids,
        &ablations,
        &flat,
        || describe(&ablations),
        None,
    )?;
    let tokens: Vec<String> = ids
        .iter()
        .map(|&id| {
            model
                .prompts
                .tokenizer
                .id_to_token(id)
                .unwrap_or_else(|| format!("<{id}>"))
        })
        .collect();
    let last = &pattern[ids.len() - 1];
    let ablation = a.op.parse_no_patch()?;
    let output = AttentionOutput {
        schema: schema::ATTENTION.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: model.source.clone(),
        model_fingerprint: model.fingerprint()?,
        query: a.prompt.clone(),
        template: template.name(),
        prompt: prompt.clone(),
        layer: a.layer,
        head: a.head,
        ablated: ablations.iter().map(|x| [x.layer, x.head]).collect(),
        target: ablation.target,
        mode: ablation.op.mode_str().into(),
        epsilon: ablation.op.epsilon(),
        tokens: tokens.clone(),
        last: last.clone(),
        pattern: pattern.clone(),
    };
    if let Some(out) = &a.out {
        sahara::io::fs::write_json(out, &output)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&output).expect("the output serializes")
        );
    } else {
        let width = tokens
            .iter()
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 24);
        println!(
            "Head {}:{} of {}: attention from the last position ({:?}) over the {} prompt tokens",
            a.layer,
            a.head,
            model.source,
            tokens.last().map(String::as_str).unwrap_or(""),
            tokens.len()
        );
        println!("{:>4}  {:<width$}  {:>6}", "pos", "token", "weight");
        for (i, (t, w)) in tokens.iter().zip(last).enumerate() {
            let bar = "#".repeat((w * 40.0).round() as usize);
            println!("{i:>4}  {t:<width$}  {w:>6.3}  {bar}");
        }
    }
    if let Some(p) = &a.plot {
        let values: Vec<Vec<f64>> = pattern
            .iter()
            .map(|r| r.iter().map(|&x| x as f64).collect())
            .collect();
        let title = format!(
            "Attention of head {}:{} - {}",
            a.layer,
            a.head,
            short_name(&model.source)
        );
        sahara::io::attention_plot::write_pattern_heatmap(
            p,
            &sahara::io::attention_plot::PatternMap {
                title: &title,
                queries: &tokens,
                keys: &tokens,
                values: &values,
                marked_row: Some(tokens.len() - 1),
            },
        )?;
    }
    Ok(())
}
