//! Tests of the `sahara` binary as a whole: help, version, every architecture end to end.

mod common;

use common::{
    assert_grids_close, check_generate_output, fails, grid, ok, ok_both, parse_json, sahara, PROMPT,
};
use sahara::checkpoint::random::{write_random_model, RandomModel};
use serde_json::Value;

#[test]
fn help_and_version_still_print() {
    let v = ok(sahara().arg("--version"));
    assert!(v.starts_with("sahara "), "{v}");
    for sub in ["generate", "ships"] {
        let h = ok(sahara().args([sub, "--help"]));
        assert!(h.contains("--model"), "{h}");
    }
}

#[test]
fn generate_and_ships_on_every_architecture() {
    for arch in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        write_random_model(&model, &RandomModel::tiny(arch)).unwrap();
        let out = ok(sahara().args(["generate", "--model"]).arg(&model).args([
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "3",
            "--json",
        ]));
        check_generate_output(&parse_json(out.trim()), 256);
        let data = dir.path().join("q.txt");
        std::fs::write(&data, "tell me about the car\nwrite a poem for my friend\n").unwrap();
        let run_engine = |engine: &str| -> Vec<Value> {
            let out = ok(sahara()
                .args(["ships", "--quiet", "--engine", engine, "--model"])
                .arg(&model)
                .arg("--data")
                .arg(&data));
            out.lines().map(parse_json).collect()
        };
        let (fast, naive) = (run_engine("fast"), run_engine("naive"));
        assert_eq!(fast.len(), 2, "{arch}");
        for (f, n) in fast.iter().zip(&naive) {
            assert_grids_close(&grid(f), &grid(n), 1e-5, arch);
        }
    }
}

#[test]
fn selftest_passes_on_cpu_through_the_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut c = sahara();
    c.current_dir(&root)
        .args(["selftest", "--device", "cpu", "--json"]);
    let (out, err) = ok_both(c);
    let checks: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every fixture, both dtypes, every check passed.
    assert!(checks.len() > 100, "{}", checks.len());
    assert!(checks.iter().all(|c| c["passed"] == true));
    for dtype in ["f32", "bf16"] {
        assert!(checks
            .iter()
            .any(|c| c["dtype"] == dtype && c["check"] == "ships_fast_vs_naive"));
    }
    assert!(
        err.contains("selftest: all") && err.contains("passed on cpu"),
        "{err}"
    );
}

#[test]
fn selftest_bad_inputs_are_one_line() {
    fails(
        sahara().args(["selftest", "--fixtures", "/nonexistent-fixtures"]),
        &["/nonexistent-fixtures"],
    );
    let empty = tempfile::tempdir().unwrap();
    fails(
        sahara().args(["selftest", "--fixtures"]).arg(empty.path()),
        &["no fixture with a reference"],
    );
    fails(
        sahara().args(["selftest", "--dtype", "f64"]),
        &["--dtype", "f64"],
    );
    #[cfg(not(feature = "cuda"))]
    fails(
        sahara().args(["selftest", "--device", "cuda"]),
        &["--device", "cuda", "--features cuda"],
    );
}
