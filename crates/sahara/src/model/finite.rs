//! No number computed from NaN or ±∞. The fast paths check only the outputs they bring to
//! the host anyway (the last position's logits or hidden state: no per-layer
//! synchronisation, so a GPU stays busy). When one is not finite, that one item is computed
//! again here, one prompt at batch size 1 with every layer's output read back and checked,
//! to name the layer where the value first appeared; the caller then stops with
//! [`Error::NonFiniteActivation`].

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::ablation::HeadAblation;
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// Where a forward pass first computed a value that is not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The token embedding (`hook_embed`).
    Embedding,
    /// The output of a layer (`blocks.{l}.hook_resid_post`).
    Layer(usize),
    /// The final norm (`ln_final.hook_normalized`).
    FinalNorm,
    /// The unembedding.
    Logits,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::Embedding => write!(f, "the token embedding (hook_embed)"),
            Site::Layer(l) => write!(f, "layer {l} (blocks.{l}.hook_resid_post)"),
            Site::FinalNorm => write!(f, "the final norm (ln_final.hook_normalized)"),
            Site::Logits => write!(f, "the logits"),
        }
    }
}

/// Whether every value is finite.
pub fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

fn tensor_finite(t: &Tensor) -> Result<bool> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(all_finite(&v))
}

/// Runs one prompt with `ablations` at every position, reading back and checking the
/// residual stream after every layer: the first place a NaN or ±∞ appears, or `None` when
/// this pass computes none. The slow path: for explaining a non-finite output, not for
/// producing results.
pub fn first_non_finite(
    model: &Decoder,
    tokens: &[u32],
    ablations: &[HeadAblation],
) -> Result<Option<Site>> {
    let batch = Batch::new(&[tokens.to_vec()], 0, &model.device)?;
    let plan = model.ablation_plan(&[ablations.to_vec()])?;
    let mut spec = ForwardSpec::logits(Positions::All).with_ablations(&plan);
    spec.hidden = true;
    spec.resid = true;
    let out = model.forward(&batch, &spec, None)?;
    // resid[0] is the embedding, resid[l + 1] the output of layer l.
    for (i, r) in out.resid.iter().enumerate() {
        if !tensor_finite(r)? {
            return Ok(Some(if i == 0 {
                Site::Embedding
            } else {
                Site::Layer(i - 1)
            }));
        }
    }
    if !tensor_finite(out.hidden.as_ref().expect("hidden requested"))? {
        return Ok(Some(Site::FinalNorm));
    }
    if !tensor_finite(out.logits.as_ref().expect("logits requested"))? {
        return Ok(Some(Site::Logits));
    }
    Ok(None)
}

/// `item`'s output (`values`, computed from `tokens` with `ablations`) must be finite;
/// otherwise the item is computed again with per-layer checks and the error names where the
/// first NaN or ±∞ appeared. `row` is the item's row in the caller's batch, when the caller
/// names items by row (see [`Error::name_row`]).
pub fn check_output(
    model: &Decoder,
    tokens: &[u32],
    ablations: &[HeadAblation],
    values: &[f32],
    item: impl FnOnce() -> String,
    row: Option<usize>,
) -> Result<()> {
    if all_finite(values) {
        return Ok(());
    }
    let site = match first_non_finite(model, tokens, ablations)? {
        Some(s) => s.to_string(),
        // Only the batched pass computed it (a batch-dependent overflow, say).
        None => "the batched computation; computed alone, one layer at a time, it is finite".into(),
    };
    let note = if model.dtype == DType::F16 {
        "; the model runs in float16, whose largest value is 65504: bfloat16 or float32 may not overflow"
    } else {
        ""
    };
    Err(Error::NonFiniteActivation {
        item: item(),
        row,
        site,
        note: note.into(),
    })
}

/// How an item is named in errors: its ablations, or the unablated model.
pub fn describe(ablations: &[HeadAblation]) -> String {
    if ablations.is_empty() {
        return "the unablated model".into();
    }
    let heads: Vec<String> = ablations
        .iter()
        .map(|a| format!("{}:{}", a.layer, a.head))
        .collect();
    let a = ablations[0];
    format!(
        "ablating {} ({} {})",
        heads.join(","),
        a.target.as_str(),
        a.op.mode_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::random::{write_random_model, RandomModel};
    use crate::methods::engine::{Engine, EngineOptions};
    use crate::methods::generate::{generate, GenerateOptions};
    use crate::methods::ships::{ships_scores, ShipsOptions};
    use crate::LoadedModel;
    use candle_core::Device;

    fn tiny() -> (tempfile::TempDir, LoadedModel) {
        let dir = tempfile::tempdir().unwrap();
        write_random_model(dir.path(), &RandomModel::tiny("LlamaForCausalLM")).unwrap();
        let m = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        (dir, m)
    }

    /// Multiplies layer `l`'s MLP output projection by 1e38: finite weights (the load check
    /// passes them) whose products overflow to ±∞.
    fn overflow_layer(m: &mut LoadedModel, l: usize) {
        let crate::model::FeedForward::Mlp(mlp) = &mut m.decoder.layers[l].mlp else {
            panic!("a dense model")
        };
        let w = mlp.down_proj.weight.dense_mut().unwrap();
        *w = (&*w * 1e38).unwrap();
    }

    const PROMPT: [u32; 5] = [3, 17, 5, 9, 2];

    fn ships_err(m: &LoadedModel, kind: Engine) -> String {
        let mut opts = ShipsOptions::new(m.cfg());
        opts.engine = EngineOptions {
            kind,
            ..EngineOptions::default()
        };
        ships_scores(&m.decoder, &PROMPT, &opts, &mut |_| {})
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_finite_model_passes_the_check() {
        let (_d, m) = tiny();
        assert_eq!(first_non_finite(&m.decoder, &PROMPT, &[]).unwrap(), None);
        let opts = ShipsOptions::new(m.cfg());
        assert!(ships_scores(&m.decoder, &PROMPT, &opts, &mut |_| {}).is_ok());
    }

    #[test]
    fn the_gradient_screen_stops_at_an_overflowing_layer_and_names_it() {
        let (_d, mut m) = tiny();
        overflow_layer(&mut m, 1);
        let opts = ShipsOptions::new(m.cfg());
        let e = crate::methods::ships::screened_ships(
            &m.decoder,
            &PROMPT,
            &opts,
            &crate::methods::screen::ScreenOptions::default(),
            crate::methods::ships::VerifyTop::DEFAULT,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("the unablated model: the model computed NaN or an infinite value")
                && e.contains("first in layer 1"),
            "{e}"
        );
    }

    #[test]
    fn an_overflowing_layer_is_named_and_no_score_computed() {
        let (_d, mut m) = tiny();
        overflow_layer(&mut m, 1);
        assert_eq!(
            first_non_finite(&m.decoder, &PROMPT, &[]).unwrap(),
            Some(Site::Layer(1))
        );
        // Both engines stop with the same message, naming the layer.
        let fast = ships_err(&m, Engine::Fast);
        assert_eq!(fast, ships_err(&m, Engine::Naive));
        assert!(
            fast.starts_with("the unablated model: the model computed NaN or an infinite value")
                && fast.contains("first in layer 1 (blocks.1.hook_resid_post)"),
            "{fast}"
        );
        // Generation stops too, naming the row once the caller does.
        let opts = GenerateOptions {
            max_new_tokens: 3,
            ..GenerateOptions::default()
        };
        let e = generate(&m.decoder, &[PROMPT.to_vec()], &[vec![]], 0, &opts)
            .unwrap_err()
            .name_row(|r| format!("prompt {r}"));
        let e = e.to_string();
        assert!(
            e.starts_with("prompt 0, the unablated model, new token 1:") && e.contains("layer 1"),
            "{e}"
        );
    }

    #[test]
    fn a_non_finite_embedding_is_named() {
        let (_d, mut m) = tiny();
        let mut rows: Vec<Vec<f32>> = m.decoder.embed_tokens.to_vec2().unwrap();
        rows[17][0] = f32::NAN;
        m.decoder.embed_tokens = Tensor::new(rows, &Device::Cpu).unwrap();
        assert_eq!(
            first_non_finite(&m.decoder, &PROMPT, &[]).unwrap(),
            Some(Site::Embedding)
        );
        // A prompt without that token is unaffected.
        assert_eq!(first_non_finite(&m.decoder, &[3, 5, 9], &[]).unwrap(), None);
    }

    #[test]
    fn float16_overflow_says_so() {
        let (_d, m) = tiny();
        let values = [1.0, f32::INFINITY];
        let e = check_output(&m.decoder, &PROMPT, &[], &values, || "x".into(), None)
            .unwrap_err()
            .to_string();
        // This model is finite: the batched output alone was not, and the message says so.
        assert!(
            e.contains("computed alone, one layer at a time, it is finite"),
            "{e}"
        );
        assert!(!e.contains("float16"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        write_random_model(dir.path(), &RandomModel::tiny("LlamaForCausalLM")).unwrap();
        let h = LoadedModel::load(dir.path().to_str().unwrap(), DType::F16, &Device::Cpu).unwrap();
        let e = check_output(&h.decoder, &PROMPT, &[], &values, || "x".into(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("float16, whose largest value is 65504"), "{e}");
    }
}
