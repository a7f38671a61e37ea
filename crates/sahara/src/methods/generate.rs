//! Batched generation with a key/value cache and per-row ablations applied at every step.

use candle_core::{DType, IndexOp, Tensor};
use rand::{Rng, SeedableRng};

use crate::device::transfers;
use crate::error::{Error, Result};
use crate::model::ablation::HeadAblation;
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
    /// Row r of a batch samples from its own generator, seeded by [`row_seed`]`(seed, r)`, so
    /// that a batch split in parts (when the device runs out of memory) draws what it would
    /// have drawn whole.
    pub seed: u64,
    /// Generation stops for a row at any of these ids (the id is kept in the output).
    pub eos: Vec<u32>,
    /// A batch of more rows fails as out of memory (see
    /// [`crate::methods::engine::FAULT_OOM_ABOVE`]).
    #[doc(hidden)]
    pub simulate_oom_above: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: vec![],
            simulate_oom_above: None,
        }
    }
}

/// The seed of row `row`'s sampling generator in a batch generated with `seed`: SplitMix64 of
/// both.
pub fn row_seed(seed: u64, row: usize) -> u64 {
    let mut z = seed ^ (row as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rows of generation a batch may hold for prompts of up to `prompt_len` tokens and
/// `max_new_tokens` new ones within `budget` bytes: the prefill's activations
/// ([`crate::methods::engine::bytes_per_row`]) and the key/value cache at its largest
/// (its buffers grow by half again), at least 1, at most `cap`.
pub fn planned_rows(
    model: &Decoder,
    prompt_len: usize,
    max_new_tokens: usize,
    budget: usize,
    cap: usize,
) -> usize {
    let c = &model.cfg;
    let positions = prompt_len + max_new_tokens;
    let kv = 2
        * c.num_layers
        * c.num_kv_heads
        * c.head_dim
        * (positions + positions / 2 + 256)
        * model.dtype.size_in_bytes();
    let per_row = crate::methods::engine::bytes_per_row(model, prompt_len) + kv;
    (budget / per_row.max(1)).clamp(1, cap.max(1))
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

/// The first index of the largest logit.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
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
///
/// On the device, a decoding step reads back one small tensor: each row's greedy token, how
/// many tokens share its logit and whether the row is finite (the full row follows only for
/// a tie or a non-finite row). Sampling reads the rows' logits once per step. A batch the
/// device has no memory for is split in halves, which generate what the whole would have.
pub fn generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[Vec<HeadAblation>],
    pad_id: u32,
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    Ok(
        generate_probed(model, prompts, ablations, pad_id, opts, &[])?
            .into_iter()
            .map(|g| g.tokens)
            .collect(),
    )
}

/// One row's generation with probes: its new tokens, and at each step the probabilities
/// (softmax over the whole vocabulary, in f32) of the probed ids, in their order.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    pub tokens: Vec<u32>,
    /// One entry per new token: the probed ids' probabilities at the step that chose it.
    pub probs: Vec<Vec<f32>>,
}

/// [`generate`], recording at every step the probabilities of the token ids `probe` (a
/// judge's verdict tokens): one small extra read per step.
pub fn generate_probed(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[Vec<HeadAblation>],
    pad_id: u32,
    opts: &GenerateOptions,
    probe: &[u32],
) -> Result<Vec<Probed>> {
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
    if let Some(&id) = probe
        .iter()
        .find(|&&id| id as usize >= model.cfg.vocab_size)
    {
        return Err(Error::InvalidArgument(format!(
            "probed token {id} is beyond the vocabulary of {}",
            model.cfg.vocab_size
        )));
    }
    split_on_oom(model, prompts, ablations, pad_id, opts, probe, 0)
}

fn split_on_oom(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[Vec<HeadAblation>],
    pad_id: u32,
    opts: &GenerateOptions,
    probe: &[u32],
    first_row: usize,
) -> Result<Vec<Probed>> {
    let b = prompts.len();
    let attempt = crate::methods::engine::simulated_oom(b, opts.simulate_oom_above)
        .and_then(|()| generate_batch(model, prompts, ablations, pad_id, opts, probe, first_row));
    match attempt {
        Err(e) if e.is_out_of_memory() => {
            if b == 1 {
                return Err(crate::methods::engine::at_one_row(model, e));
            }
            let h = b / 2;
            let mut out = split_on_oom(
                model,
                &prompts[..h],
                &ablations[..h],
                pad_id,
                opts,
                probe,
                first_row,
            )?;
            // Errors name rows of the whole batch.
            let rest = split_on_oom(
                model,
                &prompts[h..],
                &ablations[h..],
                pad_id,
                opts,
                probe,
                first_row + h,
            )?;
            out.extend(rest);
            Ok(out)
        }
        other => other,
    }
}

/// Per row on the device: (greedy token, number of tokens at the row's largest logit, 0 or
/// NaN when the row holds NaN or ±∞), as one (B, 3) f32 tensor. logits: (B, V) f32.
fn greedy_summary(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?;
    // Token ids are exact in f32 below 2^24, beyond every vocabulary.
    let arg = logits.argmax_keepdim(1)?.to_dtype(DType::F32)?;
    let ties = logits
        .broadcast_eq(&max)?
        .to_dtype(DType::F32)?
        .sum_keepdim(1)?;
    // x·0 is 0 for a finite x and NaN for NaN and ±∞.
    let finite = logits.affine(0.0, 0.0)?.sum_keepdim(1)?;
    Ok(Tensor::cat(&[arg, ties, finite], 1)?)
}

fn generate_batch(
    model: &Decoder,
    prompts: &[Vec<u32>],
    ablations: &[Vec<HeadAblation>],
    pad_id: u32,
    opts: &GenerateOptions,
    probe: &[u32],
    first_row: usize,
) -> Result<Vec<Probed>> {
    let batch = Batch::new(prompts, pad_id, &model.device)?;
    let probe_ids = (!probe.is_empty())
        .then(|| transfers::upload(probe.to_vec(), probe.len(), &model.device))
        .transpose()?;
    let mut probs: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let longest = batch.len + opts.max_new_tokens;
    if longest > model.cfg.max_position_embeddings {
        return Err(Error::Prompt(format!(
            "prompt of {} tokens plus {} new tokens exceeds the model's context of {} positions",
            batch.len, opts.max_new_tokens, model.cfg.max_position_embeddings
        )));
    }
    let plan = model.ablation_plan(ablations)?;
    let spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
    let mut cache = KvCache::new(&model.cfg, batch.pad.clone());
    let b = prompts.len();
    let mut rngs: Vec<rand::rngs::StdRng> = (0..b)
        .map(|r| rand::rngs::StdRng::seed_from_u64(row_seed(opts.seed, first_row + r)))
        .collect();
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
        // (B, 1, V) -> (B, V)
        let rows_t = logits.i((.., 0, ..))?;
        // (B, K): the probed ids' probabilities.
        let probed = match &probe_ids {
            Some(ids) => Some(probe_probs(&rows_t, ids)?),
            None => None,
        };
        // Greedy: one (B, 3) read; sampling: the rows.
        let (summary, mut rows): (Vec<Vec<f32>>, Vec<Option<Vec<f32>>>) = match opts.sampling {
            Sampling::Greedy => (
                transfers::read_vec2(&greedy_summary(&rows_t)?)?,
                vec![None; b],
            ),
            Sampling::Sample { .. } => (
                Vec::new(),
                transfers::read_vec2::<f32>(&rows_t)?
                    .into_iter()
                    .map(Some)
                    .collect(),
            ),
        };
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            if done[r] {
                next.push(pad_id);
                seqs[r].push(pad_id);
                continue;
            }
            let quick = summary
                .get(r)
                .and_then(|s| (s[2] == 0.0 && s[1] == 1.0).then_some(s[0] as u32));
            let t = match quick {
                Some(t) => t,
                None => {
                    // A tie for the largest logit (the first one wins, as on the host) or a
                    // row that is not finite: read the row.
                    let row = match rows[r].take() {
                        Some(row) => row,
                        None => rows_t.i(r)?.to_vec1()?,
                    };
                    // No token chosen from NaN or ±∞ (see `model::finite`): rerun alone to
                    // say where.
                    if !all_finite(&row) {
                        let sequence: Vec<u32> =
                            prompts[r].iter().chain(&out[r]).copied().collect();
                        check_output(
                            model,
                            &sequence,
                            &ablations[r],
                            &row,
                            || format!("{}, new token {}", describe(&ablations[r]), step + 1),
                            Some(first_row + r),
                        )?;
                    }
                    choose(&row, &opts.sampling, &mut rngs[r])
                }
            };
            out[r].push(t);
            seqs[r].push(t);
            if let Some(p) = &probed {
                probs[r].push(p[r].clone());
            }
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
            tokens: transfers::upload(next, (b, 1), &model.device)?,
            pad: cache.pad.clone(),
            len: 1,
        };
        logits = model
            .forward(&step_batch, &spec, Some(&mut cache))?
            .logits
            .expect("logits requested");
    }
    Ok(out
        .into_iter()
        .zip(probs)
        .map(|(tokens, probs)| Probed { tokens, probs })
        .collect())
}

/// The softmax probabilities of the ids `ids` ((K,) u32) in each row of `rows` ((B, V)), in
/// f32: (B, K) read back.
fn probe_probs(rows: &Tensor, ids: &Tensor) -> Result<Vec<Vec<f32>>> {
    let x = rows.to_dtype(DType::F32)?;
    let max = x.max_keepdim(1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let z = e.sum_keepdim(1)?;
    let p = e.index_select(ids, 1)?.broadcast_div(&z)?;
    transfers::read_vec2(&p)
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
