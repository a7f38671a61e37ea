//! Exactness against transformers: the committed fixtures under `fixtures/` (written by
//! `scripts/make_fixtures.py`) hold tiny random models of every supported family with
//! reference logits, hidden states, ablated logits, greedy continuations, rendered chat
//! prompts and token ids. Tolerance: max |Δlogit| ≤ 1e-4 in f32. The comparisons of outputs
//! live in `sahara::selftest` (also run by `sahara selftest` on a GPU); this file adds the
//! tokenizer, chat-template and padded-batch checks.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use sahara::selftest::check_fixture;
use sahara::{Batch, ForwardSpec, LoadedModel, Positions, Template};
use serde_json::Value;

/// Every Hugging Face fixture folder with a reference (one per family and configuration;
/// the GGUF fixtures have their own tests).
fn families() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path().join("reference.json").exists() && e.path().join("config.json").exists()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "fixtures missing: {names:?}");
    names
}
const TOL: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

struct Fixture {
    model: LoadedModel,
    reference: Value,
    tensors: HashMap<String, Tensor>,
}

fn load(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let model = LoadedModel::load(dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Fixture {
        model,
        reference,
        tensors,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn raw_prompts(f: &Fixture) -> Vec<Vec<u32>> {
    f.reference["raw_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect()
}

#[test]
fn prompt_token_ids_match_transformers() {
    for name in families() {
        let name = name.as_str();
        let f = load(name);
        let prompts = f.reference["prompts"].as_array().unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let got = f.model.prompts.encode(p.as_str().unwrap(), true).unwrap();
            assert_eq!(
                got,
                ids(&f.reference["raw_token_ids"][i]),
                "{name} prompt {i}"
            );
        }
    }
}

#[test]
fn chat_templates_render_as_transformers_does() {
    for name in families() {
        let name = name.as_str();
        let f = load(name);
        // A template that writes the date (GPT-OSS) renders at the instant the fixture did.
        if let Some(now) = f.reference["template_now"].as_str() {
            f.model
                .prompts
                .chat_template()
                .unwrap()
                .pin_clock(unix_seconds(now));
        }
        for (i, case) in f.reference["chat"].as_array().unwrap().iter().enumerate() {
            let system = case["system"].as_str().map(String::from);
            let user = case["user"].as_str().unwrap();
            let t = Template::chat(system);
            if let Some(err) = case.get("error") {
                let e = f.model.prompts.encode_query(&t, user).unwrap_err();
                let msg = e.to_string();
                assert!(
                    msg.contains(err.as_str().unwrap()),
                    "{name} case {i}: {msg} vs {err}"
                );
                continue;
            }
            let (text, tokens) = f.model.prompts.encode_query(&t, user).unwrap();
            assert_eq!(text, case["rendered"].as_str().unwrap(), "{name} case {i}");
            assert_eq!(tokens, ids(&case["token_ids"]), "{name} case {i}");
        }
    }
}

/// Unix seconds of a `YYYY-MM-DDTHH:MM:SSZ` instant.
fn unix_seconds(iso: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| iso[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from 1970-01-01 to y-m-d (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[test]
fn unix_seconds_reads_an_instant() {
    assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), 0);
    assert_eq!(unix_seconds("2025-08-05T12:00:00Z"), 1_754_395_200);
    assert_eq!(unix_seconds("2000-03-01T00:00:01Z"), 951_868_801);
}

#[test]
fn every_fixture_passes_the_selftest_in_f32_and_bf16() {
    // Logits, hidden states, ablated logits, greedy tokens, and fast = naive engines: the
    // checks `sahara selftest` runs on a device (sahara::selftest is their one home).
    // A mixture of experts in 16 bits is checked by its engines' agreement only (its routing
    // may differ from float32's).
    for name in families() {
        let cfg =
            sahara::model::config::ModelConfig::from_file(&fixture_dir(&name).join("config.json"))
                .unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let checks = check_fixture(&fixture_dir(&name), dtype, &Device::Cpu).unwrap();
            if dtype == DType::BF16 && cfg.moe.is_some() {
                let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
                let want: &[&str] = match cfg.attention_sinks {
                    true => &[
                        "ships_fast_vs_naive",
                        "ships_fast_vs_naive_sink_drop",
                        "sahara_fast_vs_naive",
                    ],
                    false => &["ships_fast_vs_naive", "sahara_fast_vs_naive"],
                };
                assert_eq!(names, want, "{name}");
            } else {
                assert!(checks.len() >= 5, "{name}: {checks:?}");
            }
            for c in &checks {
                assert!(c.passed, "{name} {dtype:?}: {c:?}");
            }
            let worst = checks
                .iter()
                .filter(|c| c.check != "greedy")
                .map(|c| c.value)
                .fold(0.0, f64::max);
            eprintln!("{name} {dtype:?}: worst {worst:.2e}");
        }
    }
}

#[test]
fn the_selftest_fails_on_a_wrong_reference() {
    // A copy of a fixture whose reference logits are off by 1e-3 at one place.
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture_dir("llama_gqa");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(src.join("reference.safetensors"), &Device::Cpu).unwrap();
    let t = &tensors["logits.0"];
    let bump = (Tensor::zeros_like(t).unwrap().narrow(1, 0, 1).unwrap() + 1e-3).unwrap();
    let rest = Tensor::zeros(
        (t.dim(0).unwrap(), t.dim(1).unwrap() - 1),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let delta = Tensor::cat(&[&bump, &rest], 1).unwrap();
    tensors.insert("logits.0".into(), (t + delta).unwrap());
    candle_core::safetensors::save(&tensors, tmp.path().join("reference.safetensors")).unwrap();
    let checks = check_fixture(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    let logits = checks.iter().find(|c| c.check == "logits").unwrap();
    assert!(!logits.passed && logits.value > 9e-4, "{logits:?}");
    assert!(checks
        .iter()
        .filter(|c| c.check != "logits")
        .all(|c| c.passed));
}

#[test]
fn a_padded_batch_matches_transformers() {
    for name in families() {
        let name = name.as_str();
        let f = load(name);
        let prompts = raw_prompts(&f);
        let batch = Batch::new(&prompts, f.model.prompts.pad_id, &Device::Cpu).unwrap();
        let out = f
            .model
            .decoder
            .forward(&batch, &ForwardSpec::logits(Positions::All), None)
            .unwrap()
            .logits
            .unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let pad = batch.pad[i];
            let got = out.i((i, pad.., ..)).unwrap();
            let d = max_abs_diff(&got, &f.tensors[&format!("logits.{i}")]);
            assert!(d <= TOL, "{name} prompt {i} (len {}): {d}", p.len());
        }
    }
}
