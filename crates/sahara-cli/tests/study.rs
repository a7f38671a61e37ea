//! The binary on the built-in organism: bootstrap intervals (`--bootstrap`), two rankings
//! compared (`sahara compare`), head patching (`--mode patch`) and the perplexity cost of an
//! ablation (`sahara eval --perplexity`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, jsonl, ok, ok_both, Fixture};
use serde_json::Value;

/// The binary, with the organism unpacked into `cache`.
fn sahara(cache: &Path) -> Command {
    let mut c = common::sahara();
    c.env("XDG_CACHE_HOME", cache);
    c
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn head_of(v: &Value) -> (u64, u64) {
    (v["layer"].as_u64().unwrap(), v["head"].as_u64().unwrap())
}

#[test]
fn ships_bootstrap_puts_intervals_in_the_summary_and_the_table_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let (stdout, _) = ok_both(
            sahara(dir.path())
                .args([
                    "ships",
                    "--limit",
                    "30",
                    "--bootstrap",
                    "50",
                    "--seed",
                    seed,
                ])
                .args(["--quiet", "--out"])
                .arg(&out),
        );
        let summary =
            std::fs::read_to_string(dir.path().join(format!("{name}.summary.json"))).unwrap();
        (stdout, summary)
    };
    let (table, text) = run("a.jsonl", "0");
    assert!(table.contains("95% interval"), "{table}");
    assert!(table.contains("P(top 10)"), "{table}");
    assert!(table.contains("50 bootstrap resamples"), "{table}");
    let s: Value = serde_json::from_str(&text).unwrap();
    let b = &s["bootstrap"];
    assert_eq!(b["resamples"], 50);
    assert_eq!(b["level"], 0.95);
    let heads = b["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 32);
    // The planted head ranks first in every resample.
    assert_eq!(head_of(&heads[0]), (2, 4));
    assert_eq!(
        (heads[0]["rank_lo"].as_u64(), heads[0]["rank_hi"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(heads[0]["p_top"], 1.0);
    for h in heads {
        let (lo, m, hi) = (
            h["mean_lo"].as_f64().unwrap(),
            h["mean"].as_f64().unwrap(),
            h["mean_hi"].as_f64().unwrap(),
        );
        assert!(lo <= m && m <= hi, "{h}");
        assert!(h["rank_lo"].as_u64() <= h["rank"].as_u64(), "{h}");
    }
    // The same seed gives the same file; another seed other intervals of the same means.
    assert_eq!(run("b.jsonl", "0").1, text);
    let other: Value = serde_json::from_str(&run("c.jsonl", "1").1).unwrap();
    assert_ne!(other["bootstrap"]["heads"], s["bootstrap"]["heads"]);
    assert_eq!(other["by_mean"], s["by_mean"]);
    // The report shows the intervals beside the top heads.
    let page = dir.path().join("r.html");
    ok(sahara(dir.path())
        .arg("report")
        .arg("--ships")
        .arg(dir.path().join("a.jsonl"))
        .arg("--out")
        .arg(&page));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<th>rank interval</th>"),
        "no interval columns"
    );
    assert!(html.contains("over 50 bootstrap resamples"));
}

#[test]
fn attribute_bootstrap_gives_step_one_intervals_and_choice_frequencies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.json");
    let (table, _) = ok_both(
        sahara(dir.path())
            .args([
                "attribute",
                "--steps",
                "2",
                "--limit",
                "40",
                "--bootstrap",
                "30",
            ])
            .args(["--quiet", "--out"])
            .arg(&out),
    );
    assert!(
        table.contains("step 1 over 30 bootstrap resamples"),
        "{table}"
    );
    let v = read(&out);
    let step = &v["steps"][0];
    let b = &step["bootstrap"];
    let heads = b["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 32);
    let mut chosen = 0.0;
    for h in heads {
        // The full-sample score from the Gram matrices is the step's own (from the SVD).
        let (l, hd) = head_of(h);
        let own = step["scores"][l as usize][hd as usize].as_f64().unwrap();
        let score = h["score"].as_f64().unwrap();
        // arccos near 1 turns rounding into about 1e-5 degrees, squared by the Gram matrix.
        assert!(
            (own - score).abs() < 1e-4 + 1e-6 * own,
            "{l}:{hd}: {own} vs {score}"
        );
        assert!(h["score_lo"].as_f64() <= h["score_hi"].as_f64());
        chosen += h["p_chosen"].as_f64().unwrap();
    }
    assert!((chosen - 1.0).abs() < 1e-9, "choices add up to {chosen}");
    // Only step 1 is bootstrapped.
    assert!(v["steps"][1].get("bootstrap").is_none());
    let page = dir.path().join("r.html");
    ok(sahara(dir.path())
        .arg("report")
        .arg("--attribute")
        .arg(&out)
        .arg("--out")
        .arg(&page));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("id=\"sahara-bootstrap\""),
        "no bootstrap table"
    );
    // Workers do not bootstrap.
    fails(
        sahara(dir.path())
            .args(["attribute", "--bootstrap", "5", "--shard", "0/2", "--out"])
            .arg(dir.path().join("w")),
        &["workers do not bootstrap"],
    );
}

#[test]
fn compare_two_templates_of_one_model_with_plot_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, template) in [("chat.jsonl", "chat"), ("raw.jsonl", "raw")] {
        ok(sahara(d)
            .args([
                "ships",
                "--limit",
                "20",
                "--quiet",
                "--template",
                template,
                "--out",
            ])
            .arg(d.join(name)));
    }
    let cmp = d.join("cmp.json");
    let stdout = ok(sahara(d)
        .arg("compare")
        .arg(d.join("chat.jsonl"))
        .arg(d.join("raw.jsonl.summary.json"))
        .args(["--top", "3,5"])
        .arg("--out")
        .arg(&cmp)
        .arg("--plot")
        .arg(d.join("cmp.png")));
    assert!(
        stdout.contains("(template chat)") && stdout.contains("(template raw)"),
        "{stdout}"
    );
    assert!(stdout.contains("Spearman over 32 heads"), "{stdout}");
    let v = read(&cmp);
    assert_eq!(v["schema"], "sahara.compare/1");
    assert_eq!(v["heads"], 32);
    let rho = v["spearman"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho));
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    for t in top {
        let k = t["k"].as_u64().unwrap() as usize;
        let (s, a, b) = (
            t["shared"].as_array().unwrap().len(),
            t["only_a"].as_array().unwrap().len(),
            t["only_b"].as_array().unwrap().len(),
        );
        assert_eq!((s + a, s + b), (k, k), "{t}");
        let j = t["jaccard"].as_f64().unwrap();
        assert!((j - s as f64 / (s + a + b) as f64).abs() < 1e-12, "{t}");
    }
    // The two sides' scores are the two runs' mean Ships.
    let chat = read(&d.join("chat.jsonl.summary.json"));
    assert_eq!(v["a"]["scores"], chat["mean"]);
    assert_eq!(v["a"]["template"], "chat");
    let png = std::fs::read(d.join("cmp.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Side by side: wider than one heatmap of the same grid.
    ok(sahara(d)
        .args(["ships", "--limit", "2", "--quiet", "--plot"])
        .arg(d.join("one.png")));
    let width = |p: &[u8]| u32::from_be_bytes(p[16..20].try_into().unwrap());
    let one = std::fs::read(d.join("one.png")).unwrap();
    assert!(
        width(&png) >= 2 * width(&one) - 2,
        "{} vs {}",
        width(&png),
        width(&one)
    );
    // The report shows the comparison.
    let page = d.join("r.html");
    ok(sahara(d)
        .arg("report")
        .arg("--compare")
        .arg(&cmp)
        .arg("--out")
        .arg(&page));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<section id=\"compare\">"),
        "no comparison section"
    );
    assert!(html.contains("id=\"compare-0-a\"") && html.contains("id=\"compare-0-b\""));
}

#[test]
fn compare_two_organisms_trained_with_different_seeds_shares_the_planted_head() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seed1 = d.join("seed1");
    ok(sahara(d)
        .args([
            "organism", "train", "--seed", "1", "--steps", "300", "--quiet", "--out",
        ])
        .arg(&seed1));
    ok(sahara(d)
        .args(["ships", "--limit", "20", "--quiet", "--out"])
        .arg(d.join("builtin.jsonl")));
    ok(sahara(d)
        .args([
            "ships",
            "--limit",
            "20",
            "--quiet",
            "--template",
            "chat",
            "--model",
        ])
        .arg(&seed1)
        .arg("--out")
        .arg(d.join("seed1.jsonl")));
    let cmp = d.join("cmp.json");
    ok(sahara(d)
        .arg("compare")
        .arg(d.join("builtin.jsonl"))
        .arg(d.join("seed1.jsonl"))
        .arg("--out")
        .arg(&cmp));
    let v = read(&cmp);
    assert_ne!(v["a"]["model_fingerprint"], v["b"]["model_fingerprint"]);
    // Both were trained to refuse through 2:4: it is first in both, shared at every K.
    for t in v["top"].as_array().unwrap() {
        assert_eq!(t["shared"][0], serde_json::json!([2, 4]), "{t}");
    }
}

#[test]
fn compare_refuses_rankings_of_models_of_different_shapes() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = f.write("q.txt", "how do i bake bread\nhow do i plant a tree\n");
    ok(f.ships_to(&data, &d.join("random.jsonl")));
    ok(sahara(d)
        .args(["ships", "--limit", "2", "--quiet", "--out"])
        .arg(d.join("organism.jsonl")));
    let cfg = read(&f.model().join("config.json"));
    let shape = format!(
        "{} layers × {} heads",
        cfg["num_hidden_layers"], cfg["num_attention_heads"]
    );
    fails(
        sahara(d)
            .arg("compare")
            .arg(d.join("random.jsonl"))
            .arg(d.join("organism.jsonl")),
        &["different shapes", &shape, "4 layers × 8 heads"],
    );
    fails(
        sahara(d)
            .arg("compare")
            .arg(d.join("organism.jsonl"))
            .arg(d.join("missing.jsonl")),
        &["no run record"],
    );
}

#[test]
fn patching_the_gate_head_restores_little_though_ablating_it_removes_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (patch_out, ablate_out) = (d.join("patch.jsonl"), d.join("ablate.jsonl"));
    let (_, stderr) = ok_both(
        sahara(d)
            .args([
                "ships",
                "--mode",
                "patch",
                "--source-data",
                "builtin:benign",
            ])
            .args(["--limit", "20", "--positions", "all", "--out"])
            .arg(&patch_out),
    );
    ok(sahara(d)
        .args([
            "ships",
            "--target",
            "v",
            "--epsilon",
            "0",
            "--limit",
            "20",
            "--quiet",
            "--out",
        ])
        .arg(&ablate_out));
    let patch = jsonl(&patch_out);
    let ablate = jsonl(&ablate_out);
    assert_eq!(patch.len(), 20);
    let mean = |lines: &[Value], f: &dyn Fn(&Value) -> f64| {
        lines.iter().map(f).sum::<f64>() / lines.len() as f64
    };
    let at = |v: &Value, l: usize, h: usize| v[l][h].as_f64().unwrap();
    // Ablating 2:4 moves the next token by nats; patching it from a benign prompt restores
    // almost nothing of the benign prompt's next token: its output is nearly the same for
    // every prompt (a gate, not a reader of the request).
    let ablation = mean(&ablate, &|l| at(&l["scores"], 2, 4));
    let restored = mean(&patch, &|l| at(&l["scores"], 2, 4));
    assert!(ablation > 1.0, "ablating 2:4: mean Ships {ablation}");
    assert!(restored.abs() < 0.05, "patching 2:4 restores {restored}");
    // Some head reads the request: patching it restores much of the benign answer's start.
    let summary = read(&d.join("patch.jsonl.summary.json"));
    let best = summary["by_mean"][0]["mean"].as_f64().unwrap();
    assert!(best > 0.3, "best mean restoration {best}");
    // Heads with no role score near 0: the median head.
    let mut all: Vec<f64> = patch
        .iter()
        .flat_map(|l| {
            l["scores"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    assert!(median.abs() < 0.01, "median restoration {median}");
    // Both KLs are in the lines, and restoration is their ratio.
    let p = &patch[0]["patch"];
    let base = p["kl_base"].as_f64().unwrap();
    let kl = at(&p["kl_patched"], 1, 1);
    assert!((at(&patch[0]["scores"], 1, 1) - (1.0 - kl / base)).abs() < 1e-12);
    assert_eq!(patch[0]["mode"], "patch");
    assert_eq!(patch[0]["target"], "v");
    // Harmful and benign prompts differ in length: patched at the last position, and said.
    let last = patch
        .iter()
        .filter(|l| l["patch"]["positions"] == "last")
        .count();
    assert!(last > 0);
    assert!(
        stderr.contains(&format!("note: {last} pair(s) differ in token length")),
        "{stderr}"
    );
}

#[test]
fn patching_needs_its_source_and_only_ships_patches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails(
        sahara(d).args(["ships", "--mode", "patch"]),
        &["--source-data"],
    );
    fails(
        sahara(d).args([
            "ships",
            "--mode",
            "patch",
            "--target",
            "q",
            "--source-data",
            "builtin:benign",
        ]),
        &["takes target v"],
    );
    fails(
        sahara(d).args(["ships", "--source-data", "builtin:benign"]),
        &["--mode patch"],
    );
    let two = d.join("two.txt");
    std::fs::write(&two, "how do i bake bread ?\nhow do i plant a tree ?\n").unwrap();
    fails(
        sahara(d)
            .args(["ships", "--mode", "patch", "--limit", "3", "--source-data"])
            .arg(&two),
        &["has 2 prompts for 3 queries"],
    );
    fails(
        sahara(d).args(["eval", "--mode", "patch", "--ablate", "2:4"]),
        &["only `sahara ships --source-data FILE` patches heads"],
    );
    fails(
        sahara(d)
            .args([
                "surgery",
                "--model",
                "builtin:organism",
                "--mode",
                "patch",
                "--ablate",
                "2:4",
                "--out",
            ])
            .arg(d.join("m")),
        &["cannot be folded"],
    );
}

#[test]
fn eval_reports_the_perplexity_cost_of_the_planted_head() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("e.jsonl");
    let stdout = ok(sahara(d)
        .args([
            "eval",
            "--ablate",
            "2:4",
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
        ])
        .args(["--perplexity", "builtin:organism-chats", "--quiet", "--out"])
        .arg(&out));
    assert!(stdout.contains("perplexity"), "{stdout}");
    let s = read(&d.join("e.jsonl.summary.json"));
    let conds = s["conditions"].as_array().unwrap();
    let p0 = &conds[0]["perplexity"];
    let p1 = &conds[1]["perplexity"];
    assert_eq!(p0["text"], "builtin:organism-chats");
    assert_eq!(p0["ratio"], 1.0);
    let (a, b) = (
        p0["perplexity"].as_f64().unwrap(),
        p1["perplexity"].as_f64().unwrap(),
    );
    assert!(a > 1.0 && b > 1.0, "{a} {b}");
    assert!((p1["ratio"].as_f64().unwrap() - b / a).abs() < 1e-12);
    assert_eq!(p0["tokens"], p1["tokens"]);
    // The organism's window is its context, 128 positions.
    assert_eq!(p0["window"], 127);
    // A file works the same way; a missing one fails before any generation.
    fails(
        sahara(d)
            .args(["eval", "--limit", "2", "--perplexity"])
            .arg(d.join("missing.txt")),
        &["missing.txt"],
    );
    fails(
        sahara(d).args(["eval", "--limit", "2", "--perplexity", "builtin:nope"]),
        &["builtin:constitution"],
    );
}
