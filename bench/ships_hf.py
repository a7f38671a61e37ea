#!/usr/bin/env python3
"""Baseline: the paper's Ships scores, computed the straightforward way with transformers.

For each query (raw encoding, batch size 1):
  * one clean forward -> next-token distribution p at the last prompt position;
  * for every layer l and head h: a forward hook on model.model.layers[l].self_attn.q_proj
    multiplies the output columns h*head_dim:(h+1)*head_dim by epsilon (1e-5), one full
    forward at batch size 1, score = KL(p || p_ablated) at the last position
    (log_softmax in float32, the sum in float64).
Forwards compute logits at every position, as the paper's code does (`--logits-to-keep 1`
restricts the unembedding to the last position, a stronger baseline), with no key/value cache. One warm-up (a clean forward of the first
query) precedes the timing. Prints one JSON line:

  {"name": "ships_hf", "seconds": total, "seconds_per_query": ..., "forwards": count,
   "queries": n, "layers": L, "heads": H, "scores_first": [[KL of layer 0 head 0, ...], ...]}

--out FILE.json writes {"scores": [query][layer][head], "queries": [...], ...}.
"""

from __future__ import annotations

import json

import torch

import _hf_common as C


LOGITS_TO_KEEP = 0  # 0: every position (the paper's code)


def last_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=LOGITS_TO_KEEP).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)


def kl(lp: torch.Tensor, lq: torch.Tensor) -> float:
    """KL(p || q) from float32 log-probabilities, summed in float64."""
    lp64, lq64 = lp.double(), lq.double()
    return float((lp64.exp() * (lp64 - lq64)).sum())


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--n", type=int, default=None, help="number of queries (default: all of --data, or the 5 built-in)")
    p.add_argument("--epsilon", type=float, default=1e-5)
    p.add_argument("--logits-to-keep", type=int, default=0,
                   help="0 (default): logits at every position, as the paper's code; 1: last position only")
    p.add_argument("--out", help="write all scores [query][layer][head] to this JSON file")
    p.add_argument("--layers", type=int, default=None,
                   help="score the heads of the first N layers only (a subset on a large model); "
                        "the record then gives the time extrapolated to every layer, and says so")
    a = p.parse_args()
    global LOGITS_TO_KEEP
    LOGITS_TO_KEEP = a.logits_to_keep
    C.setup(a.threads, a)
    queries = C.load_queries(a.data, a.n)
    with torch.no_grad():
        model, tokenizer = C.load_model(a.model)
        n_layers, n_heads, head_dim = C.geometry(model)
        scored_layers = min(a.layers or n_layers, n_layers)
        encoded = [C.encode(tokenizer, C.prompt(a.template, q)) for q in queries]

        last_logprobs(model, encoded[0])  # warm-up

        scores: list[list[list[float]]] = []
        forwards = 0
        t0 = C.now()
        for ids in encoded:
            lp = last_logprobs(model, ids)
            forwards += 1
            per_layer = []
            for layer in range(scored_layers):
                row = []
                for head in range(n_heads):
                    handle = C.q_scale_hook(model, layer, head, head_dim, a.epsilon)
                    try:
                        lq = last_logprobs(model, ids)
                    finally:
                        handle.remove()
                    forwards += 1
                    row.append(kl(lp, lq))
                per_layer.append(row)
            scores.append(per_layer)
        seconds = C.now() - t0

    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "name": "ships_hf",
                    "epsilon": a.epsilon,
                    "queries": queries,
                    "prompt_tokens": [int(ids.shape[1]) for ids in encoded],
                    "scores": scores,
                },
                f,
            )
            f.write("\n")
    C.emit(
        {
            "name": "ships_hf",
            "seconds": seconds,
            "seconds_per_query": seconds / len(queries),
            "threads": a.threads,
            "queries": len(queries),
            "prompt_tokens": [int(ids.shape[1]) for ids in encoded],
            "layers": n_layers,
            "scored_layers": scored_layers,
            # Every head's forward costs the same (the whole model at batch 1), so the time of
            # all L*H heads is this subset's scaled by L / scored_layers.
            "extrapolated": scored_layers < n_layers,
            "seconds_per_query_all_heads": seconds / len(queries) * n_layers / scored_layers,
            "heads": n_heads,
            "forwards": forwards,
            "epsilon": a.epsilon,
            "scores_first": scores[0],
        }
    )


if __name__ == "__main__":
    main()
