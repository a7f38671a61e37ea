//! Mixtures of experts in GGUF, as llama.cpp writes them (fixtures/gguf_qwen3moe and
//! fixtures/gguf_mixtral, `python3 scripts/make_fixtures.py gguf_qwen3moe gguf_mixtral`): the
//! experts stacked in 3-D tensors (F32, F16 and Q8_0), Mixtral as `llama` with its q/k rows
//! permuted. The references are transformers' outputs on a Hugging Face model holding the
//! file's dequantized weights (for qwen3moe also transformers' own GGUF loader's).

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use sahara::{Batch, ForwardSpec, LoadedModel, Positions, Template};
use serde_json::Value as Json;

const FIXTURES: [(&str, &str); 2] = [
    ("gguf_qwen3moe", "Qwen3MoeForCausalLM"),
    ("gguf_mixtral", "MixtralForCausalLM"),
];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn reference(name: &str) -> (Json, std::collections::HashMap<String, Tensor>) {
    let d = dir(name);
    let json =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    (json, tensors)
}

fn load(name: &str, keep_quantized: bool) -> LoadedModel {
    LoadedModel::load_with(
        dir(name).join("model.gguf").to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
        sahara::LoadOptions {
            keep_quantized,
            ..Default::default()
        },
    )
    .unwrap()
}

fn logits(m: &LoadedModel, tokens: &[u32]) -> Tensor {
    let batch = Batch::new(&[tokens.to_vec()], 0, &Device::Cpu).unwrap();
    m.decoder
        .forward(&batch, &ForwardSpec::logits(Positions::All), None)
        .unwrap()
        .logits
        .unwrap()
        .i(0)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn gguf_experts_reproduce_transformers_logits_tokens_and_prompts() {
    for (name, class) in FIXTURES {
        let m = load(name, false);
        let (r, tensors) = reference(name);
        assert_eq!(m.cfg().architecture, class, "{name}");
        let moe = m.cfg().moe.as_ref().expect("experts");
        assert_eq!((moe.num_experts, moe.top_k), (4, 2), "{name}");
        assert!(
            moe.renormalize && moe.sparse_layers.iter().all(|s| *s),
            "{name}"
        );
        let prompts: Vec<Vec<u32>> = r["raw_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
            let got = m.prompts.encode(p.as_str().unwrap(), true).unwrap();
            assert_eq!(got, prompts[i], "{name} prompt {i}");
        }
        for (i, c) in r["chat"].as_array().unwrap().iter().enumerate() {
            let t = Template::chat(c["system"].as_str().map(String::from));
            let (text, tokens) = m
                .prompts
                .encode_query(&t, c["user"].as_str().unwrap())
                .unwrap();
            assert_eq!(text, c["rendered"].as_str().unwrap(), "{name} chat {i}");
            assert_eq!(tokens, ids(&c["token_ids"]), "{name} chat {i}");
        }
        let mut worst = 0f32;
        for (i, p) in prompts.iter().enumerate() {
            let d = max_abs_diff(&logits(&m, p), &tensors[&format!("logits.{i}")]);
            assert!(d <= 1e-4, "{name} prompt {i}: max |Δlogit| {d}");
            worst = worst.max(d);
        }
        for g in r["greedy"].as_array().unwrap() {
            let i = g["prompt_index"].as_u64().unwrap() as usize;
            let opts = sahara::methods::generate::GenerateOptions {
                max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
                eos: m.eos.clone(),
                ..Default::default()
            };
            let got = sahara::methods::generate::generate(
                &m.decoder,
                std::slice::from_ref(&prompts[i]),
                &[vec![]],
                0,
                &opts,
            )
            .unwrap();
            assert_eq!(got[0], ids(&g["new_tokens"]), "{name} greedy {i}");
        }
        eprintln!("{name}: max |Δlogit| = {worst:.2e}");
    }
}

#[test]
fn gguf_experts_kept_quantized_compute_close_to_the_dequantized_ones() {
    for (name, _) in FIXTURES {
        let (r, _) = reference(name);
        let prompt = ids(&r["raw_token_ids"][0]);
        let dense = logits(&load(name, false), &prompt);
        let kept = load(name, true);
        assert!(kept.decoder.has_quantized_weights(), "{name}");
        let d = max_abs_diff(&logits(&kept, &prompt), &dense);
        let scale = dense
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The quantized product rounds activations to 8 bits as well.
        assert!(d <= 0.05 * scale, "{name}: {d} of {scale}");
    }
}

#[test]
fn a_gguf_mixture_of_experts_exports_per_expert_and_reloads_alike() {
    for (name, _) in FIXTURES {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("hf");
        std::fs::create_dir(&out).unwrap();
        let g = sahara::checkpoint::gguf::GgufFile::open(&dir(name).join("model.gguf")).unwrap();
        sahara::checkpoint::gguf::export::write_hf_folder(&g, &out, None).unwrap();
        let folder = LoadedModel::load(out.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let gguf = load(name, false);
        let w = sahara::checkpoint::safetensors::Weights::open_dir(&out).unwrap();
        // Every expert's projections, by the family's names.
        let expert = match name {
            "gguf_mixtral" => "model.layers.1.block_sparse_moe.experts.3.w2.weight",
            _ => "model.layers.2.mlp.experts.3.down_proj.weight",
        };
        assert!(w.contains(expert), "{name}: no {expert}");
        let (r, _) = reference(name);
        let prompt = ids(&r["raw_token_ids"][1]);
        let d = max_abs_diff(&logits(&folder, &prompt), &logits(&gguf, &prompt));
        assert!(d <= 1e-5, "{name}: {d}");
    }
}
