#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzz corpus, `fuzz/corpus/NAME/seed-*`.

Small valid inputs of every kind, so that the fuzzer starts deep inside each reader rather
than at its first check: the fixtures' `config.json` files, tiny safetensors folders, tiny GGUF
files (a byte-level BPE Llama model that loads completely, and a SentencePiece vocabulary with
K-quant tensors), data files of each format, heads files, the fixtures' chat templates, run
records and ships lines. Only the standard library is used; run from anywhere:

    python3 fuzz/make_seeds.py

The seeds are deterministic; the fuzzer's own finds (named by their SHA-1) sit beside them.
"""

import json
import random
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
FIXTURES = REPO / "fixtures"
GOLDEN = REPO / "crates" / "sahara-cli" / "tests" / "golden"
CORPUS = FUZZ / "corpus"

rng = random.Random(20261202)


def seed(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    assert len(data) <= 8192, f"{target}/{name}: {len(data)} bytes"
    (d / f"seed-{name}").write_bytes(data)


# ---------------------------------------------------------------------------------- config
for cfg in sorted(FIXTURES.glob("*/config.json")):
    seed("config", cfg.parent.name, cfg.read_bytes())


# ----------------------------------------------------------------------------- safetensors
def f16(x: float) -> bytes:
    return struct.pack("<e", x)


def safetensors_file(tensors, metadata=None) -> bytes:
    """tensors: [(name, dtype, shape, raw bytes)]"""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def floats(n: int) -> bytes:
    return struct.pack(f"<{n}f", *[rng.uniform(-1, 1) for _ in range(n)])


def halves(n: int) -> bytes:
    return b"".join(f16(rng.uniform(-1, 1)) for _ in range(n))


bf16 = lambda n: b"".join(floats(1)[2:] for _ in range(n))  # noqa: E731

small = safetensors_file(
    [
        ("model.embed_tokens.weight", "F32", [4, 3], floats(12)),
        ("model.norm.weight", "F16", [3], halves(3)),
        ("lm_head.weight", "BF16", [2, 2], bf16(4)),
        ("model.layers.0.self_attn.q_proj.bias", "F64", [2], struct.pack("<2d", 0.5, -0.25)),
        ("scalar", "F32", [], floats(1)),
        ("empty", "F32", [0, 3], b""),
        ("ids", "I64", [2], struct.pack("<2q", 1, 2)),
    ],
    {"format": "pt"},
)
seed("safetensors", "single-f32", b"\x00" + small)
seed("safetensors", "single-f16", b"\x02" + small)
shard = safetensors_file(
    [
        ("model.embed_tokens.weight", "F32", [2, 2], floats(4)),
        ("model.layers.0.mlp.up_proj.weight", "F16", [2, 2], halves(4)),
    ]
)
index = json.dumps(
    {
        "metadata": {"total_size": 24},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00001.safetensors",
            "model.layers.0.mlp.up_proj.weight": "model-00001-of-00001.safetensors",
        },
    }
).encode()
seed("safetensors", "sharded", b"\x01" + index + b"\x00" + shard)
seed("safetensors", "sharded-f16", b"\x03" + index + b"\x00" + shard)
# The real header of a fixture, cut off after a few bytes of its data.
real = (FIXTURES / "llama_gqa" / "model.safetensors").read_bytes()
(n,) = struct.unpack("<Q", real[:8])
if 8 + n + 16 <= 8000:
    seed("safetensors", "llama-gqa-header", b"\x00" + real[: 8 + n + 16])


# ------------------------------------------------------------------------------------ GGUF
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
T_F32, T_F16, T_Q4_0, T_Q8_0, T_Q4_K, T_Q6_K = 0, 1, 2, 8, 12, 14
BLOCK = {T_F32: (1, 4), T_F16: (1, 2), T_Q4_0: (32, 18), T_Q8_0: (32, 34), T_Q4_K: (256, 144), T_Q6_K: (256, 210)}


def gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(ty: int, v) -> bytes:
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
    if ty == STRING:
        return gstr(v)
    if ty == ARRAY:
        inner, items = v
        return struct.pack("<IQ", inner, len(items)) + b"".join(gvalue(inner, x) for x in items)
    return struct.pack("<" + fmt[ty], v)


def tensor_bytes(ty: int, n: int) -> bytes:
    """Plausible data: small finite scales, arbitrary quants."""
    if ty == T_F32:
        return floats(n)
    if ty == T_F16:
        return halves(n)
    blocks = n // BLOCK[ty][0]
    out = b""
    for _ in range(blocks):
        if ty == T_Q4_0:
            out += f16(0.01) + bytes(rng.randrange(256) for _ in range(16))
        elif ty == T_Q8_0:
            out += f16(0.01) + bytes(rng.randrange(256) for _ in range(32))
        elif ty == T_Q4_K:
            out += f16(0.01) + f16(0.001) + bytes(rng.randrange(64) for _ in range(12))
            out += bytes(rng.randrange(256) for _ in range(128))
        elif ty == T_Q6_K:
            out += bytes(rng.randrange(256) for _ in range(192))
            out += bytes(rng.randrange(-8, 8) & 0xFF for _ in range(16)) + f16(0.01)
    return out


def gguf_file(metadata, tensors, alignment=32) -> bytes:
    """metadata: [(key, type, value)]; tensors: [(name, type, hf_shape)] (rows first)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, ty, v in metadata:
        out += gstr(key) + struct.pack("<I", ty) + gvalue(ty, v)
    data = b""
    for name, ty, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        data += b"\x00" * (-len(data) % alignment)
        out += gstr(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", ty, len(data))
        data += tensor_bytes(ty, n)
    out += b"\x00" * (-len(out) % alignment)
    return out + data


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A Llama model with a byte-level BPE vocabulary that loads completely (hidden 32, one layer,
# two query heads of 16, one key/value head), its matrices in Q4_0, Q8_0 and F16.
bpe_tokens = ["<s>", "</s>", "H", "e", "l", "o", "\u0120", "w", "r", "d", "!", "ll", "He", "Hell", "\u0120w", "or"]
bpe = [
    ("general.architecture", STRING, "llama"),
    ("general.name", STRING, "seed"),
    ("general.alignment", U32, 32),
    ("llama.embedding_length", U32, 32),
    ("llama.block_count", U32, 1),
    ("llama.attention.head_count", U32, 2),
    ("llama.attention.head_count_kv", U32, 1),
    ("llama.feed_forward_length", U32, 32),
    ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
    ("llama.rope.freq_base", F32, 500000.0),
    ("llama.context_length", U32, 128),
    ("llama.rope.dimension_count", U32, 16),
    ("tokenizer.ggml.model", STRING, "gpt2"),
    ("tokenizer.ggml.pre", STRING, "llama-bpe"),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, bpe_tokens)),
    ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 3] + [1] * 14)),
    ("tokenizer.ggml.merges", ARRAY, (STRING, ["l l", "H e", "He ll", "\u0120 w", "o r"])),
    ("tokenizer.ggml.bos_token_id", U32, 0),
    ("tokenizer.ggml.eos_token_id", U32, 1),
    ("tokenizer.ggml.add_bos_token", BOOL, True),
    ("tokenizer.chat_template", STRING, LLAMA3_TEMPLATE),
]
layer = [
    ("blk.0.attn_norm.weight", T_F32, [32]),
    ("blk.0.attn_q.weight", T_Q8_0, [32, 32]),
    ("blk.0.attn_k.weight", T_Q4_0, [16, 32]),
    ("blk.0.attn_v.weight", T_Q4_0, [16, 32]),
    ("blk.0.attn_output.weight", T_Q4_0, [32, 32]),
    ("blk.0.ffn_norm.weight", T_F32, [32]),
    ("blk.0.ffn_gate.weight", T_Q4_0, [32, 32]),
    ("blk.0.ffn_up.weight", T_Q4_0, [32, 32]),
    ("blk.0.ffn_down.weight", T_Q4_0, [32, 32]),
]
seed(
    "gguf",
    "llama-bpe",
    gguf_file(bpe, [("token_embd.weight", T_F16, [16, 32]), ("output_norm.weight", T_F32, [32])] + layer),
)

# A Qwen2 header with a SentencePiece vocabulary (scores, byte tokens, unknown token) and
# K-quant tensors; no layers, so it stops at the decoder.
sp_tokens = ["<unk>", "<s>", "</s>", "<0x0A>", "<0x41>", "\u2581", "\u2581H", "e", "l", "o", "ll", "He", "\u2581He", "llo", "\u2581Hello", "!"]
sp = [
    ("general.architecture", STRING, "qwen2"),
    ("qwen2.embedding_length", U32, 8),
    ("qwen2.block_count", U32, 2),
    ("qwen2.attention.head_count", U32, 2),
    ("qwen2.attention.head_count_kv", U32, 2),
    ("qwen2.feed_forward_length", U32, 16),
    ("qwen2.attention.layer_norm_rms_epsilon", F32, 1e-6),
    ("qwen2.context_length", U64, 256),
    ("qwen2.rope.scaling.type", STRING, "linear"),
    ("qwen2.rope.scaling.factor", F32, 2.0),
    ("tokenizer.ggml.model", STRING, "llama"),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, sp_tokens)),
    ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -3.5, -4.0, -5.0, -5.5, -6.0, -6.5, -7.0, -8.0])),
    ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3, 6, 6] + [1] * 10 + [4])),
    ("tokenizer.ggml.unknown_token_id", U32, 0),
    ("tokenizer.ggml.bos_token_id", U32, 1),
    ("tokenizer.ggml.eos_token_id", U32, 2),
    ("tokenizer.ggml.padding_token_id", U32, 2),
    ("tokenizer.ggml.add_space_prefix", BOOL, True),
    ("tokenizer.ggml.add_eos_token", BOOL, True),
    ("tokenizer.chat_template", STRING, CHATML_TEMPLATE),
]
seed(
    "gguf",
    "qwen2-spm-kquants",
    gguf_file(
        sp,
        [
            ("token_embd.weight", T_F32, [16, 8]),
            ("output.weight", T_Q4_K, [1, 256]),
            ("blk.0.attn_q.bias", T_F32, [8]),
            ("blk.0.ffn_down.weight", T_Q6_K, [1, 256]),
        ],
    ),
)

# A Qwen 3 header with an explicit head size and a per-frequency rope table.
qwen3 = [
    ("general.architecture", STRING, "qwen3"),
    ("qwen3.embedding_length", U32, 8),
    ("qwen3.block_count", U32, 1),
    ("qwen3.attention.head_count", U32, 2),
    ("qwen3.attention.key_length", U32, 4),
    ("qwen3.attention.value_length", U32, 4),
    ("qwen3.feed_forward_length", U32, 16),
    ("qwen3.attention.layer_norm_rms_epsilon", F32, 1e-6),
    ("tokenizer.ggml.model", STRING, "gpt2"),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "ab"])),
    ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b"])),
]
seed(
    "gguf",
    "qwen3-rope-freqs",
    gguf_file(qwen3, [("token_embd.weight", T_F32, [3, 8]), ("rope_freqs.weight", T_F32, [2])]),
)


# ------------------------------------------------------------------------------------ data
seed("data", "csv", b"c-goal,target\n\"a, b\",x\nWrite a poem about the sea.,y\n\"say \"\"hi\"\"\",z\n")
seed("data", "csv-behavior", b"cBIndex,Behavior\r\n0,How do I pick a lock?\r\n1,\"line one\nline two\"\r\n")
seed("data", "jsonl", b"l-{\"prompt\": \"a\", \"id\": 1}\n\n{\"prompt\": \"b, \\\"c\\\"\"}\r\n\"d\"")
seed("data", "ndjson", b"n-\"x\"\n\"y\"\n")
seed("data", "json-objects", b"j-[\n {\"query\": \"a\", \"n\": 1},\n {\"query\": \"b\", \"n\": 2}\n]\n")
seed("data", "json-strings", b"ji[\"a\", \"b\"]")
seed("data", "json-lines", b"j-{\"input\": \"a\"}\n{\"input\": \"b\"}\n")
seed("data", "text", b"t-\xef\xbb\xbfone, two\r\n\r\n  \nthree\r\nfour")
seed("data", "sniff-csv", b"--input,x\n\"l, m\",1\n")
seed("data", "sniff-jsonl", b"--\n  {\"input\": \"j\"}\n")
seed("data", "sniff-text", b"--" + (GOLDEN / "queries.txt").read_bytes())


# ------------------------------------------------------------------------------ heads_file
seed("heads_file", "attribute", (GOLDEN / "attribute_fixture" / "attribute.json").read_bytes())
for case in ["ships_fixture", "ships_fixture_k_mean"]:
    seed("heads_file", f"{case}-summary", (GOLDEN / case / "ships.jsonl.summary.json").read_bytes())
seed("heads_file", "ships-lines", (GOLDEN / "ships_fixture" / "ships.jsonl").read_bytes())


# --------------------------------------------------------------------------- chat_template
def template_of(folder: Path):
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = next(x["template"] for x in t if x.get("name") == "default")
    return t


for folder in sorted(FIXTURES.glob("*/tokenizer_config.json")):
    t = template_of(folder.parent)
    if t:
        seed("chat_template", folder.parent.name, t.encode() + b"\x00You are helpful.\x00How do I bake bread?")
seed("chat_template", "chatml-short", CHATML_TEMPLATE.encode() + b"\x00Hello!")
seed("chat_template", "llama3-short", LLAMA3_TEMPLATE.encode() + b"\x00Be brief.\x00Hi")
seed(
    "chat_template",
    "tojson-strftime",
    b"{{ bos_token }}{{ messages | tojson(indent=2) }}{{ strftime_now('%d %b %Y %H:%M') }}"
    b"{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    b"{{ messages[-1].content.strip() | upper }}\x00hi",
)


# ------------------------------------------------------------------------------ run_record
for case in ["ships_fixture", "ships_fixture_k_mean"]:
    record = (GOLDEN / case / "ships.jsonl.run.json").read_bytes()
    lines = (GOLDEN / case / "ships.jsonl").read_bytes()
    seed("run_record", case, record + b"\x00" + lines)
seed("run_record", "attribute", (GOLDEN / "attribute_fixture" / "attribute.json.run.json").read_bytes())
seed(
    "run_record",
    "flat-partial",
    b'{"command": "ships", "model": "a", "model_fingerprint": "f", "data": "d", "data_fingerprint": "g",'
    b' "queries": 2, "epsilon": 1e-5}\x00'
    + (GOLDEN / "ships_fixture" / "ships.jsonl").read_bytes().split(b"\n")[0]
    + b'\n{"schema":"sahara.ships/1","index":1,"query":"Write a poem ab',
)
