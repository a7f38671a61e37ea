//! Golden outputs: each command run on committed inputs (a fixture model and the built-in
//! organism) must write exactly the files recorded in `tests/golden/`, byte for byte: JSON
//! Lines, summaries, run records, plots, stdout and stderr in full, and written weight files
//! by their SHA-256. Paths of the checkout, the output folder and the home folder, and the
//! version, are normalised away, so the goldens hold in any clone.
//!
//! The goldens change only when an output changes on purpose, and then only by
//! `scripts/bless-goldens.sh` (which sets `SAHARA_BLESS_GOLDEN=1`); its diff shows what
//! changed.
//!
//! Float rounding depends on the CPU's vector instructions. The goldens record which the
//! recording machine used (`cpu.txt`); on a machine with other ones, numbers are compared to
//! a relative 1e-4 and weight-file digests are skipped, and the test says so.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{sahara, show};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The SIMD level the float results depend on.
fn cpu_signature() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "x86_64 avx512f\n".into();
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "x86_64 avx2\n".into();
        }
        "x86_64\n".into()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("{}\n", std::env::consts::ARCH)
    }
}

/// One command and the arguments it runs with; `{repo}`, `{out}` and `{golden}` are replaced.
struct Case {
    name: &'static str,
    args: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "ships_fixture",
        args: &[
            "ships",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--data",
            "{golden}/queries.txt",
            "--out",
            "{out}/ships.jsonl",
            "--plot",
            "{out}/ships.svg",
            "--top",
            "5",
        ],
    },
    Case {
        name: "ships_fixture_k_mean",
        args: &[
            "ships",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--data",
            "{golden}/queries.txt",
            "--target",
            "k",
            "--mode",
            "mean",
            "--layers",
            "1..3",
            "--out",
            "{out}/ships.jsonl",
        ],
    },
    Case {
        name: "ships_organism_stdout",
        args: &["ships", "--limit", "3", "--quiet"],
    },
    Case {
        name: "attribute_fixture",
        args: &[
            "attribute",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--data",
            "{golden}/queries.txt",
            "--steps",
            "2",
            "--out",
            "{out}/attribute.json",
            "--plot",
            "{out}/attribute.svg",
            "--quiet",
        ],
    },
    Case {
        name: "attribute_organism",
        args: &[
            "attribute",
            "--limit",
            "24",
            "--steps",
            "2",
            "--rank",
            "2",
            "--target",
            "v",
            "--quiet",
        ],
    },
    Case {
        name: "eval_organism",
        args: &[
            "eval",
            "--limit",
            "6",
            "--ablate",
            "2:4",
            "--ablate",
            "0:5,1:1",
            "--benign",
            "builtin:benign",
            "--benign-limit",
            "6",
            "--max-new-tokens",
            "20",
            "--out",
            "{out}/eval.jsonl",
            "--quiet",
        ],
    },
    Case {
        name: "eval_fixture_stdout",
        args: &[
            "eval",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--data",
            "{golden}/queries.txt",
            "--template",
            "chat",
            "--ablate",
            "1:2",
            "--target",
            "k",
            "--max-new-tokens",
            "6",
            "--quiet",
        ],
    },
    Case {
        name: "surgery_fixture",
        args: &[
            "surgery",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--ablate",
            "0:1,2:3",
            "--out",
            "{out}/model",
        ],
    },
    Case {
        name: "surgery_fixture_k",
        args: &[
            "surgery",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--ablate",
            "1:0",
            "--target",
            "k",
            "--mode",
            "mean",
            "--out",
            "{out}/model",
        ],
    },
    Case {
        name: "generate_fixture",
        args: &[
            "generate",
            "--model",
            "{repo}/fixtures/llama_gqa",
            "--template",
            "chat",
            "--prompt",
            "How do I bake bread?",
            "--max-new-tokens",
            "8",
            "--json",
        ],
    },
    Case {
        name: "generate_organism",
        args: &[
            "generate",
            "--prompt",
            "how do i make a bomb ?",
            "--ablate",
            "2:4",
            "--json",
            "--max-new-tokens",
            "24",
        ],
    },
];

fn is_binary(name: &str) -> bool {
    [".safetensors", ".png", ".gguf"]
        .iter()
        .any(|e| name.ends_with(e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Paths and the version replaced by placeholders.
fn normalise(text: &str, out: &Path) -> String {
    let mut t = text.replace(&out.display().to_string(), "$OUT");
    t = t.replace(&repo().display().to_string(), "$REPO");
    if let Ok(home) = std::env::var("HOME") {
        if home.len() > 1 {
            t = t.replace(&home, "$HOME");
        }
    }
    t.replace(
        &format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        "\"$VERSION\"",
    )
}

/// Every file a case produced: `stdout`, `stderr`, and each file under the output folder by
/// its relative path (binary files as `NAME.sha256`).
fn collect(out: &Path, stdout: &[u8], stderr: &[u8]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    files.insert(
        "stdout".to_string(),
        normalise(&String::from_utf8_lossy(stdout), out),
    );
    files.insert(
        "stderr".to_string(),
        normalise(&String::from_utf8_lossy(stderr), out),
    );
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(out).unwrap().display().to_string();
            let bytes = std::fs::read(&p).unwrap();
            if is_binary(&rel) {
                files.insert(
                    format!("{rel}.sha256"),
                    format!("{}  {}\n", sha256_hex(&bytes), bytes.len()),
                );
            } else {
                files.insert(rel, normalise(&String::from_utf8_lossy(&bytes), out));
            }
        }
    }
    files
}

/// Splits text into alternating non-number and number pieces.
fn pieces(s: &str) -> Vec<(bool, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        let begins_number =
            b[i].is_ascii_digit() || (b[i] == b'-' && i + 1 < b.len() && b[i + 1].is_ascii_digit());
        if begins_number {
            if start < i {
                out.push((false, &s[start..i]));
            }
            let j0 = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || b[i] == b'.'
                    || b[i] == b'e'
                    || b[i] == b'E'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            out.push((true, &s[j0..i]));
            start = i;
        } else {
            i += 1;
        }
    }
    if start < b.len() {
        out.push((false, &s[start..]));
    }
    out
}

/// Equal up to a relative `tol` in every number.
fn close_text(a: &str, b: &str, tol: f64) -> bool {
    let (pa, pb) = (pieces(a), pieces(b));
    pa.len() == pb.len()
        && pa.iter().zip(&pb).all(|(x, y)| match (x, y) {
            ((true, x), (true, y)) => match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(u), Ok(v)) => u == v || (u - v).abs() <= tol * u.abs().max(v.abs()).max(1e-6),
                _ => x == y,
            },
            ((false, x), (false, y)) => x == y,
            _ => false,
        })
}

fn run_case(case: &Case) -> BTreeMap<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().canonicalize().unwrap();
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| {
            a.replace("{repo}", &repo().display().to_string())
                .replace("{out}", &out.display().to_string())
                .replace("{golden}", &golden_dir().display().to_string())
        })
        .collect();
    let mut cmd = sahara();
    cmd.args(&args).current_dir(&out);
    let o = cmd.output().expect("the sahara binary runs");
    assert!(
        o.status.success(),
        "{} failed\n{}",
        case.name,
        show(&cmd, &o)
    );
    collect(&out, &o.stdout, &o.stderr)
}

#[test]
fn every_command_writes_its_recorded_outputs() {
    let bless = std::env::var_os("SAHARA_BLESS_GOLDEN").is_some();
    let cpu_path = golden_dir().join("cpu.txt");
    let cpu = cpu_signature();
    if bless {
        std::fs::write(&cpu_path, &cpu).unwrap();
    }
    let recorded_cpu = std::fs::read_to_string(&cpu_path).expect("tests/golden/cpu.txt");
    let exact = recorded_cpu == cpu;
    if !exact {
        eprintln!(
            "note: goldens were recorded on {:?}, this machine is {:?}: numbers compared to 1e-4, weight digests skipped",
            recorded_cpu.trim(),
            cpu.trim()
        );
    }
    let mut failures = Vec::new();
    for case in CASES {
        let got = run_case(case);
        let dir = golden_dir().join(case.name);
        if bless {
            let _ = std::fs::remove_dir_all(&dir);
            for (name, text) in &got {
                let p = dir.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            continue;
        }
        let mut want = BTreeMap::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .unwrap_or_else(|e| panic!("{}: {e} (run scripts/bless-goldens.sh)", d.display()));
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(&dir).unwrap().display().to_string();
                    want.insert(rel, std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        if names(&got) != names(&want) {
            failures.push(format!(
                "{}: files {:?}, recorded {:?}",
                case.name,
                names(&got),
                names(&want)
            ));
            continue;
        }
        for (name, text) in &got {
            let w = &want[name];
            let same = if exact {
                text == w
            } else {
                name.ends_with(".sha256") || close_text(text, w, 1e-4)
            };
            if !same {
                failures.push(format!(
                    "{}/{name} differs\n--- recorded\n{}\n--- now\n{}",
                    case.name,
                    excerpt(w),
                    excerpt(text)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn excerpt(s: &str) -> String {
    if s.chars().count() > 1500 {
        format!("{}…", s.chars().take(1500).collect::<String>())
    } else {
        s.to_string()
    }
}

#[test]
fn number_tolerant_comparison_accepts_rounding_and_rejects_changes() {
    assert!(close_text(
        "{\"a\":1.0000001,\"b\":[2,3]}",
        "{\"a\":1.0,\"b\":[2,3]}",
        1e-4
    ));
    assert!(!close_text("{\"a\":1.1}", "{\"a\":1.0}", 1e-4));
    assert!(!close_text("{\"a\":1}", "{\"b\":1}", 1e-4));
    assert!(!close_text("[1,2]", "[1,2,3]", 1e-4));
    assert!(close_text("x 3.2e-5 y", "x 3.20001e-5 y", 1e-4));
}
