//! `sahara attribute`: dataset-level safety heads by generalized Ships, grown greedily
//! (the Sahara search).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::io::formats::{schema, AttributeOutput, AttributeStep};
use sahara::io::fs::write_json;
use sahara::io::runlog::claim;
use sahara::methods::sahara::{
    best_head, candidates, final_hidden, stack_rows, step_scores, LeftSubspace, SaharaOptions,
};
use sahara::{Error, Result};

use crate::common::{
    progress_bar, run_record, short_name, DataArgs, EngineArgs, ModelArgs, OpArgs, TemplateArgs,
};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub op: OpArgs,
    /// Heads to select greedily.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Rank r of the compared singular subspaces.
    #[arg(long, default_value_t = 1)]
    pub rank: usize,
    /// JSON output, rewritten after every step (resumable). Without it, JSON goes to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Heatmap of step 1's scores with the chosen heads marked (PNG or SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    let ablation = a.op.parse()?;
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    let model = a.model.load()?;
    let engine = a.engine.parse(&model.decoder.device)?;
    let cfg = model.cfg().clone();
    let queries = a.data.encode(&model, &template)?;
    let opts = SaharaOptions {
        ablation,
        rank: a.rank,
        steps: a.steps,
        engine,
    };
    opts.validate(&cfg, queries.len())?;
    let mut record = run_record(
        "attribute",
        &model,
        &a.data,
        &queries,
        &template,
        &a.template.system,
        ablation,
    )?;
    record.set("rank", a.rank);
    let mut out = AttributeOutput {
        schema: schema::ATTRIBUTE.into(),
        model: model.source.clone(),
        data: a.data.data.clone(),
        queries: queries.len(),
        template: template.name(),
        target: ablation.target,
        mode: ablation.op.mode_str().into(),
        epsilon: ablation.op.epsilon(),
        rank: a.rank,
        selected: vec![],
        steps: vec![],
    };
    // Resume from the steps an earlier identical run finished.
    if let Some(path) = &a.out {
        if claim(path, &record)? {
            out.steps = AttributeOutput::read(path)?.steps;
            if !a.quiet && !out.steps.is_empty() {
                eprintln!(
                    "resuming: {} of {} steps already in {}",
                    out.steps.len(),
                    a.steps,
                    path.display()
                );
            }
        }
    }
    let mut selected: Vec<(usize, usize)> = out
        .steps
        .iter()
        .map(|s| (s.selected[0], s.selected[1]))
        .collect();
    out.selected = out.steps.iter().map(|s| s.selected).collect();
    let prompts: Vec<Vec<u32>> = queries.iter().map(|q| q.tokens.clone()).collect();
    if out.steps.len() < a.steps {
        let reference =
            LeftSubspace::of(&stack_rows(&final_hidden(&model.decoder, &prompts, &[])?))?;
        let start = out.steps.len();
        // Each later step scores one head fewer.
        let heads = candidates(&cfg, &[], ablation).len();
        let n = prompts.len();
        let per_step = |s: usize| n * heads.saturating_sub(s);
        let total: usize = (start..a.steps).map(per_step).sum();
        let pb = progress_bar(total as u64, a.quiet, "attribute");
        let mut done_before = 0u64;
        for s in start..a.steps {
            pb.set_message(format!("step {}/{}", s + 1, a.steps));
            let grid = step_scores(
                &model.decoder,
                &prompts,
                &selected,
                &reference,
                &opts,
                &mut |n| pb.set_position(done_before + n as u64),
            )?;
            done_before += per_step(s) as u64;
            let (l, h, score) = best_head(&grid)
                .ok_or_else(|| Error::InvalidArgument("no head left to select".into()))?;
            selected.push((l, h));
            out.selected.push([l, h]);
            out.steps.push(AttributeStep {
                selected: [l, h],
                score,
                scores: grid,
            });
            if let Some(path) = &a.out {
                write_json(path, &out)?;
                sahara::io::runlog::unit_written();
            }
        }
        pb.finish_and_clear();
    }
    let mut table = format!(
        "Sahara on {} queries (generalized Ships, rank {}, {} {}):\n{:>4}  {:>8}  {:>14}\n",
        queries.len(),
        a.rank,
        ablation.target.as_str(),
        ablation.op.mode_str(),
        "step",
        "head",
        "score (deg)"
    );
    for (i, s) in out.steps.iter().enumerate() {
        table.push_str(&format!(
            "{:>4}  {:>8}  {:>14.6}\n",
            i + 1,
            format!("{}:{}", s.selected[0], s.selected[1]),
            s.score
        ));
    }
    if let Some(note) = ablation.shared_note(&cfg) {
        table.push_str(&format!("note: {note}\n"));
    }
    match &a.out {
        Some(_) => print!("{table}"),
        None => {
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            eprint!("{table}");
        }
    }
    if let Some(p) = &a.plot {
        let first = out
            .steps
            .first()
            .map(|s| s.scores.clone())
            .unwrap_or_default();
        let title = format!(
            "Generalized Ships, step 1 ({} {}) - {} on {}",
            ablation.target.as_str(),
            ablation.op.mode_str(),
            short_name(&model.source),
            short_name(&a.data.data)
        );
        sahara::io::plot::write_heatmap(
            p,
            &sahara::io::plot::Heatmap {
                title: &title,
                values: &first,
                marked: &selected,
                colorbar_label: "principal angle (degrees)",
            },
        )?;
    }
    Ok(())
}
