#!/usr/bin/env python3
"""Baseline: greedy generation with transformers' `model.generate`.

N prompts (default 20: --data, or the 5 built-in queries cycled and numbered), raw
encodings, in batches of --batch rows (left padding; pad token = EOS when the tokenizer has
none), `do_sample=False`, `max_new_tokens = min_new_tokens = --new-tokens` so that every row
produces exactly --new-tokens tokens (EOS is suppressed until then), key/value cache on
(generate's default). One warm-up generate (the first batch, 4 new tokens) precedes the
timing. Prints one JSON line:

  {"name": "generate_hf", "seconds": ..., "tokens_per_second": N*new_tokens/seconds,
   "generated_tokens": ..., "batch": B, ...}
"""

from __future__ import annotations

import torch

import _hf_common as C


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--n", type=int, default=20, help="number of prompts (default 20)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    C.setup(a.threads, a)
    prompts = C.load_queries(a.data, a.n, number_cycled=True)
    with torch.no_grad():
        model, tokenizer = C.load_model(a.model)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batches = [prompts[i : i + a.batch] for i in range(0, len(prompts), a.batch)]
        encoded = [tokenizer(b, return_tensors="pt", padding=True).to(C.DEVICE) for b in batches]

        def gen(enc, new_tokens: int) -> torch.Tensor:
            return model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )

        gen(encoded[0], min(4, a.new_tokens))  # warm-up
        generated = 0
        t0 = C.now()
        for enc in encoded:
            out = gen(enc, a.new_tokens)
            new = out.shape[1] - enc["input_ids"].shape[1]
            assert new == a.new_tokens, (new, a.new_tokens)
            generated += out.shape[0] * new
        seconds = C.now() - t0
    C.emit(
        {
            "name": "generate_hf",
            "seconds": seconds,
            "tokens_per_second": generated / seconds,
            "threads": a.threads,
            "prompts": len(prompts),
            "batch": a.batch,
            "new_tokens": a.new_tokens,
            "generated_tokens": generated,
        }
    )


if __name__ == "__main__":
    main()
