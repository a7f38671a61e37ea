//! Generalized Ships and the Sahara search: dataset-level safety heads.
//!
//! For N queries, the final hidden states after the final norm at the last prompt position
//! form an N × d matrix M; M_∅ is the unmodified model's and M_G the model's with the heads
//! of G ablated. With thin SVDs M = U Σ Vᵀ, the score of G at rank r is the sum of the
//! principal angles, in degrees, between span U_∅[:, :r] and span U_G[:, :r]: the arccos of
//! the singular values of U_∅[:, :r]ᵀ U_G[:, :r], clamped to [-1, 1].
//!
//! Singular vectors are unique only up to sign, and within a repeated singular value only up
//! to a rotation. Signs do not change singular values of U_∅ᵀ U_G. When the r-th singular
//! value is tied with the (r+1)-th (relative gap below [`TIE_TOLERANCE`]), the top-r subspace
//! is not defined; the basis is then widened to the whole tied cluster and the r smallest
//! principal angles between the widened subspaces are summed, which depends on the subspaces
//! alone and not on the basis an SVD happens to return.
//!
//! Sahara grows G greedily: at each step every head not in G is scored as G ∪ {head}, and the
//! highest score joins G (ties: lower layer, then lower head).

use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};
use crate::methods::engine::{run_variants, EngineOptions, Output};
use crate::methods::ships::HeadGrid;
use crate::model::ablation::{Ablation, HeadAblation, Unit};
use crate::model::config::ModelConfig;
use crate::model::finite::{check_output, describe};
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// Relative gap under which two singular values count as tied.
pub const TIE_TOLERANCE: f64 = 1e-9;

/// Left singular vectors (N × min(N, d)) and singular values of a matrix, in f64.
#[derive(Debug, Clone)]
pub struct LeftSubspace {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
}

impl LeftSubspace {
    /// Thin SVD of `m` (N × d).
    pub fn of(m: &Mat<f64>) -> Result<Self> {
        let svd = m
            .thin_svd()
            .map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
        let u = svd.U().to_owned();
        let s: Vec<f64> = (0..u.ncols()).map(|i| svd.S()[i]).collect();
        Ok(LeftSubspace { u, s })
    }

    /// Number of columns spanning the top-r subspace: r, widened over a tie at the cut.
    pub fn width(&self, r: usize) -> usize {
        let mut k = r.min(self.s.len());
        let scale = self
            .s
            .first()
            .copied()
            .unwrap_or(0.0)
            .max(f64::MIN_POSITIVE);
        while k < self.s.len()
            && k > 0
            && (self.s[k - 1] - self.s[k]).abs() <= TIE_TOLERANCE * scale
        {
            k += 1;
        }
        k
    }
}

impl LeftSubspace {
    /// The left singular subspace of M from its Gram matrix G = M Mᵀ (N × N): the
    /// eigenvectors of G, by decreasing eigenvalue, and σ = √λ (negative rounding clamped to 0).
    pub fn of_gram(g: &Mat<f64>) -> Result<Self> {
        let evd = g
            .self_adjoint_eigen(faer::Side::Lower)
            .map_err(|e| Error::Numerical(format!("eigendecomposition did not converge: {e:?}")))?;
        let n = g.nrows();
        // faer sorts eigenvalues in nondecreasing order: reverse.
        let u = Mat::from_fn(n, n, |i, j| evd.U()[(i, n - 1 - j)]);
        let s = (0..n).map(|j| evd.S()[n - 1 - j].max(0.0).sqrt()).collect();
        Ok(LeftSubspace { u, s })
    }
}

/// G = M Mᵀ of an N × d matrix.
pub fn gram(m: &Mat<f64>) -> Mat<f64> {
    m * m.transpose()
}

/// `G[idx, idx]`: the Gram matrix of the rows `idx` of M (repeats allowed).
pub fn gram_rows(g: &Mat<f64>, idx: &[usize]) -> Mat<f64> {
    Mat::from_fn(idx.len(), idx.len(), |i, j| g[(idx[i], idx[j])])
}

/// How sure Sahara's step is: B resamples of the queries, the step's candidates scored again
/// on each from their Gram matrices (no new forward pass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepBootstrap {
    pub resamples: usize,
    pub seed: u64,
    /// Level of the intervals (0.95): central percentile intervals of the B scores.
    pub level: f64,
    /// Every candidate head, in (layer, head) order.
    pub heads: Vec<StepHeadBootstrap>,
}

/// One candidate's bootstrap results at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepHeadBootstrap {
    pub layer: usize,
    pub head: usize,
    /// The score on all the queries, and the interval of the resamples' scores.
    pub score: f64,
    pub score_lo: f64,
    pub score_hi: f64,
    /// Fraction of resamples in which this head (its unit, for a key/value group) would be
    /// chosen at this step.
    pub p_chosen: f64,
}

/// [`StepBootstrap`] from the unmodified model's Gram matrix `reference` and each candidate
/// unit's, at rank `rank`.
pub fn bootstrap_step(
    reference: &Mat<f64>,
    candidates: &[UnitGram],
    rank: usize,
    resamples: usize,
    seed: u64,
) -> Result<StepBootstrap> {
    use crate::methods::stats::{percentile_interval, Rng};
    let n = reference.nrows();
    // A resample holds about 0.63 N distinct queries; its top-r subspace needs r of them.
    if 2 * rank > n {
        return Err(Error::out_of_range(
            Setting::Rank,
            rank,
            format!(
                "a bootstrap of {n} queries needs a rank of at most {}",
                n / 2
            ),
        ));
    }
    let score_of = |g0: &Mat<f64>, g: &Mat<f64>| -> Result<f64> {
        let (a, b) = (LeftSubspace::of_gram(g0)?, LeftSubspace::of_gram(g)?);
        principal_angle_score(&a, &b, rank)
    };
    let full: Vec<f64> = candidates
        .iter()
        .map(|(_, g)| score_of(reference, g))
        .collect::<Result<_>>()?;
    let mut rng = Rng::new(seed);
    let mut scores = vec![Vec::with_capacity(resamples); candidates.len()];
    let mut chosen = vec![0usize; candidates.len()];
    for _ in 0..resamples {
        // Redrawn (rarely) until it has at least r distinct queries.
        let idx = loop {
            let idx = rng.resample(n);
            let mut distinct = idx.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() >= rank {
                break idx;
            }
        };
        let a = LeftSubspace::of_gram(&gram_rows(reference, &idx))?;
        let mut best: Option<(usize, f64)> = None;
        for (c, (_, g)) in candidates.iter().enumerate() {
            let b = LeftSubspace::of_gram(&gram_rows(g, &idx))?;
            let s = principal_angle_score(&a, &b, rank)?;
            scores[c].push(s);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((c, s));
            }
        }
        if let Some((c, _)) = best {
            chosen[c] += 1;
        }
    }
    let mut heads = Vec::new();
    for (c, (u, _)) in candidates.iter().enumerate() {
        let (lo, hi) = percentile_interval(&mut scores[c], crate::methods::ships::BOOTSTRAP_LEVEL);
        for &h in &u.heads {
            heads.push(StepHeadBootstrap {
                layer: u.layer,
                head: h,
                score: full[c],
                score_lo: lo,
                score_hi: hi,
                p_chosen: chosen[c] as f64 / resamples.max(1) as f64,
            });
        }
    }
    Ok(StepBootstrap {
        resamples,
        seed,
        level: crate::methods::ships::BOOTSTRAP_LEVEL,
        heads,
    })
}

/// Sum of the r smallest principal angles, in degrees, between the top-r left singular
/// subspaces of two matrices.
pub fn principal_angle_score(a: &LeftSubspace, b: &LeftSubspace, r: usize) -> Result<f64> {
    if r == 0 || r > a.s.len() || r > b.s.len() {
        return Err(Error::out_of_range(
            Setting::Rank,
            r,
            format!("must be 1..={}", a.s.len().min(b.s.len())),
        ));
    }
    let ka = a.width(r);
    let kb = b.width(r);
    let ua = a.u.as_ref().subcols(0, ka);
    let ub = b.u.as_ref().subcols(0, kb);
    // (ka × N) @ (N × kb)
    let c: Mat<f64> = ua.transpose() * ub;
    let mut sv = c
        .singular_values()
        .map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
    sv.sort_by(|x, y| y.total_cmp(x));
    Ok(sv
        .iter()
        .take(r)
        .map(|&x| x.clamp(-1.0, 1.0).acos().to_degrees())
        .sum())
}

/// Stacks row vectors (f32) into an N × d f64 matrix.
pub fn stack_rows(rows: &[Vec<f32>]) -> Mat<f64> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    Mat::from_fn(n, d, |i, j| rows[i][j] as f64)
}

/// Options of the Sahara search.
#[derive(Debug, Clone)]
pub struct SaharaOptions {
    pub ablation: Ablation,
    pub rank: usize,
    pub steps: usize,
    pub engine: EngineOptions,
    /// Candidates computed together per query: `None` for all of a step's at once; with a
    /// size, a step's candidates are cut into fixed chunks ([`chunks`]) computed one after
    /// the other, the plan a run spread over workers shares with a single run.
    pub chunk: Option<usize>,
}

impl SaharaOptions {
    pub fn validate(&self, cfg: &ModelConfig, queries: usize) -> Result<()> {
        if queries < 2 {
            return Err(Error::TooFewQueries {
                found: queries,
                needed: 2,
            });
        }
        let max_rank = queries.min(cfg.hidden_size);
        if self.rank == 0 || self.rank > max_rank {
            return Err(Error::out_of_range(
                Setting::Rank,
                self.rank,
                format!("must be 1..={max_rank} (at most the number of queries {queries} and the hidden size {})", cfg.hidden_size),
            ));
        }
        let heads = cfg.num_layers * cfg.num_heads;
        if self.steps == 0 || self.steps > heads {
            return Err(Error::out_of_range(
                Setting::Steps,
                self.steps,
                format!("must be 1..={heads} (the number of heads)"),
            ));
        }
        self.ablation.op.validate()
    }
}

/// The final hidden state at the last position of each prompt, with `ablations`.
pub fn final_hidden(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[HeadAblation],
) -> Result<Vec<Vec<f32>>> {
    let plan = model.ablation_plan(&[ablations.to_vec()])?;
    let mut spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
    spec.logits = false;
    spec.hidden = true;
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let b = Batch::new(std::slice::from_ref(p), 0, &model.device)?;
            let h = model.forward(&b, &spec, None)?.hidden.expect("hidden");
            let h: Vec<f32> = h
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            check_output(model, p, ablations, &h, || describe(ablations), None)
                .map_err(|e| e.context(format!("query {}", i + 1)))?;
            Ok(h)
        })
        .collect()
}

/// The units scored at a step: every head not in `selected`; for target k with grouped-query
/// attention, one per key/value group none of whose heads is selected (the group's heads
/// share its score).
pub fn candidates(cfg: &ModelConfig, selected: &[(usize, usize)], ablation: Ablation) -> Vec<Unit> {
    let heads: Vec<(usize, usize)> = (0..cfg.num_layers)
        .flat_map(|l| (0..cfg.num_heads).map(move |h| (l, h)))
        .filter(|&h| !selected.iter().any(|&s| ablation.same_unit(cfg, s, h)))
        .collect();
    ablation.units(cfg, &heads)
}

/// A step's candidates cut into chunks of `size` (the last one shorter), in candidate order:
/// fixed by the number of candidates and the size alone.
pub fn chunks(candidates: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    let size = size.max(1);
    (0..candidates.div_ceil(size))
        .map(|k| k * size..((k + 1) * size).min(candidates))
        .collect()
}

/// The chunks of the step after `selected` under `opts` (one for all candidates without
/// [`SaharaOptions::chunk`]).
pub fn step_chunks(
    cfg: &ModelConfig,
    selected: &[(usize, usize)],
    opts: &SaharaOptions,
) -> Vec<std::ops::Range<usize>> {
    let n = candidates(cfg, selected, opts.ablation).len();
    chunks(n, opts.chunk.unwrap_or(n))
}

/// Candidates whose final states a step holds at once: as many as fit N × d f32 values each
/// in the engine's memory budget, capped at [`crate::device::CPU_DEFAULT_BUDGET`] (the states
/// are held in host memory, and a GPU's budget is its own), and at least one. A step's memory
/// then grows with N · d and the budget, not with the number of heads (L · H · N · d); the
/// price is one more base forward pass per query for each window after the first.
pub fn window_size(engine: &EngineOptions, queries: usize, hidden_size: usize) -> usize {
    let held = engine.memory_budget.min(crate::device::CPU_DEFAULT_BUDGET);
    let per_candidate = queries.max(1) * hidden_size.max(1) * std::mem::size_of::<f32>();
    (held / per_candidate).max(1)
}

/// One head's score at a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadScore {
    pub layer: usize,
    pub head: usize,
    pub score: f64,
}

/// Scores of the candidates `range` of the step after `selected` (see [`step_scores`]), one
/// entry per head (the heads of a key/value group share their unit's score). `progress`
/// receives the number of (query, candidate) runs finished.
pub fn chunk_scores(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    range: std::ops::Range<usize>,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<HeadScore>> {
    Ok(chunk_run(
        model, prompts, selected, reference, opts, range, false, progress,
    )?
    .0)
}

/// A candidate unit and the Gram matrix (N × N) of its final hidden states.
pub type UnitGram = (Unit, Mat<f64>);

/// [`chunk_scores`], and with `keep_grams` each unit's Gram matrix of its final hidden states.
#[allow(clippy::too_many_arguments)]
fn chunk_run(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    range: std::ops::Range<usize>,
    keep_grams: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<HeadScore>, Vec<UnitGram>)> {
    let cfg = &model.cfg;
    let base = opts.ablation.of(selected);
    let all = candidates(cfg, selected, opts.ablation);
    let units = all.get(range.clone()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "candidates {}..{} of {}",
            range.start,
            range.end,
            all.len()
        ))
    })?;
    let variants: Vec<Vec<HeadAblation>> = units
        .iter()
        .map(|u| vec![opts.ablation.at(u.layer, u.head)])
        .collect();
    // Candidate-major in windows: every query's variants of one window of candidates, then
    // that window's scores, so that only one window's final states are held (see
    // [`window_size`]). Each query's base forward pass runs once per window.
    let window = window_size(&opts.engine, prompts.len(), cfg.hidden_size);
    let mut scores = Vec::new();
    let mut grams = Vec::new();
    for (w, wv) in variants.chunks(window).enumerate() {
        let first = w * window;
        // Final hidden states of this window's candidates: [candidate][query] -> d values.
        let mut hidden: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(prompts.len()); wv.len()];
        for (qi, p) in prompts.iter().enumerate() {
            let before = first * prompts.len() + qi * wv.len();
            let out = run_variants(
                model,
                p,
                &base,
                wv,
                Output::Hidden,
                &opts.engine,
                &mut |n| progress(before + n),
            )
            .map_err(|e| e.context(format!("query {}", qi + 1)))?;
            for (c, v) in out.variants.into_iter().enumerate() {
                hidden[c].push(v);
            }
        }
        for (c, h) in hidden.into_iter().enumerate() {
            let u = &units[first + c];
            let m = stack_rows(&h);
            drop(h);
            if keep_grams {
                grams.push((u.clone(), gram(&m)));
            }
            let sub = LeftSubspace::of(&m)?;
            let score = principal_angle_score(reference, &sub, opts.rank)?;
            for &h in &u.heads {
                scores.push(HeadScore {
                    layer: u.layer,
                    head: h,
                    score,
                });
            }
        }
    }
    Ok((scores, grams))
}

/// The grid `[layer][head]` of a step's head scores.
pub fn grid_of(cfg: &ModelConfig, scores: &[HeadScore]) -> HeadGrid {
    let mut grid: HeadGrid = vec![vec![None; cfg.num_heads]; cfg.num_layers];
    for s in scores {
        grid[s.layer][s.head] = Some(s.score);
    }
    grid
}

/// Scores of every head not in `selected`, as G ∪ {head} with G = `selected`, against the
/// unmodified model's subspace `reference`, chunk by chunk ([`step_chunks`]). `progress`
/// receives the number of (query, head) runs finished.
pub fn step_scores(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<HeadGrid> {
    let (scores, _) = run_step(model, prompts, selected, reference, opts, false, progress)?;
    Ok(grid_of(&model.cfg, &scores))
}

/// Every chunk of the step after `selected`, one after the other: the heads' scores, and with
/// `keep_grams` each unit's Gram matrix.
fn run_step(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    keep_grams: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<HeadScore>, Vec<UnitGram>)> {
    let mut scores = Vec::new();
    let mut grams = Vec::new();
    let mut before = 0;
    for range in step_chunks(&model.cfg, selected, opts) {
        let n = range.len() * prompts.len();
        let (s, g) = chunk_run(
            model,
            prompts,
            selected,
            reference,
            opts,
            range,
            keep_grams,
            &mut |k| progress(before + k),
        )?;
        scores.extend(s);
        grams.extend(g);
        before += n;
    }
    Ok((scores, grams))
}

/// The unmodified model's subspace every step compares against: the left singular vectors
/// of the prompts' final hidden states.
pub fn reference_subspace(model: &Decoder, prompts: &[Vec<u32>]) -> Result<LeftSubspace> {
    LeftSubspace::of(&stack_rows(&final_hidden(model, prompts, &[])?))
}

/// One greedy step of the Sahara search: every head not in `selected` scored
/// ([`step_scores`]), and the best of them chosen ([`best_head`]).
pub fn greedy_step(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<crate::io::formats::AttributeStep> {
    greedy_step_with(model, prompts, selected, reference, opts, None, progress)
}

/// What [`greedy_step_with`] bootstraps: the unmodified model's Gram matrix of final hidden
/// states (N × N), resamples and seed.
#[derive(Debug, Clone, Copy)]
pub struct StepBootstrapPlan<'a> {
    pub reference: &'a Mat<f64>,
    pub resamples: usize,
    pub seed: u64,
}

/// [`greedy_step`], and with `bootstrap` the step's [`StepBootstrap`] from the candidates'
/// Gram matrices, kept while the step runs (N × N per candidate, no new forward pass).
pub fn greedy_step_with(
    model: &Decoder,
    prompts: &[Vec<u32>],
    selected: &[(usize, usize)],
    reference: &LeftSubspace,
    opts: &SaharaOptions,
    bootstrap: Option<StepBootstrapPlan<'_>>,
    progress: &mut dyn FnMut(usize),
) -> Result<crate::io::formats::AttributeStep> {
    let (scores, grams) = run_step(
        model,
        prompts,
        selected,
        reference,
        opts,
        bootstrap.is_some(),
        progress,
    )?;
    let grid = grid_of(&model.cfg, &scores);
    let (l, h, score) =
        best_head(&grid).ok_or_else(|| Error::InvalidArgument("no head left to select".into()))?;
    let bootstrap = bootstrap
        .map(|b| -> Result<StepBootstrap> {
            let mut out = bootstrap_step(b.reference, &grams, opts.rank, b.resamples, b.seed)?;
            // The full sample's score as the step computed it (its SVD), not again from the
            // Gram matrices.
            for h in &mut out.heads {
                if let Some(s) = grid[h.layer][h.head] {
                    h.score = s;
                }
            }
            Ok(out)
        })
        .transpose()?;
    Ok(crate::io::formats::AttributeStep {
        selected: [l, h],
        score,
        scores: grid,
        bootstrap,
    })
}

/// The best head of a step's grid (ties: lower layer, then lower head).
pub fn best_head(grid: &HeadGrid) -> Option<(usize, usize, f64)> {
    let mut best: Option<(usize, usize, f64)> = None;
    for (l, row) in grid.iter().enumerate() {
        for (h, s) in row.iter().enumerate() {
            if let Some(s) = *s {
                if best.is_none_or(|(_, _, b)| s > b) {
                    best = Some((l, h, s));
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(rows: &[&[f64]]) -> LeftSubspace {
        let m = Mat::from_fn(rows.len(), rows[0].len(), |i, j| rows[i][j]);
        LeftSubspace::of(&m).unwrap()
    }

    #[test]
    fn identical_matrices_score_zero() {
        let a = sub(&[&[3.0, 0.0, 1.0], &[0.0, 1.0, 0.0], &[1.0, 1.0, 1.0]]);
        // arccos near 1 amplifies rounding: 1 - 1e-16 is about 1e-5 degrees.
        assert!(principal_angle_score(&a, &a, 1).unwrap().abs() < 1e-5);
        assert!(principal_angle_score(&a, &a, 3).unwrap().abs() < 1e-4);
    }

    #[test]
    fn orthogonal_top_directions_score_ninety_degrees() {
        // Query 0 dominates in A, query 1 in B.
        let a = sub(&[&[10.0, 0.0], &[0.0, 1.0]]);
        let b = sub(&[&[1.0, 0.0], &[0.0, 10.0]]);
        assert!((principal_angle_score(&a, &b, 1).unwrap() - 90.0).abs() < 1e-9);
        // At full rank the spans coincide (both are all of R^2).
        assert!(principal_angle_score(&a, &b, 2).unwrap().abs() < 1e-5);
    }

    #[test]
    fn a_hand_computed_angle() {
        // u0 = e1; M_G's top left singular vector is (cos 30°, sin 30°).
        let t = 30f64.to_radians();
        let a = sub(&[&[5.0, 0.0], &[0.0, 1.0]]);
        let b = sub(&[&[5.0 * t.cos(), -t.sin()], &[5.0 * t.sin(), t.cos()]]);
        assert!((principal_angle_score(&a, &b, 1).unwrap() - 30.0).abs() < 1e-9);
    }

    #[test]
    fn signs_of_singular_vectors_do_not_matter() {
        let a = sub(&[&[2.0, 1.0], &[1.0, 3.0], &[0.0, 1.0]]);
        let b = sub(&[&[-2.0, -1.0], &[-1.0, -3.0], &[0.0, -1.0]]);
        assert!(principal_angle_score(&a, &b, 1).unwrap().abs() < 1e-5);
    }

    #[test]
    fn a_repeated_singular_value_does_not_make_the_score_unstable() {
        // M with σ1 = σ2: rows e1 and e2 scaled equally; the top-1 subspace is undefined.
        let tied = sub(&[&[2.0, 0.0, 0.0], &[0.0, 2.0, 0.0], &[0.0, 0.0, 1.0]]);
        assert_eq!(tied.width(1), 2);
        // The same matrix with its columns rotated has the same left subspaces, but an SVD
        // may pick another basis inside the tied plane.
        let (c, s) = (0.6f64, 0.8f64);
        let rotated = sub(&[
            &[2.0 * c, -2.0 * s, 0.0],
            &[2.0 * s, 2.0 * c, 0.0],
            &[0.0, 0.0, 1.0],
        ]);
        let other = sub(&[&[1.0, 0.0, 0.0], &[0.0, 3.0, 0.0], &[0.0, 0.0, 1.0]]);
        let s1 = principal_angle_score(&tied, &other, 1).unwrap();
        let s2 = principal_angle_score(&rotated, &other, 1).unwrap();
        assert!((s1 - s2).abs() < 1e-9, "{s1} vs {s2}");
        // Query 1 lies in the tied plane, so the smallest angle is 0.
        assert!(s1.abs() < 1e-5, "{s1}");
        assert!(principal_angle_score(&tied, &rotated, 1).unwrap().abs() < 1e-5);
    }

    #[test]
    fn best_head_breaks_ties_by_layer_then_head() {
        let g: HeadGrid = vec![vec![None, Some(2.0)], vec![Some(2.0), Some(1.0)]];
        assert_eq!(best_head(&g), Some((0, 1, 2.0)));
    }
}
