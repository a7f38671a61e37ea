//! `sahara attribute`: dataset-level safety heads by generalized Ships, grown greedily
//! (the Sahara search).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::io::runlog::{sibling, write_atomic};
use sahara::methods::sahara::{
    best_head, final_hidden, stack_rows, step_scores, LeftSubspace, SaharaOptions,
};
use sahara::methods::ships::grid_from_json;
use sahara::{Error, Result};
use serde_json::{json, Value};

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
    let (target, op) = a.op.parse()?;
    let engine = a.engine.parse()?;
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    let model = a.model.load()?;
    let cfg = model.cfg().clone();
    let (_data, queries) = a.data.encode(&model, &template)?;
    let opts = SaharaOptions {
        target,
        op,
        rank: a.rank,
        steps: a.steps,
        engine,
    };
    opts.validate(&cfg, queries.len())?;
    let epsilon = op.epsilon_json();
    let mut record = run_record(
        "attribute",
        &model,
        &a.model,
        &a.data,
        &queries,
        &template,
        &a.template.system,
        target,
        op,
    )?;
    record["rank"] = json!(a.rank);
    let mut out = json!({
        "model": model.spec,
        "data": a.data.data,
        "queries": queries.len(),
        "template": template.name(),
        "target": target.as_str(),
        "mode": op.mode_str(),
        "epsilon": epsilon,
        "rank": a.rank,
        "selected": [],
        "steps": [],
    });
    // Resume from the steps an earlier identical run finished.
    let mut selected: Vec<(usize, usize)> = Vec::new();
    let mut steps: Vec<Value> = Vec::new();
    if let Some(path) = &a.out {
        let record_path = sibling(path, "run.json");
        if path.exists() {
            let old_record: Option<Value> = std::fs::read_to_string(&record_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            match old_record {
                Some(r) if r == record => {}
                Some(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "{} holds an earlier run with other settings (see {}); choose another --out or remove both",
                        path.display(),
                        record_path.display()
                    )))
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "{} exists but its run record {} is missing or unreadable; choose another --out or remove it",
                        path.display(),
                        record_path.display()
                    )))
                }
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            let old: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
            for s in old["steps"].as_array().cloned().unwrap_or_default() {
                let sel = s["selected"].as_array().and_then(|p| {
                    Some((p.first()?.as_u64()? as usize, p.get(1)?.as_u64()? as usize))
                });
                match (sel, grid_from_json(&s["scores"])) {
                    (Some(h), Some(_)) => {
                        selected.push(h);
                        steps.push(s);
                    }
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "{}: a step is malformed; remove the file to start over",
                            path.display()
                        )))
                    }
                }
            }
            if !a.quiet && !steps.is_empty() {
                eprintln!(
                    "resuming: {} of {} steps already in {}",
                    steps.len(),
                    a.steps,
                    path.display()
                );
            }
        } else {
            write_atomic(
                &record_path,
                &serde_json::to_vec_pretty(&record).expect("JSON"),
            )?;
        }
    }
    let prompts: Vec<Vec<u32>> = queries.iter().map(|q| q.tokens.clone()).collect();
    if steps.len() < a.steps {
        let reference =
            LeftSubspace::of(&stack_rows(&final_hidden(&model.decoder, &prompts, &[])?))?;
        let start = steps.len();
        // Each later step scores one head fewer.
        let heads = sahara::methods::sahara::candidates(&cfg, &[], target).len();
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
            steps.push(json!({"selected": [l, h], "score": score, "scores": grid}));
            out["selected"] = json!(selected.iter().map(|&(l, h)| [l, h]).collect::<Vec<_>>());
            out["steps"] = json!(steps);
            if let Some(path) = &a.out {
                write_atomic(path, &serde_json::to_vec_pretty(&out).expect("JSON"))?;
            }
        }
        pb.finish_and_clear();
    }
    out["selected"] = json!(selected.iter().map(|&(l, h)| [l, h]).collect::<Vec<_>>());
    out["steps"] = json!(steps);
    let mut table = format!(
        "Sahara on {} queries (generalized Ships, rank {}, {} {}):\n{:>4}  {:>8}  {:>14}\n",
        queries.len(),
        a.rank,
        target.as_str(),
        op.mode_str(),
        "step",
        "head",
        "score (deg)"
    );
    for (i, s) in steps.iter().enumerate() {
        table.push_str(&format!(
            "{:>4}  {:>8}  {:>14.6}\n",
            i + 1,
            format!("{}:{}", s["selected"][0], s["selected"][1]),
            s["score"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    if target == sahara::Target::K && cfg.group_size() > 1 {
        table.push_str(&format!(
            "note: target k ablates a key/value head shared by {} query heads\n",
            cfg.group_size()
        ));
    }
    match &a.out {
        Some(_) => print!("{table}"),
        None => {
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            eprint!("{table}");
        }
    }
    if let Some(p) = &a.plot {
        let first = steps
            .first()
            .and_then(|s| grid_from_json(&s["scores"]))
            .unwrap_or_default();
        let title = format!(
            "Generalized Ships, step 1 ({} {}) - {} on {}",
            target.as_str(),
            op.mode_str(),
            short_name(&model.spec),
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
