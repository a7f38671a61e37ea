//! `--adapter DIR`: a LoRA adapter merged at load in every command, part of the model's
//! fingerprint in run records, and merged into the weights `sahara surgery` writes.

mod common;

use std::path::PathBuf;

use common::{fails, jsonl, ok, sahara};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn the_adapter_changes_the_scores_and_is_part_of_the_run_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("q.txt");
    std::fs::write(&data, "The little robot\nA quiet morning\n").unwrap();
    let base = fixtures().join("llama3");
    let qv = fixtures().join("lora/qv");
    let ships = |out: &str, adapter: Option<&PathBuf>| {
        let mut c = sahara();
        c.args(["ships", "--quiet", "--model"])
            .arg(&base)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(d.join(out));
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        c
    };
    ok(ships("plain.jsonl", None));
    ok(ships("lora.jsonl", Some(&qv)));
    let (plain, lora) = (jsonl(&d.join("plain.jsonl")), jsonl(&d.join("lora.jsonl")));
    assert_ne!(
        plain[0]["scores"], lora[0]["scores"],
        "the adapter changes nothing"
    );
    let record = read(&d.join("lora.jsonl.run.json"));
    assert!(record["model_fingerprint"]
        .as_str()
        .unwrap()
        .contains("+lora:"));
    assert!(record["settings"]["adapter"]
        .as_str()
        .unwrap()
        .ends_with("lora/qv"));
    // Resuming with another adapter, or none, is refused.
    fails(
        ships("lora.jsonl", Some(&fixtures().join("lora/all_rslora"))),
        &["model_fingerprint"],
    );
    fails(ships("lora.jsonl", None), &["model_fingerprint"]);
    // The same adapter resumes (nothing left to do).
    ok(ships("lora.jsonl", Some(&qv)));
}

#[test]
fn surgery_merges_the_adapter_into_the_written_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let base = fixtures().join("llama3");
    let qv = fixtures().join("lora/qv");
    let stdout = ok(sahara()
        .args(["surgery", "--ablate", "1:2", "--model"])
        .arg(&base)
        .arg("--adapter")
        .arg(&qv)
        .arg("--out")
        .arg(&out));
    assert!(stdout.contains("verified"), "{stdout}");
    let record = read(&out.join("sahara-surgery.json"));
    let merged = record["adapter"]["merged_tensors"].as_array().unwrap();
    assert!(merged
        .iter()
        .any(|t| t == "model.layers.0.self_attn.v_proj.weight"));
    // The written model without the adapter generates what the source with it and the
    // ablation generates.
    let gen = |model: &PathBuf, extra: &[&str]| {
        ok(sahara()
            .args([
                "generate",
                "--max-new-tokens",
                "6",
                "--prompt",
                "The little robot",
                "--model",
            ])
            .arg(model)
            .args(extra))
    };
    let qv_s = qv.to_str().unwrap();
    let written = gen(&out, &[]);
    assert_eq!(written, gen(&base, &["--adapter", qv_s, "--ablate", "1:2"]));
    // Not what the base with the ablation alone generates: the adapter is in the weights.
    assert_ne!(written, gen(&base, &["--ablate", "1:2"]));
    // GGUF sources take no adapter.
    fails(
        sahara()
            .args([
                "surgery",
                "--ablate",
                "0:0",
                "--model",
                "x.gguf",
                "--adapter",
            ])
            .arg(&qv)
            .arg("--out")
            .arg(dir.path().join("g")),
        &["x.gguf", "not a GGUF file's"],
    );
}
