"""Building one fixture folder, and verifying it from the saved folder only."""

from __future__ import annotations

import copy
import json
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from .ablation import ABLATION_POINTS, ablation_kind, ablation_sets, register_ablation
from .checks import (
    check_gemma,
    check_gemma2,
    check_gemma3,
    check_moe,
    check_llama3_rope,
    check_mistral_window,
    check_phi3,
    check_qwen2_no_window,
    check_qwen3,
    check_uniform_attention,
)
from .common import CHAT_CASES, EPSILON, FIXTURES, MAX_FOLDER_BYTES, MAX_NEW_TOKENS, MIN_TOP2_GAP, PROMPTS
from .modelling import forward_logits, greedy, reinit_
from .specs import SPECS, to_hub_style

NEW_FAMILIES = ("gemma", "gemma2", "gemma3", "olmo2", "phi3", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


# ---------------------------------------------------------------------------
# Build one fixture
# ---------------------------------------------------------------------------
def build(name: str) -> None:
    print(f"=== {name}", flush=True)
    spec = SPECS[name]()
    tok = spec["tok"]
    vocab_len = len(tok)

    raw_ids = [tok(p)["input_ids"] for p in PROMPTS]
    print("  vocab", vocab_len, "prompt lengths", [len(r) for r in raw_ids])

    chat = []
    for system, user in CHAT_CASES:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user}
        ]
        try:
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - record the template's own error
            chat.append({"system": system, "user": user, "error": str(e)})
            continue
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        chat.append({"system": system, "user": user, "rendered": rendered, "token_ids": ids})

    seed = spec["seed"]
    for attempt in range(50):
        torch.manual_seed(seed)
        config = spec["config"](vocab_len)
        config._attn_implementation = "eager"
        model = spec["cls"](config).eval()
        reinit_(model, seed, spec["std"], spec.get("norm_center", 1.0))
        model.generation_config = copy.deepcopy(spec["gen"])
        eos_ids = spec["gen"].eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        pad = spec.get("pad", spec["gen"].pad_token_id)

        logits = [forward_logits(model, ids) for ids in raw_ids]
        std = min(float(l.std()) for l in logits)
        greedy_records, gaps = [], []
        for i, ids in enumerate(raw_ids):
            new, gap = greedy(model, ids, eos_ids, pad)
            greedy_records.append({"prompt_index": i, "max_new_tokens": MAX_NEW_TOKENS, "new_tokens": new})
            gaps.append(gap)
        if std >= 1.0 and min(gaps) >= spec.get("min_gap", MIN_TOP2_GAP):
            break
        print(f"  seed {seed}: logit std {std:.3f}, min top-2 gap {min(gaps):.2e}; re-seeding")
        seed += 1
    else:
        raise RuntimeError("no acceptable seed")
    print(f"  seed {seed}: min logit std {std:.3f}, min greedy top-2 gap {min(gaps):.4f}")
    print("  greedy", [g["new_tokens"] for g in greedy_records])

    tensors: dict[str, torch.Tensor] = {}
    for i, ids in enumerate(raw_ids):
        x = torch.tensor([ids])
        with torch.no_grad():
            full = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True, use_cache=False)
            base = model.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state
        hidden = base[0]
        torch.testing.assert_close(full.logits[0], logits[i], rtol=0, atol=0)
        # Is hidden_states[-1] the post-norm state?  (It is in transformers 5.)
        post_norm = torch.equal(full.hidden_states[-1][0], hidden)
        if i == 0:
            print(f"  hidden_states[-1] == final-norm output: {post_norm};"
                  f" len(hidden_states) = {len(full.hidden_states)}")
        assert post_norm, "hidden_states[-1] is not the post-norm state"
        from_hidden = model.lm_head(hidden)
        cap = getattr(config, "final_logit_softcapping", None)
        if cap is not None:  # Gemma-2: cap * tanh(logits / cap) after lm_head
            from_hidden = torch.tanh(from_hidden / cap) * cap
        torch.testing.assert_close(from_hidden, logits[i], rtol=1e-5, atol=1e-5)
        tensors[f"logits.{i}"] = logits[i].contiguous()
        tensors[f"hidden.{i}"] = hidden.float().contiguous()

    # Per-model structural checks.
    if name == "llama3":
        check_llama3_rope(config)
    if name == "mistral":
        check_mistral_window(spec, model, raw_ids, logits, vocab_len)
    if name == "qwen2":
        check_qwen2_no_window(spec, model, raw_ids, logits, vocab_len)
    family_extra: dict = {}
    if name in NEW_FAMILIES:
        family_extra["ablation_point"] = ABLATION_POINTS[ablation_kind(model)]
    if name == "gemma":
        family_extra.update(check_gemma(spec, model, raw_ids, logits, vocab_len))
    if name == "gemma2":
        family_extra.update(check_gemma2(spec, model, raw_ids, logits, vocab_len))
    if name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"):
        family_extra.update(check_moe(spec, model, raw_ids, logits, vocab_len))
    if name == "gemma3":
        family_extra.update(check_gemma3(spec, model, raw_ids, logits, vocab_len))
    if name == "phi3":
        family_extra.update(check_phi3(spec, model, raw_ids, logits, vocab_len, greedy_records))
    if name == "qwen3":
        family_extra.update(check_qwen3(spec, model, raw_ids, logits, vocab_len))

    ablations = ablation_sets(config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads)
    for abl in ablations:
        handles = register_ablation(model, abl, EPSILON)
        try:
            for i, ids in enumerate(raw_ids):
                out = forward_logits(model, ids)
                tensors[f"ablated.{abl['name']}.{i}"] = out.contiguous()
        finally:
            for h in handles:
                h.remove()
        diff = max(float((tensors[f"ablated.{abl['name']}.{i}"] - logits[i]).abs().max()) for i in range(len(raw_ids)))
        noop = abl["target"] == "k" and abl["op"] == "mean" and config.num_key_value_heads == 1
        print(f"  ablation {abl['name']:<26} max |Δlogit| = {diff:.4f}{'  (no-op: 1 kv head)' if noop else ''}")
        if noop:
            assert diff < 1e-4, diff
        else:
            assert diff > 1e-2, f"ablation {abl['name']} has no effect"
    # hooks removed: unmodified logits again
    torch.testing.assert_close(forward_logits(model, raw_ids[0]), logits[0], rtol=0, atol=0)
    if name in NEW_FAMILIES:
        check_uniform_attention(model, raw_ids)

    # ---- write the folder
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    # chat_template inside tokenizer_config.json, as in the hub repositories
    # (transformers 5 would otherwise write a separate chat_template.jinja).
    tok.save_pretrained(out_dir, save_jinja_files=False)
    if spec["hub_style"]:
        cfg_path = out_dir / "config.json"
        cfg = to_hub_style(json.loads(cfg_path.read_text()), name)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    # drop anything we did not ask for (e.g. special_tokens_map.json / chat_template.jinja
    # would be fine, but keep the folder minimal and predictable)
    if name == "llama3":
        # transformers 5 writes its internal class name; the hub repository (and
        # transformers 4.x) use "PreTrainedTokenizerFast", an alias of the same class.
        tc_path = out_dir / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text())
        assert tc["tokenizer_class"] == "TokenizersBackend", tc["tokenizer_class"]
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    keep = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    extra = sorted(p.name for p in out_dir.iterdir() if p.name not in keep)
    assert not extra, f"unexpected files written by save_pretrained: {extra}"
    assert json.loads((out_dir / "tokenizer_config.json").read_text()).get("chat_template") == tok.chat_template

    reference = {
        "name": name,
        "architecture": type(model).__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompts": PROMPTS,
        "raw_token_ids": raw_ids,
        "chat": chat,
        "greedy": greedy_records,
        "epsilon": EPSILON,
        "ablations": ablations,
        **family_extra,
    }
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=2, ensure_ascii=False) + "\n")
    save_file(tensors, str(out_dir / "reference.safetensors"), metadata={"format": "pt"})

    verify(name)


# ---------------------------------------------------------------------------
# Verification from the saved folder only
# ---------------------------------------------------------------------------
def verify(name: str) -> None:
    d = FIXTURES / name
    ref = json.loads((d / "reference.json").read_text())
    tensors = load_file(str(d / "reference.safetensors"))
    tok = AutoTokenizer.from_pretrained(d)
    raw_tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    assert type(model).__name__ == ref["architecture"]

    for i, (text, ids) in enumerate(zip(ref["prompts"], ref["raw_token_ids"])):
        assert tok(text)["input_ids"] == ids, (name, i)
        assert raw_tok.encode(text).ids == ids, ("tokenizers-lib mismatch", name, i, raw_tok.encode(text).ids, ids)
        got = forward_logits(model, ids)
        torch.testing.assert_close(got, tensors[f"logits.{i}"], rtol=0, atol=0)
        with torch.no_grad():
            h = model.model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0]
        torch.testing.assert_close(h, tensors[f"hidden.{i}"], rtol=0, atol=0)
    for case in ref["chat"]:
        messages = ([{"role": "system", "content": case["system"]}] if case["system"] is not None else []) + [
            {"role": "user", "content": case["user"]}
        ]
        if "error" in case:
            try:
                tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001
                assert str(e) == case["error"], (name, str(e))
            else:
                raise AssertionError(f"{name}: chat template no longer raises {case['error']!r}")
            continue
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == case["rendered"], (name, rendered)
        assert tok(rendered, add_special_tokens=False)["input_ids"] == case["token_ids"]
        assert raw_tok.encode(rendered, add_special_tokens=False).ids == case["token_ids"], "tokenizers-lib mismatch"
    for g in ref["greedy"]:
        ids = ref["raw_token_ids"][g["prompt_index"]]
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=g["max_new_tokens"]
            )
        assert out[0, len(ids):].tolist() == g["new_tokens"], (name, g)
    for abl in ref["ablations"]:
        handles = register_ablation(model, abl, ref["epsilon"])
        try:
            for i, ids in enumerate(ref["raw_token_ids"]):
                torch.testing.assert_close(
                    forward_logits(model, ids), tensors[f"ablated.{abl['name']}.{i}"], rtol=0, atol=0
                )
        finally:
            for h in handles:
                h.remove()
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size <= MAX_FOLDER_BYTES, (name, size)
    print(f"  verified from disk: {name} ({size / 1e6:.2f} MB)")
