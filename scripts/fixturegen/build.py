"""Building one fixture folder, and verifying it from the saved folder only."""

from __future__ import annotations

import copy
import json
import shutil
from contextlib import contextmanager
from datetime import datetime

import torch
import transformers
import transformers.utils.chat_template_utils as chat_template_utils
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from . import mxfp4
from .ablation import ABLATION_POINTS, ablation_kind, ablation_sets, register_ablation, sinks_dropped
from .checks import (
    check_gemma,
    check_gemma2,
    check_gemma3,
    check_gpt_oss,
    check_moe,
    check_llama3_rope,
    check_mistral_window,
    check_phi3,
    check_qwen2_no_window,
    check_qwen3,
    check_uniform_attention,
)
from .common import CHAT_CASES, EPSILON, FIXTURES, MAX_NEW_TOKENS, MIN_TOP2_GAP, PROMPTS, max_folder_bytes
from .modelling import forward_logits, greedy, reinit_
from .specs import SPECS, to_hub_style

NEW_FAMILIES = ("gemma", "gemma2", "gemma3", "olmo2", "phi3", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                "gpt_oss", "gpt_oss_mxfp4")
GPT_OSS = ("gpt_oss", "gpt_oss_mxfp4")


# ---------------------------------------------------------------------------
# Chat templates that read the clock
# ---------------------------------------------------------------------------
@contextmanager
def pinned_template_time(now: str | None):
    """Pin the clock of the chat templates' `strftime_now` (GPT-OSS writes "Current date:
    %Y-%m-%d"). transformers defines it in transformers/utils/chat_template_utils.py as
    `datetime.now().strftime(format)`, with that module's `datetime`; while this is active,
    its `now()` returns the UTC instant `now` ("2025-08-05T12:00:00Z"): naive, that is the
    instant's UTC wall-clock time (a zone-aware now(tz) gets the same instant in tz)."""
    if now is None:
        yield
        return
    instant = datetime.fromisoformat(now.replace("Z", "+00:00"))

    class PinnedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant.astimezone(tz) if tz is not None else instant.replace(tzinfo=None)

    saved = chat_template_utils.datetime
    chat_template_utils.datetime = PinnedDatetime
    try:
        yield
    finally:
        chat_template_utils.datetime = saved


# ---------------------------------------------------------------------------
# MXFP4 experts (gpt_oss_mxfp4)
# ---------------------------------------------------------------------------
EXPERT_PROJS = ("gate_up_proj", "down_proj")


def quantize_experts_(model) -> dict[str, torch.Tensor]:
    """Quantize every layer's expert matrices to MXFP4 and put the dequantized values back
    into the float model (so that it is the model the MXFP4 folder holds). Returns the
    checkpoint's `*_blocks` / `*_scales` tensors by name."""
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            experts = layer.mlp.experts
            for proj in EXPERT_PROJS:
                param = getattr(experts, proj)
                blocks, scales = mxfp4.quantize(param)
                deq = mxfp4.dequantize(blocks, scales, param.dtype)
                torch.testing.assert_close(deq, convert_moe_packed_tensors(blocks, scales, dtype=param.dtype),
                                           rtol=0, atol=0)
                param.copy_(deq)
                packed[f"model.layers.{i}.mlp.experts.{proj}_blocks"] = blocks
                packed[f"model.layers.{i}.mlp.experts.{proj}_scales"] = scales
    return packed


def write_mxfp4_model(name: str, model, packed: dict[str, torch.Tensor], out_dir) -> None:
    """config.json (hub layout with the hub's quantization_config), generation_config.json and
    model.safetensors with the experts as `*_blocks` / `*_scales` (uint8) and everything else,
    the experts' biases included, in float32 under transformers' names."""
    tmp = out_dir / "_float"
    model.save_pretrained(tmp)
    state = load_file(str(tmp / "model.safetensors"))
    for key in list(state):
        if key.rsplit(".", 1)[-1] in EXPERT_PROJS:
            del state[key]
    assert not set(state) & set(packed)
    state.update(packed)
    save_file(dict(sorted(state.items())), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    scales = torch.cat([t.flatten() for k, t in packed.items() if k.endswith("_scales")]).to(torch.int32) - 127
    print(f"  mxfp4: model.safetensors {(out_dir / 'model.safetensors').stat().st_size:,} bytes "
          f"(float32 experts: {(tmp / 'model.safetensors').stat().st_size:,}); block scales 2^{int(scales.min())}"
          f"..2^{int(scales.max())}")
    cfg = to_hub_style(json.loads((tmp / "config.json").read_text()), name)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.copy(tmp / "generation_config.json", out_dir / "generation_config.json")
    shutil.rmtree(tmp)


def load_mxfp4_model(out_dir, model, packed: dict[str, torch.Tensor]):
    """Load the MXFP4 folder as verify() does and check that transformers dequantized the
    experts (without a usable GPU it always does; see fixtures/README.md) to exactly our
    dequantization, and that every other weight came back unchanged."""
    loaded = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32).eval()
    # Having dequantized, transformers drops the quantizer and the config's quantization_config.
    assert not loaded.is_quantized and getattr(loaded, "hf_quantizer", None) is None
    assert "quantization_config" not in loaded.config.to_dict()
    for i, layer in enumerate(loaded.model.layers):
        experts = layer.mlp.experts
        assert type(experts).__name__ == "GptOssExperts", type(experts)  # not Mxfp4GptOssExperts
        for proj in EXPERT_PROJS:
            got = getattr(experts, proj)
            assert got.dtype == torch.float32, got.dtype
            own = mxfp4.dequantize(packed[f"model.layers.{i}.mlp.experts.{proj}_blocks"],
                                   packed[f"model.layers.{i}.mlp.experts.{proj}_scales"])
            torch.testing.assert_close(got, own, rtol=0, atol=0)
    ref_state = model.state_dict()
    got_state = loaded.state_dict()
    assert set(ref_state) == set(got_state), set(ref_state) ^ set(got_state)
    for key, value in ref_state.items():
        torch.testing.assert_close(got_state[key], value, rtol=0, atol=0)
    print(f"  mxfp4: transformers loaded {type(loaded.model.layers[0].mlp.experts).__name__} in float32 "
          f"(dequantized on load: is_quantized False, no quantization_config left; "
          f"experts_implementation {loaded.config._experts_implementation}); "
          f"experts equal our dequantization, all other weights unchanged")
    return loaded


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
    template_now = spec.get("template_now")
    for system, user in CHAT_CASES:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user}
        ]
        try:
            with pinned_template_time(template_now):
                rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - record the template's own error
            chat.append({"system": system, "user": user, "error": str(e)})
            continue
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        chat.append({"system": system, "user": user, "rendered": rendered, "token_ids": ids})
    if template_now is not None:
        date = template_now[:10]
        assert all(f"Current date: {date}" in c["rendered"] for c in chat), chat
        print(f"  chat template clock pinned to {template_now}: 'Current date: {date}'")

    seed = spec["seed"]
    for attempt in range(50):
        torch.manual_seed(seed)
        config = spec["config"](vocab_len)
        config._attn_implementation = "eager"
        model = spec["cls"](config).eval()
        reinit_(model, seed, spec["std"], spec.get("norm_center", 1.0), spec.get("param_std"))
        packed = quantize_experts_(model) if spec.get("mxfp4") else None
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

    out_dir = FIXTURES / name
    if spec.get("mxfp4"):
        # Write the MXFP4 model files now and compute the whole reference from the model
        # transformers loads from them (the float model above only chose the seed).
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        write_mxfp4_model(name, model, packed, out_dir)
        in_memory = logits
        model = load_mxfp4_model(out_dir, model, packed)
        config = model.config
        logits = [forward_logits(model, ids) for ids in raw_ids]
        same = all(torch.equal(a, b) for a, b in zip(logits, in_memory))
        greedy_records, gaps = [], []
        for i, ids in enumerate(raw_ids):
            new, gap = greedy(model, ids, eos_ids, pad)
            greedy_records.append({"prompt_index": i, "max_new_tokens": MAX_NEW_TOKENS, "new_tokens": new})
            gaps.append(gap)
        std = min(float(l.std()) for l in logits)
        assert std >= 1.0 and min(gaps) >= spec.get("min_gap", MIN_TOP2_GAP), (std, gaps)
        print(f"  loaded MXFP4 model: logits {'identical to' if same else 'differ from'} the in-memory model's; "
              f"min logit std {std:.3f}, min greedy top-2 gap {min(gaps):.4f}")

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
    if name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", *GPT_OSS):
        family_extra.update(check_moe(spec, model, raw_ids, logits, vocab_len))
    if name in GPT_OSS:
        family_extra.update(check_gpt_oss(spec, model, raw_ids, logits, vocab_len))
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
    if name in GPT_OSS:
        # The sink-drop variant of every q/k set: the same hooks, and the sink logits of the
        # affected query heads at -inf (ablation.sink_drop_heads).
        sink_drop = []
        for abl in ablations:
            if abl["target"] not in ("q", "k"):
                continue
            handles = register_ablation(model, abl, EPSILON)
            try:
                with sinks_dropped(model, abl):
                    for i, ids in enumerate(raw_ids):
                        tensors[f"ablated_sink_drop.{abl['name']}.{i}"] = forward_logits(model, ids).contiguous()
            finally:
                for h in handles:
                    h.remove()
            diff = max(float((tensors[f"ablated_sink_drop.{abl['name']}.{i}"]
                              - tensors[f"ablated.{abl['name']}.{i}"]).abs().max()) for i in range(len(raw_ids)))
            print(f"  sink drop {abl['name']:<25} max |Δlogit| vs the plain ablation = {diff:.4f}")
            if abl["op"] == "scale":
                assert diff > 1e-3, f"dropping the sinks does not change {abl['name']}"
            sink_drop.append(abl["name"])
        family_extra["sink_drop"] = sink_drop
        family_extra["template_now"] = template_now
    # hooks removed (and sinks restored): unmodified logits again
    for i, ids in enumerate(raw_ids):
        torch.testing.assert_close(forward_logits(model, ids), logits[i], rtol=0, atol=0)
    if name in NEW_FAMILIES:
        check_uniform_attention(model, raw_ids)

    # ---- write the folder (gpt_oss_mxfp4's model files are already there)
    if not spec.get("mxfp4"):
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        model.save_pretrained(out_dir)
    # chat_template inside tokenizer_config.json, as in the hub repositories
    # (transformers 5 would otherwise write a separate chat_template.jinja).
    tok.save_pretrained(out_dir, save_jinja_files=False)
    if spec["hub_style"] and not spec.get("mxfp4"):
        cfg_path = out_dir / "config.json"
        cfg = to_hub_style(json.loads(cfg_path.read_text()), name)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    # drop anything we did not ask for (e.g. special_tokens_map.json / chat_template.jinja
    # would be fine, but keep the folder minimal and predictable)
    if name in ("llama3", *GPT_OSS):
        # transformers 5 writes its internal class name; the hub repositories (and
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
    qc = json.loads((d / "config.json").read_text()).get("quantization_config")
    if qc is not None:  # gpt_oss_mxfp4: transformers must have dequantized the experts (it does on CPU)
        assert qc["quant_method"] == "mxfp4", qc
        experts = model.model.layers[0].mlp.experts
        assert type(experts).__name__ == "GptOssExperts" and experts.gate_up_proj.dtype == torch.float32, (
            "transformers kept the MXFP4 kernels (a GPU with the `kernels` package?); verify on CPU"
        )
        assert not model.is_quantized
    template_now = ref.get("template_now")
    for case in ref["chat"]:
        messages = ([{"role": "system", "content": case["system"]}] if case["system"] is not None else []) + [
            {"role": "user", "content": case["user"]}
        ]
        if "error" in case:
            try:
                with pinned_template_time(template_now):
                    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001
                assert str(e) == case["error"], (name, str(e))
            else:
                raise AssertionError(f"{name}: chat template no longer raises {case['error']!r}")
            continue
        with pinned_template_time(template_now):
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
    by_name = {abl["name"]: abl for abl in ref["ablations"]}
    for set_name in ref.get("sink_drop", []):
        abl = by_name[set_name]
        handles = register_ablation(model, abl, ref["epsilon"])
        try:
            with sinks_dropped(model, abl):
                for i, ids in enumerate(ref["raw_token_ids"]):
                    torch.testing.assert_close(
                        forward_logits(model, ids), tensors[f"ablated_sink_drop.{set_name}.{i}"], rtol=0, atol=0
                    )
        finally:
            for h in handles:
                h.remove()
    for i, ids in enumerate(ref["raw_token_ids"]):
        torch.testing.assert_close(forward_logits(model, ids), tensors[f"logits.{i}"], rtol=0, atol=0)
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size <= max_folder_bytes(name), (name, size)
    print(f"  verified from disk: {name} ({size / 1e6:.2f} MB)")
