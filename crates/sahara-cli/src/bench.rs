//! Hidden benchmark commands used by `bench/run.sh`: they time the library's forward pass
//! and batched generation on a model folder and print one JSON line.

use std::time::Instant;

use clap::Args as ClapArgs;
use sahara::methods::generate::{generate, GenerateOptions};
use sahara::{Batch, Error, ForwardSpec, Positions, Result, Template};
use serde_json::json;

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
}

/// Times a forward pass of `batch` prompts of `seq` tokens, logits at every position.
pub fn forward(a: ForwardArgs) -> Result<()> {
    if a.batch == 0 || a.seq == 0 || a.iters == 0 {
        return Err(Error::InvalidArgument(
            "--batch, --seq and --iters must be positive".into(),
        ));
    }
    let model = a.model.load()?;
    let vocab = model.cfg().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..a.batch as u32)
        .map(|b| {
            (0..a.seq as u32)
                .map(|t| 3 + (b * 31 + t * 7) % (vocab - 3))
                .collect()
        })
        .collect();
    let batch = Batch::new(&prompts, 0, &model.decoder.device)?;
    let spec = ForwardSpec::logits(Positions::All);
    model.decoder.forward(&batch, &spec, None)?;
    let start = Instant::now();
    for _ in 0..a.iters {
        model.decoder.forward(&batch, &spec, None)?;
    }
    let s = start.elapsed().as_secs_f64() / a.iters as f64;
    println!(
        "{}",
        json!({"name": "forward_sahara", "seconds_per_forward": s,
               "tokens_per_second": (a.batch * a.seq) as f64 / s,
               "batch": a.batch, "seq": a.seq, "iters": a.iters})
    );
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Query file, one query a line; the first --n are used.
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
}

/// Times greedy generation of exactly `new_tokens` tokens for `n` prompts, `batch` at a time.
pub fn generate_cmd(a: GenerateArgs) -> Result<()> {
    if a.batch == 0 || a.n == 0 || a.new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "--n, --new-tokens and --batch must be positive".into(),
        ));
    }
    let model = a.model.load()?;
    let data = sahara::io::data::load_queries(std::path::Path::new(&a.data), None, Some(a.n))?;
    let prompts: Vec<Vec<u32>> = data
        .queries
        .iter()
        .map(|q| {
            model
                .prompts
                .encode_query(&Template::Raw, &q.text)
                .map(|(_, t)| t)
        })
        .collect::<Result<_>>()?;
    let opts = GenerateOptions {
        max_new_tokens: a.new_tokens,
        eos: vec![],
        ..Default::default()
    };
    let run = |prompts: &[Vec<u32>], opts: &GenerateOptions| -> Result<usize> {
        let mut n = 0;
        for chunk in prompts.chunks(a.batch) {
            let none = vec![vec![]; chunk.len()];
            let out = generate(&model.decoder, chunk, &none, model.prompts.pad_id, opts)?;
            n += out.iter().map(Vec::len).sum::<usize>();
        }
        Ok(n)
    };
    let warm = GenerateOptions {
        max_new_tokens: 4,
        ..opts.clone()
    };
    run(&prompts[..a.batch.min(prompts.len())], &warm)?;
    let start = Instant::now();
    let tokens = run(&prompts, &opts)?;
    let s = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"name": "generate_sahara", "seconds": s, "generated_tokens": tokens,
               "tokens_per_second": tokens as f64 / s, "batch": a.batch})
    );
    Ok(())
}
