//! The hot paths' traffic between host and device, counted on the CPU
//! (`sahara::device::transfers`): a Ships sweep reads back one tensor of scores per batch and
//! nothing per head or per layer; a decoding step reads back one small tensor; uploads are a
//! few per forward pass, not one per layer. And the memory planner's other half: a batch the
//! device has no memory for is split, with the results of the whole.

use candle_core::{DType, Device};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::device::transfers;
use sahara::methods::engine::{run_kl, run_variants, Engine, EngineOptions, Output};
use sahara::methods::generate::{generate, GenerateOptions, Sampling};
use sahara::methods::metrics::Kl;
use sahara::methods::ships::{ships_scores, HeadGrid, ShipsOptions};
use sahara::model::ablation::{HeadAblation, Op, Target};
use sahara::{Error, LoadedModel};

/// A random Llama with more layers than the tiny one, so that a per-layer transfer shows.
fn model() -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny("LlamaForCausalLM");
    spec.num_layers = 8;
    write_random_model(dir.path(), &spec).unwrap();
    let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

const PROMPT: [u32; 7] = [3, 17, 5, 9, 2, 40, 11];

fn ships(m: &LoadedModel, batch: usize, oom_above: Option<usize>) -> (HeadGrid, transfers::Counts) {
    let mut o = ShipsOptions::new(m.cfg());
    o.engine = EngineOptions {
        kind: Engine::Fast,
        batch_size: Some(batch),
        simulate_oom_above: oom_above,
        ..Default::default()
    };
    let before = transfers::counts();
    let grid = ships_scores(&m.decoder, &PROMPT, &o, &mut |_| {}).unwrap();
    (grid, transfers::counts() - before)
}

#[test]
fn a_ships_sweep_reads_one_tensor_per_batch_and_nothing_per_head_or_layer() {
    let (_d, m) = model();
    let heads = m.cfg().num_layers * m.cfg().num_heads; // 32 variants
    for batch in [1, 5, 32] {
        let (_, c) = ships(&m, batch, None);
        let batches = heads.div_ceil(batch) as u64;
        // The scores of each batch; the base model's logits stay on the device.
        assert_eq!(c.to_host, batches, "batch size {batch}");
        // Per forward pass: the position table, one causal mask, and (for a batch) its
        // ablation plan; plus the prompt once. Not one per layer (8 here).
        assert!(
            c.to_device <= 1 + 2 + 3 * batches,
            "batch size {batch}: {} uploads for {batches} batches",
            c.to_device
        );
    }
}

#[test]
fn scores_computed_on_the_device_equal_the_host_kl_of_the_read_logits() {
    let (_d, m) = model();
    let variants: Vec<Vec<HeadAblation>> = (0..m.cfg().num_layers)
        .flat_map(|l| (0..m.cfg().num_heads).map(move |h| (l, h)))
        .map(|(l, h)| vec![HeadAblation::new(l, h, Target::Q, Op::Scale(1e-5))])
        .collect();
    let opts = EngineOptions::default();
    let out = run_variants(
        &m.decoder,
        &PROMPT,
        &[],
        &variants,
        Output::Logits,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    for kl in [Kl::Exact, Kl::Paper] {
        let scores = run_kl(&m.decoder, &PROMPT, &[], &variants, kl, &opts, &mut |_| {}).unwrap();
        for (v, s) in out.variants.iter().zip(&scores) {
            let host = kl.divergence(&out.base, v);
            // The exact KL works in f64; the paper's in f32, whose softmax sums the device
            // adds in another order (about 1e-7 of each probability, so of the KL's sum).
            let (abs, rel) = if kl == Kl::Exact {
                (1e-12, 1e-9)
            } else {
                (1e-6, 1e-5)
            };
            assert!(
                (host - s).abs() <= abs + rel * host.abs(),
                "{kl:?}: device {s} host {host}"
            );
        }
        assert!(
            scores.iter().any(|&s| s > 1e-6),
            "the scores are not all zero"
        );
    }
}

#[test]
fn a_batch_that_runs_out_of_memory_is_split_and_scores_the_same() {
    let (_d, m) = model();
    let (whole, c_whole) = ships(&m, 32, None);
    // Batches of more than 3 rows fail as out of memory: 32 -> 16 -> 8 -> 4 -> 3-row batches.
    let (split, c_split) = ships(&m, 32, Some(3));
    assert!(
        c_split.to_host > c_whole.to_host,
        "more, smaller batches ran"
    );
    for (a, b) in whole.iter().flatten().zip(split.iter().flatten()) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() <= 1e-9 + 1e-5 * a.abs(), "{a} vs {b}");
    }
    // Not even one row fits: one clear error.
    let mut o = ShipsOptions::new(m.cfg());
    o.engine.simulate_oom_above = Some(0);
    let e = ships_scores(&m.decoder, &PROMPT, &o, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { rows: 1, .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("cpu: out of memory with 1 row(s)"),
        "{e}"
    );
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        PROMPT.to_vec(),
        vec![8, 1, 30],
        vec![5, 6, 7, 8, 9, 10, 11, 12, 13],
        vec![100, 4],
    ]
}

#[test]
fn a_decoding_step_reads_one_small_tensor() {
    let (_d, m) = model();
    let ps = prompts();
    let abl = vec![
        vec![],
        vec![HeadAblation::new(2, 1, Target::Q, Op::Scale(0.0))],
        vec![],
        vec![],
    ];
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let before = transfers::counts();
    let out = generate(&m.decoder, &ps, &abl, 0, &opts).unwrap();
    let c = transfers::counts() - before;
    assert!(out.iter().all(|o| o.len() == 12));
    // One (rows, 3) read per step: greedy tokens, ties, finiteness (no tie in a random model).
    assert_eq!(c.to_host, 12);
    // Per step: the new tokens, positions and the padding mask; plus the prompts and the plan.
    assert!(c.to_device <= 2 + 3 * 12, "{} uploads", c.to_device);
    // Each row is what it is alone, where no other row can change it.
    for (i, p) in ps.iter().enumerate() {
        let alone = generate(&m.decoder, std::slice::from_ref(p), &abl[i..=i], 0, &opts).unwrap();
        assert_eq!(alone[0], out[i], "row {i}");
    }
}

#[test]
fn a_generation_batch_that_runs_out_of_memory_is_split_and_generates_the_same() {
    let (_d, m) = model();
    let ps = prompts();
    let abl = vec![vec![]; ps.len()];
    for sampling in [
        Sampling::Greedy,
        Sampling::Sample {
            temperature: 1.0,
            top_k: Some(20),
        },
    ] {
        let opts = GenerateOptions {
            max_new_tokens: 10,
            sampling: sampling.clone(),
            seed: 9,
            ..Default::default()
        };
        let whole = generate(&m.decoder, &ps, &abl, 0, &opts).unwrap();
        let split = generate(
            &m.decoder,
            &ps,
            &abl,
            0,
            &GenerateOptions {
                simulate_oom_above: Some(1),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(whole, split, "{sampling:?}");
    }
    let e = generate(
        &m.decoder,
        &ps,
        &abl,
        0,
        &GenerateOptions {
            simulate_oom_above: Some(0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { rows: 1, .. }), "{e}");
}
