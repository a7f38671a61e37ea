//! Batched generation with a key/value cache and per-row ablations applied at every step.

use candle_core::{IndexOp, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::ablation::{AblationPlan, HeadAblation};
use crate::model::finite::{all_finite, check_output, describe};
use crate::model::{Batch, Decoder, ForwardSpec, KvCache, Positions};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties).
    Greedy,
    /// Sampling from softmax(logits / temperature), restricted to the `top_k` most likely.
    Sample {
        temperature: f64,
        top_k: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Generation stops for a row at any of these ids (the id is kept in the output).
    pub eos: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: vec![],
        }
    }
}

/// Picks a token from one row of logits.
pub fn choose(logits: &[f32], sampling: &Sampling, rng: &mut impl Rng) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample { temperature, top_k } => {
            if *temperature <= 0.0 {
                return argmax(logits);
            }
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            if let Some(k) = top_k {
                let k = (*k).clamp(1, logits.len());
                idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
                idx.truncate(k);
            }
            let max = idx
                .iter()
                .map(|&i| logits[i] as f64)
                .fold(f64::MIN, f64::max);
            let w: Vec<f64> = idx
                .iter()
                .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
                .collect();
            let total: f64 = w.iter().sum();
            let mut r = rng.random::<f64>() * total;
            for (j, wj) in w.iter().enumerate() {
                r -= wj;
                if r <= 0.0 {
                    return idx[j] as u32;
                }
            }
            idx[idx.len() - 1] as u32
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates continuations for a batch of prompts; `ablations[i]` applies to prompt i at
/// every step. Returns the new tokens of each prompt.
pub fn generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[Vec<HeadAblation>],
    pad_id: u32,
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    if ablations.len() != prompts.len() {
        return Err(Error::InvalidArgument(format!(
            "{} ablation sets for {} prompts",
            ablations.len(),
            prompts.len()
        )));
    }
    if opts.max_new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let batch = Batch::new(prompts, pad_id, &model.device)?;
    let longest = batch.len + opts.max_new_tokens;
    if longest > model.cfg.max_position_embeddings {
        return Err(Error::Prompt(format!(
            "prompt of {} tokens plus {} new tokens exceeds the model's context of {} positions",
            batch.len, opts.max_new_tokens, model.cfg.max_position_embeddings
        )));
    }
    let plan = AblationPlan::new(&model.cfg, ablations, model.dtype, &model.device)?;
    let spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
    let mut cache = KvCache::new(&model.cfg, batch.pad.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let b = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut logits = model
        .forward(&batch, &spec, Some(&mut cache))?
        .logits
        .expect("logits requested");
    // LongRoPE models change their rotary frequencies once a sequence outgrows the original
    // context; transformers then re-encodes the whole sequence, and so does this loop.
    let longrope_limit = match &model.cfg.rope_scaling {
        crate::model::config::RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        } => Some(*original_max_position_embeddings),
        _ => None,
    };
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    for step in 0..opts.max_new_tokens {
        // (B, 1, V) -> per row
        let rows: Vec<Vec<f32>> = logits.i((.., 0, ..))?.to_vec2()?;
        let mut next = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            if done[r] {
                next.push(pad_id);
                seqs[r].push(pad_id);
                continue;
            }
            // No token chosen from NaN or ±∞ (see `model::finite`): rerun alone to say where.
            if !all_finite(row) {
                let sequence: Vec<u32> = prompts[r].iter().chain(&out[r]).copied().collect();
                check_output(
                    model,
                    &sequence,
                    &ablations[r],
                    row,
                    || format!("{}, new token {}", describe(&ablations[r]), step + 1),
                    Some(r),
                )?;
            }
            let t = choose(row, &opts.sampling, &mut rng);
            out[r].push(t);
            seqs[r].push(t);
            if opts.eos.contains(&t) {
                done[r] = true;
            }
            next.push(t);
        }
        if done.iter().all(|&d| d) || step + 1 == opts.max_new_tokens {
            break;
        }
        let crosses = longrope_limit.is_some_and(|limit| {
            cache
                .pad
                .iter()
                .any(|&p| cache.len - p <= limit && cache.len + 1 - p > limit)
        });
        if crosses {
            let full = Batch::new(&seqs, pad_id, &model.device)?;
            cache = KvCache::new(&model.cfg, full.pad.clone());
            logits = model
                .forward(&full, &spec, Some(&mut cache))?
                .logits
                .expect("logits requested");
            continue;
        }
        let step_batch = Batch {
            tokens: Tensor::from_vec(next, (b, 1), &model.device)?,
            pad: cache.pad.clone(),
            len: 1,
        };
        logits = model
            .forward(&step_batch, &spec, Some(&mut cache))?
            .logits
            .expect("logits requested");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(
            choose(&[0.0, 2.0, 2.0, 1.0], &Sampling::Greedy, &mut rng),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits = [0.1f32, 0.5, 0.3, 0.2];
        let s1 = Sampling::Sample {
            temperature: 1.0,
            top_k: Some(1),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(choose(&logits, &s1, &mut rng), 1);
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
        };
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let all = draw(3);
        assert!(all.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }
}
