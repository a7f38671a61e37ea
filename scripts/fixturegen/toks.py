"""The built-in training corpus and the tokenizer builders of each family.

(Not named ``tokenizers``: that is the library this module uses.)
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GemmaTokenizer, LlamaTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

from .templates import LLAMA3_CHAT_TEMPLATE, PHI3_CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE

# Pre-tokenisation regexes of the real tokenizers.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# o200k (tiktoken's o200k_base; GPT-OSS's o200k_harmony uses the same pattern).
O200K_SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
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


OLMO2_SPECIALS = ["<|endoftext|>", "<|pad|>"]


def make_olmo2_tokenizer(base_vocab: int) -> PreTrainedTokenizerFast:
    """OLMo 2 style (its cl100k-like `dolma2` tokenizer): byte-level BPE with the
    cl100k/Llama-3 split, `<|endoftext|>` as BOS and EOS and `<|pad|>` appended after the
    BPE vocabulary, no BOS added to plain text (the chat template writes it); the chat
    markers `<|user|>`, `<|assistant|>` are plain text."""
    from .templates import OLMO2_CHAT_TEMPLATE
    vocab, merges = _train_bytelevel(base_vocab, LLAMA3_SPLIT_REGEX, nfc=False)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in OLMO2_SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=OLMO2_CHAT_TEMPLATE,
    )


# GPT-OSS's Harmony special tokens, in the order of their ids in o200k_harmony
# (199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012; the gaps are
# reserved tokens, left out here).
GPT_OSS_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
]


def make_gpt_oss_tokenizer(base_vocab: int) -> PreTrainedTokenizerFast:
    """GPT-OSS style (o200k_harmony): byte-level BPE with the o200k split regex, no
    normalizer, no BOS added to plain text (the chat template writes none either), the
    Harmony special tokens appended after the BPE vocabulary; bos `<|startoftext|>`, eos
    `<|return|>`, pad `<|endoftext|>` as in openai/gpt-oss-20b's tokenizer_config.json
    (tokenizer_class PreTrainedTokenizerFast)."""
    from .templates import GPT_OSS_CHAT_TEMPLATE
    vocab, merges = _train_bytelevel(base_vocab, O200K_SPLIT_REGEX, nfc=False)
    n = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(O200K_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in GPT_OSS_SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=GPT_OSS_CHAT_TEMPLATE,
    )
    ids = [fast.convert_tokens_to_ids(s) for s in GPT_OSS_SPECIALS]
    if ids != list(range(n, n + len(GPT_OSS_SPECIALS))) or len(fast) != n + len(GPT_OSS_SPECIALS):
        raise RuntimeError(f"unexpected GPT-OSS special ids {ids} (base vocab {n}, len {len(fast)})")
    return fast
