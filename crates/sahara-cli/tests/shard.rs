//! Sharded runs (`--shard I/N`, or a Slurm array task's or Kubernetes Indexed Job's
//! environment) and `sahara merge`: shards run as concurrent processes, one of them
//! interrupted (the deterministic fault point, and a real kill -9) and restarted, merge into
//! exactly the files of a single run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fails, ok, queries, sahara, text_file, Fixture};

impl Fixture {
    /// `sahara ships --model MODEL --quiet --data DATA --out OUT` followed by `args`.
    fn ships_out(&self, data: &Path, out: &Path, args: &[&str]) -> Command {
        let mut c = self.ships_to(data, out);
        c.arg("--quiet").args(args);
        c
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", p.display()))
}

/// The files a ships run with `--out out --plot plot` writes, as bytes.
fn outputs(out: &Path, plot: &Path) -> Vec<(String, Vec<u8>)> {
    vec![
        ("lines".into(), read(out)),
        ("summary".into(), read(&with_suffix(out, "summary.json"))),
        ("record".into(), read(&with_suffix(out, "run.json"))),
        ("plot".into(), read(plot)),
    ]
}

fn merge(dir: &Path, out: &Path, plot: &Path) {
    ok(sahara()
        .arg("merge")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .arg("--plot")
        .arg(plot));
}

#[test]
fn three_concurrent_shards_one_interrupted_merge_into_the_single_run_byte_for_byte() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(7, 6));
    let single = fx.path("single.jsonl");
    let single_plot = fx.path("single.png");
    ok(fx.ships_out(&data, &single, &["--plot", single_plot.to_str().unwrap()]));

    let dir = fx.path("shards");
    // Three processes at once; shard 1 aborts (as kill -9 would) after its first line.
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut c = fx.ships_out(&data, &dir, &["--shard", &format!("{i}/3")]);
            if i == 1 {
                c.env("SAHARA_FAULT_AFTER", "1");
            }
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let status: Vec<_> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap())
        .collect();
    assert!(status[0].success() && status[2].success());
    assert!(!status[1].success(), "shard 1 stopped at its fault point");
    // Merging now names the unfinished shard.
    fails(
        sahara()
            .arg("merge")
            .arg(&dir)
            .arg("--out")
            .arg(fx.path("early.jsonl")),
        &["shard 1/3 has not finished"],
    );
    // Restarted, it resumes.
    ok(fx.ships_out(&data, &dir, &["--shard", "1/3"]));
    let merged = fx.path("merged.jsonl");
    let merged_plot = fx.path("merged.png");
    merge(&dir, &merged, &merged_plot);
    for ((what, a), (_, b)) in outputs(&single, &single_plot)
        .iter()
        .zip(outputs(&merged, &merged_plot))
    {
        assert!(*a == b, "{what} differs from the single run");
    }
    // The shards' records say which shard wrote which queries.
    let r: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("shard-00002-of-00003.jsonl.run.json"))).unwrap();
    assert_eq!(r["settings"]["shard"]["index"], 2);
    assert_eq!(r["settings"]["shard"]["count"], 3);
    assert_eq!(r["settings"]["shard"]["queries"][1], 7);
}

#[test]
fn a_shard_killed_for_real_resumes_and_the_merge_is_the_single_run() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(6, 30));
    let single = fx.path("single.jsonl");
    ok(fx.ships_out(&data, &single, &[]));
    let dir = fx.path("shards");
    ok(fx.ships_out(&data, &dir, &["--shard", "0/2"]));
    // Shard 1 is killed with SIGKILL once its first line is on disk (polled, not timed).
    let file = dir.join("shard-00001-of-00002.jsonl");
    let mut child = fx
        .ships_out(&data, &dir, &["--shard", "1/2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let lines = std::fs::read_to_string(&file).map_or(0, |t| t.matches('\n').count());
        if lines >= 1 {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    child.wait().unwrap();
    ok(fx.ships_out(&data, &dir, &["--shard", "1/2"]));
    let merged = fx.path("merged.jsonl");
    ok(sahara().arg("merge").arg(&dir).arg("--out").arg(&merged));
    assert!(read(&merged) == read(&single), "lines differ");
    assert!(
        read(&with_suffix(&merged, "summary.json")) == read(&with_suffix(&single, "summary.json")),
        "summaries differ"
    );
}

#[test]
fn shards_come_from_a_slurm_array_or_a_kubernetes_indexed_job() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(4, 5));
    let single = fx.path("single.jsonl");
    ok(fx.ships_out(&data, &single, &[]));
    // A Slurm array --array=5-6: task IDs 5 and 6 are shards 0 and 1.
    let slurm = fx.path("slurm");
    for id in ["5", "6"] {
        ok(fx
            .ships_out(&data, &slurm, &[])
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", "5")
            .env("SLURM_ARRAY_TASK_COUNT", "2"));
    }
    assert!(slurm.join("shard-00001-of-00002.jsonl").is_file());
    let merged = fx.path("slurm.jsonl");
    ok(sahara().arg("merge").arg(&slurm).arg("--out").arg(&merged));
    assert!(read(&merged) == read(&single));
    // A Kubernetes Indexed Job of 2 completions.
    let k8s = fx.path("k8s");
    for i in ["0", "1"] {
        ok(fx
            .ships_out(&data, &k8s, &["--shards", "2"])
            .env("JOB_COMPLETION_INDEX", i));
    }
    let merged = fx.path("k8s.jsonl");
    ok(sahara().arg("merge").arg(&k8s).arg("--out").arg(&merged));
    assert!(read(&merged) == read(&single));
    // A stepped array does not number shards; a Job index without the count says so.
    fails(
        fx.ships_out(&data, &fx.path("x"), &[])
            .env("SLURM_ARRAY_TASK_ID", "2")
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_ARRAY_TASK_STEP", "2"),
        &["step 2"],
    );
    fails(
        fx.ships_out(&data, &fx.path("y"), &[])
            .env("JOB_COMPLETION_INDEX", "0"),
        &["number of shards is not given"],
    );
}

#[test]
fn merge_refuses_missing_mixed_and_foreign_shards() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(4, 5));
    let dir = fx.path("shards");
    ok(fx.ships_out(&data, &dir, &["--shard", "0/3"]));
    ok(fx.ships_out(&data, &dir, &["--shard", "2/3"]));
    let merge_to = |name: &str| {
        let mut c = sahara();
        c.arg("merge").arg(&dir).arg("--out").arg(fx.path(name));
        c
    };
    fails(merge_to("a.jsonl"), &["shard(s) 1/3 missing"]);
    // Shard 1 computed with other settings.
    ok(fx.ships_out(&data, &dir, &["--shard", "1/3", "--top", "3"]));
    fails(merge_to("b.jsonl"), &["not a shard of the same run", "top"]);
    std::fs::remove_file(dir.join("shard-00001-of-00003.jsonl")).unwrap();
    std::fs::remove_file(dir.join("shard-00001-of-00003.jsonl.run.json")).unwrap();
    // A shard of another count in the same folder.
    ok(fx.ships_out(&data, &dir, &["--shard", "1/2"]));
    fails(merge_to("c.jsonl"), &["mixes two runs"]);
    // A plot belongs to the merge, and a shard needs its folder.
    fails(
        fx.ships_out(&data, &dir, &["--shard", "0/3", "--plot", "p.png"]),
        &["sahara merge"],
    );
    let mut no_out = sahara();
    no_out
        .args(["ships", "--quiet", "--shard", "0/2", "--model"])
        .arg(fx.model())
        .arg("--data")
        .arg(&data);
    fails(no_out, &["--out DIR"]);
}

impl Fixture {
    /// `sahara attribute --model MODEL --quiet --data DATA --steps 2 --chunk-heads 3` then `args`.
    fn attribute_chunked(&self, data: &Path, args: &[&str]) -> Command {
        let mut c = sahara();
        c.arg("attribute")
            .arg("--model")
            .arg(self.model())
            .arg("--data")
            .arg(data)
            .args(["--quiet", "--steps", "2", "--chunk-heads", "3"])
            .args(args);
        c
    }
}

fn same_files(a: &Path, b: &Path) {
    assert!(
        read(a) == read(b),
        "{} differs from {}",
        a.display(),
        b.display()
    );
    assert!(
        read(&with_suffix(a, "run.json")) == read(&with_suffix(b, "run.json")),
        "the run records differ"
    );
}

#[test]
fn attribute_workers_one_dying_with_a_claim_one_after_a_chunk_finish_as_the_single_run() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(6, 5));
    let single = fx.path("single.json");
    ok(fx.attribute_chunked(&data, &["--out", single.to_str().unwrap()]));
    let dir = fx.path("workers");
    let worker = |i: usize| {
        fx.attribute_chunked(
            &data,
            &[
                "--out",
                dir.to_str().unwrap(),
                "--shard",
                &format!("{i}/3"),
                "--claim-timeout",
                "1",
            ],
        )
    };
    // 12 candidates in chunks of 3, 2 steps. Worker 1 dies holding its first claim: chunk 0
    // of step 1, left without a result.
    let mut first = worker(1);
    first.env("SAHARA_FAULT_AFTER_CLAIM", "1");
    let o = first.output().unwrap();
    assert!(!o.status.success(), "worker 1 stopped at its claim");
    let step1 = dir.join("step-001");
    assert!(step1.join("chunk-00000.claim").is_file());
    assert!(!step1.join("chunk-00000.json").exists());
    // Workers 0 and 2 at once; worker 2 dies after its first chunk's result (if it gets one).
    // Chunk 0 is taken over once its claim's heartbeat is 1 s old.
    let mut w2 = worker(2);
    w2.env("SAHARA_FAULT_AFTER", "1");
    let children = [worker(0), w2].map(|mut c| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    });
    let status: Vec<_> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap())
        .collect();
    assert!(
        status[0].success(),
        "worker 0 finishes the run, alone if it must"
    );
    assert!(
        step1.join("chunk-00000.json").is_file(),
        "the dead claim was taken over"
    );
    // Restarted, the others find the work done.
    for i in [1, 2] {
        ok(fx.attribute_chunked(
            &data,
            &["--out", dir.to_str().unwrap(), "--shard", &format!("{i}/3")],
        ));
    }
    let merged = fx.path("merged.json");
    ok(sahara().arg("merge").arg(&dir).arg("--out").arg(&merged));
    same_files(&merged, &single);
}

#[test]
fn one_attribute_worker_alone_does_every_chunk() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(5, 6));
    let single = fx.path("single.json");
    ok(fx.attribute_chunked(&data, &["--out", single.to_str().unwrap()]));
    let dir = fx.path("workers");
    ok(fx.attribute_chunked(&data, &["--out", dir.to_str().unwrap(), "--shard", "3/8"]));
    assert!(dir.join("step-002/chunk-00003.json").is_file());
    let merged = fx.path("merged.json");
    ok(sahara().arg("merge").arg(&dir).arg("--out").arg(&merged));
    same_files(&merged, &single);
    // Chunked or not, the search chooses the same heads here (the scores may differ in the
    // last bits, as batches differ).
    let whole = fx.path("whole.json");
    let mut c = sahara();
    c.arg("attribute")
        .arg("--model")
        .arg(fx.model())
        .arg("--data")
        .arg(&data)
        .args(["--quiet", "--steps", "2", "--out"])
        .arg(&whole);
    ok(c);
    let sel = |p: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&read(p)).unwrap()["selected"].clone()
    };
    assert_eq!(sel(&whole), sel(&single));
}

/// `sahara eval` on a tiny model whose tokens are words: two ablations, a benign set,
/// sampling, batches of 2, with `--out OUT` and `args`.
fn eval_out(fx: &Fixture, harmful: &Path, benign: &Path, out: &Path, args: &[&str]) -> Command {
    let mut c = sahara();
    c.arg("eval")
        .arg("--model")
        .arg(fx.model())
        .arg("--quiet")
        .args(["--max-new-tokens", "6", "--batch-size", "2"])
        .args(["--ablate", "1:0", "--ablate", "2:3,0:1"])
        .args(["--temperature", "1", "--top-k", "5", "--seed", "7"])
        .args(["--judge", "keyword", "--judge", "jbb-refusal"])
        .arg("--data")
        .arg(harmful)
        .arg("--benign")
        .arg(benign)
        .arg("--out")
        .arg(out)
        .args(args);
    c
}

/// Kills `child` with SIGKILL once `file` holds a line (polled, not timed).
fn kill_after_first_line(mut child: std::process::Child, file: &Path) {
    loop {
        let lines = std::fs::read_to_string(file).map_or(0, |t| t.matches('\n').count());
        if lines >= 1 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn eval_in_three_shards_one_interrupted_one_killed_merges_into_the_single_run_byte_for_byte() {
    let fx = Fixture::with_spec(|s| s.vocab_size = 3 + sahara::checkpoint::random::WORDS.len());
    let harmful = text_file(&fx, "harmful.txt", &queries(7, 4));
    let benign = text_file(&fx, "benign.txt", &queries(3, 3));
    let single = fx.path("single.jsonl");
    ok(eval_out(&fx, &harmful, &benign, &single, &[]));

    let dir = fx.path("shards");
    // Shard 1 aborts at its fault point after its first line (as kill -9 would); shard 2 is
    // killed with SIGKILL once its first line is on disk; shard 0 finishes.
    let mut one = eval_out(&fx, &harmful, &benign, &dir, &["--shard", "1/3"]);
    one.env("SAHARA_FAULT_AFTER", "1");
    let spawn = |mut c: Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let zero = spawn(eval_out(&fx, &harmful, &benign, &dir, &["--shard", "0/3"]));
    let one = spawn(one);
    let two = spawn(eval_out(&fx, &harmful, &benign, &dir, &["--shard", "2/3"]));
    kill_after_first_line(two, &dir.join("shard-00002-of-00003.jsonl"));
    let status = [zero, one].map(|mut c| c.wait().unwrap());
    assert!(status[0].success(), "shard 0 finished");
    assert!(!status[1].success(), "shard 1 stopped at its fault point");
    fails(
        sahara()
            .arg("merge")
            .arg(&dir)
            .arg("--out")
            .arg(fx.path("early.jsonl")),
        &["has not finished"],
    );
    for i in [1, 2] {
        ok(eval_out(
            &fx,
            &harmful,
            &benign,
            &dir,
            &["--shard", &format!("{i}/3")],
        ));
    }
    let merged = fx.path("merged.jsonl");
    let table = ok(sahara().arg("merge").arg(&dir).arg("--out").arg(&merged));
    for suffix in ["", ".summary.json", ".run.json"] {
        let (a, b) = (
            PathBuf::from(format!("{}{suffix}", single.display())),
            PathBuf::from(format!("{}{suffix}", merged.display())),
        );
        assert!(
            read(&a) == read(&b),
            "{suffix:?} differs from the single run"
        );
    }
    assert!(table.contains("ASR on 7 harmful queries"), "{table}");
    // The two judges' agreement and disagreements are part of what merges exactly.
    let summary: serde_json::Value = serde_json::from_slice(&read(&PathBuf::from(format!(
        "{}.summary.json",
        merged.display()
    ))))
    .unwrap();
    assert_eq!(
        summary["agreement"][0]["judges"],
        serde_json::json!(["keyword", "jbb-refusal"])
    );
    assert!(
        !summary["disagreements"].as_array().unwrap().is_empty(),
        "the judges disagree on some responses: {}",
        summary["agreement"]
    );
    // Each shard's record says which batches of the plan it generated, and the conditions.
    let r: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("shard-00000-of-00003.jsonl.run.json"))).unwrap();
    let s = &r["settings"]["shard"];
    assert_eq!(s["index"], 0);
    // 3 conditions × (4 harmful batches + 2 benign batches).
    assert_eq!(s["of"], 18);
    assert_eq!(
        s["conditions"],
        serde_json::json!(["unmodified", "1:0", "2:3,0:1"])
    );
    // A shard rerun with other conditions is another run: refused, not mixed in.
    fails(
        eval_out(
            &fx,
            &harmful,
            &benign,
            &dir,
            &["--shard", "0/3", "--ablate", "0:0"],
        ),
        &["shard-00000-of-00003.jsonl"],
    );
}
