//! LoRA adapters merged at load against PEFT's own merge (`fixtures/lora`, made by
//! `python3 scripts/make_fixtures.py lora` on the tiny Llama of `fixtures/llama3`), and the
//! adapters sahara refuses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::{Batch, ForwardSpec, LoadOptions, LoadedModel, Positions};

mod common;
use common::max_abs_diff as max_diff;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(base: &Path, adapter: Option<&Path>) -> sahara::Result<LoadedModel> {
    LoadedModel::load_with(
        base.to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
        LoadOptions {
            adapter: adapter.map(Path::to_path_buf),
            ..Default::default()
        },
    )
}

fn logits(m: &LoadedModel, ids: &[u32]) -> Tensor {
    let batch = Batch::new(&[ids.to_vec()], 0, &Device::Cpu).unwrap();
    m.decoder
        .forward(&batch, &ForwardSpec::logits(Positions::All), None)
        .unwrap()
        .logits
        .unwrap()
        .i(0)
        .unwrap()
}

#[test]
fn adapters_merge_as_pefts_merge_and_unload() {
    let dir = fixtures().join("lora");
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(meta["prompts"].clone()).unwrap();
    let base = fixtures().join("llama3");
    let plain = load(&base, None).unwrap();
    for name in ["qv", "all_rslora"] {
        let m = load(&base, Some(&dir.join(name))).unwrap();
        let info = m.adapter.as_ref().unwrap();
        assert!(!info.targets.is_empty());
        for (j, ids) in prompts.iter().enumerate() {
            let want = &reference[&format!("{name}.p{j}")];
            let got = logits(&m, ids);
            let d = max_diff(&got, want);
            eprintln!(
                "{name}, prompt {j}: max |Δlogit| {d:.2e} against PEFT, {:.2e} from the base",
                max_diff(&logits(&plain, ids), want)
            );
            assert!(d <= 1e-4, "{name}, prompt {j}: max |Δlogit| {d}");
            // The fixture's own check: PEFT's merged and unmerged models agree.
            let unmerged = &reference[&format!("{name}.unmerged.p{j}")];
            assert!(max_diff(want, unmerged) <= 1e-4);
            // And the adapter changes the model.
            let moved = max_diff(&logits(&plain, ids), want);
            assert!(moved > 1e-2, "{name} moves the logits by only {moved}");
        }
        // The fingerprint run records hold names the adapter.
        assert!(m.fingerprint().unwrap().contains("+lora:"));
        assert_ne!(m.fingerprint().unwrap(), plain.fingerprint().unwrap());
    }
}

/// A copy of the `qv` adapter with its configuration edited by `edit`.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixtures().join("lora/qv");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    dir
}

/// An edit of an adapter configuration.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn adapters_sahara_cannot_merge_exactly_are_refused_with_the_setting_named() {
    let base = fixtures().join("llama3");
    let cases: Vec<(&str, Edit)> = vec![
        ("use_dora", Box::new(|c| c["use_dora"] = true.into())),
        (
            "rank_pattern",
            Box::new(|c| c["rank_pattern"] = serde_json::json!({"q_proj": 2})),
        ),
        (
            "alpha_pattern",
            Box::new(|c| c["alpha_pattern"] = serde_json::json!({"q_proj": 2})),
        ),
        ("bias", Box::new(|c| c["bias"] = "all".into())),
        ("lora_bias", Box::new(|c| c["lora_bias"] = true.into())),
        (
            "modules_to_save",
            Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
        ),
        (
            "regular expression",
            Box::new(|c| c["target_modules"] = ".*proj".into()),
        ),
        ("only LORA", Box::new(|c| c["peft_type"] = "IA3".into())),
        (
            "target_modules does not list",
            Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj"])),
        ),
        (
            "init_lora_weights",
            Box::new(|c| c["init_lora_weights"] = "pissa".into()),
        ),
        (
            "corda_config",
            Box::new(|c| c["corda_config"] = serde_json::json!({"cache_file": "x"})),
        ),
        (
            "layers_to_transform leaves out",
            Box::new(|c| c["layers_to_transform"] = serde_json::json!([1])),
        ),
    ];
    for (needle, edit) in cases {
        let dir = edited(edit);
        let e = load(&base, Some(dir.path()))
            .err()
            .expect(needle)
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // PEFT's suffix form of a target name is read as PEFT reads it.
    let dir = edited(|c| {
        c["target_modules"] = serde_json::json!(["self_attn.q_proj", "self_attn.v_proj"])
    });
    assert!(load(&base, Some(dir.path())).is_ok());
    // fan_in_fan_out is reset as PEFT resets it for nn.Linear, and said.
    let dir = edited(|c| c["fan_in_fan_out"] = true.into());
    let m = load(&base, Some(dir.path())).unwrap();
    assert!(m.adapter.unwrap().notes[0].contains("fan_in_fan_out"));
}

#[test]
fn an_adapter_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny("LlamaForCausalLM");
    spec.hidden_size = 48;
    write_random_model(dir.path(), &spec).unwrap();
    let e = load(dir.path(), Some(&fixtures().join("lora/qv")))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("is it an adapter of another model"), "{e}");
    // A folder without an adapter.
    let e = load(&fixtures().join("llama3"), Some(dir.path()))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

#[test]
fn a_bfloat16_base_merges_and_its_surgery_verifies() {
    // The llama3 fixture stored in bfloat16.
    let src = fixtures().join("llama3");
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let bf16: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&bf16, dir.path().join("model.safetensors")).unwrap();
    let adapter = fixtures().join("lora/all_rslora");
    let m = load(dir.path(), Some(&adapter)).unwrap();
    // Close to PEFT's float32 merge, within what bfloat16 weights allow.
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("lora/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lora/reference.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = serde_json::from_value(meta["prompts"][0].clone()).unwrap();
    let want = &reference["all_rslora.p0"];
    let d = max_diff(&logits(&m, &ids), want);
    // bfloat16 keeps about 3 significant digits of every merged weight: a few percent of the
    // largest logit.
    let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let rel = d / scale;
    eprintln!(
        "bfloat16 base: max |Δlogit| {d} against PEFT's float32 merge ({rel:.3} of the largest)"
    );
    assert!(
        rel < 0.05,
        "bfloat16 base: max |Δlogit| {d}, {rel} of the largest logit"
    );
    // Surgery writes the merged bfloat16 weights and verifies them against the in-memory
    // merge, which rounds to bfloat16 as the file does.
    let plan = sahara::checkpoint::surgery::SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(1, 2)]),
        ablation: sahara::model::ablation::Ablation::paper_default(),
    };
    let out = dir.path().join("out");
    let r = sahara::checkpoint::surgery::surgery_with_adapter(
        dir.path(),
        "bf16",
        &out,
        &plan,
        false,
        Some(&adapter),
    )
    .unwrap();
    assert!(
        r.verify_relative_difference < 1e-3,
        "{}",
        r.verify_relative_difference
    );
}
