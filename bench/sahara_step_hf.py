#!/usr/bin/env python3
"""Baseline: one step of the paper's Sahara search (generalized Ships on a data set),
computed the straightforward way with transformers.

N queries (default 20: --data, or the 5 built-in queries cycled and numbered), batch size 1:
  * clean: the final hidden state after the final norm at the last prompt position of each
    query (`output_hidden_states=True`, last entry), stacked to an N x d matrix A0;
  * for every layer l and head h: the q_proj scaling hook of ships_hf.py (epsilon 1e-5),
    the N x d matrix A recomputed (one forward per query);
  * score(l, h) = sum over the singular values s_i of U0[:, :r]^T U[:, :r] of
    degrees(arccos(clamp(s_i, -1, 1))), with U0, U the left singular vectors of thin SVDs of
    A0, A in float64 (r = 1 by default).
The forwards run the decoder only (`model.model`, no unembedding) without key/value cache.
Whether hidden_states[-1] is already normed is checked in the warm-up (against
`last_hidden_state`, which LlamaModel returns after `model.model.norm`); if it is not,
`model.model.norm` is applied. Prints one JSON line:

  {"name": "sahara_step_hf", "seconds": ..., "forwards": ..., "best_head": [l, h],
   "best_score": degrees, ...}

--out FILE.json writes all scores [layer][head].
"""

from __future__ import annotations

import json
import math

import torch

import _hf_common as C


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--n", type=int, default=20, help="number of queries (default 20; with --data: first n, 0 = all)")
    p.add_argument("--rank", type=int, default=1, help="r, number of leading singular vectors compared")
    p.add_argument("--epsilon", type=float, default=1e-5)
    p.add_argument("--out", help="write all scores [layer][head] to this JSON file")
    a = p.parse_args()
    C.setup(a.threads, a)
    queries = C.load_queries(a.data, a.n or None, number_cycled=True)
    with torch.no_grad():
        model, tokenizer = C.load_model(a.model)
        n_layers, n_heads, head_dim = C.geometry(model)
        encoded = [C.encode(tokenizer, C.prompt(a.template, q)) for q in queries]
        decoder = model.model

        # Warm-up, and the check of what hidden_states[-1] is.
        out = decoder(input_ids=encoded[0], use_cache=False, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == n_layers + 1, len(hs)
        post_norm = torch.equal(hs[-1], out.last_hidden_state)
        if not post_norm:
            assert torch.allclose(decoder.norm(hs[-1]), out.last_hidden_state, atol=1e-5, rtol=1e-5)

        def final_states() -> torch.Tensor:
            rows = []
            for ids in encoded:
                h = decoder(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states[-1][0, -1]
                if not post_norm:
                    h = decoder.norm(h)
                rows.append(h)
            return torch.stack(rows)  # N x d, float32

        def left_vectors(m: torch.Tensor) -> torch.Tensor:
            u, _, _ = torch.linalg.svd(m.double(), full_matrices=False)
            return u[:, : a.rank]

        t0 = C.now()
        u0 = left_vectors(final_states())
        forwards = len(encoded)
        scores: list[list[float]] = []
        for layer in range(n_layers):
            row = []
            for head in range(n_heads):
                handle = C.q_scale_hook(model, layer, head, head_dim, a.epsilon)
                try:
                    u = left_vectors(final_states())
                finally:
                    handle.remove()
                forwards += len(encoded)
                s = torch.linalg.svdvals(u0.T @ u).clamp(-1.0, 1.0)
                row.append(float(torch.rad2deg(torch.arccos(s)).sum()))
            scores.append(row)
        seconds = C.now() - t0

    best = max(((l, h) for l in range(n_layers) for h in range(n_heads)), key=lambda lh: scores[lh[0]][lh[1]])
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(
                {"name": "sahara_step_hf", "rank": a.rank, "epsilon": a.epsilon, "queries": queries, "scores": scores},
                f,
            )
            f.write("\n")
    C.emit(
        {
            "name": "sahara_step_hf",
            "seconds": seconds,
            "threads": a.threads,
            "queries": len(queries),
            "prompt_tokens": [int(ids.shape[1]) for ids in encoded],
            "layers": n_layers,
            "heads": n_heads,
            "rank": a.rank,
            "forwards": forwards,
            "hidden_states_last_is_post_norm": post_norm,
            "best_head": list(best),
            "best_score": scores[best[0]][best[1]],
        }
    )


if __name__ == "__main__":
    main()
