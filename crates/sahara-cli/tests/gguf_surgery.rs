//! `sahara surgery --model FILE.gguf --out OUT.gguf`: a GGUF file with the quantized tensors
//! kept, on the committed `fixtures/gguf_tiny/model.gguf`; and the refusals of a GGUF output
//! from a Hugging Face folder and of `--changed-dtype` with a folder output.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, ok_both, parse_json, sahara, Fixture};
use sahara::checkpoint::gguf::GgufFile;
use serde_json::Value;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf_tiny/model.gguf")
}

fn generate_tokens(model: &Path, ablate: &[&str]) -> Value {
    let mut c = sahara();
    c.args(["generate", "--model"])
        .arg(model)
        .args([
            "--prompt",
            "Hi there, how are you?",
            "--max-new-tokens",
            "6",
            "--json",
        ])
        .args(ablate);
    parse_json(ok(c).trim())["tokens"].clone()
}

#[test]
fn surgery_writes_a_gguf_that_generates_like_the_ablation() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ablated.gguf");
    let ablate = ["--ablate", "0:1,1:2", "--target", "k", "--epsilon", "0"];
    let mut c = sahara();
    c.args(["surgery", "--model"])
        .arg(tiny())
        .args(ablate)
        .arg("--out")
        .arg(&out);
    let (stdout, stderr) = ok_both(c);
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(
        stderr.contains("19 tensors copied as they are, 2 rewritten in F32"),
        "{stderr}"
    );
    let g = GgufFile::open(&out).unwrap();
    let types: Vec<String> = [
        "blk.0.attn_k.weight",
        "blk.1.attn_k.weight",
        "blk.0.attn_q.weight",
    ]
    .iter()
    .map(|n| format!("{:?}", g.content.tensor_infos[*n].ggml_dtype))
    .collect();
    assert_eq!(types, ["F32", "F32", "Q4K"]);
    drop(g);
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("ablated.gguf.sahara-surgery.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["written_format"], "gguf");
    assert_eq!(rec["heads"], serde_json::json!([[0, 1], [1, 2]]));
    assert_eq!(rec["target"], "k");
    // The written file, run plainly, generates what the source does with the ablation.
    assert_eq!(
        generate_tokens(&out, &[]),
        generate_tokens(&tiny(), &ablate)
    );

    // An existing output needs --force; f16 changed tensors.
    let mut again = sahara();
    again
        .args(["surgery", "--model"])
        .arg(tiny())
        .args(ablate)
        .arg("--out")
        .arg(&out);
    fails(again, &["--out", "exists", "--force"]);
    let mut c = sahara();
    c.args(["surgery", "--model"])
        .arg(tiny())
        .args(["--ablate", "1:3", "--target", "v", "--epsilon", "0"])
        .args(["--changed-dtype", "f16", "--force", "--out"])
        .arg(&out);
    let (_, stderr) = ok_both(c);
    assert!(stderr.contains("1 rewritten in F16"), "{stderr}");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(
        format!(
            "{:?}",
            g.content.tensor_infos["blk.1.attn_output.weight"].ggml_dtype
        ),
        "F16"
    );
    // Nothing but the file and its record.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ablated.gguf", "ablated.gguf.sahara-surgery.json"]);
}

#[test]
fn gguf_output_needs_a_gguf_source_and_changed_dtype_a_gguf_output() {
    let fx = Fixture::new();
    let out = fx.path("x.gguf");
    let mut c = sahara();
    c.args(["surgery", "--model"])
        .arg(fx.model())
        .args(["--ablate", "0:1", "--out"])
        .arg(&out);
    fails(c, &["--out", "x.gguf", "GGUF source", "output folder"]);
    assert!(!out.exists());
    let folder = fx.path("folder");
    for model in [fx.model(), tiny()] {
        let mut c = sahara();
        c.args(["surgery", "--model"])
            .arg(model)
            .args(["--ablate", "0:1", "--changed-dtype", "f16", "--out"])
            .arg(&folder);
        fails(c, &["--changed-dtype", "GGUF output", ".gguf"]);
        assert!(!folder.exists());
    }
    let mut c = sahara();
    c.args(["surgery", "--model"])
        .arg(tiny())
        .args(["--ablate", "0:1", "--changed-dtype", "bf16", "--out"])
        .arg(fx.path("y.gguf"));
    fails(c, &["--changed-dtype", "bf16"]);
}
