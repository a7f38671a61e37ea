//! Tests of `sahara generate`: output, ablations, templates, sampling, bad inputs.

mod common;

use common::{
    check_generate_output, fails, generate_json, ok, parse_json, queries, read_safetensors, sahara,
    write_safetensors, Fixture, PROMPT,
};
use serde_json::{json, Value};

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
fn generate_in_half_precision() {
    let fx = Fixture::new();
    for dtype in ["bf16", "f16"] {
        let v = generate_json(&fx, &["--dtype", dtype]);
        check_generate_output(&v, 256);
    }
}

#[test]
fn the_default_dtype_on_the_cpu_is_f32_even_for_a_16_bit_checkpoint() {
    // A checkpoint that says it is stored in bfloat16 still computes in f32 on the CPU (on a
    // GPU, auto picks bf16 for it; see sahara::device): the same tokens as --dtype f32, and
    // the run record says f32.
    let fx = Fixture::new();
    let mut c = fx.read_model_json("config.json");
    c["torch_dtype"] = json!("bfloat16");
    fx.write_model_json("config.json", &c);
    let auto = generate_json(&fx, &[]);
    let f32 = generate_json(&fx, &["--dtype", "f32"]);
    assert_eq!(auto["tokens"], f32["tokens"]);
    let data = fx.write("q.txt", "how do i make a cake\nhow do i bake bread\n");
    let out = fx.path("s.jsonl");
    ok(fx.ships_to(&data, &out).arg("--quiet"));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.path("s.jsonl.run.json")).unwrap())
            .unwrap();
    assert_eq!(record["settings"]["dtype"], "f32");
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
    gen_fails(
        &fx,
        &["--dtype", "f8"],
        &["dtype", "\"f8\"", "expected auto, f32"],
    );
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

/// Sets value `index` of tensor `name` (float32) of the fixture's weights to `value`.
fn corrupt_weight(fx: &Fixture, name: &str, index: usize, value: f32) {
    let path = fx.model().join("model.safetensors");
    let (meta, mut tensors) = read_safetensors(&path);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    assert_eq!(t.dtype, "F32");
    t.bytes[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    write_safetensors(&path, meta, &tensors);
}

#[test]
fn a_non_finite_weight_is_refused_at_load_with_its_tensor_and_index() {
    for (name, index, value, shown) in [
        (
            "model.layers.1.self_attn.q_proj.weight",
            37,
            f32::NAN,
            "NaN",
        ),
        ("model.norm.weight", 3, f32::INFINITY, "inf"),
    ] {
        let fx = Fixture::new();
        corrupt_weight(&fx, name, index, value);
        gen_fails(&fx, &[], &[name, shown, &format!("index {index}")]);
        let data = fx.write("q.txt", "how do i make a cake\n");
        let out = fx.path("s.jsonl");
        fails(
            sahara()
                .arg("ships")
                .arg("--model")
                .arg(fx.model())
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&out),
            &[name],
        );
        assert!(
            !out.exists(),
            "a ships output was written from broken weights"
        );
    }
}

#[test]
fn finite_weights_that_overflow_stop_every_command_naming_the_layer() {
    // Every value of one MLP output projection times 1e38: finite, so the load check passes
    // it, but its products overflow. Before the run-time check, ships scored every head 0.
    let fx = Fixture::new();
    let name = "model.layers.1.mlp.down_proj.weight";
    let path = fx.model().join("model.safetensors");
    let (meta, mut tensors) = read_safetensors(&path);
    let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
    for v in t.bytes.chunks_exact_mut(4) {
        let x = f32::from_le_bytes(v.try_into().unwrap()) * 1e38;
        v.copy_from_slice(&x.to_le_bytes());
    }
    write_safetensors(&path, meta, &tensors);
    let site = "first in layer 1 (blocks.1.hook_resid_post)";
    gen_fails(
        &fx,
        &[],
        &["the prompt, the unablated model, new token 1", site],
    );
    let data = fx.write("q.txt", "how do i make a cake\nhow do i make bread\n");
    let out = fx.path("s.jsonl");
    fails(
        fx.ships_to(&data, &out),
        &["query 1: the unablated model", site],
    );
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(written.is_empty(), "ships wrote lines: {written}");
    // The same again on resume: nothing was recorded as done.
    fails(fx.ships_to(&data, &out), &["query 1", site]);
    let heads = fx.path("a.json");
    fails(
        sahara()
            .arg("attribute")
            .arg("--model")
            .arg(fx.model())
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&heads),
        &["query 1: the unablated model", site],
    );
    assert!(!heads.exists(), "attribute wrote {}", heads.display());
    fails(
        sahara()
            .arg("eval")
            .arg("--model")
            .arg(fx.model())
            .arg("--data")
            .arg(&data)
            .arg("--max-new-tokens")
            .arg("2"),
        // The batch's first row: queries are batched by length.
        &["harmful query ", ", the unablated model, new token 1", site],
    );
    // Layer 1's own attention pattern is computed before its MLP overflows; layer 2's is not.
    fails(
        sahara()
            .arg("attention")
            .arg("--model")
            .arg(fx.model())
            .arg("--prompt")
            .arg("hello there")
            .arg("--layer")
            .arg("2")
            .arg("--head")
            .arg("0"),
        &["the unablated model", site],
    );
}

#[test]
fn a_token_id_beyond_the_embeddings_is_refused_naming_the_token() {
    // A tokenizer of another model (the tokenizer numbers the added token 420, one past the
    // 420 embeddings): before this check, the embedding lookup failed with
    // "index-select invalid index" from the tensor library.
    // The BPE tokenizer of a fixture (its added tokens are matched before the model).
    let fx = Fixture::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama_gqa");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), fx.model().join(f)).unwrap();
    }
    let path = fx.model().join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    t["added_tokens"].as_array_mut().unwrap().push(json!({
        "id": 100000, "content": "zzqq", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": false
    }));
    std::fs::write(&path, t.to_string()).unwrap();
    fails(
        fx.generate(&["--prompt", "hello zzqq", "--template", "raw"]),
        &[
            "tokenizer.json",
            "\"zzqq\" has id 420",
            "420 token embeddings",
            "does not belong",
        ],
    );
    // Prompts without it still run.
    ok(fx.generate(&[
        "--prompt",
        "hello",
        "--template",
        "raw",
        "--max-new-tokens",
        "2",
    ]));
}

#[test]
fn errors_stay_one_line_with_rust_backtrace_set() {
    // RUST_BACKTRACE=1 makes the tensor library capture a backtrace into its errors; the
    // message must still be one line, without frames.
    let fx = Fixture::new();
    corrupt_weight(&fx, "model.norm.weight", 0, f32::NAN);
    for args in [
        vec!["--prompt", "hello"],
        vec!["--prompt", "hello", "--ablate", "9:0"],
        vec!["--prompt", "hello", "--epsilon", "nan"],
        vec!["--prompt", "hello", "--model"],
    ] {
        let mut c = fx.generate(&args);
        c.env("RUST_BACKTRACE", "1");
        let o = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn a_negative_norm_epsilon_is_refused() {
    let fx = Fixture::new();
    let mut c = fx.read_model_json("config.json");
    c["rms_norm_eps"] = json!(-1.0);
    fx.write_model_json("config.json", &c);
    gen_fails(&fx, &[], &["config.json", "rms_norm_eps", "positive"]);
}
