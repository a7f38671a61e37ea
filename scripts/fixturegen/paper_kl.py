"""The paper's Ships KL on a case where an ablation pushes tokens below 1e-12.

``fixtures/paper_kl/case.json`` holds two float32 logit vectors and, computed here with
torch in float32, the KL divergence as the paper's code computes it,
``sum((p + 1e-12) * log((p + 1e-12) / (q + 1e-12)))`` over softmax probabilities, and the
exact KL in float64. ``sahara ships --kl paper`` must reproduce the first.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from .common import ROOT


def paper_kl_fixture() -> None:
    rng = np.random.default_rng(20250122)
    v = 64
    base = (rng.standard_normal(v) * 3.0).astype(np.float32)
    ablated = base.copy()
    # The ablation drives the base model's likeliest tokens far below 1e-12.
    top = np.argsort(-base)[:3]
    ablated[top] -= 60.0
    ablated += (rng.standard_normal(v) * 0.1).astype(np.float32)
    p = torch.softmax(torch.from_numpy(base), -1)
    q = torch.softmax(torch.from_numpy(ablated), -1)
    paper = torch.sum((p + 1e-12) * torch.log((p + 1e-12) / (q + 1e-12))).item()
    lp = torch.log_softmax(torch.from_numpy(base).double(), -1)
    lq = torch.log_softmax(torch.from_numpy(ablated).double(), -1)
    exact = torch.sum(lp.exp() * (lp - lq)).item()
    out = ROOT / "fixtures" / "paper_kl"
    out.mkdir(parents=True, exist_ok=True)
    case = {
        "base_logits": [float(x) for x in base],
        "ablated_logits": [float(x) for x in ablated],
        "paper_kl": paper,
        "exact_kl": exact,
        "torch": torch.__version__,
    }
    (out / "case.json").write_text(json.dumps(case, indent=1) + "\n")
    print(f"paper_kl: paper {paper:.6f}, exact {exact:.6f}")
