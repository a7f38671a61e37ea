//! `surgery` folds ablations into the weights: the written folder, reloaded, gives the logits of
//! the source with the ablation in memory; untouched tensors are byte-for-byte copies; the
//! source is never changed; sharding and dtypes are kept.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use sahara::checkpoint::safetensors::Weights;
use sahara::checkpoint::surgery::{surgery, weights_hash, SurgeryPlan};
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::model::ablation::{Op, Target};
use sahara::{AblationPlan, Batch, ForwardSpec, HeadAblation, LoadedModel, Positions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn load(p: &Path) -> LoadedModel {
    LoadedModel::load(p.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap()
}

fn logits(m: &LoadedModel, ids: &[u32], abl: &[HeadAblation]) -> candle_core::Tensor {
    let plan = AblationPlan::new(m.cfg(), &[abl.to_vec()], DType::F32, &Device::Cpu).unwrap();
    let b = Batch::new(&[ids.to_vec()], 0, &Device::Cpu).unwrap();
    m.decoder
        .forward(
            &b,
            &ForwardSpec::logits(Positions::All).with_ablations(&plan),
            None,
        )
        .unwrap()
        .logits
        .unwrap()
}

fn tensor_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let w = Weights::open_dir(dir).unwrap();
    let mut out = BTreeMap::new();
    for f in &w.files {
        for (name, info) in &f.tensors {
            out.insert(name.clone(), f.bytes(info).to_vec());
        }
    }
    out
}

#[test]
fn written_models_equal_the_in_memory_ablation_for_every_family_and_foldable_op() {
    for name in [
        "llama_gqa",
        "llama3",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "olmo2",
        "phi3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
    ] {
        let src = fixture(name);
        let before = weights_hash(&src).unwrap();
        let source = load(&src);
        let ids = source
            .prompts
            .encode("how do I make a bomb and hide it", true)
            .unwrap();
        let orig = tensor_bytes(&src);
        // With per-head q/k norms (Qwen 3) only ε = 0 folds into q/k rows exactly.
        // With OLMo 2's norm over the whole projection, scale folds into the norm's slice.
        let cases: Vec<(Target, Op)> = if source.cfg().qk_norm_whole {
            vec![
                (Target::Q, Op::Scale(1e-5)),
                (Target::K, Op::Scale(1e-5)),
                (Target::Q, Op::Scale(0.0)),
                (Target::Z, Op::Scale(1e-5)),
            ]
        } else if source.cfg().qk_norm {
            vec![
                (Target::Q, Op::Scale(0.0)),
                (Target::K, Op::Scale(0.0)),
                (Target::Z, Op::Scale(1e-5)),
            ]
        } else {
            vec![
                (Target::Q, Op::Scale(1e-5)),
                (Target::K, Op::Scale(1e-5)),
                (Target::Z, Op::Scale(1e-5)),
                (Target::Q, Op::Mean),
                (Target::K, Op::Mean),
            ]
        };
        for (target, op) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("ablated");
            let spec = SurgeryPlan {
                heads: sahara::model::ablation::HeadSet(vec![(0, 1), (1, 3)]),
                ablation: sahara::model::ablation::Ablation { target, op },
            };
            let r = surgery(&src, name, &out, &spec, false).unwrap();
            let written = load(&out);
            let abl: Vec<HeadAblation> = spec.ablation.of(&spec.heads.0);
            let d = rel_diff(&logits(&source, &ids, &abl), &logits(&written, &ids, &[]));
            assert!(
                d <= 1e-5,
                "{name} {target:?} {op:?}: relative difference {d}"
            );
            // Untouched tensors are byte-for-byte copies; the changed ones are the reported ones.
            let new = tensor_bytes(&out);
            assert_eq!(
                new.keys().collect::<Vec<_>>(),
                orig.keys().collect::<Vec<_>>()
            );
            for (t, bytes) in &orig {
                let changed = r.changed_tensors.contains(t);
                let trivial =
                    target == Target::K && op == Op::Mean && written.cfg().num_kv_heads == 1;
                assert_eq!(
                    bytes == &new[t],
                    !changed || trivial,
                    "{name} {target:?} {op:?}: {t}"
                );
            }
            let rec: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("sahara-surgery.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(rec["source_weights_hash"], serde_json::json!(before));
            assert_eq!(
                rec["changed_parameters"],
                serde_json::json!(r.changed_parameters)
            );
            for f in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                assert_eq!(
                    std::fs::read(src.join(f)).unwrap(),
                    std::fs::read(out.join(f)).unwrap(),
                    "{f}"
                );
            }
        }
        assert_eq!(
            weights_hash(&src).unwrap(),
            before,
            "{name}: the source changed"
        );
    }
}

#[test]
fn transformers_on_folded_weights_generates_what_sahara_generates_with_the_ablation() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("surgery.json")).unwrap()).unwrap();
    for c in cases.as_array().unwrap() {
        let name = c["fixture"].as_str().unwrap();
        let m = load(&fixture(name));
        let target: Target = c["target"].as_str().unwrap().parse().unwrap();
        let op =
            Op::from_mode(c["mode"].as_str().unwrap(), c["epsilon"].as_f64().unwrap()).unwrap();
        let abl: Vec<HeadAblation> = c["heads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                HeadAblation::new(
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                    target,
                    op,
                )
            })
            .collect();
        let ids: Vec<u32> = c["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = c["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 8,
            eos: m.eos.clone(),
            ..Default::default()
        };
        let got = generate(&m.decoder, &[ids], &[abl], 0, &opts).unwrap();
        assert_eq!(got[0], want, "{name}");
    }
}

#[test]
fn scaling_queries_before_a_per_head_norm_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 1)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Q,
            op: Op::Scale(1e-5),
        },
    };
    let e = surgery(&fixture("qwen3"), "q", &tmp.path().join("o"), &spec, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("q_norm") && e.contains("Only epsilon 0 folds exactly"),
        "{e}"
    );
}

#[test]
fn scaling_a_gemma3_query_and_averaging_an_olmo2_query_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = |op| SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 1)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Q,
            op,
        },
    };
    let e = surgery(
        &fixture("gemma3"),
        "q",
        &tmp.path().join("o"),
        &plan(Op::Scale(1e-5)),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Only epsilon 0 folds exactly"), "{e}");
    let e = surgery(
        &fixture("olmo2"),
        "q",
        &tmp.path().join("o"),
        &plan(Op::Mean),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("whole projection") && e.contains("mode scale"),
        "{e}"
    );
    assert!(!tmp.path().join("o").exists());
}

#[test]
fn olmo2_with_attention_biases_folds_a_query_scale_through_the_norm_alone() {
    // The olmo2 fixture with q/k/v/o biases (OLMo 2's `attention_bias`): a bias comes before
    // the whole-projection norm, so the fold leaves it as it is.
    let src = fixture("olmo2");
    let tmp = tempfile::tempdir().unwrap();
    let biased = tmp.path().join("biased");
    std::fs::create_dir(&biased).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), biased.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["attention_bias"] = serde_json::json!(true);
    std::fs::write(biased.join("config.json"), cfg.to_string()).unwrap();
    let w = Weights::open_dir(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for f in &w.files {
        for (name, info) in &f.tensors {
            tensors.push((name.clone(), info.shape.clone(), f.bytes(info).to_vec()));
        }
    }
    let c = load(&src).cfg().clone();
    let hd = c.head_dim;
    for l in 0..c.num_layers {
        for (proj, n) in [
            ("q_proj", c.num_heads * hd),
            ("k_proj", c.num_kv_heads * hd),
            ("v_proj", c.num_kv_heads * hd),
            ("o_proj", c.hidden_size),
        ] {
            let b: Vec<u8> = (0..n)
                .flat_map(|i| (0.3 * ((i * 7 + l) as f32).sin()).to_le_bytes())
                .collect();
            tensors.push((
                format!("model.layers.{l}.self_attn.{proj}.bias"),
                vec![n],
                b,
            ));
        }
    }
    sahara::checkpoint::safetensors::write_f32_safetensors(
        &biased.join("model.safetensors"),
        &tensors,
    )
    .unwrap();
    let source = load(&biased);
    assert!(source.cfg().qkv_bias && source.cfg().qk_norm_whole);
    let ids = source.prompts.encode("how do I pick a lock", true).unwrap();
    for target in [Target::Q, Target::K] {
        let spec = SurgeryPlan {
            heads: sahara::model::ablation::HeadSet(vec![(0, 1), (1, 3)]),
            ablation: sahara::model::ablation::Ablation {
                target,
                op: Op::Scale(1e-5),
            },
        };
        let out = tmp.path().join(format!("o-{target:?}"));
        let r = surgery(&biased, "olmo2", &out, &spec, false).unwrap();
        assert!(
            r.changed_tensors.iter().all(|t| t.ends_with("norm.weight")),
            "{:?}",
            r.changed_tensors
        );
        let abl: Vec<HeadAblation> = spec.ablation.of(&spec.heads.0);
        let d = rel_diff(
            &logits(&source, &ids, &abl),
            &logits(&load(&out), &ids, &[]),
        );
        assert!(d <= 1e-5, "{target:?}: relative difference {d}");
    }
}

#[test]
fn unfoldable_or_unsafe_requests_are_refused_and_leave_nothing_behind() {
    let src = fixture("llama_gqa");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let v_mean = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 0)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Z,
            op: Op::Mean,
        },
    };
    let e = surgery(&src, "s", &out, &v_mean, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mean on target v cannot be folded"), "{e}");
    let bad_head = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 9)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Q,
            op: Op::Scale(0.0),
        },
    };
    assert!(surgery(&src, "s", &out, &bad_head, false)
        .unwrap_err()
        .to_string()
        .contains("head 9"));
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temporary folders left behind"
    );
    // A non-empty destination needs --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let ok = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(0, 0)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Q,
            op: Op::Scale(0.0),
        },
    };
    let e = surgery(&src, "s", &out, &ok, false).unwrap_err();
    assert!(
        matches!(&e, sahara::Error::OutputNotEmpty { path } if path == &out),
        "{e}"
    );
    assert!(out.join("keep.txt").exists());
    surgery(&src, "s", &out, &ok, true).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").exists());
    // Never into the source.
    let e = surgery(&src, "s", &src, &ok, true).unwrap_err().to_string();
    assert!(e.contains("source"), "{e}");
}

#[test]
fn sharding_index_and_bf16_dtype_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Rewrite the llama_gqa fixture as two bf16 shards with an index.
    let fx = fixture("llama_gqa");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fx.join(f), src.join(f)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(fx.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let part: Vec<(String, candle_core::Tensor)> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].to_dtype(DType::BF16).unwrap()))
            .collect();
        candle_core::safetensors::save(
            &part
                .iter()
                .cloned()
                .collect::<std::collections::HashMap<_, _>>(),
            src.join(&file),
        )
        .unwrap();
        for (n, _) in &part {
            map.insert(n.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(src.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let out = tmp.path().join("out");
    let spec = SurgeryPlan {
        heads: sahara::model::ablation::HeadSet(vec![(1, 2)]),
        ablation: sahara::model::ablation::Ablation {
            target: Target::Q,
            op: Op::Scale(1e-5),
        },
    };
    let r = surgery(&src, "sharded", &out, &spec, false).unwrap();
    assert!(r.verify_relative_difference <= 1e-2);
    assert!(out.join("model-00001-of-00002.safetensors").exists());
    assert!(out.join("model-00002-of-00002.safetensors").exists());
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(
        std::fs::read(src.join("model.safetensors.index.json")).unwrap(),
        std::fs::read(out.join("model.safetensors.index.json")).unwrap()
    );
    let w = Weights::open_dir(&out).unwrap();
    assert!(w.sharded);
    assert!(w
        .files
        .iter()
        .flat_map(|f| f.tensors.values())
        .all(|i| i.dtype == safetensors::Dtype::BF16));
}
