//! Helpers shared by the tests that run the `sahara` binary (each test crate uses some).
#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sahara::checkpoint::random::{write_random_model, RandomModel};
use serde_json::Value;

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
