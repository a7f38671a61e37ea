//! `sahara report`: one self-contained HTML page of a study's outputs.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use sahara::io::report::{self, ModelFacts, Study};
use sahara::{Error, Result};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The --out FILE.jsonl of `sahara ships` (its summary and run record lie beside it).
    #[arg(long)]
    pub ships: Option<PathBuf>,
    /// The --out FILE.json of `sahara attribute`.
    #[arg(long)]
    pub attribute: Option<PathBuf>,
    /// The --out FILE.jsonl of `sahara eval`.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// The --out FILE.json of `sahara attention` (repeatable).
    #[arg(long)]
    pub attention: Vec<PathBuf>,
    /// The --out FILE.json of `sahara compare` (repeatable).
    #[arg(long)]
    pub compare: Vec<PathBuf>,
    /// Put outputs of different models on one page, each section labelled with its model.
    #[arg(long)]
    pub allow_mixed: bool,
    /// The page to write (HTML).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let study = Study {
        ships: a.ships.as_deref().map(report::load_ships).transpose()?,
        attribute: a
            .attribute
            .as_deref()
            .map(report::load_attribute)
            .transpose()?,
        eval: a.eval.as_deref().map(report::load_eval).transpose()?,
        attention: a
            .attention
            .iter()
            .map(|p| report::load_attention(p))
            .collect::<Result<_>>()?,
        compare: a
            .compare
            .iter()
            .map(|p| report::load_compare(p))
            .collect::<Result<_>>()?,
    };
    if study.ships.is_none()
        && study.attribute.is_none()
        && study.eval.is_none()
        && study.attention.is_empty()
        && study.compare.is_empty()
    {
        return Err(Error::InvalidArgument(
            "nothing to report: give at least one of --ships, --attribute, --eval, --attention, --compare"
                .into(),
        ));
    }
    write(&study, a.allow_mixed, &a.out)
}

/// Writes the page of `study` to `out`; one home for `sahara report` and the `--report`
/// option of the commands.
pub fn write(study: &Study, allow_mixed: bool, out: &Path) -> Result<()> {
    let mixed = study.check_one_model(allow_mixed)?;
    let model = study
        .ships
        .as_ref()
        .map(|s| &s.source)
        .or(study.attribute.as_ref().map(|s| &s.source))
        .or(study.eval.as_ref().map(|s| &s.source))
        .or(study.attention.first().map(|s| &s.source))
        .map(|s| s.model.clone())
        .or(study.compare.first().map(|c| c.output.a.model.clone()))
        .unwrap_or_default();
    let page = report::render(study, &ModelFacts::of(&model), mixed)?;
    sahara::io::fs::write_atomic(out, page.as_bytes())
}

/// Why a shard takes no `--report`.
pub const NOT_A_SHARD: &str =
    "a shard writes no report: `sahara report` on the merged output (`sahara merge DIR --out FILE`) draws the whole run's";

/// The page of one run's own output, for `--report FILE.html` (`kind`: ships, attribute or
/// eval).
pub fn of_run(kind: &str, output: &Path, page: &Path) -> Result<()> {
    let mut study = Study::default();
    match kind {
        "ships" => study.ships = Some(report::load_ships(output)?),
        "attribute" => study.attribute = Some(report::load_attribute(output)?),
        "eval" => study.eval = Some(report::load_eval(output)?),
        other => unreachable!("no report of {other}"),
    }
    write(&study, false, page)
}
