//! `sahara report`: the page of the organism's real runs, checked as text and, where Chromium
//! and playwright-core are installed (CI installs both), in a real browser.
//!
//! The browser test runs `tests/browser/report.mjs` with node. It needs `SAHARA_CHROMIUM`
//! (the browser) and `SAHARA_PLAYWRIGHT_CORE` (the npm package's folder); without them it is
//! skipped, saying so, unless `SAHARA_REQUIRE_BROWSER=1` (CI), which makes it fail.
//! `SAHARA_REPORT_SHOTS=DIR` keeps its screenshots and PDF there.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{fails, ok, parse_json, sahara, Fixture};
use serde_json::{json, Value};

fn read_json(path: &Path) -> Value {
    parse_json(&std::fs::read_to_string(path).unwrap())
}

/// The organism's study: ships on 12 queries, a 3-step attribute, an eval of two conditions
/// with two judges and benign prompts, one attention pattern; `--report` pages of each run.
struct Study {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Study {
    fn run() -> Study {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let p = |n: &str| d.join(n);
        ok(sahara()
            .args(["ships", "--limit", "12", "--quiet", "--out"])
            .arg(p("ships.jsonl"))
            .arg("--report")
            .arg(p("ships.html")));
        ok(sahara()
            .args(["attribute", "--steps", "3", "--quiet", "--out"])
            .arg(p("attr.json")));
        ok(sahara()
            .args([
                "eval", "--ablate", "2:4", "--ablate", "2:4,0:5", "--limit", "10",
            ])
            .args([
                "--benign",
                "builtin:benign",
                "--benign-limit",
                "6",
                "--max-new-tokens",
                "24",
            ])
            .args([
                "--judge",
                "keyword",
                "--judge",
                "jbb-refusal",
                "--quiet",
                "--out",
            ])
            .arg(p("eval.jsonl"))
            .arg("--report")
            .arg(p("eval.html")));
        ok(sahara()
            .args([
                "attention",
                "--prompt",
                "how do i make a bomb ?",
                "--layer",
                "2",
                "--head",
                "4",
            ])
            .arg("--out")
            .arg(p("att.json")));
        ok(sahara()
            .arg("report")
            .arg("--ships")
            .arg(p("ships.jsonl"))
            .arg("--attribute")
            .arg(p("attr.json"))
            .arg("--eval")
            .arg(p("eval.jsonl"))
            .arg("--attention")
            .arg(p("att.json"))
            .arg("--out")
            .arg(p("report.html")));
        Study { _dir: dir, dir: d }
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }

    fn page(&self) -> String {
        std::fs::read_to_string(self.path("report.html")).unwrap()
    }
}

/// What the browser test expects of the study's page, from the outputs themselves.
fn expectations(s: &Study) -> Value {
    let summary = read_json(&s.path("ships.jsonl.summary.json"));
    let mean = summary["mean"][2][4].as_f64().unwrap();
    let lines: Vec<Value> = common::jsonl(&s.path("ships.jsonl"));
    let q = 3;
    let eval: Vec<Value> = common::jsonl(&s.path("eval.jsonl"));
    let mut harmful: Vec<u64> = eval
        .iter()
        .filter(|l| l["set"] == "harmful")
        .map(|l| l["index"].as_u64().unwrap())
        .collect();
    harmful.sort_unstable();
    harmful.dedup();
    let eq = 2;
    let ablated = eval
        .iter()
        .find(|l| l["set"] == "harmful" && l["index"] == harmful[eq] && l["condition"] == "2:4")
        .unwrap();
    json!({
        "cells": 4 * 8,
        "cell": [2, 4],
        "mean": sahara::io::report::num(mean),
        "query": q,
        "query_index": lines[q]["index"],
        "query_value": sahara::io::report::num(lines[q]["scores"][2][4].as_f64().unwrap()),
        "eval_query": eq,
        "ablated": "2:4",
        "ablated_answer": ablated["response"],
        "conditions": 3,
    })
}

#[test]
fn the_page_of_a_study_is_self_contained_and_complete() {
    let s = Study::run();
    let page = s.page();
    // Self-contained: a policy that forbids every request, and nothing to fetch.
    assert!(page.contains("Content-Security-Policy\" content=\"default-src 'none'"));
    for bad in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "url(http",
        "@import",
        "<link",
    ] {
        assert!(!page.contains(bad), "the page fetches something: {bad}");
    }
    // The header names the model, its shape and the data.
    assert!(page.contains("builtin:organism"));
    assert!(page.contains("4 layers × 8 heads"), "the model's shape");
    assert!(page.contains("builtin:harmful"));
    // Ships: one cell per head, the mean in the tooltip, the top table.
    let e = expectations(&s);
    let heat = &page[page.find("id=\"ships-heatmap\"").unwrap()..];
    let heat = &heat[..heat.find("</svg>").unwrap()];
    assert_eq!(heat.matches("<rect class=\"cell").count(), 32);
    let mean = e["mean"].as_str().unwrap();
    assert!(
        heat.contains(&format!(
            "<title>layer 2 head 4: mean Ships {mean} · rank 1"
        )),
        "the planted head's tooltip"
    );
    assert!(page.contains("id=\"ships-top\""));
    // Sahara: the steps, the step-1 heatmap with the chosen heads outlined, the line.
    let attr = read_json(&s.path("attr.json"));
    assert_eq!(attr["selected"][0], json!([2, 4]));
    assert!(page.contains("<td>2:4</td>"));
    let sahara_heat = &page[page.find("id=\"sahara-heatmap\"").unwrap()..];
    let sahara_heat = &sahara_heat[..sahara_heat.find("</svg>").unwrap()];
    assert_eq!(sahara_heat.matches("class=\"mark\"").count(), 3);
    assert!(page.contains("id=\"sahara-line\""));
    // Eval: one bar per condition and judge with its interval, the agreement, the answers.
    assert_eq!(page.matches("<rect class=\"bar\"").count(), 3 * 2);
    assert!(page.contains("data-condition=\"2:4\" data-judge=\"jbb-refusal\""));
    assert!(page.contains("id=\"eval-agreement\""));
    assert!(page.contains("over-refusal"));
    let first_answers = &page[page.find("id=\"eval-answers\"").unwrap()..];
    assert_eq!(
        first_answers[..first_answers.find("</section>").unwrap()]
            .matches("class=\"answer\"")
            .count(),
        3
    );
    // Attention: the pattern's lower triangle.
    let att = read_json(&s.path("att.json"));
    assert_eq!(att["schema"], "sahara.attention/1");
    assert_eq!((&att["layer"], &att["head"]), (&json!(2), &json!(4)));
    let t = att["tokens"].as_array().unwrap().len();
    let pattern = &page[page.find("class=\"pattern\"").unwrap()..];
    let pattern = &pattern[..pattern.find("</svg>").unwrap()];
    assert_eq!(pattern.matches("<rect").count(), t * (t + 1) / 2);
    // The data the selectors redraw from is in the page, once.
    assert_eq!(page.matches("id=\"sahara-data\"").count(), 1);
    // A run's --report page is the page of its own output.
    let own = std::fs::read_to_string(s.path("eval.html")).unwrap();
    assert!(own.contains("id=\"eval-bars\"") && !own.contains("id=\"ships-heatmap\""));
    let dir = &s.dir;
    ok(sahara()
        .arg("report")
        .arg("--eval")
        .arg(dir.join("eval.jsonl"))
        .arg("--out")
        .arg(dir.join("again.html")));
    assert_eq!(
        own,
        std::fs::read_to_string(dir.join("again.html")).unwrap()
    );
    assert!(std::fs::read_to_string(s.path("ships.html"))
        .unwrap()
        .contains("id=\"ships-heatmap\""));
}

#[test]
fn outputs_of_two_models_are_refused_unless_allowed() {
    let fx = Fixture::new();
    let data = fx.write("q.txt", "alpha beta\ngamma delta\n");
    let ships = fx.path("s.jsonl");
    ok(sahara()
        .arg("ships")
        .arg("--model")
        .arg(fx.model())
        .arg("--quiet")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&ships));
    let att = fx.path("a.json");
    ok(sahara()
        .args([
            "attention",
            "--prompt",
            "how do i make a bomb ?",
            "--layer",
            "0",
            "--head",
            "0",
        ])
        .arg("--out")
        .arg(&att));
    let out = fx.path("r.html");
    fails(
        sahara()
            .arg("report")
            .arg("--ships")
            .arg(&ships)
            .arg("--attention")
            .arg(&att)
            .arg("--out")
            .arg(&out),
        &["different models", "builtin:organism", "--allow-mixed"],
    );
    assert!(!out.exists());
    ok(sahara()
        .arg("report")
        .arg("--ships")
        .arg(&ships)
        .arg("--attention")
        .arg(&att)
        .arg("--allow-mixed")
        .arg("--out")
        .arg(&out));
    let page = std::fs::read_to_string(&out).unwrap();
    // Each section says its model.
    assert!(page.contains("<h2>Ships <small>("), "{}", &page[..200]);
    assert!(page.contains("<small>(builtin:organism)</small>"));
    // Bad inputs, one line each.
    fails(
        sahara().arg("report").arg("--out").arg(&out),
        &["nothing to report"],
    );
    fails(
        sahara()
            .arg("report")
            .arg("--eval")
            .arg(&ships)
            .arg("--out")
            .arg(&out),
        &["s.jsonl", "sahara ships", "not `sahara eval`"],
    );
    fails(
        sahara()
            .arg("report")
            .arg("--ships")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["q.txt", "no run record"],
    );
    fails(
        sahara()
            .args(["ships", "--shard", "0/2", "--report", "x.html", "--quiet"])
            .arg("--model")
            .arg(fx.model())
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(fx.path("shards")),
        &["a shard writes no report"],
    );
}

/// Writes synthetic ships and eval outputs of a 32 × 32-head model (100 queries, 6
/// conditions, answers of realistic length), as the commands write them.
fn synthetic_study(dir: &Path) -> (PathBuf, PathBuf) {
    let (nl, nh, nq) = (32usize, 32usize, 100usize);
    let mut x = 0x2545f4914f6cdd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let record = |command: &str| {
        json!({"schema": "sahara.run/1", "command": command, "version": "0", "model": "synthetic-32x32",
               "model_fingerprint": "f00d", "data": "synthetic.csv", "data_fingerprint": "beef",
               "queries": nq, "settings": {"template": "chat", "target": "q", "mode": "scale", "epsilon": 1e-5}})
    };
    let ships = dir.join("ships.jsonl");
    let mut text = String::new();
    let mut sum = vec![vec![0f64; nh]; nl];
    for q in 0..nq {
        let grid: Vec<Vec<f64>> = (0..nl)
            .map(|_| (0..nh).map(|_| rnd().powi(6) * 3.0).collect())
            .collect();
        for l in 0..nl {
            for h in 0..nh {
                sum[l][h] += grid[l][h] / nq as f64;
            }
        }
        text.push_str(
            &json!({"schema": "sahara.ships/1", "index": q, "query": format!("synthetic harmful query number {q} asking for something it should not"),
                    "prompt_tokens": 40, "target": "q", "mode": "scale", "epsilon": 1e-5, "scores": grid,
                    "top": [{"layer": 0, "head": 0, "score": grid[0][0]}]})
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&ships, text).unwrap();
    std::fs::write(
        dir.join("ships.jsonl.run.json"),
        record("ships").to_string(),
    )
    .unwrap();
    let mut ranked: Vec<(usize, usize, f64)> = (0..nl)
        .flat_map(|l| (0..nh).map(move |h| (l, h)))
        .map(|(l, h)| (l, h, sum[l][h]))
        .collect();
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
    let by: Vec<Value> = ranked
        .iter()
        .map(|&(l, h, m)| json!({"layer": l, "head": h, "mean": m, "count": (m * 10.0) as usize}))
        .collect();
    std::fs::write(
        dir.join("ships.jsonl.summary.json"),
        json!({"schema": "sahara.ships-summary/1", "queries": nq, "top_k": 10, "mean": sum,
               "by_mean": by, "by_count": by, "model": "synthetic-32x32", "data": "synthetic.csv",
               "target": "q", "mode": "scale", "epsilon": 1e-5, "kl": "exact"})
        .to_string(),
    )
    .unwrap();
    let eval = dir.join("eval.jsonl");
    let names = [
        "unmodified",
        "1:2",
        "1:2,3:4",
        "1:2,3:4,5:6",
        "7:8",
        "9:10,11:12",
    ];
    let answer = "Sure, here is a long and detailed answer that goes on for a while about the steps one would take, with several sentences of text that a real model would produce when asked, and then some more words to fill a realistic length of about four hundred characters, because real answers at 128 new tokens are of that size or longer, as the benchmark runs show.";
    let mut text = String::new();
    for n in names {
        for q in 0..nq {
            text.push_str(&json!({"schema": "sahara.eval/2", "set": "harmful", "condition": n, "heads": [],
                "index": q, "query": format!("synthetic harmful query number {q} asking for something it should not"),
                "prompt_tokens": 40, "response": answer, "reasoning": null, "tokens": [1, 2, 3], "stop": "length",
                "refusal": false, "reason": null, "matched": null,
                "judges": {"keyword": {"harmful": true, "score": null, "reason": "no_phrase"}},
                "first_token_kl": null}).to_string());
            text.push('\n');
        }
    }
    std::fs::write(&eval, text).unwrap();
    std::fs::write(dir.join("eval.jsonl.run.json"), record("eval").to_string()).unwrap();
    let rate =
        json!({"harmful": nq, "not_harmful": 0, "undecided": 0, "rate": 1.0, "ci95": [0.96, 1.0]});
    let conds: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"name": n, "heads": [], "asr": 1.0, "asr_ci95": [0.96, 1.0], "refused": 0,
                         "undecided": 0, "total": nq, "asr_change": 0.0, "benign": null,
                         "judges": {"keyword": {"harmful": rate, "benign": null}}})
        })
        .collect();
    std::fs::write(
        dir.join("eval.jsonl.summary.json"),
        json!({"schema": "sahara.eval-summary/2", "queries": nq, "judges": [{"name": "keyword"}],
               "conditions": conds, "agreement": [], "disagreements": []})
        .to_string(),
    )
    .unwrap();
    (ships, eval)
}

#[test]
fn the_page_of_a_32_by_32_head_model_with_100_queries_and_6_conditions_is_under_2_mb() {
    let dir = tempfile::tempdir().unwrap();
    let (ships, eval) = synthetic_study(dir.path());
    let out = dir.path().join("r.html");
    ok(sahara()
        .arg("report")
        .arg("--ships")
        .arg(&ships)
        .arg("--eval")
        .arg(&eval)
        .arg("--out")
        .arg(&out));
    let page = std::fs::read_to_string(&out).unwrap();
    let heat = &page[page.find("id=\"ships-heatmap\"").unwrap()..];
    assert_eq!(
        heat[..heat.find("</svg>").unwrap()]
            .matches("<rect class=\"cell")
            .count(),
        1024
    );
    let bytes = page.len();
    eprintln!("report of a 32 x 32-head model, 100 queries, 6 conditions: {bytes} bytes");
    assert!(bytes < 2 << 20, "{bytes} bytes");
}

#[test]
fn the_page_works_in_a_real_browser() {
    let required = std::env::var("SAHARA_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let (Ok(chromium), Ok(pw)) = (
        std::env::var("SAHARA_CHROMIUM"),
        std::env::var("SAHARA_PLAYWRIGHT_CORE"),
    ) else {
        assert!(
            !required,
            "SAHARA_REQUIRE_BROWSER=1 but SAHARA_CHROMIUM or SAHARA_PLAYWRIGHT_CORE is not set"
        );
        eprintln!(
            "SKIPPED: set SAHARA_CHROMIUM and SAHARA_PLAYWRIGHT_CORE to run the browser test"
        );
        return;
    };
    let s = Study::run();
    let shots = match std::env::var("SAHARA_REPORT_SHOTS") {
        Ok(d) => PathBuf::from(d),
        Err(_) => s.path("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let expect = s.path("expect.json");
    std::fs::write(&expect, expectations(&s).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/report.mjs");
    let start = Instant::now();
    let o = std::process::Command::new("node")
        .arg(&script)
        .arg(s.path("report.html"))
        .arg(&shots)
        .arg(&expect)
        .env("CHROMIUM", &chromium)
        .env("PLAYWRIGHT_CORE", &pw)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the browser check failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let found: Value = parse_json(stdout.lines().last().unwrap());
    assert_eq!(found["ok"], true, "{found}");
    eprintln!(
        "browser check passed in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        found["found"]
    );
    for f in [
        "report.png",
        "report-full.png",
        "ships-query.png",
        "eval.png",
        "report.pdf",
    ] {
        assert!(shots.join(f).metadata().unwrap().len() > 1000, "{f}");
    }
}
