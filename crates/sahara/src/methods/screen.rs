//! Gradient screening of Ships: an estimate of every head's Ships for one prompt from one
//! forward pass and a few backward passes, to choose which heads to score exactly.
//!
//! Ablating head h changes the residual stream by Δ_h at some point after its layer (its
//! own attention output, or the stream a few layers later, computed exactly from the clean
//! stream for every head at once). Linearising the last position's logits ℓ in it,
//! δ ≈ J_h Δ_h, the KL divergence of a softmax has no first-order term and
//!
//! ```text
//! KL(p ‖ softmax(ℓ + δ)) ≈ ½ δᵀ (diag p − p pᵀ) δ = ½ E_{y∼p} [ ((e_y − p)ᵀ δ)² ]
//!                        = ½ E_{y∼p} [ (∂ log p(y)/∂x · Δ_h)² ]
//! ```
//!
//! with x the point linearised at. One backward pass of log p(y) gives that gradient for
//! every head at once; the expectation runs over the `tokens` most likely next tokens,
//! weighted by their probabilities (each term is ≥ 0, so the left-out mass can only make
//! the estimate smaller; [`Screen::mass`] reports what it covered).
//!
//! The quadratic term is exact as the ablation shrinks (tests compare it with finite
//! differences and with the exact KL), but an ablation that matters much changes what later
//! layers attend to, and the plain estimate (linearised at the head's own output) underrates
//! exactly the heads that matter most. Computing the head's own layer exactly, attention and
//! MLP, and linearising after it ([`Linearize::After`]) is the remedy the screen uses by
//! default (on SmolLM2 it halved the top heads lost; linearising one layer later still, or
//! averaging over more tokens, changed little); the exact scores of the screen's top heads
//! ([`crate::methods::ships::screened_ships`]) catch most of the rest, and a head ranked
//! below them keeps its estimate.

use candle_core::{DType, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::methods::engine::bytes_per_row;
use crate::methods::metrics::log_softmax;
use crate::model::ablation::{Ablation, HeadAblation, Op, Unit};
use crate::model::decoder::Shifts;
use crate::model::finite::{check_output, describe};
use crate::model::{Batch, Decoder, ForwardSpec, Positions};

/// Where the screen linearises the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linearize {
    /// At the head's attention output (`hook_z`): the plain estimate.
    HeadOutput,
    /// At the residual stream entering the n-th layer after the head's (n ≥ 1): the head's
    /// own layer and the n − 1 after it are computed exactly for every head.
    After(usize),
}

impl Linearize {
    /// The default: the head's own layer computed exactly (attention and MLP), linearised at
    /// the residual stream leaving it.
    pub const DEFAULT: Linearize = Linearize::After(1);

    /// The name in run records: `z` or `resid+n`.
    pub fn name(self) -> String {
        match self {
            Linearize::HeadOutput => "z".into(),
            Linearize::After(n) => format!("resid+{n}"),
        }
    }
}

/// Options of [`screen`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScreenOptions {
    /// How many of the most likely next tokens the expectation runs over (backward passes).
    pub tokens: usize,
    pub linearize: Linearize,
    /// Bytes of activations one backward pass may hold (it keeps every layer's): its rows
    /// (tokens) are split to fit.
    pub memory_budget: usize,
}

/// The default number of tokens of the expectation.
pub const DEFAULT_TOKENS: usize = 8;

impl Default for ScreenOptions {
    fn default() -> Self {
        ScreenOptions {
            tokens: DEFAULT_TOKENS,
            linearize: Linearize::DEFAULT,
            memory_budget: 1 << 30,
        }
    }
}

/// The screen of one prompt.
#[derive(Debug, Clone)]
pub struct Screen {
    /// Per unit, the estimated Ships (nats).
    pub estimates: Vec<f64>,
    /// The tokens the expectation ran over, most likely first, and their probabilities.
    pub tokens: Vec<u32>,
    pub probs: Vec<f64>,
    /// Their total probability: the share of the expectation covered.
    pub mass: f64,
    /// Wall seconds of its parts (on a GPU, approximate: work is queued).
    pub seconds: ScreenSeconds,
}

/// Where a screen's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScreenSeconds {
    /// The clean forward pass.
    pub clean: f64,
    /// The gradient passes (forward and backward, one row per token).
    pub gradients: f64,
    /// Every unit's change at the point linearised at, and the estimates.
    pub deltas: f64,
}

/// The estimated Ships of each of `units` (ablated by `ablation`) for the prompt `tokens`.
pub fn screen(
    model: &Decoder,
    tokens: &[u32],
    ablation: Ablation,
    units: &[Unit],
    opts: &ScreenOptions,
) -> Result<Screen> {
    let cfg = &model.cfg;
    let nl = cfg.num_layers;
    if opts.tokens == 0 {
        return Err(Error::InvalidArgument(
            "the screen needs at least one token".into(),
        ));
    }
    if let Linearize::After(0) = opts.linearize {
        return Err(Error::InvalidArgument(
            "linearising after 0 layers is linearising at the head's output".into(),
        ));
    }
    if ablation.op == Op::Patch {
        return Err(Error::InvalidArgument(
            "the gradient screen estimates ablations, not patches".into(),
        ));
    }
    if model.has_quantized_weights() {
        return Err(Error::InvalidArgument(
            "the gradient screen needs a backward pass, which quantized matrix products do not have: load the model dequantized".into(),
        ));
    }
    if cfg.moe.is_some() {
        // Expert routes and their weights are chosen on the host, so a backward pass would
        // not see how the weights move: a gradient that silently leaves out a path.
        return Err(Error::InvalidArgument(
            "the gradient screen does not differentiate through a mixture of experts' routing; score this model with the exact sweep".into(),
        ));
    }
    if let Some(u) = units.iter().find(|u| u.layer >= nl) {
        return Err(Error::InvalidArgument(format!(
            "unit at layer {} of a model with {nl} layers",
            u.layer
        )));
    }
    let clock = std::time::Instant::now();
    let mut seconds = ScreenSeconds::default();
    // The clean pass: the residual stream entering every layer, (1, T, d) each, and the
    // next-token distribution.
    let batch = Batch::new(&[tokens.to_vec()], 0, &model.device)?;
    let mut spec = ForwardSpec::logits(Positions::Last);
    spec.resid = true;
    let out = model.forward(&batch, &spec, None)?;
    let logits: Vec<f32> = out
        .logits
        .as_ref()
        .expect("logits were asked for")
        .flatten_all()?
        .to_vec1()?;
    check_output(model, tokens, &[], &logits, || describe(&[]), None)?;
    let logp = log_softmax(&logits);
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
    order.truncate(opts.tokens.min(logp.len()));
    let ys: Vec<u32> = order.iter().map(|&i| i as u32).collect();
    let probs: Vec<f64> = order.iter().map(|&i| logp[i].exp()).collect();

    // Where each layer's heads are linearised: z of layer l, or the stream entering layer
    // l + n (n = L: the one leaving the last layer).
    let point = |l: usize| -> Point {
        match opts.linearize {
            Linearize::HeadOutput => Point::Z(l),
            Linearize::After(n) => Point::Resid((l + n).min(nl)),
        }
    };
    let mut layers: Vec<usize> = units.iter().map(|u| u.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut points: Vec<Point> = layers.iter().map(|&l| point(l)).collect();
    points.sort();
    points.dedup();

    seconds.clean = clock.elapsed().as_secs_f64();
    let grads = gradients(model, tokens, &ys, &points, opts.memory_budget)?;
    seconds.gradients = clock.elapsed().as_secs_f64() - seconds.clean;

    // Per unit: the m dot products of the gradients with its Δ.
    let mut estimates = vec![0f64; units.len()];
    for &l in &layers {
        let idx: Vec<usize> = (0..units.len()).filter(|&i| units[i].layer == l).collect();
        let p = point(l);
        let g = &grads[points
            .iter()
            .position(|q| *q == p)
            .expect("a point per layer")];
        // (U, Tg·W)
        let delta = deltas(model, &out.resid[l], l, ablation, &idx, units, p, g.dim(1)?)?;
        // (m, Tg·W) @ (Tg·W, U) -> (m, U)
        let (m, tg, w) = g.dims3()?;
        // In f32 at least (f64 for a float64 model).
        let wide = match g.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let dots = g
            .reshape((m, tg * w))?
            .to_dtype(wide)?
            .matmul(&delta.to_dtype(wide)?.t()?)?;
        let dots: Vec<Vec<f64>> = dots.to_dtype(DType::F64)?.to_vec2()?;
        for (j, &i) in idx.iter().enumerate() {
            // ½ Σ_y p(y) s_y², s_y = ∂ log p(y)/∂x · Δ
            let e: f64 = dots
                .iter()
                .zip(&probs)
                .map(|(row, &py)| py * row[j].powi(2))
                .sum::<f64>()
                / 2.0;
            if !e.is_finite() {
                return Err(Error::NonFiniteActivation {
                    item: format!(
                        "the gradient screen's estimate of head {l}:{}",
                        units[i].head
                    ),
                    row: None,
                    site: "its backward pass or the head's change where it is linearised".into(),
                    note: String::new(),
                });
            }
            estimates[i] = e;
        }
    }
    seconds.deltas = clock.elapsed().as_secs_f64() - seconds.clean - seconds.gradients;
    Ok(Screen {
        estimates,
        seconds,
        mass: probs.iter().sum(),
        tokens: ys,
        probs,
    })
}

/// A point the model is linearised at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    /// The residual stream entering layer l (l = L: leaving the last layer).
    Resid(usize),
    /// Layer l's attention output before `o_proj`.
    Z(usize),
}

/// ∂ log p(y_r)/∂x at each point, one row per token y_r: (m, Tg, W) each, Tg the positions
/// the point has in a pass that computes only the last position's logits (T, or 1 at the
/// last layer's z and after the last layer), W = d or H·D.
fn gradients(
    model: &Decoder,
    tokens: &[u32],
    ys: &[u32],
    points: &[Point],
    budget: usize,
) -> Result<Vec<Tensor>> {
    let cfg = &model.cfg;
    let nl = cfg.num_layers;
    let t = tokens.len();
    let (d, hd) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim);
    // A backward pass keeps every layer's activations.
    let rows = (budget / (nl * bytes_per_row(model, t)).max(1)).clamp(1, ys.len());
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); points.len()];
    for chunk in ys.chunks(rows) {
        let m = chunk.len();
        let mut shifts = Shifts {
            resid: vec![None; nl + 1],
            z: vec![None; nl],
        };
        let mut vars = Vec::with_capacity(points.len());
        for p in points {
            let (shape, dev) = match *p {
                Point::Resid(l) if l == nl => ((m, 1, d), model.placement.head_device()),
                Point::Resid(l) => ((m, t, d), model.placement.layer_device(l)),
                Point::Z(l) if l == nl - 1 => ((m, 1, hd), model.placement.layer_device(l)),
                Point::Z(l) => ((m, t, hd), model.placement.layer_device(l)),
            };
            let v = Var::zeros(shape, model.dtype, dev)?;
            match *p {
                Point::Resid(l) => shifts.resid[l] = Some(v.as_tensor().clone()),
                Point::Z(l) => shifts.z[l] = Some(v.as_tensor().clone()),
            }
            vars.push(v);
        }
        let batch = Batch::repeat(tokens, m, &model.device)?;
        let mut spec = ForwardSpec::logits(Positions::Last);
        spec.shifts = Some(&shifts);
        let out = model.forward(&batch, &spec, None)?;
        // (m, 1, V) -> (m, V) log-probabilities; the chosen token of each row.
        let logits = out.logits.expect("logits were asked for").squeeze(1)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let v = logp.dim(1)?;
        let mut onehot = vec![0f32; m * v];
        for (r, &y) in chunk.iter().enumerate() {
            onehot[r * v + y as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (m, v), logp.device())?;
        let loss = (logp * onehot)?.sum_all()?;
        let grads = loss.backward()?;
        for (i, var) in vars.iter().enumerate() {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                // Nothing after this point reaches the logits (not expected): no effect.
                None => var.as_tensor().zeros_like()?,
            };
            parts[i].push(on(&g, &model.device)?);
        }
    }
    parts.into_iter().map(|p| Ok(Tensor::cat(&p, 0)?)).collect()
}

/// What ablating each unit `idx` of layer `l` changes at point `p`, from the clean stream
/// `resid` (1, T, d) entering layer l, at the last `tg` positions, flattened: (U, tg·W).
#[allow(clippy::too_many_arguments)]
fn deltas(
    model: &Decoder,
    resid: &Tensor,
    l: usize,
    ablation: Ablation,
    idx: &[usize],
    units: &[Unit],
    p: Point,
    tg: usize,
) -> Result<Tensor> {
    let cfg = &model.cfg;
    let (_, t, d) = resid.dims3()?;
    let u = idx.len();
    // Row 0 unablated, row 1 + j ablating unit idx[j].
    let mut rows: Vec<Vec<HeadAblation>> = vec![Vec::new()];
    rows.extend(idx.iter().map(|&i| vec![ablation.at(l, units[i].head)]));
    let plan = model.ablation_plan(&rows)?;
    let dev = model.placement.layer_device(l);
    let x = on(resid, dev)?.broadcast_as((u + 1, t, d))?.contiguous()?;
    let (y, z) = model.run_layer(l, &x, Some(&plan))?;
    let diff = |a: &Tensor| -> Result<Tensor> {
        // (1 + U, ...) -> (U, ...): each ablated row minus the clean one
        Ok(a.narrow(0, 1, u)?.broadcast_sub(&a.narrow(0, 0, 1)?)?)
    };
    let delta = match p {
        Point::Z(_) => {
            // (U, H, T, D), only the heads each unit changes, -> (U, T, H·D)
            let (nh, hd) = (cfg.num_heads, cfg.head_dim);
            let mut mask = vec![0f32; u * nh];
            for (j, &i) in idx.iter().enumerate() {
                for h in ablation.changed_heads(cfg, units[i].head) {
                    mask[j * nh + h] = 1.0;
                }
            }
            let mask = Tensor::from_vec(mask, (u, nh, 1, 1), z.device())?.to_dtype(z.dtype())?;
            diff(&z)?
                .broadcast_mul(&mask)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((u, t, nh * hd))?
        }
        Point::Resid(k) => {
            let mut y = y;
            for j in l + 1..k {
                let x = on(&y, model.placement.layer_device(j))?;
                y = model.run_layer(j, &x, None)?.0;
            }
            diff(&y)?
        }
    };
    let w = delta.dim(2)?;
    on(
        &delta
            .narrow(1, t - tg, tg)?
            .contiguous()?
            .reshape((u, tg * w))?,
        &model.device,
    )
}

/// `t` on `device`, moved only when it is elsewhere.
fn on(t: &Tensor, device: &candle_core::Device) -> Result<Tensor> {
    match t.device().same_device(device) {
        true => Ok(t.clone()),
        false => crate::device::transfers::between(t, device),
    }
}
