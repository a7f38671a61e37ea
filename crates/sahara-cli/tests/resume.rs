//! Interrupted and resumed runs write exactly what an uninterrupted run writes: the process is
//! aborted at a deterministic fault point (`SAHARA_FAULT_AFTER=N`: right after its N-th line or
//! step is on disk, as `kill -9` would), rerun, and every output file compared byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{ok, queries, run, sahara, show, text_file, Fixture};

/// Every file of a folder, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Runs `args` (with `{out}` replaced by a fresh folder's output path) once uninterrupted and
/// once aborted after each of `faults` units and resumed, and checks the outputs are equal.
fn resumes_identically(args: &[&str], out_name: &str, faults: &[usize]) {
    let cmd = |dir: &Path| -> Command {
        let out = dir.join(out_name);
        let mut c = sahara();
        for a in args {
            c.arg(a.replace("{out}", out.to_str().unwrap()));
        }
        c.arg("--quiet");
        c
    };
    let clean = tempfile::tempdir().unwrap();
    ok(cmd(clean.path()));
    let want = files(clean.path());
    for &n in faults {
        let dir = tempfile::tempdir().unwrap();
        let mut first = cmd(dir.path());
        first.env("SAHARA_FAULT_AFTER", n.to_string());
        let o = run(&mut first);
        assert!(
            o.status.code().is_none(),
            "the fault point after {n} did not abort the run\n{}",
            show(&first, &o)
        );
        let lines = std::fs::read(dir.path().join(out_name)).unwrap_or_default();
        assert!(!lines.is_empty(), "nothing on disk after fault {n}");
        ok(cmd(dir.path()));
        let got = files(dir.path());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "files after a fault at {n}"
        );
        for (name, bytes) in &want {
            assert!(
                &got[name] == bytes,
                "{name} differs after a fault at {n} and a resume"
            );
        }
    }
}

#[test]
fn ships_resumed_after_a_fault_equals_an_uninterrupted_run() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(4, 9));
    let (model, data) = (fx.model(), data);
    let args = [
        "ships",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        "{out}",
    ];
    // After the first line, in the middle, and after the last line (before the summary).
    resumes_identically(&args, "s.jsonl", &[1, 2, 4]);
}

#[test]
fn attribute_resumed_after_a_fault_equals_an_uninterrupted_run() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(5, 7));
    let (model, data) = (fx.model(), data);
    let args = [
        "attribute",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        "{out}",
    ];
    resumes_identically(&args, "a.json", &[1, 2, 3]);
}

#[test]
fn eval_resumed_after_a_fault_equals_an_uninterrupted_run() {
    let args = [
        "eval",
        "--limit",
        "3",
        "--benign",
        "builtin:benign",
        "--benign-limit",
        "2",
        "--ablate",
        "2:4",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "2",
        "--out",
        "{out}",
    ];
    // 10 lines: 3 harmful + 2 benign per condition, two conditions.
    resumes_identically(&args, "e.jsonl", &[1, 4, 10]);
}
