//! `sahara ships`: per-query safety importance of every attention head.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::io::runlog::{sibling, write_atomic, JsonlRun};
use sahara::methods::ships::{
    grid_from_json, parse_range, ships_scores, summarize, top_heads, HeadGrid, ShipsOptions,
    Summary,
};
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
    /// Layers to score: A..B (B excluded), A..=B or A. Default: all.
    #[arg(long)]
    pub layers: Option<String>,
    /// Heads to score in each layer: A..B, A..=B or A. Default: all.
    #[arg(long)]
    pub heads: Option<String>,
    /// How many top heads each query lists, and the K of the appearance count.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// JSON Lines output, one line per query (resumable); the summary goes beside it as
    /// FILE.summary.json. Without it, lines go to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Heatmap of mean Ships (PNG or SVG by extension).
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
    if a.top == 0 {
        return Err(Error::InvalidArgument("--top must be at least 1".into()));
    }
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    let model = a.model.load()?;
    let cfg = model.cfg().clone();
    let mut opts = ShipsOptions::new(&cfg);
    opts.target = target;
    opts.op = op;
    opts.engine = engine;
    if let Some(l) = &a.layers {
        opts.layers = parse_range(l, cfg.num_layers)?;
    }
    if let Some(h) = &a.heads {
        opts.heads = parse_range(h, cfg.num_heads)?;
    }
    opts.validate(&cfg)?;
    let (_data, queries) = a.data.encode(&model, &template)?;
    let epsilon = op.epsilon_json();
    let mut record = run_record(
        "ships",
        &model,
        &a.model,
        &a.data,
        &queries,
        &template,
        &a.template.system,
        target,
        op,
    )?;
    record["layers"] = json!([opts.layers.start, opts.layers.end]);
    record["heads"] = json!([opts.heads.start, opts.heads.end]);
    record["top"] = json!(a.top);
    let mut run = match &a.out {
        Some(p) => Some(JsonlRun::open(p, &record)?),
        None => None,
    };
    let mut grids: Vec<HeadGrid> = Vec::new();
    if let Some(r) = &run {
        for (i, line) in r.done.iter().enumerate() {
            let same_query = queries
                .get(i)
                .is_some_and(|q| line.get("index").and_then(Value::as_u64) == Some(q.index as u64));
            match line.get("scores").and_then(grid_from_json).filter(|_| same_query) {
                Some(g) => grids.push(g),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "{}: line {} does not match query {i} of the data; remove the file to start over",
                        r.path.display(),
                        i + 1
                    )))
                }
            }
        }
        if !r.done.is_empty() && !a.quiet {
            eprintln!(
                "resuming: {} of {} queries already in {}",
                r.done.len(),
                queries.len(),
                r.path.display()
            );
        }
    }
    let per_query = opts.variants_per_query(&cfg);
    let remaining = &queries[grids.len()..];
    let pb = progress_bar((remaining.len() * per_query) as u64, a.quiet, "ships");
    for (qi, q) in remaining.iter().enumerate() {
        let base = (qi * per_query) as u64;
        let grid = ships_scores(&model.decoder, &q.tokens, &opts, &mut |n| {
            pb.set_position(base + n as u64)
        })?;
        let top: Vec<Value> = top_heads(&grid, a.top)
            .into_iter()
            .map(|t| json!({"layer": t.layer, "head": t.head, "score": t.score}))
            .collect();
        let line = json!({
            "index": q.index,
            "query": q.text,
            "prompt_tokens": q.tokens.len(),
            "target": target.as_str(),
            "mode": op.mode_str(),
            "epsilon": epsilon,
            "scores": grid,
            "top": top,
        });
        match &mut run {
            Some(r) => r.append(&line)?,
            None => println!("{line}"),
        }
        grids.push(grid);
    }
    pb.finish_and_clear();
    let summary = summarize(&grids, a.top);
    if let Some(out) = &a.out {
        let path = sibling(out, "summary.json");
        let mut v = serde_json::to_value(&summary).expect("summary serializes");
        v["model"] = json!(model.spec);
        v["data"] = json!(a.data.data);
        v["target"] = json!(target.as_str());
        v["mode"] = json!(op.mode_str());
        v["epsilon"] = epsilon.clone();
        if target == sahara::Target::K && cfg.group_size() > 1 {
            v["note"] = json!(format!(
                "target k ablates a key/value head shared by {} query heads; every head of a group has the group's score",
                cfg.group_size()
            ));
        }
        write_atomic(&path, &serde_json::to_vec_pretty(&v).expect("JSON"))?;
    }
    print_summary(&summary, a.out.is_none());
    if let Some(p) = &a.plot {
        let title = format!(
            "Mean Ships ({} {}) - {} on {}",
            target.as_str(),
            op.mode_str(),
            short_name(&model.spec),
            short_name(&a.data.data)
        );
        sahara::io::plot::write_heatmap(
            p,
            &sahara::io::plot::Heatmap {
                title: &title,
                values: &summary.mean,
                marked: &[],
                colorbar_label: "mean KL (nats)",
            },
        )?;
    }
    Ok(())
}

fn print_summary(s: &Summary, to_stderr: bool) {
    let mut text = format!(
        "{} queries. Heads by mean Ships, and by appearances in the per-query top {}:\n",
        s.queries, s.top_k
    );
    text.push_str(&format!(
        "{:>4}  {:>8}  {:>12}  {:>6}    {:>8}  {:>6}  {:>12}\n",
        "rank", "head", "mean Ships", "top-K", "head", "top-K", "mean Ships"
    ));
    for i in 0..s.by_mean.len().min(10) {
        let m = &s.by_mean[i];
        let c = &s.by_count[i];
        text.push_str(&format!(
            "{:>4}  {:>8}  {:>12.6}  {:>6}    {:>8}  {:>6}  {:>12.6}\n",
            i + 1,
            format!("{}:{}", m.layer, m.head),
            m.mean,
            m.count,
            format!("{}:{}", c.layer, c.head),
            c.count,
            c.mean
        ));
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}
