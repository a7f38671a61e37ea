"""Head ablations: the sets every fixture records and the forward hooks that apply them."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

def ablation_sets(n_layers: int, n_heads: int, n_kv: int) -> list[dict]:
    last = n_layers - 1
    heads = {
        "q": [[0, 1], [last, n_heads - 2]],
        "k": [[0, n_kv - 1], [last, 0]],
        "v": [[0, 2], [last, n_heads - 1]],
    }
    sets = []
    for target in ("q", "k", "v"):
        for op in ("scale", "mean"):
            sets.append({"name": f"{target}_{op}", "target": target, "op": op, "heads": heads[target]})
    sets.append(
        {"name": "q_scale_all_layers_head0", "target": "q", "op": "scale", "heads": [[l, 0] for l in range(n_layers)]}
    )
    return sets


def register_ablation(model, abl: dict, eps: float) -> list:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in abl["heads"]:
        by_layer[layer].append(head)

    def make_edit(heads: list[int], n: int, op: str):
        def edit(x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            orig = x.reshape(*shape[:-1], n, head_dim)
            y = orig.clone()
            if op == "scale":
                for h in heads:
                    y[..., h, :] = orig[..., h, :] * eps
            elif op == "mean":
                mean = orig.mean(dim=-2)  # mean over the heads of the ORIGINAL tensor
                for h in heads:
                    y[..., h, :] = mean
            else:
                raise ValueError(op)
            return y.reshape(shape)

        return edit

    def per_head(edit):
        # q_norm / k_norm outputs are (batch, seq, heads, head_dim): edit them
        # in the flat head-major layout the projections use.
        return lambda x: edit(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)

    def fused_qkv(edit, start: int, stop: int):
        # Phi-3: one qkv_proj whose output columns are [q heads | k heads | v heads].
        def apply(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[..., :start], edit(x[..., start:stop]), x[..., stop:]], dim=-1)

        return apply

    kind = ablation_kind(model)
    handles = []
    for layer, heads in sorted(by_layer.items()):
        attn = model.model.layers[layer].self_attn
        target = abl["target"]
        if target in ("q", "k"):
            n = n_heads if target == "q" else n_kv
            edit = make_edit(heads, n, abl["op"])
            if kind == "fused_qkv":
                start = 0 if target == "q" else n_heads * head_dim
                module, edit = attn.qkv_proj, fused_qkv(edit, start, start + n * head_dim)
            elif kind == "qk_norm":
                module, edit = (attn.q_norm if target == "q" else attn.k_norm), per_head(edit)
            elif kind == "qk_norm_heads_first":
                # Gemma 3 normalizes (batch, heads, seq, head_dim), after the transpose.
                module = attn.q_norm if target == "q" else attn.k_norm
                edit = (lambda e: lambda x: e(x.transpose(1, 2)).transpose(1, 2))(per_head(edit))
            elif kind == "qk_norm_whole":
                # OLMo 2: the norm spans the whole projection, its output is already flat.
                module = attn.q_norm if target == "q" else attn.k_norm
            else:
                module = attn.q_proj if target == "q" else attn.k_proj
            handles.append(module.register_forward_hook(lambda m, a, out, edit=edit: edit(out)))
        elif target == "v":
            edit = make_edit(heads, n_heads, abl["op"])
            handles.append(
                attn.o_proj.register_forward_pre_hook(lambda m, args, edit=edit: (edit(args[0]),) + tuple(args[1:]))
            )
        else:
            raise ValueError(target)
    return handles


def ablation_kind(model) -> str:
    """Where the per-head q/k slices are edited (see ABLATION_POINTS)."""
    attn = model.model.layers[0].self_attn
    if hasattr(attn, "qkv_proj"):
        return "fused_qkv"
    if hasattr(attn, "q_norm"):
        if attn.q_norm.weight.numel() != attn.head_dim:
            return "qk_norm_whole"
        return "qk_norm_heads_first" if type(attn).__name__.startswith("Gemma3") else "qk_norm"
    return "proj"


ABLATION_POINTS = {
    "proj": {"q": "q_proj output", "k": "k_proj output", "v": "o_proj input"},
    "fused_qkv": {
        "q": "qkv_proj output, q columns [h*head_dim, (h+1)*head_dim)",
        "k": "qkv_proj output, k columns [H*head_dim + g*head_dim, H*head_dim + (g+1)*head_dim)",
        "v": "o_proj input",
    },
    "qk_norm": {"q": "q_norm output", "k": "k_norm output", "v": "o_proj input"},
    "qk_norm_heads_first": {"q": "q_norm output", "k": "k_norm output", "v": "o_proj input"},
    "qk_norm_whole": {
        "q": "q_norm output (one norm over all heads), columns [h*head_dim, (h+1)*head_dim)",
        "k": "k_norm output (one norm over all key/value heads), columns [g*head_dim, (g+1)*head_dim)",
        "v": "o_proj input",
    },
}


# ---------------------------------------------------------------------------
# GPT-OSS attention sinks. Each query head h has a learned sink logit s_h that joins the
# softmax of its scores (p_j = e^{x_j} / (e^{s_h} + sum_k e^{x_k})) and is then dropped, so a
# q-ablated head (scores ~ 0) attends each visible key with 1 / (n + e^{s_h}), not 1 / n.
# The "sink drop" variant of a q/k ablation also sets the sink of every affected query head
# to -inf, which restores exactly uniform attention 1 / n.
# ---------------------------------------------------------------------------
def sink_drop_heads(model, abl: dict) -> dict[int, list[int]]:
    """The query heads, per layer, whose sink logit the sink-drop variant of `abl` sets to
    -inf: the ablated heads for q; for k, every query head of the ablated key/value head's
    group (heads g*group .. (g+1)*group - 1)."""
    cfg = model.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    out: dict[int, list[int]] = defaultdict(list)
    for layer, head in abl["heads"]:
        if abl["target"] == "q":
            heads = [head]
        elif abl["target"] == "k":
            heads = list(range(head * group, (head + 1) * group))
        else:
            raise ValueError(f"no sink-drop variant for target {abl['target']!r}")
        out[layer].extend(h for h in heads if h not in out[layer])
    return dict(sorted(out.items()))


@contextmanager
def sinks_dropped(model, abl: dict):
    """Temporarily set the sink logits of sink_drop_heads(model, abl) to -inf (in place, in
    `self_attn.sinks`), restoring the original values afterwards."""
    saved = []
    try:
        with torch.no_grad():
            for layer, heads in sink_drop_heads(model, abl).items():
                sinks = model.model.layers[layer].self_attn.sinks
                saved.append((sinks, sinks.detach().clone()))
                sinks[heads] = float("-inf")
        yield
    finally:
        with torch.no_grad():
            for sinks, value in saved:
                sinks.copy_(value)
