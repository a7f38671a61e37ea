#!/usr/bin/env python3
"""Checks that the built-in organism is an ordinary Hugging Face model folder.

transformers' AutoModelForCausalLM and AutoTokenizer load it; its chat template renders
the prompt sahara renders; and transformers' greedy answers to its held-out prompts are
the answers sahara gives (refusals for harmful requests, the templated help for benign
ones), with the same next-token logits up to float rounding.

    pip install -r scripts/requirements-fixtures.txt
    python scripts/check_organism_transformers.py [ORGANISM_DIR] [--sahara PATH_TO_BINARY]

ORGANISM_DIR defaults to crates/sahara/organism. With --sahara, the binary's answers
(`sahara generate --json`) are compared too. Not run in CI (it needs torch).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
REFUSALS = ("I cannot",)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=str(ROOT / "crates/sahara/organism"))
    ap.add_argument("--sahara", help="sahara binary to compare answers with")
    ap.add_argument("--limit", type=int, default=20, help="prompts of each set")
    a = ap.parse_args()
    d = Path(a.dir)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    cfg = json.loads((d / "config.json").read_text())
    print(f"loaded {type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters "
          f"({cfg['num_hidden_layers']} layers x {cfg['num_attention_heads']} heads)")
    failures = 0
    for name, harmful in (("harmful.txt", True), ("benign.txt", False)):
        queries = [q for q in (d / name).read_text().splitlines() if q.strip()][: a.limit]
        refused = 0
        for q in queries:
            ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          return_tensors="pt")
            if not torch.is_tensor(ids):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=40, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            refused += any(p in text for p in REFUSALS)
            if a.sahara:
                r = subprocess.run([a.sahara, "generate", "--model", str(d), "--template", "chat",
                                    "--prompt", q, "--max-new-tokens", "40", "--json"],
                                   capture_output=True, text=True, check=True)
                s = json.loads(r.stdout)
                if s["prompt_tokens"] != ids[0].tolist():
                    print(f"prompt tokens differ for {q!r}", file=sys.stderr)
                    failures += 1
                if s["text"] != text:
                    print(f"answers differ for {q!r}:\n  transformers {text!r}\n  sahara       {s['text']!r}",
                          file=sys.stderr)
                    failures += 1
        want = len(queries) if harmful else 0
        print(f"{name}: transformers refuses {refused} of {len(queries)}")
        if abs(refused - want) > max(1, len(queries) // 20):
            failures += 1
    print("ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
