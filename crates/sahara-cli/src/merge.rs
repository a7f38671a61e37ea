//! `sahara merge DIR --out FILE`: the file a single run writes, from the shard files of a
//! sharded run in their shared folder (the command is read from their run records).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::{Error, Result};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The folder the shards wrote into (their --out).
    pub dir: PathBuf,
    /// The merged output: exactly what one unsharded run with `--out FILE` writes.
    #[arg(long)]
    pub out: PathBuf,
    /// Heatmap of the whole run (ships; PNG or SVG by extension).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.plot {
        sahara::io::plot::check_extension(p)?;
    }
    // Attribute's workers leave the finished output itself in the folder.
    let attribute = a.dir.join("attribute.json");
    if attribute.is_file() {
        return merge_attribute(&attribute, &a);
    }
    let (files, whole) = sahara::io::shard::collect(&a.dir, "jsonl")?;
    match whole.command.as_str() {
        "ships" => crate::ships::merge(&files, &whole, &a.out, a.plot.as_deref()),
        "eval" if a.plot.is_some() => Err(Error::InvalidArgument(
            "eval writes no plot; merge it without --plot".into(),
        )),
        "eval" => crate::eval::merge(&files, &whole, &a.out),
        other => Err(Error::InvalidArgument(format!(
            "{}: shards of `sahara {other}` cannot be merged (ships and eval shards can; attribute's workers leave attribute.json)",
            a.dir.display()
        ))),
    }
}

/// The output attribute's workers finished in the folder, with its run record, copied to
/// --out: what a single run with the same --chunk-heads writes.
fn merge_attribute(path: &std::path::Path, a: &Args) -> Result<()> {
    use sahara::io::runlog::{record_of, sibling};
    if a.plot.is_some() {
        return Err(Error::InvalidArgument(
            "attribute's plot is drawn by `sahara attribute --plot`; merge copies its output"
                .into(),
        ));
    }
    let record = record_of(path)?.ok_or_else(|| {
        Error::InvalidArgument(format!("{} has no run record beside it", path.display()))
    })?;
    if record.command != "attribute" {
        return Err(Error::InvalidArgument(format!(
            "{} was written by `sahara {}`",
            path.display(),
            record.command
        )));
    }
    let out = sahara::io::formats::AttributeOutput::read(path)?;
    sahara::io::shard::check_new_output(&a.out)?;
    let bytes = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::io(p, e));
    sahara::io::fs::write_atomic(
        &sibling(&a.out, "run.json"),
        &bytes(&sibling(path, "run.json"))?,
    )?;
    sahara::io::fs::write_atomic(&a.out, &bytes(path)?)?;
    eprintln!(
        "{}: {} steps ({}) from {}",
        a.out.display(),
        out.steps.len(),
        out.selected
            .iter()
            .map(|[l, h]| format!("{l}:{h}"))
            .collect::<Vec<_>>()
            .join(", "),
        a.dir.display()
    );
    Ok(())
}
