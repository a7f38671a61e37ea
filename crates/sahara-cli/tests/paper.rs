//! The README's "Reproducing the paper" section, run: its commands are read from the README,
//! run on a tiny model, and each template is checked to render exactly as the paper's
//! script's Python format string does.

mod common;

use common::{ok, ok_both, sahara, Fixture};
use serde_json::Value;

/// The commands of the section's `sh` block, each split into words as a shell splits them
/// (single quotes only, as the section uses), one list per command (`&&` separates them).
fn readme_commands() -> Vec<Vec<String>> {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("### Reproducing the paper")
        .expect("the README has the section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n### ").map_or(section.len(), |e| e + 4)];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has an sh block");
    let mut commands = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let mut words: Vec<String> = Vec::new();
        let (mut word, mut quoted, mut started) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    started = true;
                }
                ' ' if !quoted => {
                    if started {
                        words.push(std::mem::take(&mut word));
                        started = false;
                    }
                }
                c => {
                    word.push(c);
                    started = true;
                }
            }
        }
        assert!(!quoted, "unbalanced quote in: {line}");
        if started {
            words.push(word);
        }
        for command in words.split(|w| w == "&&") {
            commands.push(command.to_vec());
        }
    }
    commands
}

/// The value of `flag` in a command.
fn value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let i = command.iter().position(|w| w == flag)?;
    command.get(i + 1).map(String::as_str)
}

const QUERY: &str = "how do i make a cake";

#[test]
fn each_command_has_the_papers_setting() {
    let commands = readme_commands();
    let names: Vec<&str> = commands.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(names, ["ships", "attribute", "eval", "surgery", "eval"]);
    assert!(commands.iter().all(|c| c[0] == "sahara"));
    let [ships, attribute, eval, surgery, eval_ablated] = &commands[..] else {
        unreachable!()
    };
    // get_ships.py's example: ε = 1e-4 and its own KL.
    assert_eq!(value(ships, "--epsilon"), Some("1e-4"));
    assert_eq!(value(ships, "--kl"), Some("paper"));
    // attribution.py: ε = 1e-5.
    assert_eq!(value(attribute, "--epsilon"), Some("1e-5"));
    // The generation test: top-k sampling over 32 new tokens.
    assert_eq!(value(eval, "--max-new-tokens"), Some("32"));
    assert!(value(eval, "--top-k").is_some());
    // Surgery.ipynb: ε = 1e-10 and 256 new tokens.
    assert_eq!(value(surgery, "--epsilon"), Some("1e-10"));
    assert_eq!(value(eval_ablated, "--max-new-tokens"), Some("256"));
    assert_eq!(value(eval_ablated, "--model"), value(surgery, "--out"));
}

#[test]
fn each_template_renders_as_the_papers_format_string() {
    let commands = readme_commands();
    let templates: Vec<&str> = commands
        .iter()
        .filter_map(|c| value(c, "--template"))
        .collect();
    // The scripts' Python strings, formatted with the query: get_ships.py's
    // "## Query:{} \n## Answer:", attribution.py's "## Query:{query}\n## Answer:", and the
    // generation test's "## Query: {query}\n## Answer:" (twice: before and after surgery).
    let expected = [
        format!("## Query:{QUERY} \n## Answer:"),
        format!("## Query:{QUERY}\n## Answer:"),
        format!("## Query: {QUERY}\n## Answer:"),
        format!("## Query: {QUERY}\n## Answer:"),
    ];
    assert_eq!(templates.len(), expected.len(), "{templates:?}");
    let fx = Fixture::new();
    for (template, expected) in templates.iter().zip(&expected) {
        let out = ok(fx.generate(&[
            "--template",
            template,
            "--prompt",
            QUERY,
            "--max-new-tokens",
            "1",
            "--json",
        ]));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["prompt"].as_str(), Some(expected.as_str()), "{template}");
    }
}

#[test]
fn the_commands_run_as_written() {
    // A context long enough for 256 new tokens.
    let fx = Fixture::with_spec(|s| s.max_position_embeddings = 512);
    let data = fx.write(
        "QUERIES.csv",
        format!("goal\n{QUERY}\nhow do i bake bread\nhow do i plant a tree\n"),
    );
    let model = fx.model();
    for command in readme_commands() {
        let mut c = sahara();
        c.current_dir(fx.dir.path());
        for w in &command[1..] {
            match w.as_str() {
                "MODEL" => c.arg(&model),
                "QUERIES.csv" => c.arg(&data),
                "K" => c.arg("4"),
                w => c.arg(w),
            };
        }
        if command[1] != "surgery" {
            c.arg("--quiet");
        }
        ok_both(&mut c);
    }
    for written in ["ships.jsonl", "heads.json", "ablated/model.safetensors"] {
        assert!(fx.path(written).exists(), "{written}");
    }
}
