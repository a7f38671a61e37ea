"""MXFP4 expert weights, in the layout of the released GPT-OSS checkpoints (fixtures/gpt_oss_mxfp4).

transformers stores a GPT-OSS expert matrix as the parameter ``(E, in, out)``
(``gate_up_proj``: in = hidden, out = 2 * intermediate with gate and up interleaved;
``down_proj``: in = intermediate, out = hidden). The checkpoints store it quantized as

* ``{proj}_blocks``  uint8 ``(E, out, in / 32, 16)``: the 32 values of one block along the
  input dimension, two FP4 (E2M1) codes per byte, the **low nibble first** (value 2j is
  ``byte & 0x0F``, value 2j + 1 is ``byte >> 4``);
* ``{proj}_scales``  uint8 ``(E, out, in / 32)``: the block's power-of-two scale as its
  exponent + 127 (value = code value * 2 ** (scale - 127)).

A code is ``sign << 3 | index`` into the magnitudes ``0, 0.5, 1, 1.5, 2, 3, 4, 6``.
transformers dequantizes (``integrations/mxfp4.py`` ``_convert_moe_packed_tensors``) to
``(E, out, in)`` and transposes to the ``(E, in, out)`` parameter; ``dequantize`` below
does the same, independently.
"""

from __future__ import annotations

import torch

FP4_MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
BLOCK = 32
SCALE_BIAS = 127


def fp4_values(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 16 code values: codes 0..7 positive, 8..15 the same magnitudes negated."""
    mags = torch.tensor(FP4_MAGNITUDES, dtype=dtype)
    return torch.cat([mags, -mags])


def quantize(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize an ``(E, in, out)`` expert parameter to (blocks, scales).

    Per block of 32 input values: the scale is the smallest power of two 2**k with
    ``max|w| / 2**k <= 6`` (so no value is clipped), each value is rounded to the nearest
    FP4 magnitude (ties to the even index, i.e. the even mantissa), and the sign goes in
    bit 3 (a value that rounds to 0 gets code 0).
    """
    e, n_in, n_out = param.shape
    assert n_in % BLOCK == 0, f"input dimension {n_in} is not a multiple of {BLOCK}"
    w = param.detach().to(torch.float64).transpose(1, 2).reshape(e, n_out, n_in // BLOCK, BLOCK)
    amax = w.abs().amax(dim=-1)
    exp = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6.0)), torch.zeros_like(amax))
    exp = exp.clamp(-SCALE_BIAS, SCALE_BIAS).to(torch.int64)
    scaled = w / torch.pow(2.0, exp.to(torch.float64)).unsqueeze(-1)
    assert float(scaled.abs().max()) <= 6.0
    mags = torch.tensor(FP4_MAGNITUDES, dtype=torch.float64)
    dist = (scaled.abs().unsqueeze(-1) - mags).abs()  # (..., 32, 8)
    best = dist.min(dim=-1, keepdim=True).values
    # Among the closest magnitudes (two at most, adjacent, so one index even and one odd)
    # take the even index.
    odd = (torch.arange(8) % 2).to(torch.float64)
    idx = torch.where(dist == best, odd, torch.full_like(dist, 2.0)).argmin(dim=-1)
    sign = ((scaled < 0) & (idx > 0)).to(torch.int64)
    codes = (sign << 3) | idx  # (E, out, G, 32) in 0..15
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    scales = (exp + SCALE_BIAS).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(blocks, scales) -> the ``(E, in, out)`` parameter, as transformers computes it."""
    e, n_out, g, b = blocks.shape
    assert b == BLOCK // 2 and scales.shape == (e, n_out, g), (blocks.shape, scales.shape)
    lut = fp4_values(dtype)
    lo = lut[(blocks & 0x0F).to(torch.int64)]
    hi = lut[(blocks >> 4).to(torch.int64)]
    vals = torch.stack([lo, hi], dim=-1).reshape(e, n_out, g, BLOCK)
    vals = torch.ldexp(vals, (scales.to(torch.int32) - SCALE_BIAS).unsqueeze(-1))
    return vals.reshape(e, n_out, g * BLOCK).transpose(1, 2).contiguous()
