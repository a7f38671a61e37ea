//! Mixtures of experts beyond the fixtures' own checks (tests/fixtures.rs runs them against
//! transformers): what is refused, and how.

use std::path::PathBuf;

use candle_core::{DType, Device};
use sahara::checkpoint::safetensors::{write_f32_safetensors, Weights};
use sahara::LoadedModel;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

#[test]
fn fused_three_dimensional_experts_are_refused_with_how_to_save_them() {
    // qwen3_moe with one more tensor in transformers' fused layout.
    let src = fixture("qwen3_moe");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let w = Weights::open_dir(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for f in &w.files {
        for (name, info) in &f.tensors {
            tensors.push((name.clone(), info.shape.clone(), f.bytes(info).to_vec()));
        }
    }
    tensors.push((
        "model.layers.1.mlp.experts.gate_up_proj".into(),
        vec![1, 2],
        [0f32, 0.].iter().flat_map(|x| x.to_le_bytes()).collect(),
    ));
    write_f32_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let e = LoadedModel::load(tmp.path().to_str().unwrap(), DType::F32, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("fused") && e.contains("save_original_format=True"),
        "{e}"
    );
}

#[test]
fn an_olmoe_config_with_clamped_projections_is_refused() {
    let src = fixture("olmoe");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["clip_qkv"] = serde_json::json!(8.0);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = sahara::model::config::ModelConfig::from_file(&tmp.path().join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip_qkv"), "{e}");
}

#[test]
fn the_parameter_count_is_the_number_of_stored_values_of_every_float_fixture() {
    // The memory plan counts parameters from the configuration: biases, sinks and every
    // expert included (MXFP4 fixtures store packed bytes and are left out).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut checked = Vec::new();
    for dir in sahara::selftest::fixture_dirs(&root).unwrap() {
        let cfg = sahara::model::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let w = Weights::open_dir(&dir).unwrap();
        let mut stored = 0usize;
        let mut packed = false;
        for f in &w.files {
            for (name, info) in &f.tensors {
                packed |= name.ends_with("_blocks");
                stored += info.shape.iter().product::<usize>();
            }
        }
        // A tied head is the embedding itself, stored once.
        if packed {
            continue;
        }
        assert_eq!(cfg.num_parameters(), stored, "{}", dir.display());
        checked.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert!(checked.iter().any(|n| n == "gpt_oss"), "{checked:?}");
    assert!(checked.len() >= 10, "{checked:?}");
}

#[test]
fn the_activation_estimate_counts_each_tokens_k_experts() {
    use sahara::methods::engine::feed_forward_width;
    use sahara::model::config::ModelConfig;
    let cfg = |name: &str| ModelConfig::from_file(&fixture(name).join("config.json")).unwrap();
    // GPT-OSS: top 2 of 4 experts of 64, hidden 64, every layer sparse.
    let g = cfg("gpt_oss");
    assert_eq!(feed_forward_width(&g), 2 * (3 * 64 + 2 * 64) + 4);
    // A dense model: gate, up and their product.
    let l = cfg("llama_gqa");
    assert_eq!(feed_forward_width(&l), 3 * l.intermediate_size);
    // Qwen2-MoE's shared expert counts beside the routed ones.
    let q = cfg("qwen2_moe");
    let m = q.moe.as_ref().unwrap();
    let shared = 3 * m.shared_intermediate_size.unwrap();
    assert!(feed_forward_width(&q) >= shared + m.top_k * 3 * m.expert_intermediate_size);
}
