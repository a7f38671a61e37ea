#!/usr/bin/env python3
"""Baseline: batched forward pass with transformers (logits at every position).

B prompts of exactly T tokens each (the raw encodings of the queries concatenated and
repeated, cut at T token ids, each row starting at a different offset; row 0 starts with
the BOS of the first query), no padding, no key/value cache. One warm-up forward, then
--iters timed forwards. Prints one JSON line:

  {"name": "forward_hf", "seconds": total timed seconds, "seconds_per_forward": ...,
   "tokens_per_second": B*T/seconds_per_forward, "batch": B, "seq": T, "iters": ..., ...}
"""

from __future__ import annotations

import torch

import _hf_common as C


def build_batch(tokenizer, queries: list[str], batch: int, seq: int) -> torch.Tensor:
    stream: list[int] = []
    for q in queries:
        stream += tokenizer(q)["input_ids"]
    need = batch * seq + seq
    while len(stream) < need:
        stream = stream + stream
    stride = max(1, (len(stream) - seq) // batch)
    rows = [stream[b * stride : b * stride + seq] for b in range(batch)]
    assert all(len(r) == seq for r in rows)
    return torch.tensor(rows, dtype=torch.long)


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--n", type=int, default=None, help="queries of the built-in list / --data used as text")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    C.setup(a.threads, a)
    with torch.no_grad():
        model, tokenizer = C.load_model(a.model)
        ids = build_batch(tokenizer, C.load_queries(a.data, a.n), a.batch, a.seq)

        def fwd():
            out = model(input_ids=ids, use_cache=False)
            return out.logits

        logits = fwd()  # warm-up
        assert logits.shape == (a.batch, a.seq, model.config.vocab_size), logits.shape
        t0 = C.now()
        for _ in range(a.iters):
            logits = fwd()
        seconds = C.now() - t0
    spf = seconds / a.iters
    C.emit(
        {
            "name": "forward_hf",
            "seconds": seconds,
            "seconds_per_forward": spf,
            "tokens_per_second": a.batch * a.seq / spf,
            "threads": a.threads,
            "batch": a.batch,
            "seq": a.seq,
            "iters": a.iters,
            "logits_checksum": float(logits[:, -1].double().sum()),
        }
    )


if __name__ == "__main__":
    main()
