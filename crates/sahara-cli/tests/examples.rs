//! The cluster examples run as they are: `examples/slurm/ships.sbatch`'s (and
//! `attribute.sbatch`'s) `#SBATCH` lines are
//! sbatch options and its body, run once per array task with the variables Slurm sets, gives
//! the single run after `sahara merge`; `examples/k8s/ships-job.yaml` is a valid Indexed Job
//! (checked against the Kubernetes schema by `kubernetes-validate`, which `.ci/run`
//! installs; found through `SAHARA_KUBERNETES_VALIDATE`, a folder for PYTHONPATH) whose
//! command, run once per index, gives the single run too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, queries, sahara, text_file, Fixture};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// The options of the `#SBATCH` lines, as `(name, value)`.
fn sbatch_options(script: &str) -> Vec<(String, String)> {
    script
        .lines()
        .filter_map(|l| l.strip_prefix("#SBATCH "))
        .map(|o| {
            let (k, v) = o.trim().split_once('=').expect("--option=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_slurm_array_example_runs_as_slurm_runs_it() {
    let script = example("examples/slurm/ships.sbatch");
    assert!(script.starts_with("#!/bin/bash\n"));
    let opts = sbatch_options(&script);
    // Options sbatch knows, written as it parses them.
    let known = [
        "--job-name",
        "--array",
        "--nodes",
        "--ntasks",
        "--cpus-per-task",
        "--time",
        "--output",
        "--gres",
        "--partition",
        "--mem",
    ];
    for (k, v) in &opts {
        assert!(known.contains(&k.as_str()), "unknown sbatch option {k}");
        assert!(!v.is_empty(), "{k} has no value");
    }
    // `#SBATCH` lines count only before the first command.
    let first_command = script
        .lines()
        .position(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    let lines: Vec<&str> = script.lines().collect();
    let last_sbatch = lines
        .iter()
        .rposition(|l| l.starts_with("#SBATCH"))
        .unwrap();
    assert!(last_sbatch < first_command);
    let array = &opts.iter().find(|(k, _)| k == "--array").unwrap().1;
    let (lo, hi) = array.split_once('-').unwrap();
    let (lo, hi): (usize, usize) = (lo.parse().unwrap(), hi.parse().unwrap());

    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(6, 5));
    let single = fx.path("single.jsonl");
    ok(fx.ships_to(&data, &single).arg("--quiet"));
    let out = fx.path("shards");
    for id in lo..=hi {
        let mut c = Command::new("bash");
        c.arg(repo().join("examples/slurm/ships.sbatch"))
            .arg(fx.model())
            .arg(&data)
            .arg(&out)
            .env("SAHARA", env!("CARGO_BIN_EXE_sahara"))
            .env("SAHARA_DEVICE", "cpu")
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_MIN", lo.to_string())
            .env("SLURM_ARRAY_TASK_MAX", hi.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", (hi - lo + 1).to_string())
            .env("SLURM_ARRAY_TASK_STEP", "1");
        ok(c);
    }
    let merged = fx.path("merged.jsonl");
    ok(sahara().arg("merge").arg(&out).arg("--out").arg(&merged));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&single).unwrap());
    // The submit script passes the array and the dependency as sbatch takes them.
    let submit = example("examples/slurm/submit-ships.sh");
    assert!(submit.contains("--dependency=afterok:"));
    assert!(submit.contains("--array=0-$((tasks - 1))"));
}

#[test]
fn the_slurm_attribute_example_gives_the_single_run() {
    let script = example("examples/slurm/attribute.sbatch");
    let opts = sbatch_options(&script);
    assert!(opts.iter().any(|(k, v)| k == "--array" && v == "0-3"));
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(5, 5));
    let single = fx.path("single.json");
    let mut c = sahara();
    c.arg("attribute")
        .arg("--model")
        .arg(fx.model())
        .arg("--data")
        .arg(&data)
        .args(["--quiet", "--steps", "2", "--chunk-heads", "16", "--out"])
        .arg(&single);
    ok(c);
    let out = fx.path("workers");
    // The array's tasks one after the other: the first does every chunk, the rest find the
    // work done.
    for id in 0..4 {
        let mut c = Command::new("bash");
        c.arg(repo().join("examples/slurm/attribute.sbatch"))
            .arg(fx.model())
            .arg(&data)
            .arg(&out)
            .env("SAHARA", env!("CARGO_BIN_EXE_sahara"))
            .env("SAHARA_DEVICE", "cpu")
            .env("SAHARA_STEPS", "2")
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_COUNT", "4");
        ok(c);
    }
    let merged = fx.path("merged.json");
    ok(sahara().arg("merge").arg(&out).arg("--out").arg(&merged));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&single).unwrap());
}

/// The `command:` list of the Job's container, one item a line.
fn job_command(yaml: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "command:").skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        match l.trim().strip_prefix("- ") {
            Some(item) => out.push(item.trim_matches('"').to_string()),
            None => break,
        }
    }
    out
}

fn yaml_number(yaml: &str, key: &str) -> usize {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key}"))
        .parse()
        .unwrap()
}

#[test]
fn the_kubernetes_example_is_a_valid_indexed_job_whose_pods_give_the_single_run() {
    let yaml = example("examples/k8s/ships-job.yaml");
    assert!(yaml.contains("completionMode: Indexed"));
    let completions = yaml_number(&yaml, "completions");
    let command = job_command(&yaml);
    assert_eq!(command[..2], ["sahara", "ships"]);
    let arg = |name: &str| {
        let i = command.iter().position(|c| c == name).unwrap();
        command[i + 1].clone()
    };
    assert_eq!(
        arg("--shards"),
        completions.to_string(),
        "--shards = completions"
    );

    match std::env::var("SAHARA_KUBERNETES_VALIDATE") {
        Ok(dir) => {
            let o = Command::new("python3")
                .env("PYTHONPATH", &dir)
                .args([
                    "-c",
                    "import sys; from kubernetes_validate.__main__ import main; sys.argv[0] = 'kubernetes-validate'; sys.exit(main())",
                    "--strict",
                ])
                .arg(repo().join("examples/k8s/ships-job.yaml"))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "kubernetes-validate: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Err(_) => {
            assert!(
                std::env::var("SAHARA_REQUIRE_KUBERNETES_VALIDATE").is_err(),
                "SAHARA_REQUIRE_KUBERNETES_VALIDATE is set but SAHARA_KUBERNETES_VALIDATE is not"
            );
            eprintln!("SKIPPED the schema check: SAHARA_KUBERNETES_VALIDATE is not set (.ci/run installs kubernetes-validate)");
        }
    }

    // Each pod's command, with the volume's paths pointing here.
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(5, 5));
    let single = fx.path("single.jsonl");
    ok(fx.ships_to(&data, &single).arg("--quiet"));
    let out = fx.path("ships");
    for index in 0..completions {
        let mut c = sahara();
        let mut args = command[1..].to_vec();
        let set = |args: &mut Vec<String>, name: &str, value: &Path| {
            let i = args.iter().position(|c| c == name).unwrap();
            args[i + 1] = value.to_string_lossy().into_owned();
        };
        set(&mut args, "--model", &fx.model());
        set(&mut args, "--data", &data);
        set(&mut args, "--out", &out);
        set(&mut args, "--device", Path::new("cpu"));
        c.args(&args).env("JOB_COMPLETION_INDEX", index.to_string());
        ok(c);
    }
    let merged = fx.path("merged.jsonl");
    ok(sahara().arg("merge").arg(&out).arg("--out").arg(&merged));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&single).unwrap());
}
