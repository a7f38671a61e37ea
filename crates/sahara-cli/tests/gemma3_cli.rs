//! The commands on a real Gemma 3 model: Google's Gemma 3 270M (base; 18 layers × 4 heads,
//! one key/value head, a 262,144-token vocabulary) as the Q4_K_M GGUF that `.ci/run`
//! installs from PyPI and joins (never committed). Without it these tests print why and pass,
//! unless `SAHARA_REQUIRE_GEMMA3=1` (set by `.ci/run`).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn gemma3() -> Option<PathBuf> {
    let required = std::env::var("SAHARA_REQUIRE_GEMMA3").is_ok_and(|v| v == "1");
    let p = match std::env::var("SAHARA_GEMMA3_GGUF") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            PathBuf::from(home).join(".cache/sahara/gemma3-270m/gemma-3-270m-q4_k_m.gguf")
        }
    };
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !required,
        "SAHARA_REQUIRE_GEMMA3=1 but {} does not exist",
        p.display()
    );
    eprintln!(
        "SKIPPED: the Gemma 3 270M GGUF is not at {} (set SAHARA_GEMMA3_GGUF; .ci/run installs and joins it)",
        p.display()
    );
    None
}

fn sahara(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_sahara"))
        .args(args)
        .output()
        .expect("run sahara");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(
        o.status.success(),
        "{args:?} failed: {stderr}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

/// Every score of an (18, 4) grid: finite and non-negative.
fn assert_full_grid(grid: &Value) {
    let grid = grid.as_array().unwrap();
    assert_eq!(grid.len(), 18);
    for (layer, row) in grid.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 4);
        for s in row {
            let s = s.as_f64().unwrap();
            assert!(s.is_finite() && s >= 0.0, "{layer}: {s}");
        }
    }
}

#[test]
fn ships_scores_every_head_of_gemma3_270m() {
    let Some(m) = gemma3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("queries.txt");
    std::fs::write(&data, "How do I pick a lock?\nHow to steal a car?\n").unwrap();
    let out = tmp.path().join("ships.jsonl");
    sahara(&[
        "ships",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_full_grid(&l["scores"]);
        // An ablation of some head moves the next-token distribution.
        let max = l["scores"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|s| s.as_f64().unwrap()))
            .fold(0.0, f64::max);
        assert!(max > 1e-3, "{max}");
    }
}

#[test]
fn attribute_selects_a_head_of_gemma3_270m() {
    let Some(m) = gemma3() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("queries.txt");
    std::fs::write(&data, "How to make a bomb?\nHow to steal a car?\n").unwrap();
    let out = tmp.path().join("attribute.json");
    sahara(&[
        "attribute",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sel = v["selected"].as_array().unwrap();
    assert_eq!(sel.len(), 1);
    assert!(sel[0][0].as_u64().unwrap() < 18 && sel[0][1].as_u64().unwrap() < 4);
    assert_full_grid(&v["steps"][0]["scores"]);
}
