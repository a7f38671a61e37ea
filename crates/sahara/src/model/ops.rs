//! The one rule that picks how each operation of the decoder is computed:
//!
//! 1. the CPU fast kernel of [`crate::model::kernels`], where it applies (float32 on CPU, no
//!    gradient tracking: each kernel answers `None` otherwise);
//! 2. else, when a tensor tracks gradients (training, gradient screening) or is float64
//!    (finite-difference tests), operations composed of ones that record a backward pass —
//!    candle's fused norm, softmax and rotary ops record none and have no float64 kernels;
//! 3. else candle's fused operation.
//!
//! The decoder calls these functions and never chooses itself.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::model::config::Activation;
use crate::model::kernels;

/// Whether any of `ts` records operations for a backward pass, or is float64: the composed
/// path.
fn tracks(ts: &[&Tensor]) -> bool {
    ts.iter()
        .any(|t| t.track_op() || t.dtype() == candle_core::DType::F64)
}

/// RMSNorm: x (..., d) normalized in f32-or-wider, times the weight (d,).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if tracks(&[x, w]) {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        return Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?);
    }
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
}

/// Rotary embedding of x (B, n, T, D) with cos/sin (B, T, D/2), halves rotated; x may be a
/// strided view (the result is contiguous).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(y) = kernels::rope_f32(x, cos, sin)? {
        return Ok(y);
    }
    if tracks(&[x, cos, sin]) {
        let half = x.dim(3)? / 2;
        // (B, T, D/2) -> (B, 1, T, D)
        let cos = Tensor::cat(&[cos, cos], 2)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], 2)?.unsqueeze(1)?;
        let rotated = Tensor::cat(
            &[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?],
            3,
        )?;
        return Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?);
    }
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if tracks(&[x]) {
        return Ok(candle_nn::ops::softmax(x, D::Minus1)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}

/// `act(gate) * up` where `x` (..., 2I) holds `[gate | up]` in its last dimension:
/// (..., 2I) -> (..., I).
pub fn gated_activation(x: &Tensor, inter: usize, act: Activation) -> Result<Tensor> {
    if let Some(y) = kernels::gated_activation_f32(x, inter, act)? {
        return Ok(y);
    }
    let last = x.rank() - 1;
    if let Activation::ClampedSwiglu { alpha, limit } = act {
        let (alpha, limit) = (alpha as f64, limit as f64);
        // g = min(gate, limit), u = clamp(up, ±limit): (g σ(αg)) (u + 1), as transformers.
        let gate = x.narrow(last, 0, inter)?.minimum(limit)?;
        let up = x.narrow(last, inter, inter)?.clamp(-limit, limit)?;
        let sigmoid = ((gate.affine(-alpha, 0.0)?.exp()? + 1.0)?.recip())?;
        return Ok(((gate * sigmoid)? * (up + 1.0)?)?);
    }
    if tracks(&[x]) {
        let gate = x.narrow(last, 0, inter)?;
        let up = x.narrow(last, inter, inter)?;
        let a = match act {
            // silu(g) = g / (1 + e^-g)
            Activation::Silu => (&gate / (gate.neg()?.exp()? + 1.0)?)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::ClampedSwiglu { .. } => unreachable!("handled above"),
        };
        return Ok((a * up)?);
    }
    let gate = x.narrow(last, 0, inter)?.contiguous()?;
    let up = x.narrow(last, inter, inter)?;
    let a = match act {
        Activation::Silu => candle_nn::ops::silu(&gate)?,
        Activation::GeluTanh => gate.gelu()?,
        Activation::ClampedSwiglu { .. } => unreachable!("handled above"),
    };
    Ok((a * up)?)
}

/// A contiguous copy (the tensor itself when it already is): the parallel CPU kernel for
/// float32, candle's copy otherwise.
pub fn contiguous(t: &Tensor) -> Result<Tensor> {
    match kernels::contiguous_f32(t)? {
        Some(c) => Ok(c),
        None => Ok(t.contiguous()?),
    }
}
