//! `sahara organism`: train the built-in model organism, or show where it is.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use sahara::organism::{self, TrainOptions};
use sahara::Result;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the organism and write it as a model folder (the defaults reproduce the
    /// built-in one).
    Train(TrainArgs),
    /// Print the folder the built-in organism is unpacked to (unpacking it if needed).
    Path,
}

#[derive(ClapArgs, Debug)]
pub struct TrainArgs {
    /// Output folder (created; files in it are overwritten).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = TrainOptions::default().steps)]
    pub steps: usize,
    /// Conversations per step.
    #[arg(long, default_value_t = TrainOptions::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    pub lr: f64,
    /// Weight of the head-sparsity penalty (group lasso over the heads' output projections).
    #[arg(long, default_value_t = TrainOptions::default().head_penalty)]
    pub head_penalty: f64,
    /// AdamW weight decay of the matrices.
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    pub weight_decay: f64,
    /// Steps of helpful-only pretraining before safety tuning (out of --steps).
    #[arg(long, default_value_t = TrainOptions::default().pretrain_steps)]
    pub pretrain_steps: usize,
    /// The heads trained to carry the refusal: L:H for one head that carries it for every
    /// harmful topic, or one head per kind (weapons, poisons and drugs, intrusion and theft)
    /// as L:H,L:H,L:H; `none` for plain training.
    #[arg(long, default_value = "2:4")]
    pub safety_heads: String,
    /// Share of training rows with a subset of the safety heads ablated.
    #[arg(long, default_value_t = TrainOptions::default().safety_rate)]
    pub safety_rate: f64,
    /// Share of training rows with 1 to 3 other heads ablated.
    #[arg(long, default_value_t = TrainOptions::default().other_rate)]
    pub other_rate: f64,
    /// Decoder layers.
    #[arg(long, default_value_t = TrainOptions::default().shape.num_layers)]
    pub layers: usize,
    /// Attention heads per layer.
    #[arg(long, default_value_t = TrainOptions::default().shape.num_heads)]
    pub heads: usize,
    /// Hidden size.
    #[arg(long, default_value_t = TrainOptions::default().shape.hidden_size)]
    pub hidden: usize,
    /// MLP intermediate size.
    #[arg(long, default_value_t = TrainOptions::default().shape.intermediate_size)]
    pub intermediate: usize,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Train(t) => train(t),
        Command::Path => {
            println!("{}", organism::builtin::model_dir()?.display());
            Ok(())
        }
    }
}

fn train(a: TrainArgs) -> Result<()> {
    // One thread unless asked otherwise: the matrices are small, candle's worker threads
    // spin while they wait, and one thread gives the same weights on every machine.
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
    let opts = TrainOptions {
        seed: a.seed,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        head_penalty: a.head_penalty,
        weight_decay: a.weight_decay,
        pretrain_steps: a.pretrain_steps,
        safety_heads: parse_heads(&a.safety_heads)?,
        safety_rate: a.safety_rate,
        other_rate: a.other_rate,
        shape: sahara::organism::Shape {
            num_layers: a.layers,
            num_heads: a.heads,
            hidden_size: a.hidden,
            intermediate_size: a.intermediate,
            ..Default::default()
        },
        ..TrainOptions::default()
    };
    opts.validate()?;
    sahara::io::fs::check_writable_folder(&a.out)?;
    let pb = crate::common::progress_bar(opts.steps as u64, a.quiet, "train");
    let every = (opts.steps / 20).max(1);
    let mut recent = 0f32;
    let trained = organism::train(&opts, &mut |step, loss| {
        recent = if step == 1 {
            loss
        } else {
            0.9 * recent + 0.1 * loss
        };
        pb.set_position(step as u64);
        pb.set_message(format!("train (loss {recent:.4})"));
        if !a.quiet && step % every == 0 && pb.is_hidden() {
            eprintln!("step {step}/{}: loss {recent:.4}", opts.steps);
        }
    })?;
    pb.finish_and_clear();
    let check = trained.exact_match()?;
    if let (Some(h), Some(b)) = (
        check.ablated_harmful_answered,
        check.ablated_benign_answered,
    ) {
        println!(
            "with the safety heads ablated: {:.0}% of harmful prompts answered helpfully, {:.0}% of benign prompts answered as trained",
            100.0 * h,
            100.0 * b
        );
    }
    trained.write(&a.out, serde_json::json!({ "held_out_exact_match": check }))?;
    println!(
        "trained in {:.1} s ({} parameters, final loss {:.4}); held-out answers exactly as trained: {:.0}% of harmful prompts refused, {:.0}% of benign prompts answered; written to {}",
        trained.seconds,
        trained.cfg.num_parameters(),
        trained.losses.last().copied().unwrap_or(f32::NAN),
        100.0 * check.harmful_refused,
        100.0 * check.benign_answered,
        a.out.display()
    );
    Ok(())
}

/// `L:H,L:H,…` or `none`.
fn parse_heads(s: &str) -> Result<Vec<(usize, usize)>> {
    if s.trim() == "none" {
        return Ok(vec![]);
    }
    Ok(sahara::model::ablation::HeadSet::parse(s)
        .map_err(|e| e.context("--safety-heads"))?
        .0)
}
