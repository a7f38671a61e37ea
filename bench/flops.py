#!/usr/bin/env python3
"""FLOPs of the work a Ships computation or a Sahara step actually needs (see bench/README.md,
"FLOP rate"), and the machine's float32 matrix-product peak.

    python3 bench/flops.py ships --model DIR --data FILE [--template T] [--seconds S ...]
    python3 bench/flops.py step  --model DIR --data FILE [--template T] [--seconds S ...]
    python3 bench/flops.py peak  [--threads N]

ships/step print one JSON line {"flops": F, "naive_flops": N, "prompt_tokens": [...],
"gflops_per_second": {label: F/S/1e9}}; N is the work of the straightforward computation
(bench/ships_hf.py: 1 + L*H full forwards per query; bench/sahara_step_hf.py: the same
without the unembedding), for comparison. A step's needed work is Ships' without the
unembedding (it reads the final hidden state). peak prints {"gflops_per_second": P}: the best
of a few float32 4096 x 4096 x 4096 products in torch (its BLAS) on N threads, the rate no
float32 implementation on this machine is expected to beat.

Counting (multiply-add = 2 FLOPs; norms, RoPE, softmax, SiLU and the embedding lookup are
left out, they are O(d) per token):

  per token of a full decoder layer  2*P      P = d*H*hd + 2*d*Hkv*hd + H*hd*d + 3*d*I
  its K/V projections alone          2*Pkv    Pkv = 2*d*Hkv*hd
  causal attention, T positions      2*H*hd*T*(T+1)   (QK^T and AV, position t sees t+1 keys)
  attention of the last position     4*H*hd*T
  unembedding, one position          2*d*V

A query of T tokens costs
  clean pass:  layers 0..L-2 at T positions; layer L-1 with K/V at T positions and the rest
               (Q, attention, O, MLP) at the last position only; unembedding at 1 position;
  head (l, h): layers 0..l-1 are the clean pass's (not recomputed); layers l..L-2 at T
               positions; layer L-1 at the last position, plus its K/V projections at T
               positions when l < L-1 (its input changed everywhere); unembedding at 1.
The ablated layer l is counted whole, although only head h's attention and everything after
it change (a tighter lower bound would subtract its Q/K/V projections and the other heads'
attention); so this is the work of a recompute-from-layer-l implementation, not a bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def geometry(config: dict) -> dict:
    d = config["hidden_size"]
    h = config["num_attention_heads"]
    hkv = config.get("num_key_value_heads") or h
    hd = config.get("head_dim") or d // h
    return {
        "L": config["num_hidden_layers"],
        "H": h,
        "Hkv": hkv,
        "hd": hd,
        "d": d,
        "I": config["intermediate_size"],
        "V": config["vocab_size"],
    }


def ships_query_flops(g: dict, T: int, unembedding: bool = True) -> int:
    """FLOPs needed for the Ships scores of all L*H heads of one query of T tokens (without
    `unembedding`: the final hidden states of a Sahara step)."""
    L, H, Hkv, hd, d, I, V = (g[k] for k in ("L", "H", "Hkv", "hd", "d", "I", "V"))
    V = V if unembedding else 0
    P = d * H * hd + 2 * d * Hkv * hd + H * hd * d + 3 * d * I
    Pkv = 2 * d * Hkv * hd
    full_layer = 2 * P * T + 2 * H * hd * T * (T + 1)  # one layer, all T positions
    last_pos = 2 * P + 4 * H * hd * T  # one layer, last position only (its own K/V included)
    kv_rest = 2 * Pkv * (T - 1)  # K/V projections of the other T-1 positions
    unembed = 2 * d * V

    clean = (L - 1) * full_layer + last_pos + kv_rest + unembed
    ablated = 0
    for l in range(L):
        per_head = (L - 1 - l) * full_layer + last_pos + (kv_rest if l < L - 1 else 0) + unembed
        ablated += H * per_head
    return clean + ablated


def naive_query_flops(g: dict, T: int, unembedding: bool = True) -> int:
    """FLOPs of the straightforward computation (bench/ships_hf.py): 1 + L*H full forwards of T
    positions, unembedding at the last position only (logits_to_keep=1), or none."""
    L, H, Hkv, hd, d, I, V = (g[k] for k in ("L", "H", "Hkv", "hd", "d", "I", "V"))
    V = V if unembedding else 0
    P = d * H * hd + 2 * d * Hkv * hd + H * hd * d + 3 * d * I
    forward = L * (2 * P * T + 2 * H * hd * T * (T + 1)) + 2 * d * V
    return (1 + L * H) * forward


def naive_flops(config: dict, prompt_tokens: list[int], unembedding: bool = True) -> int:
    g = geometry(config)
    return sum(naive_query_flops(g, T, unembedding) for T in prompt_tokens)


def ships_flops(config: dict, prompt_tokens: list[int], unembedding: bool = True) -> int:
    g = geometry(config)
    return sum(ships_query_flops(g, T, unembedding) for T in prompt_tokens)


def peak_gflops(threads: int) -> float:
    """Best rate of a few float32 4096^3 products in torch on `threads` threads."""
    import time

    import torch

    torch.set_num_threads(threads)
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def prompt_lengths(model_dir: str, queries: list[str]) -> list[int]:
    """Raw encodings (with the post-processor's special tokens), as `tokenizer(text)`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    return [len(tok.encode(q, add_special_tokens=True).ids) for q in queries]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for what, text in (("ships", "Ships"), ("step", "one Sahara step")):
        s = sub.add_parser(what, help=f"FLOPs needed for {text} over the queries of --data")
        s.add_argument("--model", required=True)
        s.add_argument("--data", required=True)
        s.add_argument("--template", default="{query}", help="prompt format, as sahara --template reads it")
        s.add_argument("--seconds", action="append", default=[], metavar="LABEL=S", help="report FLOPs/S (repeatable)")
    s = sub.add_parser("peak", help="the float32 matrix-product peak of this machine (torch)")
    s.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    if a.what == "peak":
        json.dump({"gflops_per_second": peak_gflops(a.threads), "threads": a.threads}, sys.stdout)
        sys.stdout.write("\n")
        return
    with open(os.path.join(a.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(a.data, encoding="utf-8") as f:
        queries = [line.rstrip("\r\n") for line in f if line.strip()]
    template = a.template.replace("\\n", "\n").replace("\\t", "\t")
    lengths = prompt_lengths(a.model, [template.replace("{query}", q) for q in queries])
    unembedding = a.what == "ships"
    flops = ships_flops(config, lengths, unembedding)
    rates = {}
    for item in a.seconds:
        label, _, sec = item.rpartition("=")
        try:
            rates[label or "rate"] = flops / float(sec) / 1e9
        except (ValueError, ZeroDivisionError):
            rates[label or "rate"] = None
    json.dump(
        {
            "flops": flops,
            "naive_flops": naive_flops(config, lengths, unembedding),
            "prompt_tokens": lengths,
            "gflops_per_second": rates,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
