//! Ships (Safety Head ImPortant Score): for one query and one head, the KL divergence of the
//! ablated model's next-token distribution at the last prompt position from the unmodified
//! model's, `KL(p_base ‖ p_ablated)` in nats.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};
use candle_core::IndexOp;

use crate::methods::engine::{run_kl, run_variants_patched, EngineOptions, Output};
use crate::methods::metrics::Kl;
use crate::model::ablation::{Ablation, HeadAblation, Op, PatchSource, Unit};
use crate::model::config::ModelConfig;
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// Scores by layer and head; `None` where a head was not scored.
pub type HeadGrid = Vec<Vec<Option<f64>>>;

/// What to ablate and where.
#[derive(Debug, Clone)]
pub struct ShipsOptions {
    pub ablation: Ablation,
    pub layers: Range<usize>,
    pub heads: Range<usize>,
    /// Which KL divergence scores a head.
    pub kl: Kl,
    pub engine: EngineOptions,
}

impl ShipsOptions {
    /// Defaults of the paper: target q, scale by 1e-5, every head.
    pub fn new(cfg: &ModelConfig) -> Self {
        ShipsOptions {
            ablation: Ablation::paper_default(),
            layers: 0..cfg.num_layers,
            heads: 0..cfg.num_heads,
            kl: Kl::Exact,
            engine: EngineOptions::default(),
        }
    }

    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        check_range(Setting::Layers, &self.layers, cfg.num_layers)?;
        check_range(Setting::Heads, &self.heads, cfg.num_heads)?;
        self.ablation.op.validate()
    }

    /// The units scored, in (layer, head) order: every selected head, or for target k one
    /// per key/value group, whose score every selected head of the group shares.
    fn units(&self, cfg: &ModelConfig) -> Vec<Unit> {
        let heads: Vec<(usize, usize)> = self
            .layers
            .clone()
            .flat_map(|l| self.heads.clone().map(move |h| (l, h)))
            .collect();
        self.ablation.units(cfg, &heads)
    }

    /// Number of forward variants run per query.
    pub fn variants_per_query(&self, cfg: &ModelConfig) -> usize {
        self.units(cfg).len()
    }
}

fn check_range(what: Setting, r: &Range<usize>, n: usize) -> Result<()> {
    let value = format!("{}..{}", r.start, r.end);
    if r.start >= r.end {
        return Err(Error::out_of_range(what, value, "the range is empty"));
    }
    if r.end > n {
        return Err(Error::out_of_range(
            what,
            value,
            format!("the model has {n} {what} (0..{n})"),
        ));
    }
    Ok(())
}

/// Parses a range of layers or heads: `A..B` (B excluded), `A..=B`, `A..`, `..B` or `A`.
pub fn parse_range(what: Setting, s: &str, n: usize) -> Result<Range<usize>> {
    let bad = || Error::bad_value(what, format!("{s:?}"), "expected A..B, A..=B or A");
    let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
    let r = if let Some((a, b)) = s.split_once("..=") {
        let a = if a.is_empty() { 0 } else { num(a)? };
        a..num(b)? + 1
    } else if let Some((a, b)) = s.split_once("..") {
        let a = if a.is_empty() { 0 } else { num(a)? };
        let b = if b.is_empty() { n } else { num(b)? };
        a..b
    } else {
        let a = num(s)?;
        a..a + 1
    };
    Ok(r)
}

/// Ships of every selected head for one prompt: a grid `[layer][head]`.
pub fn ships_scores(
    model: &Decoder,
    tokens: &[u32],
    opts: &ShipsOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<HeadGrid> {
    let cfg = &model.cfg;
    opts.validate(cfg)?;
    let units = opts.units(cfg);
    let variants: Vec<Vec<HeadAblation>> = units
        .iter()
        .map(|u| vec![opts.ablation.at(u.layer, u.head)])
        .collect();
    let scores = run_kl(
        model,
        tokens,
        &[],
        &variants,
        opts.kl,
        &opts.engine,
        progress,
    )?;
    let mut grid: HeadGrid = vec![vec![None; cfg.num_heads]; cfg.num_layers];
    for (u, &kl) in units.iter().zip(&scores) {
        for &h in &u.heads {
            grid[u.layer][h] = Some(kl);
        }
    }
    Ok(grid)
}

/// How many of the screen's top units [`screened_ships`] scores exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VerifyTop {
    /// This many units.
    Count(usize),
    /// This percentage of the units, rounded up.
    Percent(f64),
}

impl VerifyTop {
    /// The default: the top 10% of the heads.
    pub const DEFAULT: VerifyTop = VerifyTop::Percent(10.0);

    /// How many of `n` units are verified.
    pub fn count(self, n: usize) -> usize {
        match self {
            VerifyTop::Count(k) => k.min(n),
            VerifyTop::Percent(p) => ((p / 100.0 * n as f64).ceil() as usize).min(n),
        }
    }

    /// The setting as it is written: `K` or `P%`.
    pub fn name(self) -> String {
        match self {
            VerifyTop::Count(k) => k.to_string(),
            VerifyTop::Percent(p) => format!("{p}%"),
        }
    }
}

impl std::str::FromStr for VerifyTop {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::bad_value(Setting::VerifyTop, format!("{s:?}"), why);
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad("expected K or P%"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad("a percentage from 0 to 100"));
                }
                Ok(VerifyTop::Percent(p))
            }
            None => Ok(VerifyTop::Count(
                s.trim().parse().map_err(|_| bad("expected K or P%"))?,
            )),
        }
    }
}

/// The `k` units the screen ranks highest by their `estimates` (ties: the earlier unit),
/// highest first: the ones [`screened_ships`] verifies.
pub fn screen_top(estimates: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..estimates.len()).collect();
    order.sort_by(|&a, &b| estimates[b].total_cmp(&estimates[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Ships from the gradient screen: every head's estimate, and the exact score of the
/// screen's top units.
#[derive(Debug, Clone)]
pub struct Screened {
    /// Exact where verified, the estimate elsewhere.
    pub scores: HeadGrid,
    /// The screen's estimate of every scored head.
    pub estimates: HeadGrid,
    /// Whether each head's score is exact.
    pub exact: Vec<Vec<bool>>,
    /// How many next tokens the screen's expectation ran over, and their probability mass.
    pub tokens: usize,
    pub mass: f64,
}

/// Ships of every selected head for one prompt by gradient screening
/// ([`crate::methods::screen`]): the estimate of every unit, then the top `verify` units by
/// estimate scored exactly by `opts.engine`. A unit the screen ranks below them keeps its
/// estimate. `progress` counts the verified units done.
pub fn screened_ships(
    model: &Decoder,
    tokens: &[u32],
    opts: &ShipsOptions,
    screen_opts: &crate::methods::screen::ScreenOptions,
    verify: VerifyTop,
    progress: &mut dyn FnMut(usize),
) -> Result<Screened> {
    let cfg = &model.cfg;
    opts.validate(cfg)?;
    let units = opts.units(cfg);
    let screen = crate::methods::screen::screen(model, tokens, opts.ablation, &units, screen_opts)?;
    let order = screen_top(&screen.estimates, verify.count(units.len()));
    let variants: Vec<Vec<HeadAblation>> = order
        .iter()
        .map(|&i| vec![opts.ablation.at(units[i].layer, units[i].head)])
        .collect();
    let exact = if variants.is_empty() {
        Vec::new()
    } else {
        run_kl(
            model,
            tokens,
            &[],
            &variants,
            opts.kl,
            &opts.engine,
            progress,
        )?
    };
    let mut out = Screened {
        scores: vec![vec![None; cfg.num_heads]; cfg.num_layers],
        estimates: vec![vec![None; cfg.num_heads]; cfg.num_layers],
        exact: vec![vec![false; cfg.num_heads]; cfg.num_layers],
        tokens: screen.tokens.len(),
        mass: screen.mass,
    };
    for (u, &e) in units.iter().zip(&screen.estimates) {
        for &h in &u.heads {
            out.scores[u.layer][h] = Some(e);
            out.estimates[u.layer][h] = Some(e);
        }
    }
    for (&i, &kl) in order.iter().zip(&exact) {
        let u = &units[i];
        for &h in &u.heads {
            out.scores[u.layer][h] = Some(kl);
            out.exact[u.layer][h] = true;
        }
    }
    Ok(out)
}

/// Where a head patch replaces the head's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchPositions {
    /// The last position only.
    Last,
    /// Every position; only for a source prompt of the same token length.
    All,
}

impl std::str::FromStr for PatchPositions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(PatchPositions::Last),
            "all" => Ok(PatchPositions::All),
            other => Err(Error::bad_value(
                Setting::Positions,
                format!("{other:?}"),
                "expected last or all",
            )),
        }
    }
}

/// Head patching of one prompt from one source prompt: how far each patch moves the
/// next-token distribution toward the source's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchScores {
    /// 1 − KL(p_source ‖ p_patched) / KL(p_source ‖ p_base), `[layer][head]`: 0 when the
    /// patch changes nothing, 1 when the patched model's next-token distribution is the
    /// source prompt's; null where a head was not scored or when the two prompts already
    /// agree (KL(p_source ‖ p_base) below [`MIN_KL_BASE`]).
    pub restoration: HeadGrid,
    /// KL(p_source ‖ p_patched) in nats, `[layer][head]`.
    pub kl_patched: HeadGrid,
    /// KL(p_source ‖ p_base) in nats: the unpatched prompt's distance from the source's.
    /// Below [`MIN_KL_BASE`] the restorations are null: the two prompts' next tokens already
    /// agree, and a ratio to a near-zero distance would be rounding.
    pub kl_base: f64,
    /// The positions patched: `all` only when asked for and both prompts have the same
    /// token length.
    pub positions: PatchPositions,
}

/// The smallest KL(p_source ‖ p_base), in nats, whose restorations are computed.
pub const MIN_KL_BASE: f64 = 1e-6;

/// The patch source of `source` for a prompt of `target_len` tokens: every layer's head
/// outputs at the positions patched (all only when asked for and the lengths are equal), and
/// the source's own next-token logits.
pub fn patch_source(
    model: &Decoder,
    source: &[u32],
    target_len: usize,
    positions: PatchPositions,
) -> Result<(PatchSource, Vec<f32>, PatchPositions)> {
    let positions = match positions {
        PatchPositions::All if source.len() == target_len => PatchPositions::All,
        _ => PatchPositions::Last,
    };
    let mut spec = ForwardSpec::logits(Positions::All);
    spec.z = true;
    let batch = Batch::new(&[source.to_vec()], 0, &model.device)?;
    let out = model.forward(&batch, &spec, None)?;
    let t = source.len();
    let z = out
        .z
        .iter()
        .map(|z| {
            // (1, H, T, D) -> (H, Tp, D)
            let z = z.squeeze(0)?;
            Ok(match positions {
                PatchPositions::All => z,
                PatchPositions::Last => z.narrow(1, t - 1, 1)?.contiguous()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let logits: Vec<f32> = out
        .logits
        .expect("logits")
        .i((0, t - 1))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    crate::model::finite::check_output(
        model,
        source,
        &[],
        &logits,
        || "the patch source".into(),
        None,
    )?;
    Ok((PatchSource { z }, logits, positions))
}

/// Patch scores of every selected head of `tokens` from `source` (`opts.ablation` must be the
/// patch of target v).
pub fn patch_scores(
    model: &Decoder,
    tokens: &[u32],
    source: &[u32],
    positions: PatchPositions,
    opts: &ShipsOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<PatchScores> {
    let cfg = &model.cfg;
    opts.validate(cfg)?;
    if opts.ablation.op != Op::Patch {
        return Err(Error::InvalidArgument(
            "patch scores need the patch op".into(),
        ));
    }
    let (src, p_source, positions) = patch_source(model, source, tokens.len(), positions)?;
    let units = opts.units(cfg);
    let variants: Vec<Vec<HeadAblation>> = units
        .iter()
        .map(|u| vec![opts.ablation.at(u.layer, u.head)])
        .collect();
    let out = run_variants_patched(
        model,
        tokens,
        Some(&src),
        &[],
        &variants,
        Output::Logits,
        &opts.engine,
        progress,
    )?;
    let kl_base = opts.kl.divergence(&p_source, &out.base);
    let mut restoration: HeadGrid = vec![vec![None; cfg.num_heads]; cfg.num_layers];
    let mut kl_patched: HeadGrid = vec![vec![None; cfg.num_heads]; cfg.num_layers];
    for (u, v) in units.iter().zip(&out.variants) {
        let kl = opts.kl.divergence(&p_source, v);
        kl_patched[u.layer][u.head] = Some(kl);
        restoration[u.layer][u.head] = (kl_base >= MIN_KL_BASE).then(|| 1.0 - kl / kl_base);
    }
    Ok(PatchScores {
        restoration,
        kl_patched,
        kl_base,
        positions,
    })
}

/// A head and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadScore {
    pub layer: usize,
    pub head: usize,
    pub score: f64,
}

/// The `k` highest-scoring heads (ties: lower layer, then lower head).
pub fn top_heads(grid: &HeadGrid, k: usize) -> Vec<HeadScore> {
    let mut all: Vec<HeadScore> = grid
        .iter()
        .enumerate()
        .flat_map(|(l, row)| {
            row.iter().enumerate().filter_map(move |(h, s)| {
                s.map(|score| HeadScore {
                    layer: l,
                    head: h,
                    score,
                })
            })
        })
        .collect();
    all.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.layer.cmp(&b.layer))
            .then(a.head.cmp(&b.head))
    });
    all.truncate(k);
    all
}

/// A head ranked over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedHead {
    pub layer: usize,
    pub head: usize,
    /// Mean Ships over the queries.
    pub mean: f64,
    /// Number of queries that have this head in their top K.
    pub count: usize,
}

/// Dataset-level summary of per-query Ships.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub queries: usize,
    pub top_k: usize,
    /// Mean Ships per head, `[layer][head]`.
    pub mean: HeadGrid,
    /// Heads by mean Ships, highest first.
    pub by_mean: Vec<RankedHead>,
    /// Heads by appearance count in the per-query top K, most first (ties: higher mean).
    pub by_count: Vec<RankedHead>,
    /// Bootstrap intervals over the queries, when asked for ([`bootstrap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
}

/// Confidence level of every bootstrap interval.
pub const BOOTSTRAP_LEVEL: f64 = 0.95;

/// How sure a dataset-level ranking is: B resamples of the queries (drawn with replacement),
/// each ranking the heads by their mean Ships over the resample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// B.
    pub resamples: usize,
    /// Seed of the resampling stream ([`crate::methods::stats::Rng`]).
    pub seed: u64,
    /// Level of the intervals (0.95): central percentile intervals of the B values.
    pub level: f64,
    /// The K of `p_top`.
    pub top_k: usize,
    /// Every scored head, in the order of the full sample's ranking by mean.
    pub heads: Vec<HeadBootstrap>,
}

/// One head's bootstrap results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadBootstrap {
    pub layer: usize,
    pub head: usize,
    /// Mean Ships over all the queries, and the interval of the resamples' means.
    pub mean: f64,
    pub mean_lo: f64,
    pub mean_hi: f64,
    /// Rank by mean over all the queries (1 = highest), and the interval of the resamples'
    /// ranks (the lower end rounded down, the upper up).
    pub rank: usize,
    pub rank_lo: usize,
    pub rank_hi: usize,
    /// Fraction of resamples in which the head ranks in the top K.
    pub p_top: f64,
}

/// Ranks (1 = highest) of `values`, ties by position: the order of [`Summary::by_mean`] when
/// the values are listed in (layer, head) order. A NaN (a head no query of a resample
/// scored) ranks last.
pub fn ranks_desc(values: &[f64]) -> Vec<usize> {
    let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        key(values[b])
            .total_cmp(&key(values[a]))
            .then(values[a].is_nan().cmp(&values[b].is_nan()))
            .then(a.cmp(&b))
    });
    let mut rank = vec![0; values.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r + 1;
    }
    rank
}

/// Bootstrap intervals of every head's mean Ships and rank, and its probability of ranking
/// in the top `top_k`, from `resamples` resamples of the queries' grids drawn with `seed`.
pub fn bootstrap(grids: &[HeadGrid], top_k: usize, resamples: usize, seed: u64) -> Bootstrap {
    use crate::methods::stats::{percentile_interval, Rng};
    // The heads scored in any query, in (layer, head) order, and per query their scores:
    // [query][head].
    let (nl, nh) = grids
        .iter()
        .map(|g| (g.len(), g.iter().map(Vec::len).max().unwrap_or(0)))
        .fold((0, 0), |(a, b), (l, h)| (a.max(l), b.max(h)));
    let heads: Vec<(usize, usize)> = (0..nl)
        .flat_map(|l| (0..nh).map(move |h| (l, h)))
        .filter(|&(l, h)| {
            grids
                .iter()
                .any(|g| g.get(l).and_then(|r| r.get(h)).is_some_and(Option::is_some))
        })
        .collect();
    let values: Vec<Vec<Option<f64>>> = grids
        .iter()
        .map(|g| {
            heads
                .iter()
                .map(|&(l, h)| g.get(l).and_then(|r| r.get(h)).copied().flatten())
                .collect()
        })
        .collect();
    let means = |idx: &mut dyn Iterator<Item = usize>| -> Vec<f64> {
        let mut sum = vec![0f64; heads.len()];
        let mut n = vec![0usize; heads.len()];
        for q in idx {
            for (k, v) in values[q].iter().enumerate() {
                if let Some(v) = v {
                    sum[k] += v;
                    n[k] += 1;
                }
            }
        }
        sum.iter()
            .zip(&n)
            .map(|(s, &n)| if n > 0 { s / n as f64 } else { f64::NAN })
            .collect()
    };
    let full = means(&mut (0..grids.len()));
    let full_rank = ranks_desc(&full);
    let mut rng = Rng::new(seed);
    // [head][resample]
    let mut boot_mean = vec![Vec::with_capacity(resamples); heads.len()];
    let mut boot_rank = vec![Vec::with_capacity(resamples); heads.len()];
    let mut in_top = vec![0usize; heads.len()];
    for _ in 0..resamples {
        let idx = rng.resample(grids.len());
        let m = means(&mut idx.into_iter());
        let r = ranks_desc(&m);
        for k in 0..heads.len() {
            if !m[k].is_nan() {
                boot_mean[k].push(m[k]);
            }
            boot_rank[k].push(r[k] as f64);
            if r[k] <= top_k && !m[k].is_nan() {
                in_top[k] += 1;
            }
        }
    }
    let mut out: Vec<HeadBootstrap> = heads
        .iter()
        .enumerate()
        .map(|(k, &(layer, head))| {
            let (mean_lo, mean_hi) = percentile_interval(&mut boot_mean[k], BOOTSTRAP_LEVEL);
            let (rank_lo, rank_hi) = percentile_interval(&mut boot_rank[k], BOOTSTRAP_LEVEL);
            HeadBootstrap {
                layer,
                head,
                mean: full[k],
                mean_lo,
                mean_hi,
                rank: full_rank[k],
                rank_lo: rank_lo.floor() as usize,
                rank_hi: rank_hi.ceil() as usize,
                p_top: in_top[k] as f64 / resamples.max(1) as f64,
            }
        })
        .collect();
    out.sort_by_key(|h| h.rank);
    Bootstrap {
        resamples,
        seed,
        level: BOOTSTRAP_LEVEL,
        top_k,
        heads: out,
    }
}

/// Mean Ships and top-K appearance counts over the queries' grids.
pub fn summarize(grids: &[HeadGrid], top_k: usize) -> Summary {
    let (nl, nh) = grids
        .first()
        .map(|g| (g.len(), g.first().map_or(0, Vec::len)))
        .unwrap_or((0, 0));
    let mut sum = vec![vec![0f64; nh]; nl];
    let mut n = vec![vec![0usize; nh]; nl];
    let mut count = vec![vec![0usize; nh]; nl];
    for g in grids {
        for (l, row) in g.iter().enumerate() {
            for (h, s) in row.iter().enumerate() {
                if let Some(s) = s {
                    sum[l][h] += s;
                    n[l][h] += 1;
                }
            }
        }
        for t in top_heads(g, top_k) {
            count[t.layer][t.head] += 1;
        }
    }
    let mean: HeadGrid = (0..nl)
        .map(|l| {
            (0..nh)
                .map(|h| (n[l][h] > 0).then(|| sum[l][h] / n[l][h] as f64))
                .collect()
        })
        .collect();
    let mut ranked: Vec<RankedHead> = Vec::new();
    for l in 0..nl {
        for h in 0..nh {
            if let Some(m) = mean[l][h] {
                ranked.push(RankedHead {
                    layer: l,
                    head: h,
                    mean: m,
                    count: count[l][h],
                });
            }
        }
    }
    let mut by_mean = ranked.clone();
    by_mean.sort_by(|a, b| {
        b.mean
            .total_cmp(&a.mean)
            .then(a.layer.cmp(&b.layer))
            .then(a.head.cmp(&b.head))
    });
    let mut by_count = ranked;
    by_count.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.mean.total_cmp(&a.mean))
            .then(a.layer.cmp(&b.layer))
            .then(a.head.cmp(&b.head))
    });
    Summary {
        queries: grids.len(),
        top_k,
        mean,
        by_mean,
        by_count,
        bootstrap: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_rust_style() {
        let r = |s: &str| parse_range(Setting::Layers, s, 10);
        assert_eq!(r("2..5").unwrap(), 2..5);
        assert_eq!(r("2..=5").unwrap(), 2..6);
        assert_eq!(r("3").unwrap(), 3..4);
        assert_eq!(r("7..").unwrap(), 7..10);
        assert_eq!(r("..2").unwrap(), 0..2);
        assert!(r("a..b").is_err());
    }

    #[test]
    fn top_heads_break_ties_by_layer_then_head() {
        let g: HeadGrid = vec![vec![Some(1.0), Some(3.0)], vec![Some(3.0), None]];
        let t = top_heads(&g, 3);
        assert_eq!(
            t.iter().map(|x| (x.layer, x.head)).collect::<Vec<_>>(),
            vec![(0, 1), (1, 0), (0, 0)]
        );
    }

    #[test]
    fn summary_means_and_counts() {
        let a: HeadGrid = vec![vec![Some(1.0), Some(4.0)]];
        let b: HeadGrid = vec![vec![Some(3.0), Some(0.0)]];
        let s = summarize(&[a, b], 1);
        assert_eq!(s.mean, vec![vec![Some(2.0), Some(2.0)]]);
        // Both heads have mean 2; each is top-1 once.
        assert_eq!(s.by_count[0].count, 1);
        assert_eq!(s.by_count[1].count, 1);
        assert_eq!((s.by_mean[0].layer, s.by_mean[0].head), (0, 0));
    }
}
