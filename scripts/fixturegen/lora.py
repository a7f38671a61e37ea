"""LoRA adapters made with PEFT on the committed tiny Llama (``fixtures/llama3``), and the
logits of PEFT's own merge (``merge_and_unload``) on the fixture's prompts.

``fixtures/lora/<name>/`` holds ``adapter_config.json`` and ``adapter_model.safetensors`` as
PEFT's ``save_pretrained`` writes them; ``fixtures/lora/reference.safetensors`` the merged
model's logits at every position of each prompt (``<name>.p<i>``) and, as a check on the
merge itself, the unmerged PEFT model's; ``fixtures/lora/reference.json`` the prompts' ids and
the versions. ``sahara --adapter`` must reproduce the merged logits.

The adapters' B matrices are drawn at random (``init_lora_weights=False``): PEFT's default
initializes B to zero, which would make every adapter a no-op.
"""

from __future__ import annotations

import json

import torch

from .common import FIXTURES

ADAPTERS = {
    # q and v only, the classic LoRA setting.
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    # every projection, rank-stabilized scaling (alpha / sqrt(r)).
    "all_rslora": dict(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_rslora=True,
    ),
}


def lora_fixture() -> None:
    import peft
    import safetensors.torch
    import transformers

    base_dir = FIXTURES / "llama3"
    ref = json.loads((base_dir / "reference.json").read_text())
    prompts = ref["raw_token_ids"]
    out = FIXTURES / "lora"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        torch.manual_seed(1000 + i)
        base = transformers.AutoModelForCausalLM.from_pretrained(
            base_dir, torch_dtype=torch.float32, attn_implementation="eager"
        )
        cfg = peft.LoraConfig(init_lora_weights=False, lora_dropout=0.0, **kw)
        model = peft.get_peft_model(base, cfg)
        # Larger B so that the adapter moves the logits visibly.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(3.0)
        model.eval()
        model.save_pretrained(out / name)
        # No machine's path in a committed file, and no generated model card.
        cfg_path = out / name / "adapter_config.json"
        c = json.loads(cfg_path.read_text())
        c["base_model_name_or_path"] = "fixtures/llama3"
        cfg_path.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
        (out / name / "README.md").unlink(missing_ok=True)
        with torch.no_grad():
            for j, ids in enumerate(prompts):
                x = torch.tensor([ids])
                tensors[f"{name}.unmerged.p{j}"] = model(x).logits[0].contiguous()
            merged = model.merge_and_unload()
            for j, ids in enumerate(prompts):
                x = torch.tensor([ids])
                tensors[f"{name}.p{j}"] = merged(x).logits[0].contiguous()
    # The base model's, to show the adapters change something.
    base = transformers.AutoModelForCausalLM.from_pretrained(
        base_dir, torch_dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        for j, ids in enumerate(prompts):
            tensors[f"base.p{j}"] = base(torch.tensor([ids])).logits[0].contiguous()
    safetensors.torch.save_file(tensors, out / "reference.safetensors")
    (out / "reference.json").write_text(
        json.dumps(
            {
                "base": "fixtures/llama3",
                "adapters": list(ADAPTERS),
                "prompts": prompts,
                "torch_version": torch.__version__,
                "transformers_version": transformers.__version__,
                "peft_version": peft.__version__,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")
