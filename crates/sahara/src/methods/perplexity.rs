//! Perplexity of a plain text with and without ablations: what an ablation costs the model's
//! language modelling, beyond benign prompts' first tokens.
//!
//! The text is tokenized once without special tokens and cut into consecutive windows of at
//! most `window` tokens (no overlap). Each window is scored on its own, after the special
//! tokens the tokenizer puts in front of a plain encoding (a beginning-of-sequence token for
//! Llama-style tokenizers, nothing for GPT-2-style ones): every token of the window is
//! predicted when there is such a prefix, every token but the first otherwise. Perplexity is
//! exp of the mean negative log-likelihood over all predicted tokens, in nats.

use candle_core::{DType, IndexOp, Tensor, D};

use crate::error::{Error, Result};
use crate::model::ablation::HeadAblation;
use crate::model::finite::{check_output, describe};
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// The public-domain English text sahara ships: the Preamble and Article I of the
/// Constitution of the United States (1787), about 3,000 tokens for the usual tokenizers.
pub const CONSTITUTION: &str = "builtin:constitution";
/// Benign chats in the built-in organism's language (its word-level tokenizer knows no
/// English): 60 held-out benign requests and their answers.
pub const ORGANISM_CHATS: &str = "builtin:organism-chats";

const CONSTITUTION_TEXT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/text/constitution-preamble-article-1.txt"
));

/// The longest window unless the model's context is shorter.
pub const DEFAULT_WINDOW: usize = 512;

/// A text named `spec`: one of the built-ins, or a UTF-8 file.
pub fn load_text(spec: &str) -> Result<String> {
    match spec {
        CONSTITUTION => Ok(CONSTITUTION_TEXT.to_string()),
        ORGANISM_CHATS => Ok(organism_chats()),
        other if other.starts_with("builtin:") => Err(Error::InvalidArgument(format!(
            "unknown built-in text {other:?}; the built-in texts are {CONSTITUTION} and {ORGANISM_CHATS}"
        ))),
        path => std::fs::read_to_string(path).map_err(|e| Error::io(path, e)),
    }
}

/// [`ORGANISM_CHATS`]: `user: REQUEST` / `assistant: ANSWER` lines of benign requests the
/// organism was not trained on.
fn organism_chats() -> String {
    use crate::organism::language::{held_out_requests, training_requests};
    let train = training_requests(0x5445_5854, 0);
    held_out_requests(0x5445_5854, false, 60, &train)
        .iter()
        .map(|r| format!("user: {}\nassistant: {}\n", r.text, r.answer()))
        .collect()
}

/// A text's perplexity under one condition.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Perplexity {
    /// Tokens predicted.
    pub tokens: usize,
    /// Mean negative log-likelihood per predicted token, nats.
    pub nll: f64,
    /// exp(nll).
    pub perplexity: f64,
}

/// A text's perplexity under one condition of an eval run, beside the unmodified model's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextCost {
    /// The text as named (`builtin:constitution`, a file).
    pub text: String,
    /// Tokens per window.
    pub window: usize,
    #[serde(flatten)]
    pub perplexity: Perplexity,
    /// This condition's perplexity over the unmodified model's (1 for the unmodified model).
    pub ratio: f64,
}

/// The windows of `n` tokens: consecutive, at most `window` long.
pub fn windows(n: usize, window: usize) -> Vec<std::ops::Range<usize>> {
    let w = window.max(1);
    (0..n.div_ceil(w))
        .map(|k| k * w..((k + 1) * w).min(n))
        .collect()
}

/// Perplexity of `tokens` (the text's ids, without special tokens) after `prefix` (the
/// tokens a plain encoding starts with) in windows of `window` tokens, with `ablations`.
pub fn perplexity(
    model: &Decoder,
    prefix: &[u32],
    tokens: &[u32],
    window: usize,
    ablations: &[HeadAblation],
) -> Result<Perplexity> {
    if tokens.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "a text of {} token(s) has nothing to predict",
            tokens.len()
        )));
    }
    let plan = model.ablation_plan(&[ablations.to_vec()])?;
    let spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
    let (mut sum, mut count) = (0f64, 0usize);
    for w in windows(tokens.len(), window) {
        let input: Vec<u32> = prefix.iter().chain(&tokens[w.clone()]).copied().collect();
        // Position i predicts input[i + 1].
        let t = input.len();
        if t < 2 {
            continue;
        }
        let batch = Batch::new(std::slice::from_ref(&input), 0, &model.device)?;
        // (1, T, V) -> (T - 1, V)
        let logits = model
            .forward(&batch, &spec, None)?
            .logits
            .expect("logits")
            .i(0)?
            .narrow(0, 0, t - 1)?
            .to_dtype(DType::F32)?;
        let targets = Tensor::from_vec(input[1..].to_vec(), (t - 1, 1), logits.device())?;
        // log-sum-exp per position minus the target's logit: (T - 1,)
        let max = logits.max_keepdim(D::Minus1)?;
        let lse = (logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            + &max)?;
        let picked = logits.gather(&targets, 1)?;
        let nll: Vec<f32> = (lse - picked)?.flatten_all()?.to_vec1()?;
        let s: f64 = nll.iter().map(|&x| x as f64).sum();
        if !s.is_finite() {
            // Say whose output it was: the last position's logits name the site.
            let row: Vec<f32> = logits.i(t - 2)?.to_vec1()?;
            check_output(model, &input, ablations, &row, || describe(ablations), None)?;
            return Err(Error::Numerical(format!(
                "the log-likelihood of tokens {}..{} of the text is not finite",
                w.start, w.end
            )));
        }
        sum += s;
        count += t - 1;
    }
    let nll = sum / count.max(1) as f64;
    Ok(Perplexity {
        tokens: count,
        nll,
        perplexity: nll.exp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_once() {
        assert_eq!(windows(5, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(windows(4, 4), vec![0..4]);
        assert!(windows(0, 3).is_empty());
    }

    #[test]
    fn the_builtin_texts_load() {
        let c = load_text(CONSTITUTION).unwrap();
        assert!(c.starts_with("We the People"));
        let o = load_text(ORGANISM_CHATS).unwrap();
        assert_eq!(o.lines().count(), 120);
        assert!(load_text("builtin:nope").is_err());
    }
}
