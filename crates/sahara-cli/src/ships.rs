//! `sahara ships`: per-query safety importance of every attention head.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::error::Setting;
use sahara::io::formats::{schema, ScreenLine, ShipsLine, ShipsSummary};
use sahara::io::fs::write_json;
use sahara::io::runlog::{sibling, Lines};
use sahara::methods::screen::{Linearize, ScreenOptions, DEFAULT_TOKENS};
use sahara::methods::ships::{
    parse_range, patch_scores, screened_ships, ships_scores, summarize, top_heads, PatchPositions,
    ShipsOptions, Summary, VerifyTop,
};
use sahara::{Error, Result};

use crate::common::{
    progress_bar, run_record, short_name, DataArgs, EngineArgs, ModelArgs, OpArgs, ShardArgs,
    TemplateArgs,
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
    /// KL divergence: exact, or paper (the paper's code: float32 probabilities,
    /// sum((p+1e-12)·ln((p+1e-12)/(q+1e-12))), which caps tokens an ablation drives below
    /// about 1e-12).
    #[arg(long, default_value = "exact")]
    pub kl: String,
    /// Mode patch: the source prompts (same formats as --data), row i paired with row i of
    /// --data and rendered with the same template. Each head's output is replaced by its
    /// output on the source prompt, and scored by its restoration 1 − KL(p_source ‖
    /// p_patched) / KL(p_source ‖ p_base).
    #[arg(long)]
    pub source_data: Option<String>,
    /// CSV column / JSON key of the source prompts (default: the first of input, goal, Goal,
    /// prompt, query).
    #[arg(long, requires = "source_data")]
    pub source_column: Option<String>,
    /// Mode patch: the positions patched, last or all (all only for pairs of the same token
    /// length; other pairs are patched at the last position, and the output says so).
    #[arg(long, default_value = "last", requires = "source_data")]
    pub positions: String,
    /// How many top heads each query lists, and the K of the appearance count.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Bootstrap the dataset-level ranking with this many resamples of the queries: per
    /// head, 95% intervals of its mean Ships and its rank, and the probability that it ranks
    /// in the top K (--top), in the summary and the table.
    #[arg(long, value_name = "B")]
    pub bootstrap: Option<usize>,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 0, requires = "bootstrap")]
    pub seed: u64,
    /// JSON Lines output, one line per query (resumable); the summary goes beside it as
    /// FILE.jsonl.summary.json. Without it, lines go to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Heatmap of mean Ships (PNG or SVG by extension).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the run's HTML report (`sahara report`) here at the end (needs --out).
    #[arg(long, requires = "out")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// --engine screen: how many of the most likely next tokens the screen's estimate
    /// averages over (one backward pass each) [default: 8].
    #[arg(long, value_name = "M")]
    pub screen_tokens: Option<usize>,
    /// --engine screen: how many of the screen's top heads are then scored exactly, a count
    /// K or a percentage P% of the scored heads [default: 10%]. The others keep their
    /// estimates: a head the screen ranks below them is never scored exactly.
    #[arg(long, value_name = "K|P%")]
    pub verify_top: Option<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let template = a.template.parse(&a.model)?;
    let ablation = a.op.parse()?;
    if a.top == 0 {
        return Err(Error::out_of_range(Setting::Top, 0, "must be at least 1"));
    }
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    if a.bootstrap == Some(0) {
        return Err(Error::out_of_range(
            Setting::Resamples,
            0,
            "must be at least 1",
        ));
    }
    let patching = ablation.op == sahara::model::ablation::Op::Patch;
    let positions: PatchPositions = a.positions.parse()?;
    match (patching, &a.source_data) {
        (true, None) => {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: "patch needs the source prompts: give them with --source-data FILE (row i pairs with row i of --data)".into(),
            })
        }
        (false, Some(_)) => {
            return Err(Error::Conflict {
                setting: Setting::Source,
                reason: "is for --mode patch".into(),
            })
        }
        _ => {}
    }
    let shard = a.shard.resolve(a.quiet)?;
    if shard.is_some() {
        if a.out.is_none() {
            return Err(Error::InvalidArgument(
                "a sharded run writes into the folder all shards share: give it with --out DIR"
                    .into(),
            ));
        }
        if a.plot.is_some() {
            return Err(Error::InvalidArgument(
                "a shard writes no plot: `sahara merge DIR --out FILE --plot P` draws the whole run's"
                    .into(),
            ));
        }
        if a.report.is_some() {
            return Err(Error::InvalidArgument(crate::report::NOT_A_SHARD.into()));
        }
    }
    let screening = a.engine.engine == "screen";
    if !screening {
        if a.screen_tokens.is_some() {
            return Err(Error::Conflict {
                setting: Setting::ScreenTokens,
                reason: "is for --engine screen".into(),
            });
        }
        if a.verify_top.is_some() {
            return Err(Error::Conflict {
                setting: Setting::VerifyTop,
                reason: "is for --engine screen".into(),
            });
        }
    }
    if screening && patching {
        return Err(Error::Conflict {
            setting: Setting::Engine,
            reason: "screen estimates ablations; --mode patch is scored with fast or naive".into(),
        });
    }
    let verify: VerifyTop = match &a.verify_top {
        Some(v) => v.parse()?,
        None => VerifyTop::DEFAULT,
    };
    let screen_tokens = a.screen_tokens.unwrap_or(DEFAULT_TOKENS);
    if screen_tokens == 0 {
        return Err(Error::out_of_range(
            Setting::ScreenTokens,
            0,
            "must be at least 1",
        ));
    }
    let mut model = a.model.load()?;
    a.op.apply_sink(&mut model)?;
    // The screen verifies its top heads with the fast engine.
    let mut engine_args = a.engine.clone();
    if screening {
        engine_args.engine = "fast".into();
    }
    let engine = engine_args.parse(&model.decoder.placement)?;
    let screen = ScreenOptions {
        tokens: screen_tokens,
        linearize: Linearize::DEFAULT,
        memory_budget: engine.memory_budget,
    };
    let cfg = model.cfg().clone();
    let mut opts = ShipsOptions::new(&cfg);
    opts.ablation = ablation;
    opts.kl = a.kl.parse()?;
    opts.engine = engine;
    if let Some(l) = &a.layers {
        opts.layers = parse_range(Setting::Layers, l, cfg.num_layers)?;
    }
    if let Some(h) = &a.heads {
        opts.heads = parse_range(Setting::Heads, h, cfg.num_heads)?;
    }
    opts.validate(&cfg)?;
    let queries = a.data.encode(&model, &template)?;
    let sources = match &a.source_data {
        Some(src) => {
            let args = DataArgs {
                data: src.clone(),
                column: a.source_column.clone(),
                limit: Some(queries.len()),
            };
            let s = args.encode(&model, &template)?;
            if s.len() < queries.len() {
                return Err(Error::Conflict {
                    setting: Setting::Source,
                    reason: format!(
                        "{src} has {} prompts for {} queries of --data: every query needs its paired source prompt",
                        s.len(),
                        queries.len()
                    ),
                });
            }
            Some(s)
        }
        None => None,
    };
    let mut record = run_record(
        "ships",
        &model,
        &a.data,
        &queries,
        &template,
        &a.template.system,
        ablation,
    )?;
    record
        .set("layers", [opts.layers.start, opts.layers.end])
        .set("heads", [opts.heads.start, opts.heads.end])
        .set("top", a.top)
        .set("kl", opts.kl.as_str());
    if screening {
        // Part of the record, so that a run is resumed only with the same screen.
        record.set("engine", "screen").set(
            "screen",
            serde_json::json!({
                "tokens": screen.tokens,
                "linearize": screen.linearize.name(),
                "verify_top": verify.name(),
            }),
        );
    }
    if let Some(s) = &sources {
        record
            .set("source_data", &a.source_data)
            .set(
                "source_fingerprint",
                sahara::io::runlog::queries_fingerprint(s),
            )
            .set("positions", &a.positions);
    }
    // A shard computes its range of the queries into its own file of the shared folder.
    let (out, range) = match shard {
        Some(s) => {
            let dir = a.out.as_ref().expect("checked above");
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let tokens: Vec<usize> = queries.iter().map(|q| q.tokens.len()).collect();
            let range = s.range(&tokens);
            record.set("shard", sahara::io::shard::record_setting(s, &range));
            (Some(s.file(dir, "jsonl")), range)
        }
        None => (a.out.clone(), 0..queries.len()),
    };
    let mut lines: Lines<ShipsLine> =
        Lines::open(out.as_deref(), &record, |i, line: &ShipsLine| match queries
            .get(range.start + i)
            .filter(|_| range.start + i < range.end)
        {
            Some(q) if line.answers(q) => Ok(()),
            _ => Err(format!(
                "does not match query {} of the data",
                range.start + i
            )),
        })?;
    let mut grids: Vec<_> = lines.done().iter().map(|l| l.scores.clone()).collect();
    if let (Lines::File(r), false) = (&lines, a.quiet) {
        if !r.done.is_empty() {
            eprintln!(
                "resuming: {} of {} queries already in {}",
                r.done.len(),
                range.len(),
                r.path.display()
            );
        }
    }
    // Pairs asked to be patched at all positions but patched at the last (lengths differ).
    let fell_back_in = |l: &ShipsLine| {
        l.patch
            .as_ref()
            .is_some_and(|p| positions == PatchPositions::All && p.positions != positions)
    };
    let mut fell_back = lines.done().iter().filter(|l| fell_back_in(l)).count();
    let per_query = match screening {
        true => verify.count(opts.variants_per_query(&cfg)),
        false => opts.variants_per_query(&cfg),
    };
    let remaining = &queries[range.start + grids.len()..range.end];
    let pb = progress_bar((remaining.len() * per_query) as u64, a.quiet, "ships");
    for (qi, q) in remaining.iter().enumerate() {
        let base = (qi * per_query) as u64;
        let mut progress = |n: usize| pb.set_position(base + n as u64);
        let mut screened = None;
        let (grid, patch) = match &sources {
            None if screening => {
                let s = screened_ships(
                    &model.decoder,
                    &q.tokens,
                    &opts,
                    &screen,
                    verify,
                    &mut progress,
                );
                (
                    s.map(|s| {
                        let grid = s.scores.clone();
                        screened = Some(s);
                        grid
                    }),
                    None,
                )
            }
            None => (
                ships_scores(&model.decoder, &q.tokens, &opts, &mut progress),
                None,
            ),
            Some(sources) => {
                let src = &sources[q.index];
                match patch_scores(
                    &model.decoder,
                    &q.tokens,
                    &src.tokens,
                    positions,
                    &opts,
                    &mut progress,
                ) {
                    Ok(p) => (
                        Ok(p.restoration),
                        Some(sahara::io::formats::PatchLine {
                            source: src.text.clone(),
                            source_tokens: src.tokens.len(),
                            positions: p.positions,
                            kl_base: p.kl_base,
                            kl_patched: p.kl_patched,
                        }),
                    ),
                    Err(e) => (Err(e), None),
                }
            }
        };
        let grid = grid.map_err(|e| e.context(format!("query {}", q.index + 1)))?;
        let line = ShipsLine {
            schema: schema::SHIPS_LINE.into(),
            index: q.index,
            query: q.text.clone(),
            prompt_tokens: q.tokens.len(),
            target: ablation.target,
            mode: ablation.op.mode_str().into(),
            epsilon: ablation.op.epsilon(),
            top: top_heads(&grid, a.top),
            scores: grid,
            patch,
            screen: screened.map(|s| ScreenLine {
                exact: s.exact,
                estimates: s.estimates,
                tokens: s.tokens,
                mass: s.mass,
            }),
        };
        lines.push(&line)?;
        fell_back += usize::from(fell_back_in(&line));
        grids.push(line.scores);
    }
    pb.finish_and_clear();
    if positions == PatchPositions::All && fell_back > 0 && !a.quiet {
        eprintln!(
            "note: {fell_back} pair(s) differ in token length and were patched at the last position only (\"positions\": \"last\" in their lines)"
        );
    }
    if let Some(s) = shard {
        if !a.quiet {
            eprintln!(
                "shard {}/{}: queries {}..{} in {}; when every shard is done: sahara merge {} --out FILE.jsonl",
                s.index,
                s.count,
                range.start,
                range.end,
                out.as_ref().expect("a shard file").display(),
                a.out.as_ref().expect("a folder").display()
            );
        }
        return Ok(());
    }
    let outputs = Outputs {
        model: &model.source,
        data: &a.data.data,
        ablation,
        kl: opts.kl.as_str(),
        cfg: &cfg,
        screened: screening,
        // Not in the run record: the lines do not depend on it, so a finished run can be
        // summarized again with other resamples.
        bootstrap: a.bootstrap.map(|b| (b, a.seed)),
    };
    outputs.write(&grids, a.top, a.out.as_deref(), a.plot.as_deref())?;
    match (&a.report, &a.out) {
        (Some(page), Some(out)) => crate::report::of_run("ships", out, page),
        _ => Ok(()),
    }
}

/// The summary's note on a run of `--engine screen`.
const SCREENED_NOTE: &str = "gradient screen: each query's scores are exact for its verified heads (`screen.exact` in its line) and estimates elsewhere";

/// What a whole run writes after its lines: the summary (beside `out`, or on stdout), the
/// table, the plot. One home for a single run and a merged sharded one.
struct Outputs<'a> {
    model: &'a str,
    data: &'a str,
    ablation: sahara::model::ablation::Ablation,
    kl: &'a str,
    cfg: &'a sahara::ModelConfig,
    /// Scored by the gradient screen: exact for each query's verified heads only.
    screened: bool,
    /// Resamples and seed of `--bootstrap`.
    bootstrap: Option<(usize, u64)>,
}

impl Outputs<'_> {
    fn write(
        &self,
        grids: &[sahara::methods::ships::HeadGrid],
        top: usize,
        out: Option<&std::path::Path>,
        plot: Option<&std::path::Path>,
    ) -> Result<()> {
        let ablation = self.ablation;
        let mut summary = summarize(grids, top);
        summary.bootstrap = self
            .bootstrap
            .map(|(b, seed)| sahara::methods::ships::bootstrap(grids, top, b, seed));
        if let Some(out) = out {
            let file = ShipsSummary {
                schema: schema::SHIPS_SUMMARY.into(),
                summary: summary.clone(),
                model: self.model.to_string(),
                data: self.data.to_string(),
                target: ablation.target,
                mode: ablation.op.mode_str().into(),
                epsilon: ablation.op.epsilon(),
                kl: self.kl.into(),
                note: {
                    let notes: Vec<String> = ablation
                        .shared_note(self.cfg)
                        .map(|n| format!("{n}; every head of a group has the group's score"))
                        .into_iter()
                        .chain(self.screened.then(|| SCREENED_NOTE.to_string()))
                        .collect();
                    (!notes.is_empty()).then(|| notes.join("; "))
                },
            };
            write_json(&sibling(out, "summary.json"), &file)?;
        }
        let patching = ablation.op == sahara::model::ablation::Op::Patch;
        let what = if patching { "restoration" } else { "Ships" };
        print_summary(&summary, what, out.is_none());
        if let Some(p) = plot {
            let title = format!(
                "Mean {what} ({} {}) - {} on {}",
                ablation.target.as_str(),
                ablation.op.mode_str(),
                short_name(self.model),
                short_name(self.data)
            );
            sahara::io::plot::write_heatmap(
                p,
                &sahara::io::plot::Heatmap {
                    title: &title,
                    values: &summary.mean,
                    marked: &[],
                    colorbar_label: if patching {
                        "mean restoration"
                    } else {
                        "mean KL (nats)"
                    },
                },
            )?;
        }
        Ok(())
    }
}

/// `sahara merge` for ships shards: the lines in query order, the run record without the
/// shard, then the summary, table and plot a single run writes.
pub fn merge(
    files: &[sahara::io::shard::ShardFile],
    whole: &sahara::io::formats::RunRecord,
    out: &std::path::Path,
    plot: Option<&std::path::Path>,
) -> Result<()> {
    let mut text = String::new();
    let mut grids = Vec::new();
    for f in files {
        let start = f.range.start;
        let (lines, body) = f.read_finished::<ShipsLine>("queries", |i, l| {
            if l.index == start + i {
                Ok(())
            } else {
                Err(format!(
                    "is query {} where query {} was expected",
                    l.index + 1,
                    start + i + 1
                ))
            }
        })?;
        text.push_str(&body);
        grids.extend(lines.into_iter().map(|l| l.scores));
    }
    let setting = |k: &str| whole.settings.get(k).cloned().unwrap_or_default();
    let ablation = whole.ablation()?;
    let top = setting("top").as_u64().unwrap_or(10) as usize;
    let kl = setting("kl").as_str().unwrap_or("exact").to_string();
    let cfg = sahara::Checkpoint::resolve(&whole.model)?.config()?;
    sahara::io::shard::write_merged(out, whole, &text)?;
    let outputs = Outputs {
        model: &whole.model,
        data: &whole.data,
        ablation,
        kl: &kl,
        cfg: &cfg,
        screened: setting("engine").as_str() == Some("screen"),
        bootstrap: None,
    };
    outputs.write(&grids, top, Some(out), plot)
}

/// The table of a summary; `what` names the score (Ships, restoration).
fn print_summary(s: &Summary, what: &str, to_stderr: bool) {
    let mut text = format!(
        "{} queries. Heads by mean {what}, and by appearances in the per-query top {}:\n",
        s.queries, s.top_k
    );
    let mean_header = format!("mean {what}");
    // With a bootstrap, three columns after the mean: its interval, the rank's, P(top K).
    let boot = |l: usize, h: usize| {
        s.bootstrap
            .as_ref()
            .and_then(|b| b.heads.iter().find(|x| x.layer == l && x.head == h))
    };
    let extra_header = match &s.bootstrap {
        Some(b) => format!(
            "  {:>21}  {:>9}  {:>8}",
            format!("{:.0}% interval", b.level * 100.0),
            "rank",
            format!("P(top {})", b.top_k)
        ),
        None => String::new(),
    };
    text.push_str(&format!(
        "{:>4}  {:>8}  {:>12}{extra_header}  {:>6}    {:>8}  {:>6}  {:>12}\n",
        "rank", "head", mean_header, "top-K", "head", "top-K", mean_header
    ));
    for i in 0..s.by_mean.len().min(10) {
        let m = &s.by_mean[i];
        let c = &s.by_count[i];
        let extra = match boot(m.layer, m.head) {
            Some(b) => format!(
                "  {:>21}  {:>9}  {:>8.3}",
                format!("[{:.6}, {:.6}]", b.mean_lo, b.mean_hi),
                format!("{}-{}", b.rank_lo, b.rank_hi),
                b.p_top
            ),
            None => String::new(),
        };
        text.push_str(&format!(
            "{:>4}  {:>8}  {:>12.6}{extra}  {:>6}    {:>8}  {:>6}  {:>12.6}\n",
            i + 1,
            format!("{}:{}", m.layer, m.head),
            m.mean,
            m.count,
            format!("{}:{}", c.layer, c.head),
            c.count,
            c.mean
        ));
    }
    if let Some(b) = &s.bootstrap {
        text.push_str(&format!(
            "intervals: {} bootstrap resamples of the queries (seed {})\n",
            b.resamples, b.seed
        ));
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}
