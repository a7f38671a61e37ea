//! `sahara eval`: attack success rate with and without ablated heads, and the cost of the
//! ablation on benign prompts.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use sahara::io::formats::{schema, EvalLine, EvalSummary, HeadsFile, Judged, RunRecord};
use sahara::io::fs::write_json;
use sahara::io::prompt::EncodedQuery;
use sahara::io::runlog::{queries_fingerprint, sibling, Lines};
use sahara::methods::eval::{summarize, Condition, ConditionSummary, EvalOptions, Outcome, Set};
use sahara::methods::generate::{GenerateOptions, Sampling};
use sahara::methods::judge::reasoning::Format;
use sahara::model::ablation::{Ablation, HeadSet};
use sahara::{Error, Result};
use serde_json::json;

use crate::common::{
    check_heads_model, progress_bar, DataArgs, JudgeArgs, ModelArgs, OpArgs, SamplingArgs,
    ShardArgs, TemplateArgs,
};

/// New tokens per response when `--max-new-tokens` is not given and the context has room.
const DEFAULT_MAX_NEW_TOKENS: usize = 128;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Heads to ablate together, L:H[,L:H…]; repeat for more conditions. The unmodified model
    /// is always evaluated first.
    #[arg(long)]
    pub ablate: Vec<String>,
    /// Heads from the JSON output of `sahara attribute` ("selected") or the FILE.jsonl.summary.json
    /// of `sahara ships` ("by_mean"), best first.
    #[arg(long)]
    pub heads_from: Option<PathBuf>,
    /// With --heads-from: ablate the first K heads (default: all heads an attribute output
    /// selected; required for a ships summary).
    #[arg(long, requires = "heads_from")]
    pub top: Option<usize>,
    /// With --heads-from: evaluate each prefix 1..=K of the heads as its own condition.
    #[arg(long, requires = "heads_from")]
    pub sweep: bool,
    /// Use a --heads-from file even when its run record says it was computed for another
    /// model.
    #[arg(long, requires = "heads_from")]
    pub heads_from_any_model: bool,
    #[command(flatten)]
    pub op: OpArgs,
    /// New tokens per response at most (generation stops earlier at end-of-sequence).
    /// Default: 128, or fewer where the longest prompt leaves less room in the model's
    /// context (a note says so).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Prompts generated together in one batch (default: 16 on the CPU; on a GPU planned
    /// from its free memory, at most 256).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Harmless prompts (same formats as --data): measure over-refusal, unchanged responses
    /// and the first-token KL divergence of each condition.
    #[arg(long)]
    pub benign: Option<String>,
    /// CSV column / JSON key of the benign prompts (default: as for --data).
    #[arg(long, requires = "benign")]
    pub benign_column: Option<String>,
    /// Use only the first N benign prompts.
    #[arg(long, requires = "benign")]
    pub benign_limit: Option<usize>,
    /// A plain text whose perplexity each condition reports, with its ratio to the unmodified
    /// model's: a UTF-8 file, builtin:constitution (the Preamble and Article I of the US
    /// Constitution, public domain, for English models) or builtin:organism-chats (benign
    /// chats in the built-in organism's language).
    #[arg(long, value_name = "TEXT")]
    pub perplexity: Option<String>,
    /// Tokens per perplexity window (default: 512, or the model's context if shorter).
    #[arg(long, requires = "perplexity")]
    pub perplexity_window: Option<usize>,
    #[command(flatten)]
    pub judges: JudgeArgs,
    /// JSON Lines output, one line per response (resumable); the summary goes beside it as
    /// FILE.jsonl.summary.json. Without it, lines go to stdout and the table to stderr.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the run's HTML report (`sahara report`) here at the end (needs --out).
    #[arg(long, requires = "out")]
    pub report: Option<PathBuf>,
    /// No progress bar and no notes.
    #[arg(long)]
    pub quiet: bool,
}

/// The conditions: the unmodified model, each --ablate list, then the --heads-from sets. A
/// set of heads given twice is evaluated once.
fn conditions(
    a: &Args,
    heads_file: Option<&HeadsFile>,
    ablation: Ablation,
    cfg: &sahara::ModelConfig,
) -> Result<Vec<Condition>> {
    let mut sets: Vec<(String, HeadSet)> = Vec::new();
    for s in &a.ablate {
        let source = format!("--ablate {s}");
        let heads = HeadSet::parse(s).map_err(|e| e.context(&source))?;
        sets.push((source, heads));
    }
    if let (Some(f), Some(path)) = (heads_file, &a.heads_from) {
        for heads in f.head_sets(path, a.top, a.sweep)? {
            sets.push((path.display().to_string(), HeadSet(heads)));
        }
    }
    let mut out = vec![Condition::unmodified()];
    let mut seen: HashSet<Vec<(usize, usize)>> = HashSet::new();
    for (source, heads) in sets {
        let c = Condition::ablating(&heads, ablation, cfg).map_err(|e| e.context(&source))?;
        let mut key = heads.0.clone();
        key.sort_unstable();
        if !seen.insert(key) {
            if !a.quiet {
                eprintln!("note: heads {} are evaluated once", c.name);
            }
            continue;
        }
        out.push(c);
    }
    Ok(out)
}

/// Rows of a generation batch on the CPU when --batch-size is not given.
const CPU_BATCH_SIZE: usize = 16;
/// The most rows the planner puts in a generation batch on a GPU.
const GPU_MAX_BATCH_SIZE: usize = 256;

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    let ablation = a.op.parse_no_patch()?;
    if a.max_new_tokens == Some(0) {
        return Err(Error::out_of_range(
            sahara::error::Setting::MaxNewTokens,
            0,
            "must be at least 1",
        ));
    }
    if a.batch_size == Some(0) {
        return Err(Error::out_of_range(
            sahara::error::Setting::BatchSize,
            0,
            "must be at least 1",
        ));
    }
    let sampling = a.sampling.parse()?;
    let shard = a.shard.resolve(a.quiet)?;
    if shard.is_some() && a.report.is_some() {
        return Err(Error::InvalidArgument(crate::report::NOT_A_SHARD.into()));
    }
    if shard.is_some() && a.out.is_none() {
        return Err(Error::InvalidArgument(
            "a sharded run writes into the folder all shards share: give it with --out DIR".into(),
        ));
    }
    if shard.is_some() && a.perplexity.is_some() {
        return Err(Error::InvalidArgument(
            "a shard measures no perplexity (the merged summary is made from the shards' lines): run `sahara eval --perplexity` with the same conditions unsharded".into(),
        ));
    }
    if a.perplexity_window == Some(0) {
        return Err(Error::InvalidArgument(
            "--perplexity-window must be at least 1".into(),
        ));
    }
    // Read before any work: a missing file fails now, not after the generation.
    let perplexity_text = a
        .perplexity
        .as_deref()
        .map(sahara::methods::perplexity::load_text)
        .transpose()?;
    let panel = a.judges.panel()?;
    let reasoning_asked = a.judges.reasoning()?;
    let heads_file = match &a.heads_from {
        Some(p) => {
            let f = HeadsFile::read(p)?;
            // Check --top and --sweep before the model loads.
            f.head_sets(p, a.top, a.sweep)?;
            Some(f)
        }
        None => None,
    };
    let mut model = a.model.load()?;
    a.op.apply_sink(&mut model)?;
    let cfg = model.cfg().clone();
    let conditions = conditions(&a, heads_file.as_ref(), ablation, &cfg)?;
    let reasoning =
        reasoning_asked.unwrap_or_else(|| Format::of_vocabulary(|t| model.prompts.has_token(t)));
    if reasoning_asked.is_none() && reasoning != Format::None && !a.quiet {
        eprintln!(
            "note: the tokenizer has the markers of {} reasoning: the judges see the answer after it (--reasoning none to judge whole responses)",
            reasoning.as_str()
        );
    }
    if let Some(p) = &a.heads_from {
        check_heads_model(p, &model.fingerprint()?, a.heads_from_any_model)?;
    }
    if !a.quiet {
        if let Some(f) = &heads_file {
            let differs =
                |file: &Option<String>, now: &str| file.as_deref().is_some_and(|x| x != now);
            let (target, mode) = (ablation.target.as_str(), ablation.op.mode_str());
            if differs(&f.target, target) || differs(&f.mode, mode) {
                eprintln!(
                    "note: {} was computed with target {} mode {}; evaluating with target {} mode {}",
                    a.heads_from.as_ref().unwrap().display(),
                    f.target.as_deref().unwrap_or("?"),
                    f.mode.as_deref().unwrap_or("?"),
                    target,
                    mode
                );
            }
        }
        if let Some(note) = ablation.shared_note(&cfg).filter(|_| conditions.len() > 1) {
            eprintln!("note: {note}");
        }
    }
    let harmful = a.data.encode(&model, &template)?;
    let benign = match &a.benign {
        Some(b) => {
            let args = DataArgs {
                data: b.clone(),
                column: a.benign_column.clone(),
                limit: a.benign_limit,
            };
            Some(args.encode(&model, &template)?)
        }
        None => None,
    };
    let mut sets: Vec<(Set, &[EncodedQuery])> = vec![(Set::Harmful, &harmful)];
    if let Some(b) = &benign {
        sets.push((Set::Benign, b));
    }
    let max_new_tokens = match a.max_new_tokens {
        Some(n) => n,
        None => {
            let longest = sets
                .iter()
                .flat_map(|(_, qs)| qs.iter().map(|q| q.tokens.len()))
                .max()
                .unwrap_or(0);
            let room = cfg.max_position_embeddings.saturating_sub(longest);
            let n = DEFAULT_MAX_NEW_TOKENS.min(room).max(1);
            if n < DEFAULT_MAX_NEW_TOKENS && !a.quiet {
                eprintln!(
                    "note: --max-new-tokens {n}: the longest prompt has {longest} tokens and the model's context is {}",
                    cfg.max_position_embeddings
                );
            }
            n
        }
    };
    for (set, qs) in &sets {
        sahara::methods::eval::check_lengths(&cfg, *set, qs, max_new_tokens)?;
    }
    let batch_size = match a.batch_size {
        Some(n) => n,
        None if model.decoder.device.is_cpu() => CPU_BATCH_SIZE,
        // The shards cut one plan of batches: its batch size cannot depend on each machine's
        // free memory.
        None if shard.is_some() => {
            return Err(Error::InvalidArgument(
                "a sharded run on a GPU needs --batch-size, the same for every shard (a planned one depends on each GPU's free memory)"
                    .into(),
            ))
        }
        None => {
            let longest = sets
                .iter()
                .flat_map(|(_, qs)| qs.iter().map(|q| q.tokens.len()))
                .max()
                .unwrap_or(1);
            let budget = sahara::device::placement_budget(&model.decoder.placement, None)?;
            sahara::methods::generate::planned_rows(
                &model.decoder,
                longest,
                max_new_tokens,
                budget,
                GPU_MAX_BATCH_SIZE,
            )
        }
    };
    let sampling_record = match &sampling {
        Sampling::Greedy => json!({"kind": "greedy"}),
        // Sampled responses depend on the batches, hence on the batch size.
        Sampling::Sample { temperature, top_k } => json!({"kind": "sample",
            "temperature": temperature, "top_k": top_k, "seed": a.sampling.seed, "batch_size": batch_size}),
    };
    // The conditions are not part of the record: a rerun may add conditions to a run.
    let mut record = RunRecord::new("eval", &model, &a.data.data, &harmful)?;
    record
        .set("benign", &a.benign)
        .set(
            "benign_fingerprint",
            benign.as_deref().map(queries_fingerprint),
        )
        .set("benign_queries", benign.as_ref().map(Vec::len))
        .set_template(&model, &template, &a.template.system)
        .set_ablation(ablation)
        .set("max_new_tokens", max_new_tokens)
        .set("sampling", &sampling_record)
        .set("judges", panel.describe())
        .set("reasoning", reasoning.as_str())
        .set("dtype", sahara::device::dtype_name(model.decoder.dtype));
    // The run's plan of batches; a shard generates a contiguous range of it.
    let plan = sahara::methods::eval::plan(conditions.len(), &sets, batch_size);
    let units = match shard {
        Some(s) => {
            let weights = sahara::methods::eval::unit_weights(&plan, &sets, max_new_tokens);
            sahara::io::shard::balanced_ranges(&weights, s.count)[s.index].clone()
        }
        None => 0..plan.len(),
    };
    // The responses this run (or shard) writes.
    let total: usize = plan[units.clone()].iter().map(|u| u.rows.len()).sum();
    let out = match shard {
        Some(s) => {
            let dir = a.out.as_ref().expect("checked above");
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mut shared = serde_json::Map::new();
            shared.insert("batch_size".into(), json!(batch_size));
            shared.insert(
                "conditions".into(),
                json!(conditions.iter().map(|c| &c.name).collect::<Vec<_>>()),
            );
            record.set(
                "shard",
                sahara::io::shard::batches_setting(s, &units, plan.len(), total, shared),
            );
            Some(s.file(dir, "jsonl"))
        }
        None => a.out.clone(),
    };
    let names: HashMap<&str, usize> = conditions
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let judge_names = panel.names();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut done: HashSet<(Set, usize, usize)> = HashSet::new();
    let mut other_conditions = 0usize;
    let mut lines: Lines<EvalLine> = Lines::open(out.as_deref(), &record, |_, line: &EvalLine| {
        match line.outcome(&names, &sets, &judge_names)? {
            Some(o) => {
                if !done.insert((o.set, o.condition, o.query)) {
                    return Err("repeats an earlier response".into());
                }
                outcomes.push(o);
            }
            None => other_conditions += 1,
        }
        Ok(())
    })?;
    // The lines of this run's conditions, for the judges' agreement.
    let mut run_lines: Vec<EvalLine> = lines
        .done()
        .iter()
        .filter(|l| names.contains_key(l.condition.as_str()))
        .cloned()
        .collect();
    if let (Lines::File(r), false) = (&lines, a.quiet) {
        if !r.done.is_empty() {
            eprintln!(
                "resuming: {} of {} responses already in {}",
                done.len(),
                total,
                r.path.display()
            );
            if other_conditions > 0 {
                eprintln!(
                    "note: {other_conditions} lines of conditions not asked for this time stay in {} but are left out of the summary",
                    r.path.display()
                );
            }
        }
    }
    let opts = EvalOptions {
        generate: GenerateOptions {
            max_new_tokens,
            sampling,
            seed: a.sampling.seed,
            eos: model.eos.clone(),
            simulate_oom_above: crate::common::fault_oom_above()?,
        },
        batch_size,
        reasoning,
    };
    let pb = progress_bar(total.saturating_sub(done.len()) as u64, a.quiet, "eval");
    let is_done = |s: Set, c: usize, q: usize| done.contains(&(s, c, q));
    let query_of = |s: Set, q: usize| -> &EncodedQuery {
        match s {
            Set::Harmful => &harmful[q],
            Set::Benign => &benign.as_ref().expect("benign set")[q],
        }
    };
    let mut new_outcomes: Vec<Outcome> = Vec::new();
    sahara::methods::eval::run(
        &model,
        &conditions,
        &sets,
        &panel,
        &opts,
        units.clone(),
        &is_done,
        &mut |rows| {
            if let Some(g) = rows.first() {
                pb.set_message(format!(
                    "{} {}",
                    g.set.as_str(),
                    conditions[g.condition].name
                ));
            }
            for g in &rows {
                let line = EvalLine::of(
                    g,
                    &conditions[g.condition],
                    query_of(g.set, g.query),
                    &panel,
                );
                lines.push(&line)?;
                run_lines.push(line);
                new_outcomes.push(Outcome::from(g));
            }
            pb.inc(rows.len() as u64);
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    if let Some(s) = shard {
        if !a.quiet {
            eprintln!(
                "shard {}/{}: batches {}..{} of {} ({total} responses) in {}; when every shard is done: sahara merge {} --out FILE.jsonl",
                s.index,
                s.count,
                units.start,
                units.end,
                plan.len(),
                out.as_ref().expect("a shard file").display(),
                a.out.as_ref().expect("a folder").display()
            );
        }
        return Ok(());
    }
    outcomes.extend(new_outcomes);
    let mut summary = summarize(
        &conditions,
        &judge_names,
        harmful.len(),
        benign.as_ref().map(Vec::len),
        &outcomes,
    )?;
    if let (Some(name), Some(text)) = (&a.perplexity, &perplexity_text) {
        let costs = perplexities(
            &model,
            name,
            text,
            a.perplexity_window,
            &conditions,
            a.quiet,
        )?;
        for (c, cost) in summary.iter_mut().zip(costs) {
            c.perplexity = Some(cost);
        }
    }
    write_outputs(&record, summary, &run_lines, a.out.as_deref())?;
    match (&a.report, &a.out) {
        (Some(page), Some(out)) => crate::report::of_run("eval", out, page),
        _ => Ok(()),
    }
}

/// The perplexity of `text` under every condition, the first the unmodified model.
fn perplexities(
    model: &sahara::LoadedModel,
    name: &str,
    text: &str,
    window: Option<usize>,
    conditions: &[Condition],
    quiet: bool,
) -> Result<Vec<sahara::methods::perplexity::TextCost>> {
    use sahara::methods::perplexity::{perplexity, TextCost, DEFAULT_WINDOW};
    let cfg = model.cfg();
    // The special tokens a plain encoding puts in front of the text (not those it appends).
    let (with, without) = (
        model.prompts.encode("a", true)?,
        model.prompts.encode("a", false)?,
    );
    let prefix: Vec<u32> = (0..=with.len().saturating_sub(without.len()))
        .find(|&i| with[i..].starts_with(&without))
        .map_or_else(Vec::new, |i| with[..i].to_vec());
    let tokens = model.prompts.encode(text, false)?;
    let room = cfg
        .max_position_embeddings
        .saturating_sub(prefix.len())
        .max(1);
    let window = window.unwrap_or(DEFAULT_WINDOW).min(room);
    let pb = progress_bar(conditions.len() as u64, quiet, "perplexity");
    let mut out: Vec<TextCost> = Vec::new();
    for c in conditions {
        let p = perplexity(&model.decoder, &prefix, &tokens, window, &c.ablations)
            .map_err(|e| e.context(format!("perplexity of {name}, condition {}", c.name)))?;
        let base = out
            .first()
            .map_or(p.perplexity, |b| b.perplexity.perplexity);
        out.push(TextCost {
            text: name.to_string(),
            window,
            perplexity: p,
            ratio: p.perplexity / base,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// What a whole run writes after its lines: the summary beside `out` (from the run record's
/// settings, the conditions' statistics and the judges' agreement over `lines`, the run's
/// responses) and the table (on stdout with `out`, else on stderr). One home for a single run
/// and a merged sharded one.
fn write_outputs(
    record: &RunRecord,
    summary: Vec<ConditionSummary>,
    lines: &[EvalLine],
    out: Option<&Path>,
) -> Result<()> {
    let (harmful, benign) = (record.queries, benign_queries(record));
    let judges = record.settings.get("judges").cloned().unwrap_or_default();
    let names = judge_names(record)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // The agreement over every response in one order, whatever order the lines came in
    // (resumed, merged): condition by condition, harmful before benign, by query.
    let order: HashMap<&str, usize> = summary
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut sorted: Vec<&EvalLine> = lines.iter().collect();
    sorted.sort_by_key(|l| {
        (
            order.get(l.condition.as_str()).copied(),
            l.set == Set::Benign,
            l.index,
        )
    });
    let items: Vec<Judged<'_>> = sorted
        .iter()
        .map(|l| Judged {
            set: Some(l.set.as_str()),
            condition: Some(&l.condition),
            index: l.index,
            query: &l.query,
            response: &l.response,
            judges: &l.judges,
        })
        .collect();
    let (agreement, disagreements) = sahara::methods::judge::agreement::report(&names, &items)
        .map_err(|why| Error::InvalidArgument(format!("a response {why}")))?;
    let table = table(&summary, &names, harmful, benign)
        + &crate::judge::agreement_table(
            &agreement,
            out.map(|o| sibling(o, "summary.json")).as_deref(),
        );
    if let Some(out) = out {
        let ablation = record.ablation()?;
        let setting = |k: &str| record.settings.get(k).cloned().unwrap_or_default();
        let bad = |k: &str| {
            Error::InvalidArgument(format!("the run record has no {k:?} an eval run records"))
        };
        let file = EvalSummary {
            schema: schema::EVAL_SUMMARY.into(),
            model: record.model.clone(),
            data: record.data.clone(),
            queries: harmful,
            benign: serde_json::from_value(setting("benign")).map_err(|_| bad("benign"))?,
            benign_queries: benign,
            template: setting("template")
                .as_str()
                .ok_or_else(|| bad("template"))?
                .to_string(),
            target: ablation.target,
            mode: ablation.op.mode_str().into(),
            epsilon: ablation.op.epsilon(),
            max_new_tokens: setting("max_new_tokens")
                .as_u64()
                .ok_or_else(|| bad("max_new_tokens"))? as usize,
            sampling: setting("sampling"),
            judge: judges.get(0).cloned().unwrap_or_default(),
            judges,
            conditions: summary,
            agreement,
            disagreements,
        };
        write_json(&sibling(out, "summary.json"), &file)?;
        print!("{table}");
    } else {
        eprint!("{table}");
    }
    Ok(())
}

/// The judges' names, in order, from the descriptions an eval run's record holds.
fn judge_names(record: &RunRecord) -> Result<Vec<String>> {
    let names: Option<Vec<String>> = record
        .settings
        .get("judges")
        .and_then(|j| j.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        });
    match names {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(Error::InvalidArgument(
            "the run record names no judges; it was written by an older sahara: rerun the evaluation".into(),
        )),
    }
}

/// `sahara merge` for eval shards: the lines in plan order (the order a single run writes
/// them), the run record without the shard, then the summary and table a single run writes,
/// recomputed from the merged lines.
pub fn merge(files: &[sahara::io::shard::ShardFile], whole: &RunRecord, out: &Path) -> Result<()> {
    let shard = files[0]
        .record
        .settings
        .get("shard")
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = serde_json::from_value(shard["conditions"].clone()).map_err(|_| {
        Error::InvalidArgument(format!(
            "{}: its shard setting lists no conditions",
            files[0].path.display()
        ))
    })?;
    if names.first().map(String::as_str) != Some(Condition::UNMODIFIED) {
        return Err(Error::InvalidArgument(format!(
            "{}: its first condition is not the unmodified model",
            files[0].path.display()
        )));
    }
    let ablation = whole.ablation()?;
    let judge_names = judge_names(whole)?;
    let judges: Vec<&str> = judge_names.iter().map(String::as_str).collect();
    let cfg = sahara::Checkpoint::resolve(&whole.model)?.config()?;
    let mut conditions = vec![Condition::unmodified()];
    for n in names.iter().skip(1) {
        conditions.push(Condition::ablating(&HeadSet::parse(n)?, ablation, &cfg)?);
    }
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut text = String::new();
    let mut lines: Vec<EvalLine> = Vec::new();
    for f in files {
        let (got, body) = f.read_finished::<EvalLine>("responses", |_, l| {
            if !by_name.contains_key(l.condition.as_str()) {
                return Err(format!(
                    "is of condition {:?}, not of this run",
                    l.condition
                ));
            }
            if l.set == Set::Benign && l.first_token_kl.is_none() {
                return Err("has no \"first_token_kl\"".into());
            }
            l.verdicts(&judges)?;
            Ok(())
        })?;
        text.push_str(&body);
        lines.extend(got);
    }
    // A query's position in its set: the rank of its index among the set's.
    let positions = |set: Set| -> HashMap<usize, usize> {
        let mut idx: Vec<usize> = lines
            .iter()
            .filter(|l| l.set == set)
            .map(|l| l.index)
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().enumerate().map(|(p, i)| (i, p)).collect()
    };
    let (harmful_pos, benign_pos) = (positions(Set::Harmful), positions(Set::Benign));
    let outcomes: Vec<Outcome> = lines
        .iter()
        .map(|l| Outcome {
            set: l.set,
            condition: by_name[l.condition.as_str()],
            query: match l.set {
                Set::Harmful => harmful_pos[&l.index],
                Set::Benign => benign_pos[&l.index],
            },
            response: l.response.clone(),
            harmful: l
                .verdicts(&judges)
                .expect("checked as the shards were read"),
            first_token_kl: match l.set {
                Set::Benign => l.first_token_kl,
                Set::Harmful => None,
            },
        })
        .collect();
    // Every response of the run once: summarize refuses a missing or repeated one.
    let summary = summarize(
        &conditions,
        &judges,
        whole.queries,
        benign_queries(whole),
        &outcomes,
    )?;
    sahara::io::shard::write_merged(out, whole, &text)?;
    write_outputs(whole, summary, &lines, Some(out))
}

/// The number of benign queries an eval run's record holds (`None` without a benign set).
fn benign_queries(record: &RunRecord) -> Option<usize> {
    record
        .settings
        .get("benign_queries")
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
}

/// A rate with four decimals, or `-` when undefined.
fn rate(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

fn table(s: &[ConditionSummary], judges: &[&str], harmful: usize, benign: Option<usize>) -> String {
    let w = s.iter().map(|c| c.name.len()).max().unwrap_or(0).max(9);
    // Harmful responses the main judge could not decide.
    let undecided = s.iter().any(|c| c.undecided > 0);
    let mut t = format!(
        "ASR on {harmful} harmful queries{} by the {} judge{}:\n",
        match benign {
            Some(n) => format!(", cost on {n} benign queries"),
            None => String::new(),
        },
        judges[0],
        if judges.len() > 1 {
            format!(" (then the ASR by {})", judges[1..].join(", "))
        } else {
            String::new()
        }
    );
    t.push_str(&format!(
        "{:<w$}  {:>5}  {:>7}  {:>9}  {:>16}  {:>7}",
        "condition", "heads", "ASR", "refused", "95% CI", "change"
    ));
    if undecided {
        t.push_str(&format!("  {:>9}", "undecided"));
    }
    if benign.is_some() {
        t.push_str(&format!(
            "  {:>13}  {:>9}  {:>14}",
            "over-refusal", "unchanged", "first-token KL"
        ));
    }
    let ppl = s.iter().any(|c| c.perplexity.is_some());
    if ppl {
        t.push_str(&format!("  {:>10}  {:>7}", "perplexity", "ratio"));
    }
    for j in &judges[1..] {
        t.push_str(&format!(
            "  {:>w2$}",
            format!("ASR {j}"),
            w2 = 7.max(j.len() + 4)
        ));
    }
    t.push('\n');
    for c in s {
        t.push_str(&format!(
            "{:<w$}  {:>5}  {:>7}  {:>9}  {:>16}  {:>7}",
            c.name,
            c.heads.len(),
            rate(c.asr),
            format!("{}/{}", c.refused, c.total),
            c.asr_ci95
                .map_or("-".into(), |ci| format!("[{:.4}, {:.4}]", ci[0], ci[1])),
            c.asr_change.map_or("-".into(), |v| format!("{v:+.4}"))
        ));
        if undecided {
            t.push_str(&format!("  {:>9}", c.undecided));
        }
        if let Some(b) = &c.benign {
            t.push_str(&format!(
                "  {:>13}  {:>9.4}  {:>14.6}",
                rate(b.refusal_rate),
                b.unchanged,
                b.first_token_kl
            ));
        }
        match &c.perplexity {
            Some(p) => t.push_str(&format!(
                "  {:>10.4}  {:>7.4}",
                p.perplexity.perplexity, p.ratio
            )),
            None if ppl => t.push_str(&format!("  {:>10}  {:>7}", "-", "-")),
            None => {}
        }
        for j in &judges[1..] {
            let r = c.judges[*j]["harmful"]["rate"].as_f64();
            t.push_str(&format!("  {:>w2$}", rate(r), w2 = 7.max(j.len() + 4)));
        }
        t.push('\n');
    }
    t
}
