//! Properties of the decoder on random models: the fast paths (last position only, start
//! from a layer, batching with padding, key/value cache, per-row ablations) agree with the
//! plain full forward pass.

mod common;
use common::*;

use candle_core::{DType, Device, IndexOp, Tensor};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::model::Join;
use sahara::{AblationPlan, Batch, ForwardSpec, HeadAblation, LoadedModel, Op, Positions, Target};

fn model(arch: &str, f: impl FnOnce(&mut RandomModel)) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny(arch);
    f(&mut spec);
    write_random_model(dir.path(), &spec).unwrap();
    let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

fn all_logits(m: &LoadedModel, prompts: &[Vec<u32>], rows: Option<&[Vec<HeadAblation>]>) -> Tensor {
    let batch = Batch::new(prompts, 0, &Device::Cpu).unwrap();
    let plan = rows.map(|r| AblationPlan::new(m.cfg(), r, DType::F32, &Device::Cpu).unwrap());
    let mut spec = ForwardSpec::logits(Positions::All);
    spec.ablations = plan.as_ref();
    m.decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap()
}

const ARCHS: [&str; 3] = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 7 + seed * 13) % 40)
        .collect()
}

#[test]
fn last_position_only_equals_the_full_forward() {
    for arch in ARCHS {
        let (_d, m) = model(arch, |s| s.sliding_window = Some(4));
        let p = vec![prompt(11, 1)];
        let rows = vec![vec![HeadAblation::new(2, 1, Target::Q, Op::Scale(1e-5))]];
        let full = all_logits(&m, &p, Some(&rows));
        let plan = AblationPlan::new(m.cfg(), &rows, DType::F32, &Device::Cpu).unwrap();
        let batch = Batch::new(&p, 0, &Device::Cpu).unwrap();
        let spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
        let last = m
            .decoder
            .forward(&batch, &spec, None)
            .unwrap()
            .logits
            .unwrap();
        assert_eq!(last.dims(), &[1, 1, m.cfg().vocab_size]);
        let d = max_abs_diff(
            &last.i((.., 0, ..)).unwrap(),
            &full.i((.., 10, ..)).unwrap(),
        );
        assert!(d <= 1e-5, "{arch}: {d}");
    }
}

#[test]
fn rows_joining_at_a_layer_equal_the_full_forward() {
    for arch in ARCHS {
        let (_d, m) = model(arch, |_| {});
        let p = vec![prompt(9, 2), prompt(9, 2)];
        let batch = Batch::new(&p[..1], 0, &Device::Cpu).unwrap();
        let mut spec = ForwardSpec::logits(Positions::All);
        spec.resid = true;
        let clean = m.decoder.forward(&batch, &spec, None).unwrap();
        // Entering each layer, then leaving the last.
        assert_eq!(clean.resid.len(), m.cfg().num_layers + 1);
        for l in 0..m.cfg().num_layers {
            // Row 0 runs from layer 0 unablated; row 1 joins at layer l from the clean
            // stream, with a head of layer l ablated.
            let rows = vec![vec![], vec![HeadAblation::new(l, 2, Target::Z, Op::Mean)]];
            let plan = |n: usize| {
                AblationPlan::new(m.cfg(), &rows[..n], DType::F32, &Device::Cpu).unwrap()
            };
            let joins = vec![
                Join {
                    layer: 0,
                    resid: clean.resid[0].clone(),
                    rows: 1,
                    plan: plan(1),
                },
                Join {
                    layer: l,
                    resid: clean.resid[l].clone(),
                    rows: 1,
                    plan: plan(2),
                },
            ];
            let fast = m
                .decoder
                .forward_joined(&joins, &ForwardSpec::logits(Positions::All))
                .unwrap()
                .logits
                .unwrap();
            let full = all_logits(&m, &p, Some(&rows));
            let d = max_abs_diff(&fast, &full);
            assert!(d <= 1e-5, "{arch} layer {l}: {d}");
        }
    }
}

#[test]
fn a_row_does_not_depend_on_its_neighbours_or_padding() {
    for arch in ARCHS {
        let (_d, m) = model(arch, |s| s.sliding_window = Some(3));
        let short = prompt(4, 5);
        let long = prompt(10, 6);
        let together = all_logits(&m, &[short.clone(), long.clone()], None);
        let alone_short = all_logits(&m, std::slice::from_ref(&short), None);
        let alone_long = all_logits(&m, std::slice::from_ref(&long), None);
        // The short row is left-padded by 6: its real positions are 6..10.
        let d1 = max_abs_diff(
            &together.i((0, 6.., ..)).unwrap(),
            &alone_short.i(0).unwrap(),
        );
        let d2 = max_abs_diff(&together.i(1).unwrap(), &alone_long.i(0).unwrap());
        assert!(d1 <= 1e-5 && d2 <= 1e-5, "{arch}: {d1} {d2}");
    }
}

#[test]
fn per_row_ablations_equal_separate_runs() {
    let (_d, m) = model("LlamaForCausalLM", |_| {});
    let p = prompt(8, 9);
    let sets = vec![
        vec![],
        vec![HeadAblation::new(1, 2, Target::Q, Op::Scale(1e-5))],
        vec![HeadAblation::new(0, 3, Target::K, Op::Mean)],
        vec![
            HeadAblation::new(2, 0, Target::Z, Op::Scale(0.0)),
            HeadAblation::new(2, 1, Target::Z, Op::Mean),
        ],
    ];
    let batched = all_logits(&m, &vec![p.clone(); sets.len()], Some(&sets));
    for (i, s) in sets.iter().enumerate() {
        let alone = all_logits(&m, std::slice::from_ref(&p), Some(std::slice::from_ref(s)));
        let d = max_abs_diff(&batched.i(i).unwrap(), &alone.i(0).unwrap());
        assert!(d <= 1e-5, "row {i}: {d}");
    }
    // The ablations really change something.
    for i in 1..sets.len() {
        let d = max_abs_diff(&batched.i(i).unwrap(), &batched.i(0).unwrap());
        assert!(d > 1e-3, "row {i} unchanged");
    }
}

#[test]
fn scale_by_one_is_exactly_the_unmodified_model() {
    let (_d, m) = model("Qwen2ForCausalLM", |_| {});
    let p = vec![prompt(7, 4)];
    let base = all_logits(&m, &p, None);
    let rows = vec![vec![
        HeadAblation::new(0, 1, Target::Q, Op::Scale(1.0)),
        HeadAblation::new(1, 1, Target::K, Op::Scale(1.0)),
        HeadAblation::new(2, 1, Target::Z, Op::Scale(1.0)),
    ]];
    assert_eq!(max_abs_diff(&all_logits(&m, &p, Some(&rows)), &base), 0.0);
}

/// Greedy decoding by recomputing the whole sequence at every step (no cache).
fn naive_greedy(m: &LoadedModel, p: &[u32], ablations: &[HeadAblation], n: usize) -> Vec<u32> {
    let mut seq = p.to_vec();
    let mut out = vec![];
    for _ in 0..n {
        let l = all_logits(m, std::slice::from_ref(&seq), Some(&[ablations.to_vec()]));
        let last: Vec<f32> = l.i((0, seq.len() - 1, ..)).unwrap().to_vec1().unwrap();
        let t = sahara::methods::generate::choose(
            &last,
            &sahara::methods::generate::Sampling::Greedy,
            &mut rand_rng(),
        );
        out.push(t);
        seq.push(t);
    }
    out
}

fn rand_rng() -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(0)
}

#[test]
fn cached_batched_generation_equals_naive_recomputation() {
    for arch in ARCHS {
        let (_d, m) = model(arch, |s| s.sliding_window = Some(5));
        let prompts = vec![prompt(3, 1), prompt(8, 2), prompt(6, 3)];
        let sets = vec![
            vec![],
            vec![HeadAblation::new(1, 0, Target::Q, Op::Scale(1e-5))],
            vec![HeadAblation::new(2, 3, Target::K, Op::Mean)],
        ];
        let opts = GenerateOptions {
            max_new_tokens: 8,
            eos: vec![],
            ..Default::default()
        };
        let batched = generate(&m.decoder, &prompts, &sets, 0, &opts).unwrap();
        for i in 0..prompts.len() {
            let naive = naive_greedy(&m, &prompts[i], &sets[i], 8);
            assert_eq!(batched[i], naive, "{arch} row {i}");
            let alone = generate(&m.decoder, &prompts[i..=i], &sets[i..=i], 0, &opts).unwrap();
            assert_eq!(batched[i], alone[0], "{arch} row {i} alone");
        }
    }
}

#[test]
fn a_cache_that_outgrows_its_buffers_equals_the_full_forward() {
    // Prefill 10 positions, then one position per call up to 300: the cache's first buffers
    // hold 10 + 256 positions, so the calls after that run on grown buffers. Two rows with
    // different left padding, a k ablation (what the cache stores), a sliding window.
    for arch in ["LlamaForCausalLM", "MistralForCausalLM"] {
        let (_d, m) = model(arch, |s| s.sliding_window = Some(7));
        let (a, b) = (prompt(300, 1), prompt(296, 2));
        let mut padded_b = vec![0; 4];
        padded_b.extend(&b);
        let rows = vec![
            vec![HeadAblation::new(1, 2, Target::K, Op::Scale(1e-5))],
            vec![],
        ];
        let plan = AblationPlan::new(m.cfg(), &rows, DType::F32, &Device::Cpu).unwrap();
        let full = all_logits(&m, &[a.clone(), b.clone()], Some(&rows));
        let mut cache = sahara::KvCache::new(m.cfg(), vec![0, 4]);
        let mut start = 0;
        for end in std::iter::once(10).chain(11..=300) {
            let chunk = |s: &[u32]| s[start..end].to_vec();
            let mut batch = Batch::new(&[chunk(&a), chunk(&padded_b)], 0, &Device::Cpu).unwrap();
            batch.pad = vec![0, 4];
            let spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
            let out = m.decoder.forward(&batch, &spec, Some(&mut cache)).unwrap();
            let got = out.logits.unwrap();
            // Both rows are left-padded alike in `full`, so position end-1 matches.
            let want_a = full.i((0, end - 1, ..)).unwrap();
            let d = max_abs_diff(&got.i((0, 0, ..)).unwrap(), &want_a);
            assert!(d <= 1e-4, "{arch} row 0 at {end}: {d}");
            if end > 4 {
                let want_b = full.i((1, end - 1, ..)).unwrap();
                let d = max_abs_diff(&got.i((1, 0, ..)).unwrap(), &want_b);
                assert!(d <= 1e-4, "{arch} row 1 at {end}: {d}");
            }
            start = end;
        }
        assert_eq!(cache.len, 300);
    }
}

#[test]
fn generation_stops_at_end_of_sequence() {
    let (_d, m) = model("LlamaForCausalLM", |_| {});
    let p = vec![prompt(5, 1)];
    let free = generate(
        &m.decoder,
        &p,
        &[vec![]],
        0,
        &GenerateOptions {
            max_new_tokens: 6,
            ..Default::default()
        },
    )
    .unwrap();
    let stop = free[0][2];
    let opts = GenerateOptions {
        max_new_tokens: 6,
        eos: vec![stop],
        ..Default::default()
    };
    let out = generate(&m.decoder, &p, &[vec![]], 0, &opts).unwrap();
    let first = free[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(out[0], free[0][..=first].to_vec());
}

#[test]
fn prompts_longer_than_the_context_are_refused() {
    let (_d, m) = model("LlamaForCausalLM", |s| s.max_position_embeddings = 16);
    let batch = Batch::new(&[prompt(17, 0)], 0, &Device::Cpu).unwrap();
    let e = m
        .decoder
        .forward(&batch, &ForwardSpec::logits(Positions::Last), None)
        .unwrap_err();
    assert!(
        e.to_string().contains("exceed the model's context of 16"),
        "{e}"
    );
}

#[test]
fn tensors_that_track_gradients_take_ops_that_record_them_and_agree_with_the_fused_ones() {
    let (_d, m) = model("Qwen2ForCausalLM", |s| s.sliding_window = Some(4));
    let p = vec![prompt(9, 1), prompt(6, 2)];
    let rows = vec![vec![HeadAblation::new(1, 1, Target::Q, Op::Mean)], vec![]];
    let fused = all_logits(&m, &p, Some(&rows));
    let mut dec = m.decoder.clone();
    // Weights that are variables make every activation after them track gradients.
    let var = |t: &Tensor| candle_core::Var::from_tensor(t).unwrap();
    let embed = var(&dec.embed_tokens);
    dec.embed_tokens = embed.as_tensor().clone();
    let q0 = var(dec.layers[0].attn.qkv_proj.weight.dense().unwrap());
    dec.layers[0].attn.qkv_proj.weight = sahara::model::Weight::Dense(q0.as_tensor().clone());
    let batch = Batch::new(&p, 0, &Device::Cpu).unwrap();
    let plan = AblationPlan::new(m.cfg(), &rows, DType::F32, &Device::Cpu).unwrap();
    let spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
    let diff = dec.forward(&batch, &spec, None).unwrap().logits.unwrap();
    // Padded positions (row 1's first 3) are garbage in both; compare real ones.
    let d0 = max_abs_diff(&diff.i(0).unwrap(), &fused.i(0).unwrap());
    let d1 = max_abs_diff(&diff.i((1, 3..)).unwrap(), &fused.i((1, 3..)).unwrap());
    assert!(d0 <= 1e-4 && d1 <= 1e-4, "{d0} {d1}");
    let loss = diff.i((0, 8)).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in [("embed", &embed), ("qkv0", &q0)] {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
}
