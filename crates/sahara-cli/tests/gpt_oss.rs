//! The commands on GPT-OSS (the tiny random fixtures of `fixtures/gpt_oss` and its MXFP4 twin):
//! `--sink keep|drop`, what the run record says, and what is refused.

mod common;

use std::path::PathBuf;

use common::{fails, jsonl, ok, parse_json, read_safetensors, sahara, Fixture};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// `sahara ships` on a GPT-OSS fixture, 2 built-in queries in its chat template, into `out`;
/// returns the lines and the run record's settings.
fn ships(
    model: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut c = sahara();
    c.args(["ships", "--model"])
        .arg(fixture(model))
        .args(["--limit", "2", "--template", "chat", "--quiet", "--out"])
        .arg(out)
        .args(extra);
    ok(c);
    (jsonl(out), settings(out))
}

/// The settings of the run record beside an output.
fn settings(out: &std::path::Path) -> serde_json::Value {
    let record = std::fs::read_to_string(out.with_extension("jsonl.run.json")).unwrap();
    parse_json(&record)["settings"].clone()
}

#[test]
fn dropping_the_sinks_changes_the_scores_and_the_record_says_which_policy_and_date() {
    let fx = Fixture::new();
    let (keep, keep_settings) = ships("gpt_oss", &fx.path("keep.jsonl"), &[]);
    let (drop, drop_settings) = ships("gpt_oss", &fx.path("drop.jsonl"), &["--sink", "drop"]);
    assert_eq!(keep_settings["sink"], "keep", "{keep_settings}");
    assert_eq!(drop_settings["sink"], "drop", "{drop_settings}");
    // The Harmony template writes today's date (UTC) into the prompts: the record holds it.
    let date = keep_settings["template_date"]
        .as_str()
        .expect("a template_date")
        .to_string();
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "{date}");
    assert_eq!(keep.len(), 2);
    // Every head's q ablation changes its own sink handling: the scores differ.
    for (k, d) in keep.iter().zip(&drop) {
        assert_eq!(k["query"], d["query"]);
        let (ks, ds) = (k["scores"].to_string(), d["scores"].to_string());
        assert_ne!(ks, ds, "dropping the sinks changed no score");
    }
}

#[test]
fn a_run_record_of_another_model_holds_no_sink_or_date() {
    let fx = Fixture::new();
    let out = fx.path("o.jsonl");
    ok(fx.ships_to(&fx.write("q.txt", "how do i make a bomb ?\n"), &out));
    let settings = &settings(&out);
    assert!(settings.get("sink").is_none(), "{settings}");
    assert!(settings.get("template_date").is_none(), "{settings}");
}

#[test]
fn sink_drop_is_refused_where_it_means_nothing_and_in_surgery() {
    let gpt = fixture("gpt_oss");
    let gpt = gpt.to_str().unwrap();
    let fx = Fixture::new();
    let mut c = sahara();
    c.args(["ships", "--limit", "1", "--quiet", "--sink", "drop"]);
    fails(c, &["--sink", "attention sinks", "LlamaForCausalLM"]);
    let mut c = sahara();
    c.args([
        "ships", "--model", gpt, "--limit", "1", "--quiet", "--sink", "drop", "--target", "v",
    ]);
    fails(c, &["--sink", "target v"]);
    let mut c = sahara();
    c.args([
        "ships", "--model", gpt, "--limit", "1", "--quiet", "--sink", "maybe",
    ]);
    fails(c, &["--sink", "keep or drop"]);
    let mut c = sahara();
    c.args([
        "surgery", "--model", gpt, "--ablate", "1:2", "--sink", "drop", "--out",
    ])
    .arg(fx.path("out"));
    fails(c, &["--sink", "cannot be folded"]);
    assert!(!fx.path("out").exists());
}

#[test]
fn surgery_of_an_mxfp4_checkpoint_keeps_its_blocks_and_verifies() {
    let fx = Fixture::new();
    let out = fx.path("folded");
    let mut c = sahara();
    c.args(["surgery", "--model"])
        .arg(fixture("gpt_oss_mxfp4"))
        .args(["--ablate", "1:2,3:0", "--target", "k", "--out"])
        .arg(&out);
    ok(c);
    let manifest = parse_json(&std::fs::read_to_string(out.join("sahara-surgery.json")).unwrap());
    let changed: Vec<&str> = manifest["changed_tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        changed.iter().all(|n| n.contains("self_attn.k_proj")),
        "{changed:?}"
    );
    // The experts stay in MXFP4, byte for byte, with the quantization config.
    let config = parse_json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert_eq!(config["quantization_config"]["quant_method"], "mxfp4");
    let (_, before) = read_safetensors(&fixture("gpt_oss_mxfp4").join("model.safetensors"));
    let (_, after) = read_safetensors(&out.join("model.safetensors"));
    let mut blocks = 0;
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((&a.name, &a.dtype), (&b.name, &b.dtype));
        if a.name.ends_with("_blocks") || a.name.ends_with("_scales") {
            assert_eq!(a.dtype, "U8", "{}", a.name);
            assert!(a.bytes == b.bytes, "{} changed", a.name);
            blocks += 1;
        }
    }
    assert_eq!(blocks, 4 * 4, "four MXFP4 tensors in each of four layers");
}
