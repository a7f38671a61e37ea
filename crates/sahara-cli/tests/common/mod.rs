//! Helpers shared by the tests that run the `sahara` binary (each test crate uses some).
#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sahara::checkpoint::random::{write_random_model, RandomModel, WORDS};
use serde_json::{json, Map, Value};

/// The binary under test.
pub fn sahara() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sahara"));
    // A panic would print its backtrace hint; make sure nothing outside steers the run.
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null());
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the sahara binary runs")
}

pub fn show(cmd: &Command, o: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn assert_no_panic(cmd: &Command, o: &Output) {
    for text in [&o.stdout, &o.stderr] {
        let t = String::from_utf8_lossy(text);
        assert!(
            !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
            "panic output\n{}",
            show(cmd, o)
        );
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let o = run(cmd);
    assert_no_panic(cmd, &o);
    assert!(o.status.success(), "expected success\n{}", show(cmd, &o));
    String::from_utf8(o.stdout).expect("UTF-8 stdout")
}

/// Runs a command that must succeed; returns stdout and stderr.
pub fn ok_both(mut cmd: impl BorrowMut<Command>) -> (String, String) {
    let cmd = cmd.borrow_mut();
    let o = run(cmd);
    assert_no_panic(cmd, &o);
    assert!(o.status.success(), "expected success\n{}", show(cmd, &o));
    (
        String::from_utf8(o.stdout).expect("UTF-8 stdout"),
        String::from_utf8(o.stderr).expect("UTF-8 stderr"),
    )
}

/// Runs a command that must fail as every error of the tool fails: a non-zero exit, stderr
/// exactly one line `error: …` holding every one of `needles`, nothing on stdout, no panic.
/// Returns the message after `error: `.
pub fn fails(mut cmd: impl BorrowMut<Command>, needles: &[&str]) -> String {
    let cmd = cmd.borrow_mut();
    let o = run(cmd);
    assert_no_panic(cmd, &o);
    assert!(!o.status.success(), "expected failure\n{}", show(cmd, &o));
    assert!(
        o.status.code().is_some(),
        "killed by a signal, not an error exit\n{}",
        show(cmd, &o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let body = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !body.is_empty() && !body.contains('\n'),
        "stderr is not exactly one line\n{}",
        show(cmd, &o)
    );
    let msg = body
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("stderr does not start with `error: `\n{}", show(cmd, &o)));
    for n in needles {
        assert!(
            msg.contains(n),
            "error message lacks {n:?}: {msg}\n{}",
            show(cmd, &o)
        );
    }
    assert!(
        o.stdout.is_empty(),
        "a failed command printed on stdout\n{}",
        show(cmd, &o)
    );
    eprintln!("error message: {msg}");
    msg.to_string()
}

pub fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The JSON lines of a file.
pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(parse_json)
        .collect()
}

/// `a` and `b` equal within `rel` relative to the larger magnitude.
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// A temporary folder holding a tiny random model and any data files a test writes.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A folder with the tiny Llama of [`RandomModel::tiny`] in `model/`.
    pub fn new() -> Self {
        Self::with_spec(|_| {})
    }

    /// A folder with a tiny Llama, changed by `edit`, in `model/`.
    pub fn with_spec(edit: impl FnOnce(&mut RandomModel)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = RandomModel::tiny("LlamaForCausalLM");
        edit(&mut spec);
        write_random_model(&dir.path().join("model"), &spec).expect("random model");
        Fixture { dir }
    }

    pub fn model(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the fixture folder and returns its path.
    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write fixture file");
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by the per-command test files (generate, ships, surgery, attribute, cli)
// ---------------------------------------------------------------------------------------------

impl Fixture {
    /// `sahara generate --model MODEL` followed by `args`.
    pub fn generate(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("generate")
            .arg("--model")
            .arg(self.model())
            .args(args);
        c
    }

    /// `sahara ships --model MODEL --data DATA --out OUT`.
    pub fn ships_to(&self, data: &Path, out: &Path) -> Command {
        let mut c = sahara();
        c.arg("ships")
            .arg("--model")
            .arg(self.model())
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out);
        c
    }

    /// `sahara attribute --model MODEL --quiet` followed by `args`.
    pub fn attribute(&self, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("attribute")
            .arg("--model")
            .arg(self.model())
            .arg("--quiet")
            .args(args);
        c
    }
}

/// The score grid of a ships line, nulls as `None`.
pub fn grid(line: &Value) -> Vec<Vec<Option<f64>>> {
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

pub fn assert_grids_close(a: &[Vec<Option<f64>>], b: &[Vec<Option<f64>>], rel: f64, what: &str) {
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
pub fn queries(n: usize, words: usize) -> Vec<String> {
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

pub fn text_file(fx: &Fixture, name: &str, qs: &[String]) -> PathBuf {
    fx.write(name, qs.join("\n") + "\n")
}

// ---------------------------------------------------------------------------------------------
// Safetensors surgery, by hand: 8-byte little-endian header length, JSON header, data.
// ---------------------------------------------------------------------------------------------

pub struct StTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Value,
    pub bytes: Vec<u8>,
}

pub fn read_safetensors(path: &Path) -> (Option<Value>, Vec<StTensor>) {
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

pub fn write_safetensors(path: &Path, meta: Option<Value>, tensors: &[StTensor]) {
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

// ---------------------------------------------------------------------------------------------
// sahara generate
// ---------------------------------------------------------------------------------------------

pub const PROMPT: &str = "how do i make a cake";

pub fn generate_json(fx: &Fixture, extra: &[&str]) -> Value {
    let mut args = vec!["--prompt", PROMPT, "--max-new-tokens", "5", "--json"];
    args.extend_from_slice(extra);
    let out = ok(&mut fx.generate(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got {out:?}");
    parse_json(lines[0])
}

pub fn check_generate_output(v: &Value, vocab: usize) {
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
