//! `sahara selftest`: the committed fixtures' exactness checks, run by the installed binary on
//! any device (a GPU machine has the binary and the repository's `fixtures/`, no toolchain).

use std::path::PathBuf;

use candle_core::DType;
use clap::Args as ClapArgs;
use sahara::selftest::{check_fixture, fixture_dirs, Check};
use sahara::{Error, Result};

use sahara::device::parse_device;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtypes to check, comma-separated: f32 (against transformers' float32 reference to 1e-4,
    /// greedy tokens identical) and bf16 (within 10% of the reference's largest value).
    #[arg(long, default_value = "f32,bf16")]
    pub dtype: String,
    /// The fixtures folder of the repository (default: fixtures/ here, else the one sahara
    /// was built from).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Only the fixtures whose folder names contain this.
    #[arg(long)]
    pub only: Option<String>,
    /// Print one JSON object per check instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn fixtures_root(a: &Args) -> Result<PathBuf> {
    if let Some(f) = &a.fixtures {
        return Ok(f.clone());
    }
    let here = PathBuf::from("fixtures");
    if here.is_dir() {
        return Ok(here);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    if built.is_dir() {
        return Ok(built);
    }
    Err(Error::InvalidArgument(
        "no fixtures folder here: run from the repository's root or pass --fixtures DIR".into(),
    ))
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let mut dtypes = Vec::new();
    for d in a.dtype.split(',') {
        dtypes.push(match d.trim() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => {
                return Err(Error::bad_value(
                    sahara::error::Setting::Dtype,
                    format!("{other:?}"),
                    "expected a comma-separated list of f32, bf16, f16",
                ))
            }
        });
    }
    let root = fixtures_root(&a)?;
    let dirs: Vec<PathBuf> = fixture_dirs(&root)?
        .into_iter()
        .filter(|d| {
            a.only.as_deref().is_none_or(|o| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(o))
            })
        })
        .collect();
    if dirs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no fixture with a reference under {}",
            root.display()
        )));
    }
    if !a.json {
        println!(
            "{:<10} {:<6} {:<5} {:<22} {:>12} {:>10}  result",
            "fixture", "device", "dtype", "check", "value", "tolerance"
        );
    }
    let mut all: Vec<Check> = Vec::new();
    for dir in &dirs {
        for &dtype in &dtypes {
            let checks = check_fixture(dir, dtype, &device)
                .map_err(|e| e.context(format!("selftest of {}", dir.display())))?;
            for c in checks {
                if a.json {
                    println!("{}", serde_json::to_string(&c).expect("a check serializes"));
                } else {
                    println!(
                        "{:<10} {:<6} {:<5} {:<22} {:>12.3e} {:>10.1e}  {}",
                        c.fixture,
                        c.device,
                        c.dtype,
                        c.check,
                        c.value,
                        c.tolerance,
                        if c.passed { "ok" } else { "FAILED" }
                    );
                }
                all.push(c);
            }
        }
    }
    let failed: Vec<String> = all
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {} {}", c.fixture, c.dtype, c.check))
        .collect();
    if !failed.is_empty() {
        return Err(Error::SelftestFailed {
            failed: failed.len(),
            total: all.len(),
            which: failed.join(", "),
        });
    }
    eprintln!(
        "selftest: all {} checks of {} fixtures passed on {}",
        all.len(),
        dirs.len(),
        a.device
    );
    Ok(())
}
