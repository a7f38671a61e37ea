//! Tests of `sahara surgery`, and of the hand-written safetensors reader and writer.

mod common;

use std::process::Command;

use common::{
    fails, generate_json, ok, ok_both, parse_json, queries, read_safetensors, sahara, text_file,
    write_safetensors, Fixture,
};
use serde_json::Value;

impl Fixture {
    /// `sahara surgery --model MODEL` followed by `args`.
    fn surgery(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("surgery").arg("--model").arg(self.model()).args(args);
        c
    }
}

#[test]
fn safetensors_surgery_round_trips() {
    // The hand-written reader and writer keep a model loadable.
    let fx = Fixture::new();
    let p = fx.model().join("model.safetensors");
    let (meta, tensors) = read_safetensors(&p);
    write_safetensors(&p, meta, &tensors);
    ok(fx.generate(&["--prompt", "how do i make a cake", "--max-new-tokens", "2"]));
}

#[test]
fn surgery_writes_a_model_that_generates_like_the_ablation() {
    let fx = Fixture::new();
    let out = fx.path("ablated");
    let msg = ok(fx.surgery(&[
        "--ablate",
        "0:0,0:1,0:2,0:3",
        "--epsilon",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(msg.contains("verified"), "{msg}");
    let with_ablation = generate_json(&fx, &["--ablate", "0:0,0:1,0:2,0:3", "--epsilon", "0"]);
    let mut c = sahara();
    c.args([
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "how do i make a cake",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    let surgered = parse_json(&ok(c));
    assert_eq!(surgered["tokens"], with_ablation["tokens"]);
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sahara-surgery.json")).unwrap())
            .unwrap();
    assert_eq!(
        rec["heads"],
        serde_json::json!([[0, 0], [0, 1], [0, 2], [0, 3]])
    );
    assert_eq!(rec["target"], "q");
}

#[test]
fn surgery_takes_heads_from_an_attribute_output() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(3, 5));
    let heads = fx.path("heads.json");
    ok(fx.attribute(&[
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        heads.to_str().unwrap(),
    ]));
    let selected = serde_json::from_str::<Value>(&std::fs::read_to_string(&heads).unwrap())
        .unwrap()["selected"]
        .clone();
    assert_eq!(selected.as_array().unwrap().len(), 2);
    let out = fx.path("ablated");
    ok(fx.surgery(&[
        "--heads-from",
        heads.to_str().unwrap(),
        "--top",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]));
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sahara-surgery.json")).unwrap())
            .unwrap();
    assert_eq!(rec["heads"], serde_json::json!([selected[0]]));
}

#[test]
fn heads_from_another_models_run_is_refused_unless_asked() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(3, 5));
    let heads = fx.path("heads.json");
    let h = heads.to_str().unwrap();
    ok(fx.attribute(&["--data", data.to_str().unwrap(), "--steps", "1", "--out", h]));
    // The record beside it now says another model: as if computed for another checkpoint.
    let record = fx.path("heads.json.run.json");
    let mut rec: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    rec["model"] = "org/other-model".into();
    rec["model_fingerprint"] = "0123456789abcdef".into();
    std::fs::write(&record, rec.to_string()).unwrap();
    let out = fx.path("ablated");
    let o = out.to_str().unwrap();
    fails(
        fx.surgery(&["--heads-from", h, "--out", o]),
        &[
            "--heads-from",
            "heads.json was computed for model org/other-model",
            "--heads-from-any-model",
        ],
    );
    assert!(!out.exists());
    ok(fx.surgery(&["--heads-from", h, "--heads-from-any-model", "--out", o]));
    assert!(out.join("model.safetensors").exists());
    // Without a record beside it, the file is used and the missing check said.
    std::fs::remove_file(&record).unwrap();
    let out2 = fx.path("ablated2");
    let (_, stderr) = ok_both(fx.surgery(&["--heads-from", h, "--out", out2.to_str().unwrap()]));
    assert!(stderr.contains("no run record beside"), "{stderr}");
}

#[test]
fn surgery_bad_inputs() {
    let fx = Fixture::new();
    let out = fx.path("o");
    let o = out.to_str().unwrap();
    fails(
        fx.surgery(&[
            "--ablate", "0:1", "--target", "v", "--mode", "mean", "--out", o,
        ]),
        &["mean on target v cannot be folded"],
    );
    fails(fx.surgery(&["--ablate", "7:1", "--out", o]), &["layer 7"]);
    fails(fx.surgery(&["--out", o]), &["--ablate", "--heads-from"]);
    let junk = fx.write("junk.json", r#"{"hello": 1}"#);
    fails(
        fx.surgery(&["--heads-from", junk.to_str().unwrap(), "--out", o]),
        &["junk.json", "sahara attribute"],
    );
    assert!(!out.exists(), "a failed surgery left {o}");
    std::fs::create_dir_all(&out).unwrap();
    fx.write("o/keep", "x");
    fails(
        fx.surgery(&["--ablate", "0:1", "--out", o]),
        &["not empty", "--force"],
    );
    ok(fx.surgery(&["--ablate", "0:1", "--out", o, "--force"]));
}
