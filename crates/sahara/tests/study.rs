//! How sure, how general, at what cost: bootstrap intervals on synthetic data with a known
//! answer, head patching against a hand-made patch, and perplexity against a naive
//! computation.

use candle_core::{DType, Device, IndexOp};
use faer::Mat;
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::methods::engine::{run_variants, run_variants_patched, Output};
use sahara::methods::metrics::log_softmax;
use sahara::methods::perplexity::perplexity;
use sahara::methods::sahara::{
    bootstrap_step, gram, principal_angle_score, LeftSubspace, StepBootstrap,
};
use sahara::methods::ships::{bootstrap, patch_source, HeadGrid, PatchPositions};
use sahara::methods::stats::Rng;
use sahara::model::ablation::Unit;
use sahara::{Batch, ForwardSpec, HeadAblation, LoadedModel, Op, Positions, Target};

fn model(arch: &str) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_random_model(dir.path(), &RandomModel::tiny(arch)).unwrap();
    let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

/// Per-query grids of one layer whose heads have the true means `means` plus normal noise.
fn noisy_grids(rng: &mut Rng, means: &[f64], sd: f64, queries: usize) -> Vec<HeadGrid> {
    (0..queries)
        .map(|_| vec![means.iter().map(|m| Some(m + sd * rng.normal())).collect()])
        .collect()
}

#[test]
fn ships_bootstrap_intervals_cover_the_true_mean_and_rank_in_at_least_90_percent_of_repeats() {
    let means = [1.0, 0.8, 0.6, 0.45, 0.3, 0.0];
    let (mut covered_mean, mut covered_rank, mut total) = (0, 0, 0);
    let mut rng = Rng::new(11);
    for repeat in 0..150 {
        let grids = noisy_grids(&mut rng, &means, 0.5, 40);
        let b = bootstrap(&grids, 2, 200, repeat);
        for h in &b.heads {
            let true_mean = means[h.head];
            let true_rank = h.head + 1;
            covered_mean += usize::from(h.mean_lo <= true_mean && true_mean <= h.mean_hi);
            covered_rank += usize::from(h.rank_lo <= true_rank && true_rank <= h.rank_hi);
            total += 1;
            assert!(h.mean_lo <= h.mean && h.mean <= h.mean_hi, "{h:?}");
            assert!((0.0..=1.0).contains(&h.p_top));
        }
    }
    let (m, r) = (
        covered_mean as f64 / total as f64,
        covered_rank as f64 / total as f64,
    );
    eprintln!("coverage: mean {m:.3}, rank {r:.3} over {total} intervals");
    assert!(
        m >= 0.9,
        "mean intervals cover the truth in {m:.3} of cases"
    );
    assert!(
        r >= 0.9,
        "rank intervals cover the truth in {r:.3} of cases"
    );
}

#[test]
fn ships_bootstrap_is_reproducible_and_ranks_a_clear_winner_first_always() {
    let mut rng = Rng::new(3);
    let grids = noisy_grids(&mut rng, &[5.0, 0.1, 0.0], 0.2, 20);
    let a = bootstrap(&grids, 1, 100, 7);
    assert_eq!(a, bootstrap(&grids, 1, 100, 7));
    assert_ne!(a, bootstrap(&grids, 1, 100, 8));
    let first = &a.heads[0];
    assert_eq!(
        (first.head, first.rank, first.rank_lo, first.rank_hi),
        (0, 1, 1, 1)
    );
    assert_eq!(first.p_top, 1.0);
    // The two near-zero heads share ranks 2 and 3.
    assert!(
        a.heads[1].rank_lo == 2 && a.heads[1].rank_hi == 3,
        "{:?}",
        a.heads[1]
    );
}

#[test]
fn ships_bootstrap_takes_heads_from_every_query_and_ranks_unscored_ones_last() {
    // Query 0 scored nothing (a patch pair whose prompts already agree); query 1 both heads.
    let grids: Vec<HeadGrid> = vec![
        vec![vec![None, None]],
        vec![vec![Some(2.0), Some(1.0)]],
        vec![vec![Some(3.0), Some(0.5)]],
    ];
    let b = bootstrap(&grids, 1, 200, 0);
    assert_eq!(b.heads.len(), 2);
    assert_eq!((b.heads[0].head, b.heads[0].rank), (0, 1));
    for h in &b.heads {
        assert!(h.mean_lo.is_finite() && h.mean_hi.is_finite(), "{h:?}");
    }
    // A resample of query 0 alone scores neither head: neither is then in the top 1, so
    // P(top 1) of the two heads adds up to less than 1 (about 1 - 1/27).
    let p: f64 = b.heads.iter().map(|h| h.p_top).sum();
    assert!(p < 1.0 && p > 0.9, "{p}");
}

/// N rows of a population whose hidden states lie along e1 (sd 3), e2 (sd 1) and e3 (sd 0.5),
/// and the ablated model's: the same rows through a fixed map that mixes the top two axes.
fn population(rng: &mut Rng, n: usize) -> (Mat<f64>, Mat<f64>) {
    let sd = [3.0, 1.0, 0.5];
    let x = Mat::from_fn(n, 3, |_, j| sd[j] * rng.normal());
    let a = Mat::from_fn(3, 3, |i, j| match (i, j) {
        (0, 0) => 0.6,
        (0, 1) => 0.9,
        (1, 0) => -0.5,
        (1, 1) => 1.6,
        (2, 2) => 1.0,
        _ => 0.0,
    });
    let xg = &x * &a;
    (x, xg)
}

#[test]
fn gram_matrices_give_the_scores_of_the_svd() {
    let mut rng = Rng::new(5);
    let (x, xg) = population(&mut rng, 30);
    let svd = principal_angle_score(
        &LeftSubspace::of(&x).unwrap(),
        &LeftSubspace::of(&xg).unwrap(),
        2,
    )
    .unwrap();
    let from_gram = principal_angle_score(
        &LeftSubspace::of_gram(&gram(&x)).unwrap(),
        &LeftSubspace::of_gram(&gram(&xg)).unwrap(),
        2,
    )
    .unwrap();
    assert!((svd - from_gram).abs() < 1e-6, "{svd} vs {from_gram}");
}

fn unit(head: usize) -> Unit {
    Unit {
        layer: 0,
        head,
        heads: vec![head],
    }
}

#[test]
fn attribute_bootstrap_intervals_cover_the_population_score_in_at_least_90_percent_of_repeats() {
    let mut rng = Rng::new(17);
    // The population's score: the angle on a very large sample.
    let (x, xg) = population(&mut rng, 20_000);
    let truth = principal_angle_score(
        &LeftSubspace::of(&x).unwrap(),
        &LeftSubspace::of(&xg).unwrap(),
        1,
    )
    .unwrap();
    let (mut covered, repeats) = (0, 100);
    for repeat in 0..repeats {
        let (x, xg) = population(&mut rng, 60);
        let b: StepBootstrap =
            bootstrap_step(&gram(&x), &[(unit(0), gram(&xg))], 1, 200, repeat).unwrap();
        let h = &b.heads[0];
        covered += usize::from(h.score_lo <= truth && truth <= h.score_hi);
        assert_eq!(h.p_chosen, 1.0, "the only candidate is always chosen");
    }
    let c = covered as f64 / repeats as f64;
    eprintln!("coverage: {c:.3} of {repeats} repeats, population score {truth:.3} degrees");
    assert!(
        c >= 0.9,
        "intervals cover the population score {truth:.3}° in {c:.3} of repeats"
    );
}

#[test]
fn attribute_bootstrap_counts_how_often_each_candidate_would_be_chosen() {
    let mut rng = Rng::new(23);
    let (x, xg) = population(&mut rng, 40);
    // A candidate that changes nothing scores 0 and is never chosen over one that turns the
    // subspace.
    let b = bootstrap_step(
        &gram(&x),
        &[(unit(0), gram(&x)), (unit(1), gram(&xg))],
        1,
        50,
        1,
    )
    .unwrap();
    assert_eq!(b.heads.len(), 2);
    assert!(b.heads[0].score.abs() < 1e-4, "{:?}", b.heads[0]);
    assert_eq!((b.heads[0].p_chosen, b.heads[1].p_chosen), (0.0, 1.0));
}

#[test]
fn a_patch_replaces_the_head_output_by_the_source_prompts() {
    let (_d, m) = model("LlamaForCausalLM");
    let tokens: Vec<u32> = vec![1, 5, 9, 3, 7];
    let source: Vec<u32> = vec![1, 4, 8, 2, 6];
    let cfg = m.cfg().clone();
    let patch = HeadAblation::new(1, 2, Target::Z, Op::Patch);
    for positions in [PatchPositions::Last, PatchPositions::All] {
        let (src, _, used) = patch_source(&m.decoder, &source, tokens.len(), positions).unwrap();
        assert_eq!(used, positions);
        // The patched forward's z at layer 1, head 2 equals the source's; other heads keep
        // the prompt's own.
        let plan = m.decoder.patch_plan(&[vec![patch]], Some(&src)).unwrap();
        let mut spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
        spec.z = true;
        let batch = Batch::new(std::slice::from_ref(&tokens), 0, &Device::Cpu).unwrap();
        let patched = m.decoder.forward(&batch, &spec, None).unwrap().z;
        let mut plain_spec = ForwardSpec::logits(Positions::All);
        plain_spec.z = true;
        let plain = m.decoder.forward(&batch, &plain_spec, None).unwrap().z;
        let t = tokens.len();
        let last = |z: &candle_core::Tensor, h: usize| -> Vec<f32> {
            z.i((0, h, t - 1)).unwrap().to_vec1().unwrap()
        };
        let src_last: Vec<f32> = match positions {
            PatchPositions::Last => src.z[1].i((2, 0)).unwrap().to_vec1().unwrap(),
            PatchPositions::All => src.z[1].i((2, t - 1)).unwrap().to_vec1().unwrap(),
        };
        assert_eq!(last(&patched[1], 2), src_last);
        assert_eq!(last(&patched[1], 1), last(&plain[1], 1));
        // Layer 0 is before the patch.
        assert_eq!(last(&patched[0], 2), last(&plain[0], 2));
        // Earlier positions: the prompt's own with a last-position patch, the source's with
        // an all-position one.
        let first = patched[1].i((0, 2, 1)).unwrap().to_vec1::<f32>().unwrap();
        match positions {
            PatchPositions::Last => {
                assert_eq!(
                    first,
                    plain[1].i((0, 2, 1)).unwrap().to_vec1::<f32>().unwrap()
                )
            }
            PatchPositions::All => {
                assert_eq!(first, src.z[1].i((2, 1)).unwrap().to_vec1::<f32>().unwrap())
            }
        }
        // The fast engine (staircase, last position only in the last layer) agrees with the
        // naive one.
        let variants: Vec<Vec<HeadAblation>> = (0..cfg.num_layers)
            .flat_map(|l| (0..cfg.num_heads).map(move |h| (l, h)))
            .map(|(l, h)| vec![HeadAblation::new(l, h, Target::Z, Op::Patch)])
            .collect();
        let mut opts = sahara::methods::engine::EngineOptions::default();
        let fast = run_variants_patched(
            &m.decoder,
            &tokens,
            Some(&src),
            &[],
            &variants,
            Output::Logits,
            &opts,
            &mut |_| {},
        )
        .unwrap();
        opts.kind = sahara::methods::engine::Engine::Naive;
        let naive = run_variants_patched(
            &m.decoder,
            &tokens,
            Some(&src),
            &[],
            &variants,
            Output::Logits,
            &opts,
            &mut |_| {},
        )
        .unwrap();
        for (a, b) in fast.variants.iter().zip(&naive.variants) {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "fast and naive patched logits differ by {d}");
        }
    }
    // A source of another length is patched at the last position only.
    let (_, _, used) =
        patch_source(&m.decoder, &source[..3], tokens.len(), PatchPositions::All).unwrap();
    assert_eq!(used, PatchPositions::Last);
    // Without a source, a patch is refused.
    let e = run_variants(
        &m.decoder,
        &tokens,
        &[],
        &[vec![patch]],
        Output::Logits,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs its source"), "{e}");
}

#[test]
fn perplexity_equals_the_naive_mean_log_likelihood_per_window() {
    let (_d, m) = model("LlamaForCausalLM");
    let text: Vec<u32> = (0..23).map(|i| (i * 7 % 40 + 3) as u32).collect();
    let prefix = [1u32];
    let abl = [HeadAblation::new(0, 1, Target::Q, Op::Scale(0.0))];
    for ablations in [&[][..], &abl[..]] {
        let got = perplexity(&m.decoder, &prefix, &text, 10, ablations).unwrap();
        // Naive: each window after the prefix, full logits, host log-softmax.
        let (mut sum, mut n) = (0f64, 0usize);
        for w in text.chunks(10) {
            let input: Vec<u32> = prefix.iter().chain(w).copied().collect();
            let plan = m.decoder.ablation_plan(&[ablations.to_vec()]).unwrap();
            let spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
            let batch = Batch::new(std::slice::from_ref(&input), 0, &Device::Cpu).unwrap();
            let logits: Vec<Vec<f32>> = m
                .decoder
                .forward(&batch, &spec, None)
                .unwrap()
                .logits
                .unwrap()
                .i(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            for i in 0..input.len() - 1 {
                sum -= log_softmax(&logits[i])[input[i + 1] as usize];
                n += 1;
            }
        }
        assert_eq!(got.tokens, n);
        assert!(
            (got.nll - sum / n as f64).abs() < 1e-5,
            "{} vs {}",
            got.nll,
            sum / n as f64
        );
        assert!((got.perplexity - got.nll.exp()).abs() < 1e-9);
    }
}
