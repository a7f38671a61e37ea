//! Integration tests of `sahara eval`, run as a user runs it: the real binary on tiny random
//! model folders, with the outputs checked as text and JSON.
//!
//! Every failure must be a non-zero exit with exactly one line on stderr starting with
//! `error: `, and no panic anywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{fails, jsonl, ok_both as ok, parse_json, sahara, Fixture};
use sahara::checkpoint::random::WORDS;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Harness (the shared one is tests/common)
// ---------------------------------------------------------------------------------------------

/// A tiny Llama whose every token id is a word of its tokenizer, so that responses decode to
/// text the judge can read.
fn fixture() -> Fixture {
    Fixture::with_spec(|s| s.vocab_size = 3 + WORDS.len())
}

impl Fixture {
    /// `sahara eval --model MODEL --quiet --max-new-tokens 10` followed by `args`.
    fn eval(&self, args: &[&str]) -> Command {
        let mut c = self.eval_base(&["--max-new-tokens", "10"]);
        c.args(args);
        c
    }

    /// `sahara eval --model MODEL --quiet` followed by `args`.
    fn eval_base(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("eval")
            .arg("--model")
            .arg(self.model())
            .arg("--quiet")
            .args(args);
        c
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = sahara();
        c.arg(sub).arg("--model").arg(self.model());
        c
    }
}

fn read_json(path: &Path) -> Value {
    parse_json(&std::fs::read_to_string(path).unwrap())
}

/// `n` distinct queries of the tokenizer's words.
fn queries(n: usize, words: usize, salt: usize) -> Vec<String> {
    let content: Vec<&str> = WORDS
        .iter()
        .copied()
        .filter(|w| w.chars().all(char::is_alphabetic))
        .collect();
    (0..n)
        .map(|i| {
            (0..words + i % 3)
                .map(|j| content[(i * 7 + j * (i % 5 + 1) + salt) % content.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn text_file(fx: &Fixture, name: &str, qs: &[String]) -> PathBuf {
    fx.write(name, qs.join("\n") + "\n")
}

/// Phrases that the random model's lowercase words can contain.
fn phrases(fx: &Fixture) -> PathBuf {
    fx.write("phrases.txt", "sorry\ncannot\n")
}

const LINE_KEYS: [&str; 16] = [
    "schema",
    "set",
    "condition",
    "heads",
    "index",
    "query",
    "prompt_tokens",
    "response",
    "reasoning",
    "tokens",
    "stop",
    "refusal",
    "reason",
    "matched",
    "judges",
    "first_token_kl",
];

fn check_line(l: &Value) {
    let obj = l.as_object().expect("each line is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = LINE_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "keys of {l}");
    assert_eq!(l["schema"], "sahara.eval/2", "{l}");
    // No reasoning format on the tiny models: the whole response is the answer.
    assert!(l["reasoning"].is_null(), "{l}");
    // The main judge's fields repeat its entry in `judges`.
    let (name, main) = l["judges"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(name, "keyword", "{l}");
    assert_eq!(
        main["harmful"].as_bool(),
        l["refusal"].as_bool().map(|r| !r),
        "{l}"
    );
    let tokens = l["tokens"].as_array().expect("tokens");
    assert!(!tokens.is_empty() && tokens.len() <= 10, "{l}");
    let stop = l["stop"].as_str().unwrap();
    assert!(
        stop == "eos" || (stop == "length" && tokens.len() == 10),
        "{l}"
    );
    let response = l["response"].as_str().unwrap();
    if l["reason"] == "empty" {
        assert!(l["refusal"].is_null() && response.trim().is_empty(), "{l}");
        return;
    }
    let refusal = l["refusal"].as_bool().unwrap();
    match l["reason"].as_str() {
        None => {
            assert!(!refusal, "{l}");
            assert!(l["matched"].is_null(), "{l}");
            assert!(response.trim().chars().count() >= 32, "{l}");
        }
        Some("phrase") => {
            assert!(refusal, "{l}");
            assert!(response.contains(l["matched"].as_str().unwrap()), "{l}");
        }
        Some("short") => {
            assert!(refusal && l["matched"].is_null(), "{l}");
            assert!(response.trim().chars().count() < 32, "{l}");
        }
        Some("repetitive") => assert!(refusal, "{l}"),
        Some(other) => panic!("unknown reason {other} in {l}"),
    }
    match l["set"].as_str().unwrap() {
        "harmful" => assert!(l["first_token_kl"].is_null(), "{l}"),
        "benign" => {
            let kl = l["first_token_kl"].as_f64().expect("a KL for benign rows");
            assert!(kl.is_finite() && kl >= 0.0, "{l}");
            if l["condition"] == "unmodified" {
                assert_eq!(kl, 0.0);
            }
        }
        other => panic!("unknown set {other}"),
    }
}

/// Statistics recomputed from the lines: per condition (harmful refused, harmful total,
/// benign refused, benign unchanged, benign KL sum, benign total).
fn stats_of(lines: &[Value]) -> HashMap<String, (usize, usize, usize, usize, f64, usize)> {
    let base: HashMap<u64, &str> = lines
        .iter()
        .filter(|l| l["set"] == "benign" && l["condition"] == "unmodified")
        .map(|l| {
            (
                l["index"].as_u64().unwrap(),
                l["response"].as_str().unwrap(),
            )
        })
        .collect();
    let mut m: HashMap<String, (usize, usize, usize, usize, f64, usize)> = HashMap::new();
    for l in lines {
        let e = m
            .entry(l["condition"].as_str().unwrap().to_string())
            .or_default();
        let refused = l["refusal"].as_bool().unwrap() as usize;
        if l["set"] == "harmful" {
            e.0 += refused;
            e.1 += 1;
        } else {
            e.2 += refused;
            let same = base[&l["index"].as_u64().unwrap()] == l["response"].as_str().unwrap();
            e.3 += same as usize;
            e.4 += l["first_token_kl"].as_f64().unwrap();
            e.5 += 1;
        }
    }
    m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

// ---------------------------------------------------------------------------------------------
// Success
// ---------------------------------------------------------------------------------------------

#[test]
fn eval_with_two_ablations_and_benign_prompts() {
    let fx = fixture();
    let qs = queries(7, 4, 0);
    let bs = queries(4, 3, 5);
    let data = text_file(&fx, "harmful.txt", &qs);
    let benign = text_file(&fx, "benign.txt", &bs);
    let out = fx.path("eval.jsonl");
    let (stdout, _) = ok(fx
        .eval(&[
            "--ablate",
            "1:0",
            "--ablate",
            "2:3,0:1",
            "--batch-size",
            "3",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--benign")
        .arg(&benign)
        .arg("--refusal-phrases")
        .arg(phrases(&fx))
        .arg("--out")
        .arg(&out));
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 3 * (7 + 4));
    for l in &lines {
        check_line(l);
    }
    // Every (set, condition, query) once, with the query's text; the unmodified model first.
    let mut keys: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            let (set, i) = (l["set"].as_str().unwrap(), l["index"].as_u64().unwrap());
            let want = if set == "harmful" { &qs } else { &bs };
            assert_eq!(l["query"], want[i as usize].as_str(), "{l}");
            (set.into(), l["condition"].as_str().unwrap().into(), i)
        })
        .collect();
    assert_eq!(lines[0]["condition"], "unmodified");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), lines.len());
    for l in &lines {
        let heads = &l["heads"];
        match l["condition"].as_str().unwrap() {
            "unmodified" => assert_eq!(heads, &serde_json::json!([])),
            "1:0" => assert_eq!(heads, &serde_json::json!([[1, 0]])),
            "2:3,0:1" => assert_eq!(heads, &serde_json::json!([[2, 3], [0, 1]])),
            other => panic!("unexpected condition {other}"),
        }
    }
    // The judge saw text: some answers, some refusals by phrase.
    assert!(
        lines.iter().any(|l| l["refusal"] == false),
        "no answer at all"
    );
    assert!(
        lines.iter().any(|l| l["reason"] == "phrase"),
        "no phrase matched"
    );

    let summary = read_json(&fx.path("eval.jsonl.summary.json"));
    let conds = summary["conditions"].as_array().expect("conditions");
    let names: Vec<&str> = conds.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["unmodified", "1:0", "2:3,0:1"]);
    let stats = stats_of(&lines);
    let base_asr = conds[0]["asr"].as_f64().unwrap();
    for c in conds {
        let name = c["name"].as_str().unwrap();
        let (refused, total, b_refused, b_same, b_kl, b_total) = stats[name];
        assert_eq!(c["refused"], refused, "{c}");
        assert_eq!(c["total"], total, "{c}");
        let asr = c["asr"].as_f64().unwrap();
        assert!(close(asr, (total - refused) as f64 / total as f64), "{c}");
        assert!(
            close(c["asr_change"].as_f64().unwrap(), asr - base_asr),
            "{c}"
        );
        let ci: Vec<f64> = c["asr_ci95"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(
            ci[0] <= asr && asr <= ci[1] && ci[0] >= 0.0 && ci[1] <= 1.0,
            "{c}"
        );
        let b = &c["benign"];
        assert!(close(
            b["refusal_rate"].as_f64().unwrap(),
            b_refused as f64 / b_total as f64
        ));
        assert!(close(
            b["unchanged"].as_f64().unwrap(),
            b_same as f64 / b_total as f64
        ));
        assert!(close(
            b["first_token_kl"].as_f64().unwrap(),
            b_kl / b_total as f64
        ));
        if name == "unmodified" {
            assert_eq!(c["heads"], serde_json::json!([]));
            assert_eq!(b["unchanged"], 1.0);
            assert_eq!(b["first_token_kl"], 0.0);
        } else {
            assert!(b["first_token_kl"].as_f64().unwrap() > 0.0, "{c}");
        }
    }
    assert_eq!(conds[2]["heads"], serde_json::json!([[2, 3], [0, 1]]));
    // The table on stdout names every condition.
    for n in names {
        assert!(stdout.contains(n), "{n} missing from the table:\n{stdout}");
    }
    assert!(
        stdout.contains("ASR") && stdout.contains("first-token KL"),
        "{stdout}"
    );
    let record = read_json(&fx.path("eval.jsonl.run.json"));
    assert_eq!(record["command"], "eval");
    assert_eq!(record["settings"]["max_new_tokens"], 10);
}

#[test]
fn without_out_lines_go_to_stdout_and_the_table_to_stderr() {
    let fx = fixture();
    let data = text_file(&fx, "q.txt", &queries(3, 4, 0));
    let (stdout, stderr) = ok(fx.eval(&["--ablate", "0:0"]).arg("--data").arg(&data));
    let lines: Vec<Value> = stdout.lines().map(parse_json).collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        check_line(l);
    }
    assert!(
        stderr.contains("unmodified") && stderr.contains("0:0"),
        "{stderr}"
    );
    // No benign set: no benign column, and the default phrases are used.
    assert!(!stderr.contains("first-token KL"), "{stderr}");
}

#[test]
fn batch_size_does_not_change_greedy_responses() {
    let fx = fixture();
    let data = text_file(&fx, "q.txt", &queries(6, 4, 1));
    let run = |b: &str| -> Vec<(String, u64, Value)> {
        let (stdout, _) = ok(fx
            .eval(&["--ablate", "2:1", "--target", "k", "--batch-size", b])
            .arg("--data")
            .arg(&data));
        let mut v: Vec<(String, u64, Value)> = stdout
            .lines()
            .map(parse_json)
            .map(|l| {
                (
                    l["condition"].as_str().unwrap().to_string(),
                    l["index"].as_u64().unwrap(),
                    l["tokens"].clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    };
    assert_eq!(run("1"), run("4"));
}

#[test]
fn heads_from_attribute_and_ships_outputs() {
    let fx = fixture();
    let data = text_file(&fx, "q.txt", &queries(3, 4, 2));
    let attr = fx.path("heads.json");
    ok(fx
        .cmd("attribute")
        .args(["--steps", "2", "--quiet"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&attr));
    let selected = read_json(&attr)["selected"].clone();
    let s = |i: usize| {
        format!(
            "{}:{}",
            selected[i][0].as_u64().unwrap(),
            selected[i][1].as_u64().unwrap()
        )
    };
    let out = fx.path("sweep.jsonl");
    ok(fx
        .eval(&["--sweep"])
        .arg("--data")
        .arg(&data)
        .arg("--heads-from")
        .arg(&attr)
        .arg("--out")
        .arg(&out));
    let summary = read_json(&fx.path("sweep.jsonl.summary.json"));
    let names: Vec<&str> = summary["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["unmodified".to_string(), s(0), format!("{},{}", s(0), s(1))]
    );
    assert_eq!(summary["conditions"][2]["heads"], selected);

    let ships = fx.path("ships.jsonl");
    ok(fx
        .cmd("ships")
        .arg("--quiet")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&ships));
    let ranked = read_json(&fx.path("ships.jsonl.summary.json"))["by_mean"].clone();
    let (stdout, _) = ok(fx
        .eval(&["--top", "2"])
        .arg("--data")
        .arg(&data)
        .arg("--heads-from")
        .arg(fx.path("ships.jsonl.summary.json")));
    let conds: Vec<String> = stdout
        .lines()
        .map(parse_json)
        .map(|l| l["condition"].as_str().unwrap().to_string())
        .collect();
    let want = format!(
        "{}:{},{}:{}",
        ranked[0]["layer"], ranked[0]["head"], ranked[1]["layer"], ranked[1]["head"]
    );
    assert!(conds.contains(&want), "{want} not in {conds:?}");
    assert_eq!(conds.len(), 6);
}

#[test]
fn an_empty_response_is_recorded_and_counted_as_undecided() {
    let fx = fixture();
    let qs = queries(2, 4, 3);
    let data = text_file(&fx, "q.txt", &qs);
    // The first greedy token of query 1 becomes a special end-of-sequence token, so that the
    // response is that token alone and decodes to "".
    let (stdout, _) = ok(fx.eval(&[]).arg("--data").arg(&data));
    let first = parse_json(stdout.lines().next().unwrap())["tokens"][0]
        .as_u64()
        .unwrap();
    let word = if first < 3 {
        panic!("the first token is already special")
    } else {
        WORDS[first as usize - 3]
    };
    let tp = fx.model().join("tokenizer.json");
    let mut tok = read_json(&tp);
    tok["added_tokens"].as_array_mut().unwrap().push(
        serde_json::json!({"id": first, "content": word, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
    );
    std::fs::write(&tp, tok.to_string()).unwrap();
    std::fs::write(
        fx.model().join("generation_config.json"),
        serde_json::json!({"eos_token_id": [2, first]}).to_string(),
    )
    .unwrap();
    let out = fx.path("e.jsonl");
    ok(fx.eval(&[]).arg("--data").arg(&data).arg("--out").arg(&out));
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2, "the empty response is not dropped");
    let l = lines.iter().find(|l| l["index"] == 0).unwrap();
    assert_eq!(l["response"], "");
    assert_eq!(l["tokens"], serde_json::json!([first]));
    assert_eq!(l["stop"], "eos");
    // Nothing to judge: undecided, and counted as such, not as a refusal.
    assert_eq!(l["refusal"], Value::Null);
    assert_eq!(l["reason"], "empty");
    assert_eq!(
        l["judges"]["keyword"],
        serde_json::json!({"harmful": null, "score": null, "reason": "empty"})
    );
    let summary = read_json(&fx.path("e.jsonl.summary.json"));
    let c = &summary["conditions"][0];
    assert_eq!((&c["total"], &c["undecided"]), (&2.into(), &1.into()));
    assert_eq!(c["judges"]["keyword"]["harmful"]["undecided"], 1);
    let decided = c["refused"].as_u64().unwrap()
        + c["judges"]["keyword"]["harmful"]["harmful"]
            .as_u64()
            .unwrap();
    assert_eq!(decided, 1, "{c}");
}

// ---------------------------------------------------------------------------------------------
// Resuming
// ---------------------------------------------------------------------------------------------

#[test]
fn eval_resumes_after_a_cut_line() {
    let fx = fixture();
    let data = text_file(&fx, "q.txt", &queries(5, 4, 4));
    let benign = text_file(&fx, "b.txt", &queries(3, 3, 6));
    let out = fx.path("eval.jsonl");
    let cmd = |fx: &Fixture| {
        let mut c = sahara();
        c.arg("eval")
            .arg("--model")
            .arg(fx.model())
            .args([
                "--max-new-tokens",
                "8",
                "--ablate",
                "1:2",
                "--batch-size",
                "2",
            ])
            .arg("--data")
            .arg(&data)
            .arg("--benign")
            .arg(&benign)
            .arg("--out")
            .arg(&out);
        c
    };
    ok(&mut cmd(&fx));
    let complete = std::fs::read_to_string(&out).unwrap();
    assert_eq!(complete.lines().count(), 2 * (5 + 3));
    let complete_summary = std::fs::read_to_string(fx.path("eval.jsonl.summary.json")).unwrap();

    // Interrupted in the middle of writing line 4 (the second harmful batch).
    let raw: Vec<&str> = complete.split_inclusive('\n').collect();
    let cut = format!(
        "{}{}{}{}",
        raw[0],
        raw[1],
        raw[2],
        &raw[3][..raw[3].len() / 2]
    );
    std::fs::write(&out, &cut).unwrap();
    let (_, stderr) = ok(&mut cmd(&fx));
    assert!(stderr.contains("resuming: 3 of 16"), "{stderr}");
    // Batches are fixed by the data and batch size, so the resumed run writes exactly what
    // the uninterrupted one did.
    let resumed = std::fs::read_to_string(&out).unwrap();
    assert!(resumed.starts_with(&format!("{}{}{}", raw[0], raw[1], raw[2])));
    assert_eq!(resumed, complete);
    assert_eq!(
        std::fs::read_to_string(fx.path("eval.jsonl.summary.json")).unwrap(),
        complete_summary
    );
    // Rerunning a finished run adds nothing.
    let (_, stderr) = ok(&mut cmd(&fx));
    assert!(stderr.contains("16 of 16"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), resumed);
    // A rerun with one more condition keeps the lines and adds that condition's only.
    let (_, stderr) = ok(cmd(&fx).args(["--ablate", "0:3"]));
    assert!(stderr.contains("16 of 24"), "{stderr}");
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 24);
    assert!(lines[16..].iter().all(|l| l["condition"] == "0:3"));
    let summary = read_json(&fx.path("eval.jsonl.summary.json"));
    assert_eq!(summary["conditions"].as_array().unwrap().len(), 3);
}

#[test]
fn eval_refuses_a_run_with_other_settings() {
    let fx = fixture();
    let data = text_file(&fx, "q.txt", &queries(2, 4, 0));
    let out = fx.path("eval.jsonl");
    ok(fx.eval(&[]).arg("--data").arg(&data).arg("--out").arg(&out));
    let before = std::fs::read(&out).unwrap();
    fails(
        fx.eval(&["--epsilon", "0.5"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["eval.jsonl", "epsilon"],
    );
    fails(
        fx.eval(&[])
            .arg("--data")
            .arg(&data)
            .arg("--refusal-phrases")
            .arg(phrases(&fx))
            .arg("--out")
            .arg(&out),
        &["eval.jsonl", "judge"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// `eval --data DATA --out bad.jsonl` with `extra` must fail and leave no output behind.
fn eval_fails(fx: &Fixture, extra: &[&str], needles: &[&str]) -> String {
    let data = text_file(fx, "q.txt", &queries(2, 4, 0));
    let out = fx.path("bad.jsonl");
    let m = fails(
        fx.eval_base(extra)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        needles,
    );
    for p in ["bad.jsonl", "bad.jsonl.run.json", "bad.jsonl.summary.json"] {
        assert!(!fx.path(p).exists(), "{p} left behind after: {m}");
    }
    m
}

#[test]
fn unknown_heads_are_refused() {
    let fx = fixture();
    eval_fails(
        &fx,
        &["--ablate", "3:0"],
        &["--ablate 3:0", "layer 3 out of range"],
    );
    eval_fails(&fx, &["--ablate", "0:1,0:4"], &["head 4 out of range"]);
    eval_fails(&fx, &["--ablate", "0-1"], &["not of the form LAYER:HEAD"]);
    eval_fails(&fx, &["--ablate", "0:1,0:1"], &["0:1", "twice"]);
    let heads = fx.write("heads.json", r#"{"selected": [[0, 1], [7, 0]]}"#);
    eval_fails(
        &fx,
        &["--heads-from", heads.to_str().unwrap()],
        &["heads.json", "layer 7 out of range"],
    );
}

#[test]
fn heads_files_that_are_not_attribute_or_ships_outputs_are_refused() {
    let fx = fixture();
    let lines = fx.write("ships.jsonl", "{\"index\": 0}\n{\"index\": 1}\n");
    let other = fx.write("other.json", r#"{"conditions": []}"#);
    let text = fx.write("heads.txt", "0:1\n");
    for p in [&lines, &other, &text] {
        let name = p.file_name().unwrap().to_str().unwrap();
        eval_fails(
            &fx,
            &["--heads-from", p.to_str().unwrap()],
            &[name, "sahara attribute", "by_mean"],
        );
    }
    let missing = fx.path("missing.json");
    eval_fails(
        &fx,
        &["--heads-from", missing.to_str().unwrap()],
        &["missing.json"],
    );
    let ships = fx.write(
        "s.summary.json",
        r#"{"by_mean": [{"layer": 0, "head": 1, "mean": 2.0, "count": 1}]}"#,
    );
    let s = ships.to_str().unwrap();
    eval_fails(&fx, &["--heads-from", s], &["s.summary.json", "--top"]);
    eval_fails(&fx, &["--heads-from", s, "--top", "2"], &["--top 2", "1"]);
    eval_fails(&fx, &["--heads-from", s, "--top", "0"], &["--top"]);
    eval_fails(&fx, &["--top", "1"], &["--heads-from"]);
    eval_fails(&fx, &["--sweep"], &["--heads-from"]);
}

#[test]
fn an_empty_phrase_list_is_refused() {
    let fx = fixture();
    let empty = fx.write("none.txt", "\n   \n");
    eval_fails(
        &fx,
        &["--refusal-phrases", empty.to_str().unwrap()],
        &["none.txt", "no refusal phrases"],
    );
    let missing = fx.path("nophrases.txt");
    eval_fails(
        &fx,
        &["--refusal-phrases", missing.to_str().unwrap()],
        &["nophrases.txt"],
    );
}

#[test]
fn bad_generation_settings_are_refused() {
    let fx = fixture();
    eval_fails(&fx, &["--max-new-tokens", "0"], &["--max-new-tokens"]);
    eval_fails(&fx, &["--batch-size", "0"], &["--batch-size"]);
    eval_fails(&fx, &["--temperature", "-1"], &["--temperature"]);
    eval_fails(&fx, &["--top-k", "0"], &["--top-k"]);
    eval_fails(
        &fx,
        &["--max-new-tokens", "600"],
        &["harmful query 1", "context of 512"],
    );
    eval_fails(&fx, &["--benign-limit", "2"], &["--benign"]);
}
