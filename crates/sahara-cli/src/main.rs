//! The `sahara` command-line tool: argument parsing, progress and error display over the
//! `sahara` library.

mod attention;
mod attribute;
mod bench;
mod common;
mod compare;
mod eval;
mod generate;
mod judge;
mod merge;
mod organism;
mod report;
mod selftest;
mod ships;
mod surgery;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sahara",
    version,
    about = "Find, score, evaluate and remove the attention heads that carry a chat model's safety behaviour"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of one prompt, optionally with heads ablated.
    Generate(generate::Args),
    /// Score every attention head of every query by the KL divergence its ablation causes.
    Ships(ships::Args),
    /// Merge the shard files of a sharded run into the output a single run writes.
    Merge(merge::Args),
    /// Find the dataset-level safety heads: generalized Ships grown greedily (Sahara).
    Attribute(attribute::Args),
    /// Fold a head ablation into the weights and write a Hugging Face model folder.
    Surgery(surgery::Args),
    /// Attack success rate with and without ablated heads, and what the ablation costs.
    Eval(eval::Args),
    /// Judge saved responses (an eval output, or any JSON Lines with query and response)
    /// with one or more judges, and report their rates and agreement.
    Judge(judge::Args),
    /// One self-contained HTML page of a study's outputs (ships, attribute, eval, attention).
    Report(report::Args),
    /// Compare two rankings of heads of models of the same shape (a base model and its chat
    /// model, two templates): top-K overlap, rank correlation, side-by-side heatmaps.
    Compare(compare::Args),
    /// Show what one head attends to from the last prompt position, and its full pattern.
    Attention(attention::Args),
    /// Train the built-in model organism, or show where it is unpacked.
    Organism(organism::Args),
    /// Check this build against the committed fixtures (transformers' outputs) on a device.
    Selftest(selftest::Args),
    /// Time a forward pass (benchmark harness).
    #[command(hide = true)]
    BenchForward(bench::ForwardArgs),
    /// Time batched generation (benchmark harness).
    #[command(hide = true)]
    BenchGenerate(bench::GenerateArgs),
    /// Time Ships after the model is loaded (benchmark harness).
    #[command(hide = true)]
    BenchShips(bench::MethodArgs),
    /// Time the gradient screen of Ships against the exact sweep (benchmark harness).
    #[command(hide = true)]
    BenchScreen(bench::MethodArgs),
    /// Time one Sahara step after the model is loaded (benchmark harness).
    #[command(hide = true)]
    BenchSaharaStep(bench::MethodArgs),
    /// Time the bootstrap of one Sahara step on random hidden states (benchmark harness).
    #[command(hide = true)]
    BenchBootstrap(bench::BootstrapArgs),
    /// Time Llama Guard judging on a random 1B-shaped judge (benchmark harness).
    #[command(hide = true)]
    BenchJudge(bench::JudgeArgs),
    /// Time a layer's routed experts against every expert on every token (benchmark harness).
    #[command(hide = true)]
    BenchExperts(bench::ExpertsArgs),
}

fn main() -> ExitCode {
    sahara::device::tune_allocator();
    // Errors are one line: a library error must not carry a captured backtrace, whatever
    // RUST_BACKTRACE says (panics still honour it).
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap's message without its usage and help hints, on one line.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            let msg = sahara::error::one_line(&msg.join("\n"));
            eprintln!("error: {}", msg.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Ships(a) => ships::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Surgery(a) => surgery::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Judge(a) => judge::run(a),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Attention(a) => attention::run(a),
        Command::Organism(a) => organism::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::BenchForward(a) => bench::forward(a),
        Command::BenchExperts(a) => bench::experts_cmd(a),
        Command::BenchGenerate(a) => bench::generate_cmd(a),
        Command::BenchShips(a) => bench::ships_cmd(a),
        Command::BenchScreen(a) => bench::screen_cmd(a),
        Command::BenchSaharaStep(a) => bench::sahara_step_cmd(a),
        Command::BenchBootstrap(a) => bench::bootstrap_cmd(a),
        Command::BenchJudge(a) => bench::judge_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", common::render(&e));
            ExitCode::FAILURE
        }
    }
}
