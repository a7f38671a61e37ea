//! A decoder split over several devices (`--device cuda:0,cuda:1,…`), run on the CPU with a
//! device list whose entries are all `cpu`: the same code path as GPUs (a part per entry, the
//! residual stream and the rotary tables copied at each boundary, each layer's ablation maps
//! and key/value cache on its part), with every copy counted. Its results equal the one-device
//! decoder's bit for bit, for a forward pass, the variant engine's joined batches and
//! generation with a key/value cache.

use candle_core::{DType, Device};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::device::transfers;
use sahara::methods::generate::{generate, GenerateOptions, Sampling};
use sahara::methods::ships::{ships_scores, ShipsOptions};
use sahara::model::ablation::{HeadAblation, Op, Target};
use sahara::model::{Batch, ForwardSpec, Positions};
use sahara::{LoadOptions, LoadedModel};

const LAYERS: usize = 6;
const PROMPT: [u32; 7] = [3, 17, 5, 9, 2, 40, 11];

fn models(parts: usize) -> (tempfile::TempDir, LoadedModel, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny("LlamaForCausalLM");
    spec.num_layers = LAYERS;
    write_random_model(dir.path(), &spec).unwrap();
    let path = dir.path().to_str().unwrap();
    let one = LoadedModel::load(path, DType::F32, &Device::Cpu).unwrap();
    let split = LoadedModel::load_on(
        path,
        DType::F32,
        &vec![Device::Cpu; parts],
        LoadOptions::default(),
    )
    .unwrap();
    (dir, one, split)
}

fn ablations() -> Vec<HeadAblation> {
    vec![
        HeadAblation {
            layer: 1,
            head: 0,
            target: Target::Q,
            op: Op::Scale(0.0),
        },
        HeadAblation {
            layer: 4,
            head: 2,
            target: Target::K,
            op: Op::Mean,
        },
    ]
}

#[test]
fn cpu_device_lists_place_layers_evenly_with_the_head_on_the_last_part() {
    for parts in [1, 2, 3, 4] {
        let (_d, _, m) = models(parts);
        let p = &m.decoder.placement;
        assert_eq!(p.devices.len(), parts);
        let ranges = p.ranges();
        assert_eq!(ranges.len(), parts);
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), LAYERS);
        let (lo, hi) = (
            ranges.iter().map(|r| r.len()).min().unwrap(),
            ranges.iter().map(|r| r.len()).max().unwrap(),
        );
        assert!(hi - lo <= 1, "{parts} parts: {ranges:?}");
        assert_eq!(p.head_part(), parts - 1);
        assert_eq!(p.is_split(), parts > 1);
        assert_eq!(p.name(), vec!["cpu"; parts].join(","));
    }
}

#[test]
fn a_split_forward_pass_equals_the_single_device_one_and_copies_only_at_boundaries() {
    for parts in [2, 3] {
        let (_d, one, split) = models(parts);
        let rows = vec![vec![], ablations()];
        let prompts = vec![PROMPT.to_vec(), PROMPT[..5].to_vec()];
        let logits = |m: &LoadedModel| {
            let batch = Batch::new(&prompts, 0, &m.decoder.device).unwrap();
            let plan = m.decoder.ablation_plan(&rows).unwrap();
            let spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
            let before = transfers::counts();
            let out = m.decoder.forward(&batch, &spec, None).unwrap();
            let moved = transfers::counts() - before;
            let v: Vec<f32> = out
                .logits
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (v, moved)
        };
        let (a, c1) = logits(&one);
        let (b, c2) = logits(&split);
        assert!(a == b, "{parts} parts: logits differ");
        assert_eq!(c1.between, 0);
        // At each of the parts − 1 boundaries: the residual stream, cos and sin.
        assert_eq!(c2.between, 3 * (parts as u64 - 1), "{parts} parts");
        // The ablation plan is one upload per part that has maps (layers 1 and 4).
        let before = transfers::counts();
        let plan = split.decoder.ablation_plan(&rows).unwrap();
        let parts_with_maps = [1, 4]
            .iter()
            .map(|&l| split.decoder.placement.part(l))
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        assert_eq!((transfers::counts() - before).to_device, parts_with_maps);
        assert_eq!(plan.rows, 2);
    }
}

#[test]
fn the_variant_engine_and_generation_on_a_split_decoder_equal_the_single_device_ones() {
    let (_d, one, split) = models(3);
    // Ships: variants join the batch at their first ablated layer, on that layer's part.
    let opts = ShipsOptions::new(one.cfg());
    let a = ships_scores(&one.decoder, &PROMPT, &opts, &mut |_| {}).unwrap();
    let b = ships_scores(&split.decoder, &PROMPT, &opts, &mut |_| {}).unwrap();
    assert_eq!(a, b);
    // Generation: each layer's key/value cache on its part.
    let g = GenerateOptions {
        max_new_tokens: 6,
        sampling: Sampling::Greedy,
        seed: 0,
        eos: vec![],
        simulate_oom_above: None,
    };
    let prompts = vec![PROMPT.to_vec(), PROMPT[2..].to_vec()];
    let abl = vec![ablations(), vec![]];
    let x = generate(&one.decoder, &prompts, &abl, 0, &g).unwrap();
    let y = generate(&split.decoder, &prompts, &abl, 0, &g).unwrap();
    assert_eq!(x, y);
}
