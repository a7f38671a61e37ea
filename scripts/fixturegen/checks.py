"""Per-family structural checks run while a fixture is built; some return extra entries
for its reference.json."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .ablation import register_ablation, sinks_dropped
from .common import EPSILON
from .modelling import forward_logits
from .specs import PHI3_LONG_FACTOR, PHI3_SHORT_FACTOR

def check_llama3_rope(config) -> None:
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    head_dim = config.head_dim
    theta = config.rope_parameters["rope_theta"]
    inv_base = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ratio = (inv_scaled / inv_base).tolist()
    factor = config.rope_parameters["factor"]
    unchanged = sum(abs(r - 1.0) < 1e-6 for r in ratio)
    scaled = sum(abs(r - 1.0 / factor) < 1e-6 for r in ratio)
    interp = len(ratio) - unchanged - scaled
    print(f"  llama3 rope inv_freq ratios {[round(r, 4) for r in ratio]}:"
          f" {unchanged} unchanged, {interp} interpolated, {scaled} scaled")
    assert unchanged > 0 and interp > 0 and scaled > 0


def _clone_with_config(spec, model, config):
    config._attn_implementation = "eager"
    other = spec["cls"](config).eval()
    other.load_state_dict(model.state_dict())
    return other


def check_mistral_window(spec, model, raw_ids, logits, vocab_len) -> None:
    w = model.config.sliding_window
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    assert len(raw_ids[longest]) >= 3 * w, (len(raw_ids[longest]), w)
    no_window = _clone_with_config(spec, model, spec["config"](vocab_len, sliding_window=None))
    full = forward_logits(no_window, raw_ids[longest])
    diff = float((full - logits[longest]).abs().max())
    print(f"  mistral: sliding_window={w}; longest prompt ({len(raw_ids[longest])} tokens) "
          f"max |Δlogit| vs no window = {diff:.4f}")
    assert diff > 1e-2, "sliding window has no effect on the longest prompt"
    # Semantics: query i attends keys j with i - w < j <= i (w keys, itself included).
    torch.testing.assert_close(full[:w], logits[longest][:w], rtol=1e-6, atol=1e-6)
    assert float((full[w] - logits[longest][w]).abs().max()) > 1e-3
    print(f"  mistral: rows 0..{w - 1} identical to full attention, row {w} differs "
          f"=> each query sees exactly {w} keys (itself + {w - 1} previous)")


def check_qwen2_no_window(spec, model, raw_ids, logits, vocab_len) -> None:
    assert model.config.use_sliding_window is False
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    none = _clone_with_config(spec, model, spec["config"](vocab_len, sliding_window=None))
    torch.testing.assert_close(forward_logits(none, raw_ids[longest]), logits[longest], rtol=0, atol=0)
    windowed = _clone_with_config(
        spec, model, spec["config"](vocab_len, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    )
    diff = float((forward_logits(windowed, raw_ids[longest]) - logits[longest]).abs().max())
    print(f"  qwen2: use_sliding_window=false -> identical to sliding_window=None; "
          f"if the window of 4 were applied max |Δlogit| would be {diff:.4f}")
    assert diff > 1e-2


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def check_uniform_attention(model, raw_ids) -> None:
    """"Undifferentiated attention": with a head's query scaled by epsilon at the
    fixture's ablation point, that head's attention rows are uniform over the
    keys it may see (all previous positions, or the last `sliding_window` ones
    on a sliding layer)."""
    cfg = model.config
    last = cfg.num_hidden_layers - 1
    heads = [[0, 1], [last, cfg.num_attention_heads - 2]]
    abl = {"name": "check", "target": "q", "op": "scale", "heads": heads}
    ids = max(raw_ids, key=len)
    x = torch.tensor([ids])
    handles = register_ablation(model, abl, EPSILON)
    try:
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    t = len(ids)
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers

    def expected(layer, head, with_sink):
        # uniform over the visible keys; with an attention sink (GPT-OSS) the sink logit s joins
        # the softmax and is dropped: each of the n keys gets 1 / (n + e^s)
        window = cfg.sliding_window if layer_types[layer] == "sliding_attention" else None
        sinks = getattr(model.model.layers[layer].self_attn, "sinks", None)
        extra = float(torch.exp(sinks[head].detach().double())) if (with_sink and sinks is not None) else 0.0
        expect = torch.zeros(t, t)
        for i in range(t):
            lo = 0 if window is None else max(0, i - window + 1)
            expect[i, lo:i + 1] = 1.0 / (i + 1 - lo + extra)
        return expect

    worst = 0.0
    for layer, head in heads:
        w = out.attentions[layer][0, head]
        expect = expected(layer, head, with_sink=True)
        worst = max(worst, _max_diff(w, expect))
        # and an unablated head of the same layer is far from uniform
        other = (head + 1) % cfg.num_attention_heads
        assert _max_diff(out.attentions[layer][0, other], expect) > 1e-2
    print(f"  q scaled by eps at the ablation point -> attention rows uniform within {worst:.2e}")
    assert worst < 1e-4, worst
    if hasattr(model.model.layers[0].self_attn, "sinks"):
        # the sink takes a share of every row: the rows sum to n / (n + e^s), not 1; dropping the
        # ablated heads' sinks (-inf) gives exactly 1 / n
        handles = register_ablation(model, abl, EPSILON)
        try:
            with sinks_dropped(model, abl), torch.no_grad():
                dropped = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, output_attentions=True)
        finally:
            for h in handles:
                h.remove()
        worst_sink = max(_max_diff(out.attentions[l][0, h], expected(l, h, with_sink=False)) for l, h in heads)
        worst_drop = max(_max_diff(dropped.attentions[l][0, h], expected(l, h, with_sink=False)) for l, h in heads)
        print(f"  with the sinks: rows are 1/(n + e^s) (off 1/n by up to {worst_sink:.3f}); "
              f"sink dropped: 1/n within {worst_drop:.2e}")
        assert worst_sink > 1e-2 and worst_drop < 1e-4, (worst_sink, worst_drop)


def check_gemma(spec, model, raw_ids, logits, vocab_len) -> dict:
    emb = model.model.embed_tokens
    assert emb.embed_scale.dtype == torch.float32 and float(emb.embed_scale) == 64 ** 0.5
    # GELU: tanh approximation, not erf.
    act = model.model.layers[0].mlp.act_fn
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(act(x), torch.nn.functional.gelu(x, approximate="tanh"), rtol=0, atol=0)
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    saved = [layer.mlp.act_fn for layer in model.model.layers]
    try:
        for layer in model.model.layers:
            layer.mlp.act_fn = torch.nn.GELU(approximate="none")
        erf = forward_logits(model, raw_ids[longest])
    finally:
        for layer, a in zip(model.model.layers, saved):
            layer.mlp.act_fn = a
    d_erf = _max_diff(erf, logits[longest])
    # RMSNorm (1 + weight): with weight instead of 1 + weight the logits collapse.
    norms = [m for n, m in model.named_modules() if n.endswith("norm")]
    saved_w = [m.weight.detach().clone() for m in norms]
    with torch.no_grad():
        for m in norms:
            m.weight -= 1.0
        try:
            no_plus_one = forward_logits(model, raw_ids[longest])
        finally:
            for m, w in zip(norms, saved_w):
                m.weight.copy_(w)
    torch.testing.assert_close(forward_logits(model, raw_ids[longest]), logits[longest], rtol=0, atol=0)
    d_norm = _max_diff(no_plus_one, logits[longest])
    print(f"  gemma: embed_scale = float32 {float(emb.embed_scale)}; exact (erf) GELU would change the logits by "
          f"{d_erf:.2e}; norm weight without the +1 by {d_norm:.3f}")
    assert d_erf > 1e-5 and d_norm > 1e-1
    return {"embed_scale": float(emb.embed_scale)}


def check_gemma2(spec, model, raw_ids, logits, vocab_len) -> dict:
    cfg = model.config
    w = cfg.sliding_window
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    ids = raw_ids[longest]
    assert len(ids) > 3 * w, (len(ids), w)
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * (cfg.num_hidden_layers // 2), cfg.layer_types
    diffs = {}
    variants = {
        "no attn softcap": dict(attn_logit_softcapping=None),
        "no final softcap": dict(final_logit_softcapping=None),
        "no sliding window": dict(layer_types=["full_attention"] * cfg.num_hidden_layers),
    }
    full = None
    for label, kw in variants.items():
        other = _clone_with_config(spec, model, spec["config"](vocab_len, **kw))
        out = forward_logits(other, ids)
        diffs[label] = _max_diff(out, logits[longest])
        assert diffs[label] > 1e-2, (label, diffs[label])
        if label == "no sliding window":
            full = out
    # window semantics, as for Mistral: query i sees keys i-w < j <= i
    torch.testing.assert_close(full[:w], logits[longest][:w], rtol=1e-6, atol=1e-6)
    assert _max_diff(full[w], logits[longest][w]) > 1e-3
    # query_pre_attn_scalar (24) is what scales the scores, not head_dim (32)
    scalar = _clone_with_config(spec, model, spec["config"](vocab_len))
    for layer in scalar.model.layers:
        layer.self_attn.scaling = cfg.head_dim ** -0.5
    diffs["scaling head_dim^-0.5"] = _max_diff(forward_logits(scalar, ids), logits[longest])
    assert diffs["scaling head_dim^-0.5"] > 1e-2
    print("  gemma2: max |Δlogit| on the longest prompt (" + str(len(ids)) + " tokens) with "
          + ", ".join(f"{k}: {v:.3f}" for k, v in diffs.items()))
    print(f"  gemma2: rows 0..{w - 1} identical without the window, row {w} differs; layer_types {cfg.layer_types}")
    return {"layer_types": list(cfg.layer_types)}


def check_gemma3(spec, model, raw_ids, logits, vocab_len) -> dict:
    """What the gemma3 fixture exercises beyond gemma2: the local rotary base of the sliding
    layers, the linear scaling of the global ones, the 5:1 layer pattern, the per-head q/k
    norms; and that Gemma 3's attention ignores attn_logit_softcapping."""
    cfg = model.config
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    ids = raw_ids[longest]
    assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"], cfg.layer_types
    diffs = {}
    variants = {
        "local base = global base": dict(rope_local_base_freq=cfg.rope_parameters["full_attention"]["rope_theta"]),
        "no global scaling": dict(rope_scaling=None),
        "no sliding window": dict(layer_types=["full_attention"] * cfg.num_hidden_layers),
    }
    for label, kw in variants.items():
        other = _clone_with_config(spec, model, spec["config"](vocab_len, **kw))
        diffs[label] = _max_diff(forward_logits(other, ids), logits[longest])
        assert diffs[label] > 1e-2, (label, diffs[label])
    capped = spec["config"](vocab_len)
    capped.attn_logit_softcapping = 0.5
    other = _clone_with_config(spec, model, capped)
    diffs["attn_logit_softcapping 0.5 (ignored)"] = _max_diff(forward_logits(other, ids), logits[longest])
    assert diffs["attn_logit_softcapping 0.5 (ignored)"] == 0.0
    print("  gemma3: max |Δlogit| on the longest prompt (" + str(len(ids)) + " tokens) with "
          + ", ".join(f"{k}: {v:.3f}" for k, v in diffs.items()))
    return {"layer_types": list(cfg.layer_types)}


def check_moe(spec, model, raw_ids, logits, vocab_len) -> dict:
    """The routing of every prompt token: which experts each layer's router picks, and the
    smallest margin between a token's k-th and (k+1)-th expert probabilities (a margin near
    float rounding would make the fixture's routing, hence its logits, fragile). Every
    expert of a sparse layer gets some token.

    GPT-OSS's router (`mlp.router`) takes the top-k of its raw logits (bias included) and
    softmaxes only those k values, so there the margin is between the k-th and (k+1)-th
    logits, and its threshold is 1e-3 (logits are ~10x larger than probabilities)."""
    cfg = model.config
    k = cfg.num_experts_per_tok
    margins, used = [], {}
    handles = []
    on_logits = False
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        router = getattr(mlp, "gate", None) or getattr(mlp, "router", None)
        if router is None or not hasattr(router, "top_k"):
            continue
        raw = type(router).__name__ == "GptOssTopKRouter"
        on_logits = on_logits or raw

        def hook(m, args, out, i=i, raw=raw):
            scores = out[0].float() if raw else torch.softmax(out[0].float(), dim=-1)
            top = torch.sort(scores, dim=-1, descending=True).values
            margins.append(float((top[:, k - 1] - top[:, k]).min()))
            used.setdefault(i, set()).update(out[2].flatten().tolist())
        handles.append(router.register_forward_hook(hook))
    try:
        for ids in raw_ids:
            forward_logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    assert used, "no router was hooked"
    n = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    for i, experts in used.items():
        assert experts == set(range(n)), (i, experts)
    what = "router logits" if on_logits else "expert probabilities"
    print(f"  moe: sparse layers {sorted(used)}, every expert used; smallest top-{k} margin of the {what} "
          f"{min(margins):.2e}")
    assert min(margins) > (1e-3 if on_logits else 1e-4), min(margins)
    extra = {"sparse_layers": sorted(used), "min_router_margin": min(margins)}
    if on_logits:
        extra["router_margin_of"] = "logits"
    return extra


def check_phi3(spec, model, raw_ids, logits, vocab_len, greedy_records) -> dict:
    cfg = model.config
    rp = cfg.rope_parameters
    orig = rp["original_max_position_embeddings"]
    assert orig == cfg.original_max_position_embeddings == 10 and cfg.max_position_embeddings == 64
    rot = model.model.rotary_emb
    factor = cfg.max_position_embeddings / orig
    mscale = math.sqrt(1 + math.log(factor) / math.log(orig))
    assert rot.attention_scaling == mscale, (rot.attention_scaling, mscale)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    base = 1.0 / (rp["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    per_prompt = []
    for i, ids in enumerate(raw_ids):
        forward_logits(model, ids)  # longrope updates rotary_emb.inv_freq in place for this call
        which = "long" if len(ids) > orig else "short"
        ext = torch.tensor(rp[f"{which}_factor"], dtype=torch.float32)
        torch.testing.assert_close(rot.inv_freq, base / ext, rtol=1e-6, atol=0)
        n_new = len(greedy_records[i]["new_tokens"])
        # forward call k of the greedy run (k = 0 is the prompt) sees len + k tokens
        switch = next((k for k in range(n_new) if len(ids) + k > orig), None)
        per_prompt.append({"prompt_index": i, "length": len(ids), "factors": which, "greedy_first_long_step": switch})
    assert {p["factors"] for p in per_prompt} == {"short", "long"}
    # Which factor list matters for which prompt.
    same_long = _clone_with_config(spec, model, spec["config"](vocab_len, long_factor=PHI3_SHORT_FACTOR))
    same_short = _clone_with_config(spec, model, spec["config"](vocab_len, short_factor=PHI3_LONG_FACTOR))
    no_mscale = _clone_with_config(spec, model, spec["config"](vocab_len, attention_factor=1.0))
    no_window = _clone_with_config(spec, model, spec["config"](vocab_len, sliding_window=None))
    for p in per_prompt:
        i, ids = p["prompt_index"], raw_ids[p["prompt_index"]]
        d_long = _max_diff(forward_logits(same_long, ids), logits[i])
        d_short = _max_diff(forward_logits(same_short, ids), logits[i])
        d_mscale = _max_diff(forward_logits(no_mscale, ids), logits[i])
        torch.testing.assert_close(forward_logits(no_window, ids), logits[i], rtol=0, atol=0)
        if p["factors"] == "long":
            assert d_long > 1e-2 and d_short == 0.0, (d_long, d_short)
        else:
            assert d_short > 1e-2 and d_long == 0.0, (d_long, d_short)
        assert d_mscale > 1e-2
        print(f"  phi3: prompt {i} ({len(ids)} tokens) uses the {p['factors']} factors; max |Δlogit| if "
              f"long_factor:=short_factor {d_long:.3f}, short_factor:=long_factor {d_short:.3f}, "
              f"attention_factor:=1 {d_mscale:.3f}; sliding_window=None: identical")
    # A greedy run that crosses the boundary: transformers' generate() is
    # identical to a full recompute (asserted in greedy()) because
    # Phi3ForCausalLM.prepare_inputs_for_generation drops the KV cache when the
    # sequence first exceeds original_max_position_embeddings, so the whole
    # sequence is re-encoded with the long factors.  Keeping the short-rotated
    # cache instead would change the logits from that step on:
    crossing = [p for p in per_prompt if p["factors"] == "short" and p["greedy_first_long_step"] is not None]
    assert crossing, "no greedy run crosses original_max_position_embeddings"
    p = crossing[0]
    ids = raw_ids[p["prompt_index"]]
    seq = ids + greedy_records[p["prompt_index"]]["new_tokens"]
    n_steps = len(greedy_records[p["prompt_index"]]["new_tokens"])
    stale = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        cache = out.cache
        for k in range(n_steps):
            if k > 0:
                out = model(input_ids=torch.tensor([[seq[len(ids) + k - 1]]]), cache=cache, use_cache=True)
                cache = out.cache
            ref = forward_logits(model, seq[: len(ids) + k])[-1]
            stale.append(_max_diff(out.logits[0, -1].float(), ref))
    first = p["greedy_first_long_step"]
    print(f"  phi3: greedy run of prompt {p['prompt_index']} ({len(ids)} tokens) switches to the long factors at "
          f"step {first}; a decode that kept the short-rotated KV cache would be off by "
          f"{[round(d, 4) for d in stale]} per step")
    assert max(stale[:first]) < 1e-4 and min(stale[first:]) > 1e-3
    return {
        "rope": {
            "rope_type": "longrope",
            "original_max_position_embeddings": orig,
            "max_position_embeddings": cfg.max_position_embeddings,
            "attention_factor": mscale,
            "short_factor": list(rp["short_factor"]),
            "long_factor": list(rp["long_factor"]),
            "rule": "per forward call: long_factor iff max(position_ids) + 1 > original_max_position_embeddings",
            "prompts": per_prompt,
        }
    }


def check_qwen3(spec, model, raw_ids, logits, vocab_len) -> dict:
    """The q/k ablations act on q_norm's / k_norm's output (after the per-head
    RMSNorm, before RoPE).  Scaling q_proj's output instead (before the norm)
    gives q_norm(s*q) = s*q*w / sqrt(s^2*mean(q^2) + rms_norm_eps): for a
    moderate s the norm undoes the scaling entirely, and for s = 1e-5 the rms
    epsilon (1e-6) dominates, so the query only shrinks about a hundredfold and
    the head's attention is close to, but not exactly, uniform.  Measured here
    for the README."""
    cfg = model.config
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    ids = raw_ids[longest]
    heads = [[0, 1], [cfg.num_hidden_layers - 1, cfg.num_attention_heads - 2]]
    post = {"name": "post", "target": "q", "op": "scale", "heads": heads}
    handles = register_ablation(model, post, EPSILON)
    try:
        post_logits = forward_logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    hd = cfg.head_dim
    by_layer = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)

    def pre_norm_scaled(scale: float):
        pre_handles = []
        for layer, hs in by_layer.items():
            def pre(m, a, out, hs=hs):
                y = out.clone()
                for h in hs:
                    y[..., h * hd:(h + 1) * hd] *= scale
                return y
            pre_handles.append(model.model.layers[layer].self_attn.q_proj.register_forward_hook(pre))
        try:
            x = torch.tensor([ids])
            with torch.no_grad():
                out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, output_attentions=True)
        finally:
            for h in pre_handles:
                h.remove()
        return out.logits[0].float(), out.attentions[0][0, 1]

    t = len(ids)
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1).unsqueeze(1)
    pre_logits, pre_att = pre_norm_scaled(EPSILON)
    tenth_logits, _ = pre_norm_scaled(0.1)
    d_pre_post = _max_diff(pre_logits, post_logits)
    d_att = _max_diff(pre_att, uniform)
    d_tenth = _max_diff(tenth_logits, logits[longest])
    print(f"  qwen3: scaling q by {EPSILON} before q_norm instead of after changes the ablated logits by "
          f"{d_pre_post:.3f} and leaves the head's attention {d_att:.4f} away from uniform; scaling by 0.1 "
          f"before q_norm changes the unablated logits by only {d_tenth:.1e}")
    assert d_pre_post > 1e-3 and d_att > 1e-3 and d_tenth < 1e-3
    return {}


def check_gpt_oss(spec, model, raw_ids, logits, vocab_len) -> dict:
    """What the GPT-OSS fixtures exercise, each shown to matter on the longest prompt: the
    attention sinks, the sliding window of the even layers, YaRN with truncate false, the
    clamped SwiGLU (how often the clamp is hit is counted) on interleaved gate/up columns."""
    cfg = model.config
    longest = max(range(len(raw_ids)), key=lambda i: len(raw_ids[i]))
    ids = raw_ids[longest]
    w = cfg.sliding_window
    assert len(ids) > 3 * w, (len(ids), w)
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * (cfg.num_hidden_layers // 2), cfg.layer_types
    diffs = {}

    # YaRN: 1 frequency kept, 1 blended, the rest divided by the factor; cos/sin scaled.
    rp = cfg.rope_parameters
    inv, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, torch.device("cpu"))
    d = cfg.head_dim
    base = 1.0 / (rp["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    ratio = (inv / base).tolist()
    kept = sum(abs(r - 1.0) < 1e-6 for r in ratio)
    scaled = sum(abs(r - 1.0 / rp["factor"]) < 1e-6 for r in ratio)
    blended = len(ratio) - kept - scaled
    mscale = 0.1 * math.log(rp["factor"]) + 1.0
    assert model.model.rotary_emb.attention_scaling == attention_factor and abs(attention_factor - mscale) < 1e-12
    assert kept > 0 and blended > 0 and scaled > 0, ratio
    print(f"  gpt_oss: yarn inv_freq ratios {[round(r, 4) for r in ratio]} ({kept} kept, {blended} blended, "
          f"{scaled} scaled), cos/sin x {attention_factor:.6f}")

    variants = {
        "no sliding window": dict(layer_types=["full_attention"] * cfg.num_hidden_layers),
        "yarn truncate true": dict(truncate=True),
        "no SwiGLU clamp": dict(swiglu_limit=float("inf")),
    }
    full = None
    for label, kw in variants.items():
        other = _clone_with_config(spec, model, spec["config"](vocab_len, **kw))
        out = forward_logits(other, ids)
        diffs[label] = _max_diff(out, logits[longest])
        if label == "no sliding window":
            full = out
    # window semantics, as for Mistral: query i sees keys i-w < j <= i
    torch.testing.assert_close(full[:w], logits[longest][:w], rtol=1e-6, atol=1e-6)
    assert _max_diff(full[w], logits[longest][w]) > 1e-3

    # the sinks: all of them at -inf is attention without sinks
    saved = [layer.self_attn.sinks.detach().clone() for layer in model.model.layers]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(float("-inf"))
    try:
        diffs["no sinks"] = _max_diff(forward_logits(model, ids), logits[longest])
    finally:
        with torch.no_grad():
            for layer, value in zip(model.model.layers, saved):
                layer.self_attn.sinks.copy_(value)

    # gate = even columns of gate_up, up = odd ones (not the two halves)
    experts_cls = type(model.model.layers[0].mlp.experts)
    apply_gate = experts_cls._apply_gate
    counts = {"gate_above": 0, "up_outside": 0, "values": 0}

    def halves(self, gate_up):
        g, u = gate_up.chunk(2, dim=-1)
        return apply_gate(self, torch.stack([g, u], dim=-1).flatten(-2))

    def counting(self, gate_up):
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        counts["gate_above"] += int((gate > self.limit).sum())
        counts["up_outside"] += int((up.abs() > self.limit).sum())
        counts["values"] += gate.numel()
        return apply_gate(self, gate_up)

    try:
        experts_cls._apply_gate = halves
        diffs["gate/up as halves"] = _max_diff(forward_logits(model, ids), logits[longest])
        experts_cls._apply_gate = counting
        for i, p in enumerate(raw_ids):
            torch.testing.assert_close(forward_logits(model, p), logits[i], rtol=0, atol=0)
    finally:
        experts_cls._apply_gate = apply_gate
    torch.testing.assert_close(forward_logits(model, ids), logits[longest], rtol=0, atol=0)
    for label, diff in diffs.items():
        assert diff > 1e-3, (label, diff)
    sinks = torch.stack(saved)
    print("  gpt_oss: max |Δlogit| on the longest prompt (" + str(len(ids)) + " tokens) with "
          + ", ".join(f"{k}: {v:.3f}" for k, v in diffs.items()))
    print(f"  gpt_oss: sinks in [{float(sinks.min()):.2f}, {float(sinks.max()):.2f}]; SwiGLU clamp ({cfg.swiglu_limit}) "
          f"on all prompts: {counts['gate_above']} gate values above it, {counts['up_outside']} up values outside "
          f"±{cfg.swiglu_limit}, of {counts['values']} each (routed token-expert pairs x intermediate size)")
    assert counts["gate_above"] > 0 and counts["up_outside"] > 0, counts
    return {"layer_types": list(cfg.layer_types), "swiglu_clamp": {"limit": cfg.swiglu_limit, **counts}}
