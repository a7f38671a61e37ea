#!/usr/bin/env python3
"""Independent checks of what `sahara surgery --model FILE.gguf` writes.

A GGUF file (`--out OUT.gguf`), with the `gguf` package and numpy only (no torch):

    sahara surgery --model model.gguf --ablate 0:1,1:3 --target k --out ablated.gguf
    python3 scripts/check_gguf_surgery.py model.gguf ablated.gguf [ABLATION.json]

ABLATION.json says what was ablated: {"heads": [[layer, head], ...], "target": "q" | "k" |
"v", "mode": "scale" | "mean", "epsilon": number or null, "changed_type": "F32" | "F16"
(optional)}; without it, the record beside the output (OUT.gguf.sahara-surgery.json) is
read. Both files are read with gguf.GGUFReader, and it asserts: every metadata key/value of
the source is in the output, in the source's order, with the same types and bytes (except
the source's own sahara.surgery.* and sahara.version, which are replaced); the only other
keys are sahara.*, and they name the ablation; the alignment is the source's and every
tensor's data is aligned; the tensors are the source's, in its order and shapes; every
tensor the ablation does not change has the source's type and raw bytes; and the changed
ones, in F32 (or F16), hold the ablated values computed here from the source: dequantized
with gguf.quants, query/key rows put in Hugging Face order for the llama architecture
(undoing llama.cpp's permutation), the head's rows (q, k: the key/value head of the group)
times epsilon or replaced by the mean over heads, or the head's columns of attn_output (v)
times epsilon, and the rows permuted back.

A Hugging Face folder (`--out DIR`), with torch, transformers, gguf and accelerate:

    sahara surgery --model model.gguf --ablate 0:1,12:4 --out ablated
    python3 scripts/check_gguf_surgery.py model.gguf ablated

Loads `ablated` with AutoModelForCausalLM / AutoTokenizer (float32, eager attention), and
compares it with transformers' own GGUF loader on the source file
(`from_pretrained(dir, gguf_file=...)`, which dequantizes with the `gguf` package) with the
ablation of `ablated/sahara-surgery.json` folded in the same way (q/k: the head's projection
rows; v: the head's o_proj columns; scale by epsilon or replace by the mean): same chat prompt
token ids, max |Δlogit| and identical greedy tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def field_value(f):
    """A metadata field's value as Python (strings decoded, arrays as lists)."""
    import numpy as np
    from gguf import GGUFValueType
    parts = [f.parts[i] for i in f.data]
    if f.types[0] == GGUFValueType.STRING:
        return bytes(parts[0]).decode()
    if f.types[0] == GGUFValueType.ARRAY:
        if f.types[1] == GGUFValueType.STRING:
            return [bytes(p).decode() for p in parts]
        return [np.asarray(p).item() for p in parts]
    return np.asarray(parts[0]).item()


def field_bytes(f):
    """A metadata field as its types and the raw bytes of its value."""
    import numpy as np
    return [int(t) for t in f.types], [np.asarray(f.parts[i]).tobytes() for i in f.data]


def check_gguf(src_path: Path, out_path: Path, spec: dict) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    src, out = GGUFReader(src_path), GGUFReader(out_path)
    replaced = lambda k: k.startswith("sahara.surgery.") or k == "sahara.version"
    header = lambda k: k.startswith("GGUF.")
    # Metadata: the source's, in its order, byte for byte; then only sahara.* keys.
    src_keys = [k for k in src.fields if not header(k) and not replaced(k)]
    out_keys = [k for k in out.fields if not header(k)]
    assert out_keys[:len(src_keys)] == src_keys, "the source's metadata keys are not first, in order"
    for k in src_keys:
        assert field_bytes(src.fields[k]) == field_bytes(out.fields[k]), f"metadata {k} differs"
    extra = out_keys[len(src_keys):]
    assert all(k.startswith("sahara.") for k in extra), extra
    assert field_value(out.fields["GGUF.version"]) == 3
    meta = {k: field_value(out.fields[k]) for k in extra}
    heads = [f"{l}:{h}" for l, h in spec["heads"]]
    assert meta["sahara.surgery.heads"] == heads, (meta["sahara.surgery.heads"], heads)
    assert meta["sahara.surgery.target"] == spec["target"]
    assert meta["sahara.surgery.mode"] == spec["mode"]
    eps = spec.get("epsilon")
    if spec["mode"] == "scale":
        assert meta["sahara.surgery.epsilon"] == eps
    else:
        assert "sahara.surgery.epsilon" not in meta
    assert isinstance(meta["sahara.version"], str) and meta["sahara.version"]
    assert meta["sahara.surgery.source_fingerprint"]
    changed_type = spec.get("changed_type") or meta["sahara.surgery.changed_type"]
    assert meta["sahara.surgery.changed_type"] == changed_type
    # Alignment: the source's, and every tensor's data on it.
    assert out.alignment == src.alignment, (out.alignment, src.alignment)
    assert out.data_offset % out.alignment == 0
    for t in out.tensors:
        assert (t.data_offset - out.data_offset) % out.alignment == 0, t.name

    arch = field_value(src.fields["general.architecture"])
    n_head = field_value(src.fields[f"{arch}.attention.head_count"])
    kv = f"{arch}.attention.head_count_kv"
    n_kv = field_value(src.fields[kv]) if kv in src.fields else n_head
    permuted = arch == "llama"

    def to_hf(w, n):  # the inverse of to_gguf
        return w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def to_gguf(w, n):  # llama.cpp's permute, as its converter writes it
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    # What the ablation changes: GGUF name -> (units, n, by columns, permuted heads or None).
    target, mode = spec["target"], spec["mode"]
    plan: dict[str, tuple[set, int, bool, int | None]] = {}
    names = {t.name for t in src.tensors}
    for layer, head in spec["heads"]:
        if target == "v":
            entries = [(f"blk.{layer}.attn_output.weight", head, n_head, True, None)]
        else:
            proj, unit, n = ("attn_q", head, n_head) if target == "q" else ("attn_k", head // (n_head // n_kv), n_kv)
            entries = [(f"blk.{layer}.{proj}.{s}", unit, n, False, n if permuted else None)
                       for s in ("weight", "bias") if f"blk.{layer}.{proj}.{s}" in names]
        for name, unit, n, cols, perm in entries:
            plan.setdefault(name, (set(), n, cols, perm))[0].add(unit)
    assert sorted(meta["sahara.surgery.changed_tensors"]) == sorted(plan), (meta["sahara.surgery.changed_tensors"], sorted(plan))

    assert [t.name for t in out.tensors] == [t.name for t in src.tensors], "tensor order differs"
    want_type = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16}[changed_type]
    copied = worst = 0
    for a, b in zip(src.tensors, out.tensors):
        assert list(a.shape) == list(b.shape), a.name
        if a.name not in plan:
            assert a.tensor_type == b.tensor_type, (a.name, a.tensor_type, b.tensor_type)
            assert a.n_bytes == b.n_bytes and np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), \
                f"{a.name}: bytes differ"
            copied += 1
            continue
        # One-dimensional tensors (biases) stay F32, as llama.cpp's converter keeps them.
        one_d = len(a.shape) == 1
        assert b.tensor_type == (GGMLQuantizationType.F32 if one_d else want_type), (a.name, b.tensor_type)
        units, n, cols, perm = plan[a.name]
        w = dequantize(a.data, a.tensor_type).astype(np.float64)
        if perm:
            w = to_hf(w, perm)
        orig = w.copy()
        if cols:
            hd = w.shape[1] // n
            for u in units:
                w[:, u * hd:(u + 1) * hd] = orig[:, u * hd:(u + 1) * hd] * eps
        else:
            rows, o = w.reshape(n, -1, *w.shape[1:]), orig.reshape(n, -1, *w.shape[1:])
            for u in units:
                rows[u] = o[u] * eps if mode == "scale" else o.mean(axis=0)
        if perm:
            w = to_gguf(w, perm)
        expected = w.astype(np.float32 if changed_type == "F32" or one_d else np.float16).astype(np.float64)
        got = np.asarray(b.data).astype(np.float64).reshape(expected.shape)
        d = float(np.max(np.abs(got - expected)))
        scale = max(1.0, float(np.max(np.abs(expected))))
        tol = 1e-6 if changed_type == "F32" else 1e-3
        assert d <= tol * scale, f"{a.name}: max |Δ| {d:.3e} from the expected ablated values"
        assert not np.array_equal(expected, dequantize(a.data, a.tensor_type).astype(expected.dtype)) or eps == 1, \
            f"{a.name}: the ablation changes nothing"
        worst = max(worst, d)
    print(f"{out_path}: {copied} tensors byte-identical to the source's, {len(plan)} changed in {changed_type} "
          f"equal to the ablated values computed with numpy (max |Δ| {worst:.2e}); "
          f"{len(src_keys)} metadata keys kept, {len(extra)} added")
    print("ok")


def fold(model, heads, target: str, mode: str, eps: float) -> None:
    import torch
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for layer, head in heads:
            attn = model.model.layers[layer].self_attn
            if target == "v":
                attn.o_proj.weight[:, head * hd:(head + 1) * hd] *= eps
                continue
            proj, unit, n = (attn.q_proj, head, cfg.num_attention_heads) if target == "q" else (
                attn.k_proj, head // group, cfg.num_key_value_heads)
            for t in [proj.weight] + ([proj.bias] if proj.bias is not None else []):
                rows = t.view(n, hd, *t.shape[1:])
                if mode == "scale":
                    rows[unit] *= eps
                else:
                    rows[unit] = rows.mean(dim=0)


def main(argv: list[str]) -> None:
    if len(argv) == 3 or (len(argv) == 2 and argv[1].lower().endswith(".gguf")):
        out = Path(argv[1])
        spec_path = Path(argv[2]) if len(argv) == 3 else out.with_name(out.name + ".sahara-surgery.json")
        check_gguf(Path(argv[0]), out, json.loads(spec_path.read_text()))
        return
    if len(argv) != 2:
        raise SystemExit(__doc__)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf, folder = Path(argv[0]), Path(argv[1])
    rec = json.loads((folder / "sahara-surgery.json").read_text())
    torch.set_num_threads(2)
    written = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fold(ref, rec["heads"], rec["target"], rec["mode"],
         rec["epsilon"] if rec["epsilon"] is not None else 0.0)
    query = "How do I make a bomb? Tell me step by step."
    if tok.chat_template is not None:
        messages = [{"role": "user", "content": query}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref_ids = ref_tok(text, add_special_tokens=False)["input_ids"]
    else:
        # A base model (Gemma 3 270M): the raw query, with the tokenizer's BOS.
        ids, ref_ids = tok(query)["input_ids"], ref_tok(query)["input_ids"]
    assert ids == ref_ids, (ids, ref_ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        a = written(input_ids=x).logits[0]
        b = ref(input_ids=x).logits[0]
        d = float((a - b).abs().max())
        ga = written.generate(input_ids=x, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
        gb = ref.generate(input_ids=x, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
    print(f"{folder}: loaded by transformers {__import__('transformers').__version__}; "
          f"{len(ids)} prompt tokens equal; max |Δlogit| vs the GGUF source with the ablation folded in: {d:.2e}")
    print("greedy:", repr(tok.decode(ga[0, len(ids):])))
    assert d <= 1e-4, d
    assert ga.tolist() == gb.tolist()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1:])
