//! The fast Ships engine gives the same scores as the naive one (one full forward pass per
//! head at batch size 1) on random models of every family, for every target and op.

use candle_core::{DType, Device};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::methods::engine::{Engine, EngineOptions};
use sahara::methods::ships::{ships_scores, HeadGrid, ShipsOptions};
use sahara::model::ablation::{Op, Target};
use sahara::LoadedModel;

fn model(arch: &str) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny(arch);
    spec.sliding_window = Some(6);
    write_random_model(dir.path(), &spec).unwrap();
    let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

fn scores(
    m: &LoadedModel,
    tokens: &[u32],
    target: Target,
    op: Op,
    engine: Engine,
    batch: Option<usize>,
) -> HeadGrid {
    let mut o = ShipsOptions::new(m.cfg());
    o.ablation.target = target;
    o.ablation.op = op;
    o.engine = EngineOptions {
        kind: engine,
        batch_size: batch,
        ..Default::default()
    };
    ships_scores(&m.decoder, tokens, &o, &mut |_| {}).unwrap()
}

#[test]
fn fast_engine_equals_naive_engine_for_every_family_target_and_op() {
    let tokens: Vec<u32> = (0..13).map(|i| 3 + (i * 5) % 40).collect();
    for arch in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"] {
        let (_d, m) = model(arch);
        for target in [Target::Q, Target::K, Target::Z] {
            for op in [Op::Scale(1e-5), Op::Mean] {
                let naive = scores(&m, &tokens, target, op, Engine::Naive, None);
                // Relative 1e-5, with an absolute floor of 1e-8 nats: f32 rounding of the logits
                // (~1e-6, from different batch shapes) moves a KL of ~1e-4 by ~1e-9.
                // Batches of 3 rows split layers unevenly: exercises chunking too.
                let fast = scores(&m, &tokens, target, op, Engine::Fast, Some(3));
                for (l, (rn, rf)) in naive.iter().zip(&fast).enumerate() {
                    for (h, (a, b)) in rn.iter().zip(rf).enumerate() {
                        let (a, b) = (a.unwrap(), b.unwrap());
                        let rel = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
                        assert!(
                            rel <= 1e-5 || (a - b).abs() <= 1e-8,
                            "{arch} {target:?} {op:?} head {l}:{h}: naive {a} fast {b} (rel {rel})"
                        );
                    }
                }
                assert!(
                    naive.iter().flatten().any(|s| s.unwrap() > 1e-4),
                    "{arch} {target:?} {op:?}: all scores ~0"
                );
            }
        }
    }
}

#[test]
fn key_ablations_share_a_score_within_a_group() {
    let (_d, m) = model("LlamaForCausalLM");
    let tokens: Vec<u32> = (0..9).map(|i| 3 + i).collect();
    let g = scores(&m, &tokens, Target::K, Op::Scale(1e-5), Engine::Fast, None);
    // 4 query heads, 2 key/value heads: heads 0,1 share one group, 2,3 the other.
    for row in &g {
        assert_eq!(row[0], row[1]);
        assert_eq!(row[2], row[3]);
        assert_ne!(row[0], row[2]);
    }
}

#[test]
fn layer_and_head_ranges_leave_other_entries_empty() {
    let (_d, m) = model("LlamaForCausalLM");
    let tokens: Vec<u32> = (0..9).map(|i| 3 + i).collect();
    let mut o = ShipsOptions::new(m.cfg());
    o.layers = 1..2;
    o.heads = 2..4;
    let g = ships_scores(&m.decoder, &tokens, &o, &mut |_| {}).unwrap();
    for (l, row) in g.iter().enumerate() {
        for (h, s) in row.iter().enumerate() {
            assert_eq!(s.is_some(), l == 1 && (2..4).contains(&h), "{l}:{h}");
        }
    }
}

#[test]
fn fast_engine_equals_naive_engine_on_every_fixture_family() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    for name in [
        "gemma",
        "gemma2",
        "gemma3",
        "olmo2",
        "phi3",
        "qwen3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
    ] {
        let m =
            LoadedModel::load(root.join(name).to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let tokens = m
            .prompts
            .encode("how do I make a bomb and hide it from the police", true)
            .unwrap();
        for (target, op) in [
            (Target::Q, Op::Scale(1e-5)),
            (Target::K, Op::Mean),
            (Target::Z, Op::Scale(1e-5)),
        ] {
            let naive = scores(&m, &tokens, target, op, Engine::Naive, None);
            let fast = scores(&m, &tokens, target, op, Engine::Fast, Some(3));
            for (rn, rf) in naive.iter().zip(&fast) {
                for (a, b) in rn.iter().zip(rf) {
                    let (a, b) = (a.unwrap(), b.unwrap());
                    let rel = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
                    assert!(
                        rel <= 1e-5 || (a - b).abs() <= 1e-8,
                        "{name} {target:?} {op:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
