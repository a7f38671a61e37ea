"""One spec per family (tokenizer, config, generation config, seed) and the rewrite of
config.json to the layout of the hub checkpoints."""

from __future__ import annotations

from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GenerationConfig,
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from .common import NEW_MIN_TOP2_GAP
from .templates import GEMMA2_CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, GEMMA_CHAT_TEMPLATE, LLAMA2_CHAT_TEMPLATE, MISTRAL_CHAT_TEMPLATE
from .toks import (
    make_gemma_tokenizer,
    make_gpt_oss_tokenizer,
    make_llama3_tokenizer,
    make_olmo2_tokenizer,
    make_phi3_tokenizer,
    make_qwen2_tokenizer,
    make_qwen3_tokenizer,
    make_sentencepiece_bpe_tokenizer,
)

# ---------------------------------------------------------------------------
# Fixture specs
# ---------------------------------------------------------------------------
def spec_llama_gqa():
    tok = make_sentencepiece_bpe_tokenizer(total_vocab=420, legacy=False, chat_template=LLAMA2_CHAT_TEMPLATE)

    def config(vocab_size):
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return dict(cls=LlamaForCausalLM, tok=tok, config=config, gen=gen, seed=1000, std=0.15, hub_style=False)


def spec_llama3():
    tok = make_llama3_tokenizer(base_vocab=480)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    eos = tok.convert_tokens_to_ids("<|end_of_text|>")
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")

    def config(vocab_size):
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                # 32 (as first planned) puts no frequency in the smooth band at
                # head_dim 16 / theta 5e5; 64 gives 1 unchanged, 1 interpolated,
                # 6 scaled frequencies (asserted below).
                "original_max_position_embeddings": 64,
            },
            tie_word_embeddings=True,
            bos_token_id=bos,
            eos_token_id=[eos, eot],
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot])
    return dict(cls=LlamaForCausalLM, tok=tok, config=config, gen=gen, seed=2000, std=0.15, hub_style=True, pad=eos)


def spec_mistral():
    tok = make_sentencepiece_bpe_tokenizer(total_vocab=440, legacy=True, chat_template=MISTRAL_CHAT_TEMPLATE)

    def config(vocab_size, sliding_window=5):
        return MistralConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            sliding_window=sliding_window,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=1, eos_token_id=2)
    return dict(cls=MistralForCausalLM, tok=tok, config=config, gen=gen, seed=3000, std=0.15, hub_style=True, pad=0)


def spec_qwen2():
    tok = make_qwen2_tokenizer(base_vocab=480)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def config(vocab_size, use_sliding_window=False, sliding_window=4, max_window_layers=0):
        # Like the real Qwen2 checkpoints the embedding matrix is padded past
        # the tokenizer's vocabulary (here to a multiple of 32).
        padded = (vocab_size + 31) // 32 * 32
        return Qwen2Config(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            use_sliding_window=use_sliding_window,
            sliding_window=sliding_window,
            max_window_layers=max_window_layers,
            tie_word_embeddings=True,
            bos_token_id=eot,
            eos_token_id=im_end,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    return dict(cls=Qwen2ForCausalLM, tok=tok, config=config, gen=gen, seed=4000, std=0.15, hub_style=True, pad=eot)


def spec_gemma():
    tok = make_gemma_tokenizer(total_vocab=460, chat_template=GEMMA_CHAT_TEMPLATE)

    def config(vocab_size):
        return GemmaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,  # Gemma-2B is MQA
            head_dim=32,  # != hidden_size / num_attention_heads = 16
            hidden_act="gelu_pytorch_tanh",
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return dict(cls=GemmaForCausalLM, tok=tok, config=config, gen=gen, seed=5000, std=0.15, hub_style=True,
                norm_center=0.0, min_gap=NEW_MIN_TOP2_GAP)


def spec_gemma2():
    tok = make_gemma_tokenizer(total_vocab=420, chat_template=GEMMA2_CHAT_TEMPLATE)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")

    def config(vocab_size, attn_logit_softcapping=5.0, final_logit_softcapping=3.0, layer_types=None):
        return Gemma2Config(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=80,  # not 128: keeps the 4-layer folder under 1.5 MB
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,  # Gemma-2 is GQA 2:1 (the gemma fixture covers MQA)
            head_dim=32,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            query_pre_attn_scalar=24,  # != head_dim
            attn_logit_softcapping=attn_logit_softcapping,
            final_logit_softcapping=final_logit_softcapping,
            sliding_window=4,
            layer_types=layer_types,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=[1, eot],
            bos_token_id=2,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=2, eos_token_id=[1, eot], pad_token_id=0)
    return dict(cls=Gemma2ForCausalLM, tok=tok, config=config, gen=gen, seed=6000, std=0.15, hub_style=True,
                norm_center=0.0, min_gap=NEW_MIN_TOP2_GAP)


def spec_gemma3():
    tok = make_gemma_tokenizer(total_vocab=420, chat_template=GEMMA3_CHAT_TEMPLATE)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")

    def config(vocab_size, layer_types="default", rope_local_base_freq=100.0, rope_scaling="default",
               final_logit_softcapping=None):
        # Six layers, Gemma 3's pattern (five sliding-window layers, then one global), with a
        # window of 4 and a local rotary base (100) far from the global one (10000) scaled
        # linearly by 4, as the 4B-27B models scale theirs by 8.
        if rope_scaling == "default":
            rope_scaling = {"rope_type": "linear", "factor": 4.0}
        kw = {} if layer_types == "default" else {"layer_types": layer_types}
        return Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=32,  # six layers within the folder size limit
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,  # Gemma 3 270M and 1B have one key/value head
            head_dim=32,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            rope_local_base_freq=rope_local_base_freq,
            rope_scaling=rope_scaling,
            query_pre_attn_scalar=24,  # != head_dim
            final_logit_softcapping=final_logit_softcapping,
            sliding_window=4,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=[1, eot],
            bos_token_id=2,
            initializer_range=0.15,
            **kw,
        )

    gen = GenerationConfig(bos_token_id=2, eos_token_id=[1, eot], pad_token_id=0)
    return dict(cls=Gemma3ForCausalLM, tok=tok, config=config, gen=gen, seed=9000, std=0.15, hub_style=True,
                norm_center=0.0, min_gap=NEW_MIN_TOP2_GAP)


def spec_olmo2():
    tok = make_olmo2_tokenizer(base_vocab=470)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    pad = tok.convert_tokens_to_ids("<|pad|>")

    def config(vocab_size):
        padded = (vocab_size + 31) // 32 * 32
        return Olmo2Config(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # OLMo 2 7B/13B are MHA; GQA here tests the k norm's size
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=500000.0,
            attention_bias=False,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=eot,
            pad_token_id=pad,
            initializer_range=0.15,
        )

    gen = GenerationConfig(eos_token_id=eot, pad_token_id=pad)
    return dict(cls=Olmo2ForCausalLM, tok=tok, config=config, gen=gen, seed=9500, std=0.15, hub_style=True, pad=pad,
                min_gap=NEW_MIN_TOP2_GAP)


# ---------------------------------------------------------------------------
# Mixtures of experts: four experts, two per token, so that tokens go different ways; the
# weights' spread keeps the router's top-2 choices far from ties (checked by the build).
# ---------------------------------------------------------------------------
def spec_mixtral():
    tok = make_sentencepiece_bpe_tokenizer(total_vocab=440, legacy=True, chat_template=MISTRAL_CHAT_TEMPLATE)

    def config(vocab_size):
        return MixtralConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            sliding_window=None,
            num_local_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=1, eos_token_id=2)
    return dict(cls=MixtralForCausalLM, tok=tok, config=config, gen=gen, seed=10000, std=0.15, hub_style=False,
                pad=0, min_gap=NEW_MIN_TOP2_GAP)


def spec_qwen2_moe():
    tok = make_qwen2_tokenizer(base_vocab=480)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def config(vocab_size):
        padded = (vocab_size + 31) // 32 * 32
        return Qwen2MoeConfig(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=48,  # the dense layer's MLP (mlp_only_layers)
            moe_intermediate_size=32,
            shared_expert_intermediate_size=40,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[2],
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            qkv_bias=True,
            use_sliding_window=False,
            tie_word_embeddings=False,
            bos_token_id=eot,
            eos_token_id=im_end,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    return dict(cls=Qwen2MoeForCausalLM, tok=tok, config=config, gen=gen, seed=11000, std=0.15, hub_style=False,
                pad=eot, min_gap=NEW_MIN_TOP2_GAP)


def spec_qwen3_moe():
    tok = make_qwen3_tokenizer(base_vocab=480)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def config(vocab_size):
        padded = (vocab_size + 31) // 32 * 32
        return Qwen3MoeConfig(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=48,  # the dense layers' MLP (decoder_sparse_step 2)
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            mlp_only_layers=[],
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            attention_bias=False,
            use_sliding_window=False,
            tie_word_embeddings=True,
            bos_token_id=eot,
            eos_token_id=im_end,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    return dict(cls=Qwen3MoeForCausalLM, tok=tok, config=config, gen=gen, seed=12000, std=0.15, hub_style=True,
                pad=eot, min_gap=NEW_MIN_TOP2_GAP)


def spec_olmoe():
    tok = make_olmo2_tokenizer(base_vocab=470)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    pad = tok.convert_tokens_to_ids("<|pad|>")

    def config(vocab_size):
        padded = (vocab_size + 31) // 32 * 32
        return OlmoeConfig(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            attention_bias=False,
            clip_qkv=None,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=eot,
            pad_token_id=pad,
            initializer_range=0.15,
        )

    gen = GenerationConfig(eos_token_id=eot, pad_token_id=pad)
    return dict(cls=OlmoeForCausalLM, tok=tok, config=config, gen=gen, seed=13000, std=0.15, hub_style=False,
                pad=pad, min_gap=NEW_MIN_TOP2_GAP)


# ---------------------------------------------------------------------------
# GPT-OSS: attention sinks, q/k/v/o biases, sliding-window layers alternating with full ones,
# YaRN, a router that softmaxes only its top-k logits, experts with biases and a clamped
# SwiGLU on interleaved gate/up columns. gpt_oss_mxfp4 is the same model with its experts
# stored in MXFP4 (see mxfp4.py), as the released checkpoints store them.
# ---------------------------------------------------------------------------
GPT_OSS_TEMPLATE_NOW = "2025-08-05T12:00:00Z"  # the chat template's strftime_now, pinned


def spec_gpt_oss(mxfp4: bool = False):
    tok = make_gpt_oss_tokenizer(base_vocab=400)
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    ret = tok.convert_tokens_to_ids("<|return|>")
    call = tok.convert_tokens_to_ids("<|call|>")

    def config(vocab_size, layer_types=None, truncate=False, swiglu_limit=7.0):
        # Like openai/gpt-oss-20b (201088 rows for 200019 tokens) the embedding matrix is
        # padded past the tokenizer's vocabulary, here to a multiple of 32.
        padded = (vocab_size + 31) // 32 * 32
        return GptOssConfig(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=64,  # a multiple of 32: MXFP4 blocks run along the input dimension
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,  # layers 0 and 2 (the default layer_types); prompts are up to 21 tokens
            layer_types=layer_types,
            attention_bias=True,
            # YaRN as in gpt-oss (factor 32, beta_fast 32, beta_slow 1, truncate false). Like the real
            # 131072 = 4096 * 32, max_position_embeddings = original * factor: transformers warns when
            # they disagree (GPT-OSS reads max_position_embeddings nowhere else).
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": truncate,
                "original_max_position_embeddings": 64,
            },
            max_position_embeddings=64 * 32,
            rms_norm_eps=1e-5,
            swiglu_limit=swiglu_limit,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=ret,
            pad_token_id=eot,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=bos, eos_token_id=[ret, eot, call], pad_token_id=eot)
    # reinit_ overrides: the attention sinks N(0, 1), so that they matter (a sink of s takes
    # e^s / (e^s + sum_j e^score_j) of a row); the expert biases N(0, 0.1) like every bias; the
    # expert matrices N(0, 0.3), so that some gate/up values pass the SwiGLU clamp (7.0).
    param_std = {
        ".sinks": 1.0,
        ".gate_up_proj_bias": 0.1,
        ".down_proj_bias": 0.1,
        ".gate_up_proj": 0.3,
        ".down_proj": 0.3,
    }
    return dict(cls=GptOssForCausalLM, tok=tok, config=config, gen=gen, seed=14000, std=0.15, hub_style=True,
                pad=eot, min_gap=NEW_MIN_TOP2_GAP, param_std=param_std, template_now=GPT_OSS_TEMPLATE_NOW,
                mxfp4=mxfp4)


def spec_gpt_oss_mxfp4():
    return spec_gpt_oss(mxfp4=True)


PHI3_SHORT_FACTOR = [1.0, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.7]
PHI3_LONG_FACTOR = [1.0, 1.5, 2.2, 3.0, 4.0, 5.0, 6.5, 8.0]


def spec_phi3():
    tok = make_phi3_tokenizer(total_vocab=430)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    asst = tok.convert_tokens_to_ids("<|assistant|>")
    end = tok.convert_tokens_to_ids("<|end|>")

    def config(vocab_size, short_factor=PHI3_SHORT_FACTOR, long_factor=PHI3_LONG_FACTOR, sliding_window=2047,
               attention_factor=None):
        # Like Phi-3 (32011 tokens, vocab_size 32064) the embedding matrix is
        # padded past the tokenizer, here to a multiple of 64.
        padded = (vocab_size + 63) // 64 * 64
        rope_scaling = {"type": "longrope", "short_factor": list(short_factor), "long_factor": list(long_factor)}
        if attention_factor is not None:
            rope_scaling["attention_factor"] = attention_factor
        return Phi3Config(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            original_max_position_embeddings=10,
            rope_theta=10000.0,
            rope_scaling=rope_scaling,
            sliding_window=sliding_window,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=eot,
            pad_token_id=eot,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=1, eos_token_id=[eot, asst, end], pad_token_id=eot)
    return dict(cls=Phi3ForCausalLM, tok=tok, config=config, gen=gen, seed=7000, std=0.15, hub_style=True, pad=eot,
                min_gap=NEW_MIN_TOP2_GAP)


def spec_qwen3():
    tok = make_qwen3_tokenizer(base_vocab=480)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def config(vocab_size):
        padded = (vocab_size + 31) // 32 * 32
        return Qwen3Config(
            vocab_size=padded,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,  # != hidden_size / num_attention_heads = 16
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            tie_word_embeddings=True,
            bos_token_id=eot,
            eos_token_id=im_end,
            initializer_range=0.15,
        )

    gen = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    return dict(cls=Qwen3ForCausalLM, tok=tok, config=config, gen=gen, seed=8000, std=0.15, hub_style=True, pad=eot,
                min_gap=NEW_MIN_TOP2_GAP)


SPECS = {
    "llama_gqa": spec_llama_gqa,
    "llama3": spec_llama3,
    "mistral": spec_mistral,
    "qwen2": spec_qwen2,
    "gemma": spec_gemma,
    "gemma2": spec_gemma2,
    "gemma3": spec_gemma3,
    "olmo2": spec_olmo2,
    "mixtral": spec_mixtral,
    "qwen2_moe": spec_qwen2_moe,
    "qwen3_moe": spec_qwen3_moe,
    "olmoe": spec_olmoe,
    "phi3": spec_phi3,
    "qwen3": spec_qwen3,
    "gpt_oss": spec_gpt_oss,
    "gpt_oss_mxfp4": spec_gpt_oss_mxfp4,
}


# ---------------------------------------------------------------------------
# Config rewriting: transformers 5 saves `rope_parameters` (and Qwen2's derived
# `layer_types`, with `sliding_window` nulled when use_sliding_window=False).
# Real hub checkpoints use the older keys, so all fixtures except llama_gqa are
# rewritten to that layout; llama_gqa keeps the transformers-5 layout so both
# are covered.  The reload check at the end proves transformers reads both
# identically.
# ---------------------------------------------------------------------------
def to_hub_style(cfg: dict, name: str) -> dict:
    cfg = dict(cfg)
    rope = cfg.pop("rope_parameters", None) if name != "gemma3" else None
    if rope is not None:
        rope = dict(rope)
        cfg["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = rope
        else:
            cfg["rope_scaling"] = None
    if name == "qwen2":
        cfg.pop("layer_types", None)
        cfg["sliding_window"] = 4  # present but disabled by use_sliding_window=false
        assert cfg["use_sliding_window"] is False
    if name == "gemma":
        # google/gemma-2b(-it) and gemma-7b(-it) ship "hidden_act": "gelu" with
        # "hidden_activation": null; transformers 5's GemmaConfig maps "gelu" to
        # "gelu_pytorch_tanh" (and never reads hidden_activation).
        assert cfg["hidden_act"] == "gelu_pytorch_tanh"
        cfg["hidden_act"] = "gelu"
        cfg["hidden_activation"] = None
        assert cfg.pop("use_bidirectional_attention") is None
    if name == "gemma2":
        # The Gemma-2 checkpoints carry both keys; transformers 5's Gemma2MLP
        # reads hidden_activation only.  layer_types is derived (sliding on even
        # layers) and absent from the real configs.
        cfg["hidden_act"] = cfg["hidden_activation"]
        assert cfg.pop("layer_types") == ["sliding_attention", "full_attention"] * (cfg["num_hidden_layers"] // 2)
        assert cfg.pop("use_bidirectional_attention") is None
    if name == "gemma3":
        # google/gemma-3-*: rope_theta, rope_local_base_freq and rope_scaling at the top
        # level, `sliding_window_pattern` and no layer_types (transformers 5 derives them).
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
        cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        assert rope["sliding_attention"]["rope_type"] == "default"
        full = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
        cfg["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
        assert cfg.pop("layer_types") == (["sliding_attention"] * 5 + ["full_attention"]) * (cfg["num_hidden_layers"] // 6)
        assert cfg.pop("_sliding_window_pattern") == 6
        cfg["sliding_window_pattern"] = 6
        cfg["hidden_act"] = cfg["hidden_activation"]
        assert cfg.pop("use_bidirectional_attention") in (None, False)
    if name == "qwen3_moe":
        # Qwen/Qwen3-30B-A3B names the expert count `num_experts`; transformers 5 writes
        # `num_local_experts` (and reads both).
        cfg["num_experts"] = cfg.pop("num_local_experts")
        cfg.pop("layer_types", None)
    if name == "phi3":
        # As in microsoft/Phi-3-mini-128k-instruct: rope_scaling holds only the
        # factor lists and the type; original_max_position_embeddings is a
        # top-level key (transformers 5 copies it into rope_parameters).
        scaling = cfg["rope_scaling"]
        assert scaling.pop("original_max_position_embeddings") == cfg["original_max_position_embeddings"]
        assert scaling.pop("partial_rotary_factor") == 1.0
        assert scaling.pop("rope_type") == scaling["type"] == "longrope"
        cfg["rope_scaling"] = dict(sorted(scaling.items()))
    if name == "qwen3":
        assert cfg.pop("layer_types") == ["full_attention"] * cfg["num_hidden_layers"]
        assert cfg["use_sliding_window"] is False and cfg["sliding_window"] is None
    if name in ("gpt_oss", "gpt_oss_mxfp4"):
        # openai/gpt-oss-20b: top-level rope_theta and rope_scaling (yarn, with truncate false),
        # the explicit layer_types, no swiglu_alpha (transformers' default 1.702, which its MXFP4
        # experts hard-code), and two keys of OpenAI's own format that transformers ignores:
        # experts_per_token (= num_experts_per_tok) and initial_context_length (= the YaRN
        # original_max_position_embeddings). The MXFP4 folder adds the hub's quantization_config.
        scaling = cfg["rope_scaling"]
        assert scaling["rope_type"] == "yarn" and scaling["truncate"] is False, scaling
        assert cfg.pop("swiglu_alpha") == 1.702
        assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * (cfg["num_hidden_layers"] // 2)
        cfg["experts_per_token"] = cfg["num_experts_per_tok"]
        cfg["initial_context_length"] = scaling["original_max_position_embeddings"]
        if name == "gpt_oss_mxfp4":
            cfg["quantization_config"] = {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            }
    return dict(sorted(cfg.items()))
