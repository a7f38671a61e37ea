//! The model judges (`llamaguard:`, `harmbench:`, `strongreject:`): their prompts byte for
//! byte against the reference renderings of `fixtures/judges/prompts.json`, and their
//! probabilities and verdicts against transformers on the tiny judge models of
//! `fixtures/judge_models` (`python3 scripts/make_fixtures.py judge_models`). The tiny models
//! use the committed fixtures' tokenizers (`fixtures/llama3`: Llama-3-style byte-level BPE;
//! `fixtures/llama_gqa`: Llama-2-style SentencePiece; `fixtures/gemma`: Gemma-style
//! SentencePiece) with the verdict words added as tokens; the real judges' tokenizers
//! (Llama 2, Llama 3, Gemma) are gated and not available here.

use std::path::PathBuf;

use sahara::io::prompt::ChatTemplate;
use sahara::methods::judge::model::{
    harmbench_prompt, llamaguard_form, llamaguard_prompt, strongreject_prompt, ContentForm,
    JudgeModelOptions, ModelJudge,
};
use sahara::methods::judge::{Judge, Panel, Reason};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(p: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn prompts() -> Value {
    read(fixtures().join("judges/prompts.json"))
}

fn pairs(p: &Value) -> Vec<(String, String)> {
    p["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["behavior"].as_str().unwrap().to_string(),
                c["response"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn judge(name: &str, opts: &JudgeModelOptions) -> ModelJudge {
    ModelJudge::load(name, opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn model(name: &str) -> String {
    fixtures()
        .join("judge_models")
        .join(name)
        .display()
        .to_string()
}

/// Close in absolute terms for probabilities (they are sums of f32 softmax terms).
fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 2e-6 + 1e-4 * want.abs(),
        "{what}: {got} against transformers' {want}"
    );
}

#[test]
fn harmbench_and_strongreject_prompts_equal_the_published_ones_byte_for_byte() {
    let p = prompts();
    for (c, (b, r)) in p["cases"].as_array().unwrap().iter().zip(pairs(&p)) {
        assert_eq!(harmbench_prompt(&b, &r), c["harmbench"].as_str().unwrap());
        assert_eq!(
            strongreject_prompt(&b, &r),
            c["strongreject"].as_str().unwrap()
        );
    }
    assert!(p["sources"]["strongreject"].as_str().unwrap().contains(
        sahara::methods::judge::model::STRONGREJECT_PROMPT_SOURCE
            .split(',')
            .next()
            .unwrap()
    ));
}

#[test]
fn llama_guard_templates_render_as_transformers_renders_them() {
    let p = prompts();
    let specials = vec![
        ("bos_token".to_string(), "<|begin_of_text|>".to_string()),
        ("eos_token".to_string(), "<|eot_id|>".to_string()),
    ];
    for key in ["llamaguard_1b", "llamaguard_8b"] {
        let t = ChatTemplate::new(p["templates"][key].as_str().unwrap(), specials.clone()).unwrap();
        // The 1B template reads text parts, the 8B one strings; found from the template alone,
        // so a behavior that the template's own text holds ("safe", "S1") changes nothing.
        let want = if key == "llamaguard_1b" {
            ContentForm::Parts
        } else {
            ContentForm::Text
        };
        assert_eq!(llamaguard_form(&t).unwrap(), want, "{key}");
        for b in ["safe", "S1", " ", ""] {
            let text = llamaguard_prompt(&t, b, "an answer").unwrap();
            assert!(
                text.contains("Agent: an answer"),
                "{key} with behavior {b:?}: {text}"
            );
        }
        for (c, (b, r)) in p["cases"].as_array().unwrap().iter().zip(pairs(&p)) {
            let got = llamaguard_prompt(&t, &b, &r).unwrap();
            assert_eq!(got, c[key].as_str().unwrap(), "{key} on {b:?}");
        }
    }
}

#[test]
fn llama_guard_on_the_tiny_model_equals_transformers() {
    let p = prompts();
    let r = read(fixtures().join("judge_models/reference.json"));
    let rows = r["llamaguard"]["rows"].as_array().unwrap();
    // Two batch sizes: padding must not change a verdict.
    for batch_size in [1, 4] {
        let opts = JudgeModelOptions {
            batch_size,
            ..Default::default()
        };
        let j = judge(&format!("llamaguard:{}", model("llamaguard")), &opts);
        let ps = pairs(&p);
        let items: Vec<(&str, &str)> = ps.iter().map(|(b, r)| (b.as_str(), r.as_str())).collect();
        let verdicts = j.judge_batch(&items).unwrap();
        let mut decided = [0, 0];
        for ((row, (b, resp)), v) in rows.iter().zip(&ps).zip(&verdicts) {
            let want: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
            assert_eq!(j.prompt_ids(b, resp).unwrap(), want, "prompt ids of {b:?}");
            if resp.trim().is_empty() {
                assert_eq!(v.reason, Reason::Empty);
                assert_eq!(v.harmful, None);
                continue;
            }
            close(
                v.score.unwrap(),
                row["p_unsafe"].as_f64().unwrap(),
                "P(unsafe)",
            );
            // The fixture's Llama Guard answers as the real one does: a blank line first (so
            // P(unsafe) is read at the second step), then its verdict and the end of its turn.
            assert_eq!(row["verdict_start"], 1);
            let (harmful, reason) = match row["text"].as_str().unwrap() {
                "\n\nunsafe" => (Some(true), "unsafe"),
                "\n\nsafe" => (Some(false), "safe"),
                other => panic!("the fixture's Llama Guard said {other:?}"),
            };
            assert_eq!(v.harmful, harmful, "verdict on {b:?}");
            assert_eq!(v.reason, Reason::Other(reason.into()));
            decided[usize::from(harmful == Some(true))] += 1;
        }
        assert!(
            decided[0] > 0 && decided[1] > 0,
            "safe and unsafe: {decided:?}"
        );
        let d = j.describe();
        assert_eq!(d["kind"], "llamaguard");
        assert_eq!(d["dtype"], "f32");
        assert!(d["model_fingerprint"].as_str().unwrap().len() > 8);
    }
}

#[test]
fn harmbench_on_the_tiny_model_sums_every_yes_token_as_transformers_does() {
    let p = prompts();
    let r = read(fixtures().join("judge_models/reference.json"));
    let j = judge(
        &format!("harmbench:{}", model("harmbench")),
        &Default::default(),
    );
    let ps = pairs(&p);
    let items: Vec<(&str, &str)> = ps.iter().map(|(b, r)| (b.as_str(), r.as_str())).collect();
    let verdicts = j.judge_batch(&items).unwrap();
    let mut decided = [0, 0];
    for ((row, (b, resp)), v) in r["harmbench"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ps)
        .zip(&verdicts)
    {
        let want: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        assert_eq!(j.prompt_ids(b, resp).unwrap(), want, "prompt ids of {b:?}");
        if resp.trim().is_empty() {
            assert_eq!(v.reason, Reason::Empty);
            continue;
        }
        close(v.score.unwrap(), row["p_yes"].as_f64().unwrap(), "P(yes)");
        // The fixture's classifier decides (its Yes/No rows dominate): yes on some prompts,
        // no on others, as transformers' greedy token says.
        let said = row["greedy_text"].as_str().unwrap();
        let want = match said {
            "Yes" => Some(true),
            "No" => Some(false),
            other => panic!("the fixture's classifier said {other:?}"),
        };
        assert_eq!(v.harmful, want, "verdict on {b:?}");
        decided[usize::from(want == Some(true))] += 1;
    }
    assert!(decided[0] > 0 && decided[1] > 0, "no and yes: {decided:?}");
}

#[test]
fn strongreject_as_an_adapter_on_its_base_equals_transformers_on_peft_merge() {
    let p = prompts();
    let r = read(fixtures().join("judge_models/reference.json"));
    let name = format!("strongreject:{}", model("strongreject_adapter"));
    let opts = JudgeModelOptions {
        base: Some(fixtures().join("judge_models/strongreject_base")),
        ..Default::default()
    };
    let j = judge(&name, &opts);
    assert!(j.describe()["adapter"]
        .as_str()
        .unwrap()
        .ends_with("strongreject_adapter"));
    assert_eq!(j.describe()["threshold"], 0.5);
    let ps = pairs(&p);
    let items: Vec<(&str, &str)> = ps.iter().map(|(b, r)| (b.as_str(), r.as_str())).collect();
    let verdicts = j.judge_batch(&items).unwrap();
    for ((row, (b, resp)), v) in r["strongreject"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ps)
        .zip(&verdicts)
    {
        let want: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        assert_eq!(j.prompt_ids(b, resp).unwrap(), want, "prompt ids of {b:?}");
        if resp.trim().is_empty() {
            assert_eq!(v.reason, Reason::Empty);
            continue;
        }
        close(v.score.unwrap(), row["score"].as_f64().unwrap(), "score");
        // Its greedy token is no grade: undecided, the score still recorded.
        assert_eq!(v.harmful, None);
        assert!(
            matches!(&v.reason, Reason::Other(m) if m.contains("not a grade 1-5")),
            "{:?}",
            v.reason
        );
    }
    // Without its base, the adapter is refused with the reason.
    let e = ModelJudge::load(&name, &Default::default()).err().unwrap();
    assert!(
        e.to_string()
            .contains("is missing: the judge strongreject:"),
        "{e}"
    );
}

#[test]
fn bad_judges_are_refused_with_one_clear_line() {
    let e = Panel::by_names(&["gpt".into()], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("llamaguard:MODEL") && e.contains("strongreject:MODEL"),
        "{e}"
    );
    let e = Panel::by_names(&["gpt:x".into()], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the model judges are llamaguard:MODEL, harmbench:MODEL, strongreject:MODEL"),
        "{e}"
    );
    let e = Panel::by_names(&["harmbench:".into()], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no model"), "{e}");
    // A model whose tokenizer lacks the verdict token: the token is named.
    let plain = fixtures().join("llama3").display().to_string();
    let e = ModelJudge::load(&format!("llamaguard:{plain}"), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has no token \"unsafe\""), "{e}");
    // A base for no adapter.
    let opts = JudgeModelOptions {
        base: Some(fixtures().join("judge_models/strongreject_base")),
        ..Default::default()
    };
    let e = Panel::by_names_with(&[format!("harmbench:{}", model("harmbench"))], None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no model judge is a LoRA adapter"), "{e}");
    let opts = JudgeModelOptions {
        strongreject_threshold: 1.5,
        ..Default::default()
    };
    let e = ModelJudge::load(&format!("harmbench:{}", model("harmbench")), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("between 0 and 1"), "{e}");
    // Checked with no model judge too.
    let e = Panel::by_names_with(&["keyword".into()], None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("between 0 and 1"), "{e}");
    let opts = JudgeModelOptions {
        batch_size: 0,
        ..Default::default()
    };
    let e = Panel::by_names_with(&["keyword".into()], None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
    // A chat template that renders no conversation is not Llama Guard's.
    let t = ChatTemplate::new("Task: nothing to judge", vec![]).unwrap();
    let e = llamaguard_form(&t).unwrap_err().to_string();
    assert!(e.contains("not a Llama Guard template"), "{e}");
}

#[test]
fn probed_generation_gives_the_tokens_of_generate_and_each_steps_probabilities() {
    use candle_core::{DType, Device, IndexOp};
    use sahara::methods::generate::{generate, generate_probed, GenerateOptions};
    use sahara::{Batch, ForwardSpec, LoadedModel, Positions};
    let m = LoadedModel::load(
        fixtures().join("llama3").to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let prompts = vec![vec![480, 10, 20, 30, 40], vec![480, 7, 8]];
    let none = vec![vec![]; 2];
    let opts = GenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let plain = generate(&m.decoder, &prompts, &none, 0, &opts).unwrap();
    let probe = [3u32, 200, 481];
    let probed = generate_probed(&m.decoder, &prompts, &none, 0, &opts, &probe).unwrap();
    for (r, (p, g)) in plain.iter().zip(&probed).enumerate() {
        assert_eq!(p, &g.tokens);
        assert_eq!(g.probs.len(), g.tokens.len());
        for k in 0..g.tokens.len() {
            let seq = [prompts[r].as_slice(), &g.tokens[..k]].concat();
            let b = Batch::new(&[seq], 0, &Device::Cpu).unwrap();
            let l = m
                .decoder
                .forward(&b, &ForwardSpec::logits(Positions::Last), None)
                .unwrap();
            let row: Vec<f32> = l.logits.unwrap().i((0, 0)).unwrap().to_vec1().unwrap();
            let mx = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let z: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
            for (j, &id) in probe.iter().enumerate() {
                let want = (row[id as usize] as f64 - mx).exp() / z;
                close(g.probs[k][j] as f64, want, "probed probability");
            }
        }
    }
}
