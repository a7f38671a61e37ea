"""fixtures/gguf_tiny: a tiny random Llama written as a GGUF file, with transformers' outputs."""

from __future__ import annotations

import importlib.metadata
import json

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from .common import CHAT_CASES, FIXTURES, PROMPTS
from .modelling import forward_logits
from .templates import LLAMA2_CHAT_TEMPLATE

# ---------------------------------------------------------------------------
# fixtures/gguf_tiny: a tiny random Llama written as a GGUF file with every common tensor
# type and a SentencePiece ("llama") vocabulary, with transformers' outputs on it
# ---------------------------------------------------------------------------

GGUF_TINY_TYPES = {
    # (layer, module): type; K-quant blocks are random bytes with small scales (the gguf
    # package cannot quantize to them), the others are quantized by the gguf package.
    (0, "attn_q"): "Q4_K", (0, "attn_k"): "Q5_K", (0, "attn_v"): "Q6_K", (0, "attn_output"): "Q8_0",
    (0, "ffn_gate"): "Q3_K", (0, "ffn_up"): "Q4_1", (0, "ffn_down"): "Q2_K",
    (1, "attn_q"): "Q5_0", (1, "attn_k"): "F16", (1, "attn_v"): "BF16", (1, "attn_output"): "Q5_1",
    (1, "ffn_gate"): "Q6_K", (1, "ffn_up"): "Q4_K", (1, "ffn_down"): "Q5_K",
    "token_embd": "Q4_0", "output": "Q6_K",
}
# Byte offset and value of the f16 scale fields of each K-quant block.
K_SCALES = {
    "Q2_K": [(80, 0.004), (82, 0.002)],
    "Q3_K": [(108, 0.001)],
    "Q4_K": [(0, 0.0003), (2, 0.0003)],
    "Q5_K": [(0, 0.00015), (2, 0.0002)],
    "Q6_K": [(208, 0.00003)],
}


def gguf_tiny_fixture() -> None:
    import numpy as np
    import gguf as gguf_pkg
    from gguf import GGMLQuantizationType as QT, GGUFWriter
    from gguf.quants import quantize
    rng = np.random.default_rng(7)
    d, inter, layers, heads, kv = 256, 256, 2, 4, 2
    hd = d // heads
    src = json.loads((FIXTURES / "llama_gqa" / "tokenizer.json").read_text())
    vocab = src["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    n_vocab = len(tokens)
    types, scores = [], []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(2); scores.append(0.0)
        elif t in ("<s>", "</s>"):
            types.append(3); scores.append(0.0)
        elif t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(6); scores.append(0.0)
        else:
            types.append(1); scores.append(float(-i))

    def tensor(rows: int, cols: int, qtype: str, std: float):
        qt = QT[qtype]
        if qtype in K_SCALES:
            block, size = gguf_pkg.GGML_QUANT_SIZES[qt]
            raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
            for off, val in K_SCALES[qtype]:
                raw[:, :, off:off + 2] = np.frombuffer(np.float16(val).tobytes(), dtype=np.uint8)
            return raw.reshape(rows, -1), qt
        w = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if qtype == "F16":
            return w.astype(np.float16), None
        if qtype == "BF16":
            return quantize(w, qt).view(np.uint8), qt
        return quantize(w, qt), qt

    path = FIXTURES / "gguf_tiny" / "model.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), "llama")
    w.add_name("sahara gguf_tiny")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(d)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(LLAMA2_CHAT_TEMPLATE)
    entries = [("token_embd.weight", n_vocab, d, GGUF_TINY_TYPES["token_embd"], 1.0)]
    for layer in range(layers):
        for module, rows, cols in [("attn_q", d, d), ("attn_k", kv * hd, d), ("attn_v", kv * hd, d),
                                   ("attn_output", d, d), ("ffn_gate", inter, d), ("ffn_up", inter, d),
                                   ("ffn_down", d, inter)]:
            entries.append((f"blk.{layer}.{module}.weight", rows, cols, GGUF_TINY_TYPES[(layer, module)], 0.15))
    entries.append(("output.weight", n_vocab, d, GGUF_TINY_TYPES["output"], 0.0))
    for name, rows, cols, qtype, std in entries:
        data, raw = tensor(rows, cols, qtype, std)
        w.add_tensor(name, data, raw_dtype=raw)
    for layer in range(layers):
        for module in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{layer}.{module}.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    raw_ids = [tok(p)["input_ids"] for p in PROMPTS]
    chat = []
    for system, user in CHAT_CASES:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat.append({"system": system, "user": user, "rendered": rendered,
                     "token_ids": tok(rendered, add_special_tokens=False)["input_ids"]})
    original = Tokenizer.from_file(str(FIXTURES / "llama_gqa" / "tokenizer.json"))
    same = [original.encode(p).ids == ids for p, ids in zip(PROMPTS, raw_ids)]
    tensors = {f"logits.{i}": forward_logits(model, ids).contiguous() for i, ids in enumerate(raw_ids)}
    reference = {
        "transformers_version": transformers.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "types": sorted(set(GGUF_TINY_TYPES.values()) | {"F32"}),
        "prompts": PROMPTS,
        "raw_token_ids": raw_ids,
        "chat": chat,
        "same_ids_as_the_llama_gqa_tokenizer_json": same,
    }
    (path.parent / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, str(path.parent / "reference.safetensors"))
    size = sum(f.stat().st_size for f in path.parent.iterdir())
    print(f"gguf_tiny: {size} bytes; ids equal to llama_gqa's tokenizer.json: {same}")
