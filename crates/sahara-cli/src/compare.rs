//! `sahara compare A B`: two rankings of the same heads side by side.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::error::Setting;
use sahara::io::formats::{schema, CompareOutput, RankingSide};
use sahara::methods::compare::{compare, DEFAULT_KS};
use sahara::{Error, Result};

use crate::common::short_name;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The first ranking: the --out file of `sahara ships` (mean Ships; its summary and run
    /// record beside it) or of `sahara attribute` (the scores of step 1).
    pub a: PathBuf,
    /// The second ranking, of a model of the same shape.
    pub b: PathBuf,
    /// The K of the top-K overlaps (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_KS)]
    pub top: Vec<usize>,
    /// The comparison as JSON (`sahara report --compare` shows it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Both heatmaps side by side, the heads in both top-K lists (the first K) outlined
    /// (PNG or SVG by extension).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    if a.top.contains(&0) {
        return Err(Error::out_of_range(Setting::Top, 0, "must be at least 1"));
    }
    let side_a = sahara::io::report::load_ranking(&a.a)?;
    let side_b = sahara::io::report::load_ranking(&a.b)?;
    let comparison = compare(&side_a.scores, &side_b.scores, &a.top)
        .map_err(|e| e.context(format!("{} and {}", a.a.display(), a.b.display())))?;
    if what(&side_a) != what(&side_b) {
        eprintln!(
            "note: A's scores are {} and B's {}: only their ranks compare",
            what(&side_a),
            what(&side_b)
        );
    }
    let out = CompareOutput {
        schema: schema::COMPARE.into(),
        a: side_a,
        b: side_b,
        comparison,
    };
    print!("{}", table(&out));
    if let Some(path) = &a.out {
        sahara::io::fs::write_json(path, &out)?;
    }
    if let Some(p) = &a.plot {
        let shared: Vec<(usize, usize)> = out
            .comparison
            .top
            .first()
            .map(|t| t.shared.iter().map(|&[l, h]| (l, h)).collect())
            .unwrap_or_default();
        let title = |name: &str, s: &RankingSide| {
            format!(
                "{name}: {} - {} on {}",
                what(s),
                short_name(&s.model),
                short_name(&s.data)
            )
        };
        let (ta, tb) = (title("A", &out.a), title("B", &out.b));
        let label = |s: &RankingSide| match (s.kind.as_str(), s.mode.as_str()) {
            ("attribute", _) => "principal angle (degrees)",
            (_, "patch") => "mean restoration",
            _ => "mean KL (nats)",
        };
        sahara::io::plot::write_heatmaps(
            p,
            &[
                sahara::io::plot::Heatmap {
                    title: &ta,
                    values: &out.a.scores,
                    marked: &shared,
                    colorbar_label: label(&out.a),
                },
                sahara::io::plot::Heatmap {
                    title: &tb,
                    values: &out.b.scores,
                    marked: &shared,
                    colorbar_label: label(&out.b),
                },
            ],
        )?;
    }
    Ok(())
}

/// What a side's scores are.
fn what(s: &RankingSide) -> &'static str {
    match (s.kind.as_str(), s.mode.as_str()) {
        ("attribute", _) => "Sahara step 1",
        (_, "patch") => "mean patch restoration",
        _ => "mean Ships",
    }
}

/// The printed comparison.
fn table(out: &CompareOutput) -> String {
    let heads = |v: &[[usize; 2]]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|[l, h]| format!("{l}:{h}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let side = |name: &str, s: &RankingSide| {
        format!(
            "{name}: {} of {} on {} (template {}): {}\n",
            what(s),
            s.model,
            s.data,
            match &s.template {
                serde_json::Value::String(t) => t.clone(),
                other => other.to_string(),
            },
            s.path
        )
    };
    let c = &out.comparison;
    let mut text = side("A", &out.a) + &side("B", &out.b);
    text.push_str(&format!(
        "Spearman over {} heads: {}\n",
        c.heads,
        c.spearman
            .map_or("undefined (constant scores)".to_string(), |r| format!(
                "{r:.4}"
            ))
    ));
    for t in &c.top {
        text.push_str(&format!(
            "top {:>3}: Jaccard {:.3}  shared: {}  only A: {}  only B: {}\n",
            t.k,
            t.jaccard,
            heads(&t.shared),
            heads(&t.only_a),
            heads(&t.only_b)
        ));
    }
    text
}
