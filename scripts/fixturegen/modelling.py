"""Seeded random weights, the forward pass and greedy decoding."""

from __future__ import annotations

import torch

from .common import MAX_NEW_TOKENS

# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def reinit_(
    model: torch.nn.Module, seed: int, std: float, norm_center: float = 1.0, param_std: dict | None = None
) -> None:
    """Well-spread random weights: N(0, std) for matrices and embeddings,
    N(0, 0.1) for biases, 1 + N(0, 0.1) for RMSNorm weights (so a missing norm
    weight is detectable).  Gemma's RMSNorm multiplies by (1 + weight), so its
    weights are drawn around 0 instead (norm_center=0): forgetting the +1 then
    shrinks every normalised vector about tenfold.  `param_std` maps a name suffix
    to the std of N(0, std) for the parameters whose names end with it (GPT-OSS:
    the attention sinks, the experts' fused matrices and their `*_proj_bias`)."""
    g = torch.Generator().manual_seed(seed)
    param_std = param_std or {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            override = next((s for suffix, s in param_std.items() if name.endswith(suffix)), None)
            if override is not None:
                p.copy_(override * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].float()


def greedy(model, ids: list[int], eos_ids: set[int], pad_id: int) -> tuple[list[int], float]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
    new = out.sequences[0, len(ids):].tolist()
    min_gap = float("inf")
    for step in out.logits:
        top2 = torch.topk(step[0].float(), 2).values
        min_gap = min(min_gap, float(top2[0] - top2[1]))
    # Cross-check against a cache-free greedy loop (full recompute each step).
    seq = list(ids)
    manual = []
    for _ in range(MAX_NEW_TOKENS):
        nxt = int(forward_logits(model, seq)[-1].argmax())
        manual.append(nxt)
        seq.append(nxt)
        if nxt in eos_ids:
            break
    if manual != new:
        raise AssertionError(f"generate() {new} != cache-free greedy {manual}")
    return new, min_gap
