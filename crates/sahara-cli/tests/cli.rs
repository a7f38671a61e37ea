//! Integration tests of the `sahara` binary, run as a user runs it: a real process on tiny
//! random model folders, with the output checked as text and JSON.
//!
//! Every failure must be a non-zero exit with exactly one line on stderr starting with
//! `error: ` that names the file or value at fault, and no panic anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{close, fails, jsonl, ok, ok_both, parse_json, sahara, Fixture};
use sahara::checkpoint::random::{write_random_model, RandomModel, WORDS};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

impl Fixture {
    /// Writes the model folder's `name` as pretty JSON.
    fn write_model_json(&self, name: &str, v: &Value) {
        std::fs::write(
            self.model().join(name),
            serde_json::to_string_pretty(v).unwrap(),
        )
        .unwrap();
    }

    fn read_model_json(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.model().join(name)).unwrap()).unwrap()
    }

    /// `sahara generate --model MODEL` followed by `args`.
    fn generate(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("generate")
            .arg("--model")
            .arg(self.model())
            .args(args);
        c
    }

    /// `sahara ships --model MODEL --quiet` followed by `args`.
    fn ships(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("ships")
            .arg("--model")
            .arg(self.model())
            .arg("--quiet")
            .args(args);
        c
    }
}

/// The score grid of a ships line, nulls as `None`.
fn grid(line: &Value) -> Vec<Vec<Option<f64>>> {
    line["scores"]
        .as_array()
        .expect("scores is an array")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("scores rows are arrays")
                .iter()
                .map(|v| {
                    assert!(
                        v.is_null() || v.is_number(),
                        "score {v} is neither null nor a number"
                    );
                    v.as_f64()
                })
                .collect()
        })
        .collect()
}

fn assert_grids_close(a: &[Vec<Option<f64>>], b: &[Vec<Option<f64>>], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: layer counts differ");
    for (l, (ra, rb)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            ra.len(),
            rb.len(),
            "{what}: head counts differ in layer {l}"
        );
        for (h, (x, y)) in ra.iter().zip(rb).enumerate() {
            match (x, y) {
                (Some(x), Some(y)) => assert!(
                    close(*x, *y, rel),
                    "{what}: head {l}:{h} differs: {x} vs {y} (relative tolerance {rel})"
                ),
                (None, None) => {}
                _ => panic!("{what}: head {l}:{h} scored in one run only: {x:?} vs {y:?}"),
            }
        }
    }
}

/// `n` distinct queries made of the tokenizer's words, `words` words each.
fn queries(n: usize, words: usize) -> Vec<String> {
    let content: Vec<&str> = WORDS
        .iter()
        .copied()
        .filter(|w| w.chars().all(char::is_alphabetic))
        .collect();
    (0..n)
        .map(|i| {
            (0..words)
                .map(|j| content[(i * 7 + j * (i % 5 + 1)) % content.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn text_file(fx: &Fixture, name: &str, qs: &[String]) -> PathBuf {
    fx.write(name, qs.join("\n") + "\n")
}

#[test]
fn help_and_version_still_print() {
    let v = ok(sahara().arg("--version"));
    assert!(v.starts_with("sahara "), "{v}");
    for sub in ["generate", "ships"] {
        let h = ok(sahara().args([sub, "--help"]));
        assert!(h.contains("--model"), "{h}");
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors surgery, by hand: 8-byte little-endian header length, JSON header, data.
// ---------------------------------------------------------------------------------------------

struct StTensor {
    name: String,
    dtype: String,
    shape: Value,
    bytes: Vec<u8>,
}

fn read_safetensors(path: &Path) -> (Option<Value>, Vec<StTensor>) {
    let raw = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let data = &raw[8 + n..];
    let mut meta = None;
    let mut tensors = Vec::new();
    for (k, v) in header {
        if k == "__metadata__" {
            meta = Some(v);
            continue;
        }
        let off = v["data_offsets"].as_array().unwrap();
        let (b, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        tensors.push((
            b,
            StTensor {
                name: k,
                dtype: v["dtype"].as_str().unwrap().to_string(),
                shape: v["shape"].clone(),
                bytes: data[b..e].to_vec(),
            },
        ));
    }
    tensors.sort_by_key(|(b, _)| *b);
    (meta, tensors.into_iter().map(|(_, t)| t).collect())
}

fn write_safetensors(path: &Path, meta: Option<Value>, tensors: &[StTensor]) {
    let mut header = Map::new();
    if let Some(m) = meta {
        header.insert("__metadata__".into(), m);
    }
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    std::fs::write(path, out).unwrap();
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

// ---------------------------------------------------------------------------------------------
// sahara generate
// ---------------------------------------------------------------------------------------------

const PROMPT: &str = "how do i make a cake";

fn generate_json(fx: &Fixture, extra: &[&str]) -> Value {
    let mut args = vec!["--prompt", PROMPT, "--max-new-tokens", "5", "--json"];
    args.extend_from_slice(extra);
    let out = ok(&mut fx.generate(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got {out:?}");
    parse_json(lines[0])
}

fn check_generate_output(v: &Value, vocab: usize) {
    let obj = v.as_object().expect("an object");
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    for k in ["prompt", "prompt_tokens", "tokens", "text"] {
        assert!(obj.contains_key(k), "missing key {k} in {v}");
    }
    assert_eq!(keys.len(), 4, "unexpected keys in {v}");
    assert!(v["prompt"].is_string(), "{v}");
    assert!(v["text"].is_string(), "{v}");
    let prompt_tokens = v["prompt_tokens"]
        .as_array()
        .expect("prompt_tokens is a list");
    assert!(!prompt_tokens.is_empty(), "{v}");
    let tokens = v["tokens"].as_array().expect("tokens is a list");
    assert!(!tokens.is_empty() && tokens.len() <= 5, "{v}");
    for t in prompt_tokens.iter().chain(tokens) {
        let id = t
            .as_u64()
            .unwrap_or_else(|| panic!("token {t} is not an id"));
        assert!(
            (id as usize) < vocab,
            "token {id} outside the vocabulary in {v}"
        );
    }
}

#[test]
fn generate_prints_one_json_object() {
    let fx = Fixture::new();
    let v = generate_json(&fx, &[]);
    check_generate_output(&v, 256);
    assert_eq!(v["prompt"], PROMPT);
    // Raw prompt: <s> then one id per word (the word-level tokenizer).
    let pt: Vec<u64> = v["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(pt[0], 1, "raw prompts start with <s>: {v}");
    assert_eq!(pt.len(), 1 + PROMPT.split_whitespace().count(), "{v}");
}

#[test]
fn generate_plain_text_without_json() {
    let fx = Fixture::new();
    let out = ok(&mut fx.generate(&["--prompt", PROMPT, "--max-new-tokens", "5"]));
    let v = generate_json(&fx, &[]);
    assert_eq!(
        out,
        format!("{}\n", v["text"].as_str().unwrap()),
        "text of --json"
    );
}

#[test]
fn generate_with_an_ablation() {
    let fx = Fixture::new();
    let v = generate_json(&fx, &["--ablate", "0:1", "--target", "q"]);
    check_generate_output(&v, 256);
    for target in ["k", "v"] {
        let v = generate_json(
            &fx,
            &["--ablate", "0:1,2:3", "--target", target, "--mode", "mean"],
        );
        check_generate_output(&v, 256);
    }
}

#[test]
fn generate_with_the_chat_template() {
    let fx = Fixture::new();
    let v = generate_json(&fx, &["--template", "chat"]);
    check_generate_output(&v, 256);
    assert_eq!(
        v["prompt"],
        format!("<s>user: {PROMPT}\nassistant:"),
        "the chat template of the random model renders the user message"
    );
    // The template already holds <s>; it is not added a second time.
    let pt = v["prompt_tokens"].as_array().unwrap();
    assert_eq!(pt[0], 1);
    assert_ne!(pt[1], 1, "bos added twice: {v}");
    let v = generate_json(&fx, &["--template", "chat", "--system", "be nice"]);
    assert_eq!(
        v["prompt"],
        format!("<s>system: be nice\nuser: {PROMPT}\nassistant:")
    );
    let v = generate_json(&fx, &["--template", "question: {query} answer:"]);
    assert_eq!(v["prompt"], format!("question: {PROMPT} answer:"));
}

#[test]
fn generate_on_the_committed_fixture() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama_gqa");
    let out = ok(sahara().args([
        "generate",
        "--model",
        model,
        "--prompt",
        "Hello there",
        "--max-new-tokens",
        "4",
        "--json",
    ]));
    let v = parse_json(out.trim());
    assert!(v["tokens"].as_array().unwrap().len() <= 4, "{v}");
}

#[test]
fn greedy_generation_is_deterministic_and_ablation_changes_it() {
    let fx = Fixture::new();
    let a = generate_json(&fx, &[]);
    let b = generate_json(&fx, &[]);
    assert_eq!(a, b, "two greedy runs differ");
    let layer0 = generate_json(&fx, &["--ablate", "0:0,0:1,0:2,0:3", "--epsilon", "0"]);
    assert_eq!(layer0["prompt_tokens"], a["prompt_tokens"]);
    assert_ne!(
        layer0["tokens"], a["tokens"],
        "ablating every head of layer 0 did not change the greedy continuation"
    );
    // An ablation with epsilon 1 is no ablation at all.
    let identity = generate_json(&fx, &["--ablate", "0:0,1:1,2:2", "--epsilon", "1"]);
    assert_eq!(identity["tokens"], a["tokens"]);
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
fn generate_in_half_precision() {
    let fx = Fixture::new();
    for dtype in ["bf16", "f16"] {
        let v = generate_json(&fx, &["--dtype", dtype]);
        check_generate_output(&v, 256);
    }
}

#[test]
fn sampling_is_seeded() {
    let fx = Fixture::new();
    let a = generate_json(
        &fx,
        &["--temperature", "1.5", "--top-k", "50", "--seed", "7"],
    );
    let b = generate_json(
        &fx,
        &["--temperature", "1.5", "--top-k", "50", "--seed", "7"],
    );
    assert_eq!(a, b, "same seed, different samples");
    check_generate_output(&a, 256);
}

// --- bad inputs -----------------------------------------------------------------------------

fn gen_fails(fx: &Fixture, extra: &[&str], needles: &[&str]) -> String {
    let mut args = vec!["--prompt", PROMPT, "--max-new-tokens", "5"];
    args.extend_from_slice(extra);
    fails(&mut fx.generate(&args), needles)
}

#[test]
fn generate_missing_model_folder() {
    let fx = Fixture::new();
    let missing = fx.path("no-such-model");
    let m = fails(
        sahara()
            .args(["generate", "--model"])
            .arg(&missing)
            .args(["--prompt", PROMPT]),
        &[&missing.to_string_lossy()],
    );
    assert!(m.contains("no such folder"), "{m}");
}

#[test]
fn generate_model_path_is_a_file() {
    let fx = Fixture::new();
    let file = fx.write("model.txt", "x");
    fails(
        sahara()
            .args(["generate", "--model"])
            .arg(&file)
            .args(["--prompt", PROMPT]),
        &["model.txt", "not a folder"],
    );
}

#[test]
fn generate_hub_id_not_in_cache() {
    let fx = Fixture::new();
    let cache = fx.path("hub");
    std::fs::create_dir(&cache).unwrap();
    fails(
        sahara().env("HF_HUB_CACHE", &cache).args([
            "generate",
            "--model",
            "someorg/somemodel",
            "--prompt",
            PROMPT,
        ]),
        &["someorg/somemodel", "models--someorg--somemodel"],
    );
}

#[test]
fn generate_config_missing() {
    let fx = Fixture::new();
    std::fs::remove_file(fx.model().join("config.json")).unwrap();
    gen_fails(&fx, &[], &["config.json"]);
}

#[test]
fn generate_config_malformed() {
    let fx = Fixture::new();
    std::fs::write(
        fx.model().join("config.json"),
        "{\"architectures\": [\"LlamaForCausalLM\",",
    )
    .unwrap();
    gen_fails(&fx, &[], &["config.json", "JSON"]);
}

#[test]
fn generate_config_unsupported_architecture() {
    let fx = Fixture::new();
    let mut c = fx.read_model_json("config.json");
    c["architectures"] = json!(["GPT2LMHeadModel"]);
    c["model_type"] = json!("gpt2");
    fx.write_model_json("config.json", &c);
    gen_fails(
        &fx,
        &[],
        &[
            "config.json",
            "GPT2LMHeadModel",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
        ],
    );
}

#[test]
fn generate_tensor_missing() {
    let fx = Fixture::new();
    let p = fx.model().join("model.safetensors");
    let (meta, mut tensors) = read_safetensors(&p);
    let name = "model.layers.1.self_attn.k_proj.weight";
    let before = tensors.len();
    tensors.retain(|t| t.name != name);
    assert_eq!(tensors.len(), before - 1);
    write_safetensors(&p, meta, &tensors);
    gen_fails(&fx, &[], &[name, "missing"]);
}

#[test]
fn generate_tensor_wrong_shape() {
    let fx = Fixture::new();
    let mut c = fx.read_model_json("config.json");
    c["intermediate_size"] = json!(96);
    fx.write_model_json("config.json", &c);
    let m = gen_fails(
        &fx,
        &[],
        &["model.safetensors", ".mlp.", "[128, 64]", "[96, 64]"],
    );
    assert!(m.contains("shape"), "{m}");
}

#[test]
fn generate_tensor_unsupported_dtype() {
    let fx = Fixture::new();
    let p = fx.model().join("model.safetensors");
    let (meta, mut tensors) = read_safetensors(&p);
    let name = "model.layers.0.self_attn.q_proj.weight";
    let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
    assert_eq!(t.dtype, "F32");
    // Same width, so the file stays consistent; only the declared dtype changes.
    t.dtype = "I32".into();
    write_safetensors(&p, meta, &tensors);
    gen_fails(&fx, &[], &[name, "I32", "dtype"]);
}

#[test]
fn generate_truncated_weights() {
    let fx = Fixture::new();
    let p = fx.model().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    gen_fails(&fx, &[], &["model.safetensors", "truncated"]);
}

#[test]
fn generate_weights_missing() {
    let fx = Fixture::new();
    std::fs::remove_file(fx.model().join("model.safetensors")).unwrap();
    gen_fails(&fx, &[], &["model.safetensors"]);
}

#[test]
fn generate_tokenizer_unparsable() {
    let fx = Fixture::new();
    std::fs::write(
        fx.model().join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .unwrap();
    gen_fails(&fx, &[], &["tokenizer.json"]);
}

#[test]
fn generate_broken_chat_template() {
    let fx = Fixture::new();
    let mut c = fx.read_model_json("tokenizer_config.json");
    c["chat_template"] = json!("{% for m in messages %}");
    fx.write_model_json("tokenizer_config.json", &c);
    gen_fails(
        &fx,
        &["--template", "chat"],
        &["chat template", "tokenizer_config.json"],
    );
}

#[test]
fn generate_raw_despite_a_broken_chat_template() {
    // transformers loads such a tokenizer and fails only in apply_chat_template.
    let fx = Fixture::new();
    let mut c = fx.read_model_json("tokenizer_config.json");
    c["chat_template"] = json!("{% for m in messages %}");
    fx.write_model_json("tokenizer_config.json", &c);
    ok(&mut fx.generate(&["--prompt", PROMPT, "--max-new-tokens", "2"]));
}

#[test]
fn generate_chat_without_chat_template() {
    let fx = Fixture::new();
    let mut c = fx.read_model_json("tokenizer_config.json");
    c.as_object_mut().unwrap().remove("chat_template");
    fx.write_model_json("tokenizer_config.json", &c);
    gen_fails(&fx, &["--template", "chat"], &["chat template"]);
    // Raw prompts still work.
    ok(&mut fx.generate(&["--prompt", PROMPT, "--max-new-tokens", "2"]));
}

#[test]
fn generate_template_without_query() {
    let fx = Fixture::new();
    gen_fails(
        &fx,
        &["--template", "question: answer:"],
        &["question: answer:", "{query}"],
    );
}

#[test]
fn generate_empty_prompt() {
    let fx = Fixture::new();
    fails(
        &mut fx.generate(&["--prompt", "", "--max-new-tokens", "5"]),
        &["empty"],
    );
    fails(
        &mut fx.generate(&["--prompt", "  \t ", "--max-new-tokens", "5"]),
        &["empty"],
    );
}

#[test]
fn generate_prompt_longer_than_context() {
    let fx = Fixture::with_spec(|s| s.max_position_embeddings = 16);
    let long = queries(1, 40).remove(0);
    let m = fails(
        &mut fx.generate(&["--prompt", &long, "--max-new-tokens", "5"]),
        &["16", "context"],
    );
    assert!(m.contains("41") || m.contains("46"), "{m}");
}

#[test]
fn generate_ablate_layer_out_of_range() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--ablate", "9:0"], &["layer 9", "3 layers"]);
}

#[test]
fn generate_ablate_head_out_of_range() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--ablate", "0:9"], &["head 9", "4 attention heads"]);
}

#[test]
fn generate_ablate_not_a_head() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--ablate", "x"], &["\"x\"", "LAYER:HEAD"]);
    gen_fails(&fx, &["--ablate", "0:y"], &["\"y\""]);
    gen_fails(&fx, &["--ablate", ","], &["no heads"]);
}

#[test]
fn generate_epsilon_nan() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--epsilon", "nan"], &["epsilon", "NaN"]);
}

#[test]
fn generate_unknown_target() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--target", "z"], &["target", "\"z\""]);
}

#[test]
fn generate_unknown_mode() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--mode", "foo"], &["mode", "\"foo\""]);
}

#[test]
fn generate_zero_new_tokens() {
    let fx = Fixture::new();
    fails(
        &mut fx.generate(&["--prompt", PROMPT, "--max-new-tokens", "0"]),
        &["--max-new-tokens"],
    );
}

#[test]
fn generate_unknown_dtype() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--dtype", "f8"], &["dtype", "\"f8\""]);
}

#[test]
fn generate_unknown_device() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--device", "tpu"], &["device", "\"tpu\""]);
}

#[test]
fn generate_bad_sampling_settings() {
    let fx = Fixture::new();
    gen_fails(&fx, &["--temperature=-1"], &["--temperature"]);
    gen_fails(&fx, &["--temperature", "nan"], &["--temperature"]);
    gen_fails(&fx, &["--top-k", "0"], &["--top-k 0", "must be at least 1"]);
}

#[test]
fn generate_unparsable_number_is_one_line() {
    // Argument parsing errors follow the same rule as every other error.
    let fx = Fixture::new();
    gen_fails(&fx, &["--epsilon", "abc"], &["abc", "--epsilon"]);
}

#[test]
fn generate_missing_required_argument_is_one_line() {
    let fx = Fixture::new();
    fails(&mut fx.generate(&[]), &["--prompt"]);
}

// ---------------------------------------------------------------------------------------------
// sahara ships
// ---------------------------------------------------------------------------------------------

const LINE_KEYS: [&str; 9] = [
    "schema",
    "index",
    "query",
    "prompt_tokens",
    "target",
    "mode",
    "epsilon",
    "scores",
    "top",
];

fn check_line(line: &Value, index: usize, query: &str, layers: usize, heads: usize) {
    let obj = line.as_object().expect("each line is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = LINE_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "keys of {line}");
    assert_eq!(line["schema"], "sahara.ships/1", "{line}");
    assert_eq!(line["index"], index, "{line}");
    assert_eq!(line["query"], query, "{line}");
    assert_eq!(
        line["prompt_tokens"].as_u64().unwrap() as usize,
        1 + query.split_whitespace().count(),
        "{line}"
    );
    let g = grid(line);
    assert_eq!(g.len(), layers, "{line}");
    assert!(g.iter().all(|r| r.len() == heads), "{line}");
    let top = line["top"].as_array().expect("top is a list");
    assert!(!top.is_empty(), "{line}");
    for t in top {
        let (l, h) = (
            t["layer"].as_u64().unwrap() as usize,
            t["head"].as_u64().unwrap() as usize,
        );
        let s = t["score"].as_f64().unwrap();
        assert_eq!(g[l][h], Some(s), "top entry {t} disagrees with scores");
    }
    let s: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert!(
        s.windows(2).all(|w| w[0] >= w[1]),
        "top is not sorted: {line}"
    );
}

#[test]
fn ships_scores_every_head_with_summary_and_plot() {
    let fx = Fixture::new();
    let qs = queries(3, 6);
    let data = text_file(&fx, "q.txt", &qs);
    let out = fx.path("ships.jsonl");
    let png = fx.path("x.png");
    let stdout = ok(fx
        .ships(&["--top", "5"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(&png));
    assert!(
        stdout.contains("3 queries"),
        "summary table on stdout: {stdout}"
    );
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        check_line(line, i, &qs[i], 3, 4);
        assert_eq!(line["target"], "q");
        assert_eq!(line["mode"], "scale");
        assert_eq!(line["epsilon"].as_f64(), Some(1e-5));
        assert_eq!(line["top"].as_array().unwrap().len(), 5);
        let g = grid(line);
        assert!(
            g.iter()
                .flatten()
                .all(|s| s.is_some_and(|s| s.is_finite() && s >= -1e-9)),
            "every head is scored, with a KL divergence: {line}"
        );
    }
    let summary =
        parse_json(&std::fs::read_to_string(fx.path("ships.jsonl.summary.json")).unwrap());
    for k in ["by_mean", "by_count"] {
        let list = summary[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} missing: {summary}"));
        assert_eq!(list.len(), 12, "{k}: {summary}");
    }
    assert_eq!(summary["queries"], 3);
    // The mean of the summary is the mean of the lines.
    let mean = grid(&json!({"scores": summary["mean"]}));
    let grids: Vec<_> = lines.iter().map(grid).collect();
    for (l, row) in mean.iter().enumerate() {
        for (h, got) in row.iter().enumerate() {
            let m: f64 = grids.iter().map(|g| g[l][h].unwrap()).sum::<f64>() / 3.0;
            assert!(close(got.unwrap(), m, 1e-9), "mean of {l}:{h}");
        }
    }
    let record = parse_json(&std::fs::read_to_string(fx.path("ships.jsonl.run.json")).unwrap());
    assert_eq!(record["command"], "ships");
    let image = std::fs::read(&png).expect("the PNG is written");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn ships_without_out_prints_lines_on_stdout() {
    let fx = Fixture::new();
    let qs = queries(2, 4);
    let data = text_file(&fx, "q.txt", &qs);
    let (stdout, stderr) = ok_both(fx.ships(&[]).arg("--data").arg(&data));
    let lines: Vec<Value> = stdout.lines().map(parse_json).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        check_line(l, i, &qs[i], 3, 4);
    }
    assert!(stderr.contains("2 queries"), "summary on stderr: {stderr}");
}

#[test]
fn ships_svg_plot() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    let svg = fx.path("heat.svg");
    ok(fx
        .ships(&[])
        .arg("--data")
        .arg(&data)
        .arg("--plot")
        .arg(&svg));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "not an SVG");
}

#[test]
fn ships_layer_and_head_ranges_leave_nulls_elsewhere() {
    let fx = Fixture::new();
    let qs = queries(2, 5);
    let data = text_file(&fx, "q.txt", &qs);
    let out = fx.path("part.jsonl");
    ok(fx
        .ships(&["--layers", "1..2", "--heads", "0..2"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        check_line(line, i, &qs[i], 3, 4);
        let g = grid(line);
        for (l, row) in g.iter().enumerate() {
            for (h, s) in row.iter().enumerate() {
                assert_eq!(s.is_some(), l == 1 && h < 2, "head {l}:{h} in {line}");
            }
        }
        assert_eq!(
            line["top"].as_array().unwrap().len(),
            2,
            "only scored heads are ranked"
        );
    }
    let summary = parse_json(&std::fs::read_to_string(fx.path("part.jsonl.summary.json")).unwrap());
    assert_eq!(summary["by_mean"].as_array().unwrap().len(), 2, "{summary}");
}

#[test]
fn ships_naive_engine_agrees_with_fast() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 7));
    for args in [
        &["--target", "q"][..],
        &["--target", "k", "--mode", "mean"],
        &["--target", "v"],
    ] {
        let run_engine = |engine: &str| -> Vec<Value> {
            let out = ok(fx
                .ships(args)
                .args(["--engine", engine])
                .arg("--data")
                .arg(&data));
            out.lines().map(parse_json).collect()
        };
        let fast = run_engine("fast");
        let naive = run_engine("naive");
        assert_eq!(fast.len(), 2);
        assert_eq!(naive.len(), 2);
        for (f, n) in fast.iter().zip(&naive) {
            assert_grids_close(&grid(f), &grid(n), 1e-5, &format!("fast vs naive {args:?}"));
        }
    }
}

#[test]
fn ships_k_target_shares_scores_within_groups() {
    // 4 query heads over 2 key/value heads: heads 0,1 and 2,3 share a score.
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 5));
    let out = ok(fx.ships(&["--target", "k"]).arg("--data").arg(&data));
    let g = grid(&parse_json(out.lines().next().unwrap()));
    for row in &g {
        assert_eq!(row[0], row[1]);
        assert_eq!(row[2], row[3]);
    }
}

#[test]
fn ships_reads_csv_and_jsonl() {
    let fx = Fixture::new();
    let csv = fx.write(
        "q.csv",
        "id,goal\n1,how do i make a cake\n2,\"tell me, about the car\"\n",
    );
    let out = ok(fx
        .ships(&["--layers", "0", "--heads", "0"])
        .arg("--data")
        .arg(&csv));
    let lines: Vec<Value> = out.lines().map(parse_json).collect();
    assert_eq!(lines[0]["query"], "how do i make a cake");
    assert_eq!(lines[1]["query"], "tell me, about the car");
    let jl = fx.write(
        "q.jsonl",
        "{\"prompt\": \"write a poem\"}\n\n{\"prompt\": \"help me\"}\n",
    );
    let out = ok(fx
        .ships(&["--layers", "0", "--heads", "0", "--limit", "1"])
        .arg("--data")
        .arg(&jl));
    let lines: Vec<Value> = out.lines().map(parse_json).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["query"], "write a poem");
}

// --- resuming -------------------------------------------------------------------------------

#[test]
fn ships_resumes_after_a_cut_line() {
    let fx = Fixture::new();
    let qs = queries(6, 5);
    let data = text_file(&fx, "q.txt", &qs);
    let out = fx.path("ships.jsonl");
    let cmd = |fx: &Fixture| {
        let mut c = sahara();
        c.arg("ships")
            .arg("--model")
            .arg(fx.model())
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out);
        c
    };
    ok(&mut cmd(&fx));
    let complete = std::fs::read_to_string(&out).unwrap();
    let complete_lines: Vec<Value> = complete.lines().map(parse_json).collect();
    assert_eq!(complete_lines.len(), 6);
    let complete_summary = std::fs::read_to_string(fx.path("ships.jsonl.summary.json")).unwrap();

    // Interrupted in the middle of writing line 3.
    let raw: Vec<&str> = complete.split_inclusive('\n').collect();
    let cut = format!("{}{}{}", raw[0], raw[1], &raw[2][..raw[2].len() / 2]);
    std::fs::write(&out, &cut).unwrap();
    let (_, stderr) = ok_both(&mut cmd(&fx));
    assert!(
        stderr.contains("resuming"),
        "stderr does not mention resuming: {stderr}"
    );
    assert!(stderr.contains("2 of 6"), "{stderr}");

    let resumed = std::fs::read_to_string(&out).unwrap();
    assert!(
        resumed.starts_with(&format!("{}{}", raw[0], raw[1])),
        "kept lines changed"
    );
    let lines: Vec<Value> = resumed.lines().map(parse_json).collect();
    let idx: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4, 5], "indices after resuming");
    for (a, b) in lines.iter().zip(&complete_lines) {
        assert_eq!(a["query"], b["query"]);
        assert_eq!(
            a["top"].as_array().unwrap().len(),
            b["top"].as_array().unwrap().len()
        );
        assert_grids_close(&grid(a), &grid(b), 1e-9, "resumed vs complete");
    }
    let summary =
        parse_json(&std::fs::read_to_string(fx.path("ships.jsonl.summary.json")).unwrap());
    let before = parse_json(&complete_summary);
    assert_eq!(summary["queries"], 6);
    assert_grids_close(
        &grid(&json!({"scores": summary["mean"]})),
        &grid(&json!({"scores": before["mean"]})),
        1e-9,
        "summary mean after resuming",
    );

    // Rerunning a finished run adds nothing.
    let (_, stderr) = ok_both(&mut cmd(&fx));
    assert!(stderr.contains("6 of 6"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), resumed);
}

#[test]
fn ships_resumes_after_a_kill() {
    // The naive engine on 40-word prompts: tens of milliseconds a query, so that the kill
    // lands in the middle of the run.
    let fx = Fixture::new();
    let n = 30;
    let qs = queries(n, 40);
    let data = text_file(&fx, "q.txt", &qs);
    let out = fx.path("killed.jsonl");
    let cmd = || {
        let mut c = sahara();
        c.arg("ships")
            .arg("--model")
            .arg(fx.model())
            .args(["--batch-size", "1", "--engine", "naive"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out);
        c
    };
    let mut child = cmd()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let seen = loop {
        let text = std::fs::read(&out).unwrap_or_default();
        if text.contains(&b'\n') {
            child.kill().ok();
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its first line was seen");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no line after 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    child.wait().unwrap();
    // The complete lines at the kill (the process may have written more before it died).
    let after_kill = std::fs::read(&out).unwrap();
    let seen_end = seen.iter().rposition(|b| *b == b'\n').unwrap() + 1;
    assert!(
        after_kill.starts_with(&seen[..seen_end]),
        "lines changed while being written"
    );
    let kept_end = after_kill
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let kept = after_kill[..kept_end].to_vec();
    let kept_count = kept.iter().filter(|b| **b == b'\n').count();
    assert!(kept_count >= 1);
    assert!(
        kept_count < n,
        "the run finished before it was killed; the test's model is too fast to test a kill"
    );

    let (_, stderr) = ok_both(&mut cmd());
    assert!(
        stderr.contains(&format!("resuming: {kept_count} of {n}")),
        "stderr does not mention resuming: {stderr}"
    );
    let text = std::fs::read(&out).unwrap();
    assert!(
        text.starts_with(&kept),
        "lines written before the kill changed"
    );
    let lines = jsonl(&out);
    let idx: Vec<usize> = lines
        .iter()
        .map(|l| l["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(idx, (0..n).collect::<Vec<_>>(), "unique indices in order");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["query"], qs[i].as_str());
    }
    eprintln!(
        "kill test: {kept_count} lines kept of {n}, {:?} in all",
        start.elapsed()
    );
}

#[test]
fn ships_refuses_a_run_with_other_settings() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 4));
    let out = fx.path("ships.jsonl");
    ok(fx
        .ships(&[])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    let before = std::fs::read(&out).unwrap();
    let record = std::fs::read(fx.path("ships.jsonl.run.json")).unwrap();
    let summary = std::fs::read(fx.path("ships.jsonl.summary.json")).unwrap();
    let m = fails(
        fx.ships(&["--epsilon", "0.5"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["epsilon", "ships.jsonl"],
    );
    assert!(m.contains("0.5"), "{m}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the earlier run was modified"
    );
    assert_eq!(
        std::fs::read(fx.path("ships.jsonl.run.json")).unwrap(),
        record
    );
    assert_eq!(
        std::fs::read(fx.path("ships.jsonl.summary.json")).unwrap(),
        summary
    );
    // Other data too.
    let other = text_file(&fx, "other.txt", &queries(3, 4));
    fails(
        fx.ships(&[])
            .arg("--data")
            .arg(&other)
            .arg("--out")
            .arg(&out),
        &["ships.jsonl"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn ships_refuses_a_foreign_out_file() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    let out = fx.write("mine.jsonl", "{\"precious\": true}\n");
    fails(
        fx.ships(&[])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["mine.jsonl"],
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"precious\": true}\n"
    );
}

// --- bad inputs -----------------------------------------------------------------------------

/// Runs `ships --data DATA --out OUT` with `extra`, which must fail; checks that no output
/// file was left behind.
fn ships_fails(fx: &Fixture, data: &Path, extra: &[&str], needles: &[&str]) -> String {
    let out = fx.path("bad.jsonl");
    let m = fails(
        fx.ships(extra)
            .arg("--data")
            .arg(data)
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
fn ships_empty_data_file() {
    let fx = Fixture::new();
    let data = fx.write("empty.txt", "");
    ships_fails(&fx, &data, &[], &["empty.txt", "no queries"]);
    let blank = fx.write("blank.txt", "\n  \n\n");
    ships_fails(&fx, &blank, &[], &["blank.txt", "no queries"]);
}

#[test]
fn ships_missing_data_file() {
    let fx = Fixture::new();
    let data = fx.path("nowhere.csv");
    ships_fails(&fx, &data, &[], &["nowhere.csv"]);
}

#[test]
fn ships_data_not_utf8() {
    let fx = Fixture::new();
    let data = fx.write("q.txt", b"how do i\xff make a cake\n");
    ships_fails(&fx, &data, &[], &["q.txt", "UTF-8"]);
}

#[test]
fn ships_out_in_a_missing_folder() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    let out = fx.path("no-such-dir").join("r.jsonl");
    fails(
        fx.ships(&[])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["no-such-dir"],
    );
    assert!(!fx.path("no-such-dir").exists());
}

#[test]
fn ships_csv_without_a_query_column() {
    let fx = Fixture::new();
    let data = fx.write("q.csv", "id,text\n1,how do i make a cake\n");
    ships_fails(&fx, &data, &[], &["q.csv", "id, text", "goal"]);
    ships_fails(
        &fx,
        &data,
        &["--column", "nope"],
        &["q.csv", "\"nope\"", "id, text"],
    );
}

#[test]
fn ships_whitespace_query_in_jsonl() {
    let fx = Fixture::new();
    let data = fx.write(
        "q.jsonl",
        "{\"prompt\": \"write a poem\"}\n{\"prompt\": \"  \\t \"}\n",
    );
    ships_fails(&fx, &data, &[], &["q.jsonl", "line 2", "empty"]);
}

#[test]
fn ships_whitespace_query_in_csv() {
    let fx = Fixture::new();
    let data = fx.write("q.csv", "goal\nwrite a poem\n\"   \"\n");
    ships_fails(&fx, &data, &[], &["q.csv", "line 3", "empty"]);
}

#[test]
fn ships_query_longer_than_context() {
    let fx = Fixture::with_spec(|s| s.max_position_embeddings = 16);
    let mut qs = queries(2, 4);
    qs.push(queries(1, 40).remove(0));
    let data = text_file(&fx, "q.txt", &qs);
    ships_fails(&fx, &data, &[], &["q.txt", "query 3", "41 tokens", "16"]);
}

#[test]
fn ships_layers_out_of_range() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(
        &fx,
        &data,
        &["--layers", "5..9"],
        &["--layers", "5..9", "3 layers"],
    );
    ships_fails(&fx, &data, &["--layers", "2..1"], &["--layers"]);
    ships_fails(&fx, &data, &["--layers", "a..b"], &["\"a..b\""]);
}

#[test]
fn ships_heads_out_of_range() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(
        &fx,
        &data,
        &["--heads", "0..99"],
        &["--heads", "0..99", "4 heads"],
    );
}

#[test]
fn ships_epsilon_inf() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(&fx, &data, &["--epsilon", "inf"], &["epsilon", "inf"]);
}

#[test]
fn ships_bad_enumerations() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(&fx, &data, &["--target", "z"], &["\"z\""]);
    ships_fails(&fx, &data, &["--mode", "foo"], &["\"foo\""]);
    ships_fails(&fx, &data, &["--engine", "slow"], &["\"slow\""]);
    ships_fails(&fx, &data, &["--batch-size", "0"], &["--batch-size"]);
    ships_fails(&fx, &data, &["--top", "0"], &["--top"]);
    ships_fails(&fx, &data, &["--limit", "0"], &["limit"]);
}

#[test]
fn ships_plot_extension_refused_before_any_work() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(
        &fx,
        &data,
        &["--plot", "x.jpg"],
        &["x.jpg", ".jpg", "png", "svg"],
    );
    // Refused before the model or the data are even read.
    let out = fx.path("bad.jsonl");
    let m = fails(
        sahara()
            .args(["ships", "--model"])
            .arg(fx.path("no-model"))
            .arg("--data")
            .arg(fx.path("no-data.txt"))
            .arg("--out")
            .arg(&out)
            .args(["--plot", "x.jpg"]),
        &["x.jpg"],
    );
    assert!(!m.contains("no-model") && !m.contains("no-data"), "{m}");
    assert!(!out.exists());
    assert!(!fx.path("x.jpg").exists());
}

#[test]
fn ships_broken_model_leaves_no_output() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    let p = fx.model().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    ships_fails(&fx, &data, &[], &["model.safetensors", "truncated"]);
}

// ---------------------------------------------------------------------------------------
// sahara surgery and sahara attribute

impl Fixture {
    /// `sahara surgery --model MODEL` followed by `args`.
    fn surgery(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("surgery").arg("--model").arg(self.model()).args(args);
        c
    }

    /// `sahara attribute --model MODEL --quiet` followed by `args`.
    fn attribute(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("attribute")
            .arg("--model")
            .arg(self.model())
            .arg("--quiet")
            .args(args);
        c
    }
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

#[test]
fn attribute_writes_steps_resumes_and_plots() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(4, 5));
    let out = fx.path("a.json");
    let plot = fx.path("a.svg");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    let table = ok(fx.attribute(&args));
    assert!(table.contains("step"), "{table}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in [
        "model", "data", "queries", "template", "target", "mode", "epsilon", "rank", "selected",
        "steps",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // The step-1 winner is null in step 2's grid, and is the maximum of step 1's.
    let first = &steps[0];
    let (l, h) = (
        first["selected"][0].as_u64().unwrap() as usize,
        first["selected"][1].as_u64().unwrap() as usize,
    );
    assert!(steps[1]["scores"][l][h].is_null());
    let best = first["scores"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().filter_map(Value::as_f64))
        .fold(f64::MIN, f64::max);
    assert_eq!(first["score"].as_f64().unwrap(), best);
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    // Rerun with more steps resumes: the first two steps are kept as they were.
    let more = [
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    let (_, err) = ok_both(fx.attribute(&more));
    let _ = err;
    let v3: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v3["steps"][0], v["steps"][0]);
    assert_eq!(v3["steps"][1], v["steps"][1]);
    assert_eq!(v3["steps"].as_array().unwrap().len(), 3);
    // Other settings are refused.
    fails(
        fx.attribute(&[
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "3",
            "--rank",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]),
        &["other settings"],
    );
}

#[test]
fn attribute_bad_inputs() {
    let fx = Fixture::new();
    let one = text_file(&fx, "one.txt", &queries(1, 5));
    let three = text_file(&fx, "three.txt", &queries(3, 5));
    fails(
        fx.attribute(&["--data", one.to_str().unwrap()]),
        &["at least 2 queries"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--rank", "4"]),
        &["--rank 4"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--steps", "13"]),
        &["--steps 13"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--plot", "x.gif"]),
        &["x.gif"],
    );
}
