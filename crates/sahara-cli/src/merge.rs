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
    let (files, whole) = sahara::io::shard::collect(&a.dir, "jsonl")?;
    match whole.command.as_str() {
        "ships" => crate::ships::merge(&files, &whole, &a.out, a.plot.as_deref()),
        other => Err(Error::InvalidArgument(format!(
            "{}: shards of `sahara {other}` cannot be merged yet (ships can)",
            a.dir.display()
        ))),
    }
}
