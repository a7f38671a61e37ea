//! Tests of `sahara ships`: lines, summary, plots, engines, data formats, resuming, bad inputs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_grids_close, close, fails, grid, jsonl, ok, ok_both, parse_json, queries, sahara,
    text_file, Fixture,
};
use serde_json::{json, Value};

impl Fixture {
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

#[test]
fn ships_out_that_is_a_folder_or_a_device_is_refused() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    let folder = fx.path("outdir");
    std::fs::create_dir(&folder).unwrap();
    let run = |out: &Path, needles: &[&str]| {
        fails(
            fx.ships(&[]).arg("--data").arg(&data).arg("--out").arg(out),
            needles,
        )
    };
    run(&folder, &["outdir", "is a folder"]);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
    let before = Path::new("/dev/null.run.json").exists();
    run(Path::new("/dev/null"), &["/dev/null", "special file"]);
    assert_eq!(Path::new("/dev/null.run.json").exists(), before);
}

#[test]
fn ships_kl_paper_is_recorded_and_a_resume_with_the_other_kl_is_refused() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 6));
    let out = fx.path("paper.jsonl");
    let run = |kl: &str| {
        let mut c = fx.ships(&["--kl", kl]);
        c.arg("--data").arg(&data).arg("--out").arg(&out);
        c
    };
    ok(run("paper"));
    let record = parse_json(&std::fs::read_to_string(fx.path("paper.jsonl.run.json")).unwrap());
    assert_eq!(record["settings"]["kl"], "paper");
    let summary =
        parse_json(&std::fs::read_to_string(fx.path("paper.jsonl.summary.json")).unwrap());
    assert_eq!(summary["kl"], "paper");
    // On a model whose probabilities stay far above 1e-12 both formulas agree closely.
    let exact = ok(fx.ships(&[]).arg("--data").arg(&data));
    let paper_lines = jsonl(&out);
    for (p, e) in paper_lines.iter().zip(exact.lines().map(parse_json)) {
        assert_grids_close(&grid(p), &grid(&e), 1e-4, "paper vs exact");
    }
    fails(run("exact"), &["kl was \"paper\", now \"exact\""]);
    fails(
        fx.ships(&["--kl", "nope"]).arg("--data").arg(&data),
        &["--kl", "\"nope\""],
    );
}

#[test]
fn ships_splits_batches_the_device_has_no_memory_for_and_scores_the_same() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 7));
    let run = |oom: Option<&str>| -> Vec<Value> {
        let mut c = fx.ships(&["--batch-size", "12"]);
        c.arg("--data").arg(&data);
        if let Some(n) = oom {
            c.env("SAHARA_FAULT_OOM_ABOVE", n);
        }
        ok(c).lines().map(parse_json).collect()
    };
    let whole = run(None);
    let split = run(Some("2"));
    for (a, b) in whole.iter().zip(&split) {
        assert_grids_close(&grid(a), &grid(b), 1e-6, "split batches");
    }
    // Not even one row fits: one line, no panic.
    let mut c = fx.ships(&[]);
    c.arg("--data")
        .arg(&data)
        .env("SAHARA_FAULT_OOM_ABOVE", "0");
    fails(c, &["out of memory with 1 row(s)"]);
}

#[test]
fn ships_keeps_gguf_weights_quantized_when_asked_and_records_it() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 5));
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf_tiny/model.gguf");
    let out = fx.dir.path().join("q.jsonl");
    let mut c = sahara();
    c.args([
        "ships",
        "--quiet",
        "--template",
        "raw",
        "--keep-quantized",
        "--model",
    ])
    .arg(&gguf)
    .arg("--data")
    .arg(&data)
    .arg("--out")
    .arg(&out);
    ok(c);
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(fx.dir.path().join("q.jsonl.run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["settings"]["weights"], "quantized");
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 1);
    assert!(grid(&lines[0])
        .iter()
        .flatten()
        .all(|s| s.is_some_and(f64::is_finite)));
    // A model folder has no quantized weights to keep: one line.
    let mut c = fx.ships(&["--keep-quantized"]);
    c.arg("--data").arg(&data);
    fails(c, &["only from a GGUF file"]);
}

#[test]
fn a_model_split_over_a_device_list_scores_as_on_one_device() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 5));
    let one = fx.path("one.jsonl");
    let split = fx.path("split.jsonl");
    ok(fx.ships_to(&data, &one).arg("--quiet"));
    ok(fx
        .ships_to(&data, &split)
        .args(["--quiet", "--device", "cpu,cpu,cpu"]));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(&split).unwrap(),
        "the lines differ"
    );
    fails(
        fx.ships_to(&data, &fx.path("bad.jsonl"))
            .args(["--device", "cpu,cuda:0"]),
        &["--device", "mixes the CPU and GPUs"],
    );
    fails(
        fx.ships_to(&data, &fx.path("bad.jsonl"))
            .args(["--device", "cpu,tpu"]),
        &["--device", "tpu"],
    );
}

// --- gradient screening (--engine screen) ---------------------------------------------------

#[test]
fn ships_screen_marks_verified_heads_exact_with_the_fast_engines_scores() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(2, 6));
    let out = fx.path("screen.jsonl");
    ok(fx
        .ships(&["--engine", "screen", "--verify-top", "5"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    let fast: Vec<Value> = ok(fx.ships(&[]).arg("--data").arg(&data))
        .lines()
        .map(parse_json)
        .collect();
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2);
    for (line, f) in lines.iter().zip(&fast) {
        let s = &line["screen"];
        assert_eq!(s["tokens"], 8, "{s}");
        let mass = s["mass"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-9, "{s}");
        let exact: Vec<Vec<bool>> = serde_json::from_value(s["exact"].clone()).unwrap();
        let estimates: Vec<Vec<f64>> = serde_json::from_value(s["estimates"].clone()).unwrap();
        let (scores, want) = (grid(line), grid(f));
        let mut verified = Vec::new();
        for l in 0..scores.len() {
            for h in 0..scores[l].len() {
                let got = scores[l][h].unwrap();
                if exact[l][h] {
                    verified.push(estimates[l][h]);
                    assert!(
                        close(got, want[l][h].unwrap(), 1e-5),
                        "{l}:{h}: {got} vs fast {want:?}"
                    );
                } else {
                    assert_eq!(got, estimates[l][h], "{l}:{h} keeps its estimate");
                }
            }
        }
        // The five verified heads are the screen's top five.
        assert_eq!(verified.len(), 5, "{s}");
        let floor = verified.iter().cloned().fold(f64::INFINITY, f64::min);
        let above = estimates.iter().flatten().filter(|&&e| e > floor).count();
        assert!(
            above <= 4,
            "{above} unverified heads are estimated above a verified one"
        );
    }
    let summary =
        parse_json(&std::fs::read_to_string(fx.path("screen.jsonl.summary.json")).unwrap());
    assert!(
        summary["note"]
            .as_str()
            .unwrap()
            .contains("gradient screen"),
        "{summary}"
    );
    let record = parse_json(&std::fs::read_to_string(fx.path("screen.jsonl.run.json")).unwrap());
    assert_eq!(record["settings"]["engine"], "screen", "{record}");
    assert_eq!(record["settings"]["screen"]["verify_top"], "5", "{record}");
    // Resuming with another screen is refused; the same command finds the run finished.
    fails(
        fx.ships(&["--engine", "screen", "--verify-top", "10%"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        &["screen.jsonl"],
    );
    let before = std::fs::read(&out).unwrap();
    ok(fx
        .ships(&["--engine", "screen", "--verify-top", "5"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn ships_screen_verifying_every_head_equals_the_fast_engine() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 5));
    let screened = ok(fx
        .ships(&[
            "--engine",
            "screen",
            "--verify-top",
            "100%",
            "--screen-tokens",
            "3",
        ])
        .arg("--data")
        .arg(&data));
    let fast = ok(fx.ships(&[]).arg("--data").arg(&data));
    let (s, f) = (
        parse_json(screened.lines().next().unwrap()),
        parse_json(fast.lines().next().unwrap()),
    );
    assert_eq!(s["screen"]["tokens"], 3);
    assert_grids_close(&grid(&s), &grid(&f), 1e-5, "screen verifying 100% vs fast");
    assert!(s["screen"]["exact"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .all(|b| b == true));
}

#[test]
fn ships_screen_settings_are_refused_where_they_do_not_apply() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(1, 4));
    ships_fails(
        &fx,
        &data,
        &["--verify-top", "5"],
        &["--verify-top", "--engine screen"],
    );
    ships_fails(
        &fx,
        &data,
        &["--screen-tokens", "4"],
        &["--screen-tokens", "--engine screen"],
    );
    ships_fails(
        &fx,
        &data,
        &["--engine", "screen", "--verify-top", "5x"],
        &["--verify-top", "K or P%"],
    );
    ships_fails(
        &fx,
        &data,
        &["--engine", "screen", "--verify-top", "150%"],
        &["--verify-top", "100"],
    );
    ships_fails(
        &fx,
        &data,
        &["--engine", "screen", "--screen-tokens", "0"],
        &["--screen-tokens", "at least 1"],
    );
    let src = text_file(&fx, "src.txt", &queries(1, 4));
    let m = ships_fails(
        &fx,
        &data,
        &[
            "--engine",
            "screen",
            "--mode",
            "patch",
            "--source-data",
            src.to_str().unwrap(),
        ],
        &["--engine"],
    );
    assert!(m.contains("patch"), "{m}");
}
