//! The fast generalized-Ships engine agrees with the naive one (one full forward pass per
//! query and head), and the greedy search behaves as defined.

use candle_core::{DType, Device};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::methods::engine::{Engine, EngineOptions};
use sahara::methods::sahara::{
    best_head, final_hidden, stack_rows, step_scores, LeftSubspace, SaharaOptions,
};
use sahara::model::ablation::{Op, Target};
use sahara::LoadedModel;

fn model(arch: &str) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_random_model(dir.path(), &RandomModel::tiny(arch)).unwrap();
    let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

fn opts(target: Target, op: Op, engine: Engine, rank: usize) -> SaharaOptions {
    SaharaOptions {
        ablation: sahara::model::ablation::Ablation { target, op },
        rank,
        steps: 2,
        engine: EngineOptions {
            kind: engine,
            batch_size: Some(5),
            ..Default::default()
        },
        chunk: None,
    }
}

#[test]
fn fast_and_naive_generalized_ships_agree_within_a_thousandth_of_a_degree() {
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|q| (0..(6 + q)).map(|i| 3 + (i * 7 + q * 11) % 40).collect())
        .collect();
    for arch in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"] {
        let (_d, m) = model(arch);
        let reference = LeftSubspace::of(&stack_rows(
            &final_hidden(&m.decoder, &prompts, &[]).unwrap(),
        ))
        .unwrap();
        for (target, op, rank) in [
            (Target::Q, Op::Scale(1e-5), 1),
            (Target::K, Op::Mean, 2),
            (Target::Z, Op::Scale(0.0), 1),
        ] {
            // Step 2 of a search: one head already selected.
            let selected = [(1, 2)];
            let naive = step_scores(
                &m.decoder,
                &prompts,
                &selected,
                &reference,
                &opts(target, op, Engine::Naive, rank),
                &mut |_| {},
            )
            .unwrap();
            let fast = step_scores(
                &m.decoder,
                &prompts,
                &selected,
                &reference,
                &opts(target, op, Engine::Fast, rank),
                &mut |_| {},
            )
            .unwrap();
            for (l, (rn, rf)) in naive.iter().zip(&fast).enumerate() {
                for (h, (a, b)) in rn.iter().zip(rf).enumerate() {
                    match (a, b) {
                        (Some(a), Some(b)) => assert!(
                            (a - b).abs() <= 1e-3,
                            "{arch} {target:?} {l}:{h}: {a} vs {b}"
                        ),
                        // The selected head (with k, its whole key/value group) is not a candidate.
                        (None, None) => assert!(
                            l == 1 && (h == 2 || (target == Target::K && h == 3)),
                            "{arch} {l}:{h} unscored"
                        ),
                        _ => panic!("{arch} {target:?} {l}:{h}: {a:?} vs {b:?}"),
                    }
                }
            }
            assert!(
                fast.iter().flatten().flatten().any(|&s| s > 0.1),
                "{arch} {target:?}: scores all ~0"
            );
        }
    }
}

#[test]
fn the_unmodified_model_scores_zero_and_selected_heads_are_excluded() {
    let (_d, m) = model("LlamaForCausalLM");
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|q| (0..7).map(|i| 3 + (i + q * 5) % 40).collect())
        .collect();
    let reference = LeftSubspace::of(&stack_rows(
        &final_hidden(&m.decoder, &prompts, &[]).unwrap(),
    ))
    .unwrap();
    // Scale by 1 changes nothing: every head scores ~0.
    let o = opts(Target::Q, Op::Scale(1.0), Engine::Fast, 1);
    let g = step_scores(&m.decoder, &prompts, &[(0, 0)], &reference, &o, &mut |_| {}).unwrap();
    assert_eq!(g[0][0], None);
    for s in g.iter().flatten().flatten() {
        assert!(s.abs() < 1e-3, "{s}");
    }
    let o = opts(Target::Q, Op::Scale(1e-5), Engine::Fast, 1);
    let g = step_scores(&m.decoder, &prompts, &[], &reference, &o, &mut |_| {}).unwrap();
    let (l, h, s) = best_head(&g).unwrap();
    assert!(g.iter().flatten().flatten().all(|&x| x <= s));
    assert_eq!(g[l][h], Some(s));
}

#[test]
fn too_few_queries_or_a_bad_rank_or_step_count_are_refused() {
    let (_d, m) = model("LlamaForCausalLM");
    let o = opts(Target::Q, Op::Scale(1e-5), Engine::Fast, 1);
    assert!(o
        .validate(m.cfg(), 1)
        .unwrap_err()
        .to_string()
        .contains("at least 2 queries"));
    let mut r = o.clone();
    r.rank = 6;
    assert!(matches!(
        r.validate(m.cfg(), 5),
        Err(sahara::Error::OutOfRange { setting: sahara::error::Setting::Rank, ref value, .. }) if value == "6"
    ));
    let mut s = o.clone();
    s.steps = 13;
    assert!(matches!(
        s.validate(m.cfg(), 5),
        Err(sahara::Error::OutOfRange { setting: sahara::error::Setting::Steps, ref value, .. }) if value == "13"
    ));
}

#[test]
fn a_step_held_in_small_windows_of_candidates_equals_one_held_whole() {
    use sahara::methods::sahara::window_size;
    let (_d, m) = model("LlamaForCausalLM");
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|q| (0..(5 + q)).map(|i| 3 + (i * 5 + q * 13) % 40).collect())
        .collect();
    let reference = LeftSubspace::of(&stack_rows(
        &final_hidden(&m.decoder, &prompts, &[]).unwrap(),
    ))
    .unwrap();
    let whole = opts(Target::Q, Op::Scale(1e-5), Engine::Fast, 2);
    let mut small = whole.clone();
    // Room for the final states of 3 candidates: N × d f32 values each.
    small.engine.memory_budget = 3 * prompts.len() * m.cfg().hidden_size * 4;
    let heads = m.cfg().num_layers * m.cfg().num_heads;
    assert_eq!(
        window_size(&small.engine, prompts.len(), m.cfg().hidden_size),
        3
    );
    assert!(window_size(&whole.engine, prompts.len(), m.cfg().hidden_size) >= heads);
    let mut seen = Vec::new();
    let a = step_scores(&m.decoder, &prompts, &[], &reference, &whole, &mut |_| {}).unwrap();
    let b = step_scores(&m.decoder, &prompts, &[], &reference, &small, &mut |n| {
        seen.push(n)
    })
    .unwrap();
    // Each window is its own batch of the same rows: the same scores to rounding.
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert!((x - y).abs() <= 1e-9, "{x} vs {y}");
        }
    }
    // Progress counts (query, candidate) runs, never backwards, to the end.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&(heads * prompts.len())));
}
