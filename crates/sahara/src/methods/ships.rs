//! Ships (Safety Head ImPortant Score): for one query and one head, the KL divergence of the
//! ablated model's next-token distribution at the last prompt position from the unmodified
//! model's, `KL(p_base ‖ p_ablated)` in nats.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};
use crate::methods::engine::{run_kl, EngineOptions};
use crate::methods::metrics::Kl;
use crate::model::ablation::{Ablation, HeadAblation, Unit};
use crate::model::config::ModelConfig;
use crate::model::Decoder;

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
