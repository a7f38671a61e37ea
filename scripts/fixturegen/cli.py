"""``main(argv)``: the command line of ``scripts/make_fixtures.py``."""

from __future__ import annotations

import sys

from .common import ROOT

# Each target imports what it needs, so that `judges` (plain Python) needs no transformers,
# safetensors, tokenizers or numpy. The package's __init__ still imports torch.

def main(argv: list[str]) -> None:
    if argv[:1] == ["judges"]:
        from .judges import judges_fixture
        judges_fixture(argv[1:])
        return
    from .gguf_tiny import gguf_tiny_fixture
    from .paper_kl import paper_kl_fixture
    from .smollm2 import smollm2_fixture
    from .surgery import surgery_fixture
    if argv == ["surgery"]:
        surgery_fixture()
        return
    if argv[:1] == ["smollm2"]:
        smollm2_fixture(argv[1:])
        return
    if argv[:1] == ["gemma3_270m"]:
        from .gemma3_270m import gemma3_fixture
        gemma3_fixture(argv[1:])
        return
    if argv == ["gguf_tiny"]:
        gguf_tiny_fixture()
        return
    if argv == ["gguf_qwen3moe"]:
        from .gguf_moe import gguf_qwen3moe_fixture
        gguf_qwen3moe_fixture()
        return
    if argv == ["gguf_mixtral"]:
        from .gguf_moe import gguf_mixtral_fixture
        gguf_mixtral_fixture()
        return
    if argv == ["paper_kl"]:
        paper_kl_fixture()
        return
    if argv == ["judge_models"]:
        from .judge_models import judge_models_fixture
        judge_models_fixture()
        return
    if argv == ["lora"]:
        from .lora import lora_fixture
        lora_fixture()
        return
    if argv[:1] == ["organism"]:
        # The built-in organism is trained by `sahara organism train`, not here; this checks
        # that transformers loads the committed folder and answers as sahara does.
        import subprocess
        script = ROOT / "scripts" / "check_organism_transformers.py"
        raise SystemExit(subprocess.call([sys.executable, str(script), *argv[1:]]))
    import safetensors
    import tokenizers
    import torch
    import transformers

    from .build import build
    from .specs import SPECS
    names = argv or list(SPECS)
    for n in names:
        if n not in SPECS:
            raise SystemExit(f"unknown fixture {n!r}; choose from {list(SPECS)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}")
    for n in names:
        build(n)
    if not argv:
        surgery_fixture()
        paper_kl_fixture()
