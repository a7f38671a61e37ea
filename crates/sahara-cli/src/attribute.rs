//! `sahara attribute`: dataset-level safety heads by generalized Ships, grown greedily
//! (the Sahara search).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::io::formats::{schema, AttributeOutput, AttributeStep};
use sahara::io::fs::write_json;
use sahara::io::runlog::claim;
use sahara::methods::sahara::{
    best_head, candidates, final_hidden, gram, greedy_step_with, stack_rows, LeftSubspace,
    SaharaOptions, StepBootstrapPlan,
};
use sahara::{Error, Result};

use crate::common::{
    progress_bar, run_record, short_name, DataArgs, EngineArgs, ModelArgs, OpArgs, ShardArgs,
    TemplateArgs,
};

/// Candidates per chunk for workers when --chunk-heads is not given.
const WORKER_CHUNK: usize = 16;

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
    /// Bootstrap step 1 with this many resamples of the queries: per head, a 95% interval of
    /// its score and how often it would be chosen first, from the N × N Gram matrices of the
    /// candidates' final hidden states (no new forward pass).
    #[arg(long, value_name = "B")]
    pub bootstrap: Option<usize>,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 0, requires = "bootstrap")]
    pub seed: u64,
    /// JSON output, rewritten after every step (resumable). Without it, JSON goes to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Heatmap of step 1's scores with the chosen heads marked (PNG or SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the run's HTML report (`sahara report`) here at the end (needs --out).
    #[arg(long, requires = "out")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Candidates computed together: each step's candidates are cut into chunks of this many
    /// (a fixed plan: a run with workers and a single run with the same value compute the
    /// same numbers). Default: all at once; with workers, 16.
    #[arg(long)]
    pub chunk_heads: Option<usize>,
    /// Run as one of any number of workers sharing the folder --out: each claims chunks of
    /// each step, and whoever sees a step complete chooses its head (there is no
    /// coordinator). `--shard I/N` (or a Slurm array / Indexed Job) names the worker.
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Seconds after which a worker's claim whose heartbeat stopped is taken over.
    #[arg(long, default_value_t = 600.0)]
    pub claim_timeout: f64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let page = a.report.clone();
    let out = run_search(a)?;
    match (page, out) {
        (Some(page), Some(out)) => crate::report::of_run("attribute", &out, &page),
        _ => Ok(()),
    }
}

/// The search; returns the output file written, if any.
fn run_search(a: Args) -> Result<Option<PathBuf>> {
    let template = a.template.parse(&a.model)?;
    let ablation = a.op.parse_no_patch()?;
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    if a.chunk_heads == Some(0) {
        return Err(Error::InvalidArgument(
            "--chunk-heads must be at least 1".into(),
        ));
    }
    if !(a.claim_timeout.is_finite() && a.claim_timeout > 0.0) {
        return Err(Error::InvalidArgument(
            "--claim-timeout must be positive".into(),
        ));
    }
    if a.bootstrap == Some(0) {
        return Err(Error::out_of_range(
            sahara::error::Setting::Resamples,
            0,
            "must be at least 1",
        ));
    }
    let worker = a.shard.resolve(a.quiet)?;
    if worker.is_some() && a.bootstrap.is_some() {
        return Err(Error::InvalidArgument(
            "workers do not bootstrap (each holds only its chunks' hidden states): run step 1 with --bootstrap in one process".into(),
        ));
    }
    if worker.is_some() {
        if a.out.is_none() {
            return Err(Error::InvalidArgument(
                "workers share the folder given with --out DIR".into(),
            ));
        }
        if a.plot.is_some() {
            return Err(Error::InvalidArgument(
                "workers write no plot: `sahara merge DIR --out FILE.json` gives the output to plot from".into(),
            ));
        }
    }
    let mut model = a.model.load()?;
    a.op.apply_sink(&mut model)?;
    let engine = a.engine.parse(&model.decoder.placement)?;
    let cfg = model.cfg().clone();
    let queries = a.data.encode(&model, &template)?;
    let chunk = match worker {
        Some(_) => Some(a.chunk_heads.unwrap_or(WORKER_CHUNK)),
        None => a.chunk_heads,
    };
    let opts = SaharaOptions {
        ablation,
        rank: a.rank,
        steps: a.steps,
        engine,
        chunk,
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
    if let Some(b) = a.bootstrap {
        record.set("bootstrap", b).set("seed", a.seed);
    }
    if let Some(k) = chunk {
        record.set("chunk_heads", k);
    }
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
    let prompts: Vec<Vec<u32>> = queries.iter().map(|q| q.tokens.clone()).collect();
    if let Some(w) = worker {
        let dir = a.out.as_ref().expect("checked above");
        let done = run_worker(
            &a,
            &model,
            &prompts,
            &opts,
            &record,
            &mut out,
            dir,
            &format!("{}-{}", w.index, std::process::id()),
        )?;
        if !a.quiet {
            eprintln!(
                "worker {}: all {} steps done in {}",
                w.index,
                a.steps,
                done.display()
            );
        }
        let selected: Vec<(usize, usize)> = out
            .steps
            .iter()
            .map(|s| (s.selected[0], s.selected[1]))
            .collect();
        report(&a, &out, &selected, &cfg, &model.source, true)?;
        return Ok(Some(done));
    }
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
    if out.steps.len() < a.steps {
        // The unmodified model's final hidden states: its subspace, and for the bootstrap of
        // step 1 their Gram matrix.
        let rows = stack_rows(&final_hidden(&model.decoder, &prompts, &[])?);
        let reference = LeftSubspace::of(&rows)?;
        let start = out.steps.len();
        // Each later step scores one head fewer.
        let heads = candidates(&cfg, &[], ablation).len();
        let n = prompts.len();
        let per_step = |s: usize| n * heads.saturating_sub(s);
        let total: usize = (start..a.steps).map(per_step).sum();
        let reference_gram = match (a.bootstrap, start) {
            (Some(_), 0) => Some(gram(&rows)),
            _ => None,
        };
        let pb = progress_bar(total as u64, a.quiet, "attribute");
        let mut done_before = 0u64;
        for s in start..a.steps {
            pb.set_message(format!("step {}/{}", s + 1, a.steps));
            let bootstrap = match (&reference_gram, a.bootstrap, s) {
                (Some(g), Some(b), 0) => Some(StepBootstrapPlan {
                    reference: g,
                    resamples: b,
                    seed: a.seed,
                }),
                _ => None,
            };
            let step = greedy_step_with(
                &model.decoder,
                &prompts,
                &selected,
                &reference,
                &opts,
                bootstrap,
                &mut |n| pb.set_position(done_before + n as u64),
            )?;
            done_before += per_step(s) as u64;
            let [l, h] = step.selected;
            selected.push((l, h));
            out.selected.push([l, h]);
            out.steps.push(step);
            if let Some(path) = &a.out {
                write_json(path, &out)?;
                sahara::io::runlog::unit_written();
            }
        }
        pb.finish_and_clear();
    }
    report(&a, &out, &selected, &cfg, &model.source, a.out.is_some())?;
    Ok(a.out.clone())
}

/// The table (stdout with --out, else stderr after the JSON on stdout) and the plot.
fn report(
    a: &Args,
    out: &AttributeOutput,
    selected: &[(usize, usize)],
    cfg: &sahara::ModelConfig,
    source: &str,
    to_file: bool,
) -> Result<()> {
    let ablation = a.op.parse_no_patch()?;
    let queries = out.queries;
    let mut table = format!(
        "Sahara on {} queries (generalized Ships, rank {}, {} {}):\n{:>4}  {:>8}  {:>14}\n",
        queries,
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
    if let Some(b) = out.steps.first().and_then(|s| s.bootstrap.as_ref()) {
        let mut heads: Vec<_> = b.heads.iter().collect();
        heads.sort_by(|x, y| {
            y.p_chosen
                .total_cmp(&x.p_chosen)
                .then(y.score.total_cmp(&x.score))
        });
        table.push_str(&format!(
            "step 1 over {} bootstrap resamples of the queries (seed {}):\n{:>8}  {:>14}  {:>25}  {:>10}\n",
            b.resamples, b.seed, "head", "score (deg)", format!("{:.0}% interval", b.level * 100.0), "P(chosen)"
        ));
        for h in heads.iter().take(5) {
            table.push_str(&format!(
                "{:>8}  {:>14.6}  {:>25}  {:>10.3}\n",
                format!("{}:{}", h.layer, h.head),
                h.score,
                format!("[{:.6}, {:.6}]", h.score_lo, h.score_hi),
                h.p_chosen
            ));
        }
    }
    if let Some(note) = ablation.shared_note(cfg) {
        table.push_str(&format!("note: {note}\n"));
    }
    if to_file {
        print!("{table}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        eprint!("{table}");
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
            short_name(source),
            short_name(&a.data.data)
        );
        sahara::io::plot::write_heatmap(
            p,
            &sahara::io::plot::Heatmap {
                title: &title,
                values: &first,
                marked: selected,
                colorbar_label: "principal angle (degrees)",
            },
        )?;
    }
    Ok(())
}

/// One worker of a run shared through `dir`: for each step, claims and computes chunks of
/// candidates until every chunk has a result (taking over claims whose heartbeat stopped),
/// then chooses the step's head from all of them, as every worker does, the same way.
/// Returns the output file it leaves in `dir` (`attribute.json`, what a single run with
/// `--out` and the same --chunk-heads writes).
#[allow(clippy::too_many_arguments)]
fn run_worker(
    a: &Args,
    model: &sahara::LoadedModel,
    prompts: &[Vec<u32>],
    opts: &SaharaOptions,
    record: &sahara::io::formats::RunRecord,
    out: &mut AttributeOutput,
    dir: &std::path::Path,
    worker: &str,
) -> Result<PathBuf> {
    use sahara::io::claim::{is_stale, read_if_present, take_over, try_claim, Heartbeat};
    use sahara::methods::sahara::{chunk_scores, grid_of, step_chunks, HeadScore};
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let final_path = dir.join("attribute.json");
    // The settings every worker must share: the first writes the record, the rest compare.
    if claim(&final_path, record)? {
        let done = AttributeOutput::read(&final_path)?;
        if done.steps.len() >= a.steps {
            *out = done;
            out.steps.truncate(a.steps);
            out.selected.truncate(a.steps);
            return Ok(final_path);
        }
    }
    let timeout = std::time::Duration::from_secs_f64(a.claim_timeout);
    let poll = std::time::Duration::from_millis(200).min(timeout / 4);
    let reference = LeftSubspace::of(&stack_rows(&final_hidden(&model.decoder, prompts, &[])?))?;
    let cfg = model.cfg();
    let mut selected: Vec<(usize, usize)> = Vec::new();
    out.steps.clear();
    out.selected.clear();
    for s in 0..a.steps {
        let step_dir = dir.join(format!("step-{:03}", s + 1));
        let choice = step_dir.join("choice.json");
        let step = match read_if_present::<AttributeStep>(&choice)? {
            Some(step) => step,
            None => {
                std::fs::create_dir_all(&step_dir).map_err(|e| Error::io(&step_dir, e))?;
                let ranges = step_chunks(cfg, &selected, opts);
                let result = |k: usize| step_dir.join(format!("chunk-{k:05}.json"));
                loop {
                    let mut waiting = false;
                    for (k, r) in ranges.iter().enumerate() {
                        if read_if_present::<Vec<HeadScore>>(&result(k))?.is_some() {
                            continue;
                        }
                        let claim_path = step_dir.join(format!("chunk-{k:05}.claim"));
                        let mine = try_claim(&claim_path, worker)?
                            || (is_stale(&claim_path, timeout) && take_over(&claim_path, worker)?);
                        if !mine {
                            waiting = true;
                            continue;
                        }
                        // Finished by another worker between the check and the claim.
                        if read_if_present::<Vec<HeadScore>>(&result(k))?.is_some() {
                            continue;
                        }
                        let _heartbeat = Heartbeat::start(&claim_path, timeout / 4);
                        let scores = chunk_scores(
                            &model.decoder,
                            prompts,
                            &selected,
                            &reference,
                            opts,
                            r.clone(),
                            &mut |_| {},
                        )
                        .map_err(|e| e.context(format!("step {}, chunk {k}", s + 1)))?;
                        let text = serde_json::to_string(&scores).expect("scores serialize");
                        sahara::io::fs::write_atomic(&result(k), text.as_bytes())?;
                        sahara::io::runlog::unit_written();
                    }
                    if !waiting {
                        break;
                    }
                    std::thread::sleep(poll);
                }
                let mut scores = Vec::new();
                for k in 0..ranges.len() {
                    scores.extend(read_if_present::<Vec<HeadScore>>(&result(k))?.ok_or_else(
                        || Error::InvalidArgument(format!("{} vanished", result(k).display())),
                    )?);
                }
                let grid = grid_of(cfg, &scores);
                let (l, h, score) = best_head(&grid)
                    .ok_or_else(|| Error::InvalidArgument("no head left to select".into()))?;
                let step = AttributeStep {
                    selected: [l, h],
                    score,
                    scores: grid,
                    bootstrap: None,
                };
                // Every worker that gets here computes the same step.
                let text = serde_json::to_string(&step).expect("steps serialize");
                sahara::io::fs::write_atomic(&choice, text.as_bytes())?;
                step
            }
        };
        selected.push((step.selected[0], step.selected[1]));
        out.selected.push(step.selected);
        out.steps.push(step);
    }
    write_json(&final_path, out)?;
    Ok(final_path)
}
