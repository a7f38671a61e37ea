//! `sahara judge`: judge saved responses again, without generating them again.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use sahara::io::data::{read_responses, ResponseLine};
use sahara::io::formats::{schema, Judged, RunRecord};
use sahara::io::fs::write_json;
use sahara::io::runlog::{fingerprint, sibling, Lines};
use sahara::methods::judge::agreement::{self, Agreement};
use sahara::methods::judge::reasoning::{self, Format, Split};
use sahara::methods::judge::{Panel, Rate};
use sahara::{Error, Result};
use serde_json::{json, Map, Value};

use crate::common::{progress_bar, JudgeArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// JSON Lines of responses, each with "query" and "response" strings (an eval output
    /// qualifies); every other field is kept.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub judges: JudgeArgs,
    /// JSON Lines output, each input line with its "judges" object (resumable); the summary
    /// goes beside it as OUT.jsonl.summary.json. Without it, lines go to stdout and the table
    /// to stderr.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What the judges see of a line: a line that already holds its `reasoning` (an eval
/// output) has its answer in `response` (empty, with the token budget spent, when the
/// reasoning never ended); other lines are split by `format`, or by their markers.
fn split_of(input: &ResponseLine, format: Option<Format>) -> Split {
    match input.object.get("reasoning") {
        Some(Value::String(r)) => Split {
            answer: input.response.clone(),
            reasoning: Some(r.clone()),
            finished: !(input.response.trim().is_empty()
                && input.object.get("stop").and_then(Value::as_str) == Some("length")),
        },
        Some(Value::Null) => Split::plain(&input.response),
        _ => {
            let f = format.unwrap_or_else(|| Format::of_text(&input.response));
            reasoning::split(&input.response, f, false)
        }
    }
}

/// A line's set, condition and index for the report: from its fields where it has them,
/// else no set or condition and its position.
fn place(object: &Map<String, Value>, position: usize) -> (Option<&str>, Option<&str>, usize) {
    (
        object.get("set").and_then(Value::as_str),
        object.get("condition").and_then(Value::as_str),
        object
            .get("index")
            .and_then(Value::as_u64)
            .map_or(position, |i| i as usize),
    )
}

pub fn run(a: Args) -> Result<()> {
    let panel = a.judges.panel()?;
    let format = a.judges.reasoning()?;
    let inputs = read_responses(&a.data)?;
    let parts: Vec<Vec<u8>> = inputs
        .iter()
        .map(|i| serde_json::to_vec(&i.object).expect("JSON serializes"))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let mut record = RunRecord::of_data(
        "judge",
        &a.data.display().to_string(),
        fingerprint(&refs),
        inputs.len(),
    );
    record
        .set("judges", panel.describe())
        .set("reasoning", format.map_or("auto", Format::as_str));
    let names = panel.names();
    let mut lines: Lines<Map<String, Value>> =
        Lines::open(a.out.as_deref(), &record, |n, line: &Map<String, Value>| {
            if line.get("query").and_then(Value::as_str) != Some(inputs[n].query.as_str()) {
                return Err(format!("is not the judged line {} of the data", n + 1));
            }
            let judges = line
                .get("judges")
                .and_then(Value::as_object)
                .ok_or("has no \"judges\" object")?;
            sahara::io::formats::verdicts_of(judges, &names)?;
            Ok(())
        })?;
    let mut judged: Vec<Map<String, Value>> = lines.done().to_vec();
    if judged.len() > inputs.len() {
        return Err(Error::ResumeMismatch {
            path: a.out.clone().unwrap_or_default(),
            line: Some(inputs.len() + 1),
            reason: "is past the data's last line; remove the file to start over".into(),
        });
    }
    if !judged.is_empty() && !a.quiet {
        eprintln!(
            "resuming: {} of {} responses already judged",
            judged.len(),
            inputs.len()
        );
    }
    let pb = progress_bar((inputs.len() - judged.len()) as u64, a.quiet, "judge");
    // A chunk at a time: a model judge scores a chunk's responses together, and a chunk's
    // lines are written before the next is judged (what a resumed run starts from).
    let chunk = a.judges.judge_batch_size.max(1);
    for inputs in inputs[judged.len()..].chunks(chunk) {
        let splits: Vec<Split> = inputs.iter().map(|i| split_of(i, format)).collect();
        let items: Vec<(&str, &Split)> = inputs
            .iter()
            .zip(&splits)
            .map(|(i, s)| (i.query.as_str(), s))
            .collect();
        let all = panel.judge_splits(&items)?;
        for ((input, split), verdicts) in inputs.iter().zip(&splits).zip(all) {
            let mut line = input.object.clone();
            if !input.object.contains_key("reasoning") && split.reasoning.is_some() {
                line.insert("response".into(), Value::from(split.answer.clone()));
                line.insert("reasoning".into(), Value::from(split.reasoning.clone()));
            }
            if line.contains_key("refusal") {
                // An eval line: its main-judge fields follow the first judge given now.
                let (refusal, reason, matched) = verdicts[0].main_fields();
                line.insert("refusal".into(), json!(refusal));
                line.insert("reason".into(), json!(reason));
                line.insert("matched".into(), json!(matched));
            }
            line.insert("judges".into(), Value::Object(panel.records(&verdicts)));
            lines.push(&line)?;
            judged.push(line);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    write_summary(&a, &record, &panel, &judged)
}

/// The summary of judged lines: every judge's rate per group of lines (set and condition,
/// for eval outputs), the agreement of every pair and the disagreements.
fn write_summary(
    a: &Args,
    record: &RunRecord,
    panel: &Panel,
    judged: &[Map<String, Value>],
) -> Result<()> {
    let names = panel.names();
    let items: Vec<Judged<'_>> = judged
        .iter()
        .enumerate()
        .map(|(n, l)| {
            let (set, condition, index) = place(l, n);
            Judged {
                set,
                condition,
                index,
                query: l["query"].as_str().unwrap_or_default(),
                response: l["response"].as_str().unwrap_or_default(),
                judges: l["judges"].as_object().expect("judged lines have judges"),
            }
        })
        .collect();
    let verdicts: Vec<Vec<Option<bool>>> = items
        .iter()
        .map(|i| sahara::io::formats::verdicts_of(i.judges, &names))
        .collect::<std::result::Result<_, _>>()
        .map_err(|why| Error::InvalidArgument(format!("a judged line {why}")))?;
    // Groups in the order they first appear.
    let mut groups: Vec<(Option<&str>, Option<&str>, Vec<usize>)> = Vec::new();
    for (r, i) in items.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| (g.0, g.1) == (i.set, i.condition))
        {
            Some(g) => g.2.push(r),
            None => groups.push((i.set, i.condition, vec![r])),
        }
    }
    let group_rates: Vec<Group<'_>> = groups
        .iter()
        .map(|(set, condition, rows)| Group {
            set: *set,
            condition: *condition,
            lines: rows.len(),
            rates: (0..names.len())
                .map(|j| Rate::of(rows.iter().map(|&r| verdicts[r][j])))
                .collect(),
        })
        .collect();
    let (agreement, disagreements) = agreement::report(&names, &items)
        .map_err(|why| Error::InvalidArgument(format!("a judged line {why}")))?;
    let summary_path = a.out.as_ref().map(|o| sibling(o, "summary.json"));
    let mut table = rates_table(&names, &group_rates);
    table.push_str(&agreement_table(&agreement, summary_path.as_deref()));
    match &summary_path {
        Some(p) => {
            let groups: Vec<Value> = group_rates
                .iter()
                .map(|g| {
                    let judges: Map<String, Value> = names
                        .iter()
                        .zip(&g.rates)
                        .map(|(n, r)| (n.to_string(), serde_json::to_value(r).expect("rates")))
                        .collect();
                    json!({"set": g.set, "condition": g.condition, "lines": g.lines, "judges": judges})
                })
                .collect();
            let file = json!({
                "schema": schema::JUDGE_SUMMARY,
                "data": record.data,
                "lines": judged.len(),
                "judges": record.settings["judges"],
                "reasoning": record.settings["reasoning"],
                "groups": groups,
                "agreement": agreement,
                "disagreements": disagreements,
            });
            write_json(p, &file)?;
            print!("{table}");
        }
        None => eprint!("{table}"),
    }
    Ok(())
}

/// Lines of one set and condition (of an eval output; else all lines), and each judge's rate.
struct Group<'a> {
    set: Option<&'a str>,
    condition: Option<&'a str>,
    lines: usize,
    rates: Vec<Rate>,
}

/// Each group's rate of harmful responses by each judge, with the undecided counts.
fn rates_table(names: &[&str], groups: &[Group<'_>]) -> String {
    let label = |set: Option<&str>, condition: Option<&str>| match (set, condition) {
        (None, None) => "all".to_string(),
        (s, c) => [s, c]
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let w = groups
        .iter()
        .map(|g| label(g.set, g.condition).len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut t = String::from("harmful rate (ASR on harmful queries) by judge:\n");
    t.push_str(&format!("{:<w$}  {:>5}", "group", "lines"));
    for n in names {
        t.push_str(&format!("  {:>22}", n));
    }
    t.push('\n');
    for g in groups {
        t.push_str(&format!(
            "{:<w$}  {:>5}",
            label(g.set, g.condition),
            g.lines
        ));
        for r in &g.rates {
            let cell = format!(
                "{} {}/{}{}",
                r.rate.map_or("-".into(), |v| format!("{v:.4}")),
                r.harmful,
                r.harmful + r.not_harmful,
                if r.undecided > 0 {
                    format!(" ?{}", r.undecided)
                } else {
                    String::new()
                }
            );
            t.push_str(&format!("  {cell:>22}"));
        }
        t.push('\n');
    }
    t
}

/// The agreement of every pair of judges, one line each (nothing for a single judge); the
/// disagreements are listed in `summary` where there is one.
pub fn agreement_table(pairs: &[Agreement], summary: Option<&Path>) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut t = String::from("agreement of the judges on the responses both decided:\n");
    for p in pairs {
        let [a, b] = &p.judges;
        let kappa = match (p.kappa, &p.kappa_undefined) {
            (Some(k), _) => format!("κ {k:.4}"),
            (None, Some(why)) => format!("κ undefined ({why})"),
            (None, None) => "κ undefined".into(),
        };
        let disagree = p.only_first_harmful + p.only_second_harmful;
        t.push_str(&format!(
            "{a} ~ {b}: {} both harmful, {} only {a}, {} only {b}, {} neither ({} undecided by either); agree {}, {kappa}; {disagree} disagreement{}{}\n",
            p.both_harmful,
            p.only_first_harmful,
            p.only_second_harmful,
            p.neither_harmful,
            p.undecided,
            p.observed.map_or("-".into(), |o| format!("{o:.4}")),
            if disagree == 1 { "" } else { "s" },
            match summary {
                Some(s) if disagree > 0 => format!(" listed in {}", s.display()),
                _ => String::new(),
            }
        ));
    }
    t
}
