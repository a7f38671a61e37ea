"""fixtures/surgery.json: greedy continuations with head ablations folded into the weights."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from .common import EPSILON, FIXTURES
from .modelling import greedy

SURGERY_CASES = [
    # fixture, heads (query-head indices), target, mode
    ("llama_gqa", [[0, 1], [2, 3]], "q", "scale"),
    ("qwen2", [[1, 2]], "k", "mean"),
    ("mistral", [[1, 0]], "v", "scale"),
    # OLMo 2's q norm spans the whole projection: the fold scales the head's slice of its weight.
    ("olmo2", [[0, 0], [0, 3], [1, 1], [1, 2]], "q", "scale"),
    # GPT-OSS: q/k rows and biases scaled, the attention sinks kept (`--sink keep`); from the
    # MXFP4 checkpoint too (transformers dequantizes its experts at load).
    ("gpt_oss", [[1, 2], [3, 0]], "q", "scale"),
    ("gpt_oss_mxfp4", [[0, 1], [2, 3]], "k", "scale"),
]


def fold(model, heads, target: str, mode: str, eps: float) -> None:
    """Folds a head ablation into the weights in place, as `sahara surgery` defines it."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for layer, head in heads:
            attn = model.model.layers[layer].self_attn
            if target == "v":
                w = attn.o_proj.weight  # (hidden, H*D): the head's columns
                w[:, head * hd:(head + 1) * hd] *= eps
                continue
            proj, unit, n = (attn.q_proj, head, cfg.num_attention_heads) if target == "q" else (
                attn.k_proj, head // group, cfg.num_key_value_heads)
            norm = getattr(attn, "q_norm" if target == "q" else "k_norm", None)
            if norm is not None and norm.weight.numel() == n * hd:
                assert mode == "scale", "a mean does not fold through a norm over all heads"
                norm.weight[unit * hd:(unit + 1) * hd] *= eps
                continue
            for t in [proj.weight] + ([proj.bias] if proj.bias is not None else []):
                rows = t.view(n, hd, *t.shape[1:])
                if mode == "scale":
                    rows[unit] *= eps
                else:
                    rows[unit] = rows.mean(dim=0)


def surgery_fixture() -> None:
    """fixtures/surgery.json: greedy continuations of transformers on weights with the ablation
    folded in, to compare with `sahara generate --ablate` on the source models."""
    import tempfile
    cases = []
    for name, heads, target, mode in SURGERY_CASES:
        src = FIXTURES / name
        ref = json.loads((src / "reference.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
        fold(model, heads, target, mode, EPSILON)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            folded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        ids = ref["raw_token_ids"][1]
        gen = GenerationConfig.from_pretrained(src)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        new, gap = greedy(folded, ids, set(e for e in eos if e is not None), eos[0] if eos[0] is not None else 0)
        assert gap >= 1e-3, f"{name}: top-2 gap {gap} too small for a stable greedy fixture"
        cases.append({"fixture": name, "heads": heads, "target": target, "mode": mode,
                      "epsilon": EPSILON, "prompt_ids": ids, "new_tokens": new})
        print(f"surgery {name} {target}/{mode} {heads}: {new}")
    (FIXTURES / "surgery.json").write_text(json.dumps(cases, indent=1) + "\n")
